"""The storage module on real SQLite files and a real PostgreSQL: one contract (watermarks,
atomic reads, the directory, concurrent readers) for both stores, then each store's own
files, schema and migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from elipc import store
from elipc.store import schema
from elipc.model import Message
from tests.stores import PostgresStore, SQLiteStore, StoreCase
from tests.helpers import (
    SUBPROCESS_TIMEOUT_S,
    make_el_ipc_database,
    raw_execute,
    raw_rows,
    temp_dir,
)


def read_all(db: Any, channel: str, agent: str, deliver: Any = None,
             limit: int = 10_000) -> list[Message]:
    """`agent`'s unread messages on `channel` (up to `limit`), moving its watermark past
    them: one store.unread_page."""
    return store.unread_page(db, channel, agent, limit, deliver).messages


class Contract:
    """What every store does; mixed with SQLiteStore or PostgresStore and StoreCase."""

    db: Any
    location: str
    dialect: str
    assertEqual: Any
    assertRaises: Any
    assertIsNone: Any
    assertIsInstance: Any
    assertTrue: Any
    assertFalse: Any
    open: Any
    raw_rows: Any

    def send(self, channel: str, sender: str = "a", content: str = "hi") -> int:
        return store.insert_message(self.db, channel, sender, content, "", 1000.0)

    def ids(self, messages: list[Message]) -> list[int]:
        return [m.id for m in messages]


class WatermarkContract(Contract):
    """Each agent reads each message of each channel exactly once, oldest first."""

    def test_read_returns_unread_then_nothing(self) -> None:
        """A read returns what is unread in id order; the next read returns nothing."""
        first, second = self.send("c"), self.send("c")
        self.assertEqual(self.ids(read_all(self.db, "c", "x")), [first, second])
        self.assertEqual(read_all(self.db, "c", "x"), [])
        self.assertEqual(store.watermark(self.db, "c", "x"), second)

    def test_watermarks_are_per_agent(self) -> None:
        """Another agent still sees every message one agent has read."""
        ids = [self.send("c") for _ in range(3)]
        read_all(self.db, "c", "x")
        self.assertEqual(self.ids(read_all(self.db, "c", "y")), ids)

    def test_watermarks_are_per_channel(self) -> None:
        """Reading one channel moves nothing on another."""
        on_c, on_d = self.send("c"), self.send("d")
        self.assertEqual(self.ids(read_all(self.db, "c", "x")), [on_c])
        self.assertEqual(self.ids(read_all(self.db, "d", "x")), [on_d])
        self.assertEqual(store.pending_count(self.db, "c", "x"), 0)

    def test_only_newer_messages_after_a_read(self) -> None:
        """After a read, only messages stored later are returned."""
        self.send("c")
        read_all(self.db, "c", "x")
        later = self.send("c")
        self.assertEqual(self.ids(read_all(self.db, "c", "x")), [later])

    def test_failed_delivery_moves_nothing(self) -> None:
        """If delivering the messages fails, the watermark stays and they are read again."""
        sent = self.send("c")

        def broken_pipe(messages: list[Message]) -> None:
            raise BrokenPipeError()

        self.assertRaises(BrokenPipeError, read_all, self.db, "c", "x", broken_pipe)
        self.assertEqual(store.watermark(self.db, "c", "x"), 0)
        self.assertEqual(self.ids(read_all(self.db, "c", "x")), [sent])

    def test_watermark_never_moves_backwards(self) -> None:
        """A stale higher watermark written elsewhere is kept, not lowered, by a later read."""
        self.send("c")
        self.db.execute("INSERT INTO watermarks (agent, channel, last_id) VALUES ('x', 'c', 99)")
        self.assertEqual(read_all(self.db, "c", "x"), [])
        self.assertEqual(store.watermark(self.db, "c", "x"), 99)

    def test_message_shape(self) -> None:
        """Messages render as el-ipc's JSON, with `signed` only when a signature is stored."""
        store.insert_message(self.db, "c", "a", "plain", "", 5.5)
        store.insert_message(self.db, "c", "b", "sig", "c2ln", 6.5)
        shapes = [m.as_json() for m in read_all(self.db, "c", "x")]
        self.assertEqual(shapes[0], {"id": 1, "sender": "a", "content": "plain", "timestamp": 5.5})
        self.assertEqual(shapes[1]["signed"], True)

    def test_limit(self) -> None:
        """A limited read returns the oldest unread and leaves the rest unread."""
        ids = [self.send("c") for _ in range(5)]
        self.assertEqual(self.ids(read_all(self.db, "c", "x", limit=2)), ids[:2])
        self.assertEqual(store.pending_count(self.db, "c", "x"), 3)

    def test_batch_insert_is_atomic(self) -> None:
        """A batch either stores every message or, on failure, none."""
        with self.assertRaises(store.StorageError):
            store.insert_messages(self.db, [("c", "a", "ok", "", None, None),
                                           ("c", "a", None, "", None, None)], 1.0)
        self.assertEqual(store.list_channels(self.db), [])

    def test_channels(self) -> None:
        """Channels list counts and last message time, most recently active first."""
        store.insert_message(self.db, "old", "a", "x", "", 1.0)
        store.insert_message(self.db, "new", "a", "x", "", 3.0)
        store.insert_message(self.db, "new", "a", "y", "", 4.0)
        self.assertEqual(store.list_channels(self.db), [
            {"channel": "new", "count": 2, "last_message": 4.0},
            {"channel": "old", "count": 1, "last_message": 1.0},
        ])


