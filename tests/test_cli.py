"""The `elipc` command line on a real database file, run in process through `elipc.cli.main`
(tests/clirun.py); only what needs a real process (start-up, imports, a dead reader, a wake
from another process) starts one."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import types
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from elipc import __version__, identity
from elipc.cli import main
from elipc.config import BY_NAME, option_help
from elipc.store import schema
from tests.clirun import (
    CommittingClock,
    CliResult,
    FakeClock,
    elipc_process,
    process_env,
    process_streams_untouched,
    run_cli,
)
from tests.helpers import (
    SUBPROCESS_TIMEOUT_S,
    make_el_ipc_database,
    raw_execute,
    raw_rows,
    run_with_closed_stdout,
    temp_dir,
)


class CliCase(SynchronousTestCase):
    """A temporary folder and database for each test."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.db = os.path.join(self.dir, "ipc.db")

    def cli(self, *args: str, **kw: Any) -> CliResult:
        return run_cli(self.db, *args, cwd=self.dir, **kw)

    def ok(self, *args: str, **kw: Any) -> CliResult:
        result = self.cli(*args, **kw)
        self.assertEqual(result.code, 0, result.err)
        return result

    def fails(self, expected: str, *args: str, code: int = 1, **kw: Any) -> str:
        """Run a command that must fail with one line on stderr containing `expected`."""
        result = self.cli(*args, **kw)
        self.assertEqual(result.code, code, result.out + result.err)
        self.assertIn(expected, result.err)
        self.assertEqual(len(result.err.strip().splitlines()), 1, result.err)
        self.assertNotIn("Traceback", result.err)
        return result.err

    def secure_setup(self) -> None:
        """Seed operator `op`, make keys for herald and mallory, register both."""
        self.ok("seed", "op", "--out", "op")
        for name in ("herald", "mallory"):
            self.ok("keygen", "--out", name)
            self.ok("register", name, "--pubkey", f"{name}.pub", "--as", "op", "--key", "op.key")

    def message_count(self) -> int:
        return int(raw_rows(self.db, "SELECT COUNT(*) FROM messages")[0][0])


class MessageCommandTests(CliCase):
    """send, read and channels print el-ipc's JSON and keep per-agent watermarks."""

    def test_send_shape(self) -> None:
        """send joins the words after <from> and prints ok, id, channel and signed."""
        result = self.ok("send", "ch", "agent-a", "Hello", "from", "A")
        self.assertEqual(result.json(), {"ok": True, "id": 1, "channel": "ch", "signed": False})
        self.assertEqual(raw_rows(self.db, "SELECT content FROM messages"), [("Hello from A",)])

    def test_send_from_stdin(self) -> None:
        """`send C F -` stores stdin verbatim, newlines included."""
        self.ok("send", "ch", "a", "-", stdin="line one\nline two\n")
        self.assertEqual(raw_rows(self.db, "SELECT content FROM messages"),
                         [("line one\nline two\n",)])

    def test_read_shape_and_watermark(self) -> None:
        """read prints indented messages once per agent, then []."""
        self.ok("send", "ch", "a", "one")
        self.ok("send", "ch", "b", "two")
        first = self.ok("read", "ch", "reader")
        self.assertIn('\n  {\n    "id": 1,', first.out)
        messages = first.json()
        self.assertEqual([(m["id"], m["sender"], m["content"]) for m in messages],
                         [(1, "a", "one"), (2, "b", "two")])
        self.assertEqual(set(messages[0]), {"id", "sender", "content", "timestamp"})
        self.assertEqual(self.ok("read", "ch", "reader").out, "[]\n")
        self.assertEqual(len(self.ok("read", "ch", "other").json()), 2)
        self.assertEqual(self.ok("read", "elsewhere", "reader").json(), [])

    def test_channels_shape(self) -> None:
        """channels lists count and last message time, most recent first."""
        self.ok("send", "old", "a", "x")
        self.ok("send", "new", "a", "x")
        self.ok("send", "new", "a", "y")
        channels = self.ok("channels").json()
        self.assertEqual([(c["channel"], c["count"]) for c in channels], [("new", 2), ("old", 1)])
        self.assertIsInstance(channels[0]["last_message"], float)

    def test_wait_times_out_empty(self) -> None:
        """read --wait --timeout gives [] when nothing arrives."""
        self.assertEqual(self.ok("read", "ch", "r", "--wait", "--timeout", "0.2").json(), [])

    def test_wait_returns_pending_at_once(self) -> None:
        """read --wait does not wait when messages are already unread."""
        self.ok("send", "ch", "a", "there")
        started = time.monotonic()
        self.assertEqual(len(self.ok("read", "ch", "r", "--wait", "--timeout", "60").json()), 1)
        self.assertLess(time.monotonic() - started, 30)

