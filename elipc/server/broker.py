"""The server's use cases (send, read, directory, health) over the database and the waiters.

No HTTP here: the web layer parses and renders, this module decides. Methods are coroutines;
the web layer wraps them in Deferreds, so cancelling a request (the client went away) cancels
whatever the use case is waiting on, and a long-poll that is cancelled moves no watermark.
The broker is a service: its timers (housekeeping, retention) are its children, and stopping
it answers every pending long-poll.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from elipc import operations, store
from elipc.agentcard import RESIGN, served_card, signed_by
from elipc.config import DEFAULT_PAGE, Settings
from elipc.model import RESERVED_PREFIX, Accepted, Agent, Page, Rejected, Signed
from elipc.server.database import Database, Feed
from elipc.server.metrics import Metrics
from elipc.server.overview import Overview
from elipc.server.security import SecurityEvents
from elipc.server.waiters import Waiters

HOUSEKEEPING_INTERVAL_S = 60.0

log = Logger(namespace="elipc.broker")


class Broker(MultiService):
    """Send, read (with long-poll), register, and the read-only views, for one database."""

    def __init__(self, database: Database, waiters: Waiters, feed: Feed,
                 clock: IReactorTime, settings: Settings, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.clock = clock
        self._db = database
        self._clock = clock
        self._settings = settings
        self._feed = feed
        self.policy = operations.Policy.from_settings(settings)
        self.waiters = waiters
        # Bound once: a parked stream's waiter holds this, not a closure or method of its own.
        self._woken_unless_stopping = self._unless_stopping
        self._card: tuple[object, bytes] | None = None
        self._groups: dict[tuple[Any, ...], list[tuple[str, Deferred[Page]]]] = {}
        self._groups_lock = threading.Lock()
        self.security = SecurityEvents(database, waiters, clock, metrics.refusals)
        self.overview = Overview(database, clock, self.policy)
        self.long_polls = 0  # waiting now (streams wait too, but are not long-polls)
        self._timer(self._forget_expired)
        if settings.retention:
            self._timer(self._retention_tick)

    def _timer(self, tick: Any) -> None:
        timer = TimerService(HOUSEKEEPING_INTERVAL_S, tick)
        timer.clock = self._clock
        timer.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        """Answer every pending long-poll with [] and stop the timers."""
        self._feed.stop()
        self.waiters.close()
        if not self.running:
            return succeed(None)  # never started: its timers have nothing to stop
        stopped: Deferred[None] = super().stopService()
        return stopped

    async def send(self, channel: str, sender: str, content: str, signed: Signed,
                   idempotency_key: str | None = None) -> Accepted:
        """Store a message (secure mode: verified; once per idempotency key) and wake the
        channel's waiters."""
        started = time.perf_counter()
        accepted: Accepted = await self._db.write(
            operations.accept_message, channel, sender, content, signed,
            self._clock.seconds(), self.policy, idempotency_key,
        )
        self.metrics.send_seconds.observe(time.perf_counter() - started)
        if accepted.replayable:
            log.info("accepted an el-ipc (replayable) signature from {sender} on {channel}",
                     sender=sender, channel=channel, kind="replayable_signature")
        if not accepted.duplicate:
            self.metrics.sends.inc()
            with self._db.holding():  # the woken readers' writes: one turn
                self.waiters.wake(channel)
        return accepted

    async def register(self, name: str, agent_identity: str, public_key: str, operator: str,
                       signed: Signed) -> None:
        """Register `name` on `operator`'s elipc/2 signature (verified, replay-checked)."""
        await self._db.write(operations.register, name, agent_identity, public_key, operator,
                             signed, self._clock.seconds(), self.policy)
        log.info("{operator} registered {name}", operator=operator, name=name)

    async def read(
        self, channel: str, agent: str, signed: Signed | None, wait: bool,
        timeout: float, linger: float, limit: int = DEFAULT_PAGE, manual: bool = False,
    ) -> Page:
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
        woken: float | None = None
        while True:
            if not gather or await self._db.write(store.pending_count, channel, agent):
                if gather:
                    await deferLater(self._clock, linger)
                page: Page = await self._db.write(store.unread_page, channel, agent, limit,
                                                  None, not manual)
                if page.messages or not wait:
                    return self._answered(page, woken)
            remaining = deadline - self._clock.seconds()
            if remaining <= 0 or not await self._long_poll(channel, remaining):
                return self._answered(Page([], False), None)
            woken = time.perf_counter()  # the wake runs this at once, from the commit

    def _answered(self, page: Page, woken: float | None) -> Page:
        self.metrics.reads.inc()
        if page.messages:
            self.metrics.delivered.inc(len(page.messages))
            if woken is not None:
                self.metrics.wake_seconds.observe(time.perf_counter() - woken)
        return page

    def _long_poll(self, channel: str, timeout: float) -> Deferred[bool]:
        # Counted while it waits (woken, timed out, or cancelled: the client went away).
        self.long_polls += 1
        return self._wait(channel, timeout).addBoth(self._long_poll_over)

    def _long_poll_over(self, result: Any) -> Any:
        self.long_polls -= 1
        return result

    def _wait(self, channel: str, timeout: float) -> Deferred[bool]:
        waiting = self.waiters.wait(channel, timeout)
        self._feed.watch()  # another process's commit wakes it too
        return waiting

    async def ack(self, channel: str, agent: str, up_to: int, signed: Signed | None) -> int:
        """Move `agent`'s watermark on `channel` to `up_to` (signed in secure mode)."""
        await self._db.write(operations.authorize_read, channel, agent, signed,
                             self._clock.seconds(), self.policy, up_to)
        watermark = int(await self._db.write(store.acknowledge, channel, agent, up_to))
        self.metrics.acks.inc()
        return watermark

    async def history(self, channel: str, after_id: int, limit: int) -> Page:
        """Messages of `channel` after `after_id` (and whether more follow); moves nothing."""
        page: Page = await self._db.read(store.history_page, channel, after_id, limit)
        return page

    async def open_stream(self, channels: list[str], agent: str | None,
                          signed: Signed | None, manual: bool,
                          last_event_id: int | None, after_id: int) -> dict[str, int]:
        """Check a stream may open and where it starts: with an agent, its signature (secure
        mode), a Last-Event-ID acknowledged (manual), and its watermarks; without one, the
        history from `after_id` (or Last-Event-ID), never the elipc/ channels' in secure
        mode. Returns the last id seen per channel."""
        if agent is None:
            if any(c.startswith(RESERVED_PREFIX) for c in channels) and await self.is_secure():
                raise Rejected(f"history of {RESERVED_PREFIX} channels is not public in "
                               "secure mode; stream it as an operator", "security_channel")
            start = after_id if last_event_id is None else last_event_id
            return {channel: start for channel in channels}
        await self._db.write(operations.authorize_stream, channels, agent, signed,
                             self._clock.seconds(), self.policy)
        if manual and last_event_id is not None:
            await self._db.write(store.acknowledge_through, channels, agent, last_event_id)
        marks: dict[str, int] = await self._db.read(_watermarks, channels, agent)
        return marks

    def take_across(self, channels: list[str], agent: str, limit: int,
                    max_chars: int) -> Deferred[Page]:
        """Unread messages of `agent` on `channels`, its watermarks moved past them. The
        streams woken by one commit ask together: one write for all of them, whose agents
        share their queries (store.take_for_agents)."""
        key = ("take", tuple(channels), limit, max_chars)
        return self._grouped(key, agent, lambda db, agents: store.take_for_agents(
            db, channels, agents, limit, max_chars))

    def across(self, cursors: list[tuple[str, int]], limit: int,
               max_chars: int) -> Deferred[Page]:
        """Messages after each cursor, moving nothing; streams at the same cursors share
        one read. (Through the writer, like every read that may then wait: a send committed
        after it is in a later turn, so its wake finds the waiter this read leads to.)"""
        key = ("across", tuple(cursors), limit, max_chars)

        def read(db: Any, askers: list[str]) -> list[Page]:
            page = store.across(db, cursors, limit, max_chars)
            return [page] * len(askers)
        return self._grouped(key, "", read)

    def _grouped(self, key: tuple[Any, ...], asker: str,
                 run: Callable[[Any, list[str]], list[Page]]) -> Deferred[Page]:
        answer: Deferred[Page] = Deferred()
        with self._groups_lock:
            group = self._groups.get(key)
            first = group is None
            if group is None:
                group = self._groups[key] = []
            group.append((asker, answer))
        if first:  # outside the lock: a synchronous pool runs the write at once
            self._db.write(self._run_group, key, group, run).addCallbacks(
                self._answer_group, self._fail_group, callbackArgs=(group,),
                errbackArgs=(key, group))
        return answer.addCallback(self._delivered)

    def _run_group(self, db: Any, key: tuple[Any, ...], group: list[Any],
                   run: Callable[[Any, list[str]], list[Page]]) -> list[Page]:
        # In the writer thread: the group closes (later askers start another), then runs.
        with self._groups_lock:
            if self._groups.get(key) is group:
                del self._groups[key]
        return run(db, [asker for asker, _ in group])

    def _answer_group(self, pages: list[Page], group: list[Any]) -> None:
        for (_, answer), page in zip(group, pages):
            if not answer.called:  # a stream whose client left meanwhile
                answer.callback(page)

    def _fail_group(self, failure: Failure, key: tuple[Any, ...], group: list[Any]) -> None:
        with self._groups_lock:
            if self._groups.get(key) is group:
                del self._groups[key]
        for _, answer in group:
            if not answer.called:
                answer.errback(failure)

    def _delivered(self, page: Page) -> Page:
        if page.messages:
            self.metrics.delivered.inc(len(page.messages))
        return page

    def wait_any(self, channels: list[str], timeout: float | None) -> Deferred[bool | None]:
        """Fires True when any of `channels` is woken, False after `timeout` (None: never),
        None when the server is stopping; cancelling it cancels the waits."""
        if self.waiters.closed:
            return succeed(None)
        waits = [self.waiters.wait(channel, timeout) for channel in channels]
        self._feed.watch()
        if len(waits) == 1:  # the common case, without a second Deferred
            return waits[0].addCallbacks(self._woken_unless_stopping)

        def cancel(_: Deferred[bool | None]) -> None:
            for waiting in waits:
                waiting.cancel()
        first: Deferred[bool | None] = Deferred(cancel)

        def fired(woken: bool) -> None:
            if not first.called:
                first.callback(None if self.waiters.closed else woken)
                for waiting in waits:
                    waiting.cancel()  # the others (a fired one ignores it)
        for waiting in waits:
            waiting.addCallback(fired)
            waiting.addErrback(lambda failure: None)  # cancelled: nothing to report
        return first

    def _unless_stopping(self, woken: bool) -> bool | None:
        return None if self.waiters.closed else woken

    async def is_secure(self) -> bool:
        """Whether an operator exists."""
        return bool(await self._db.read(store.is_secure))

    async def channels(self) -> list[dict[str, object]]:
        """Every channel with its count and last message time."""
        channels: list[dict[str, object]] = await self._db.read(store.list_channels)
        return channels

    async def agents(self) -> list[Agent]:
        """The directory, oldest first."""
        agents: list[Agent] = await self._db.read(store.list_agents)
        return agents

    async def health(self, channel: str, agent: str,
                     signed: Signed | None) -> dict[str, object]:
        """Status, `agent`'s unread count on `channel` (0 if either is empty; signed like a
        read in secure mode), secure mode, and the security events counted so far."""
        if channel and agent:
            await self._authorize(channel, agent, signed)
        answer: dict[str, object] = await self._db.read(_health, channel, agent)
        answer["security_events"] = dict(self.security.counts)
        return answer

    async def agent_card(self) -> bytes:
        """The A2A agent card as JSON bytes: the first operator's did:key once there is one,
        and the operators' signatures while they match it (a stale one is left out, and
        said once)."""
        operators, stored = await self._db.read(_card_inputs)
        key = (tuple(o.public_key for o in operators), json.dumps(stored))
        if self._card is None or self._card[0] != key:
            card, stale = served_card(self._settings, operators, stored)
            if stale:
                log.warn("the stored agent card signature no longer matches the card this "
                         "server serves (its settings or operators changed); it is not "
                         "served: {resign}", resign=RESIGN)
            self._card = (key, json.dumps(card).encode("utf-8"))
        return self._card[1]

    async def sign_card(self, signatures: object) -> str:
        """Keep `signatures` if an operator's key made them over the card served now;
        return that operator's name."""
        operators, _ = await self._db.read(_card_inputs)
        card, _ = served_card(self._settings, operators, None)
        signer = signed_by(card, signatures, operators)
        if signer is None:
            raise Rejected("the signatures are not an operator's over the card this server "
                           "serves (fetch it again, sign it, send both signatures)",
                           "invalid_card_signature")
        assert isinstance(signatures, list)
        await self._db.write(store.save_card_signatures, signatures, signer,
                             self._clock.seconds())
        log.info("{operator} signed the agent card", operator=signer)
        return signer

    async def _authorize(self, channel: str, agent: str, signed: Signed | None) -> None:
        await self._db.write(operations.authorize_read, channel, agent, signed,
                             self._clock.seconds(), self.policy)

    def _forget_expired(self) -> Deferred[None]:
        # Logged, not raised: a failed pass must not stop the timer.
        forgotten: Deferred[None] = self._db.write(
            operations.forget_expired, self._clock.seconds(), self.policy)
        return forgotten.addErrback(
            lambda f: log.failure("could not forget old nonces and idempotency keys", f))

    def _retention_tick(self) -> Deferred[object]:
        return Deferred.fromCoroutine(self.apply_retention()).addErrback(
            lambda f: log.failure("retention pass failed", f))

    async def apply_retention(self) -> int:
        """Delete messages older than the retention period, a batch per writer turn so sends
        keep flowing in between; return how many went."""
        cutoff = self._clock.seconds() - self._settings.retention
        steps = operations.retention(cutoff)
        try:
            step = next(steps)
            while True:
                step = steps.send(await self._db.write(step))
        except StopIteration as done:
            deleted = int(done.value)
        if deleted:
            log.info("retention deleted {count} messages older than {cutoff}",
                     count=deleted, cutoff=cutoff)
        return deleted


def _health(db: Any, channel: str, agent: str) -> dict[str, object]:
    pending = store.pending_count(db, channel, agent) if channel and agent else 0
    return {"status": "ok", "pending": pending, "secure_mode": store.is_secure(db),
            "oldest_id": store.oldest_message_id(db)}


def _card_inputs(db: Any) -> tuple[list[Agent], object]:
    return store.list_operators(db), store.card_signatures(db)


def _watermarks(db: Any, channels: list[str], agent: str) -> dict[str, int]:
    return {channel: store.watermark(db, channel, agent) for channel in channels}
