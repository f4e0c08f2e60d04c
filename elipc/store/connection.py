"""Configuring connections, transactions, errors, batches, and noticing other processes."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from elipc.model import StorageError

P = ParamSpec("P")
R = TypeVar("R")

BUSY_TIMEOUT_S = 10.0


def guarded(function: Callable[P, R]) -> Callable[P, R]:
    """Turn sqlite3 errors raised by `function` into StorageError."""
    @functools.wraps(function)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except sqlite3.Error as e:
            raise StorageError(_describe(e)) from None
    return guarded


def _describe(error: sqlite3.Error) -> str:
    text = str(error)
    if "locked" in text or "busy" in text:
        return f"database is busy (still locked after {BUSY_TIMEOUT_S:g} s): {text}"
    if isinstance(error, sqlite3.DatabaseError) and "not a database" in text:
        return "file is not an SQLite database (corrupt or another format)"
    return f"database error: {text}"


class WriteTransaction:
    """`with WriteTransaction(db):` is one BEGIN IMMEDIATE transaction, rolled back on any error.

    Inside a transaction already (a batch, see run_batch) it is a savepoint instead, so one
    operation of a batch can fail without undoing the others.

    The store's boundary: any sqlite3 error inside it, or at BEGIN, COMMIT or ROLLBACK (a
    full disk shows first at COMMIT), leaves as StorageError, after the rollback.
    """

    def __init__(self, db: Any) -> None:
        self.db = db
        self.nested = False

    def __enter__(self) -> Any:
        try:
            self.nested = _connection(self.db).in_transaction
            self.db.execute("SAVEPOINT elipc_op" if self.nested else "BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StorageError(_describe(e)) from None
        return self.db

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: object) -> None:
        try:
            self._end(failed=kind is not None)
        except sqlite3.Error as e:
            self._end(failed=True, quietly=True)
            raise StorageError(_describe(e)) from None
        if isinstance(error, sqlite3.Error):
            raise StorageError(_describe(error)) from None

    def _end(self, failed: bool, quietly: bool = False) -> None:
        try:
            if self.nested:
                if failed:
                    self.db.execute("ROLLBACK TO elipc_op")
                self.db.execute("RELEASE elipc_op")
            elif not failed:
                self.db.execute("COMMIT")
            elif _connection(self.db).in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            if not quietly:
                raise
            # Undoing after a failed COMMIT: SQLite may have rolled back already.


def transaction(db: Any) -> WriteTransaction:
    """A write transaction (or, inside one, a savepoint) for several store calls at once."""
    return WriteTransaction(db)


def _connection(db: Any) -> sqlite3.Connection:
    # A sqlite3 cursor knows its connection; a connection (or adbapi's proxy of one) is one.
    connection: sqlite3.Connection = getattr(db, "connection", db)
    return connection


@guarded
def run_batch(
    db: Any, operations: Sequence[Callable[[Any], Any]]
) -> list[tuple[bool, Any]]:
    """Run `operations` in one transaction (one fsync), each in its own savepoint; return
    (True, result) or (False, exception) for each. A failing operation leaves no trace; if
    the commit fails, the whole batch raises StorageError."""
    outcomes: list[tuple[bool, Any]] = []
    with WriteTransaction(db):
        for operation in operations:
            try:
                with WriteTransaction(db):
                    outcomes.append((True, operation(db)))
            except sqlite3.Error as e:
                outcomes.append((False, StorageError(_describe(e))))
            except Exception as e:  # the operation's own refusal, reported to its caller
                outcomes.append((False, e))
    return outcomes


@guarded
def configure(conn: sqlite3.Connection) -> None:
    """Set the per-connection pragmas: busy wait, WAL, and fsync on every commit."""
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    _enable_wal(conn)
    # FULL: a commit that returned is on disk, so an acknowledged send survives power loss.
    conn.execute("PRAGMA synchronous = FULL")


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Processes opening a brand-new file at once race to switch it to WAL, and the losers
    # get "database is locked" at once, without the busy wait: retry until it is WAL.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.002)


@guarded
def data_version(db: Any) -> int:
    """A number that changes whenever another connection commits to the file."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


@guarded
def last_message_id(db: Any) -> int:
    """The highest message id stored (0 when there are none)."""
    return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])


@guarded
def channels_after(db: Any, message_id: int) -> tuple[int, set[str]]:
    """The channels that gained messages after `message_id`, and the new highest id."""
    rows = db.execute(
        "SELECT channel, MAX(id) FROM messages WHERE id > ? GROUP BY channel", (message_id,)
    ).fetchall()
    return max([message_id, *(row[1] for row in rows)]), {row[0] for row in rows}
