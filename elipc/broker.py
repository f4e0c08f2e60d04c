"""The server's use cases (send, read, directory, health) over the database and the waiters.

No HTTP here: web.py parses and renders, this module decides. Methods are coroutines; the web
layer wraps them in Deferreds, so cancelling a request (the client went away) cancels whatever
the use case is waiting on, and a long-poll that is cancelled moves no watermark.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from elipc import operations, store
from elipc.agentcard import build_card
from elipc.config import DEFAULT_PAGE, Settings
from elipc.database import Database
from elipc.model import SECURITY_CHANNEL, Agent, Message
from elipc.waiters import Waiters

# While anyone waits, how often the writer checks for other processes' commits.
EXTERNAL_COMMIT_POLL_S = 0.01
HOUSEKEEPING_INTERVAL_S = 60.0
IDEMPOTENCY_WINDOW_S = 24 * 3600.0
RETENTION_BATCH = 1000
EVENTS_PER_MINUTE = 60

log = Logger(namespace="elipc.broker")


class Broker:
    """Send, read (with long-poll), register, and the read-only views, for one database."""

    def __init__(self, database: Database, clock: IReactorTime, settings: Settings) -> None:
        self._db = database
        self._clock = clock
        self._settings = settings
        self.policy = operations.Policy.from_settings(settings)
        self.waiters = Waiters(clock)
        self.security = SecurityEvents(self._record_security_event, clock)
        self._db.on_external_commit = self.waiters.wake_channels
        self._poller = LoopingCall(self._poll_external_commits)
        self._poller.clock = clock
        self.waiters.on_first_waiter = self._start_polling
        self._pruner = LoopingCall(self._forget_expired)
        self._pruner.clock = clock
        self._retention = LoopingCall(self._retention_tick)
        self._retention.clock = clock

    def start(self) -> None:
        """Start the timers: forgetting nonces and idempotency keys past their windows and,
        with a retention period, deleting older messages."""
        self._pruner.start(HOUSEKEEPING_INTERVAL_S, now=False)
        if self._settings.retention:
            self._retention.start(HOUSEKEEPING_INTERVAL_S, now=True)

    async def send(self, channel: str, sender: str, content: str, signed: operations.Signed,
                   idempotency_key: str | None = None) -> operations.Accepted:
        """Store a message (secure mode: verified; once per idempotency key) and wake the
        channel's waiters."""
        accepted: operations.Accepted = await self._db.write(
            operations.accept_message, channel, sender, content, signed,
            self._clock.seconds(), self.policy, idempotency_key,
        )
        if accepted.replayable:
            log.info("accepted an el-ipc (replayable) signature from {sender} on {channel}",
                     sender=sender, channel=channel, kind="replayable_signature")
        if not accepted.duplicate:
            self.waiters.wake(channel)
        return accepted

    async def register(self, name: str, agent_identity: str, public_key: str, operator: str,
                       signed: operations.Signed) -> None:
        """Register `name` on `operator`'s elipc/2 signature (verified, replay-checked)."""
        await self._db.write(operations.register, name, agent_identity, public_key, operator,
                             signed, self._clock.seconds(), self.policy)
        log.info("{operator} registered {name}", operator=operator, name=name)

    async def read(
        self, channel: str, agent: str, signed: operations.Signed | None, wait: bool,
        timeout: float, linger: float, limit: int = DEFAULT_PAGE, manual: bool = False,
    ) -> tuple[list[Message], bool]:
        """Up to `limit` unread messages for `agent`, and whether more are waiting; with
        `wait`, block for a first one.

        The watermark moves past what is returned, unless `manual`: then it moves only on
        `ack`, so a response that never arrives is delivered again. In secure mode `signed`
        must be `agent`'s read signature (checked first; a refusal moves nothing). `linger`
        (with `wait`) lets a burst gather before answering.
        """
        await self._authorize(channel, agent, signed)
        deadline = self._clock.seconds() + (timeout if wait else 0.0)
        gather = wait and linger > 0
        while True:
            if not gather or await self._db.write(store.pending_count, channel, agent):
                if gather:
                    await deferLater(self._clock, linger)
                page: tuple[list[Message], bool] = await self._db.write(
                    _read_page, channel, agent, limit, manual)
                if page[0] or not wait:
                    return page
            remaining = deadline - self._clock.seconds()
            if remaining <= 0 or not await self.waiters.wait(channel, remaining):
                return [], False

    async def ack(self, channel: str, agent: str, up_to: int,
                  signed: operations.Signed | None) -> int:
        """Move `agent`'s watermark on `channel` to `up_to` (signed in secure mode)."""
        await self._db.write(operations.authorize_read, channel, agent, signed,
                             self._clock.seconds(), self.policy, up_to)
        return int(await self._db.write(store.acknowledge, channel, agent, up_to))

    async def history(self, channel: str, after_id: int,
                      limit: int) -> tuple[list[Message], bool]:
        """Messages of `channel` after `after_id` (and whether more follow); moves nothing."""
        rows: list[Message] = await self._db.read(store.history, channel, after_id, limit + 1)
        return rows[:limit], len(rows) > limit

    async def is_secure(self) -> bool:
        """Whether an operator exists."""
        return bool(await self._db.read(store.is_secure))

    async def channels(self) -> list[dict[str, object]]:
        """Every channel with its count and last message time."""
        return await self._db.read(store.list_channels)  # type: ignore[no-any-return]

    async def agents(self) -> list[Agent]:
        """The directory, oldest first."""
        return await self._db.read(store.list_agents)  # type: ignore[no-any-return]

    async def health(self, channel: str, agent: str,
                     signed: operations.Signed | None) -> dict[str, object]:
        """Status, `agent`'s unread count on `channel` (0 if either is empty; signed like a
        read in secure mode), secure mode, and the security events counted so far."""
        if channel and agent:
            await self._authorize(channel, agent, signed)
        answer: dict[str, object] = await self._db.read(_health, channel, agent)
        answer["security_events"] = dict(self.security.counts)
        return answer

    async def agent_card(self) -> dict[str, object]:
        """The A2A agent card, with the first operator's did:key once there is one."""
        operator = await self._db.read(store.first_operator)
        return build_card(self._settings, operator.public_key if operator else None)

    def stop(self) -> None:
        """Answer every pending long-poll with [] and stop the timers."""
        for loop in (self._poller, self._pruner, self._retention):
            if loop.running:
                loop.stop()
        self.waiters.close()

    async def _authorize(self, channel: str, agent: str,
                         signed: operations.Signed | None) -> None:
        await self._db.write(operations.authorize_read, channel, agent, signed,
                             self._clock.seconds(), self.policy)

    def _record_security_event(self, event: dict[str, object]) -> None:
        content = json.dumps(event, sort_keys=True)
        written = self._db.write(store.insert_message, SECURITY_CHANNEL, "elipc", content, "",
                                 self._clock.seconds())
        written.addCallbacks(lambda _: self.waiters.wake(SECURITY_CHANNEL),
                             lambda f: log.failure("could not record a security event", f))

    def _start_polling(self) -> None:
        if not self._poller.running:
            self._poller.start(EXTERNAL_COMMIT_POLL_S, now=False)

    def _poll_external_commits(self) -> None:
        # No cost while nobody waits: the loop ends with the last waiter.
        if not self.waiters:
            self._poller.stop()
            return
        self._db.poll()

    def _forget_expired(self) -> None:
        # A nonce matters while its timestamp can still pass the window check: twice the window;
        # an idempotency key for a day.
        now = self._clock.seconds()
        self._db.write(store.forget_nonces, now - 2 * self.policy.window).addErrback(
            lambda f: log.failure("could not forget old nonces", f))
        self._db.write(store.forget_idempotency, now - IDEMPOTENCY_WINDOW_S).addErrback(
            lambda f: log.failure("could not forget old idempotency keys", f))

    def _retention_tick(self) -> Deferred[object]:
        # Logged, not raised: a failed pass must not stop the timer.
        return Deferred.fromCoroutine(self.apply_retention()).addErrback(
            lambda f: log.failure("retention pass failed", f))

    async def apply_retention(self) -> int:
        """Delete messages older than the retention period, a batch per writer turn so sends
        keep flowing in between; return how many went."""
        cutoff = self._clock.seconds() - self._settings.retention
        deleted = 0
        while True:
            batch = await self._db.write(store.delete_messages_before, cutoff, RETENTION_BATCH)
            deleted += batch
            if batch < RETENTION_BATCH:
                break
        if deleted:
            log.info("retention deleted {count} messages older than {cutoff}",
                     count=deleted, cutoff=cutoff)
        return deleted


