"""The server's wiring: Options and makeService for `twist elipc` / `twistd elipc`, and the
foreground runner behind `elipc serve`. Only this module knows twistd.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from elipc import __version__, store
from elipc.broker import Broker
from elipc.config import (
    MAX_LINGER,
    MAX_REPLAY_WINDOW,
    ConfigError,
    Settings,
    parse_duration,
    prepare_db_location,
    seconds_setting,
)
from elipc.database import Database, sqlite_pool
from elipc.web import make_site

log = Logger(namespace="elipc.service")
FULL_COLLECTION_THRESHOLD = 40  # CPython's default is 10


class Options(usage.Options):
    """Command-line options; each falls back to its IPC_* environment variable."""

    synopsis = "[--port PORT|ENDPOINT] [--db PATH] [--linger SECONDS]"
    longdesc = (
        "Runs the elipc HTTP server. --port takes a port number (bound to 127.0.0.1) or any "
        "Twisted endpoint string, e.g. tcp:9876:interface=0.0.0.0, ssl:..., unix:/path. "
        "IPC_API_KEY (environment only, never argv) requires Authorization: Bearer <key>."
    )
    optParameters = [
        ["port", "p", None, "port number or endpoint string (default IPC_PORT, else 9876)"],
        ["db", None, None, "SQLite database file (default IPC_DB_PATH, else per-user state)"],
        ["linger", None, None, "seconds a long-poll gathers a burst once a message is there"],
        ["agent-name", None, None, "name in the agent card (default IPC_AGENT_NAME)"],
        ["agent-desc", None, None, "description in the agent card (default IPC_AGENT_DESC)"],
        ["agent-url", None, None, "public URL in the agent card (default IPC_AGENT_URL)"],
        ["replay-window", None, None, "seconds a signed timestamp stays valid (default 300)"],
        ["retention", None, None, "delete messages older than this: 7d, 12h, or seconds "
                                  "(default IPC_RETENTION, else keep everything)"],
    ]
    optFlags = [
        ["strict-signatures", None,
         "refuse el-ipc's replayable signatures (default IPC_STRICT_SIGNATURES)"],
    ]

    def postOptions(self) -> None:
        try:
            self["settings"] = settings_from(self)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def settings_from(options: Any, environ: dict[str, str] | None = None) -> Settings:
    """Settings from parsed options over the environment."""
    listen = options["port"]
    port = listen if listen is None or listen.isdigit() else None
    settings = Settings.from_env(environ, db_path=options["db"], port=port)
    if listen is not None and not listen.isdigit():
        settings.listen = listen
    if options["linger"] is not None:
        settings.linger = seconds_setting(options["linger"], "--linger", MAX_LINGER)
    if options["replay-window"] is not None:
        settings.replay_window = seconds_setting(options["replay-window"], "--replay-window",
                                                 MAX_REPLAY_WINDOW)
    if options["strict-signatures"]:
        settings.strict_signatures = True
    if options["retention"] is not None:
        settings.retention = parse_duration(options["retention"], "--retention")
    for option, name in (("agent-name", "agent_name"), ("agent-desc", "agent_desc"),
                         ("agent-url", "agent_url")):
        if options[option]:
            setattr(settings, name, options[option])
    return settings


class ElipcService(MultiService):
    """The running server: listens on start; on stop, answers waiters, drains writes, closes."""

    def __init__(self, settings: Settings, broker: Broker, database: Database,
                 site: Any, reactor: Any) -> None:
        super().__init__()
        self.settings, self.broker, self.database = settings, broker, database
        self.site, self.reactor = site, reactor
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.broker.start()
        # Everything loaded so far lives as long as the process: keep the cyclic collector's
        # full passes from walking it again and again (they showed as 25-30 ms stalls).
        gc.freeze()
        # Thousands of parked long-polls make the heap large, and a full pass over it takes
        # up to a second while finding almost nothing to free: run full passes four times
        # less often (measured: 10,000 long-polls all answered within 2 s instead of 16 late,
        # memory +20 MB). Young collections, which keep latency low, are unchanged.
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)
        endpoint = endpoints.serverFromString(self.reactor, self.settings.listen)
        endpoint.listen(self.site).addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info(
            "elipc {version} listening on {address}; database {db}; API key {api_key}; "
            "linger {linger} s; signatures {signatures}; replay window {window} s; "
            "retention {retention}",
            version=__version__, address=_describe(port.getHost()),
            db=self.settings.db_path, linger=self.settings.linger,
            signatures="strict" if self.settings.strict_signatures else "el-ipc accepted",
            window=self.settings.replay_window,
            retention=f"{self.settings.retention:g} s" if self.settings.retention else "off",
            api_key="required" if self.settings.api_key else "not set",
        )

    def _cannot_listen(self, failure: Failure) -> None:
        log.critical("cannot listen on {listen}: {reason}", listen=self.settings.listen,
                     reason=failure.getErrorMessage())
        # twist/twistd give a service no say in the exit status: end with 1 once shutdown
        # is done, so a supervisor sees the failure.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        # twist starts services before the reactor runs: stop it once it does.
        self.reactor.callWhenRunning(self.reactor.stop)

    async def _stop(self) -> None:
        self.broker.stop()
        if self.port is not None:
            await self.port.stopListening()
        await self.database.drain()
        self.database.close()
        log.info("elipc stopped")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


def _describe(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if port is not None else str(getattr(address, "name", address))


def makeService(options: Options, reactor: Any = None) -> ElipcService:
    """Build the server from parsed options: check the database, then wire everything."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    settings: Settings = options["settings"]
    notice = prepare_db_location(settings)
    if notice:
        log.warn("{notice}", notice=notice)
    try:
        # Before the reactor runs: create the file 0600, migrate it, and fail fast if unusable.
        store.open_database(settings.db_path).close()
    except store.StorageError as e:
        raise SystemExit(f"elipc: {settings.db_path}: {e}") from None
    database = Database(sqlite_pool(settings.db_path, 1, reactor),
                        sqlite_pool(settings.db_path, 2, reactor))
    broker = Broker(database, reactor, settings)
    return ElipcService(settings, broker, database, make_site(broker, settings, reactor), reactor)


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
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
