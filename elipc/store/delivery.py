"""Delivery state: how far each agent has read a channel, moving nothing (the console's
"who is behind")."""

from __future__ import annotations

from typing import Any

from elipc.store.connection import guarded

MAX_READERS = 1000


@guarded
def delivery(db: Any, channel: str) -> dict[str, object]:
    """`channel`'s last message id and count, and each agent that has a watermark there (at
    most MAX_READERS, by name) with its watermark and how many messages wait past it."""
    last_id, count = db.execute(
        "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM messages WHERE channel = ?",
        (channel,)).fetchone()
    marks = db.execute(
        "SELECT agent, COALESCE(last_id, 0) FROM watermarks WHERE channel = ? "
        "ORDER BY agent LIMIT ?", (channel, MAX_READERS + 1)).fetchall()
    readers = [{"agent": agent, "watermark": int(mark), "pending": _pending(db, channel, mark)}
               for agent, mark in marks[:MAX_READERS]]
    return {"channel": channel, "last_id": int(last_id), "count": int(count),
            "agents": readers, "more": len(marks) > MAX_READERS}


def _pending(db: Any, channel: str, watermark: int) -> int:
    return int(db.execute("SELECT COUNT(*) FROM messages WHERE channel = ? AND id > ?",
                          (channel, watermark)).fetchone()[0])
