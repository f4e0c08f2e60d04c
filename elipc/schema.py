"""The database's shape, version by version, keyed on PRAGMA user_version.

Version 0 is el-ipc's file (or a brand-new one): its three tables, created if missing.
Each later version is the list of statements that upgrades the one before it. store.migrate
runs them inside one write transaction, so a half-upgraded file never exists.
"""

from __future__ import annotations

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
}

CURRENT_VERSION = max(UPGRADES)