class DirectoryContract(Contract):
    """Operators and agents: secure mode, registration rules."""

    def test_secure_mode_starts_with_first_operator(self) -> None:
        """Open mode until an operator exists; then secure mode."""
        self.assertFalse(store.is_secure(self.db))
        store.add_operator(self.db, "op", "PEM", 1.0)
        self.assertTrue(store.is_secure(self.db))
        self.assertEqual(store.first_operator(self.db).name, "op")

    def test_operator_name_taken(self) -> None:
        """Seeding a name that exists is a Conflict and changes nothing."""
        store.add_operator(self.db, "op", "PEM1", 1.0)
        self.assertRaises(store.Conflict, store.add_operator, self.db, "op", "PEM2", 2.0)
        self.assertEqual(store.get_agent(self.db, "op").public_key, "PEM1")

    def test_failed_key_delivery_stores_no_operator(self) -> None:
        """If handing out the private key fails, the operator is not stored."""
        def fail() -> None:
            raise OSError("disk full")

        self.assertRaises(OSError, store.add_operator, self.db, "op", "PEM", 1.0, fail)
        self.assertIsNone(store.get_agent(self.db, "op"))

    def test_register_and_replace(self) -> None:
        """An operator registers an agent; registering again replaces its key."""
        store.add_operator(self.db, "op", "OPKEY", 1.0)
        store.register_agent(self.db, "bot", "uuid", "K1", "op", 2.0)
        store.register_agent(self.db, "bot", "uuid", "K2", "op", 3.0)
        bot = store.get_agent(self.db, "bot")
        self.assertEqual((bot.public_key, bot.role, bot.registered_by), ("K2", "agent", "op"))
        self.assertEqual([a.name for a in store.list_agents(self.db)], ["op", "bot"])

    def test_register_needs_operator_and_spares_operators(self) -> None:
        """Only an operator registers, and an operator's entry is never overwritten."""
        store.add_operator(self.db, "op", "OPKEY", 1.0)
        store.register_agent(self.db, "bot", "", "K", "op", 2.0)
        self.assertRaises(store.Conflict, store.register_agent, self.db, "x", "", "K", "bot", 3)
        self.assertRaises(store.Conflict, store.register_agent, self.db, "op", "", "K", "op", 3)
        self.assertEqual(store.get_agent(self.db, "op").role, "operator")


class ConcurrentReaderContract(Contract):
    """Readers for the same agent on separate connections never share or skip a message."""

    def test_no_duplicate_no_gap(self) -> None:
        """Four readers racing one writer together receive every message exactly once."""
        total, got, errors = 400, [], []
        done = threading.Event()

        def reader() -> None:
            conn = store.open_database(self.location, check_same_thread=False)
            try:
                while not done.is_set() or store.pending_count(conn, "c", "x"):
                    got.extend(m.id for m in read_all(conn, "c", "x"))
            except Exception as e:  # surfaced below, not swallowed
                errors.append(e)
            finally:
                conn.close()

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        sent = [self.send("c", content=str(i)) for i in range(total)]
        done.set()
        for t in threads:
            t.join(SUBPROCESS_TIMEOUT_S)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(got), sent)
        self.assertEqual(len(got), len(set(got)))


