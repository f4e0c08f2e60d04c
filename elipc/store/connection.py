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
# The errors of the database drivers loaded (postgres.py adds psycopg's when it is imported),
# and how to say each in one line.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)
_DESCRIBERS: list[tuple[type[Exception], Callable[[Exception], str]]] = []
# PostgreSQL: every write transaction takes pg_advisory_xact_lock(WRITE_LOCK_CLASS,
# WRITE_LOCK) first, as SQLite's BEGIN IMMEDIATE takes the file's lock (see postgres.py).
WRITE_LOCK_CLASS = 0x656C6970  # "elip"
WRITE_LOCK, MIGRATION_LOCK = 1, 0
# One round trip: both statements in one simple query.
BEGIN_WRITE = f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_CLASS}, {WRITE_LOCK})"


def register_driver(error: type[Exception], describe: Callable[[Exception], str]) -> None:
    """Have the store turn `error` (another driver's base error) into StorageError too."""
    global DRIVER_ERRORS
    if error not in DRIVER_ERRORS:
        DRIVER_ERRORS = (*DRIVER_ERRORS, error)
        _DESCRIBERS.append((error, describe))


def is_postgres(db: Any) -> bool:
    """Whether `db` is a PostgreSQL connection (postgres.PgConnection, or adbapi's proxy)."""
    return getattr(_connection(db), "dialect", "sqlite") == "postgresql"


def guarded(function: Callable[P, R]) -> Callable[P, R]:
    """Turn the drivers' errors raised by `function` into StorageError."""
    @functools.wraps(function)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except DRIVER_ERRORS as e:
            raise StorageError(_describe(e)) from None
    return guarded


def _describe(error: Exception) -> str:
    for kind, describe in _DESCRIBERS:
        if isinstance(error, kind):
            return describe(error)
    text = str(error)
    if "locked" in text or "busy" in text:
        return f"database is busy (still locked after {BUSY_TIMEOUT_S:g} s): {text}"
    if isinstance(error, sqlite3.DatabaseError) and "not a database" in text:
        return "file is not an SQLite database (corrupt or another format)"
    return f"database error: {text}"


class WriteTransaction:
    """`with WriteTransaction(db):` is one BEGIN IMMEDIATE transaction, rolled back on any error
    (PostgreSQL: BEGIN, then the write lock).

    Inside a transaction already (a batch, see run_batch) it is a savepoint instead, so one
    operation of a batch can fail without undoing the others.

    The store's boundary: any driver error inside it, or at BEGIN, COMMIT or ROLLBACK (a
    full disk shows first at COMMIT), leaves as StorageError, after the rollback.
    """

    def __init__(self, db: Any) -> None:
        self.db = db
        self.nested = False
        self.inner = False  # PostgreSQL, inside a savepoint already: see __enter__

    def __enter__(self) -> Any:
        try:
            return self._begin()
        except BaseException:
            if self.nested and not self.inner and is_postgres(self.db):
                _connection(self.db).nest(-1)  # no __exit__ follows a failed __enter__
            raise

    def _begin(self) -> Any:
        try:
            connection = _connection(self.db)
            self.nested = connection.in_transaction
            if self.nested and is_postgres(self.db):
                # Each savepoint is a round trip to PostgreSQL (free in SQLite). One per
                # batch operation is what isolates it; a store call nested deeper needs none
                # of its own: its failure leaves through the savepoint around it, which no
                # caller catches to carry on with the transaction.
                self.inner = connection.nest(1) > 1
                if self.inner:
                    return self.db
            if self.nested:
                self.db.execute("SAVEPOINT elipc_op")
            elif is_postgres(self.db):
                self.db.execute(BEGIN_WRITE)
            else:
                self.db.execute("BEGIN IMMEDIATE")
        except DRIVER_ERRORS as e:
            if not self.nested:
                self._end(failed=True, quietly=True)
            raise StorageError(_describe(e)) from None
        return self.db

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: object) -> None:
        if self.nested and is_postgres(self.db):
            _connection(self.db).nest(-1)
            if self.inner:
                if isinstance(error, DRIVER_ERRORS):
                    raise StorageError(_describe(error)) from None
                return
        try:
            self._end(failed=kind is not None)
        except DRIVER_ERRORS as e:
            self._end(failed=True, quietly=True)
            raise StorageError(_describe(e)) from None
        if isinstance(error, DRIVER_ERRORS):
            raise StorageError(_describe(error)) from None

    def _end(self, failed: bool, quietly: bool = False) -> None:
        try:
            if self.nested:
                if failed:
                    self.db.execute("ROLLBACK TO elipc_op")
                self.db.execute("RELEASE elipc_op")
            elif not failed:
                _committed(self.db.execute("COMMIT"))
            elif _connection(self.db).in_transaction:
                self.db.execute("ROLLBACK")
        except DRIVER_ERRORS:
            if not quietly:
                raise
            # Undoing after a failed COMMIT: SQLite may have rolled back already (and a lost
            # PostgreSQL connection has nothing left to roll back).


