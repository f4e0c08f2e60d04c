"""What a person watching the agents reads (the console's use cases): history backwards,
channel activity, delivery state, search and security events. None of it moves anything.

No HTTP here either: views.py parses and renders. Secure mode decides what is public: the
elipc/ channels (security events) only to an operator's signed read, as for history.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime

from elipc import operations, store
from elipc.model import RESERVED_PREFIX, SECURITY_CHANNEL, Page, Rejected, Signed
from elipc.server.database import Database


class Overview:
    """The console's reads, over the broker's database."""

    def __init__(self, database: Database, clock: IReactorTime,
                 policy: operations.Policy) -> None:
        self._db = database
        self._clock = clock
        self._policy = policy

    async def is_secure(self) -> bool:
        """Whether an operator exists."""
        return bool(await self._db.read(store.is_secure))

    async def check_public(self, channel: str) -> None:
        """Rejected if `channel` is an elipc/ channel and the server is in secure mode: those
        are read by operators, with a signature."""
        if channel.startswith(RESERVED_PREFIX) and await self.is_secure():
            raise Rejected(f"{RESERVED_PREFIX} channels are not public in secure mode; read "
                           "them as an operator", "security_channel", channel=channel)

    async def history_before(self, channel: str, before_id: int, limit: int,
                             after_id: int = 0) -> Page:
        """The `limit` messages of `channel` before `before_id` (after `after_id`), oldest
        first (scrolling back), and whether older ones remain."""
        page: Page = await self._db.read(store.history_before, channel, before_id, limit,
                                         after_id)
        return page

    async def activity(self, after_id: int | None) -> dict[str, Any]:
        """What changed after message `after_id` (store.activity), and whether the server
        is in secure mode."""
        answer: dict[str, Any] = await self._db.read(_activity, after_id)
        return answer

    async def delivery(self, channel: str) -> dict[str, object]:
        """Each agent's watermark on `channel` and what waits for it (not for the elipc/
        channels in secure mode)."""
        await self.check_public(channel)
        state: dict[str, object] = await self._db.read(store.delivery, channel)
        return state

    async def search(self, text: str, channel: str | None, sender: str | None,
                     before_id: int, limit: int) -> Page:
        """Messages holding every word of `text`, newest first; in secure mode never on the
        elipc/ channels."""
        if channel is not None:
            await self.check_public(channel)
        page: Page = await self._db.read(_search, text, channel, sender, before_id, limit)
        return page

    async def security_events(self, agent: str | None, signed: Signed | None,
                              before_id: int, limit: int) -> tuple[bool, Page]:
        """Whether the server is in secure mode, and the newest security events before
        `before_id` (oldest first). In secure mode, `agent` must be an operator and `signed`
        its elipc/2 read signature of the security channel (its nonce is recorded)."""
        secure = await self.is_secure()
        if secure:
            await self._db.write(operations.authorize_read, SECURITY_CHANNEL, agent or "",
                                 signed, self._clock.seconds(), self._policy)
        page: Page = await self._db.read(store.history_before, SECURITY_CHANNEL, before_id,
                                         limit)
        return secure, page


def _activity(db: Any, after_id: int | None) -> dict[str, object]:
    return {**store.activity(db, after_id), "secure_mode": store.is_secure(db)}


def _search(db: Any, text: str, channel: str | None, sender: str | None, before_id: int,
            limit: int) -> Page:
    return store.search(db, text, channel, sender, before_id, limit,
                        include_reserved=not store.is_secure(db))


def security_event(content: str) -> dict[str, object]:
    """A stored security event as its fields (the server writes them as JSON objects; any
    other text is kept whole under "reason")."""
    try:
        event = json.loads(content)
    except ValueError:
        return {"reason": content}
    return event if isinstance(event, dict) else {"reason": content}
