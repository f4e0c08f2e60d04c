"""Shared test helpers: temporary folders, el-ipc-shaped databases, and running the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase

# Long enough for a loaded CI machine, short enough that a hung subprocess fails its test.
SUBPROCESS_TIMEOUT_S = 60

# el-ipc's schema, statement for statement (BEHAVIOUR.md), in its oldest form: the signature
# column arrived later through ALTER TABLE, as el-ipc's own open did it.
EL_IPC_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "channel TEXT NOT NULL, sender TEXT NOT NULL, content TEXT NOT NULL, "
    "created_at REAL NOT NULL, read_by TEXT DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS watermarks (agent TEXT NOT NULL, channel TEXT NOT NULL, "
    "last_id INTEGER DEFAULT 0, PRIMARY KEY (agent, channel))",
    "CREATE TABLE IF NOT EXISTS agents (name TEXT PRIMARY KEY, "
    "identity TEXT NOT NULL DEFAULT '', public_key TEXT NOT NULL, "
    "role TEXT NOT NULL DEFAULT 'agent', registered_by TEXT, created_at REAL NOT NULL)",
)
EL_IPC_SIGNATURE_COLUMN = "ALTER TABLE messages ADD COLUMN signature TEXT DEFAULT ''"


def temp_dir(case: SynchronousTestCase) -> str:
    """A fresh folder removed when `case` ends."""
    path = tempfile.mkdtemp(prefix="elipc-test-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def make_el_ipc_database(path: str, with_signature_column: bool = True) -> None:
    """Write a database the way el-ipc does: WAL, its three tables, version 0."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in EL_IPC_SCHEMA:
        conn.execute(statement)
    if with_signature_column:
        conn.execute(EL_IPC_SIGNATURE_COLUMN)
    conn.commit()
    conn.close()


def raw_rows(path: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a read-only query on a separate connection: what is really on disk (`path` may
    be a PostgreSQL URL)."""
    if path.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(path, autocommit=True) as pg_conn:
            statement = query.replace("%", "%%").replace("?", "%s")
            return [tuple(row) for row in pg_conn.execute(statement, params or None).fetchall()]
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def raw_execute(path: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Write to a file behind elipc's back (as el-ipc or a test fixture would)."""
    conn = sqlite3.connect(path)
    try:
        for query, params in statements:
            conn.execute(query, params)
        conn.commit()
    finally:
        conn.close()


class CliResult:
    """What one run of the real `elipc` process did."""

    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.out = completed.stdout
        self.err = completed.stderr

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


def cli_env(db_path: str | None, **extra: str) -> dict[str, str]:
    """The environment for a CLI run against `db_path`, isolated from the caller's IPC_*.

    Processes may cache their bytecode (an environment that forbids it would have every
    process the tests start compile elipc and its dependencies' sources anew)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IPC_") and k != "PYTHONDONTWRITEBYTECODE"}
    if db_path is not None:
        env["IPC_DB_PATH"] = db_path
    env.update(extra)
    return env


def run_with_closed_stdout(argv: list[str], env: dict[str, str]) -> int:
    """Run a process whose stdout is a pipe nobody reads (its reader died); return its status."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(argv, env=env, stdout=write_end, stderr=subprocess.DEVNULL,
                              timeout=SUBPROCESS_TIMEOUT_S).returncode
    finally:
        os.close(write_end)