def _committed(cursor: Any) -> None:
    # PostgreSQL answers the COMMIT of a transaction it aborted with ROLLBACK, and no error
    # (the COMMIT is the last statement of the query: its status is the last result's).
    status = getattr(cursor, "statusmessage", None)
    while status is not None and cursor.nextset():
        status = cursor.statusmessage
    if status not in ("COMMIT", None):
        raise StorageError("database error: the transaction was rolled back, not committed")


def transaction(db: Any) -> WriteTransaction:
    """A write transaction (or, inside one, a savepoint) for several store calls at once."""
    return WriteTransaction(db)


def _connection(db: Any) -> Any:
    # A sqlite3 cursor knows its connection; a connection (or adbapi's proxy of one) is one.
    return getattr(db, "connection", db)


@guarded
def run_batch(
    db: Any, operations: Sequence[Callable[[Any], Any]]
) -> list[tuple[bool, Any]]:
    """Run `operations` in one transaction (one fsync), each in its own savepoint; return
    (True, result) or (False, exception) for each. A failing operation leaves no trace; if
    the commit fails, the whole batch raises StorageError."""
    if is_postgres(db) and operations:
        return _run_batch_postgres(db, operations)
    with WriteTransaction(db):
        return [_outcome(_in_savepoint, db, operation) for operation in operations]


def _in_savepoint(db: Any, operation: Callable[[Any], Any]) -> Any:
    with WriteTransaction(db):
        return operation(db)


def _outcome(run: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    # (True, what `run(*args)` returned), or (False, why it failed): a driver's error as
    # StorageError, the operation's own refusal as it is, for its caller.
    try:
        return True, run(*args)
    except DRIVER_ERRORS as e:
        return False, StorageError(_describe(e))
    except Exception as e:
        return False, e


def _run_batch_postgres(db: Any, operations: Sequence[Callable[[Any], Any]],
                        ) -> list[tuple[bool, Any]]:
    # run_batch's rules in fewer round trips (each is one on PostgreSQL): the savepoint
    # that ends one operation and the one that starts the next are one query, as are
    # BEGIN, the write lock and the first savepoint, and the last release and the COMMIT.
    # The operations' own transactions nest inside the savepoint at depth 1: no-ops.
    connection = _connection(db)
    outcomes: list[tuple[bool, Any]] = []
    try:
        db.execute(f"{BEGIN_WRITE}; SAVEPOINT elipc_op")  # the depth is 0 from here
        connection.nest(1)
        for number, operation in enumerate(operations, 1):
            outcomes.append(_outcome(operation, db))
            undo = "" if outcomes[-1][0] else "ROLLBACK TO elipc_op; "
            last = number == len(operations)
            then = "COMMIT" if last else "SAVEPOINT elipc_op"
            ended = db.execute(f"{undo}RELEASE elipc_op; {then}")
            if last:
                _committed(ended)
    except BaseException as e:
        if connection.in_transaction:
            try:
                db.execute("ROLLBACK")
            except DRIVER_ERRORS:
                pass  # lost with the connection
        if isinstance(e, DRIVER_ERRORS):
            raise StorageError(_describe(e)) from None
        raise
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
    """A number that changes whenever another connection commits to the file (PostgreSQL:
    whenever anyone commits a message, see postgres.PgConnection.data_version)."""
    if is_postgres(db):
        return int(_connection(db).data_version())
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