class DeliveryCommandTests(CliCase):
    """read --limit, history and prune."""

    def setUp(self) -> None:
        super().setUp()
        for i in range(5):
            self.ok("send", "c", "a", f"m{i}")

    def test_read_limit(self) -> None:
        """read --limit returns that many, says more wait, and moves only past them."""
        first = self.ok("read", "c", "r", "--limit", "2")
        self.assertEqual([m["content"] for m in first.json()], ["m0", "m1"])
        self.assertIn("more messages are waiting", first.err)
        rest = self.ok("read", "c", "r", "--limit", "10")
        self.assertEqual([m["content"] for m in rest.json()], ["m2", "m3", "m4"])
        self.assertEqual(rest.err, "")
        self.fails("from 1 to 10000", "read", "c", "r", "--limit", "0", code=2)

    def test_history(self) -> None:
        """history prints messages after an id and moves no watermark."""
        shown = self.ok("history", "c", "--after-id", "3").json()
        self.assertEqual([m["id"] for m in shown], [4, 5])
        self.assertEqual(raw_rows(self.db, "SELECT COUNT(*) FROM watermarks")[0][0], 0)
        self.assertIn("more messages", self.ok("history", "c", "--limit", "2").err)

    def test_prune(self) -> None:
        """prune deletes only messages older than the given age."""
        raw_execute(self.db, ("UPDATE messages SET created_at = created_at - 8 * 86400 "
                              "WHERE id <= 2", ()))
        self.assertEqual(self.ok("prune", "--older-than", "7d").json()["deleted"], 2)
        self.assertEqual([m["content"] for m in self.ok("read", "c", "r").json()],
                         ["m2", "m3", "m4"])
        self.fails("duration", "prune", "--older-than", "soon")
        self.fails("more than 0", "prune", "--older-than", "0")


