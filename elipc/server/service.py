"""The server's wiring: Options and makeService for `twist elipc` / `twistd elipc`, the one
build function behind them and the tests, and the foreground runner behind `elipc serve`.
Only this module knows twistd.

The service tree, started first to last and stopped last to first, one child at a time:

    ElipcService
      Connections      closes every open connection once its answer is written
      StorageService   drains the queued writes, then closes the pools
      Broker           timers (housekeeping, retention); stopping answers every long-poll
      Listener         the HTTP endpoint; stopping stops accepting connections
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from elipc import __version__, config, store
from elipc.config import Settings, prepare_db_location
from elipc.locations import redact
from elipc.model import ConfigError
from elipc.server.broker import Broker
from elipc.server.database import ChangeFeed, Database, Feed, Pool, postgres_pool, sqlite_pool
from elipc.server.metrics import Metrics
from elipc.server.site import ElipcSite, Offload
from elipc.server.waiters import Waiters
from elipc.server.web import make_site

T = TypeVar("T")
log = Logger(namespace="elipc.service")
WRITER_CONNECTIONS, READER_CONNECTIONS = 1, 2
CLOSE_TIMEOUT_S = 5.0


class Options(usage.Options):
    """Command-line options, from the settings table; each falls back to its IPC_* variable."""

    synopsis = "[--port PORT|ENDPOINT] [--db PATH] [--linger SECONDS] ..."
    longdesc = (
        "Runs the elipc HTTP server. --port takes a port number (bound to 127.0.0.1) or any "
        "Twisted endpoint string, e.g. tcp:9876:interface=0.0.0.0, ssl:..., unix:/path. "
        "IPC_API_KEY (environment only, never argv) requires Authorization: Bearer <key>."
    )
    optParameters = [[s.option, "p" if s.option == "port" else None, None, config.option_help(s)]
                     for s in config.options_for("server") if not s.flag]
    optFlags = [[s.option, None, config.option_help(s)]
                for s in config.options_for("server") if s.flag]

    def postOptions(self) -> None:
        """Parse every setting now, so a bad value is a usage error naming it."""
        try:
            self["settings"] = Settings.load(None, self)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class StorageService(Service):
    """The database as a service: on stop, lets queued writes finish, then closes."""

    def __init__(self, database: Database, feed: Feed) -> None:
        self.database = database
        self.feed = feed

    def startService(self) -> None:
        """Start the pools' threads and open every connection now, not on first use (a
        service may be started into a reactor that is already running); start hearing
        other servers' commits (PostgreSQL)."""
        super().startService()
        self.feed.start()
        self.database.start().addErrback(
            lambda f: log.critical("cannot open the database: {reason}",
                                   reason=f.getErrorMessage()))

    async def _stop(self) -> None:
        await self.database.drain()
        self.database.close()

    def stopService(self) -> Deferred[None]:
        """Drain, then close the pools."""
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


class Connections(Service):
    """The site's open connections: on stop (after everything else), each is closed once it
    has written what it has, so the answers given at shutdown reach their clients."""

    def __init__(self, site: ElipcSite) -> None:
        self.site = site

    def stopService(self) -> Deferred[None]:
        """Close every connection gracefully, waiting at most CLOSE_TIMEOUT_S."""
        super().stopService()
        return self.site.close_connections(CLOSE_TIMEOUT_S)


class Listener(StreamServerEndpointService):
    """The HTTP endpoint. A listen that fails (a port in use) ends start-up with one line."""

    _raiseSynchronously = True

    def __init__(self, settings: Settings, site: ElipcSite, reactor: Any) -> None:
        super().__init__(endpoints.serverFromString(reactor, settings.listen), site)
        self.settings = settings

    def privilegedStartService(self) -> None:
        """Listen now; twist and twistd both start services before the reactor runs, so a
        failure here is their process's exit status 1, with no traceback."""
        try:
            super().privilegedStartService()
        except Exception as e:
            # Before the runner starts logging (twist), Twisted writes critical events to
            # stderr itself; after (twistd, elipc serve), they go where the log goes.
            log.critical("cannot listen on {listen}: {reason}", listen=self.settings.listen,
                         reason=str(e))
            raise SystemExit(1) from None
        assert self._waitingForPort is not None  # set by the listen above
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        settings = self.settings
        log.info(
            "elipc {version} listening on {address}; database {db}; API key {api_key}; "
            "linger {linger} s; signatures {signatures}; replay window {window} s; "
            "retention {retention}",
            version=__version__, address=_describe(port.getHost()), db=redact(settings.database),
            linger=settings.linger, window=settings.replay_window,
            signatures="strict" if settings.strict_signatures else "el-ipc accepted",
            retention=f"{settings.retention:g} s" if settings.retention else "off",
            api_key="required" if settings.api_key else "not set",
        )
        return port


