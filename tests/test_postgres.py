"""PostgreSQL's own rules, on a real server the tests start (tests/pg.py): ids handed out in
commit order, notifications, reconnection, and `elipc migrate` between the two stores."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from elipc import store
from elipc.cli import main
from elipc.model import InvalidInput
from elipc.server.notify import NotifyFeed
from elipc.server.waiters import Waiters
from tests import pg
from tests.helpers import SUBPROCESS_TIMEOUT_S, new_postgres_database, temp_dir


def waiting_on_lock(url: str, pid: int) -> bool:
    """Whether backend `pid` is blocked waiting for a lock."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                           (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


class OrderingTests(SynchronousTestCase):
    """The ordering trap: a sequence hands out ids in one order, transactions commit in
    another. elipc's write lock makes a reader unable to pass an id still in flight."""

    def setUp(self) -> None:
        self.url = new_postgres_database(self)
        self.first = self.open()

    def open(self) -> Any:
        conn = store.open_database(self.url)
        self.addCleanup(conn.close)
        return conn

    def test_held_send_blocks_later_ones_and_readers_never_skip_it(self) -> None:
        """While one send's transaction is open, a later send waits for it, and so does a
        read that would move a watermark; a read that moves nothing sees neither. Once the
        first commits, the reader gets both, in id order: nobody moves past an id still in
        flight."""
        with store.transaction(self.first):
            held = store.insert_message(self.first, "c", "slow", "first", "", 1.0)
            other, reader = self.open(), self.open()
            later: list[int] = []
            pages: list[Any] = []
            sender = threading.Thread(target=lambda: later.append(
                store.insert_message(other, "c", "fast", "second", "", 2.0)))
            receiver = threading.Thread(target=lambda: pages.append(
                store.unread_page(reader, "c", "r", 10)))
            for thread, conn in ((sender, other), (receiver, reader)):
                thread.start()
                self.addCleanup(thread.join, SUBPROCESS_TIMEOUT_S)
                self.wait_for_lock(conn.backend_pid)
            self.assertEqual(store.history(self.open(), "c", 0, 10), [])
            self.assertEqual((later, pages), ([], []))
        sender.join(SUBPROCESS_TIMEOUT_S)
        receiver.join(SUBPROCESS_TIMEOUT_S)
        self.assertGreater(later[0], held)
        got = list(pages[0].messages) + list(store.unread_page(reader, "c", "r", 10).messages)
        self.assertEqual([(m.id, m.content) for m in got],
                         [(held, "first"), (later[0], "second")])

    def wait_for_lock(self, pid: int) -> None:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not waiting_on_lock(self.url, pid):
            self.assertLess(time.monotonic(), deadline, f"backend {pid} never waited")
            time.sleep(0.01)

    def test_ids_follow_commit_order_under_contention(self) -> None:
        """Eight writers and a reader racing: the reader's pages, joined, are exactly the ids
        committed, ascending, none skipped."""
        sent: list[int] = []
        got: list[int] = []
        done = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            conn = store.open_database(self.url)
            try:
                for n in range(50):
                    sent.append(store.insert_message(conn, "c", "w", str(n), "", 1.0))
            except BaseException as e:
                errors.append(e)
            finally:
                conn.close()

        def reader() -> None:
            conn = store.open_database(self.url)
            try:
                while not done.is_set() or store.pending_count(conn, "c", "r"):
                    got.extend(m.id for m in store.unread_page(conn, "c", "r", 7).messages)
            except BaseException as e:
                errors.append(e)
            finally:
                conn.close()

        threads = [threading.Thread(target=writer) for _ in range(8)]
        follower = threading.Thread(target=reader)
        follower.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(SUBPROCESS_TIMEOUT_S)
        done.set()
        follower.join(SUBPROCESS_TIMEOUT_S)
        self.assertEqual(errors, [])
        self.assertEqual(got, sorted(sent))

    def test_nul_content_is_bad_input(self) -> None:
        """PostgreSQL's text cannot hold U+0000: a 400-class refusal, not a storage error."""
        self.assertRaises(InvalidInput, store.insert_message, self.first, "c", "a",
                          "nul\x00here", "", 1.0)

    def test_schema_is_versioned(self) -> None:
        """A second open migrates nothing; a database from a newer elipc is refused."""
        from elipc.store import postgres

        self.assertEqual(postgres.migrate(self.first), postgres.CURRENT_VERSION)
        self.first.execute("UPDATE elipc_schema SET version = 99")
        self.assertRaises(store.SchemaTooNew, store.open_database, self.url)


