"""The CLI's HTTP transport: the standard library's http.client under protocol.py, blocking,
one kept-alive connection per server. No Twisted and no treq: remote commands start fast.
"""

from __future__ import annotations

import http.client
import random
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from elipc.cli.system import Clock
from elipc.model import ConfigError
from elipc.protocol import (
    Call,
    HttpRequest,
    HttpResponse,
    Outcome,
    RetryPolicy,
    TransportFailure,
    exchange,
)

T = TypeVar("T")


class Transport(Protocol):
    """Whatever carries one HttpRequest to the server and brings its HttpResponse back."""

    def fetch(self, request: HttpRequest) -> HttpResponse:
        """The server's answer to `request`, or TransportFailure when there is none."""
        ...


class HttpTransport:
    """http.client to the server at `base_url` (http or https, with an optional path
    prefix), keeping one connection open between requests; `opened` counts sockets opened."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"server URL must be http://HOST[:PORT] or https://..., "
                              f"not {base_url!r}")
        self.base_url = base_url
        self.secure = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self._connection: http.client.HTTPConnection | None = None
        self.opened = 0

    def fetch(self, request: HttpRequest) -> HttpResponse:
        """Send `request` and read its whole answer; TransportFailure if none comes in time."""
        connection = self._connect(request.timeout)
        try:
            connection.request(request.method, self.prefix + request.target(),
                               body=request.body, headers=request.headers)
            response = connection.getresponse()
            answer = HttpResponse(response.status, _headers(response), response.read())
        except (OSError, http.client.HTTPException) as e:
            self.close()  # half-used: the next request needs a fresh connection
            raise TransportFailure(f"{type(e).__name__}: {e}".rstrip(": ")) from e
        if response.will_close:
            self.close()
        return answer

    def close(self) -> None:
        """Close the kept-alive connection, if any."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is None:
            connection = self._connection = self._new_connection(timeout)
        connection.timeout = timeout
        if connection.sock is None:  # http.client connects on the next request
            self.opened += 1
        else:  # kept alive: the new request has its own timeout
            connection.sock.settimeout(timeout)
        return connection

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        if not self.secure:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        import ssl  # http.client loads the module anyway; only https builds a context

        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                           context=ssl.create_default_context())


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    return {name.lower(): value for name, value in response.getheaders()}


def perform(call: Call[T], transport: Transport, policy: RetryPolicy, clock: Clock) -> T:
    """Run `call` to its result over `transport`, sleeping on `clock` between retries."""
    steps = exchange(call, policy, random.random)
    outcome: Outcome = None
    while True:
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            result: T = done.value
            return result
        if isinstance(step, HttpRequest):
            outcome = _fetch(transport, step)
        else:
            clock.sleep(step)
            outcome = None


def _fetch(transport: Transport, request: HttpRequest) -> Outcome:
    try:
        return transport.fetch(request)
    except TransportFailure as failure:
        return failure