class IdentityCommandTests(CliCase):
    """seed, keygen, register, agents and agent-card."""

    def test_seed_prints_private_key(self) -> None:
        """seed prints the operator's private PEM, stores its public key, notes on stderr."""
        result = self.ok("seed", "op")
        key = identity.parse_private_key(result.out)
        self.assertIn("seeded", result.err)
        stored = raw_rows(self.db, "SELECT public_key, role FROM agents WHERE name = 'op'")
        self.assertEqual(stored[0][1], "operator")
        self.assertTrue(identity.key_matches(key, stored[0][0]))

    def test_seed_twice_fails(self) -> None:
        """Seeding a name that exists fails and prints no key."""
        self.ok("seed", "op")
        self.fails("already exists", "seed", "op")

    def test_seed_out_writes_private_file(self) -> None:
        """seed --out writes the key files (private 0600) instead of printing the key."""
        result = self.ok("seed", "op", "--out", "op")
        self.assertEqual(result.json()["key"], "op.key")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.dir, "op.key")).st_mode), 0o600)
        self.assertNotIn("PRIVATE", result.out)

    def test_seed_out_existing_file_stores_no_operator(self) -> None:
        """If the key file cannot be written, no operator is stored (secure mode stays off)."""
        open(os.path.join(self.dir, "op.key"), "w").close()
        self.fails("exists", "seed", "op", "--out", "op")
        self.assertEqual(raw_rows(self.db, "SELECT COUNT(*) FROM agents")[0][0], 0)

    def test_keygen_stdout_and_files(self) -> None:
        """keygen prints both PEMs, or writes PREFIX.key 0600 and PREFIX.pub."""
        out = self.ok("keygen").out
        self.assertIn("BEGIN PRIVATE KEY", out)
        self.assertIn("BEGIN PUBLIC KEY", out)
        self.ok("keygen", "--out", "k")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.dir, "k.key")).st_mode), 0o600)
        self.fails("--force", "keygen", "--out", "k")
        self.ok("keygen", "--out", "k", "--force")

    def test_register_and_agents(self) -> None:
        """register prints el-ipc's message; agents lists role, name, identity, registrar."""
        self.ok("seed", "op", "--out", "op")
        self.ok("keygen", "--out", "herald")
        result = self.ok("register", "herald", "--pubkey", "herald.pub", "--as", "op",
                         "--key", "op.key", "--identity", "a9e6db87")
        self.assertEqual(result.json(), {
            "ok": True, "message": "Agent 'herald' registered by operator 'op'"})
        lines = self.ok("agents").out.splitlines()
        self.assertRegex(lines[0], r"^  \[operator\] op \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$")
        self.assertRegex(lines[1], r"^  \[agent\]    herald id=a9e6db87 "
                                   r"\(registered by op, \d{4}-\d\d-\d\dT[\d:]{8}Z\)$")

    def test_agents_empty(self) -> None:
        """With nobody registered, agents says so."""
        self.assertIn("No agents registered", self.ok("agents").out)

    def test_register_with_wrong_operator_key(self) -> None:
        """A key file that is not the operator's key registers nothing."""
        self.ok("seed", "op", "--out", "op")
        self.ok("keygen", "--out", "fake")
        self.fails("is not the key of operator", "register", "x", "--pubkey", "fake.pub",
                   "--as", "op", "--key", "fake.key")
        self.fails("not found", "register", "x", "--pubkey", "fake.pub", "--as", "nobody",
                   "--key", "op.key")
        self.assertEqual(raw_rows(self.db, "SELECT COUNT(*) FROM agents")[0][0], 1)

    def test_register_by_non_operator(self) -> None:
        """An agent cannot register other agents."""
        self.secure_setup()
        self.fails("not an operator", "register", "x", "--pubkey", "mallory.pub",
                   "--as", "herald", "--key", "herald.key")

    def test_agent_card(self) -> None:
        """agent-card prints el-ipc's card, with the first operator's did:key once seeded."""
        card = self.ok("agent-card", IPC_AGENT_NAME="Herald", IPC_PORT="1234").json()
        self.assertEqual((card["name"], card["url"], card["version"]),
                         ("Herald", "http://localhost:1234", __version__))
        self.assertNotIn("did", card)
        self.ok("seed", "op", "--out", "op")
        with open(os.path.join(self.dir, "op.pub")) as f:
            expected = identity.did_key(f.read())
        self.assertEqual(self.ok("agent-card").json()["did"], expected)