class NotifyFeedTests(TestCase):
    """The server's LISTEN connection, read by the reactor: commits by other connections
    wake the waiters of their channels; after the database restarts, it listens again."""

    timeout = SUBPROCESS_TIMEOUT_S

    def setUp(self) -> None:
        self.url = new_postgres_database(self)
        self.waiters = Waiters(reactor)
        self.feed = NotifyFeed(self.url, self.waiters.wake_channels, reactor)
        self.feed.start()
        self.addCleanup(self.feed.stop)
        self.writer = store.open_database(self.url)
        self.addCleanup(self.writer.close)

    def send(self, channel: str) -> Deferred[int]:
        from twisted.internet.threads import deferToThread

        return deferToThread(store.insert_message, self.writer, channel, "a", "x", "", 1.0)

    @inlineCallbacks
    def test_commit_wakes_its_channel_only(self) -> Any:
        """A message on c wakes c's waiter, not d's."""
        yield self.feed.connected
        on_c, on_d = self.waiters.wait("c", None), self.waiters.wait("d", None)
        yield self.send("c")
        self.assertTrue((yield on_c))
        self.assertNoResult(on_d)
        on_d.addErrback(lambda failure: None)
        on_d.cancel()

    @inlineCallbacks
    def test_own_writer_is_ignored(self) -> Any:
        """Notifications from the server's own writer are skipped (it woke its waiters)."""
        self.feed._own = lambda pid: pid == self.writer.backend_pid
        yield self.feed.connected
        waiting = self.waiters.wait("c", None)
        yield self.send("c")
        other = store.open_database(self.url)
        self.addCleanup(other.close)
        yield self.deferToThread(store.insert_message, other, "d", "a", "x", "", 1.0)
        self.assertNoResult(waiting)
        waiting.addErrback(lambda failure: None)
        waiting.cancel()

    def deferToThread(self, *args: Any) -> Deferred[Any]:
        from twisted.internet.threads import deferToThread

        return deferToThread(*args)

    @inlineCallbacks
    def test_reconnects_after_database_restart(self) -> Any:
        """The server restarts: the feed reconnects, wakes everyone once (commits may have
        been missed), and hears the commits that follow."""
        yield self.feed.connected
        server = pg.server()
        before = self.waiters.wait("c", None)
        yield self.deferToThread(server.stop)
        yield self.deferToThread(server.start)
        self.assertTrue((yield before))  # woken on reconnecting
        self.writer = store.open_database(self.url)
        self.addCleanup(self.writer.close)
        after = self.waiters.wait("c", None)
        yield self.send("c")
        self.assertTrue((yield after))


