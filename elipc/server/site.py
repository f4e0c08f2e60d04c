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
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import BadHost, HTTPException

log = Logger(namespace="elipc.web")


# Runs blocking work off the reactor thread and fires with its result.
Offload = Callable[[Callable[[], Any]], "Deferred[Any]"]


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


# Every way a request can be slow has a bound in time: its head (request line and headers)
# must arrive within HEAD_TIMEOUT_S of its first byte, its body within BODY_TIMEOUT_S of its
# head; past either the client gets a JSON 408 and the connection closes. (An idle
# keep-alive connection is closed by Twisted's idle timeout, 60 s.) In bytes: the head is at
# most Twisted's 16 KiB, the body the site's max_body_bytes.
HEAD_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 60.0
REASONS = {400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
           413: b"Content Too Large"}


class ElipcRequest(Request):
    """A request refused with JSON (never Twisted's HTML) whatever goes wrong, and cut off at
    once when its body passes the site's limit."""

    started = 0.0
    answering = False  # set by Front.render: from then on, a client going away is logged

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
        if self._body_budget >= 0:
            super().handleContentChunk(data)
            return
        # A chunked body passed the limit: answer now and stop reading, rather than decode
        # whatever the client goes on sending.
        channel = self.channel
        if isinstance(channel, ElipcChannel):
            channel.refuse(413, _over_limit(self.elipc_site.max_body_bytes))

    def connectionLost(self, reason: Failure) -> None:
        # The connection went before the answer was finished (Twisted calls this only then).
        # Logged here rather than by a notifyFinish errback: no Deferred held per request.
        if self.answering:
            log.info("{method} {path} client went away after {duration_ms} ms",
                     method=self.method.decode("ascii", "replace"),
                     path=self.path.decode("utf-8", "replace"),
                     duration_ms=_elapsed_ms(self), remote=remote_address(self))
        super().connectionLost(reason)
        # A streaming response's producer stops whichever side closed the connection (the
        # transport tells it only when the client did).
        if self.producer is not None:
            self.producer.stopProducing()

    def _handleStar(self) -> None:
        # `OPTIONS *` asks what the server supports; any other method on `*` is refused.
        if self.method == b"OPTIONS":
            self.setHeader(b"Allow", b"GET, POST, OPTIONS")
            self.write(json_bytes(self, 200, {"allow": ["GET", "POST", "OPTIONS"]}))
        else:
            self.setHeader(b"Allow", b"OPTIONS")
            self.write(json_bytes(self, 405, {"error": "the request target * is for OPTIONS "
                                                       "only"}))
        self.finish()

    def processingFailed(self, reason: Failure) -> Failure:
        # The last resort for an error no handler answered: a bug. JSON, never HTML.
        log.failure("unhandled error on {path}", reason,
                    path=self.path.decode("utf-8", "replace"))
        if not self.startedWriting:
            self.write(json_bytes(self, 500, {"error": "internal error"}))
        if not self.finished:
            self.finish()
        return reason


class ElipcChannel(HTTPChannel):
    """HTTP/1.1 whose own refusals (bad framing, declared oversize body) are JSON too."""

    site: ElipcSite  # set by Site.buildProtocol
    _awaiting_head = True
    _refused = False
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open_channels.add(self)
        # Answers are small and a client waits for each: never let Nagle hold one back.
        transport = self.transport
        if transport is not None and hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._clear_deadline()
        super().connectionLost(reason)
        self.site.channel_closed(self)

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_head and self._deadline is None:
            self._set_deadline(HEAD_TIMEOUT_S, "request head (line and headers)")
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
        self._clear_deadline()
        if self.length is not None and self.length > self.site.max_body_bytes:
            self.refuse(413, _over_limit(self.site.max_body_bytes))
            return
        if self.length or self._transferDecoder is not None:
            self._set_deadline(BODY_TIMEOUT_S, "request body")
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._clear_deadline()
        if not self._refused:  # a body cut off past the limit is never processed
            super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        super().requestDone(request)
        self._awaiting_head = True

    def _set_deadline(self, seconds: float, what: str) -> None:
        self._clear_deadline()
        self._deadline = self.site.clock.callLater(
            seconds, self.refuse, 408, f"{what} not complete within {seconds:g} s")

    def _clear_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own answer to malformed framing is a bare 400; keep the API's JSON shape.
        self.refuse(400, "malformed HTTP request (request line, headers or Content-Length)")

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` with a JSON error, outside any request, and close the connection
        once it is written, reading nothing more."""
        self._clear_deadline()
        # TCP and Unix transports say whether they are closing already; ITransport does not.
        closing = getattr(self.transport, "disconnecting", False)
        if self._refused or self.transport is None or closing:
            return  # already closing (Twisted's idle timeout, say): nothing more to say
        self._refused = True
        body = json.dumps({"error": message}).encode("utf-8")
        reason = REASONS[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        log.info("refused {status} from {remote}: {reason}", status=status, reason=message,
                 remote=str(getattr(self.transport.getPeer(), "host", "-")))
        # Drop whatever else this client sends, as Twisted does after a non-persistent request.
        # Methods replaced on the instance: this channel reads nothing more.
        self.dataReceived = _ignore  # type: ignore[method-assign, assignment]
        self.lineReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign, assignment]
        self.loseConnection()


def _ignore(*args: object) -> None:
    return None


def _over_limit(limit: int) -> str:
    return f"request body is over the limit of {limit} bytes"


class Front(Resource):
    """The site's root: body-size and API-key checks, then the Klein app."""

    isLeaf = True

    def __init__(self, app: Resource, api_key: str, security: Callable[..., None],
                 bytes_in: Callable[[int], None], console: Any = None) -> None:
        super().__init__()
        self._app = app
        self._console = console  # server/console.py's ConsoleFiles, served without the key
        self._security = security
        self._bytes_in = bytes_in
        self._expected = f"Bearer {api_key}".encode("utf-8") if api_key else b""

    def render(self, request: ElipcRequest) -> Any:
        request.answering = True
        body = request.content
        if body is not None and (received := body.seek(0, 2)):
            body.seek(0)
            self._bytes_in(received)
        if self._console is not None and self._console.serves(request.path):
            return self._console.render(request)
        if self._expected and not self._authorized(request):
            self._security("api_key", "missing or wrong API key", remote_address(request))
            return json_bytes(request, 401, {"error": "unauthorized"})
        if not _url_is_utf8(request):
            # Klein would answer this in plain text; keep the API's JSON errors.
            return json_bytes(request, 400, {"error": "the URL's path or host is not valid UTF-8"})
        try:
            return self._app.render(request)
        except HTTPException as e:
            # Raised while binding the URL map, before Klein's error handlers: a Host header
            # that is no host name (a label over 63 characters, an empty label, ...).
            status = e.code or 400
            message = "the Host header is not a valid host name" if isinstance(e, BadHost) \
                else (e.description or "bad request")
            return json_bytes(request, status, {"error": message})

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
        self.streams: set[Any] = set()  # the open event streams (GET /stream)
        self._all_closed: list[Deferred[None]] = []

    def open_streams(self) -> float:
        """How many event streams are open (a metrics gauge)."""
        return float(len(self.streams))

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
