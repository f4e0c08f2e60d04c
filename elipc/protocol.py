"""The HTTP API without I/O: builds every request elipc's server understands and reads every
answer it gives, and says once how failures are retried.

A transport (treq in `elipc.client`, a socket in `elipc.cli.transport`) only moves an
`HttpRequest` to the server and an `HttpResponse` back. Everything else lives here:

    api = Api(agent="herald", key=key, time=time.time)
    result = perform(api.read("ops"), ...)   # each transport drives `exchange` its own way

No Twisted import, and no cryptography import until a key signs something: the CLI's remote
path loads this module on every call.
"""


import json
import secrets
from time import time as wall_time
from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar
from urllib.parse import urlencode

from elipc.config import DEFAULT_WAIT_TIMEOUT, REQUEST_TIMEOUT
from elipc.model import Accepted, ElipcError, InvalidInput, Message, Page

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

T = TypeVar("T")
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
JSON_TYPE = "application/json"
# A proxy's HTML error page is cut to this many bytes in the error text.
ERROR_TEXT_BYTES = 200


# -- the wire ------------------------------------------------------------------------------


class HttpRequest(NamedTuple):
    """One request as it goes on the wire: `path` and `query` are relative to the server's
    base URL; `timeout` is how long the whole exchange may take."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = NO_HEADERS
    body: bytes | None = None
    timeout: float = REQUEST_TIMEOUT

    def target(self) -> str:
        """The path with its query string, as sent in the request line."""
        return self.path + ("?" + urlencode(self.query) if self.query else "")

    def url(self, base: str) -> str:
        """The absolute URL of this request on the server at `base`."""
        return base.rstrip("/") + self.target()


class HttpResponse(NamedTuple):
    """One answer: its status, its headers (names in lower case) and its body."""

    status: int
    headers: Mapping[str, str] = NO_HEADERS
    body: bytes = b""


class TransportFailure(Exception):
    """A request got no answer (refused, reset, timed out); the message says which."""


class ClientError(ElipcError):
    """The server refused the request (4xx): its `status` and its `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Unreachable(ElipcError, ConnectionError):
    """Every try of a request failed (no answer, or the server's own 5xx fault)."""


# -- reading answers -----------------------------------------------------------------------


def decode(response: HttpResponse) -> Any:
    """The answer's JSON; a body that is not JSON (a proxy's HTML 502) becomes an error text."""
    try:
        return json.loads(response.body)
    except ValueError:
        return {"error": response.body[:ERROR_TEXT_BYTES].decode("utf-8", "replace")}


def error_text(answer: Any) -> str:
    """What the server said went wrong: its {"error"} text, else the whole answer."""
    if isinstance(answer, dict) and "error" in answer:
        return str(answer["error"])
    return str(answer)


def answer_of(response: HttpResponse) -> Any:
    """The JSON of a successful answer (2xx), or ClientError for a refusal (4xx) or a
    redirect (3xx: elipc never redirects, so it is some proxy's, not an answer)."""
    answer = decode(response)
    if not 200 <= response.status < 300:
        raise ClientError(response.status, error_text(answer))
    return answer


def page_of(channel: str, response: HttpResponse) -> Page:
    """A /messages answer as a Page of Messages on `channel` (`X-Elipc-More` says more)."""
    shapes = answer_of(response)
    more = response.headers.get("x-elipc-more", "").lower() == "true"
    return Page([Message.from_json(channel, shape) for shape in shapes], more)


def accepted_of(response: HttpResponse) -> Accepted:
    """A /send answer: the id, and whether an idempotency key made it a duplicate."""
    answer = answer_of(response)
    return Accepted(int(answer["id"]), duplicate=bool(answer.get("duplicate", False)))


def watermark_of(response: HttpResponse) -> int:
    """An /ack answer: the agent's watermark now."""
    return int(answer_of(response)["watermark"])


# -- calls ---------------------------------------------------------------------------------


class Call(NamedTuple, Generic[T]):
    """One logical API call: `build` makes the request for each attempt (fresh read
    signatures), `parse` turns the answer into the result."""

    build: Callable[[], HttpRequest]
    parse: Callable[[HttpResponse], T]


def new_idempotency_key() -> str:
    """A fresh key naming one logical send through all its retries."""
    return secrets.token_urlsafe(18)


def json_body(value: object) -> bytes:
    """`value` as the UTF-8 JSON of a request body."""
    return json.dumps(value).encode("utf-8")


class Api:
    """Every endpoint of one server as a Call, for one agent: signed with its Ed25519 `key`
    when given, carrying the bearer `api_key` when given, timed by `time` (Unix seconds)."""

    def __init__(self, agent: str | None = None, key: "Ed25519PrivateKey | None" = None,
                 api_key: str | None = None, time: Callable[[], float] = wall_time) -> None:
        self.agent, self.key, self.time = agent, key, time
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    # -- messages --------------------------------------------------------------------------

    def send(self, channel: str, content: str, sender: str | None = None,
             idempotency_key: str | None = None) -> Call[Accepted]:
        """POST /send. The body (signature and idempotency key) is made once, here, so every
        retry repeats the same logical send and the server stores it once."""
        sender = self.name(sender)
        fields: dict[str, object] = {
            "channel": channel, "sender": sender, "content": content,
            "idempotency_key": idempotency_key or new_idempotency_key()}
        if self.key is not None:
            from elipc.identity import sign_send

            signed = sign_send(self.key, channel, sender, content, int(self.time()))
            fields.update(timestamp=signed.timestamp, nonce=signed.nonce,
                          signature=signed.signature)
        request = self._post("/send", fields, {})
        return Call(lambda: request, accepted_of)

    def read(self, channel: str, agent: str | None = None, wait: bool = False,
             timeout: float | None = None, limit: int | None = None, ack: str = "manual",
             linger: float | None = None) -> Call[Page]:
        """GET /messages: `agent`'s unread on `channel`; with ack="manual" nothing moves until
        `ack`. The request may last REQUEST_TIMEOUT beyond the long-poll it asks for."""
        agent = self.name(agent)
        query = [("channel", channel), ("agent", agent), ("ack", ack)]
        if wait:
            query.append(("wait", "true"))
        query += _optional(timeout=timeout, limit=limit, linger=linger)
        waiting = (DEFAULT_WAIT_TIMEOUT if timeout is None else timeout) if wait else 0.0
        return Call(lambda: self._get("/messages", query, self._signature(channel, agent),
                                      REQUEST_TIMEOUT + waiting),
                    lambda response: page_of(channel, response))

    def ack(self, channel: str, up_to: int, agent: str | None = None) -> Call[int]:
        """POST /ack: move `agent`'s watermark past message `up_to`; answers the watermark."""
        agent = self.name(agent)
        fields = {"channel": channel, "agent": agent, "up_to": up_to}
        return Call(lambda: self._post("/ack", fields, self._signature(channel, agent, up_to)),
                    watermark_of)

    def history(self, channel: str, after_id: int = 0, limit: int | None = None) -> Call[Page]:
        """GET /history: the channel's messages after `after_id`, moving nothing."""
        query = [("channel", channel), ("after_id", str(after_id)), *_optional(limit=limit)]
        return Call(lambda: self._get("/history", query),
                    lambda response: page_of(channel, response))

    # -- the directory and the rest --------------------------------------------------------

    def channels(self) -> Call[list[dict[str, Any]]]:
        """GET /channels: every channel with its count and last message time."""
        return Call(lambda: self._get("/channels"), answer_of)

    def agents(self) -> Call[list[dict[str, Any]]]:
        """GET /agents: the directory, with public keys and did:keys."""
        return Call(lambda: self._get("/agents"), answer_of)

    def health(self, channel: str | None = None,
               agent: str | None = None) -> Call[dict[str, Any]]:
        """GET /health; with both `channel` and `agent`, that agent's pending count (signed
        like a read when keyed)."""
        if not (channel and agent):
            return Call(lambda: self._get("/health"), answer_of)
        query = [("channel", channel), ("agent", agent)]
        return Call(lambda: self._get("/health", query, self._signature(channel, agent)),
                    answer_of)

    def agent_card(self) -> Call[dict[str, Any]]:
        """GET /.well-known/agent-card.json: the server's A2A agent card."""
        return Call(lambda: self._get("/.well-known/agent-card.json"), answer_of)

    def sign_card(self, signatures: list[dict[str, str]]) -> Call[dict[str, Any]]:
        """POST /card/signatures: an operator's signatures of the card the server serves."""
        request = self._post("/card/signatures", {"signatures": signatures}, {})
        return Call(lambda: request, answer_of)

    def register(self, name: str, public_key: str, operator: str,
                 operator_key: "Ed25519PrivateKey", identity: str = "") -> Call[dict[str, Any]]:
        """POST /register, signed here with the operator's key (which never leaves this
        process); each attempt signs a fresh timestamp."""
        def build() -> HttpRequest:
            from elipc.identity import register_payload, sign

            timestamp = int(self.time())
            payload = register_payload(name, identity, timestamp, public_key)
            return self._post("/register", {
                "name": name, "public_key": public_key, "identity": identity,
                "operator": operator, "timestamp": timestamp,
                "operator_signature": sign(operator_key, payload)}, {})
        return Call(build, answer_of)

    # -- building ----------------------------------------------------------------------------

    def name(self, given: str | None) -> str:
        """`given`, else the agent this Api was made for; one of them is needed."""
        name = given or self.agent
        if not name:
            raise InvalidInput("no agent name: pass one or make the client with agent=")
        return name

    def _signature(self, channel: str, agent: str, up_to: int | None = None) -> dict[str, str]:
        """X-Elipc-* headers proving `agent` reads (or acks up to `up_to`); none unkeyed."""
        if self.key is None:
            return {}
        from elipc import identity

        timestamp, nonce = int(self.time()), identity.new_nonce()
        payload = (identity.read_payload(channel, agent, timestamp, nonce) if up_to is None
                   else identity.ack_payload(channel, agent, up_to, timestamp, nonce))
        return {"X-Elipc-Timestamp": str(timestamp), "X-Elipc-Nonce": nonce,
                "X-Elipc-Signature": identity.sign(self.key, payload)}

    def _get(self, path: str, query: list[tuple[str, str]] | None = None,
             headers: dict[str, str] | None = None,
             timeout: float = REQUEST_TIMEOUT) -> HttpRequest:
        return HttpRequest("GET", path, tuple(query or ()),
                           {"Accept": JSON_TYPE, **self._auth, **(headers or {})},
                           None, timeout)

    def _post(self, path: str, fields: dict[str, object],
              headers: dict[str, str]) -> HttpRequest:
        return HttpRequest("POST", path, (), {"Accept": JSON_TYPE, "Content-Type": JSON_TYPE,
                                              **self._auth, **headers}, json_body(fields))


def _optional(**values: float | int | None) -> list[tuple[str, str]]:
    """Query parameters for the values that were given (None: the server's default)."""
    return [(name, f"{value:g}" if isinstance(value, float) else str(value))
            for name, value in values.items() if value is not None]


# -- retries -------------------------------------------------------------------------------


# The longest a client waits on a server's Retry-After before asking again.
MAX_RETRY_AFTER = 60


class RetryPolicy(NamedTuple):
    """How often and how patiently a failed request is tried again: `retries` more times,
    waiting `backoff` seconds doubled per try, at most `max_backoff`, times a jitter in
    [0.5, 1) so that clients a restart cut off at once do not come back at once."""

    retries: int = 6
    backoff: float = 0.2
    max_backoff: float = 5.0

    def delay(self, attempt: int, jitter: float) -> float:
        """Seconds to wait after failed try number `attempt` (0 first); `jitter` in [0, 1)."""
        return min(self.max_backoff, self.backoff * 2.0 ** attempt) * (0.5 + jitter / 2)


Step = HttpRequest | float
Outcome = HttpResponse | TransportFailure | None


def exchange(call: Call[T], policy: RetryPolicy,
             random: Callable[[], float]) -> Generator[Step, Outcome, T]:
    """Drive `call` without I/O: yields an HttpRequest (send back its HttpResponse or a
    TransportFailure) or a float (sleep that many seconds, send back None); returns the
    parsed result. 5xx and failures are retried after a backoff, a 429 after its
    Retry-After; any other 4xx raises ClientError at once; the last failure raises
    Unreachable (the last 429, ClientError)."""
    for attempt in range(policy.retries + 1):
        request = call.build()
        outcome = yield request
        if (isinstance(outcome, HttpResponse) and outcome.status == 429
                and attempt < policy.retries):
            yield retry_after(outcome, policy.delay(attempt, random()))
            continue  # nothing was done: the same call again (a send keeps its key)
        if isinstance(outcome, HttpResponse) and outcome.status < 500:
            return call.parse(outcome)
        failure = describe(outcome)
        if attempt == policy.retries:
            raise Unreachable(f"{request.method} {request.path} failed after {attempt + 1} "
                              f"tries: {failure}")
        yield policy.delay(attempt, random())
    raise AssertionError("unreachable: the last attempt returns or raises")


def retry_after(response: HttpResponse, otherwise: float) -> float:
    """How long a 429 asks to wait (its Retry-After seconds, at most MAX_RETRY_AFTER), or
    `otherwise` when it does not say in seconds."""
    text = response.headers.get("retry-after", "")
    if not (text.isascii() and text.isdigit()):
        return otherwise
    return float(min(int(text), MAX_RETRY_AFTER))


def describe(outcome: Outcome) -> str:
    """One line on why an attempt failed."""
    if isinstance(outcome, HttpResponse):
        return f"HTTP {outcome.status}: {error_text(decode(outcome))}"
    return str(outcome) or type(outcome).__name__