class SecureModeTests(CliCase):
    """Once an operator exists every send is signed by the sender's registered key."""

    def setUp(self) -> None:
        super().setUp()
        self.secure_setup()

    def test_signed_send(self) -> None:
        """A send signed with the sender's key is stored and reads as signed."""
        self.assertTrue(self.ok("send", "c", "herald", "hi", "--key", "herald.key").json()["signed"])
        self.assertEqual(self.ok("read", "c", "x").json()[0]["signed"], True)

    def test_stored_signature_verifies(self) -> None:
        """The CLI signs the elipc/2 payload; the stored signature, timestamp and nonce verify."""
        self.ok("send", "c", "herald", "hi there", "--key", "herald.key")
        signature, timestamp, nonce = raw_rows(
            self.db, "SELECT signature, signed_timestamp, nonce FROM messages")[0]
        with open(os.path.join(self.dir, "herald.pub")) as f:
            public = f.read()
        payload = identity.send_payload("c", "herald", timestamp, nonce, "hi there")
        self.assertTrue(identity.verify(public, payload, signature))
        self.assertLess(abs(timestamp - time.time()), 60)

    def test_unsigned_send_rejected(self) -> None:
        """Without --key the send fails and nothing is stored."""
        self.fails("signature required (secure mode active): pass --key", "send", "c", "herald", "hi")
        self.assertEqual(self.message_count(), 0)

    def test_impersonation_rejected(self) -> None:
        """Signing as herald with mallory's key fails and nothing is stored."""
        self.fails("invalid signature: mallory.key is not the registered key of 'herald'",
                   "send", "c", "herald", "hi",
                   "--key", "mallory.key")
        self.assertEqual(self.message_count(), 0)

    def test_unknown_sender_rejected(self) -> None:
        """A sender nobody registered cannot send, whatever key it holds."""
        self.fails("unknown sender: ghost", "send", "c", "ghost", "hi", "--key", "herald.key")
        self.assertEqual(self.message_count(), 0)

    def test_read_verify(self) -> None:
        """read --verify marks signed messages verified and anything else not."""
        self.ok("send", "c", "herald", "genuine", "--key", "herald.key")
        raw_execute(self.db, (
            "INSERT INTO messages (channel, sender, content, created_at, signature, "
            "signed_timestamp, nonce) SELECT channel, sender, 'tampered', created_at, "
            "signature, signed_timestamp, nonce FROM messages", ()))
        marks = [(m["content"], m["verified"]) for m in
                 self.ok("read", "c", "x", "--verify").json()]
        self.assertEqual(marks, [("genuine", True), ("tampered", False)])

    def test_local_read_needs_no_signature(self) -> None:
        """The local CLI reads in secure mode without signing: the file's mode guards it."""
        self.ok("send", "c", "herald", "hi", "--key", "herald.key")
        self.assertEqual(len(self.ok("read", "c", "anyone").json()), 1)

    def test_registration_is_elipc2(self) -> None:
        """register stores the operator's elipc/2 signature, verifiable by anyone."""
        (name, ts, signature, public) = raw_rows(
            self.db, "SELECT name, registration_ts, registration_signature, public_key "
                     "FROM agents WHERE name = 'herald'")[0]
        with open(os.path.join(self.dir, "op.pub")) as f:
            operator = f.read()
        payload = identity.register_payload("herald", "", ts, public)
        self.assertTrue(identity.verify(operator, payload, signature))

    def test_reserved_channel(self) -> None:
        """Nobody sends to the reserved elipc/ channels."""
        self.fails("reserved", "send", "elipc/security", "herald", "x", "--key", "herald.key")

    def test_strict_mode_unaffected(self) -> None:
        """The CLI always signs elipc/2, so strict mode accepts its sends."""
        self.ok("send", "c", "herald", "hi", "--key", "herald.key", IPC_STRICT_SIGNATURES="1")

    def test_open_mode_signs_with_key(self) -> None:
        """In open mode --key still signs (a fresh database has no operator)."""
        other = os.path.join(self.dir, "open.db")
        result = run_cli(other, "send", "c", "anyone", "hi", "--key", "herald.key", cwd=self.dir)
        self.assertEqual(result.code, 0, result.err)
        self.assertTrue(result.json()["signed"])


