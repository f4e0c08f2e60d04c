"""Other servers' (and CLIs') commits on PostgreSQL: LISTEN, read by the reactor itself.

Every committed message NOTIFYs `elipc` with its channel (the store's insert trigger). A
server keeps one connection of its own LISTENing, and hands its socket to the reactor as an
IReadDescriptor: when PostgreSQL writes a notification, the reactor calls doRead, which reads
what has arrived without waiting (psycopg's notifies(timeout=0)) and wakes those channels'
long-polls and streams. No thread sits blocked on the socket and nothing polls: an idle
server costs nothing, and a wake costs one socket read on the reactor thread (the payloads
are a few bytes; reading them is far cheaper than the long-poll's own read that follows).

Connecting is blocking, so it runs in the reactor's thread pool. When the connection is lost
(the database restarted), the feed reconnects with capped backoff, then wakes every waiter:
what was committed while nobody listened is found by the read each waiter makes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from elipc.locations import redact

log = Logger(namespace="elipc.notify")
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.1, 2.0


@implementer(IReadDescriptor)
class NotifyFeed:
    """Wakes the waiters of each channel another connection commits a message to."""

    def __init__(self, url: str, wake: Callable[[set[str] | None], None], reactor: Any,
                 own: Callable[[int], bool] = lambda pid: False) -> None:
        self._url = url
        self._wake = wake  # Database.heard: after any turn in flight (None: every channel)
        self._reactor = reactor
        self._own = own  # this server's writer: its sends woke their waiters already
        self._conn: Any = None
        # The reactor watches a duplicate of the connection's socket, ours to close: psycopg
        # closes its own when the connection is lost, before we can unregister it.
        self._fd = -1
        self._stopped = False
        self._connecting = False
        self._delay = RECONNECT_FIRST_S
        self._retry: Any = None
        self.connected: Deferred[None] = Deferred()  # fires once first listening

    # -- what the broker calls (as ChangeFeed) ---------------------------------------------

    def start(self) -> None:
        """Connect and LISTEN (in the thread pool); then read notifications as they come."""
        self._stopped = False
        if self._connecting or self._conn is not None:
            return
        self._connecting = True
        work = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), _listen,
                                 self._url)
        work.addCallbacks(self._listening, self._failed)
        work.addErrback(lambda failure: log.failure("the notification feed failed", failure))

    def watch(self) -> None:
        """Nothing to do: the feed listens all the time (a waiter is parking)."""

    def stop(self) -> None:
        """Stop listening and close the connection (the server is stopping)."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._drop()

    # -- IReadDescriptor ---------------------------------------------------------------------

    def fileno(self) -> int:
        """The connection's socket."""
        return self._fd

    def doRead(self) -> None:
        """Read the notifications that have arrived; wake their channels."""
        import psycopg

        try:
            arrived = list(self._conn.raw.notifies(timeout=0.0))
        except psycopg.Error as e:
            self._lost(str(e))
            return
        channels = {n.payload for n in arrived if not self._own(n.pid)}
        if channels:
            self._wake(channels)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the socket fail."""
        self._lost(reason.getErrorMessage())

    def logPrefix(self) -> str:
        """The name in Twisted's log lines about this descriptor."""
        return "elipc.notify"

    # -- the connection's life -----------------------------------------------------------------

    def _listening(self, conn: Any) -> None:
        self._connecting = False
        if self._stopped or self._conn is not None:
            conn.close()
            return
        reconnected = self.connected.called
        self._conn, self._delay = conn, RECONNECT_FIRST_S
        self._fd = os.dup(conn.raw.fileno())
        self._reactor.addReader(self)
        if reconnected:
            log.info("listening to {url} again", url=redact(self._url))
        # Whoever parked before this LISTEN (at start-up, or while it was lost) may have
        # missed a commit: every waiter reads again.
        self._wake(None)
        if not reconnected:
            self.connected.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._connecting = False
        if self._stopped:
            return
        log.warn("cannot listen to {url} ({reason}); retrying in {delay:g} s",
                 url=redact(self._url), reason=failure.getErrorMessage(), delay=self._delay)
        self._schedule()

    def _lost(self, reason: str) -> None:
        if self._conn is None:
            return
        self._drop()
        if not self._stopped:
            log.warn("lost the notification connection to {url} ({reason}); reconnecting",
                     url=redact(self._url), reason=reason)
            self._schedule()

    def _schedule(self) -> None:
        self._retry = self._reactor.callLater(self._delay, self.start)
        self._delay = min(self._delay * 2, RECONNECT_MAX_S)

    def _drop(self) -> None:
        if self._conn is not None:
            self._reactor.removeReader(self)
            os.close(self._fd)
            conn, self._conn, self._fd = self._conn, None, -1
            try:
                conn.close()
            except Exception:
                pass  # already gone with the server


def _listen(url: str) -> Any:
    # In a pool thread: connect, LISTEN, and leave the connection to the reactor.
    from elipc.store import postgres

    conn = postgres.connect(url)
    try:
        conn.data_version()  # LISTEN
    except BaseException:
        conn.close()
        raise
    return conn
