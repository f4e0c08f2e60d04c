"""The PostgreSQL dialect: connections, the schema and its migrations, notifications.

The store's functions take a connection and call `db.execute(sql, params)` with `?`
placeholders, as sqlite3 does. PgConnection gives a psycopg 3 connection that shape (the
placeholders become `%s` once per statement), so the same functions run on both stores; the
few statements that differ ask `is_postgres(db)`.

Three rules make PostgreSQL behave as the SQLite store does (docs/deployment.md):

- Every write transaction starts by taking one advisory lock (WRITE_LOCK) held to its
  commit, as SQLite's BEGIN IMMEDIATE takes the file's write lock. Writes from every elipc
  server and CLI on the database take turns; each one's reads see every earlier commit; a
  read-and-advance of a watermark, a nonce or an idempotency key checked then recorded, a
  registration that must not roll back, all stay atomic with no row locks to deadlock on.
- So message ids are handed out in commit order: the sequence is only ever used under that
  lock (the insert trigger takes it too, for any writer outside the store). A reader that
  sees id 11 has seen id 10, or 10 will never exist.
- The insert trigger NOTIFYs `elipc` with the message's channel; PostgreSQL delivers it
  only once the transaction commits. Servers LISTEN on a connection of their own
  (server/notify.py); the CLI's waits count notifications (`data_version`).

psycopg is imported here only: the SQLite store and the CLI never load it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import pq

from elipc.locations import without_password
from elipc.model import SchemaTooNew, StorageError
from elipc.store.search import PG_SCHEMA as PG_SEARCH_SCHEMA
from elipc.store.connection import (
    MIGRATION_LOCK,
    WRITE_LOCK,
    WRITE_LOCK_CLASS,
    register_driver,
)

# adbapi.ConnectionPool("elipc.store.postgres", url) uses this module as its DB-API module:
# it calls connect(url) in each pool thread and reads these two names.
threadsafety = 2
apilevel = "2.0"
paramstyle = "qmark"
Error = psycopg.Error

NOTIFY_CHANNEL = "elipc"
# As SQLite's busy timeout: a write waiting longer than this for the lock fails (503).
LOCK_TIMEOUT_MS = 10_000
# A session that dies inside a transaction (a frozen server) gives the lock back.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT_S = 10

SCHEMA_TABLE = "elipc_schema"


@functools.lru_cache(maxsize=512)
def _translate(sql: str) -> str:
    # psycopg's placeholders are %s, and a literal % is %%; no store statement has a ? or a
    # % inside a string literal.
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection in autocommit mode, with sqlite3's calling conventions: the
    store's BEGIN ... COMMIT are its transactions."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self._conn = conn
        self._url = url
        self._listening = False
        self._version = 0
        self._depth = 0
        # Sent BEGIN, and neither COMMIT nor ROLLBACK since: the store believes a transaction
        # is open, so a lost connection fails every statement until the store ends it; it
        # never reconnects under the transaction (whose first writes died with the session).
        self._began = False

    def nest(self, step: int) -> int:
        """Count savepoint levels (connection.WriteTransaction); the depth now."""
        self._depth += step
        return self._depth

    def _lost(self) -> bool:
        return bool(self._conn.broken or self._conn.closed)

    def _usable(self) -> psycopg.Connection[Any]:
        # A connection lost (the database restarted) fails the statement that meets it
        # inside a transaction; outside one, it is replaced. Listeners listen again and
        # count one change: what was committed meanwhile must be looked for.
        if self._lost():
            if self._began:
                raise psycopg.OperationalError("the connection to PostgreSQL was lost "
                                               "inside a transaction (rolled back)")
            self._conn = _connect(self._url)
            if self._listening:
                self._listening = False
                self._version += 1
        return self._conn

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection (for the server's notification reader)."""
        return self._conn

    @property
    def backend_pid(self) -> int:
        """The server process behind this connection (its notifications carry it)."""
        return int(self._conn.info.backend_pid)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (sqlite3.Connection.in_transaction)."""
        return self._began or self._conn.info.transaction_status in _IN_TRANSACTION

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (or, with no parameters, several); its cursor (fetchone,
        fetchall, rowcount, statusmessage)."""
        begins = sql.startswith("BEGIN")
        if begins:
            self._began, self._depth = True, 0
        elif sql == "ROLLBACK" and self._lost():
            self._began = False  # the server rolled it back when the session ended
            return None
        try:
            cursor = self._run(sql, params)
        except psycopg.OperationalError:
            if not (self._lost() and (begins or not self._began) and _RETRYABLE.match(sql)):
                raise
            # Outside a transaction, on a connection that died idle (the database restarted
            # since its last use): nothing ran; the statement gets one new connection.
            self._began = False
            cursor = self._run(sql, params)
            self._began = begins
        if sql == "ROLLBACK" or sql.endswith("COMMIT"):
            self._began = False
        return cursor

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        if not params:  # no placeholders to turn, nor a % to double
            return self._usable().execute(sql)
        return self._usable().execute(_translate(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each of `rows`."""
        with self._usable().cursor() as cursor:
            cursor.executemany(_translate(sql), list(rows))

    def cursor(self) -> psycopg.Cursor[Any]:
        """A DB-API cursor."""
        return self._usable().cursor()

    def commit(self) -> None:
        """Nothing: the store commits its own transactions (adbapi calls this after each use)."""

    def rollback(self) -> None:
        """Roll back a transaction left open (adbapi calls this after a failure). A lost
        connection has nothing to roll back: the next statement reconnects."""
        if self.in_transaction:
            self.execute("ROLLBACK")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def data_version(self) -> int:
        """A number that changes whenever a message is committed (by anyone): notifications
        counted, without waiting. The first call starts listening."""
        if not self._listening:
            self._usable().execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._listening = True
        try:
            for _ in self._conn.notifies(timeout=0.0):
                self._version += 1
        except psycopg.OperationalError:
            self._version += 1  # lost: read again (which reconnects, or says why not)
        return self._version


_IN_TRANSACTION = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR,
                   pq.TransactionStatus.ACTIVE)
# What may be sent again on a new connection when the old one turns out dead: the start of
# a transaction, a read, LISTEN (nothing that writes outside a transaction).
_RETRYABLE = re.compile(r"\s*(BEGIN|SELECT|LISTEN)\b", re.IGNORECASE)


def connect(url: str) -> PgConnection:
    """A configured connection to `url` (the database must exist); StorageError if none."""
    return PgConnection(_connect(url), url)


def _connect(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c lock_timeout={LOCK_TIMEOUT_MS} "
                    f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}",
            # Over TCP: a peer gone silent (a NAT or balancer dropping idle connections) is
            # noticed in about a minute, not the system's two hours; the LISTEN connection
            # then reconnects instead of going deaf.
            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
        )
    except psycopg.Error as e:
        raise StorageError(without_password(describe(e), url)) from None


def describe(error: BaseException) -> str:
    """One line saying what PostgreSQL (or the connection to it) refused."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, psycopg.errors.LockNotAvailable):
        return (f"database is busy (the write lock was still held after "
                f"{LOCK_TIMEOUT_MS / 1000:g} s): {text}")
    if isinstance(error, psycopg.OperationalError):
        return f"PostgreSQL is unavailable: {text}"
    return f"database error: {text}"


register_driver(psycopg.Error, describe)


# -- the schema ------------------------------------------------------------------------------

# Version 1 is the SQLite store's version 4, in PostgreSQL's types. el-ipc's read_by column
# (never read) has no place here.
UPGRADES: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE SEQUENCE messages_id_seq AS BIGINT",
        """CREATE TABLE messages (
            id                BIGINT PRIMARY KEY,
            channel           TEXT NOT NULL,
            sender            TEXT NOT NULL,
            content           TEXT NOT NULL,
            created_at        DOUBLE PRECISION NOT NULL,
            signature         TEXT DEFAULT '',
            signed_timestamp  BIGINT,
            nonce             TEXT
        )""",
        "ALTER SEQUENCE messages_id_seq OWNED BY messages.id",
        "CREATE INDEX messages_channel_id ON messages (channel, id)",
        "CREATE INDEX messages_created_at ON messages (created_at)",
        # Ids in commit order, and a notification at commit (see the module's docstring).
        f"""CREATE FUNCTION elipc_message_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock({WRITE_LOCK_CLASS}, {WRITE_LOCK});
            IF NEW.id IS NULL THEN
                NEW.id := nextval('messages_id_seq');
            END IF;
            PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.channel);
            RETURN NEW;
        END $$""",
        "CREATE TRIGGER messages_inserted BEFORE INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION elipc_message_inserted()",
        """CREATE TABLE watermarks (
            agent    TEXT NOT NULL,
            channel  TEXT NOT NULL,
            last_id  BIGINT DEFAULT 0,
            PRIMARY KEY (agent, channel)
        )""",
        """CREATE TABLE agents (
            name                    TEXT PRIMARY KEY,
            identity                TEXT NOT NULL DEFAULT '',
            public_key              TEXT NOT NULL,
            role                    TEXT NOT NULL DEFAULT 'agent',
            registered_by           TEXT,
            created_at              DOUBLE PRECISION NOT NULL,
            registration_ts         BIGINT NOT NULL DEFAULT 0,
            registration_signature  TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE nonces (
            scope    TEXT NOT NULL,
            nonce    TEXT NOT NULL,
            seen_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (scope, nonce)
        )""",
        "CREATE INDEX nonces_seen_at ON nonces (seen_at)",
        """CREATE TABLE idempotency (
            sender      TEXT NOT NULL,
            key         TEXT NOT NULL,
            message_id  BIGINT NOT NULL,
            seen_at     DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (sender, key)
        )""",
        "CREATE INDEX idempotency_seen_at ON idempotency (seen_at)",
        """CREATE TABLE card_signatures (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            signatures  TEXT NOT NULL,
            signed_by   TEXT NOT NULL,
            signed_at   DOUBLE PRECISION NOT NULL
        )""",
    ),
    2: (
        # The console: text search (search.py) and delivery state read by channel.
        *PG_SEARCH_SCHEMA,
        "CREATE INDEX watermarks_channel ON watermarks (channel, agent)",
    ),
}

