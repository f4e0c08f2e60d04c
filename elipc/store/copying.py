"""Copying a whole store into another (`elipc migrate`): SQLite to PostgreSQL, or back.

Every table is read in key order, in batches, and written with the target's rows kept where
a key exists already: messages keep their ids (a copy into a store that has them skips
them), watermarks only move forward, and agents, nonces, idempotency keys and the card's
signatures already in the target stay as they are. So a copy that stopped half-way (or a
second run) finishes the job without duplicating anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from elipc.model import Conflict
from elipc.store.connection import WriteTransaction, guarded, is_postgres
from elipc.store.messages import _ADVANCE


class Table(NamedTuple):
    """How one table is read and written."""

    select: str  # the columns read (el-ipc's files may hold NULLs where elipc's do not)
    insert: str  # the columns written
    key: str
    on_conflict: str


TABLES: dict[str, Table] = {
    "messages": Table(
        "id, channel, sender, content, created_at, COALESCE(signature, ''), signed_timestamp, "
        "nonce", "id, channel, sender, content, created_at, signature, signed_timestamp, nonce",
        "id", "ON CONFLICT (id) DO NOTHING"),
    "agents": Table(
        "name, identity, public_key, role, registered_by, created_at, registration_ts, "
        "registration_signature", "name, identity, public_key, role, registered_by, "
        "created_at, registration_ts, registration_signature", "name",
        "ON CONFLICT (name) DO NOTHING"),
    "watermarks": Table("agent, channel, COALESCE(last_id, 0)", "agent, channel, last_id",
                        "agent, channel", ""),
    "nonces": Table("scope, nonce, seen_at", "scope, nonce, seen_at", "scope, nonce",
                    "ON CONFLICT (scope, nonce) DO NOTHING"),
    "idempotency": Table("sender, key, message_id, seen_at", "sender, key, message_id, seen_at",
                         "sender, key", "ON CONFLICT (sender, key) DO NOTHING"),
    "card_signatures": Table("id, signatures, signed_by, signed_at",
                             "id, signatures, signed_by, signed_at", "id",
                             "ON CONFLICT (id) DO NOTHING"),
}


@guarded
def row_counts(db: Any) -> dict[str, int]:
    """How many rows each copied table holds."""
    return {table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in TABLES}


@guarded
def read_rows(db: Any, table: str, offset: int, limit: int) -> list[tuple[Any, ...]]:
    """Up to `limit` rows of `table` in key order, from the `offset`-th (messages: those with
    ids above `offset`, so a large table is read without rescanning)."""
    spec = TABLES[table]
    if table == "messages":
        query = f"SELECT {spec.select} FROM messages WHERE id > ? ORDER BY id LIMIT ?"
        args: tuple[int, ...] = (offset, limit)
    else:
        query = f"SELECT {spec.select} FROM {table} ORDER BY {spec.key} LIMIT ? OFFSET ?"
        args = (limit, offset)
    return [tuple(row) for row in db.execute(query, args).fetchall()]


@guarded
def write_rows(db: Any, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Write `rows` of `table` in one transaction, keeping the target's rows where keys
    meet (watermarks: the higher one); return how many were new (or moved forward)."""
    spec = TABLES[table]
    if table == "watermarks":
        statement = _ADVANCE
    else:
        places = ", ".join("?" for _ in spec.insert.split(", "))
        statement = f"INSERT INTO {table} ({spec.insert}) VALUES ({places}) {spec.on_conflict}"
    written = 0
    with WriteTransaction(db):
        for row in rows:
            if table == "messages":
                _check_message(db, row)
            added = max(0, int(db.execute(statement, row).rowcount))
            if table == "messages" and not added:
                _check_same(db, row)
            written += added
        if table == "messages" and is_postgres(db):
            # New sends (a server already running on the target) get ids above these.
            from elipc.store.postgres import set_next_id

            set_next_id(db)
    return written


def _check_message(db: Any, row: tuple[Any, ...]) -> None:
    if is_postgres(db) and "\x00" in (row[3] or ""):
        raise Conflict(f"message {row[0]} holds a NUL character (U+0000), which PostgreSQL "
                       "cannot store: delete or edit it in the source, then run again")


def _check_same(db: Any, row: tuple[Any, ...]) -> None:
    # A message already in the target under this id must be this one (a copy run before);
    # another message there means the target was written to: refuse, never drop.
    found = db.execute("SELECT channel, sender, content FROM messages WHERE id = ?",
                       (row[0],)).fetchone()
    if found is not None and tuple(found) != tuple(row[1:4]):
        raise Conflict(f"the target's message {row[0]} is not the source's message "
                       f"{row[0]}: the target was written to; not merging")
