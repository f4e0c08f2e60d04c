"""The HTTP API: a Klein app whose routes parse (requests.py), call one broker method, and
render JSON.

Each route declares its query parameters once. Every error is `{"error": "..."}`; which
status a domain error gets is decided in one table here (STATUS) and rendered by one handler.
site.py refuses what never reaches a route, also with JSON.
"""

from __future__ import annotations

import hashlib

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from elipc import wire
from elipc.agentcard import CACHE_SECONDS
from elipc.config import (
    DEFAULT_PAGE,
    DEFAULT_WAIT_TIMEOUT,
    MAX_LINGER,
    MAX_PAGE,
    Settings,
)
from elipc.identity import IdentityError, did_key, key_fingerprint
from elipc.model import (
    RESERVED_PREFIX,
    ElipcError,
    InvalidInput,
    Page,
    Rejected,
    Signed,
    StorageError,
    check_channel_for_sending,
    check_content,
    check_identity,
    check_name,
)
from elipc.server import requests
from elipc.server.broker import Broker
from elipc.server.console import ConsoleFiles
from elipc.server.openapi import describe
from elipc.server.routing import APP, route
from elipc.server.limits import RateLimited, RateLimits
from elipc.server.metrics import CONTENT_TYPE
from elipc.server.site import ElipcSite, Front, Offload, json_bytes, remote_address
from elipc.server.streams import EventStream, Heartbeat, StreamResource
from elipc.server.views import ConsoleViews

log = Logger(namespace="elipc.web")

# The HTTP status of every domain error, most specific first (the first match wins): the
# table every front shares, and what only HTTP framing here can get wrong.
STATUS: tuple[tuple[type[ElipcError], int], ...] = (
    (requests.LengthRequired, 411), (RateLimited, 429), *wire.STATUS)

MAX_STREAM_CHANNELS = 64


def status_of(error: ElipcError) -> int:
    """The HTTP status for `error` (500 for a domain error nobody placed: a bug)."""
    return next((status for kind, status in STATUS if isinstance(error, kind)), 500)


