"""Replay protection (nonces) and idempotency keys: what was already accepted."""

from __future__ import annotations

from typing import Any

from elipc.store.connection import WriteTransaction, guarded


@guarded
def remember_nonce(db: Any, scope: str, nonce: str, now: float) -> bool:
    """Record `nonce` as used in `scope`; False if it was already recorded (a replay)."""
    with WriteTransaction(db):
        cursor = db.execute(
            "INSERT INTO nonces (scope, nonce, seen_at) VALUES (?, ?, ?) "
            "ON CONFLICT (scope, nonce) DO NOTHING",
            (scope, nonce, now),
        )
        return bool(cursor.rowcount)


@guarded
def idempotent_id(db: Any, sender: str, key: str) -> int | None:
    """The id of the message `sender` stored under idempotency `key`, if any."""
    row = db.execute("SELECT message_id FROM idempotency WHERE sender = ? AND key = ?",
                     (sender, key)).fetchone()
    return int(row[0]) if row else None


@guarded
def remember_idempotency(db: Any, sender: str, key: str, message_id: int, now: float) -> None:
    """Record that `sender`'s idempotency `key` produced `message_id`."""
    with WriteTransaction(db):
        db.execute("INSERT INTO idempotency (sender, key, message_id, seen_at) "
                   "VALUES (?, ?, ?, ?)", (sender, key, message_id, now))


@guarded
def forget_idempotency(db: Any, seen_before: float) -> int:
    """Drop idempotency keys recorded before `seen_before`; return how many."""
    with WriteTransaction(db):
        return int(db.execute("DELETE FROM idempotency WHERE seen_at < ?",
                              (seen_before,)).rowcount)


@guarded
def forget_nonces(db: Any, seen_before: float) -> int:
    """Drop nonces recorded before `seen_before` (outside the replay window); return how many."""
    with WriteTransaction(db):
        return int(db.execute("DELETE FROM nonces WHERE seen_at < ?", (seen_before,)).rowcount)