class MigrateTests(SynchronousTestCase):
    """`elipc migrate` copies every table, keeps ids, refuses a non-empty target unless
    told, and can be run again."""

    def setUp(self) -> None:
        self.sqlite = os.path.join(temp_dir(self), "ipc.db")
        self.url = new_postgres_database(self)
        source = store.open_database(self.sqlite)
        self.addCleanup(source.close)
        for n in range(7):
            store.insert_message(source, "c" if n % 2 else "d", "a", f"m{n}", "", 10.0 + n)
        store.delete_messages_before(source, 11.5, 10)  # ids 1, 2 gone: ids start at 3
        store.unread_page(source, "c", "r", 2)
        store.add_operator(source, "op", "OPKEY", 1.0)
        store.register_agent(source, "bot", "id", "K", "op", 2.0, 5, "sig")
        store.remember_nonce(source, "send:a", "n0nce-123", 3.0)
        store.remember_idempotency(source, "a", "key-1", 3, 3.0)
        store.save_card_signatures(source, [{"protected": "p", "signature": "s"}], "op", 4.0)
        self.source = source

    def migrate(self, *extra: str) -> tuple[int, Any, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["migrate", "--from", self.sqlite, "--to", self.url, *extra],
                     environ={}, stdout=out, stderr=err)
        return code, json.loads(out.getvalue()) if out.getvalue() else None, err.getvalue()

    def test_copies_everything_with_ids(self) -> None:
        """Messages (ids kept), watermarks, agents, nonces, idempotency keys, the card."""
        code, report, _ = self.migrate()
        self.assertEqual(code, 0)
        self.assertEqual(report["copied"], {"messages": 5, "agents": 2, "watermarks": 1,
                                            "nonces": 1, "idempotency": 1,
                                            "card_signatures": 1})
        target = store.open_database(self.url)
        self.addCleanup(target.close)
        self.assertEqual(store.history(target, "c", 0, 10),
                         store.history(self.source, "c", 0, 10))
        self.assertEqual(store.watermark(target, "c", "r"), store.watermark(self.source, "c", "r"))
        self.assertEqual(store.list_agents(target), store.list_agents(self.source))
        self.assertFalse(store.remember_nonce(target, "send:a", "n0nce-123", 5.0))
        self.assertEqual(store.idempotent_id(target, "a", "key-1"), 3)
        self.assertEqual(store.card_signatures(target), store.card_signatures(self.source))
        # New sends continue after the copied ids.
        self.assertEqual(store.insert_message(target, "c", "a", "new", "", 20.0), 8)

    def test_refuses_non_empty_target_then_reruns_safely(self) -> None:
        """A second run is refused (one line, exit 1); with --force it adds nothing twice,
        and a message added to the source since is copied."""
        self.migrate()
        code, report, err = self.migrate()
        self.assertEqual((code, report), (1, None))
        self.assertIn("already holds data", err)
        self.assertEqual(err.count("\n"), 1)
        store.insert_message(self.source, "c", "a", "late", "", 30.0)
        code, report, _ = self.migrate("--force")
        self.assertEqual(code, 0)
        self.assertEqual(report["copied"]["messages"], 1)
        self.assertEqual(report["already_there"]["messages"], 5)
        self.assertEqual(report["copied"]["agents"], 0)

    def test_back_to_sqlite(self) -> None:
        """PostgreSQL to a new SQLite file gives the same messages."""
        self.migrate()
        back = os.path.join(temp_dir(self), "back.db")
        out = io.StringIO()
        self.assertEqual(main(["migrate", "--from", self.url, "--to", back], environ={},
                              stdout=out, stderr=io.StringIO()), 0)
        copy = store.open_database(back)
        self.addCleanup(copy.close)
        self.assertEqual(store.history(copy, "d", 0, 10), store.history(self.source, "d", 0, 10))

    def test_target_written_to_is_refused_not_merged(self) -> None:
        """A target whose own messages hold ids the source uses: refused (exit 1, one
        line), its message kept, none of the source's dropped silently."""
        target = store.open_database(self.url)
        self.addCleanup(target.close)
        for _ in range(3):  # ids 1 to 3; the source's start at 3
            store.insert_message(target, "c", "b", "already here", "", 50.0)
        code, report, err = self.migrate("--force")
        self.assertEqual((code, report), (1, None))
        self.assertIn("message 3 is not the source's", err)
        self.assertEqual([m.content for m in store.history(target, "c", 0, 10)],
                         ["already here"] * 3)

    def test_ids_never_go_backwards(self) -> None:
        """Copying into a target whose messages were all pruned keeps its ids moving up
        (a reader's watermark there must not pass new messages)."""
        target = store.open_database(self.url)
        self.addCleanup(target.close)
        for _ in range(20):
            store.insert_message(target, "c", "b", "old", "", 1.0)
        store.unread_page(target, "c", "r", 100)
        store.delete_messages_before(target, 2.0, 100)
        self.source.execute("DELETE FROM messages")
        self.assertEqual(self.migrate("--force")[0], 0)
        new = store.insert_message(target, "c", "b", "new", "", 60.0)
        self.assertGreater(new, 20)
        self.assertEqual([m.content for m in store.unread_page(target, "c", "r", 10).messages],
                         ["new"])

    def test_nul_is_named(self) -> None:
        """A message PostgreSQL cannot store stops the copy with its id, nothing half-done."""
        store.insert_message(self.source, "c", "a", "bad\x00byte", "", 40.0)
        code, _, err = self.migrate()
        self.assertEqual(code, 1)
        self.assertIn("message 8 holds a NUL", err)

    def test_missing_source(self) -> None:
        """A source file that does not exist is an error, not a new empty database."""
        out, err = io.StringIO(), io.StringIO()
        code = main(["migrate", "--from", "/nonexistent/x.db", "--to", self.url], environ={},
                    stdout=out, stderr=err)
        self.assertEqual(code, 1)
        self.assertIn("no database at", err.getvalue())


