"""The HTTP API: a Klein app whose routes parse, call one broker method, and render JSON.

Every error is `{"error": "..."}` with a 4xx status saying what was wrong (5xx only for the
server's own faults). The site's request and channel classes refuse oversized or malformed
requests before the routes see them, also with JSON.
"""

from __future__ import annotations

import hmac
import json
import math
from urllib.parse import unquote_to_bytes
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from elipc.broker import Broker
from elipc.config import MAX_LINGER, MAX_WAIT_TIMEOUT, Settings
from elipc.model import InvalidInput, check_content, check_name
from elipc.operations import Rejected
from elipc.store import StorageError

log = Logger(namespace="elipc.web")


class HttpError(Exception):
    """A request refused with `status` (411, 413, ...) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


class HttpApi:
    """el-ipc's endpoints over one Broker."""

    app = Klein()

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings

    @app.route("/send", methods=["POST"])
    async def send(self, request: IRequest) -> bytes:
        """POST /send {channel, sender, content, signature?} -> {ok, id}."""
        _params(request)
        body = _json_object(request)
        channel = check_name(_required(body, "channel"), "channel")
        sender = check_name(_required(body, "sender"), "sender")
        content = _content(_required(body, "content"), self.settings.max_content_bytes)
        signature = body.get("signature") or ""
        if not isinstance(signature, str):
            raise InvalidInput("signature must be a string")
        message_id = await self.broker.send(channel, sender, content, signature)
        return json_bytes(request, 200, {"ok": True, "id": message_id})

    @app.route("/messages", methods=["GET"])
    async def messages(self, request: IRequest) -> bytes:
        """GET /messages?channel&agent[&wait=true&timeout=S&linger=S] -> [message, ...]."""
        params = _params(request, "channel", "agent", "wait", "timeout", "linger")
        if not params.get("channel") or not params.get("agent"):
            raise InvalidInput("channel and agent params required")
        messages = await self.broker.read(
            check_name(params["channel"], "channel"),
            check_name(params["agent"], "agent"),
            wait=_flag(params.get("wait", ""), "wait"),
            timeout=_seconds(params, "timeout", self.settings.wait_timeout, MAX_WAIT_TIMEOUT),
            linger=_seconds(params, "linger", self.settings.linger, MAX_LINGER),
        )
        return json_bytes(request, 200, [m.as_json() for m in messages])

    @app.route("/channels", methods=["GET"])
    async def channels(self, request: IRequest) -> bytes:
        """GET /channels -> [{channel, count, last_message}], most recent first."""
        _params(request)
        return json_bytes(request, 200, await self.broker.channels())

    @app.route("/agents", methods=["GET"])
    async def agents(self, request: IRequest) -> bytes:
        """GET /agents -> [{name, identity, role, registered_by, created_at}] (no keys)."""
        _params(request)
        return json_bytes(request, 200, [a.as_json() for a in await self.broker.agents()])

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        """GET /health[?channel&agent] -> {status, pending, secure_mode}."""
        params = _params(request, "channel", "agent")
        channel, agent = params.get("channel", ""), params.get("agent", "")
        if channel:
            check_name(channel, "channel")
        if agent:
            check_name(agent, "agent")
        return json_bytes(request, 200, await self.broker.health(channel, agent))

    @app.route("/.well-known/agent-card.json", methods=["GET"])
    async def agent_card(self, request: IRequest) -> bytes:
        """The A2A agent card."""
        _params(request)
        return json_bytes(request, 200, await self.broker.agent_card())

    @app.handle_errors(InvalidInput)
    def invalid(self, request: IRequest, failure: Failure) -> bytes:
        return json_bytes(request, 400, {"error": str(failure.value)})

    @app.handle_errors(HttpError)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        return json_bytes(request, failure.value.status, {"error": str(failure.value)})

    @app.handle_errors(Rejected)
    def rejected(self, request: IRequest, failure: Failure) -> bytes:
        log.warn(
            "security event {kind}: {reason} (from {remote})", kind=failure.value.kind,
            reason=str(failure.value), remote=remote_address(request), security=True,
        )
        return json_bytes(request, 403, {"error": str(failure.value)})

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return json_bytes(request, 404, {"error": "not found"})

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or ())
        request.setHeader(b"Allow", allowed.encode("ascii"))
        return json_bytes(request, 405, {"error": f"method not allowed; use {allowed}"})

    @app.handle_errors(StorageError)
    def unavailable(self, request: IRequest, failure: Failure) -> bytes:
        log.error("storage failed: {reason}", reason=str(failure.value))
        return json_bytes(request, 503, {"error": f"storage unavailable: {failure.value}"})

    @app.handle_errors(Exception)
    def internal(self, request: IRequest, failure: Failure) -> bytes:
        # A bug, never bad input (that is answered above): log it whole, tell the client little.
        log.failure("unhandled error on {path}", failure, path=request.path)
        return json_bytes(request, 500, {"error": "internal error"})


# -- request parsing -------------------------------------------------------------------------