class BadInputTests(CliCase):
    """Every bad input is one line on stderr and a non-zero exit, never a traceback."""

    def test_usage_errors_exit_2(self) -> None:
        """Unknown commands and options and missing arguments are usage errors."""
        self.fails("unknown command 'bogus'", "bogus", code=2)
        self.fails("unrecognized arguments", "read", "c", "a", "--bogus", code=2)
        self.fails("required: sender", "send", "c", code=2)
        self.fails("required", "register", "x", code=2)
        self.fails("not a number", "read", "c", "a", "--wait", "--timeout", "soon", code=2)
        self.fails("between", "read", "c", "a", "--wait", "--timeout", "-1", code=2)

    def test_names(self) -> None:
        """Empty, over-long and control-character names are refused before touching the DB."""
        self.fails("channel must not be empty", "send", "", "a", "x")
        self.fails("longer than 256", "send", "c" * 257, "a", "x")
        self.fails("control characters", "send", "c\nd", "a", "x")
        self.fails("control characters", "read", "c", "a\x1b[31m")
        self.ok("send", "c" * 256, "é-ünïcode", "x")

    def test_content(self) -> None:
        """Empty, over-limit and non-UTF-8 content is refused."""
        self.fails("content must not be empty", "send", "c", "a", "")
        self.fails("limit is 10", "send", "c", "a", "x" * 11, IPC_MAX_CONTENT_BYTES="10")
        self.fails("over the limit", "send", "c", "a", "-", stdin="y" * 11,
                   IPC_MAX_CONTENT_BYTES="10")
        # Python hands undecodable argv bytes to main as surrogate escapes: os.fsdecode's form.
        result = self.cli("send", "c", "a", os.fsdecode(b"\xff\xfe"))
        self.assertEqual(result.code, 1)
        self.assertIn("not valid UTF-8", result.err)
        self.assertFalse(os.path.exists(self.db), "bad input must be refused before opening")

    def test_default_limit_is_one_mebibyte(self) -> None:
        """Exactly 1 MiB is accepted; one byte more is refused."""
        self.ok("send", "c", "a", "-", stdin="z" * (1024 * 1024))
        self.fails("over the limit", "send", "c", "a", "-", stdin="z" * (1024 * 1024 + 1))

    def test_key_files(self) -> None:
        """Missing and malformed key files are named in the error."""
        self.fails("cannot read key file nope.key", "send", "c", "a", "x", "--key", "nope.key")
        with open(os.path.join(self.dir, "bad.key"), "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        self.fails("not a PEM private key", "send", "c", "a", "x", "--key", "bad.key")
        self.ok("seed", "op", "--out", "op")
        self.fails("not a PEM public key", "register", "x", "--pubkey", "bad.key",
                   "--as", "op", "--key", "op.key")

    def test_corrupt_database(self) -> None:
        """A database file that is not SQLite is reported, not crashed on."""
        with open(self.db, "wb") as f:
            f.write(b"garbage" * 1000)
        self.fails("not an SQLite database", "read", "c", "a")

    def test_unusable_database_location(self) -> None:
        """A database in a missing folder is reported with its path."""
        self.db = os.path.join(self.dir, "missing", "ipc.db")
        self.fails(self.db, "send", "c", "a", "x")

    def test_unopenable_database(self) -> None:
        """A database path that cannot be opened as a file is reported in one line."""
        self.db = self.dir  # a folder: SQLite cannot open or create it, even as root
        self.fails("unable to open database file", "send", "c", "a", "x")

    def test_newer_database(self) -> None:
        """A database from a newer elipc is refused with a clear message."""
        self.ok("channels")
        raw_execute(self.db, (f"PRAGMA user_version = {schema.CURRENT_VERSION + 5}", ()))
        self.fails("newer elipc", "send", "c", "a", "x")

    def test_bad_environment(self) -> None:
        """A malformed setting in the environment names the variable."""
        self.fails("IPC_MAX_CONTENT_BYTES", "send", "c", "a", "x", IPC_MAX_CONTENT_BYTES="lots")


class QuietOutputTests(CliCase):
    """read, follow and history write nothing to stderr but a real error when stdout is not
    a terminal (el merges stderr into its event, which must stay pure JSON)."""

    def test_more_waiting_said_only_to_a_terminal(self) -> None:
        """A full page's note reaches a terminal's stderr, not a program's."""
        for i in range(3):
            self.ok("send", "c", "a", f"m{i}")
        piped = self.cli("read", "c", "r", "--limit", "1", terminal=False)
        self.assertEqual((piped.code, len(piped.json()), piped.err), (0, 1, ""))
        history = self.cli("history", "c", "--limit", "1", terminal=False)
        self.assertEqual((history.code, len(history.json()), history.err), (0, 1, ""))
        self.assertIn("more messages are waiting", self.ok("history", "c", "--limit", "1").err)

    def test_el_ipc_notice_not_in_output_commands(self) -> None:
        """The one-time hint about el-ipc's old file stays out of a piped read, and is still
        given to a piped send."""
        from unittest import mock

        from elipc import config

        state = os.path.join(self.dir, "state")
        legacy = os.path.join(self.dir, "el-ipc.db")
        open(legacy, "w").close()
        with mock.patch.object(config, "LEGACY_DB_PATH", legacy):
            read = run_cli(None, "read", "c", "r", cwd=self.dir, terminal=False,
                           XDG_STATE_HOME=state)
            self.assertEqual((read.code, read.out, read.err), (0, "[]\n", ""))
            shutil.rmtree(os.path.join(state, "elipc"))  # a first run again
            sent = run_cli(None, "send", "c", "a", "x", cwd=self.dir, terminal=False,
                           XDG_STATE_HOME=state)
            self.assertEqual(sent.code, 0)
            self.assertIn(f"IPC_DB_PATH={legacy}", sent.err)


class FullDiskTests(CliCase):
    """A storage fault at commit time is one line and exit 1, never a traceback."""

    def test_send_when_commit_fails(self) -> None:
        """`elipc send` whose COMMIT SQLite refuses says so in one line and stores nothing."""
        from unittest import mock

        from elipc import store
        from tests.test_store import refuse_commits

        self.ok("send", "c", "a", "first")
        real_open = store.open_database

        def refusing_open(path: str, **kw: Any) -> Any:
            conn = real_open(path, **kw)
            refuse_commits(conn)
            return conn
        with mock.patch.object(store, "open_database", refusing_open):
            self.fails("database error", "send", "c", "a", "second")
            self.fails("database error", "read", "c", "r")
        self.assertEqual(self.message_count(), 1)
        self.assertIn("first", self.ok("read", "c", "r").out)


class CompatibilityTests(CliCase):
    """The CLI opens el-ipc's database in place and respects its watermarks."""

    def test_el_ipc_database(self) -> None:
        """Messages and watermarks el-ipc wrote are there after the CLI opens the file."""
        make_el_ipc_database(self.db)
        raw_execute(
            self.db,
            ("INSERT INTO messages (channel, sender, content, created_at) "
             "VALUES ('c', 'a', 'old', 1.0)", ()),
            ("INSERT INTO messages (channel, sender, content, created_at) "
             "VALUES ('c', 'a', 'new', 2.0)", ()),
            ("INSERT INTO watermarks VALUES ('r', 'c', 1)", ()),
        )
        self.assertEqual([m["content"] for m in self.ok("read", "c", "r").json()], ["new"])
        self.assertEqual(raw_rows(self.db, "PRAGMA user_version")[0][0], schema.CURRENT_VERSION)

    def test_default_database_location(self) -> None:
        """Without IPC_DB_PATH the database is created 0600 in a 0700 per-user folder."""
        state = os.path.join(self.dir, "state")
        result = run_cli(None, "send", "c", "a", "x", XDG_STATE_HOME=state)
        self.assertEqual(result.code, 0, result.err)
        folder = os.path.join(state, "elipc")
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(folder, "ipc.db")).st_mode), 0o600)