class HttpApi(ConsoleViews):
    """el-ipc's endpoints, and the console's (views.py), over one Broker."""

    app = APP

    def __init__(self, broker: Broker, settings: Settings, offload: Offload) -> None:
        self.broker = broker
        self.settings = settings
        self.offload = offload
        self.description = describe(settings)
        self.streams: set[EventStream] = set()
        self._stream_ended = self._end_stream  # bound once: not a method object per stream
        self.heartbeat = Heartbeat(broker.clock, self.streams)
        self.limits = RateLimits(broker.clock, settings.rate_limit, settings.rate_burst)

    def admit(self, request: IRequest, name: str | None = None) -> None:
        """Charge the request to the rate limit of the name it acts for (a sender, an agent,
        an operator) at its address, or of its address alone; RateLimited when empty."""
        setattr(request, "elipc_charged", True)
        self.limits.charge(remote_address(request), name)

    @route("/send", "POST", named=True)
    async def send(self, request: IRequest, params: dict[str, str]) -> bytes:
        """POST /send {channel, sender, content, signature?, timestamp?, nonce?} -> {ok, id}."""
        body = requests.json_object(request)
        channel = check_channel_for_sending(wire.required(body, "channel"))
        sender = check_name(wire.required(body, "sender"), "sender")
        self.admit(request, sender)
        content = check_content(wire.required(body, "content"),
                                self.settings.max_content_bytes)
        accepted = await self.broker.send(channel, sender, content,
                                          wire.send_signature(body),
                                          requests.idempotency_key(request, body))
        answer: dict[str, object] = {"ok": True, "id": accepted.id}
        if accepted.duplicate:
            answer["duplicate"] = True
        return json_bytes(request, 200, answer)

    @route("/ack", "POST", named=True)
    async def ack(self, request: IRequest, params: dict[str, str]) -> bytes:
        """POST /ack {channel, agent, up_to} -> {ok, watermark}: commit a manual-ack read."""
        body = requests.json_object(request)
        channel = check_name(wire.required(body, "channel"), "channel")
        agent = check_name(wire.required(body, "agent"), "agent")
        self.admit(request, agent)
        watermark = await self.broker.ack(channel, agent, requests.up_to(body),
                                          requests.read_signature(request))
        return json_bytes(request, 200, {"ok": True, "watermark": watermark})

    @route("/register", "POST", named=True)
    async def register(self, request: IRequest, params: dict[str, str]) -> bytes:
        """POST /register {name, public_key, identity?, operator, timestamp,
        operator_signature}: an operator's locally signed authorization of an agent's key."""
        body = requests.json_object(request)
        if "operator_key" in body:
            # Never echo or log it: the point is that it should not have been sent at all.
            self.broker.security("private_key_sent", "a private key was sent to /register",
                                 remote_address(request))
            raise InvalidInput("never send a private key: sign the registration locally "
                               "(elipc register) and send operator_signature instead")
        name = check_name(body.get("name"), "name")
        operator = check_name(body.get("operator"), "operator")
        self.admit(request, operator)
        public_key = wire.public_key(body.get("public_key"))
        signed = wire.signature(body.get("operator_signature"), "operator_signature")
        timestamp = wire.body_timestamp(body.get("timestamp"))
        agent_identity = check_identity(body.get("identity", ""))
        await self.broker.register(name, agent_identity, public_key, operator,
                                   Signed(signed, timestamp))
        return json_bytes(request, 200, {
            "ok": True, "message": f"Agent '{name}' registered by operator '{operator}'"})

    @route("/messages", "GET", "channel", "agent", "wait", "timeout", "linger", "limit", "ack",
           named=True)
    async def messages(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /messages?channel&agent[&wait&timeout&linger&limit&ack=manual] -> [message, ...]."""
        limit = requests.whole(params, "limit", DEFAULT_PAGE, MAX_PAGE, minimum=1)
        if not params.get("channel") or not params.get("agent"):
            raise InvalidInput("channel and agent params required")
        channel = check_name(params["channel"], "channel")
        agent = check_name(params["agent"], "agent")
        self.admit(request, agent)
        wait_max = self.settings.max_wait
        page = await self.broker.read(
            channel, agent, requests.read_signature(request),
            wait=requests.flag(params.get("wait", "false"), "wait"),
            timeout=requests.seconds(params, "timeout", min(DEFAULT_WAIT_TIMEOUT, wait_max),
                                     wait_max),
            linger=requests.seconds(params, "linger", min(self.settings.linger, wait_max),
                                    min(MAX_LINGER, wait_max)),
            limit=limit, manual=requests.ack_mode(params.get("ack", "auto")),
        )
        return _page(request, page)

    @route("/history", "GET", "channel", "after_id", "before_id", "limit")
    async def history(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /history?channel[&after_id][&before_id][&limit] -> [message, ...], oldest
        first, moving nothing: the page after after_id, or with before_id the page just
        before it (scrolling back; X-Elipc-More then says whether older ones remain)."""
        channel = check_name(params.get("channel"), "channel")
        limit = requests.whole(params, "limit", DEFAULT_PAGE, MAX_PAGE, minimum=1)
        if channel.startswith(RESERVED_PREFIX) and await self.broker.is_secure():
            raise Rejected(f"history of {RESERVED_PREFIX} channels is not public in secure "
                           "mode; read it as an operator", "security_channel", channel=channel)
        after_id = requests.whole(params, "after_id", 0, 2**63 - 1)
        if "before_id" in params:
            before_id = requests.whole(params, "before_id", 0, 2**63 - 1, minimum=1)
            return _page(request, await self.broker.overview.history_before(
                channel, before_id, limit, after_id))
        return _page(request, await self.broker.history(channel, after_id, limit))

    @route("/stream", "GET", "channel", "agent", "ack", "after_id", repeated=("channel",),
           named=True)
    async def stream(self, request: IRequest, params: dict[str, str]) -> StreamResource:
        """GET /stream?channel=C[&channel=D...][&agent=A[&ack=manual]|&after_id=N]: a
        text/event-stream of the channels' messages as they commit (streams.py)."""
        if not params.get("channel"):
            raise InvalidInput("channel param required")
        channels = list(dict.fromkeys(check_name(c, "channel")
                                      for c in params["channel"].split("\n")))
        if len(channels) > MAX_STREAM_CHANNELS:
            raise InvalidInput(f"at most {MAX_STREAM_CHANNELS} channels a stream")
        agent = check_name(params["agent"], "agent") if "agent" in params else None
        self.admit(request, agent)
        if agent is None and "ack" in params:
            raise InvalidInput("ack applies to an agent's stream; add agent")
        if agent is not None and "after_id" in params:
            raise InvalidInput("after_id streams history and takes no agent")
        manual = requests.ack_mode(params.get("ack", "auto"))
        after_id = requests.whole(params, "after_id", 0, 2**63 - 1)
        last_event_id = requests.last_event_id(request)
        cursors = await self.broker.open_stream(channels, agent, requests.read_signature(request),
                                                manual, last_event_id, after_id)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")  # proxies: do not buffer events
        assert isinstance(request, Request)  # the site's own (a producer's consumer)
        stream = EventStream(request, self.broker, channels, agent, manual, cursors,
                             self._stream_ended)
        self.streams.add(stream)
        self.heartbeat.opened()
        # Klein renders it, which starts the stream, and is done with the request: an open
        # stream holds nothing of this coroutine or of Klein's answering (streams.py).
        return StreamResource(stream)

    def _end_stream(self, stream: EventStream, failure: Failure | None) -> None:
        # A stream ended: finish its request, unless the client is gone; a failure first
        # writes the JSON error any route would answer (so in the stream, after its events).
        self.streams.discard(stream)
        request = stream.request
        if stream.stopped or request.finished or request.channel is None:
            if failure is not None and not failure.check(CancelledError):
                log.failure("stream on {path} failed after its client went away", failure,
                            path=request.path)
            return
        if failure is not None:
            handler = self.refused if failure.check(ElipcError) else self.internal
            request.write(handler(request, failure))
        request.finish()

    @route("/channels", "GET")
    async def channels(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /channels -> [{channel, count, last_message}], most recent first."""
        return json_bytes(request, 200, await self.broker.channels())

    @route("/agents", "GET")
    async def agents(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /agents -> [{name, identity, role, registered_by, created_at, public_key, did,
        fingerprint}]."""
        agents = await self.broker.agents()
        return json_bytes(request, 200, [{**a.as_json(), **_key_names(a.public_key)}
                                         for a in agents])

    @route("/health", "GET", "channel", "agent", named=True)
    async def health(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /health[?channel&agent] -> {status, pending, secure_mode, security_events}."""
        channel = check_name(params["channel"], "channel") if "channel" in params else ""
        agent = check_name(params["agent"], "agent") if "agent" in params else ""
        self.admit(request, agent or None)
        signed = requests.read_signature(request)  # checked even when it will not be used
        if not (channel and agent):
            signed = None
        return json_bytes(request, 200, await self.broker.health(channel, agent, signed))

    @route("/.well-known/agent-card.json", "GET")
    async def agent_card(self, request: IRequest, params: dict[str, str]) -> bytes:
        """The A2A agent card, cacheable: an ETag of its bytes (If-None-Match: 304)."""
        body = await self.broker.agent_card()
        etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode("ascii")
        request.setHeader(b"ETag", etag)
        request.setHeader(b"Cache-Control", b"max-age=%d" % CACHE_SECONDS)
        if _entity_tags(request.getHeader(b"if-none-match")) & {etag, b"*"}:
            request.setResponseCode(304)
            return b""
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    @route("/card/signatures", "POST", named=True)
    async def card_signatures(self, request: IRequest, params: dict[str, str]) -> bytes:
        """POST /card/signatures {signatures}: an operator's signatures of the card served."""
        body = requests.json_object(request)
        self.admit(request)
        signer = await self.broker.sign_card(body.get("signatures"))
        return json_bytes(request, 200, {"ok": True, "signed_by": signer})

    @route("/openapi.json", "GET")
    async def openapi(self, request: IRequest, params: dict[str, str]) -> bytes:
        """The OpenAPI 3.1 description of this server (its limits, its bearer key)."""
        return json_bytes(request, 200, self.description)

    @route("/metrics", "GET")
    async def metrics(self, request: IRequest, params: dict[str, str]) -> bytes:
        """Prometheus' text exposition, rendered in a thread."""
        if not self.broker.metrics.enabled:
            return json_bytes(request, 404, {"error": "metrics are off (IPC_METRICS=0)"})
        body: bytes = await self.offload(self.broker.metrics.render)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    @app.handle_errors(ElipcError)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        """Every domain error: its status from STATUS, its message as the error."""
        error = failure.value
        assert isinstance(error, ElipcError)  # handle_errors matched it
        if not getattr(request, "elipc_charged", False):
            try:  # refused before it named anyone: its address pays for it
                self.admit(request)
            except RateLimited as limited:
                error = limited
        if isinstance(error, RateLimited):
            request.setHeader(b"Retry-After", b"%d" % error.retry_after)
        status = status_of(error)
        if isinstance(error, Rejected):
            self.broker.security(error.kind, str(error), remote_address(request),
                                 **error.context)
        elif isinstance(error, StorageError):
            log.error("storage failed: {reason}", reason=str(error))
            return json_bytes(request, status, {"error": f"storage unavailable: {error}"})
        elif status == 500:
            log.failure("unplaced error on {path}", failure, path=request.path)
        return json_bytes(request, status, {"error": str(error)})

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        """No such route."""
        return json_bytes(request, 404, {"error": "not found"})

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        """A route asked for with a method it does not take; Allow says which it does."""
        error = failure.value
        assert isinstance(error, MethodNotAllowed)  # handle_errors matched it
        allowed = ", ".join(error.valid_methods or ())
        request.setHeader(b"Allow", allowed.encode("ascii"))
        return json_bytes(request, 405, {"error": f"method not allowed; use {allowed}"})

    @app.handle_errors(Exception)
    def internal(self, request: IRequest, failure: Failure) -> bytes:
        """A bug, never bad input (that is answered above): log it whole, tell little."""
        log.failure("unhandled error on {path}", failure, path=request.path)
        return json_bytes(request, 500, {"error": "internal error"})


def _page(request: IRequest, page: Page) -> bytes:
    # Whether more is waiting travels in a header, so the body stays el-ipc's plain list.
    request.setHeader(b"X-Elipc-More", b"true" if page.more else b"false")
    return json_bytes(request, 200, [m.as_json() for m in page.messages])


def _key_names(public_key: str) -> dict[str, str | None]:
    # The key's did:key and fingerprint (None for an entry el-ipc stored without a usable key).
    try:
        return {"did": did_key(public_key), "fingerprint": key_fingerprint(public_key)}
    except IdentityError:
        return {"did": None, "fingerprint": None}


def make_site(broker: Broker, settings: Settings, clock: IReactorTime,
              offload: Offload) -> ElipcSite:
    """The complete HTTP site for `broker`; `offload` runs blocking work in a thread."""
    api = HttpApi(broker, settings, offload)
    front = Front(api.app.resource(), settings.api_key, broker.security,
                  broker.metrics.bytes_in.inc, ConsoleFiles(bool(settings.api_key)))
    site = ElipcSite(front, clock, settings.max_body_bytes)
    site.streams = api.streams  # counted for /metrics
    return site


def _entity_tags(header: bytes | None) -> set[bytes]:
    # If-None-Match: a list of quoted tags (weak ones compare equal, RFC 9110), or *.
    if header is None:
        return set()
    return {tag.strip().removeprefix(b"W/") for tag in header.split(b",")}