class BatchContract(Contract):
    """A batch (the server's writer turn) commits once; a failing operation in it, whether
    its own refusal or a failed statement, leaves no trace and spares the others."""

    def test_failures_spare_the_rest(self) -> None:
        def refused(db: Any) -> None:
            store.insert_message(db, "c", "a", "undone", "", 1.0)
            raise store.Conflict("no")

        def broken(db: Any) -> None:
            store.insert_message(db, "c", "a", "undone too", "", 1.0)
            db.execute("INSERT INTO no_such_table VALUES (1)")

        def send(content: str) -> Any:
            return lambda db: store.insert_message(db, "c", "a", content, "", 1.0)

        outcomes = store.run_batch(self.db, [send("one"), refused, broken, send("two"),
                                             refused])
        self.assertEqual([ok for ok, _ in outcomes], [True, False, False, True, False])
        self.assertIsInstance(outcomes[1][1], store.Conflict)
        self.assertIsInstance(outcomes[2][1], store.StorageError)
        self.assertEqual([m.content for m in store.history(self.db, "c", 0, 10)],
                         ["one", "two"])
        self.assertFalse(self.db.in_transaction)
        self.assertEqual(store.run_batch(self.db, []), [])

    def test_nested_transactions_undo_together(self) -> None:
        """A refusal deep inside nested store calls undoes every write of its operation."""
        def deep(db: Any) -> None:
            with store.transaction(db):
                store.insert_message(db, "c", "a", "outer", "", 1.0)
                with store.transaction(db):
                    store.insert_message(db, "c", "a", "inner", "", 1.0)
                    raise store.Conflict("no")

        self.assertRaises(store.Conflict, deep, self.db)
        self.assertEqual(store.history(self.db, "c", 0, 10), [])
        outcomes = store.run_batch(self.db, [deep])
        self.assertFalse(outcomes[0][0])
        self.assertEqual(store.history(self.db, "c", 0, 10), [])


class WatermarkSQLiteTests(SQLiteStore, WatermarkContract, StoreCase):
    pass


class WatermarkPostgresTests(PostgresStore, WatermarkContract, StoreCase):
    pass


class DirectorySQLiteTests(SQLiteStore, DirectoryContract, StoreCase):
    pass


class DirectoryPostgresTests(PostgresStore, DirectoryContract, StoreCase):
    pass


class BatchSQLiteTests(SQLiteStore, BatchContract, StoreCase):
    pass


class BatchPostgresTests(PostgresStore, BatchContract, StoreCase):
    pass


class ConcurrentReaderSQLiteTests(SQLiteStore, ConcurrentReaderContract, StoreCase):
    pass


class ConcurrentReaderPostgresTests(PostgresStore, ConcurrentReaderContract, StoreCase):
    pass