class SecurityEvents:
    """Counts every refusal, logs it with named fields, and writes it (at most
    EVENTS_PER_MINUTE a minute, so a flood cannot fill the disk) to the security channel."""

    def __init__(self, record: Callable[[dict[str, object]], None], clock: IReactorTime) -> None:
        self._record = record
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self._window_start = -1e18
        self._written = 0
        self._suppressed = 0

    def __call__(self, kind: str, reason: str, remote: str, **context: str) -> None:
        """One refused request: `kind` names it; `context` may hold sender, channel, agent."""
        self.counts[kind] += 1
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


def _read_page(db: Any, channel: str, agent: str, limit: int,
               manual: bool) -> tuple[list[Message], bool]:
    # One writer operation: the page, and whether more is waiting behind it.
    if manual:
        rows = store.peek_unread(db, channel, agent, limit + 1)
        return rows[:limit], len(rows) > limit
    messages = store.read_unread(db, channel, agent, limit=limit)
    return messages, bool(store.peek_unread(db, channel, agent, 1))


def _health(db: Any, channel: str, agent: str) -> dict[str, object]:
    pending = store.pending_count(db, channel, agent) if channel and agent else 0
    return {"status": "ok", "pending": pending, "secure_mode": store.is_secure(db),
            "oldest_id": store.oldest_message_id(db)}
