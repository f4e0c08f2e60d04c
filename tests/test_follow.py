"""`elipc follow`: one JSON line per message, flushed before the watermark moves past it, so a
follower killed at any point loses nothing; locally and through a server."""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from elipc import store
from elipc.cli import main
from elipc.cli.follow import MAX_LINE_CONTENT
from tests.clirun import CommittingClock, elipc_process, process_env, run_cli
from tests.helpers import SUBPROCESS_TIMEOUT_S, Server, raw_rows, temp_dir
from tests.test_e2e import ServerCase
from tests.test_remote_cli import InMemoryTransport, ServerClock

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux: set a pipe's capacity


def patient_clock(at: float = float("inf"),
                  commit: Callable[[], None] = lambda: None) -> CommittingClock:
    """A fake clock for a follower: another writer commits at `at`, and following for an
    hour of fake time with nothing to print fails the test instead of hanging it."""
    return CommittingClock(at, commit, limit=3600)


class LocalFollowTests(SynchronousTestCase):
    """Following channels on the local database."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.db = os.path.join(self.dir, "ipc.db")

    def cli(self, *args: str, clock: Any = None) -> Any:
        result = run_cli(self.db, *args, cwd=self.dir, clock=clock or patient_clock())
        self.assertEqual(result.code, 0, result.err)
        return result

    def lines(self, *args: str, clock: Any = None) -> list[dict[str, Any]]:
        out = self.cli("follow", *args, clock=clock).out
        self.assertTrue(out.endswith("\n"))
        return [json.loads(text) for text in out.splitlines()]

    def test_lines_and_watermarks(self) -> None:
        """Each message of each followed channel is one line, and is then read."""
        self.cli("send", "c", "a", "one")
        self.cli("send", "d", "b", "two")
        self.cli("send", "e", "b", "not followed")
        lines = self.lines("c", "d", "--agent", "r", "--count", "2")
        self.assertEqual([(m["channel"], m["id"], m["sender"], m["content"]) for m in lines],
                         [("c", 1, "a", "one"), ("d", 2, "b", "two")])
        self.assertEqual(set(lines[0]), {"channel", "id", "sender", "content", "timestamp"})
        watermarks = raw_rows(self.db, "SELECT channel, last_id FROM watermarks "
                                       "WHERE agent = 'r' ORDER BY channel")
        self.assertEqual(watermarks, [("c", 1), ("d", 2)])
        self.assertEqual(self.cli("read", "e", "r").json()[0]["content"], "not followed")

    def test_wakes_on_another_process_commit(self) -> None:
        """With nothing unread it sleeps until another connection commits, then prints it."""
        def commit() -> None:
            conn = store.open_database(self.db)
            store.insert_message(conn, "c", "w", "late", "", 1.0)
            conn.close()
        clock = patient_clock(at=5.0, commit=commit)
        lines = self.lines("c", "--agent", "r", "--count", "1", clock=clock)
        self.assertEqual([m["content"] for m in lines], ["late"])
        self.assertGreaterEqual(clock.slept, 5.0)

    def test_long_content_is_cut(self) -> None:
        """Content over MAX_LINE_CONTENT is cut, says so, and says how to get it whole."""
        self.cli("send", "c", "a", "x" * (MAX_LINE_CONTENT + 10))
        [line] = self.lines("c", "--agent", "r", "--count", "1")
        self.assertEqual((len(line["content"]), line["truncated"], line["content_length"]),
                         (MAX_LINE_CONTENT, True, MAX_LINE_CONTENT + 10))
        whole = self.cli(*line["full"].split()[1:]).json()
        self.assertEqual(len(whole[0]["content"]), MAX_LINE_CONTENT + 10)

    def test_verify(self) -> None:
        """--verify marks a registered sender's signed message true and any other false."""
        self.cli("seed", "op", "--out", "op")
        self.cli("keygen", "--out", "herald")
        self.cli("register", "herald", "--pubkey", "herald.pub", "--as", "op", "--key", "op.key")
        self.cli("send", "c", "herald", "signed", "--key", "herald.key")
        conn = store.open_database(self.db)
        store.insert_message(conn, "c", "mallory", "forged", "A" * 86 + "==", 1.0)
        conn.close()
        lines = self.lines("c", "--agent", "r", "--count", "2", "--verify")
        self.assertEqual([(m["content"], m["verified"]) for m in lines],
                         [("signed", True), ("forged", False)])
        self.assertTrue(lines[0]["signed"])

    def test_output_failure_moves_nothing(self) -> None:
        """A line that cannot be written leaves its message unread."""
        self.cli("send", "c", "a", "precious")

        class Broken(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError("the monitor went away")
        code = main(["follow", "c", "--agent", "r"], environ={"IPC_DB_PATH": self.db},
                    stdin=io.BytesIO(), stdout=Broken(), stderr=io.StringIO(),
                    clock=patient_clock())
        self.assertEqual(code, 1)
        self.assertEqual(self.cli("read", "c", "r").json()[0]["content"], "precious")


class KillTests(SynchronousTestCase):
    """A real follower process killed at every point loses nothing (at least once): on the
    local database in open mode here; secure and through a server in the subclasses."""

    secure = False

    def setUp(self) -> None:
        """A database with six long messages on c for agent r."""
        self.dir = temp_dir(self)
        self.db = os.path.join(self.dir, "ipc.db")
        self.total = 6
        if self.secure:  # operator op signs the sends; agent r is registered with its key
            for args in (("seed", "op", "--out", "op"), ("keygen", "--out", "r"),
                         ("register", "r", "--pubkey", "r.pub", "--as", "op", "--key",
                          "op.key")):
                self.assertEqual(run_cli(self.db, *args, cwd=self.dir).code, 0)
        signing = ("--key", "op.key") if self.secure else ()
        for i in range(self.total):
            sent = run_cli(self.db, "send", "c", "op", f"{i + 1}" * 2500, *signing,
                           cwd=self.dir)
            self.assertEqual(sent.code, 0, sent.err)

    def follower(self) -> list[str]:
        """The follower's command line."""
        key = ("--key", os.path.join(self.dir, "r.key")) if self.secure else ()
        return elipc_process("follow", "c", "--agent", "r", *key)

    def follower_env(self) -> dict[str, str]:
        """The follower's environment."""
        return process_env(self.db)

    def test_kill_at_every_point(self) -> None:
        """Followers killed (SIGKILL) one after another, each while blocked writing to a
        one-line pipe, together print every message, in order, at least once: the watermark
        never passes a line its reader did not get whole."""
        seen: list[int] = []
        # Kill at once (before its first acknowledgement), a little later (after it, or
        # while the next line is half written), and later still (blocked on the full pipe).
        delays = [0.0, 0.05, 0.3] * (2 * self.total)
        for delay in delays:
            if len(set(seen)) == self.total:
                break
            seen += self.follow_and_kill(delay)
            conn = store.open_database(self.db)
            self.assertLessEqual(store.watermark(conn, "c", "r"), max(seen, default=0))
            conn.close()
        self.assertEqual(sorted(set(seen)), list(range(1, self.total + 1)))
        self.assertEqual(seen, sorted(seen))

    def follow_and_kill(self, delay: float) -> list[int]:
        """Start a follower on a pipe that holds about one line, kill it `delay` seconds
        after its first line, and return the ids of the whole lines it got out."""
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
        follower = subprocess.Popen(self.follower(), env=self.follower_env(), stdout=write_end,
                                    stderr=subprocess.DEVNULL)
        os.close(write_end)
        self.addCleanup(_reap, follower)
        received = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while b"\n" not in received:
                ready, _, _ = select.select([pipe], [], [], SUBPROCESS_TIMEOUT_S)
                self.assertTrue(ready, "the follower printed nothing")
                received += pipe.read(65536)
            time.sleep(delay)
            follower.send_signal(signal.SIGKILL)
            follower.wait(timeout=SUBPROCESS_TIMEOUT_S)
            received += pipe.read()  # what it wrote before it died; a cut last line is lost
        whole = received.split(b"\n")[:-1]
        return [json.loads(text)["id"] for text in whole]


class SecureKillTests(KillTests):
    """The same in secure mode, on the local database."""

    secure = True


class RemoteKillTests(KillTests, ServerCase):
    """The same through a real `twist elipc`: each line printed, then acknowledged."""

    def setUp(self) -> None:
        """The messages, then the server on the same database."""
        ServerCase.setUp(self)
        KillTests.setUp(self)
        self.twist()

    def follower_env(self) -> dict[str, str]:
        """The follower is a client of the server."""
        return process_env(self.db, IPC_SERVER_URL=self.base)


class RemoteSecureKillTests(RemoteKillTests):
    """Through the server in secure mode: reads and acks signed with r's key."""

    secure = True


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=SUBPROCESS_TIMEOUT_S)