class ClockTests(CliCase):
    """The CLI takes every time from the clock it is handed, and sleeps only through it."""

    def test_wait_times_out_on_the_clock(self) -> None:
        """read --wait --timeout 5 on a fake clock gives [] after 5 fake seconds, at once."""
        clock = FakeClock()
        started = time.monotonic()
        result = self.ok("read", "ch", "r", "--wait", "--timeout", "5", clock=clock)
        self.assertEqual(result.json(), [])
        self.assertAlmostEqual(clock.slept, 5.0, delta=0.02)
        self.assertLess(time.monotonic() - started, 2.5)

    def test_wait_wakes_on_another_connection(self) -> None:
        """read --wait returns a message another connection commits while it sleeps."""
        self.ok("channels")  # the file exists, so the sleeping reader's "writer" can use it
        clock = CommittingClock(1.0, lambda: raw_execute(self.db, (
            "INSERT INTO messages (channel, sender, content, created_at) "
            "VALUES ('ch', 'w', 'wake up', 1.0)", ())))
        result = self.ok("read", "ch", "r", "--wait", "--timeout", "30", clock=clock)
        self.assertEqual([m["content"] for m in result.json()], ["wake up"])
        self.assertLess(clock.slept, 1.1)

    def test_send_stores_the_clock_time(self) -> None:
        """send stores the clock's time, and a signed send signs that time."""
        self.secure_setup()
        clock = FakeClock(now=1_600_000_000.5)
        self.ok("send", "c", "herald", "hi", "--key", "herald.key", clock=clock)
        self.assertEqual(raw_rows(self.db, "SELECT created_at, signed_timestamp FROM messages"),
                         [(1_600_000_000.5, 1_600_000_000)])

    def test_prune_cuts_off_by_the_clock(self) -> None:
        """prune counts ages from the clock's time: eight days on, a 7d prune takes all."""
        self.ok("send", "c", "a", "x")
        now = time.time()
        self.assertEqual(self.ok("prune", "--older-than", "7d",
                                 clock=FakeClock(now)).json()["deleted"], 0)
        self.assertEqual(self.ok("prune", "--older-than", "7d",
                                 clock=FakeClock(now + 8 * 86400)).json()["deleted"], 1)


