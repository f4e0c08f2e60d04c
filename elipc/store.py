"""All of elipc's queries: plain functions `f(db, ...)` over a sqlite3 connection or cursor
(schema.py holds the tables and their migrations).

The CLI calls them on its own connection; the server calls the same functions through
adbapi's runWithConnection, whose connection proxies `execute`. Connections run in autocommit
mode and every write is one explicit `BEGIN IMMEDIATE ... COMMIT`, so nothing is half-written
and writers queue on SQLite's lock. sqlite3 errors leave as StorageError. No Twisted here.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from elipc.model import Agent, ElipcError, Message

F = TypeVar("F", bound=Callable[..., Any])
Deliver = Callable[[list[Message]], None]

BUSY_TIMEOUT_S = 10.0
_MESSAGE_COLUMNS = "id, channel, sender, content, created_at, signature, signed_timestamp, nonce"
_AGENT_COLUMNS = (
    "name, identity, public_key, role, registered_by, created_at, registration_ts, "
    "registration_signature"
)


class StorageError(ElipcError):
    """The database could not do what was asked; the message says why, without SQL."""


class SchemaTooNew(StorageError):
    """The file was written by a newer elipc whose schema this one does not know."""


class Conflict(StorageError):
    """The write contradicts what is stored (a name taken, an operator not found)."""


def guarded(function: F) -> F:
    """Turn sqlite3 errors raised by `function` into StorageError."""
    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except sqlite3.Error as e:
            raise StorageError(_describe(e)) from None
    return guarded  # type: ignore[return-value]


def _describe(error: sqlite3.Error) -> str:
    text = str(error)
    if "locked" in text or "busy" in text:
        return f"database is busy (still locked after {BUSY_TIMEOUT_S:g} s): {text}"
    if isinstance(error, sqlite3.DatabaseError) and "not a database" in text:
        return "file is not an SQLite database (corrupt or another format)"
    return f"database error: {text}"


class _Write:
    """`with _Write(db):` is one BEGIN IMMEDIATE transaction, rolled back on any error.

    Inside a transaction already (a batch, see run_batch) it is a savepoint instead, so one
    operation of a batch can fail without undoing the others.
    """

    def __init__(self, db: Any) -> None:
        self.db = db
        self.nested = False

    def __enter__(self) -> Any:
        self.nested = _connection(self.db).in_transaction
        self.db.execute("SAVEPOINT elipc_op" if self.nested else "BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        if self.nested:
            if kind is not None:
                self.db.execute("ROLLBACK TO elipc_op")
            self.db.execute("RELEASE elipc_op")
        elif kind is None:
            self.db.execute("COMMIT")
        else:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass  # SQLite already rolled back (e.g. disk full); nothing to undo.


def transaction(db: Any) -> _Write:
    """A write transaction (or, inside one, a savepoint) for several store calls at once."""
    return _Write(db)


def _connection(db: Any) -> sqlite3.Connection:
    # A sqlite3 cursor knows its connection; a connection (or adbapi's proxy of one) is one.
    return getattr(db, "connection", db)


@guarded
def run_batch(
    db: Any, operations: Sequence[Callable[[Any], Any]]
) -> list[tuple[bool, Any]]:
    """Run `operations` in one transaction (one fsync), each in its own savepoint; return
    (True, result) or (False, exception) for each. A failing operation leaves no trace; if
    the commit fails, the whole batch raises StorageError."""
    outcomes: list[tuple[bool, Any]] = []
    with _Write(db):
        for operation in operations:
            try:
                with _Write(db):
                    outcomes.append((True, operation(db)))
            except sqlite3.Error as e:
                outcomes.append((False, StorageError(_describe(e))))
            except Exception as e:  # the operation's own refusal, reported to its caller
                outcomes.append((False, e))
    return outcomes


# -- opening and migrating ---------------------------------------------------------------


def open_database(path: str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating 0600 if missing), configure and migrate the database at `path`."""
    _create_private(path)
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
            check_same_thread=check_same_thread,
        )
    except sqlite3.Error as e:
        raise StorageError(f"cannot open database {path}: {e}") from None
    from elipc import schema  # schema.py holds the migrations and uses this module

    try:
        configure(conn)
        schema.migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: str) -> None:
    # SQLite gives its -wal and -shm files the database file's mode, so 0600 here covers all.
    if path == ":memory:" or os.path.exists(path):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as e:
        raise StorageError(f"cannot create database {path}: {e.strerror}") from None


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


# -- messages and watermarks -------------------------------------------------------------


MessageRow = tuple[str, str, str, str, "int | None", "str | None"]


@guarded
def insert_messages(db: Any, messages: Iterable[MessageRow], now: float) -> list[int]:
    """Store (channel, sender, content, signature, signed_timestamp, nonce) rows in one
    transaction; return their ids."""
    with _Write(db):
        return [
            db.execute(
                "INSERT INTO messages (channel, sender, content, created_at, signature, "
                "signed_timestamp, nonce) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (channel, sender, content, now, signature, signed_timestamp, nonce),
            ).lastrowid
            for channel, sender, content, signature, signed_timestamp, nonce in messages
        ]


def insert_message(
    db: Any, channel: str, sender: str, content: str, signature: str, now: float,
    signed_timestamp: int | None = None, nonce: str | None = None,
) -> int:
    """Store one message and return its id."""
    row = (channel, sender, content, signature, signed_timestamp, nonce)
    return insert_messages(db, [row], now)[0]