class RemoteFollowTests(SynchronousTestCase):
    """Following through a server (the real Klein app in memory)."""

    def test_lines_then_acks(self) -> None:
        """Each message is printed, then acknowledged on its own, in that order."""
        server = Server(self)
        transport = InMemoryTransport(server)
        for i in range(3):
            server.http.post(server.url("/send"), json={"channel": "c", "sender": "a",
                                                        "content": f"m{i}"})
        server.http.flush()
        out, err = io.StringIO(), io.StringIO()
        code = main(["--server", server.url(""), "follow", "c", "--agent", "r", "--count", "3"],
                    environ={}, stdin=io.BytesIO(), stdout=out, stderr=err,
                    clock=ServerClock(server.clock), transport=transport)
        self.assertEqual(code, 0, err.getvalue())
        self.assertEqual([json.loads(t)["content"] for t in out.getvalue().splitlines()],
                         ["m0", "m1", "m2"])
        acks = [json.loads(r.body or b"{}")["up_to"] for r in transport.requests
                if r.path == "/ack"]
        self.assertEqual(acks, [1, 2, 3])
        self.assertEqual(store.watermark(store.open_database(server.path), "c", "r"), 3)


class RemoteSocketFollowTests(TestCase):
    """Several channels through a real server socket: one long-poll each, one output."""

    async def test_two_channels(self) -> None:
        """Messages on two channels, one arriving while the follower waits, all come out."""
        from twisted.internet import reactor

        server = Server(self)
        port: Any = reactor.listenTCP(0, server.site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        server.http.post(server.url("/send"), json={"channel": "c", "sender": "a",
                                                    "content": "first"})
        server.http.flush()
        out = io.StringIO()
        following = deferToThread(main, ["--server", url, "follow", "c", "d", "--agent", "r",
                                          "--count", "2"], environ={}, stdin=io.BytesIO(),
                                  stdout=out, stderr=io.StringIO())
        server.http.post(server.url("/send"), json={"channel": "d", "sender": "b",
                                                    "content": "second"})
        server.http.flush()
        self.assertEqual(await following, 0)
        self.assertEqual(sorted(json.loads(t)["content"] for t in out.getvalue().splitlines()),
                         ["first", "second"])
        # The other channel's reader is still in its long-poll (a process would just exit):
        # close the server side, and it ends at its next look at the count.
        await server.site.close_connections(5)