class _Refusing(io.RawIOBase):
    """A stream that fails every use with a given exception."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error

    def write(self, data: Any) -> int:
        raise self.error


class _DeadReader(io.StringIO):
    """A stdout whose reader has gone away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class StreamTests(CliCase):
    """main writes only to the streams it is given and ends the way the process should."""

    def run_main(self, *argv: str, stdin: bytes = b"", **streams: Any) -> tuple[int, str, str]:
        out, err = streams.get("stdout", io.StringIO()), io.StringIO()
        self.patch(sys, "stdin", io.TextIOWrapper(_Refusing(AssertionError("read sys.stdin"))))
        with process_streams_untouched():
            code = main(list(argv), environ={"IPC_DB_PATH": self.db}, stdin=io.BytesIO(stdin),
                        stdout=out, stderr=err, clock=FakeClock())
        return code, "" if "stdout" in streams else out.getvalue(), err.getvalue()

    def test_every_kind_of_output_goes_to_the_given_streams(self) -> None:
        """Answers, notes, errors, help, version and usage errors all use the given streams."""
        self.assertEqual(self.run_main("send", "c", "a", "-", stdin=b"hi")[:2],
                         (0, '{"ok": true, "id": 1, "channel": "c", "signed": false}\n'))
        code, out, err = self.run_main("keygen")
        self.assertEqual((code, out.count("BEGIN"), err.count("KEY ---")), (0, 2, 2))
        self.assertEqual(self.run_main("--version"), (0, f"elipc {__version__}\n", ""))
        code, out, err = self.run_main("read", "--help")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("--wait", out)
        code, out, err = self.run_main("read", "c")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("required: agent", err)
        self.assertEqual(self.run_main("prune", "--older-than", "0"),
                         (1, "", "elipc: --older-than must be more than 0\n"))

    def test_dead_reader_in_process(self) -> None:
        """A stdout that breaks exits 1 quietly, moves no watermark and leaves fd 1 alone."""
        self.ok("send", "ch", "a", "precious")
        fd1 = os.fstat(1)
        self.assertEqual(self.run_main("read", "ch", "r", stdout=_DeadReader()), (1, "", ""))
        self.assertEqual((os.fstat(1).st_dev, os.fstat(1).st_ino), (fd1.st_dev, fd1.st_ino))
        self.assertEqual([m["content"] for m in self.ok("read", "ch", "r").json()], ["precious"])

    def test_interrupt_exits_130(self) -> None:
        """Ctrl-C (KeyboardInterrupt) while a command runs exits 130 and stores nothing."""
        stdin = io.BufferedReader(_Refusing(KeyboardInterrupt()))
        code = main(["send", "c", "a", "-"], environ={"IPC_DB_PATH": self.db}, stdin=stdin,
                    stdout=io.StringIO(), stderr=io.StringIO())
        self.assertEqual(code, 130)
        self.assertFalse(os.path.exists(self.db))


class GlobalOptionTests(CliCase):
    """--db and --server come from the settings table and feed the settings."""

    def test_help_lists_the_table_options(self) -> None:
        """elipc --help describes --db and --server with the table's help text."""
        out = " ".join(self.ok("--help").out.split())
        for name in ("db_path", "server_url"):
            setting = BY_NAME[name]
            self.assertIn(f"--{setting.option}", out)
            self.assertIn(" ".join(option_help(setting).split()), out)

    def test_db_option_beats_the_environment(self) -> None:
        """--db names the database even when IPC_DB_PATH names another."""
        other = os.path.join(self.dir, "other.db")
        self.ok("--db", other, "send", "c", "a", "x")
        self.assertEqual(raw_rows(other, "SELECT content FROM messages"), [("x",)])
        self.assertFalse(os.path.exists(self.db))


