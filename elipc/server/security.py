"""Security events: every refusal counted, logged with named fields, and written (rate
limited) to the security channel, where operators read it."""

from __future__ import annotations

import json
from collections import Counter

from prometheus_client import Counter as Counter_
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from elipc import store
from elipc.model import SECURITY_CHANNEL
from elipc.server.database import Database
from elipc.server.waiters import Waiters

EVENTS_PER_MINUTE = 60

log = Logger(namespace="elipc.broker")


class SecurityEvents:
    """Counts every refusal, logs it with named fields, and writes it (at most
    EVENTS_PER_MINUTE a minute, so a flood cannot fill the disk) to the security channel."""

    def __init__(self, database: Database, waiters: Waiters, clock: IReactorTime,
                 counted: Counter_ | None = None) -> None:
        self._database = database
        self._counted = counted
        self._waiters = waiters
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self._window_start = -1e18
        self._written = 0
        self._suppressed = 0

    def __call__(self, kind: str, reason: str, remote: str, **context: str) -> None:
        """One refused request: `kind` names it; `context` may hold sender, channel, agent."""
        self.counts[kind] += 1
        if self._counted is not None:
            self._counted.labels(kind).inc()
        log.warn("security event {kind}: {reason} (from {remote})", kind=kind, reason=reason,
                 remote=remote, security=True, **context)
        now = self._clock.seconds()
        if now - self._window_start >= 60:
            self._window_start, self._written = now, 0
        if self._written >= EVENTS_PER_MINUTE:
            self._suppressed += 1
            return
        self._written += 1
        event: dict[str, object] = {"kind": kind, "reason": reason, "remote": remote,
                                    "at": now, **context}
        if self._suppressed:
            event["suppressed_before"], self._suppressed = self._suppressed, 0
        self._record(event)

    def _record(self, event: dict[str, object]) -> None:
        content = json.dumps(event, sort_keys=True)
        written = self._database.write(store.insert_message, SECURITY_CHANNEL, "elipc",
                                       content, "", self._clock.seconds())
        written.addCallbacks(lambda _: self._waiters.wake(SECURITY_CHANNEL),
                             lambda f: log.failure("could not record a security event", f))
