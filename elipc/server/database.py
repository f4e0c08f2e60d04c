"""The server's storage: the store.py functions run through adbapi, off the reactor thread.

Every write goes to one writer thread with one connection. Writes that arrive while a turn is
running wait, and the next turn runs them all in one transaction (store.run_batch), so one
fsync serves many senders and SQLite's lock is never fought over inside this process. Each
turn first asks SQLite, cheaply, whether another process (the CLI) has committed, and reports
the channels it wrote to. Reads that move nothing go to a small pool of reader connections.

ChangeFeed asks for those turns every 10 ms while anyone waits, and not at all otherwise.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Protocol

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from elipc import store
from elipc.locations import is_url
from elipc.model import StorageError
from elipc.server.waiters import Waiters

log = Logger(namespace="elipc.database")
Operation = Callable[[Any], Any]
# Hears each writer turn that ran writes: how many, and how long the batch and commit took.
TurnHook = Callable[[int, float], None]
Pool = Any  # adbapi.ConnectionPool, or the tests' synchronous stand-in with the same methods
# While anyone waits, how often the writer checks for other processes' commits.
EXTERNAL_COMMIT_POLL_S = 0.01


def sqlite_pool(path: str, connections: int, reactor: IReactorTime | None = None,
                ) -> ConnectionPool:
    """An adbapi pool of `connections` sqlite3 connections in autocommit mode, configured,
    to the existing file at `path` (a pool never creates one)."""
    return ConnectionPool(
        "sqlite3", store.open_uri(path), uri=True, check_same_thread=False,
        isolation_level=None,
        timeout=store.BUSY_TIMEOUT_S, cp_openfun=store.configure,
        cp_min=connections, cp_max=connections, cp_reactor=reactor,
    )


def postgres_pool(url: str, connections: int, reactor: IReactorTime | None = None,
                  ) -> ConnectionPool:
    """An adbapi pool of `connections` PostgreSQL connections (store.postgres.PgConnection,
    autocommit: the store runs its own transactions). A lost connection fails the statement
    that meets it, and the next one reconnects (the database restarted)."""
    return ConnectionPool(
        "elipc.store.postgres", url, cp_min=connections, cp_max=connections,
        cp_reactor=reactor,
    )


class OpenedFile:
    """The database file as the server opened it: its path and its (device, inode). On
    PostgreSQL (a URL), there is no file to check."""

    def __init__(self, location: str) -> None:
        self.path = location
        self.identity = None if is_url(location) else store.file_identity(location)

    def check(self) -> None:
        """Raise DatabaseGone if the path names another file now, or none."""
        if self.identity is not None:
            store.check_same_file(self.path, self.identity)


def open_connections(pool: Pool, count: int) -> Deferred[Any]:
    """Have each of the pool's `count` threads open its connection now, rather than on first
    use (which could be after the file is gone)."""
    everyone = threading.Barrier(count, timeout=store.BUSY_TIMEOUT_S)
    return gatherResults([pool.runWithConnection(_wait_for_all, everyone)
                          for _ in range(count)], consumeErrors=True)


def _wait_for_all(db: Any, everyone: threading.Barrier) -> None:
    # Each call holds its thread (and so its connection) until all have one.
    everyone.wait()


class CommitWatch:
    """Tells, from the writer thread, which channels other processes have written to."""

    def __init__(self, enabled: bool = True) -> None:
        self.version: int | None = None
        self.last_id = 0
        self.enabled = enabled  # on PostgreSQL, NotifyFeed hears other servers' commits
        self.backend_pid = 0

    def check(self, db: Any) -> set[str]:
        """The channels written by another connection since the last check (cheap if none)."""
        if not self.enabled:
            self.backend_pid = getattr(db, "backend_pid", 0)
            return set()
        version = store.data_version(db)
        if self.version is None:
            self.version, self.last_id = version, store.last_message_id(db)
            return set()
        if version == self.version:
            return set()
        self.version = version
        self.last_id, channels = store.channels_after(db, self.last_id)
        return channels


def run_turn(db: Any, operations: list[Operation], watch: CommitWatch, opened: OpenedFile,
             on_turn: TurnHook) -> tuple[list[tuple[bool, Any]], set[str]]:
    """One writer turn: check the file is still the one opened, look for other processes'
    commits, then run the batch (timed, for `on_turn`)."""
    opened.check()
    changed = watch.check(db)
    if not operations:
        return [], changed
    started = time.perf_counter()
    outcomes = store.run_batch(db, operations)
    on_turn(len(operations), time.perf_counter() - started)
    return outcomes, changed


def _no_hook(batch: int, seconds: float) -> None:
    pass


class Database:
    """Deferred-returning access to the store for the server; `on_external_commit` hears
    which channels other processes wrote to."""

    def __init__(self, location: str, writer: Pool, readers: Pool,
                 on_external_commit: Callable[[set[str] | None], None],
                 on_turn: TurnHook = _no_hook) -> None:
        self._opened = OpenedFile(location)
        self._writer = writer
        self._readers = readers
        self._queue: list[tuple[Operation, Deferred[Any]]] = []
        self._turn: Deferred[None] | None = None
        self._poll_wanted = False
        self._watch = CommitWatch(enabled=not is_url(location))
        self._drained: list[Deferred[None]] = []
        self._on_external_commit = on_external_commit
        self._on_turn = on_turn
        self._held = 0
        self._closed = False
        self._gone_reported = False
        # Other servers' commits heard (NotifyFeed) while a turn ran: woken after its results.
        self._heard: set[str] = set()
        self._heard_all = False

    def write(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run `function(db, *args)` in the writer's next turn; fire with its result."""
        if self._closed:
            return fail(StorageError("the server is stopping"))
        result: Deferred[Any] = Deferred(self._dequeue)
        self._queue.append((partial(_call, function, args), result))
        self._next_turn()
        return result

    def start(self) -> Deferred[Any]:
        """Start both pools (starting one twice is harmless) and open all their connections;
        fires once they are open."""
        self._writer.start()
        self._readers.start()
        return gatherResults([open_connections(self._writer, self._writer.max),
                              open_connections(self._readers, self._readers.max)],
                             consumeErrors=True)

    def read(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run `function(db, *args)` on a reader connection (it must not write)."""
        if self._closed:
            return fail(StorageError("the server is stopping"))
        result: Deferred[Any] = self._readers.runWithConnection(
            _checked, self._opened, function, args)
        return result

    def heard(self, channels: set[str] | None) -> None:
        """Other servers committed to `channels` (None: perhaps to any; PostgreSQL's
        NotifyFeed). A turn in flight may have read before that commit and will park its
        waiter when its results fire: the wake waits for them, as CommitWatch's do."""
        if self._turn is None:
            self._wake_heard(channels)
        elif channels is None:
            self._heard_all = True
        else:
            self._heard |= channels

    def _wake_heard(self, channels: set[str] | None) -> None:
        if channels is None:
            self._on_external_commit(None)
        elif channels:
            self._on_external_commit(channels)

    def is_writer(self, backend_pid: int) -> bool:
        """Whether `backend_pid` is this server's writer connection (PostgreSQL)."""
        return backend_pid == self._watch.backend_pid != 0

    def __len__(self) -> int:
        """How many writes wait for the writer's next turn."""
        return len(self._queue)

    def poll(self) -> None:
        """Look for other processes' commits soon (a turn with nothing else to do is cheap)."""
        self._poll_wanted = True
        self._next_turn()

    def drain(self) -> Deferred[None]:
        """Fires once every queued write has run."""
        if self._turn is None and not self._queue and not self._poll_wanted:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._drained.append(waiting)
        return waiting

    def close(self) -> None:
        """Close both pools (after `drain`); later calls fail with StorageError at once."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._readers.close()

    def _dequeue(self, cancelled: Deferred[Any]) -> None:
        # A cancelled write that has not started yet never runs; one already running finishes
        # and its result is dropped.
        self._queue = [(op, d) for op, d in self._queue if d is not cancelled]

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Writes asked for inside wait for the end of it to start their turn: everything a
        wake or a batch's results set off goes into one turn, not the first ask alone."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self._next_turn()

    def _next_turn(self) -> None:
        if self._turn is not None or self._held:
            return  # _finish_turn (or the end of the hold) starts the next one
        if not (self._queue or self._poll_wanted):
            self._notify_drained()
            return
        batch, self._queue, self._poll_wanted = self._queue, [], False
        self._turn = self._writer.runWithConnection(
            run_turn, [op for op, _ in batch], self._watch, self._opened, self._on_turn
        )
        self._turn.addBoth(self._finish_turn, batch)

    def _finish_turn(self, outcome: Any, batch: list[tuple[Operation, Deferred[Any]]]) -> None:
        self._turn = None
        heard, self._heard = (None if self._heard_all else self._heard), set()
        self._heard_all = False
        with self.holding():
            self._fire(outcome, batch)
            self._wake_heard(heard)

    def _fire(self, outcome: Any, batch: list[tuple[Operation, Deferred[Any]]]) -> None:
        if isinstance(outcome, Failure):
            # The commit itself failed: nothing in the batch was stored.
            error = outcome.value if outcome.check(store.StorageError) else outcome
            if outcome.check(store.DatabaseGone):
                self._report_gone(str(outcome.value))
            for _, result in batch:
                result.errback(error)
        else:
            outcomes, changed = outcome
            # Results first, in order: a reader that found nothing registers its waiter here,
            # before any wake this batch causes, so no wake is missed.
            for (ok, value), (_, result) in zip(outcomes, batch):
                result.callback(value) if ok else result.errback(value)
            if changed:
                self._on_external_commit(changed)

    def _report_gone(self, reason: str) -> None:
        # Once, not per turn: every write from now on is refused the same way.
        if not self._gone_reported:
            self._gone_reported = True
            log.critical("{reason}", reason=reason)

    def _notify_drained(self) -> None:
        drained, self._drained = self._drained, []
        for waiting in drained:
            waiting.callback(None)


def _call(function: Callable[..., Any], args: tuple[Any, ...], db: Any) -> Any:
    return function(db, *args)


def _checked(db: Any, opened: OpenedFile, function: Callable[..., Any],
             args: tuple[Any, ...]) -> Any:
    # A read from a file no longer at its path would answer from a database nobody else sees.
    opened.check()
    return function(db, *args)


class Feed(Protocol):
    """What tells the broker of other processes' commits: ChangeFeed (SQLite), NotifyFeed
    (PostgreSQL)."""

    def start(self) -> None:
        """Begin (the storage is starting)."""

    def watch(self) -> None:
        """A waiter is parking: make sure commits are being looked for."""

    def stop(self) -> None:
        """End (the server is stopping)."""


class ChangeFeed:
    """Notices other processes' commits while anyone waits: every EXTERNAL_COMMIT_POLL_S it
    asks the writer for a (cheap) turn, whose check wakes the channels written to. With
    nobody waiting it stops, and costs nothing."""

    def __init__(self, database: Database, waiters: Waiters, clock: IReactorTime) -> None:
        self._database = database
        self._waiters = waiters
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        """Nothing to do until someone waits."""

    def watch(self) -> None:
        """Make sure other processes' commits are being looked for (a waiter is parking)."""
        if not self._loop.running:
            self._loop.start(EXTERNAL_COMMIT_POLL_S, now=False)

    def stop(self) -> None:
        """Stop looking (the server is stopping)."""
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        if not self._waiters:
            self._loop.stop()  # the loop ends with the last waiter
            return
        self._database.poll()