class RemoteDispatchTests(CliCase):
    """With a server configured, commands go to `elipc.cli.remote.run_remote` (a stand-in here)."""

    def setUp(self) -> None:
        super().setUp()
        self.calls: list[tuple[Any, ...]] = []
        fake = types.ModuleType("elipc.cli.remote")
        fake.REMOTE_COMMANDS = ("send", "read", "channels")  # type: ignore[attr-defined]
        fake.run_remote = lambda *call: self.calls.append(call)  # type: ignore[attr-defined]
        before = sys.modules.get("elipc.cli.remote")
        sys.modules["elipc.cli.remote"] = fake
        self.addCleanup(self.restore, before)

    def restore(self, before: types.ModuleType | None) -> None:
        if before is None:
            sys.modules.pop("elipc.cli.remote", None)
        else:
            sys.modules["elipc.cli.remote"] = before

    def test_send_goes_to_the_server(self) -> None:
        """--server hands run_remote the arguments, settings, checked content, clock and
        transport, and the local database is never opened."""
        clock, transport = FakeClock(), object()
        self.ok("--server", "http://h:1", "send", "c", "a", "-", stdin="two\nlines",
                clock=clock, transport=transport)
        [(args, settings, content, console, given_clock, given_transport)] = self.calls
        self.assertEqual((args.command, args.channel, settings.server_url, content),
                         ("send", "c", "http://h:1", "two\nlines"))
        self.assertIs(given_clock, clock)
        self.assertIs(given_transport, transport)
        self.assertFalse(os.path.exists(self.db))

    def test_environment_selects_the_server(self) -> None:
        """IPC_SERVER_URL alone makes read remote, with no content."""
        self.ok("read", "c", "r", IPC_SERVER_URL="http://h:2")
        [(args, settings, content, *_)] = self.calls
        self.assertEqual((args.command, settings.server_url, content), ("read", "http://h:2", None))

    def test_content_checked_before_the_server(self) -> None:
        """Content over the limit is refused before run_remote is called."""
        self.fails("limit is 10", "--server", "http://h", "send", "c", "a", "x" * 11,
                   IPC_MAX_CONTENT_BYTES="10")
        self.assertEqual(self.calls, [])

    def test_local_only_commands(self) -> None:
        """A command the server cannot do is refused; keygen stays local."""
        self.fails("prune works on the local database only; unset --server / IPC_SERVER_URL",
                   "--server", "http://h", "prune", "--older-than", "1d")
        self.assertIn("BEGIN PUBLIC KEY", self.ok("--server", "http://h", "keygen").out)
        self.assertEqual(self.calls, [])


class ProcessTests(CliCase):
    """What only a real process proves: start-up, imports, a dead reader, a cross-process wake."""

    def test_wait_wakes_on_another_process(self) -> None:
        """read --wait returns a message another process sends while it waits."""
        reader = subprocess.Popen(
            elipc_process("read", "ch", "r", "--wait", "--timeout", "30"),
            env=process_env(self.db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(reader.kill)
        self.ok("read", "ch", "r")  # creates the file; the reader is waiting by now or soon
        time.sleep(0.3)
        self.ok("send", "ch", "w", "wake up")
        out, err = reader.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        self.assertEqual(reader.returncode, 0, err)
        self.assertEqual([m["content"] for m in json.loads(out)], ["wake up"])

    def test_output_failure_keeps_messages_unread(self) -> None:
        """A reader whose stdout is gone moves no watermark: the messages are read again."""
        self.ok("send", "ch", "a", "precious")
        code = run_with_closed_stdout(elipc_process("read", "ch", "r"), process_env(self.db))
        self.assertNotEqual(code, 0)
        self.assertEqual([m["content"] for m in self.ok("read", "ch", "r").json()], ["precious"])

    def test_console_script_and_module(self) -> None:
        """The installed `elipc` script and `python -m elipc` are the same program."""
        script = shutil.which("elipc", path=os.path.dirname(sys.executable))
        self.assertIsNotNone(script)
        assert script is not None
        versions = [subprocess.run(argv, env=process_env(self.db), capture_output=True,
                                   text=True, timeout=SUBPROCESS_TIMEOUT_S).stdout
                    for argv in ([script, "--version"], elipc_process("--version"))]
        self.assertEqual(versions, [f"elipc {__version__}\n"] * 2)

    def imported(self, *args: str) -> set[str]:
        """The top-level packages loaded by a fresh process that ran `elipc ARGS`."""
        script = ("import io, json, sys\n"
                  "from elipc.cli import main\n"
                  "status = main(sys.argv[1:], stdout=io.StringIO())\n"
                  "print(json.dumps([status, sorted({m.split('.')[0] for m in sys.modules})]))\n")
        result = subprocess.run([sys.executable, "-c", script, *args], env=process_env(self.db),
                                cwd=self.dir, capture_output=True, text=True,
                                timeout=SUBPROCESS_TIMEOUT_S)
        status, modules = json.loads(result.stdout)
        self.assertEqual(status, 0, result.stderr[-2000:])
        return set(modules)

    def test_local_path_imports(self) -> None:
        """send and read import none of the heavy packages; keygen does load cryptography."""
        heavy = {"twisted", "klein", "treq", "cryptography", "base58"}
        self.assertEqual(self.imported("send", "c", "a", "x") & heavy, set())
        self.assertEqual(self.imported("read", "c", "a") & heavy, set())
        self.assertIn("cryptography", self.imported("keygen"))
