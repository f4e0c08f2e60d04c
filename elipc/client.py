"""An asynchronous elipc client on treq, for Twisted programs that reach the server over HTTP.

    client = Client("https://ipc.example", key=load_private_key("herald.key"), agent="herald")
    await client.send("ops", "deploy done")
    await client.listen("ops", handle_batch)     # forever; acknowledges after each batch

What is sent and how answers are read, signed and retried is `elipc.protocol`'s (the CLI's
remote mode uses the same over a socket); this module only carries requests with treq on
the reactor. Each logical send carries one idempotency key (and one signature) through all
its retries, so a retry after a lost response is stored once. Reads default to manual
acknowledgement: the watermark moves only when `ack` (or `listen`, after the handler
returns) says so. Connection failures and 5xx answers are retried with capped exponential
backoff; 4xx raise ClientError; giving up raises Unreachable (a ConnectionError).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import treq
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from elipc.model import Accepted, Message, Page
from elipc.protocol import (
    Api,
    Call,
    ClientError,
    HttpRequest,
    HttpResponse,
    Outcome,
    RetryPolicy,
    TransportFailure,
    Unreachable,
    describe,
    exchange,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["Client", "ClientError", "Page", "Unreachable"]

log = Logger(namespace="elipc.client")
T = TypeVar("T")
# A caller's cancellation (CancelledError) is not among them: it ends the call. addTimeout
# raises defer.TimeoutError; error.TimeoutError is a connection attempt's own timeout.
RETRYABLE = (error.ConnectError, error.ConnectionClosed, ResponseFailed, ResponseNeverReceived,
             error.TimeoutError, defer.TimeoutError)
Handler = Callable[[list[Message]], Awaitable[object] | object]


def _global_reactor() -> IReactorTime:
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)  # the global reactor is typed as a module


class Client:
    """One agent's view of one elipc server."""

    def __init__(self, base_url: str, http: Any = treq, key: Ed25519PrivateKey | None = None,
                 agent: str | None = None, clock: IReactorTime | None = None,
                 retries: int = 6, backoff: float = 0.2, max_backoff: float = 5.0,
                 api_key: str | None = None) -> None:
        clock = clock if clock is not None else _global_reactor()
        self.base_url = base_url.rstrip("/")
        self.http, self.key, self.agent, self.clock = http, key, agent, clock
        self.policy = RetryPolicy(retries, backoff, max_backoff)
        self.api = Api(agent, key, api_key, self.seconds)

    # -- messages --------------------------------------------------------------------------

    async def send(self, channel: str, content: str, sender: str | None = None,
                   idempotency_key: str | None = None) -> Accepted:
        """Send `content`; `duplicate` says an earlier try with its key was already stored."""
        return await self.perform(self.api.send(channel, content, sender, idempotency_key))

    async def read(self, channel: str, agent: str | None = None, wait: bool = False,
                   timeout: float | None = None, limit: int | None = None,
                   ack: str = "manual", linger: float | None = None) -> Page:
        """Unread messages; with ack="manual" (the default) nothing moves until `ack`."""
        return await self.perform(self.api.read(channel, agent, wait, timeout, limit, ack,
                                                linger))

    async def ack(self, channel: str, up_to: int, agent: str | None = None) -> int:
        """Move the watermark past message `up_to`; returns the watermark."""
        return await self.perform(self.api.ack(channel, up_to, agent))

    async def history(self, channel: str, after_id: int = 0, limit: int | None = None) -> Page:
        """Messages after `after_id`, moving no watermark."""
        return await self.perform(self.api.history(channel, after_id, limit))

    async def listen(self, channel: str, handler: Handler, agent: str | None = None,
                     limit: int | None = None) -> None:
        """Deliver every batch to `handler` forever, acknowledging it once `handler`
        returns (or its Deferred/coroutine completes); a handler that raises stops here,
        unacknowledged, so the batch comes again."""
        while True:
            page = await self.read(channel, agent, wait=True, limit=limit, ack="manual")
            if page.last_id is not None:
                outcome = handler(page.messages)
                if hasattr(outcome, "__await__") or hasattr(outcome, "addCallback"):
                    await outcome  # type: ignore[misc]  # a Deferred or a coroutine, both awaitable
                await self.ack(channel, page.last_id, agent)

    # -- the directory and the rest --------------------------------------------------------

    async def channels(self) -> list[dict[str, Any]]:
        """Every channel with its count and last message time."""
        return await self.perform(self.api.channels())

    async def agents(self) -> list[dict[str, Any]]:
        """The directory, with public keys and did:keys."""
        return await self.perform(self.api.agents())

    async def health(self, channel: str | None = None,
                     agent: str | None = None) -> dict[str, Any]:
        """Server status (and `agent`'s pending count on `channel`, signed when keyed)."""
        return await self.perform(self.api.health(channel, agent))

    async def agent_card(self) -> dict[str, Any]:
        """The server's A2A agent card."""
        return await self.perform(self.api.agent_card())

    async def register(self, name: str, public_key: str, operator: str,
                       operator_key: Ed25519PrivateKey,
                       agent_identity: str = "") -> dict[str, Any]:
        """Register `name` with `public_key`, signed here with the operator's private key
        (which never leaves this process)."""
        return await self.perform(self.api.register(name, public_key, operator, operator_key,
                                                    agent_identity))

    # -- the transport -----------------------------------------------------------------------

    def seconds(self) -> float:
        """Now, on the clock this client was given (what signatures carry)."""
        return self.clock.seconds()

    async def perform(self, call: Call[T]) -> T:
        """Run `call` to its result: its requests over treq, its backoff on the clock."""
        steps = exchange(call, self.policy, random.random)
        outcome: Outcome = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, HttpRequest):
                request, outcome = step, await self._fetch(step)
            else:
                log.info("{method} {path} failed ({failure}); retry in {delay:.2f} s",
                         method=request.method, path=request.path,
                         failure=describe(outcome), delay=step)
                await deferLater(self.clock, step)
                outcome = None

    async def _fetch(self, request: HttpRequest) -> HttpResponse | TransportFailure:
        """One attempt; it may take `request.timeout` (TimeoutError, retried), while a
        caller's cancel stays a cancel."""
        attempt = Deferred.fromCoroutine(self._round_trip(request))
        try:
            return await attempt.addTimeout(request.timeout, self.clock)
        except RETRYABLE as e:
            return TransportFailure(type(e).__name__)

    async def _round_trip(self, request: HttpRequest) -> HttpResponse:
        response = await self.http.request(request.method, request.url(self.base_url),
                                           data=request.body, headers=request.headers)
        body = await self.http.content(response)
        headers = {name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
                   for name, values in response.headers.getAllRawHeaders()}
        return HttpResponse(response.code, headers, body)
