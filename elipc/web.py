"""The HTTP API: a Klein app whose routes parse, call one broker method, and render JSON.

Every error is `{"error": "..."}` with a 4xx status saying what was wrong (5xx only for the
server's own faults). site.py refuses what never reaches a route, also with JSON.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from elipc.broker import Broker
from elipc.config import (
    DEFAULT_PAGE,
    MAX_LINGER,
    MAX_PAGE,
    MAX_WAIT_TIMEOUT,
    ConfigError,
    Settings,
    seconds_setting,
)
from elipc.identity import IdentityError, decode_signature, did_key, parse_public_key
from elipc.model import (
    RESERVED_PREFIX,
    InvalidInput,
    check_channel_for_sending,
    check_content,
    check_identity,
    check_name,
    check_nonce,
    check_timestamp,
)
from elipc.operations import Rejected, Signed
from elipc.site import ElipcSite, Front, json_bytes, remote_address
from elipc.store import Conflict, StorageError

log = Logger(namespace="elipc.web")
READ_HEADERS = (b"x-elipc-timestamp", b"x-elipc-nonce", b"x-elipc-signature")


class HttpError(Exception):
    """A request refused with `status` (411, 413, ...) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpApi:
    """el-ipc's endpoints over one Broker."""

    app = Klein()

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings

    @app.route("/send", methods=["POST"])
    async def send(self, request: IRequest) -> bytes:
        """POST /send {channel, sender, content, signature?, timestamp?, nonce?} -> {ok, id}."""
        _params(request)
        body = _json_object(request)
        channel = check_channel_for_sending(_required(body, "channel"))
        sender = check_name(_required(body, "sender"), "sender")
        _context(request, sender=sender, channel=channel)
        content = _content(_required(body, "content"), self.settings.max_content_bytes)
        signed = _signed(body.get("signature"), body.get("timestamp"), body.get("nonce"))
        accepted = await self.broker.send(channel, sender, content, signed,
                                          _idempotency_key(request, body))
        answer: dict[str, object] = {"ok": True, "id": accepted.id}
        if accepted.duplicate:
            answer["duplicate"] = True
        return json_bytes(request, 200, answer)

    @app.route("/ack", methods=["POST"])
    async def ack(self, request: IRequest) -> bytes:
        """POST /ack {channel, agent, up_to} -> {ok, watermark}: commit a manual-ack read."""
        _params(request)
        body = _json_object(request)
        channel = check_name(_required(body, "channel"), "channel")
        agent = check_name(_required(body, "agent"), "agent")
        _context(request, agent=agent, channel=channel)
        up_to = body.get("up_to")
        if not isinstance(up_to, int) or isinstance(up_to, bool) or up_to < 0:
            raise InvalidInput("up_to must be a message id (a whole number)")
        watermark = await self.broker.ack(channel, agent, up_to, _read_signature(request))
        return json_bytes(request, 200, {"ok": True, "watermark": watermark})

    @app.route("/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        """POST /register {name, public_key, identity?, operator, timestamp,
        operator_signature}: an operator's locally signed authorization of an agent's key."""
        _params(request)
        body = _json_object(request)
        if "operator_key" in body:
            # Never echo or log it: the point is that it should not have been sent at all.
            self.broker.security("private_key_sent", "a private key was sent to /register",
                                 remote_address(request))
            raise InvalidInput("never send a private key: sign the registration locally "
                               "(elipc register) and send operator_signature instead")
        name = check_name(body.get("name"), "name")
        operator = check_name(body.get("operator"), "operator")
        _context(request, agent=name, operator=operator)
        public_key = _public_key(body.get("public_key"))
        signed = Signed(_signature(body.get("operator_signature"), "operator_signature"),
                        check_timestamp(body.get("timestamp")))
        agent_identity = check_identity(body.get("identity", ""))
        await self.broker.register(name, agent_identity, public_key, operator, signed)
        return json_bytes(request, 200, {
            "ok": True, "message": f"Agent '{name}' registered by operator '{operator}'"})

    @app.route("/messages", methods=["GET"])
    async def messages(self, request: IRequest) -> bytes:
        """GET /messages?channel&agent[&wait&timeout&linger&limit&ack=manual] -> [message, ...];
        GET /messages?channel&after_id[&limit] (no agent) -> history, moving nothing."""
        params = _params(request, "channel", "agent", "wait", "timeout", "linger", "limit",
                         "ack", "after_id")
        limit = _whole(params, "limit", DEFAULT_PAGE, MAX_PAGE, minimum=1)
        if "after_id" in params and "agent" not in params:
            return await self._history(request, params, limit)
        if not params.get("channel") or not params.get("agent"):
            raise InvalidInput("channel and agent params required")
        if "after_id" in params:
            raise InvalidInput("after_id reads history and takes no agent")
        channel = check_name(params["channel"], "channel")
        agent = check_name(params["agent"], "agent")
        _context(request, agent=agent, channel=channel)
        messages, more = await self.broker.read(
            channel, agent, _read_signature(request),
            wait=_flag(params.get("wait", ""), "wait"),
            timeout=_seconds(params, "timeout", self.settings.wait_timeout, MAX_WAIT_TIMEOUT),
            linger=_seconds(params, "linger", self.settings.linger, MAX_LINGER),
            limit=limit, manual=_ack_mode(params.get("ack", "auto")),
        )
        return _page(request, messages, more)

    async def _history(self, request: IRequest, params: dict[str, str], limit: int) -> bytes:
        channel = check_name(params.get("channel"), "channel")
        if channel.startswith(RESERVED_PREFIX) and await self.broker.is_secure():
            raise Rejected(f"history of {RESERVED_PREFIX} channels is not public in secure "
                           "mode; read it as an operator", "security_channel")
        after_id = _whole(params, "after_id", 0, 2**63 - 1)
        messages, more = await self.broker.history(channel, after_id, limit)
        return _page(request, messages, more)

    @app.route("/channels", methods=["GET"])
    async def channels(self, request: IRequest) -> bytes:
        """GET /channels -> [{channel, count, last_message}], most recent first."""
        _params(request)
        return json_bytes(request, 200, await self.broker.channels())

    @app.route("/agents", methods=["GET"])
    async def agents(self, request: IRequest) -> bytes:
        """GET /agents -> [{name, identity, role, registered_by, created_at, public_key, did}]."""
        _params(request)
        agents = await self.broker.agents()
        return json_bytes(request, 200, [{**a.as_json(), "did": _did(a.public_key)}
                                         for a in agents])

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        """GET /health[?channel&agent] -> {status, pending, secure_mode, security_events}."""
        params = _params(request, "channel", "agent")
        channel, agent = params.get("channel", ""), params.get("agent", "")
        if channel:
            check_name(channel, "channel")
        if agent:
            check_name(agent, "agent")
        _context(request, agent=agent, channel=channel)
        signed = _read_signature(request) if channel and agent else None
        return json_bytes(request, 200, await self.broker.health(channel, agent, signed))

    @app.route("/.well-known/agent-card.json", methods=["GET"])
    async def agent_card(self, request: IRequest) -> bytes:
        """The A2A agent card."""
        _params(request)
        return json_bytes(request, 200, await self.broker.agent_card())

    @app.handle_errors(InvalidInput, HttpError, Conflict)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        # Conflict is a StorageError: its handler must come before the 503 one below.
        status = getattr(failure.value, "status", 409 if failure.check(Conflict) else 400)
        return json_bytes(request, status, {"error": str(failure.value)})

    @app.handle_errors(Rejected)
    def rejected(self, request: IRequest, failure: Failure) -> bytes:
        refusal = failure.value
        self.broker.security(refusal.kind, str(refusal), remote_address(request),
                             **getattr(request, "elipc_context", {}))
        return json_bytes(request, refusal.status, {"error": str(refusal)})

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
        return seconds_setting(params[name], name, maximum)
    except ConfigError as e:
        raise InvalidInput(str(e)) from None


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


def _page(request: IRequest, messages: list[Any], more: bool) -> bytes:
    # Whether more is waiting travels in a header, so the body stays el-ipc's plain list.
    request.setHeader(b"X-Elipc-More", b"true" if more else b"false")
    return json_bytes(request, 200, [m.as_json() for m in messages])


def _ack_mode(value: str) -> bool:
    if value not in ("auto", "manual"):
        raise InvalidInput(f"ack must be auto or manual, not {value!r}")
    return value == "manual"


def _whole(params: dict[str, str], name: str, default: int, maximum: int,
           minimum: int = 0) -> int:
    if name not in params:
        return default
    text = params[name]
    if not (text.isascii() and text.isdigit()) or not minimum <= int(text) <= maximum:
        raise InvalidInput(f"{name} must be a whole number from {minimum} to {maximum}")
    return int(text)


def _idempotency_key(request: IRequest, body: dict[str, Any]) -> str | None:
    header = request.getHeader(b"idempotency-key")
    field = body.get("idempotency_key")
    if header is not None and field is not None and header.decode("utf-8", "replace") != field:
        raise InvalidInput("Idempotency-Key header and idempotency_key field differ")
    key = field if header is None else _utf8(header, "Idempotency-Key")
    return None if key is None else check_name(key, "idempotency key")


def _context(request: IRequest, **fields: str) -> None:
    # What a security event should say about this request (names only, never secrets).
    request.elipc_context = {k: v for k, v in fields.items() if v}  # type: ignore[attr-defined]


def _signature(value: Any, field: str) -> str:
    if not isinstance(value, str) or decode_signature(value) is None:
        raise InvalidInput(f"{field} must be base64 of a 64-byte Ed25519 signature")
    return value


def _signed(signature: Any, timestamp: Any, nonce: Any) -> Signed:
    """A send's signature fields: none, el-ipc's signature alone, or elipc/2's three."""
    if signature in (None, ""):
        if timestamp is not None or nonce is not None:
            raise InvalidInput("timestamp and nonce come with a signature")
        return Signed("")
    if (timestamp is None) != (nonce is None):
        raise InvalidInput("timestamp and nonce go together")
    if timestamp is None:
        return Signed(_signature(signature, "signature"))
    return Signed(_signature(signature, "signature"), check_timestamp(timestamp),
                  check_nonce(nonce))


def _read_signature(request: IRequest) -> Signed | None:
    """The X-Elipc-* headers of a signed read, or None when there are none."""
    values = [request.getHeader(name) for name in READ_HEADERS]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise InvalidInput("a signed read needs all of X-Elipc-Timestamp, X-Elipc-Nonce and "
                           "X-Elipc-Signature")
    timestamp, nonce, signature = (v.decode("ascii", "replace") for v in values)
    return Signed(_signature(signature, "X-Elipc-Signature"), check_timestamp(timestamp),
                  check_nonce(nonce))


def _public_key(value: Any) -> str:
    # Kept exactly as sent: the operator signed these very characters.
    if not isinstance(value, str):
        raise InvalidInput("public_key must be a PEM string")
    try:
        parse_public_key(value)
    except IdentityError:
        raise InvalidInput("public_key is not an Ed25519 public key (PEM)") from None
    return value


def _did(public_key: str) -> str | None:
    try:
        return did_key(public_key)
    except IdentityError:
        return None  # an entry el-ipc stored without a usable key


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


def make_site(broker: Broker, settings: Settings, clock: IReactorTime) -> ElipcSite:
    """The complete HTTP site for `broker`."""
    api = HttpApi(broker, settings)
    front = Front(api.app.resource(), settings.api_key, broker.security)
    return ElipcSite(front, clock, settings.max_body_bytes)

