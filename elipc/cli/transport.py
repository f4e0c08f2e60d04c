"""The CLI's HTTP transport under protocol.py: blocking HTTP/1.1 on the standard library's
socket, one kept-alive connection per server. No Twisted, no treq and no http.client: remote
commands start fast.
"""

from __future__ import annotations

import random
import socket
from typing import BinaryIO, Protocol, TypeVar
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


MAX_HEAD_BYTES = 64 * 1024


class HttpTransport:
    """HTTP/1.1 over a plain socket to the server at `base_url` (http or https, with an
    optional path prefix), keeping one connection open between requests; `opened` counts
    sockets opened.

    Not http.client: it loads the email package (and ssl) on import, 20 ms of every remote
    command's start. This speaks only what elipc's server (or a proxy in front of it) answers:
    a status line, headers, and a body by Content-Length, chunked, or up to the close.
    """

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"server URL must be http://HOST[:PORT] or https://..., "
                              f"not {base_url!r}")
        self.base_url = base_url
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = parts.port is None or parts.port == (443 if self.secure else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if default_port else f"{host}:{self.port}"
        self._socket: socket.socket | None = None
        self._reader: BinaryIO | None = None
        self.opened = 0

    def fetch(self, request: HttpRequest) -> HttpResponse:
        """Send `request` and read its whole answer; TransportFailure if none comes in time."""
        try:
            sock, reader = self._connect(request.timeout)
            sock.sendall(self._encode(request))
            answer, keep = _read_response(reader)
        except (OSError, ValueError) as e:
            self.close()  # half-used: the next request needs a fresh connection
            raise TransportFailure(f"{type(e).__name__}: {e}".rstrip(": ")) from e
        if not keep:
            self.close()
        return answer

    def close(self) -> None:
        """Close the kept-alive connection, if any."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _encode(self, request: HttpRequest) -> bytes:
        body = request.body or b""
        lines = [f"{request.method} {self.prefix}{request.target()} HTTP/1.1",
                 f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        if request.body is not None or request.method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body

    def _connect(self, timeout: float) -> tuple[socket.socket, BinaryIO]:
        if self._socket is None or self._reader is None:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.secure:
                import ssl  # only https pays for it

                sock = ssl.create_default_context().wrap_socket(sock,
                                                                server_hostname=self.host)
            self._socket, self._reader = sock, sock.makefile("rb")
            self.opened += 1
        self._socket.settimeout(timeout)
        return self._socket, self._reader


def _read_response(reader: BinaryIO) -> tuple[HttpResponse, bool]:
    """One response from `reader` (interim 1xx answers skipped), and whether the connection
    can carry another request."""
    while True:
        version, status, headers = _read_head(reader)
        if status >= 200:
            break
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _read_chunked(reader)
    elif "content-length" in headers:
        body = _read_exactly(reader, int(headers["content-length"]))
    elif status in (204, 304):
        body = b""
    else:  # the body runs to the end of the connection
        body, keep = reader.read(), False
    return HttpResponse(status, headers, body), keep


def _read_head(reader: BinaryIO) -> tuple[str, int, dict[str, str]]:
    status_line = _line(reader)
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    size = len(status_line)
    while line := _line(reader):
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ValueError("response head too large")
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return version, status, headers


def _line(reader: BinaryIO) -> str:
    raw = reader.readline(MAX_HEAD_BYTES + 1)
    if not raw:
        raise ConnectionError("the server closed the connection")
    if not raw.endswith(b"\n"):
        raise ValueError("response line too long")
    return raw.rstrip(b"\r\n").decode("latin-1")


def _read_exactly(reader: BinaryIO, size: int) -> bytes:
    body = reader.read(size)
    if len(body) != size:
        raise ConnectionError("the server closed the connection mid-answer")
    return body


def _read_chunked(reader: BinaryIO) -> bytes:
    chunks = []
    while size := int(_line(reader).split(";", 1)[0], 16):
        chunks.append(_read_exactly(reader, size))
        _line(reader)  # the CRLF after each chunk
    while _line(reader):  # trailers, up to the blank line
        pass
    return b"".join(chunks)
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
