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

import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from klein.interfaces import IKleinRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
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


# Told when a stream ends: the stream, and the failure that ended it, if one did (a
# CancelledError when the client went away during a read or a wait).
Ended = Callable[["EventStream", Failure | None], None]


@implementer(IPushProducer)
class EventStream:
    """One open stream: reads pages for its request while the client keeps up.

    Driven by callbacks, not a coroutine: a stream parked until a commit is this object and
    the waiter it is parked on, nothing more. It writes the head when started; when it ends
    (the server stopping, the client gone, a failure) `ended` is told, and answers the
    request unless the client is gone (`stopped`)."""

    __slots__ = ("request", "broker", "channels", "agent", "manual", "cursors", "paused",
                 "stopped", "waiting", "_ended", "_pending", "_stepping", "_again")

    def __init__(self, request: Request, broker: Broker, channels: list[str],
                 agent: str | None, manual: bool, cursors: dict[str, int],
                 ended: Ended) -> None:
        self.request, self.broker = request, broker
        self.channels, self.agent, self.manual = channels, agent, manual
        self.cursors = cursors  # manual and history modes: the last id sent, per channel
        self.paused: Deferred[None] | None = None
        self.stopped = False
        self.waiting = False  # parked until a commit: the heartbeat speaks for it
        self._ended: Ended | None = ended  # None once told
        self._pending: Deferred[Any] | None = None  # the page being read, or the wait
        self._stepping = self._again = False

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
        """The connection is gone: end now, whatever the stream was waiting for (the
        transport says so when the client closed; the request, whichever side did)."""
        if self.stopped:
            return
        self.stopped = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()  # a waiter forgets itself; a page being read is dropped
        self.resumeProducing()  # a stream waiting for the transport goes on, to its end

    # -- the stream ---------------------------------------------------------------------

    def start(self) -> None:
        """Register as the request's producer, write the head, and read."""
        try:
            self.request.registerProducer(self, True)
            self.request.write(b"retry: %d\n\n" % RETRY_MS)
        except Exception:
            self._end(Failure())
            return
        self._next()

    def _next(self, _: object = None) -> None:
        # The next page, unless stopped or paused. A page that comes at once (the tests'
        # synchronous pool) calls this again from within: it loops here, not deeper.
        if self._stepping:
            self._again = True
            return
        self._stepping = self._again = True
        try:
            while self._again:
                self._again = False
                if self.stopped:
                    self._end(None)
                elif self.paused is not None:
                    self.paused.addCallbacks(self._next)
                else:
                    try:
                        reading = self._pending = self._page()
                    except Exception:
                        self._end(Failure())
                    else:
                        reading.addCallbacks(self._read, self._failed)
        finally:
            self._stepping = False

    def _read(self, page: Page) -> None:
        self._pending = None
        if self.stopped:
            self._end(None)
            return
        waiting: Deferred[bool | None] | None = None
        try:
            if page.messages:
                self.request.write(b"".join(event(m) for m in page.messages))
            if not (page.messages and page.more):
                # Waiting starts in the same turn as the read that found no more: a send
                # committed in a later turn wakes it (database.py says why).
                self.waiting = True
                waiting = self._pending = self.broker.wait_any(self.channels, None)
        except Exception:
            self._end(Failure())
            return
        if waiting is None:
            self._next()
        else:
            waiting.addCallbacks(self._woken, self._failed)

    def _woken(self, woken: bool | None) -> None:
        self.waiting = False
        self._pending = None
        if woken is None:
            self._end(None)  # the server is stopping
        else:
            self._next()

    def _failed(self, failure: Failure) -> None:
        self.waiting = False
        self._pending = None
        self._end(failure)  # CancelledError: the client went away (stopProducing)

    def _end(self, failure: Failure | None) -> None:
        ended, self._ended = self._ended, None
        if ended is None:
            return  # told already
        self.waiting = False
        request = self.request
        if request.channel is not None:  # None once the connection is gone
            request.unregisterProducer()
        ended(self, failure)

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


class StreamResource(Resource):
    """What GET /stream's handler answers, once the stream may open: Klein renders it, which
    starts the stream and leaves the request to it (Klein keeps nothing of it meanwhile)."""

    isLeaf = True

    def __init__(self, stream: EventStream) -> None:
        super().__init__()
        self.stream = stream

    def render(self, request: IRequest) -> int:
        # Klein is done with the request, which the stream holds as long as it is open: let
        # go of what only answering it needed, Klein's URL adapter and Twisted's parse of the
        # query (elipc reads the URL itself: requests.query).
        held = self.stream.request
        with contextlib.suppress(KeyError):
            held.unsetComponent(IKleinRequest)
        held.args = {}
        # And its attributes in a table their size: the stream adds a few (producer,
        # chunked, ...) to the request's thirty, past what CPython stores compactly, and the
        # table it would make for them is sized for three times as many (1.6 KB, not 0.8).
        held.__dict__ = dict(held.__dict__)
        self.stream.start()
        return NOT_DONE_YET
