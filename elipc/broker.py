"""The server's use cases (send, read, directory, health) over the database and the waiters.

No HTTP here: web.py parses and renders, this module decides. Methods are coroutines; the web
layer wraps them in Deferreds, so cancelling a request (the client went away) cancels whatever
the use case is waiting on, and a long-poll that is cancelled moves no watermark.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater

from elipc import operations, store
from elipc.agentcard import build_card
from elipc.config import Settings
from elipc.database import Database
from elipc.model import Agent, Message
from elipc.waiters import Waiters

# While anyone waits, how often the writer checks for other processes' commits.
EXTERNAL_COMMIT_POLL_S = 0.01


class Broker:
    """Send, read (with long-poll), and the read-only views, for one database."""

    def __init__(self, database: Database, clock: IReactorTime, settings: Settings) -> None:
        self._db = database
        self._clock = clock
        self._settings = settings
        self.waiters = Waiters(clock)
        self._db.on_external_commit = self.waiters.wake_channels
        self._poller = LoopingCall(self._poll_external_commits)
        self._poller.clock = clock
        self.waiters.on_first_waiter = self._start_polling

    async def send(self, channel: str, sender: str, content: str, signature: str) -> int:
        """Store a message (secure mode: verified) and wake the channel's waiters."""
        message_id: int = await self._db.write(
            operations.accept_message, channel, sender, content, signature, self._clock.seconds()
        )
        self.waiters.wake(channel)
        return message_id

    async def read(
        self, channel: str, agent: str, wait: bool, timeout: float, linger: float
    ) -> list[Message]:
        """Unread messages for `agent`, moving its watermark; with `wait`, block for a first one.

        `linger` (with `wait`) lets a burst gather: once something is unread, wait that long,
        then read everything at once.
        """
        deadline = self._clock.seconds() + (timeout if wait else 0.0)
        gather = wait and linger > 0
        while True:
            if not gather or await self._db.write(store.pending_count, channel, agent):
                if gather:
                    await deferLater(self._clock, linger)
                messages: list[Message] = await self._db.write(store.read_unread, channel, agent)
                if messages or not wait:
                    return messages
            remaining = deadline - self._clock.seconds()
            if remaining <= 0 or not await self.waiters.wait(channel, remaining):
                return []

    async def channels(self) -> list[dict[str, object]]:
        """Every channel with its count and last message time."""
        return await self._db.read(store.list_channels)  # type: ignore[no-any-return]

    async def agents(self) -> list[Agent]:
        """The directory, oldest first."""
        return await self._db.read(store.list_agents)  # type: ignore[no-any-return]

    async def health(self, channel: str, agent: str) -> dict[str, object]:
        """Status, `agent`'s unread count on `channel` (0 if either is empty), secure mode."""
        return await self._db.read(_health, channel, agent)  # type: ignore[no-any-return]

    async def agent_card(self) -> dict[str, object]:
        """The A2A agent card, with the first operator's did:key once there is one."""
        operator = await self._db.read(store.first_operator)
        return build_card(self._settings, operator.public_key if operator else None)

    def stop(self) -> None:
        """Answer every pending long-poll with [] and stop watching for other processes."""
        if self._poller.running:
            self._poller.stop()
        self.waiters.close()

    def _start_polling(self) -> None:
        if not self._poller.running:
            self._poller.start(EXTERNAL_COMMIT_POLL_S, now=False)

    def _poll_external_commits(self) -> None:
        # No cost while nobody waits: the loop ends with the last waiter.
        if not self.waiters:
            self._poller.stop()
            return
        self._db.poll()


def _health(db: Any, channel: str, agent: str) -> dict[str, object]:
    pending = store.pending_count(db, channel, agent) if channel and agent else 0
    return {"status": "ok", "pending": pending, "secure_mode": store.is_secure(db)}