def _params(request: IRequest, *known: str) -> dict[str, str]:
    """The URL's query parameters, each once and UTF-8; any other parameter is a 400.

    Read from the URL itself: Twisted's request.args also holds a form-encoded body's fields,
    and curl -d sends JSON labelled as a form.
    """
    params: dict[str, str] = {}
    query = request.uri.partition(b"?")[2]
    for pair in filter(None, query.split(b"&")):
        raw_name, _, raw_value = pair.partition(b"=")
        name = _utf8(_unquote(raw_name), "query parameter name")
        if name not in known:
            raise InvalidInput(f"unknown query parameter: {name!r}")
        if name in params:
            raise InvalidInput(f"query parameter {name} given more than once")
        params[name] = _utf8(_unquote(raw_value), name)
    return params


def _unquote(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not valid UTF-8") from None


def _flag(value: str, name: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("", "false", "0", "no"):
        return False
    raise InvalidInput(f"{name} must be true or false, not {value!r}")


def _seconds(params: dict[str, str], name: str, default: float, maximum: float) -> float:
    if name not in params:
        return default
    try:
        value = float(params[name])
    except ValueError:
        raise InvalidInput(f"{name} must be a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise InvalidInput(f"{name} must be between 0 and {maximum:g} seconds")
    return value


def _json_object(request: IRequest) -> dict[str, Any]:
    """The body as a JSON object, or an error saying what is wrong with it."""
    headers = request.requestHeaders
    if not headers.hasHeader(b"content-length") and not headers.hasHeader(b"transfer-encoding"):
        raise HttpError(411, "Content-Length required")
    raw = request.content.read()
    if not raw:
        raise InvalidInput("request body is empty; send a JSON object")
    try:
        body = json.loads(_utf8(raw, "request body"))
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _required(body: dict[str, Any], field: str) -> Any:
    value = body.get(field)
    if value is None or value == "":
        raise InvalidInput("channel, sender, and content required")
    return value


def _content(value: Any, limit: int) -> str:
    try:
        return check_content(value, limit)
    except InvalidInput as e:
        if isinstance(value, str) and "limit" in str(e):
            raise HttpError(413, str(e)) from None
        raise


# -- the site: requests, connections, API key, logging ---------------------------------------


class ElipcRequest(Request):
    """A request that stops buffering its body past the site's limit (answered 413)."""

    too_large = False
    started = 0.0

    def gotLength(self, length: int | None) -> None:
        # Kept here: Twisted clears request.channel when the connection goes.
        self.elipc_site: ElipcSite = self.channel.site
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
        # Answers are small and a client waits for each: never let Nagle hold one back.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)

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
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        log.info("refused {status} from {remote}: {reason}", status=status, reason=message,
                 remote=str(getattr(self.transport.getPeer(), "host", "-")))
        # Drop whatever else this client sends, as Twisted does after a non-persistent request.
        self.dataReceived = self.lineReceived = self.rawDataReceived = _ignore  # type: ignore
        self.loseConnection()


def _ignore(*args: object) -> None:
    return None


class _Front(Resource):
    """The site's root: body-size and API-key checks, then the Klein app."""

    isLeaf = True

    def __init__(self, app: Resource, api_key: str) -> None:
        super().__init__()
        self._app = app
        self._expected = f"Bearer {api_key}".encode("utf-8") if api_key else b""

    def render(self, request: ElipcRequest) -> Any:
        request.notifyFinish().addErrback(_log_gone, request)
        if request.too_large:
            limit = request.elipc_site.max_body_bytes
            return json_bytes(request, 413, {"error": f"request body is over the limit of {limit} bytes"})
        if self._expected and not self._authorized(request):
            log.warn("security event api_key: missing or wrong API key (from {remote})",
                     kind="api_key", remote=remote_address(request), security=True)
            return json_bytes(request, 401, {"error": "unauthorized"})
        return self._app.render(request)

    def _authorized(self, request: IRequest) -> bool:
        given = request.getHeader(b"authorization") or b""
        # Constant time, whatever the length or content of what was sent.
        return hmac.compare_digest(given, self._expected)


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
    protocol = ElipcChannel  # plain HTTP/1.1 (no HTTP/2 negotiation)
    displayTracebacks = False

    def __init__(self, resource: Resource, clock: IReactorTime, max_body_bytes: int) -> None:
        # No form parsing: bodies are JSON, and Twisted's Content-Type parse (the email
        # package) cost a fifth of the server's CPU per send.
        super().__init__(resource, parsePOSTFormSubmission=False)
        self.clock = clock
        self.max_body_bytes = max_body_bytes

    def log(self, request: ElipcRequest) -> None:
        # Method, path (never the query or headers: no secrets), status, duration.
        log.info("{method} {path} {status} {duration_ms} ms",
                 method=request.method.decode("ascii", "replace"),
                 path=request.path.decode("utf-8", "replace"), status=request.code,
                 duration_ms=_elapsed_ms(request), remote=remote_address(request))


def make_site(broker: Broker, settings: Settings, clock: IReactorTime) -> ElipcSite:
    """The complete HTTP site for `broker`."""
    api = HttpApi(broker, settings)
    return ElipcSite(_Front(api.app.resource(), settings.api_key), clock, settings.max_body_bytes)