@guarded
def remember_nonce(db: Any, scope: str, nonce: str, now: float) -> bool:
    """Record `nonce` as used in `scope`; False if it was already recorded (a replay)."""
    with _Write(db):
        cursor = db.execute(
            "INSERT OR IGNORE INTO nonces (scope, nonce, seen_at) VALUES (?, ?, ?)",
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
    with _Write(db):
        db.execute("INSERT INTO idempotency (sender, key, message_id, seen_at) "
                   "VALUES (?, ?, ?, ?)", (sender, key, message_id, now))


@guarded
def forget_idempotency(db: Any, seen_before: float) -> int:
    """Drop idempotency keys recorded before `seen_before`; return how many."""
    with _Write(db):
        return int(db.execute("DELETE FROM idempotency WHERE seen_at < ?",
                              (seen_before,)).rowcount)


@guarded
def delete_messages_before(db: Any, created_before: float, batch: int) -> int:
    """Delete up to `batch` of the oldest messages stored before `created_before`."""
    with _Write(db):
        return int(db.execute(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE created_at < ? "
            "ORDER BY created_at LIMIT ?)", (created_before, batch)).rowcount)


@guarded
def oldest_message_id(db: Any) -> int | None:
    """The lowest message id still stored (None when there are none)."""
    return db.execute("SELECT MIN(id) FROM messages").fetchone()[0]


@guarded
def forget_nonces(db: Any, seen_before: float) -> int:
    """Drop nonces recorded before `seen_before` (outside the replay window); return how many."""
    with _Write(db):
        return int(db.execute("DELETE FROM nonces WHERE seen_at < ?", (seen_before,)).rowcount)


@guarded
def read_unread(
    db: Any, channel: str, agent: str, deliver: Deliver | None = None, limit: int = -1
) -> list[Message]:
    """Return `agent`'s unread messages on `channel`, oldest first, and move its watermark.

    Both happen in one write transaction, so two readers for one agent never get the same
    message. `deliver` (if given) is called with the messages before the watermark moves;
    if it raises, nothing moves and the messages stay unread.
    """
    with _Write(db):
        messages = _unread(db, channel, agent, limit)
        if messages:
            if deliver is not None:
                deliver(messages)
            _advance(db, channel, agent, messages[-1].id)
    return messages


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
    # max(): a watermark never moves backwards, whatever order writers commit in.
    db.execute(
        "INSERT INTO watermarks (agent, channel, last_id) VALUES (?, ?, ?) "
        "ON CONFLICT (agent, channel) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
        (agent, channel, last_id),
    )


@guarded
def peek_unread(db: Any, channel: str, agent: str, limit: int) -> list[Message]:
    """`agent`'s unread messages on `channel`, oldest first, without moving anything."""
    return _unread(db, channel, agent, limit)


@guarded
def acknowledge(db: Any, channel: str, agent: str, up_to: int) -> int:
    """Move `agent`'s watermark on `channel` to `up_to` (never backwards); return it.

    Conflict if `up_to` is beyond the channel's last message: acknowledging what was never
    delivered would skip messages not yet sent.
    """
    with _Write(db):
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


# -- the agent directory -----------------------------------------------------------------


@guarded
def is_secure(db: Any) -> bool:
    """Secure mode is on once any operator exists (and stays on)."""
    return db.execute("SELECT 1 FROM agents WHERE role = 'operator' LIMIT 1").fetchone() is not None


@guarded
def get_agent(db: Any, name: str) -> Agent | None:
    """The directory entry called `name`, or None."""
    row = db.execute(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE name = ?", (name,)).fetchone()
    return Agent(*row) if row else None


@guarded
def list_agents(db: Any) -> list[Agent]:
    """Every operator and agent, oldest first."""
    rows = db.execute(f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY created_at, rowid")
    return [Agent(*row) for row in rows.fetchall()]


@guarded
def first_operator(db: Any) -> Agent | None:
    """The operator seeded first (its key is the agent card's did:key), or None."""
    row = db.execute(
        f"SELECT {_AGENT_COLUMNS} FROM agents WHERE role = 'operator' "
        "ORDER BY created_at, rowid LIMIT 1"
    ).fetchone()
    return Agent(*row) if row else None


@guarded
def add_operator(
    db: Any, name: str, public_key: str, now: float,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Store a new operator (Conflict if the name is taken). `before_commit` runs inside the
    transaction (the CLI hands out the private key there): if it fails, nothing is stored."""
    with _Write(db):
        if _role(db, name) is not None:
            raise Conflict(f"agent '{name}' already exists")
        db.execute(
            "INSERT INTO agents (name, identity, public_key, role, registered_by, created_at) "
            "VALUES (?, '', ?, 'operator', NULL, ?)",
            (name, public_key, now),
        )
        if before_commit is not None:
            before_commit()


@guarded
def register_agent(
    db: Any, name: str, identity: str, public_key: str, operator: str, now: float,
    registration_ts: int = 0, registration_signature: str = "",
) -> None:
    """Store or replace agent `name`, registered by `operator` (still an operator; the caller
    checked its signature). Never replaces an operator, nor a registration signed later than
    this one (a replayed old registration must not roll a rotated key back)."""
    with _Write(db):
        if _role(db, operator) != "operator":
            raise Conflict(f"'{operator}' is not an operator")
        current = get_agent(db, name)
        if current is not None and current.is_operator:
            raise Conflict(f"'{name}' is an operator and cannot be registered as an agent")
        if current is not None and registration_ts and current.registration_ts >= registration_ts:
            raise Conflict(f"a registration of '{name}' signed at or after that time exists")
        db.execute(
            "INSERT OR REPLACE INTO agents (name, identity, public_key, role, registered_by, "
            "created_at, registration_ts, registration_signature) "
            "VALUES (?, ?, ?, 'agent', ?, ?, ?, ?)",
            (name, identity, public_key, operator, now, registration_ts, registration_signature),
        )


def _role(db: Any, name: str) -> str | None:
    row = db.execute("SELECT role FROM agents WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None

