"""The server's storage through real adbapi pools and threads on a real file."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.trial.unittest import TestCase

from elipc import operations, store
from elipc.model import DatabaseGone, Rejected, Signed
from elipc.server.database import Database, sqlite_pool
from tests.helpers import raw_rows, temp_dir


class CountingPool:
    """A real adbapi pool that counts writer turns (to see batching happen)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.turns = 0

    def runWithConnection(self, function: Any, *args: Any) -> Any:
        self.turns += 1
        return self.pool.runWithConnection(function, *args)

    def close(self) -> None:
        self.pool.close()


class DatabaseTests(TestCase):
    """Deferred access to the store over adbapi: batching, isolation, external commits."""

    def setUp(self) -> None:
        self.path = os.path.join(temp_dir(self), "ipc.db")
        store.open_database(self.path).close()
        self.writer = CountingPool(sqlite_pool(self.path, 1, reactor))
        self.seen: list[set[str]] = []
        self.db = Database(self.path, self.writer, sqlite_pool(self.path, 2, reactor),
                           on_external_commit=self.seen.append)
        self.writer.pool.start()
        self.addCleanup(self.db.close)

    async def test_concurrent_writes_share_turns(self) -> None:
        """Many sends at once are all stored, in fewer transactions than sends."""
        sends = [self.db.write(store.insert_message, "c", "a", str(i), "", 1.0)
                 for i in range(200)]
        ids = await gatherResults(sends)
        self.assertEqual(sorted(ids), list(range(1, 201)))
        self.assertLess(self.writer.turns, 200)
        self.assertEqual(raw_rows(self.path, "SELECT COUNT(*) FROM messages")[0][0], 200)

    async def test_one_refusal_spares_the_batch(self) -> None:
        """A refused operation fails alone; the others in its transaction are stored."""
        conn = store.open_database(self.path)
        store.add_operator(conn, "op", "PEM", 1.0)
        conn.close()
        good = self.db.write(store.insert_message, "c", "a", "ok", "", 1.0)
        refused = self.db.write(operations.accept_message, "c", "a", "no",
                                Signed(""), 1.0, operations.Policy())
        later = self.db.write(store.insert_message, "c", "a", "ok too", "", 1.0)
        self.assertEqual(await good, 1)
        with self.assertRaises(Rejected):
            await refused
        self.assertEqual(await later, 2)
        self.assertEqual(raw_rows(self.path, "SELECT content FROM messages ORDER BY id"),
                         [("ok",), ("ok too",)])

    async def test_cancelled_queued_write_never_runs(self) -> None:
        """A write cancelled while still queued is not executed."""
        first = self.db.write(store.insert_message, "c", "a", "first", "", 1.0)
        queued = self.db.write(store.insert_message, "c", "a", "cancelled", "", 1.0)
        queued.cancel()
        await first
        with self.assertRaises(CancelledError):
            await queued
        await self.db.drain()
        self.assertEqual(raw_rows(self.path, "SELECT content FROM messages"), [("first",)])

    async def test_external_commits_are_reported(self) -> None:
        """A commit by another process is reported with the channels it wrote to."""
        seen = self.seen
        await self.db.write(store.pending_count, "c", "r")  # first turn: the baseline
        conn = store.open_database(self.path)
        store.insert_message(conn, "cli-1", "x", "y", "", 1.0)
        store.insert_message(conn, "cli-2", "x", "y", "", 1.0)
        conn.close()
        self.db.poll()
        await self.db.drain()
        self.assertEqual(seen, [{"cli-1", "cli-2"}])

    async def test_own_writes_are_not_external(self) -> None:
        """The server's own commits never look like another process's."""
        seen = self.seen
        for _ in range(3):
            await self.db.write(store.insert_message, "c", "a", "x", "", 1.0)
        self.db.poll()
        await self.db.drain()
        self.assertEqual(seen, [])

    async def test_reads_use_reader_pool(self) -> None:
        """Read-only views run on reader connections and see committed writes."""
        await self.db.write(store.insert_message, "c", "a", "x", "", 1.0)
        channels = await self.db.read(store.list_channels)
        self.assertEqual([c["channel"] for c in channels], ["c"])


class DeletedFileTests(TestCase):
    """A database file deleted or replaced under a running server: nothing more is
    acknowledged, nothing is read from the wrong file, and no new file appears."""

    def setUp(self) -> None:
        self.path = os.path.join(temp_dir(self), "ipc.db")
        store.open_database(self.path).close()
        self.db = Database(self.path, sqlite_pool(self.path, 1, reactor),
                           sqlite_pool(self.path, 2, reactor), on_external_commit=list)
        self.addCleanup(self.db.close)

    async def test_connections_open_at_start(self) -> None:
        """Starting opens every pooled connection, so none is opened after a deletion."""
        await self.db.start()
        self.assertEqual(len(self.db._writer.connections), 1)
        self.assertEqual(len(self.db._readers.connections), 2)

    async def test_deleted_file_refuses_writes_and_reads(self) -> None:
        """After the file is unlinked, writes and reads fail with DatabaseGone (a 503) and the
        path stays empty: no pool creates a file."""
        await self.db.start()
        self.assertEqual(await self.db.write(store.insert_message, "c", "a", "x", "", 1.0), 1)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.unlink(self.path + suffix)
        with self.assertRaises(DatabaseGone):
            await self.db.write(store.insert_message, "c", "a", "lost?", "", 1.0)
        with self.assertRaises(DatabaseGone):
            await self.db.read(store.list_channels)
        self.assertFalse(os.path.exists(self.path))

    async def test_replaced_file_refuses_writes(self) -> None:
        """A different file put at the path is not written to either."""
        await self.db.start()
        os.rename(self.path, self.path + ".moved")
        store.open_database(self.path).close()
        with self.assertRaises(DatabaseGone):
            await self.db.write(store.insert_message, "c", "a", "x", "", 1.0)
        self.assertEqual(raw_rows(self.path, "SELECT COUNT(*) FROM messages"), [(0,)])

    def test_pools_never_create_a_file(self) -> None:
        """A pool's connection to a missing path fails instead of creating a 0644 file."""
        missing = os.path.join(temp_dir(self), "none.db")
        pool = sqlite_pool(missing, 1, reactor)
        self.addCleanup(pool.close)
        pool.start()
        return self.assertFailure(pool.runWithConnection(store.list_channels),
                                  store.StorageError, sqlite3.OperationalError).addCallback(
            lambda _: self.assertFalse(os.path.exists(missing)))
