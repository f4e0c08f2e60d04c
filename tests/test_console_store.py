"""The console's store functions on real SQLite files: search (FTS5 kept by triggers),
delivery state, history backwards and channel activity. None of them moves anything."""

from __future__ import annotations

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from elipc import operations, store
from elipc.model import InvalidInput
from elipc.store import schema
from elipc.store.search import match_expression
from tests.helpers import new_postgres_database, raw_rows, temp_dir


class ConsoleStoreCase(SynchronousTestCase):
    """A fresh database file per test."""

    postgres = False

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.path = (new_postgres_database(self) if self.postgres
                     else os.path.join(self.dir, "ipc.db"))
        self.db = store.open_database(self.path)
        self.addCleanup(self.db.close)

    def send(self, channel: str, content: str = "hi", sender: str = "a",
             at: float = 1000.0) -> int:
        return store.insert_message(self.db, channel, sender, content, "", at)

    def found(self, text: str, **filters: object) -> list[int]:
        options: dict[str, object] = {"channel": None, "sender": None, "before_id": 2**62,
                                      "limit": 100, "include_reserved": True, **filters}
        return [m.id for m in store.search(self.db, text, **options).messages]  # type: ignore[arg-type]


class SearchTests(ConsoleStoreCase):
    """Every word must match; filters narrow; the index follows inserts, deletes, updates."""

    def test_words_match_newest_first(self) -> None:
        """A search finds every message holding all its words, newest first."""
        one = self.send("c", "the deploy failed on host seven")
        self.send("c", "all good")
        three = self.send("d", "Deploy finished; nothing failed")
        self.assertEqual(self.found("deploy failed"), [three, one])
        self.assertEqual(self.found("DEPLOY"), [three, one])
        self.assertEqual(self.found("fin*"), [three])

    def test_filters_and_paging(self) -> None:
        """channel, sender and before_id narrow the results; more says whether older match."""
        ids = [self.send("c" if i % 2 else "d", f"word {i}", sender=f"s{i % 3}")
               for i in range(10)]
        self.assertEqual(self.found("word", channel="c"), ids[1::2][::-1])
        self.assertEqual(self.found("word", sender="s0"), ids[0::3][::-1])
        page = store.search(self.db, "word", None, None, ids[5], 2, True)
        self.assertEqual(([m.id for m in page.messages], page.more), ([ids[4], ids[3]], True))

    def test_reserved_channels_left_out_on_request(self) -> None:
        """Without include_reserved, the elipc/ channels (security events) are not searched."""
        self.send("elipc/security", "secret word")
        public = self.send("c", "public word")
        self.assertEqual(self.found("word", include_reserved=False), [public])
        self.assertEqual(len(self.found("word")), 2)

    def test_fts_syntax_is_text(self) -> None:
        """What would be FTS5 syntax is searched for as text, never an error."""
        odd = self.send("c", 'say "NEAR(a b)" AND OR NOT col:umn ^x -y')
        for text in ['"', '"NEAR(a', "AND", "OR NOT", "col:umn", "^x", "-y", "*", "**", "a*b",
                     "(", ")", "{a b}", "\x00a", "a\u2028b", "é"]:
            store.search(self.db, text, None, None, 2**62, 10, True)  # no error
        self.assertEqual(self.found('"NEAR(a b)"'), [odd])
        self.assertEqual(self.found("col:umn"), [odd])

    def test_empty_or_oversized_query_is_invalid(self) -> None:
        """No words, too many words or too many characters: InvalidInput, not a storage error."""
        for text in ["", "   ", "w " * 33, "x" * 501]:
            self.assertRaises(InvalidInput, match_expression, text)

    def test_expression_quotes_each_word(self) -> None:
        """Each word is one quoted phrase with its quotes doubled; a trailing * a prefix."""
        self.assertEqual(match_expression('a "b c* *'), '"a" """b" "c"* "*"')

    def test_retention_and_updates_keep_the_index(self) -> None:
        """Deleted messages are no longer found, an updated one is found by its new text,
        and the index stays consistent (FTS5's integrity check)."""
        old = self.send("c", "ancient needle", at=10.0)
        new = self.send("c", "fresh needle", at=5000.0)
        self.assertEqual(operations.run_retention(self.db, 100.0), 1)
        self.assertEqual(self.found("needle"), [new])
        self.db.execute("UPDATE messages SET content = 'changed hay' WHERE id = ?", (new,))
        self.assertEqual((self.found("needle"), self.found("hay")), ([], [new]))
        self.assertNotIn(old, self.found("ancient"))
        if not self.postgres:
            self.db.execute("INSERT INTO messages_fts (messages_fts, rank) "
                            "VALUES ('integrity-check', 1)")

    def test_other_writers_are_indexed(self) -> None:
        """A message another program inserts with plain SQL is found (triggers, not code)."""
        self.db.execute("INSERT INTO messages (channel, sender, content, created_at) "
                        "VALUES ('c', 'el', 'written behind our back', 1.0)")
        self.assertEqual(len(self.found("behind")), 1)