CURRENT_VERSION = max(UPGRADES)


def schema_version(db: Any) -> int:
    """The version recorded in elipc_schema (0 for an empty database)."""
    try:
        exists = db.execute("SELECT to_regclass(?)", (SCHEMA_TABLE,)).fetchone()[0]
        if exists is None:
            return 0
        row = db.execute(f"SELECT version FROM {SCHEMA_TABLE}").fetchone()
    except psycopg.Error as e:
        raise StorageError(describe(e)) from None
    return int(row[0]) if row else 0


def migrate(db: PgConnection) -> int:
    """Bring the database to CURRENT_VERSION in one transaction (DDL is transactional in
    PostgreSQL: a half-upgraded database never exists); return the version found. Servers
    starting together take turns on a lock of their own."""
    if schema_version(db) == CURRENT_VERSION:
        return CURRENT_VERSION
    try:
        db.execute("BEGIN")
        try:
            db.execute("SELECT pg_advisory_xact_lock(?, ?)", (WRITE_LOCK_CLASS, MIGRATION_LOCK))
            found = schema_version(db)
            if found > CURRENT_VERSION:
                raise SchemaTooNew(
                    f"the database was written by a newer elipc (schema version {found}; "
                    f"this elipc knows up to {CURRENT_VERSION})")
            db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")
            for version in range(found + 1, CURRENT_VERSION + 1):
                for statement in UPGRADES[version]:
                    db.execute(statement)
            db.execute(f"DELETE FROM {SCHEMA_TABLE}")
            db.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (?)", (CURRENT_VERSION,))
        except BaseException:
            if not db.raw.broken:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except psycopg.Error as e:
        raise StorageError(describe(e)) from None
    return found


def open_database(url: str) -> PgConnection:
    """Connect to `url` and bring its schema up to date."""
    conn = connect(url)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def set_next_id(db: Any) -> None:
    """Move the id sequence past the highest id stored (after copying messages in, inside
    that write transaction); never backwards."""
    db.execute("SELECT setval('messages_id_seq', GREATEST((SELECT COALESCE(MAX(id), 0) "
               "FROM messages), (SELECT last_value FROM messages_id_seq), 1))")