class ConnectionLossTests(SynchronousTestCase):
    """A connection lost inside a transaction never reconnects under it: the batch fails
    whole (nothing it reported is acknowledged); outside a transaction, a connection that
    died idle is replaced for the statement that finds it dead."""

    def setUp(self) -> None:
        import psycopg

        self.url = new_postgres_database(self)
        self.db = store.open_database(self.url)
        self.addCleanup(self.db.close)
        self.admin = psycopg.connect(self.url, autocommit=True)
        self.addCleanup(self.admin.close)

    def kill(self, db: Any) -> None:
        self.admin.execute("SELECT pg_terminate_backend(%s)", (db.backend_pid,))

    def test_lost_mid_batch_fails_the_whole_batch(self) -> None:
        def send(text: str) -> Any:
            return lambda db: store.insert_message(db, "c", "a", text, "", 1.0)

        def killed(db: Any) -> int:
            self.kill(db)
            return store.insert_message(db, "c", "a", "after the loss", "", 1.0)

        self.assertRaises(store.StorageError, store.run_batch, self.db,
                          [send("before"), killed, send("later")])
        self.assertEqual(store.history(self.db, "c", 0, 10), [])  # reconnected, nothing kept
        self.assertEqual([ok for ok, _ in store.run_batch(self.db, [send("next")])], [True])
        self.assertEqual([m.content for m in store.history(self.db, "c", 0, 10)], ["next"])

    def test_lost_inside_a_transaction_is_refused_until_it_ends(self) -> None:
        with self.assertRaises(store.StorageError):
            with store.transaction(self.db):
                store.insert_message(self.db, "c", "a", "first", "", 1.0)
                self.kill(self.db)
                store.insert_message(self.db, "c", "a", "second", "", 1.0)
        self.assertFalse(self.db.in_transaction)
        self.assertEqual(store.history(self.db, "c", 0, 10), [])

    def test_idle_connection_that_died_is_replaced(self) -> None:
        self.kill(self.db)
        time.sleep(0.1)
        self.assertEqual(store.insert_message(self.db, "c", "a", "x", "", 1.0), 1)
        self.assertEqual(store.pending_count(self.db, "c", "r"), 1)


class HeardDuringATurnTests(SynchronousTestCase):
    """Another server's commit heard while this server's writer turn runs wakes after that
    turn's results: a read in the turn that found nothing parks first, then is woken."""

    def test_wake_waits_for_the_turn(self) -> None:
        from elipc.server.database import Database

        turns: list[Deferred[Any]] = []

        class HeldPool:
            max = 1

            def runWithConnection(self, function: Any, *args: Any) -> Deferred[Any]:
                turns.append(Deferred())
                return turns[-1]

        woken: list[Any] = []
        database = Database("postgresql://unused@/x", HeldPool(), HeldPool(), woken.append)
        result = database.write(lambda db: None)
        database.heard({"c"})
        self.assertEqual(woken, [])  # the turn's read may not have parked its waiter yet
        turns[0].callback(([(True, "read nothing")], set()))
        self.assertEqual(self.successResultOf(result), "read nothing")
        self.assertEqual(woken, [{"c"}])
        database.heard(None)
        self.assertEqual(woken, [{"c"}, None])  # no turn in flight: at once
