"""The database's shape, version by version, keyed on PRAGMA user_version.

Version 0 is el-ipc's file (or a brand-new one): its three tables, created if missing.
Each later version is the list of statements that upgrades the one before it. `migrate`
runs them inside one write transaction, so a half-upgraded file never exists. No Twisted
import; opening.py calls `migrate` on every connection it opens.
"""

from __future__ import annotations

from typing import Any

from elipc.model import SchemaTooNew
from elipc.store.connection import guarded, transaction
from elipc.store.search import FTS_SCHEMA

# el-ipc's tables exactly (BEHAVIOUR.md), so an el-ipc file and a fresh one converge.
BASE_TABLES = (
    """CREATE TABLE IF NOT EXISTS messages (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        channel     TEXT NOT NULL,
        sender      TEXT NOT NULL,
        content     TEXT NOT NULL,
        created_at  REAL NOT NULL,
        read_by     TEXT DEFAULT '',
        signature   TEXT DEFAULT ''
    )""",
    """CREATE TABLE IF NOT EXISTS watermarks (
        agent       TEXT NOT NULL,
        channel     TEXT NOT NULL,
        last_id     INTEGER DEFAULT 0,
        PRIMARY KEY (agent, channel)
    )""",
    """CREATE TABLE IF NOT EXISTS agents (
        name          TEXT PRIMARY KEY,
        identity      TEXT NOT NULL DEFAULT '',
        public_key    TEXT NOT NULL,
        role          TEXT NOT NULL DEFAULT 'agent',
        registered_by TEXT,
        created_at    REAL NOT NULL
    )""",
)

# Columns early el-ipc files lack (el-ipc added them with ALTER TABLE on open).
LEGACY_COLUMNS = (
    ("messages", "signature", "ALTER TABLE messages ADD COLUMN signature TEXT DEFAULT ''"),
)

UPGRADES: dict[int, tuple[str, ...]] = {
    1: (
        # Reads are `WHERE channel = ? AND id > ?`; el-ipc scanned the whole table.
        "CREATE INDEX IF NOT EXISTS messages_channel_id ON messages (channel, id)",
    ),
    2: (
        # elipc/2 signatures cover a timestamp and a nonce; readers need both to verify.
        "ALTER TABLE messages ADD COLUMN signed_timestamp INTEGER",
        "ALTER TABLE messages ADD COLUMN nonce TEXT",
        # The registration an operator signed, so a replayed older one cannot roll a key back.
        "ALTER TABLE agents ADD COLUMN registration_ts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE agents ADD COLUMN registration_signature TEXT NOT NULL DEFAULT ''",
        # Nonces seen inside the replay window, per scope (a sender's sends, an agent's reads).
        """CREATE TABLE IF NOT EXISTS nonces (
            scope    TEXT NOT NULL,
            nonce    TEXT NOT NULL,
            seen_at  REAL NOT NULL,
            PRIMARY KEY (scope, nonce)
        )""",
        "CREATE INDEX IF NOT EXISTS nonces_seen_at ON nonces (seen_at)",
    ),
    3: (
        # Idempotent sends: a retried send with the same key returns the first one's id.
        """CREATE TABLE IF NOT EXISTS idempotency (
            sender      TEXT NOT NULL,
            key         TEXT NOT NULL,
            message_id  INTEGER NOT NULL,
            seen_at     REAL NOT NULL,
            PRIMARY KEY (sender, key)
        )""",
        "CREATE INDEX IF NOT EXISTS idempotency_seen_at ON idempotency (seen_at)",
        # Retention deletes by age without scanning every message.
        "CREATE INDEX IF NOT EXISTS messages_created_at ON messages (created_at)",
    ),
    4: (
        # The agent card's JWS signatures, made by an operator's key outside the server.
        """CREATE TABLE IF NOT EXISTS card_signatures (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            signatures  TEXT NOT NULL,
            signed_by   TEXT NOT NULL,
            signed_at   REAL NOT NULL
        )""",
    ),
    5: (
        # The console: full-text search (search.py keeps FTS5's statements, the backfill
        # included), and delivery state read by channel (the key is (agent, channel)).
        *FTS_SCHEMA,
        "CREATE INDEX IF NOT EXISTS watermarks_channel ON watermarks (channel, agent)",
    ),
}

CURRENT_VERSION = max(UPGRADES)


@guarded
def schema_version(db: Any) -> int:
    """The file's PRAGMA user_version (0 for el-ipc's files and brand-new ones)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


@guarded
def migrate(db: Any) -> int:
    """Bring the file to CURRENT_VERSION in one transaction; return the version found."""
    if schema_version(db) == CURRENT_VERSION:
        return CURRENT_VERSION
    with transaction(db):
        # Re-read under the lock: another process may have migrated while we waited.
        found = schema_version(db)
        if found > CURRENT_VERSION:
            raise SchemaTooNew(
                f"the database was written by a newer elipc (schema version {found}; "
                f"this elipc knows up to {CURRENT_VERSION})"
            )
        if found == 0:
            _create_base(db)
        for version in range(found + 1, CURRENT_VERSION + 1):
            for statement in UPGRADES[version]:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {CURRENT_VERSION}")
    return found


def _create_base(db: Any) -> None:
    for statement in BASE_TABLES:
        db.execute(statement)
    for table, column, statement in LEGACY_COLUMNS:
        if column not in table_columns(db, table):
            db.execute(statement)


@guarded
def table_columns(db: Any, table: str) -> list[str]:
    """The column names of `table`, in order (used by migrations and their tests)."""
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()]


@guarded
def describe_schema(db: Any) -> dict[str, object]:
    """Tables with their columns and indexes with their columns: what "same schema" means."""
    shape: dict[str, object] = {"user_version": schema_version(db)}
    rows = db.execute(
        "SELECT type, name, tbl_name FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    for kind, name, table in rows:
        info = "table_info" if kind == "table" else "index_info"
        columns = db.execute(f"PRAGMA {info}({name})").fetchall()
        if kind == "table":
            shape[f"table {name}"] = [(c[1], c[2], c[3], c[4], c[5]) for c in columns]
        else:
            shape[f"index {name} on {table}"] = [c[2] for c in columns]
    return shape
