"""Reading the past backwards and the present in summary: what a person browsing needs
(the console) and an agent does not. Moves nothing."""

from __future__ import annotations

from typing import Any

from elipc.model import Message, Page
from elipc.store.connection import guarded

# The most message ids one activity call looks at: a console that was away for a long
# time catches up in steps, each of bounded cost.
ACTIVITY_WINDOW = 50_000

_COLUMNS = ("id, channel, sender, content, created_at, COALESCE(signature, ''), "
            "signed_timestamp, nonce")


@guarded
def history_before(db: Any, channel: str, before_id: int, limit: int,
                   after_id: int = 0) -> Page:
    """The `limit` messages of `channel` just before `before_id` (and after `after_id`),
    oldest first, and whether older ones remain (scrolling back)."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE channel = ? AND id < ? AND id > ? "
        "ORDER BY id DESC LIMIT ?", (channel, before_id, after_id, limit + 1)).fetchall()
    return Page([Message(*row) for row in reversed(rows[:limit])], len(rows) > limit)


@guarded
def activity(db: Any, after_id: int | None) -> dict[str, object]:
    """The highest message id looked at, and each channel that gained messages after
    `after_id` (how many, its last id and time), looking at ACTIVITY_WINDOW ids at most.
    Without `after_id`, only the highest id (where to start)."""
    highest = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])
    if after_id is None or after_id >= highest:
        return {"last_id": highest if after_id is None else after_id, "channels": []}
    upto = min(highest, after_id + ACTIVITY_WINDOW)
    rows = db.execute(
        "SELECT channel, COUNT(*), MAX(id), MAX(created_at) FROM messages "
        "WHERE id > ? AND id <= ? GROUP BY channel", (after_id, upto)).fetchall()
    return {"last_id": upto, "channels": [
        {"channel": channel, "added": added, "last_id": last, "last_message": at}
        for channel, added, last, at in rows]}