class UpgradeTests(ConsoleStoreCase):
    """Schema version 5 backfills the index from the messages already stored."""

    def test_version_4_file_gains_a_filled_index(self) -> None:
        """A version 4 file's messages are searchable after the upgrade, which matches a
        fresh file."""
        path = os.path.join(self.dir, "v4.db")
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        statements = [*schema.BASE_TABLES]
        for version in range(1, 5):
            statements += schema.UPGRADES[version]
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO messages (channel, sender, content, created_at) "
                     "VALUES ('c', 'a', 'kept before the console', 1.0)")
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
        conn.close()
        upgraded = store.open_database(path)
        self.addCleanup(upgraded.close)
        self.assertEqual(schema.schema_version(upgraded), 5)
        self.assertEqual(len(store.search(upgraded, "console", None, None, 2**62, 10,
                                          True).messages), 1)
        self.assertEqual(schema.describe_schema(upgraded), schema.describe_schema(self.db))


class DeliveryTests(ConsoleStoreCase):
    """Each agent's watermark and pending count, moving nothing."""

    def test_watermarks_and_pending(self) -> None:
        """Agents that read the channel appear with how far they read and what waits."""
        ids = [self.send("c") for _ in range(5)]
        self.send("other")
        store.acknowledge(self.db, "c", "bob", ids[1])
        store.acknowledge(self.db, "c", "alice", ids[4])
        store.acknowledge(self.db, "other", "carol", 6)
        state = store.delivery(self.db, "c")
        self.assertEqual(state, {
            "channel": "c", "last_id": ids[4], "count": 5, "more": False,
            "agents": [{"agent": "alice", "watermark": ids[4], "pending": 0},
                       {"agent": "bob", "watermark": ids[1], "pending": 3}]})
        self.assertEqual(store.delivery(self.db, "c"), state)  # moved nothing

    def test_unknown_channel(self) -> None:
        """A channel nobody wrote to has nothing and nobody."""
        self.assertEqual(store.delivery(self.db, "nowhere"),
                         {"channel": "nowhere", "last_id": 0, "count": 0, "agents": [],
                          "more": False})


class BrowseTests(ConsoleStoreCase):
    """History backwards and activity since an id."""

    def test_history_before_pages_backwards(self) -> None:
        """Each page is the messages just before the id, oldest first; more until the start."""
        ids = [self.send("c", str(i)) for i in range(5)]
        self.send("d")
        page = store.history_before(self.db, "c", 2**62, 2)
        self.assertEqual(([m.id for m in page.messages], page.more), (ids[3:], True))
        page = store.history_before(self.db, "c", ids[1], 2)
        self.assertEqual(([m.id for m in page.messages], page.more), ([ids[0]], False))

    def test_activity(self) -> None:
        """Without after_id: where to start; with it: per channel what was added since."""
        self.send("c", at=1.0)
        start = store.activity(self.db, None)
        self.assertEqual(start, {"last_id": 1, "channels": []})
        self.send("c", at=2.0)
        self.send("d", at=3.0)
        last = self.send("c", at=4.0)
        seen = store.activity(self.db, 1)
        self.assertEqual(seen["last_id"], last)
        self.assertEqual(sorted(seen["channels"], key=lambda c: c["channel"]), [  # type: ignore
            {"channel": "c", "added": 2, "last_id": last, "last_message": 4.0},
            {"channel": "d", "added": 1, "last_id": 3, "last_message": 3.0}])
        self.assertEqual(store.activity(self.db, last), {"last_id": last, "channels": []})

    def test_activity_catches_up_in_windows(self) -> None:
        """A console far behind catches up ACTIVITY_WINDOW ids at a time."""
        from elipc.store import browse

        self.patch(browse, "ACTIVITY_WINDOW", 2)
        for _ in range(5):
            self.send("c")
        self.assertEqual(store.activity(self.db, 0)["last_id"], 2)
        self.assertEqual(raw_rows(self.path, "SELECT COUNT(*) FROM messages")[0][0], 5)


# PostgreSQL's text search, delivery state and browsing, through the same tests.
class SearchPostgresTests(SearchTests):
    postgres = True


class DeliveryPostgresTests(DeliveryTests):
    postgres = True


class BrowsePostgresTests(BrowseTests):
    postgres = True