class ElipcService(MultiService):
    """The running server: starts its children in order and stops them in reverse, each
    once the one before has finished (stop listening, answer the waiters, drain, close)."""

    privileged = False

    def privilegedStartService(self) -> None:
        """Listen (twistd calls this first, with privileges, for every child)."""
        self.privileged = True
        super().privilegedStartService()

    def startService(self) -> None:
        """Listen first, as twistd does (so a port in use ends start-up before any thread
        starts), then start the children and tune the collector for a long-running server."""
        if not self.privileged:
            self.privilegedStartService()
        super().startService()
        tune_gc_for_serving()

    async def _stop(self) -> None:
        for child in reversed(list(self)):
            await child.stopService()
        log.info("elipc stopped")

    def stopService(self) -> Deferred[None]:
        """Stop the children one by one, last first."""
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())


FULL_COLLECTION_THRESHOLD = 40  # CPython's default is 10


def tune_gc_for_serving() -> None:
    """Make the cyclic garbage collector cheap for a server that holds many long-polls.

    Everything loaded by start-up lives as long as the process: freeze it, so the collector's
    full passes stop walking it again and again (they showed as 25-30 ms stalls). Thousands
    of parked long-polls make the heap large, and a full pass over it takes up to a second
    while finding almost nothing to free: run full passes four times less often (measured:
    10,000 long-polls all answered within 2 s instead of 16 late, memory +20 MB). Young
    collections, which keep latency low, are unchanged.
    """
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)


@dataclass(frozen=True, slots=True)
class Server:
    """Everything one server is made of, wired: what makeService runs and tests drive."""

    settings: Settings
    database: Database
    waiters: Waiters
    broker: Broker
    site: ElipcSite
    service: ElipcService


def build(settings: Settings, reactor: Any, writer: Pool | None = None,
          readers: Pool | None = None, listen: bool = True,
          offload: Offload | None = None) -> Server:
    """Wire a server over `settings.database` (SQLite or PostgreSQL): pools (adbapi unless given), waiters, the
    change feed, the broker, the site, and the service tree (with a listener if `listen`).
    `offload` runs blocking work off the reactor thread (default: the reactor's thread pool).
    """
    clock: IReactorTime = reactor
    metrics = Metrics(settings.metrics)
    waiters = Waiters(clock)
    location = settings.database
    pool = postgres_pool if settings.db_url else sqlite_pool
    database = Database(
        location,
        writer or pool(location, WRITER_CONNECTIONS, reactor),
        readers or pool(location, READER_CONNECTIONS, reactor),
        on_external_commit=waiters.wake_channels,
        on_turn=metrics.writer_turn,
    )
    feed: Feed
    if settings.db_url:
        from elipc.server.notify import NotifyFeed

        feed = NotifyFeed(location, database.heard, reactor, own=database.is_writer)
    else:
        feed = ChangeFeed(database, waiters, clock)
    broker = Broker(database, waiters, feed, clock, settings, metrics)
    site = make_site(broker, settings, clock, offload or _thread_pool(reactor))
    metrics.watch(waiting=lambda: len(waiters), streams=site.open_streams,
                  queued=lambda: len(database))
    service = ElipcService()
    Connections(site).setServiceParent(service)
    StorageService(database, feed).setServiceParent(service)
    broker.setServiceParent(service)
    if listen:
        Listener(settings, site, reactor).setServiceParent(service)
    return Server(settings, database, waiters, broker, site, service)


def _thread_pool(reactor: Any) -> Offload:
    from twisted.internet.threads import deferToThreadPool

    def offload(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)
    return offload


def check_database(settings: Settings) -> None:
    """Before the reactor runs: create the file 0600, migrate it, and fail fast (one line,
    status 1) if it is unusable."""
    notice = prepare_db_location(settings)
    if notice:
        log.warn("{notice}", notice=notice)
    try:
        store.open_database(settings.database).close()
    except store.StorageError as e:
        raise SystemExit(f"elipc: {redact(settings.database)}: {e}") from None


def makeService(options: Options, reactor: Any = None) -> ElipcService:
    """Build the server from parsed options: check the database, then wire everything."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    settings: Settings = options["settings"]
    check_database(settings)
    return build(settings, reactor).service


def _describe(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if port is not None else str(getattr(address, "name", address))


def run(port: str | None = None, db_path: str | None = None) -> None:
    """`elipc serve`: run the server in the foreground, logging to stderr, until a signal."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    options = Options()
    argv = (["--port", port] if port else []) + (["--db", db_path] if db_path else [])
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        raise ConfigError(str(e)) from None
    service = makeService(options, reactor)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    service.startService()  # as twist does: a port in use ends here, status 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
