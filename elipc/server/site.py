"""The HTTP site around the Klein app: elipc's request, channel and root resource.

They refuse what never reaches a route (oversized or malformed requests, a missing API key)
with the same JSON errors, and log one line per request.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

log = Logger(namespace="elipc.web")


def json_bytes(request: IRequest, status: int, value: object) -> bytes:
    """Set `status` and the JSON content type; return `value` encoded."""
    body = json.dumps(value).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def remote_address(request: IRequest) -> str:
    """The peer's address for logs: host for TCP, the socket path or '-' otherwise."""
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or getattr(address, "name", None) or "-")


class ElipcRequest(Request):
    """A request that stops buffering its body past the site's limit (answered 413)."""

    too_large = False
    started = 0.0

    def gotLength(self, length: int | None) -> None:
        # Kept here: Twisted clears request.channel when the connection goes.
        channel = self.channel
        assert isinstance(channel, ElipcChannel)  # ElipcSite builds only these
        self.elipc_site: ElipcSite = channel.site
        self.started = self.elipc_site.clock.seconds()
        self._body_budget = self.elipc_site.max_body_bytes
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_budget -= len(data)
        if self._body_budget < 0:
            self.too_large = True  # drop the rest; process() answers 413
        else:
            super().handleContentChunk(data)


class ElipcChannel(HTTPChannel):
    """HTTP/1.1 whose own refusals (bad framing, declared oversize body) are JSON too."""

    site: ElipcSite  # set by Site.buildProtocol

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open_channels.add(self)
        # Answers are small and a client waits for each: never let Nagle hold one back.
        transport = self.transport
        if transport is not None and hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.site.channel_closed(self)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.site.max_body_bytes:
            self._refuse(413, f"request body is over the limit of {self.site.max_body_bytes} bytes")
            return
        super().allHeadersReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own answer to malformed framing is a bare 400; keep the API's JSON shape.
        self._refuse(400, "malformed HTTP request (request line, headers or Content-Length)")

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode("utf-8")
        reason = {400: b"Bad Request", 413: b"Content Too Large"}[status]
        assert self.transport is not None  # only called while the connection is up
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        log.info("refused {status} from {remote}: {reason}", status=status, reason=message,
                 remote=str(getattr(self.transport.getPeer(), "host", "-")))
        # Drop whatever else this client sends, as Twisted does after a non-persistent request.
        # Methods replaced on the instance: this channel reads nothing more.
        self.dataReceived = _ignore  # type: ignore[method-assign]
        self.lineReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign, assignment]
        self.loseConnection()


def _ignore(*args: object) -> None:
    return None


class Front(Resource):
    """The site's root: body-size and API-key checks, then the Klein app."""

    isLeaf = True

    def __init__(self, app: Resource, api_key: str, security: Callable[..., None]) -> None:
        super().__init__()
        self._app = app
        self._security = security
        self._expected = f"Bearer {api_key}".encode("utf-8") if api_key else b""

    def render(self, request: ElipcRequest) -> Any:
        request.notifyFinish().addErrback(_log_gone, request)
        if request.too_large:
            limit = request.elipc_site.max_body_bytes
            return json_bytes(request, 413, {"error": f"request body is over the limit of {limit} bytes"})
        if self._expected and not self._authorized(request):
            self._security("api_key", "missing or wrong API key", remote_address(request))
            return json_bytes(request, 401, {"error": "unauthorized"})
        if not _url_is_utf8(request):
            # Klein would answer this in plain text; keep the API's JSON errors.
            return json_bytes(request, 400, {"error": "the URL's path or host is not valid UTF-8"})
        return self._app.render(request)

    def _authorized(self, request: IRequest) -> bool:
        given = request.getHeader(b"authorization") or b""
        # Constant time, whatever the length or content of what was sent.
        return hmac.compare_digest(given, self._expected)


def _url_is_utf8(request: IRequest) -> bool:
    try:
        for part in (*request.postpath, request.getRequestHostname()):
            part.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _log_gone(failure: Failure, request: ElipcRequest) -> None:
    log.info("{method} {path} client went away after {duration_ms} ms",
             method=request.method.decode("ascii", "replace"),
             path=request.path.decode("utf-8", "replace"),
             duration_ms=_elapsed_ms(request), remote=remote_address(request))


def _elapsed_ms(request: ElipcRequest) -> float:
    return round((request.elipc_site.clock.seconds() - request.started) * 1000, 2)


class ElipcSite(Site):
    """The HTTP site: elipc's request and channel classes and one log line per request."""

    requestFactory = ElipcRequest
    # Plain HTTP/1.1 (no HTTP/2 negotiation). HTTPFactory types this as a callable making a
    # generic channel; a channel class is one.
    protocol = ElipcChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(self, resource: Resource, clock: IReactorTime, max_body_bytes: int) -> None:
        # No form parsing: bodies are JSON, and Twisted's Content-Type parse (the email
        # package) cost a fifth of the server's CPU per send.
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=clock)
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.open_channels: set[ElipcChannel] = set()
        self._all_closed: list[Deferred[None]] = []

    def channel_closed(self, channel: ElipcChannel) -> None:
        """Forget a channel whose connection is gone."""
        self.open_channels.discard(channel)
        if not self.open_channels:
            closed, self._all_closed = self._all_closed, []
            for waiting in closed:
                waiting.callback(None)

    def close_connections(self, timeout: float) -> Deferred[None]:
        """Close every open connection once it has written what it has (answers to
        long-polls included); fires when all are gone, or after `timeout` seconds."""
        if not self.open_channels:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._all_closed.append(waiting)
        for channel in list(self.open_channels):
            channel.loseConnection()
        return waiting.addTimeout(timeout, self.clock, onTimeoutCancel=lambda _, __: None)

    def log(self, request: http.Request) -> None:
        # Method, path (never the query or headers: no secrets), status, duration.
        assert isinstance(request, ElipcRequest)  # requestFactory
        log.info("{method} {path} {status} {duration_ms} ms",
                 method=request.method.decode("ascii", "replace"),
                 path=request.path.decode("utf-8", "replace"), status=request.code,
                 duration_ms=_elapsed_ms(request), remote=remote_address(request))