def run_cli(
    db_path: str | None, *args: str, cwd: str | None = None, stdin: str | None = None,
    **env: str,
) -> CliResult:
    """Run `python -m elipc ARGS` as a real process and wait for it (bounded)."""
    completed = subprocess.run(
        [sys.executable, "-m", "elipc", *args],
        env=cli_env(db_path, **env), cwd=cwd, input=stdin, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    return CliResult(completed)


class SynchronousPool:
    """adbapi's runWithConnection, run at once on one real sqlite3 connection.

    Stands in for the thread pool only (StubTreq tests have no running reactor): the SQL,
    the store functions and the file are the real ones.
    """

    def __init__(self, path: str) -> None:
        from elipc import store

        self.connection = store.open_database(path, check_same_thread=False)
        self.calls = 0

    def runWithConnection(self, function: Any, *args: Any) -> Any:
        from twisted.internet.defer import maybeDeferred

        self.calls += 1
        return maybeDeferred(function, self.connection, *args)

    max = 1  # one connection, as an adbapi pool's cp_max

    def start(self) -> None:
        """Nothing to start: calls run at once."""

    def close(self) -> None:
        self.connection.close()


def new_postgres_database(case: SynchronousTestCase) -> str:
    """A fresh database on this test process's PostgreSQL (tests/pg.py), dropped after
    `case`; its URL."""
    from tests import pg

    if not pg.available():
        raise SkipTest(pg.MISSING)
    server = pg.server()
    url = server.create_database()
    case.addCleanup(server.drop_database, url)
    return url


class Server:
    """The real server (database, waiters, broker, Klein app, site), wired by the same build
    function as `twist elipc`, over a real database file and driven in memory by StubTreq."""

    def __init__(self, case: SynchronousTestCase, *, store: str = "sqlite",
                 **environ: str) -> None:
        from treq.testing import StubTreq
        from twisted.internet.task import Clock

        from elipc.config import Settings
        from elipc.server.service import build

        self.dir = temp_dir(case)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # signatures carry real Unix times
        if store == "postgresql":
            self.path = new_postgres_database(case)
            self.settings = Settings.load({"IPC_DB_URL": self.path, **environ})
        else:
            self.path = os.path.join(self.dir, "ipc.db")
            self.settings = Settings.load({"IPC_DB_PATH": self.path, **environ})
        self.writer, self.reader = SynchronousPool(self.path), SynchronousPool(self.path)
        case.addCleanup(self.writer.close)
        case.addCleanup(self.reader.close)
        # Work the real server sends to a thread (rendering /metrics) runs here, at once.
        wired = build(self.settings, self.clock, self.writer, self.reader, listen=False,
                      offload=maybeDeferred)
        self.database, self.broker, self.site = wired.database, wired.broker, wired.site
        self.service = wired.service
        self.http = StubTreq(self.site.resource)
        # Serve through elipc's own Site (its request and channel classes), not treq's default.
        assert hasattr(self.http._agent, "_serverFactory")
        self.http._agent._serverFactory = self.site
        case.addCleanup(self.broker.stopService)

    def url(self, path: str) -> str:
        return "http://127.0.0.1:9876" + path


class Keyholder:
    """An Ed25519 identity for tests, with the signing a well-behaved client does."""

    def __init__(self, name: str, key_file: str | None = None) -> None:
        from elipc import identity

        self.name = name
        if key_file is None:
            private, self.public = identity.generate_keypair()
            self.key = identity.parse_private_key(private)
        else:  # keys the real CLI wrote
            self.key = identity.load_private_key(key_file)
            self.public = identity.public_pem(self.key.public_key())

    def send_body(self, channel: str, content: str, timestamp: int,
                  nonce: str | None = None) -> dict[str, Any]:
        """A /send body signed the elipc/2 way."""
        from elipc import identity

        nonce = nonce or identity.new_nonce()
        payload = identity.send_payload(channel, self.name, timestamp, nonce, content)
        return {"channel": channel, "sender": self.name, "content": content,
                "timestamp": timestamp, "nonce": nonce,
                "signature": identity.sign(self.key, payload)}

    def read_headers(self, channel: str, timestamp: int,
                     nonce: str | None = None, agent: str | None = None) -> dict[str, list[str]]:
        """X-Elipc-* headers signing a read of `channel` as `agent` (default: self)."""
        from elipc import identity

        nonce = nonce or identity.new_nonce()
        payload = identity.read_payload(channel, agent or self.name, timestamp, nonce)
        return {"X-Elipc-Timestamp": [str(timestamp)], "X-Elipc-Nonce": [nonce],
                "X-Elipc-Signature": [identity.sign(self.key, payload)]}

    def registration(self, name: str, public_key: str, timestamp: int,
                     agent_identity: str = "") -> dict[str, Any]:
        """A /register body for `name`, signed by this (operator) key."""
        from elipc import identity

        payload = identity.register_payload(name, agent_identity, timestamp, public_key)
        return {"name": name, "public_key": public_key, "identity": agent_identity,
                "operator": self.name, "timestamp": timestamp,
                "operator_signature": identity.sign(self.key, payload)}