class FileTests(SynchronousTestCase):
    """What opening does to the file: permissions, WAL, and refusing bad files."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.path = os.path.join(self.dir, "ipc.db")

    def test_new_file_is_private_and_wal(self) -> None:
        """A new database file is mode 0600 and in WAL mode with synchronous=FULL."""
        conn = store.open_database(self.path)
        self.addCleanup(conn.close)
        store.insert_message(conn, "c", "a", "x", "", 1.0)
        for name in ("ipc.db", "ipc.db-wal"):
            mode = stat.S_IMODE(os.stat(os.path.join(self.dir, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)

    def test_corrupt_file(self) -> None:
        """A file that is not SQLite is a StorageError that says so."""
        with open(self.path, "wb") as f:
            f.write(b"this is not a database at all" * 100)
        with self.assertRaises(store.StorageError) as caught:
            store.open_database(self.path)
        self.assertIn("not an SQLite database", str(caught.exception))

    def test_missing_folder(self) -> None:
        """A path in a folder that does not exist is a StorageError naming the path."""
        path = os.path.join(self.dir, "nope", "ipc.db")
        with self.assertRaises(store.StorageError) as caught:
            store.open_database(path)
        self.assertIn(path, str(caught.exception))

    def test_newer_schema_refused(self) -> None:
        """A file from a newer elipc is refused, untouched."""
        store.open_database(self.path).close()
        raw_execute(self.path, (f"PRAGMA user_version = {schema.CURRENT_VERSION + 1}", ()))
        with self.assertRaises(store.SchemaTooNew) as caught:
            store.open_database(self.path)
        self.assertIn("newer elipc", str(caught.exception))
        self.assertEqual(raw_rows(self.path, "PRAGMA user_version")[0][0],
                         schema.CURRENT_VERSION + 1)

    def test_read_only_file(self) -> None:
        """Writing to a database the user cannot write is a StorageError, not a crash."""
        if os.geteuid() == 0:
            # root ignores file modes; make the file immutable to SQLite instead.
            conn = store.open_database(self.path)
            conn.close()
            ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            self.addCleanup(ro.close)
            with self.assertRaises(store.StorageError):
                store.insert_message(ro, "c", "a", "x", "", 1.0)
            return
        store.open_database(self.path).close()
        os.chmod(self.path, 0o400)
        with self.assertRaises(store.StorageError):
            conn = store.open_database(self.path)
            store.insert_message(conn, "c", "a", "x", "", 1.0)


class MigrationTests(SynchronousTestCase):
    """An el-ipc database opens in place, keeps everything, and ends up like a fresh one."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)

    def el_ipc_file(self, with_signature_column: bool) -> str:
        path = os.path.join(self.dir, f"el-ipc-{with_signature_column}.db")
        make_el_ipc_database(path, with_signature_column)
        signature_column = ", signature" if with_signature_column else ""
        signature_value = ", 'c2lnbmVk'" if with_signature_column else ""
        raw_execute(
            path,
            (f"INSERT INTO messages (channel, sender, content, created_at{signature_column}) "
             f"VALUES ('c', 'herald', 'one', 1.5{signature_value})", ()),
            ("INSERT INTO messages (channel, sender, content, created_at) "
             "VALUES ('c', 'bob', 'two', 2.5)", ()),
            ("INSERT INTO watermarks VALUES ('reader', 'c', 1)", ()),
            ("INSERT INTO agents VALUES ('op', '', 'OPPEM', 'operator', NULL, 1.0)", ()),
            ("INSERT INTO agents VALUES ('herald', 'u-1', 'HPEM', 'agent', 'op', 2.0)", ()),
        )
        return path

    def fresh_schema(self) -> dict[str, object]:
        conn = store.open_database(os.path.join(self.dir, "fresh.db"))
        self.addCleanup(conn.close)
        return schema.describe_schema(conn)

    def check_upgrade(self, with_signature_column: bool) -> None:
        path = self.el_ipc_file(with_signature_column)
        conn = store.open_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(schema.describe_schema(conn), self.fresh_schema())
        self.assertEqual([m.content for m in read_all(conn, "c", "reader")], ["two"])
        self.assertEqual(len(read_all(conn, "c", "newcomer")), 2)
        herald = store.get_agent(conn, "herald")
        self.assertEqual((herald.identity, herald.public_key, herald.registered_by),
                         ("u-1", "HPEM", "op"))
        self.assertTrue(store.is_secure(conn))

    def test_el_ipc_file_upgrades_to_fresh_schema(self) -> None:
        """el-ipc's file keeps messages, watermarks, operators and agents and matches a new one."""
        self.check_upgrade(with_signature_column=True)

    def test_oldest_el_ipc_file_gains_signature_column(self) -> None:
        """An el-ipc file from before signatures gains the column and upgrades the same."""
        self.check_upgrade(with_signature_column=False)

    def test_version_1_file_upgrades(self) -> None:
        """A file at schema version 1 gains version 2's columns and tables, keeping its data."""
        path = os.path.join(self.dir, "v1.db")
        conn = sqlite3.connect(path)
        for statement in (*schema.BASE_TABLES, *schema.UPGRADES[1], "PRAGMA user_version = 1"):
            conn.execute(statement)
        conn.execute("INSERT INTO messages (channel, sender, content, created_at) "
                     "VALUES ('c', 'a', 'kept', 1.0)")
        conn.commit()
        conn.close()
        upgraded = store.open_database(path)
        self.addCleanup(upgraded.close)
        self.assertEqual(schema.describe_schema(upgraded), self.fresh_schema())
        (message,) = read_all(upgraded, "c", "r")
        self.assertEqual((message.content, message.nonce), ("kept", None))

    def test_signed_flag_survives(self) -> None:
        """A message el-ipc stored signed still reads as signed."""
        conn = store.open_database(self.el_ipc_file(True))
        self.addCleanup(conn.close)
        self.assertEqual([m.as_json().get("signed") for m in
                          read_all(conn, "c", "x")], [True, None])

    def test_upgrade_sets_version_and_index(self) -> None:
        """After opening, the file is at the current version and reads use the channel index."""
        conn = store.open_database(self.el_ipc_file(True))
        self.addCleanup(conn.close)
        self.assertEqual(schema.schema_version(conn), schema.CURRENT_VERSION)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE channel = 'c' AND id > 0"
        ).fetchall()
        self.assertIn("messages_channel_id", " ".join(str(row) for row in plan))

    def test_eight_processes_open_a_new_file_at_once(self) -> None:
        """Eight processes creating the same brand-new file at one instant all succeed.

        They race on five fresh files in turn, since one race may by chance not collide.
        """
        rounds = 5
        paths = [os.path.join(self.dir, f"race{i}.db") for i in range(rounds)]
        start_at = time.time() + 1.0
        script = (
            "import sys, time\n"
            "from elipc import store\n"
            "for i, path in enumerate(sys.argv[1:]):\n"
            f"    time.sleep(max(0, {start_at!r} + 0.2 * i - time.time()))\n"
            "    conn = store.open_database(path)\n"
            "    store.insert_message(conn, 'c', 'p', 'hello', '', 1.0)\n"
            "    store.unread_page(conn, 'c', 'p', 10_000)\n"
            "    conn.close()\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", script, *paths],
                                  stderr=subprocess.PIPE, text=True) for _ in range(8)]
        failures = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            finally:
                proc.kill()
            if proc.returncode:
                failures.append(err)
        self.assertEqual(failures, [])
        for path in paths:
            self.assertEqual(raw_rows(path, "SELECT COUNT(*) FROM messages")[0][0], 8)
            self.assertEqual(raw_rows(path, "PRAGMA user_version")[0][0], schema.CURRENT_VERSION)


