"""Messages: sending, reading and watermarks, acknowledgements, history, retention."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from elipc.model import Conflict, InvalidInput, Message, Page
from elipc.store.connection import WriteTransaction, guarded, is_postgres

Deliver = Callable[[list[Message]], None]
_MESSAGE_COLUMNS = ("id, channel, sender, content, created_at, COALESCE(signature, ''), "
                    "signed_timestamp, nonce")

MessageRow = tuple[str, str, str, str, "int | None", "str | None"]
_INSERT = ("INSERT INTO messages (channel, sender, content, created_at, signature, "
           "signed_timestamp, nonce) VALUES (?, ?, ?, ?, ?, ?, ?)")
# A watermark never moves backwards, whatever order writers commit in (and el-ipc's files
# may hold NULL).
_ADVANCE = ("INSERT INTO watermarks (agent, channel, last_id) VALUES (?, ?, ?) "
            "ON CONFLICT (agent, channel) DO UPDATE SET last_id = excluded.last_id "
            "WHERE watermarks.last_id IS NULL OR watermarks.last_id < excluded.last_id")


@guarded
def insert_messages(db: Any, messages: Iterable[MessageRow], now: float) -> list[int]:
    """Store (channel, sender, content, signature, signed_timestamp, nonce) rows in one
    transaction; return their ids."""
    postgres = is_postgres(db)
    insert = _INSERT + (" RETURNING id" if postgres else "")
    ids = []
    with WriteTransaction(db):
        for channel, sender, content, signature, signed_timestamp, nonce in messages:
            if postgres and "\x00" in (content or ""):
                raise InvalidInput("content must not contain NUL characters (U+0000) on "
                                   "PostgreSQL")
            cursor = db.execute(insert, (channel, sender, content, now, signature,
                                         signed_timestamp, nonce))
            ids.append(int(cursor.fetchone()[0] if postgres else cursor.lastrowid))
    return ids


def insert_message(
    db: Any, channel: str, sender: str, content: str, signature: str, now: float,
    signed_timestamp: int | None = None, nonce: str | None = None,
) -> int:
    """Store one message and return its id."""
    row = (channel, sender, content, signature, signed_timestamp, nonce)
    return insert_messages(db, [row], now)[0]


@guarded
def delete_messages_before(db: Any, created_before: float, batch: int) -> int:
    """Delete up to `batch` of the oldest messages stored before `created_before`."""
    with WriteTransaction(db):
        return int(db.execute(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE created_at < ? "
            "ORDER BY created_at LIMIT ?)", (created_before, batch)).rowcount)


@guarded
def oldest_message_id(db: Any) -> int | None:
    """The lowest message id still stored (None when there are none)."""
    oldest = db.execute("SELECT MIN(id) FROM messages").fetchone()[0]
    return None if oldest is None else int(oldest)


@guarded
def unread_page(
    db: Any, channel: str, agent: str, limit: int, deliver: Deliver | None = None,
    advance: bool = True,
) -> Page:
    """Up to `limit` of `agent`'s unread messages on `channel`, oldest first, and whether more
    wait behind them; with `advance`, the watermark moves past the page.

    Reading and moving are one write transaction, so two readers for one agent never get the
    same message. `deliver` (if given) is called with the messages before the watermark
    moves; if it raises, nothing moves and the messages stay unread.
    """
    with WriteTransaction(db):
        rows = _unread(db, channel, agent, limit + 1)
        messages = rows[:limit]
        if messages:
            if deliver is not None:
                deliver(messages)
            if advance:
                _advance(db, channel, agent, messages[-1].id)
    return Page(messages, len(rows) > limit)


def _unread(db: Any, channel: str, agent: str, limit: int) -> list[Message]:
    rows = db.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE channel = ? AND id > ? "
        "ORDER BY id LIMIT ?",
        (channel, _watermark(db, channel, agent), limit),
    ).fetchall()
    return [Message(*row) for row in rows]


def _watermark(db: Any, channel: str, agent: str) -> int:
    row = db.execute(
        "SELECT last_id FROM watermarks WHERE agent = ? AND channel = ?", (agent, channel)
    ).fetchone()
    return int(row[0] or 0) if row else 0


def _advance(db: Any, channel: str, agent: str, last_id: int) -> None:
    db.execute(_ADVANCE, (agent, channel, last_id))


@guarded
def acknowledge(db: Any, channel: str, agent: str, up_to: int) -> int:
    """Move `agent`'s watermark on `channel` to `up_to` (never backwards); return it.

    Conflict if `up_to` is beyond the channel's last message: acknowledging what was never
    delivered would skip messages not yet sent.
    """
    with WriteTransaction(db):
        last = db.execute("SELECT COALESCE(MAX(id), 0) FROM messages WHERE channel = ?",
                          (channel,)).fetchone()[0]
        if up_to > last:
            raise Conflict(f"up_to {up_to} is past the last message on {channel} ({last})")
        _advance(db, channel, agent, up_to)
        return _watermark(db, channel, agent)


@guarded
def history(db: Any, channel: str, after_id: int, limit: int) -> list[Message]:
    """Messages of `channel` with ids above `after_id`, oldest first; moves nothing."""
    rows = db.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE channel = ? AND id > ? "
        "ORDER BY id LIMIT ?", (channel, after_id, limit)).fetchall()
    return [Message(*row) for row in rows]


def history_page(db: Any, channel: str, after_id: int, limit: int) -> Page:
    """Up to `limit` messages of `channel` after `after_id`, and whether more follow."""
    rows = history(db, channel, after_id, limit + 1)
    return Page(rows[:limit], len(rows) > limit)


@guarded
def watermark(db: Any, channel: str, agent: str) -> int:
    """The id of the last message `agent` has read on `channel` (0 if it never read)."""
    return _watermark(db, channel, agent)


@guarded
def pending_count(db: Any, channel: str, agent: str) -> int:
    """How many messages on `channel` are unread by `agent`."""
    return int(db.execute(
        "SELECT COUNT(*) FROM messages WHERE channel = ? AND id > ?",
        (channel, _watermark(db, channel, agent)),
    ).fetchone()[0])


@guarded
def list_channels(db: Any) -> list[dict[str, object]]:
    """Every channel with its message count and last message time, most recent first."""
    rows = db.execute(
        "SELECT channel, COUNT(*), MAX(created_at) AS last FROM messages "
        "GROUP BY channel ORDER BY last DESC"
    ).fetchall()
    return [{"channel": c, "count": n, "last_message": last} for c, n, last in rows]


@guarded
def across(db: Any, cursors: Sequence[tuple[str, int]], limit: int,
           max_chars: int | None = None) -> Page:
    """Up to `limit` messages after each (channel, id) cursor, all channels together in id
    order (the order they were committed), and whether more follow; moves nothing. With
    `max_chars`, the page stops once its contents pass that many characters (one message
    at least)."""
    if not cursors:
        return Page([], False)
    one = (f"SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages WHERE channel = ? "
           "AND id > ? ORDER BY id LIMIT ?) AS one")
    args: list[object] = []
    for channel, after in cursors:
        args += [channel, after, limit + 1]
    rows = db.execute(" UNION ALL ".join([one] * len(cursors)) + " ORDER BY 1 LIMIT ?",
                      (*args, limit + 1)).fetchall()
    messages = [Message(*row) for row in rows]
    kept = messages[:limit]
    if max_chars is not None:
        size = 0
        for count, message in enumerate(kept):
            size += len(message.content)
            if count and size > max_chars:
                kept = kept[:count]
                break
    return Page(kept, len(messages) > len(kept))


@guarded
def take_across(db: Any, channels: Sequence[str], agent: str, limit: int,
                max_chars: int | None = None) -> Page:
    """`agent`'s unread messages on `channels`, in id order, and its watermarks moved past
    them, in one write transaction (an event stream's automatic delivery)."""
    with WriteTransaction(db):
        page = across(db, [(c, _watermark(db, c, agent)) for c in channels], limit, max_chars)
        last: dict[str, int] = {}
        for message in page.messages:
            last[message.channel] = message.id
        for channel, last_id in last.items():
            _advance(db, channel, agent, last_id)
    return page


@guarded
def acknowledge_through(db: Any, channels: Sequence[str], agent: str, up_to: int) -> None:
    """Move `agent`'s watermark on each of `channels` past every message with an id up to
    `up_to` (a stream's Last-Event-ID: all of them were received); never backwards."""
    with WriteTransaction(db):
        for channel in channels:
            last = db.execute("SELECT MAX(id) FROM messages WHERE channel = ? AND id <= ?",
                              (channel, up_to)).fetchone()[0]
            if last is not None:
                _advance(db, channel, agent, int(last))


@guarded
def take_for_agents(db: Any, channels: Sequence[str], agents: Sequence[str], limit: int,
                    max_chars: int | None = None) -> list[Page]:
    """take_across for many agents on the same channels, in one transaction: their unread
    pages (in the order of `agents`), each agent's watermarks moved past its own. Agents
    whose watermarks are alike share one query (a message fanned out to many streams)."""
    with WriteTransaction(db):
        marks: dict[str, tuple[int, ...]] = {}
        for agent in dict.fromkeys(agents):
            marks[agent] = tuple(_watermark(db, c, agent) for c in channels)
        pages: dict[tuple[int, ...], Page] = {}
        for cursor in set(marks.values()):
            pages[cursor] = across(db, list(zip(channels, cursor)), limit, max_chars)
        advances = []
        for agent, cursor in marks.items():
            last: dict[str, int] = {}
            for message in pages[cursor].messages:
                last[message.channel] = message.id
            advances += [(agent, channel, last_id) for channel, last_id in last.items()]
        if advances:
            db.executemany(_ADVANCE, advances)
        # An agent named twice takes its page once; the second gets what follows (nothing
        # here: the caller asks again).
        taken: set[str] = set()
        result = []
        for agent in agents:
            result.append(pages[marks[agent]] if agent not in taken else Page([], True))
            taken.add(agent)
        return result
