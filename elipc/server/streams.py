"""Server-Sent Events (`GET /stream`): messages pushed as they commit, one event each.

A stream follows one or more channels for an agent (or, without one, their history from an
id) and writes `id: <message id>` and `data: <message JSON>` per message, in id order across
its channels, with a comment every HEARTBEAT_S so proxies and clients know it is alive.

Delivery, as for /messages: `ack=auto` moves the agent's watermarks as each page of events is
written (el-ipc's way: a connection lost meanwhile loses what was in flight); `ack=manual`
moves nothing until POST /ack, or a reconnection with `Last-Event-ID: N`, which acknowledges
everything up to N on the stream's channels (at least once). History mode moves nothing.

Flow control: the stream is the request's streaming producer. When the client does not read
and the transport's buffer fills, Twisted pauses it, and it reads nothing more from the
database until resumed: a slow reader costs at most one page of buffered events.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from elipc.model import Message, Page

if TYPE_CHECKING:
    from elipc.server.broker import Broker

HEARTBEAT_S = 15.0
# A page of events: at most this many messages, or about this much content (one message at
# least): with the transport's buffer, what a reader that stopped reading can cost.
STREAM_PAGE = 100
STREAM_PAGE_CHARS = 256 * 1024
RETRY_MS = 3000


class Heartbeat:
    """One timer for every stream: each HEARTBEAT_S, a comment on every stream that is
    waiting (so a fan-out wake does not cost a timer per stream). Runs while any is open."""

    def __init__(self, clock: IReactorTime, streams: set[EventStream]) -> None:
        self._clock, self._streams = clock, streams
        self._call: IDelayedCall | None = None

    def opened(self) -> None:
        """A stream opened: make sure the timer runs."""
        if self._call is None:
            self._call = self._clock.callLater(HEARTBEAT_S, self._beat)

    def _beat(self) -> None:
        self._call = None
        for stream in list(self._streams):
            if stream.waiting and not stream.stopped and stream.paused is None:
                stream.request.write(b": keep-alive\n\n")
        if self._streams:
            self.opened()


def event(message: Message) -> bytes:
    """One message as a server-sent event: its id, and its JSON (with its channel). The
    bytes of the last few messages are kept: a message fanned out to many streams is
    encoded once."""
    encoded = _recent.get(message.id)
    if encoded is None or encoded[0] != message:
        data = json.dumps({"channel": message.channel, **message.as_json()})
        encoded = (message, b"id: %d\ndata: %s\n\n" % (message.id, data.encode("utf-8")))
        if len(_recent) >= RECENT_EVENTS:
            del _recent[next(iter(_recent))]
        _recent[message.id] = encoded
    return encoded[1]


RECENT_EVENTS = 64
_recent: dict[int, tuple[Message, bytes]] = {}


@implementer(IPushProducer)
class EventStream:
    """One open stream: reads pages for its request while the client keeps up."""

    __slots__ = ("request", "broker", "channels", "agent", "manual", "cursors", "paused",
                 "stopped", "waiting")

    def __init__(self, request: Request, broker: Broker, channels: list[str],
                 agent: str | None, manual: bool, cursors: dict[str, int]) -> None:
        self.request, self.broker = request, broker
        self.channels, self.agent, self.manual = channels, agent, manual
        self.cursors = cursors  # manual and history modes: the last id sent, per channel
        self.paused: Deferred[None] | None = None
        self.stopped = False
        self.waiting = False  # parked until a commit: the heartbeat speaks for it

    # -- IPushProducer: Twisted calls these as the client's transport fills and drains ----

    def pauseProducing(self) -> None:
        """The transport is full: read nothing more until resumed."""
        if self.paused is None:
            self.paused = Deferred()

    def resumeProducing(self) -> None:
        """The transport drained: go on."""
        paused, self.paused = self.paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.stopped = True
        self.resumeProducing()

    # -- the stream ---------------------------------------------------------------------

    async def run(self) -> None:
        """Write events until the client goes or the server stops."""
        request = self.request
        request.registerProducer(self, True)
        try:
            request.write(b"retry: %d\n\n" % RETRY_MS)
            while not self.stopped:
                if self.paused is not None:
                    await self.paused
                    continue
                page = await self._page()
                if self.stopped:
                    break
                if page.messages:
                    request.write(b"".join(event(m) for m in page.messages))
                    if page.more:
                        continue
                # Waiting starts in the same turn as the read that found no more: a send
                # committed in a later turn wakes it (database.py says why).
                self.waiting = True
                try:
                    woken = await self.broker.wait_any(self.channels, None)
                finally:
                    self.waiting = False
                if woken is None:
                    break  # the server is stopping
        finally:
            if request.channel is not None:  # None once the connection is gone
                request.unregisterProducer()

    def _page(self) -> Deferred[Page]:
        if self.agent is not None and not self.manual:
            return self.broker.take_across(self.channels, self.agent, STREAM_PAGE,
                                           STREAM_PAGE_CHARS)
        reading = self.broker.across(list(self.cursors.items()), STREAM_PAGE,
                                     STREAM_PAGE_CHARS)
        return reading.addCallback(self._moved)

    def _moved(self, page: Page) -> Page:
        for message in page.messages:
            self.cursors[message.channel] = message.id
        return page