def refuse_commits(conn: sqlite3.Connection) -> None:
    """Make SQLite itself refuse COMMIT on `conn`, as a full disk does at commit time."""
    def authorize(action: int, arg1: str | None, *rest: object) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    conn.set_authorizer(authorize)


class BoundaryTests(SQLiteStore, StoreCase):
    """Every SQLite error, at any statement including COMMIT, leaves the store as
    StorageError, and leaves nothing half-written."""

    def test_commit_refused(self) -> None:
        """A COMMIT that fails is a StorageError, and the transaction's writes are gone."""
        refuse_commits(self.db)
        with self.assertRaises(store.StorageError):
            with store.transaction(self.db):
                store.insert_message(self.db, "c", "a", "lost", "", 1.0)
        self.assertFalse(self.db.in_transaction)
        self.assertEqual(raw_rows(self.location, "SELECT COUNT(*) FROM messages"), [(0,)])

    def test_compositions_too(self) -> None:
        """A composition outside the store (accepting a message) meets the same boundary."""
        from elipc import operations
        from elipc.model import UNSIGNED

        refuse_commits(self.db)
        with self.assertRaises(store.StorageError):
            operations.accept_message(self.db, "c", "a", "x", UNSIGNED, 1.0,
                                      operations.Policy())
        with self.assertRaises(store.StorageError):
            store.unread_page(self.db, "c", "r", 10)

    def test_statement_error_inside(self) -> None:
        """A failing statement inside a transaction is a StorageError after the rollback."""
        with self.assertRaises(store.StorageError):
            with store.transaction(self.db):
                store.insert_message(self.db, "c", "a", "undone", "", 1.0)
                self.db.execute("INSERT INTO no_such_table VALUES (1)")
        self.assertEqual(raw_rows(self.location, "SELECT COUNT(*) FROM messages"), [(0,)])
