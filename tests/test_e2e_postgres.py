"""End to end on PostgreSQL: two real `twist elipc` processes on one database behave as one
server. A send on one wakes a long-poll on the other; readers of one agent spread over both
drain what writers on both send, each message exactly once; neither a server killed with
SIGKILL nor a database restart loses anything a server acknowledged."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from tests import pg
from tests.helpers import (
    SUBPROCESS_TIMEOUT_S,
    cli_env,
    new_postgres_database,
    raw_rows,
    run_cli,
    temp_dir,
)
from tests.test_e2e import BIN, START_TIMEOUT_S, free_port, stop_process


class Client:
    """One keep-alive HTTP connection to a server, reopened after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON); OSError or http.client errors if the server is unreachable."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                   timeout=SUBPROCESS_TIMEOUT_S)
        data = None if body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data,
                              headers={"Content-Type": "application/json"} if data else {})
            response = self.conn.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class TwoServers(SynchronousTestCase):
    """Two `twist elipc` on a fresh PostgreSQL database."""

    def setUp(self) -> None:
        self.url = new_postgres_database(self)
        self.dir = temp_dir(self)
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for n in range(2):
            self.start_server(n)

    def start_server(self, n: int) -> None:
        port = free_port()
        log = open(os.path.join(self.dir, f"server{n}.log"), "ab")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [os.path.join(BIN, "twist"), "--log-format=text", "elipc", "--port", str(port)],
            env=cli_env(None, IPC_DB_URL=self.url, IPC_RATE_LIMIT="0"), cwd=self.dir,
            stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(stop_process, proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                Client(port).request("GET", "/health")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.fail(f"server {n} did not start: {self.log(n)}")
                time.sleep(0.05)
        self.ports.append(port)
        self.procs.append(proc)

    def log(self, n: int) -> str:
        with open(os.path.join(self.dir, f"server{n}.log"), errors="replace") as f:
            return f.read()[-3000:]

    def stored_ids(self) -> list[int]:
        return [row[0] for row in raw_rows(self.url, "SELECT id FROM messages WHERE channel "
                                                     "= 'c' ORDER BY id")]


def send_body(n: int, key: str) -> dict[str, str]:
    return {"channel": "c", "sender": "w", "content": f"message {n}", "idempotency_key": key}


class SendLoop(threading.Thread):
    """Sends `count` messages to one server; records the ids acknowledged. With `retry`, a
    failed send is retried with the same idempotency key until the server answers."""

    def __init__(self, port: int, count: int, retry: bool = False) -> None:
        super().__init__(daemon=True)
        self.client = Client(port)
        self.count, self.retry = count, retry
        self.acked: list[int] = []
        self.keys: list[str] = []
        self.failures = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 4 * SUBPROCESS_TIMEOUT_S
        for n in range(self.count):
            key = uuid.uuid4().hex
            while not self.stopped.is_set() and time.monotonic() < deadline:
                try:
                    status, body = self.client.request("POST", "/send", send_body(n, key))
                except (OSError, http.client.HTTPException):
                    status, body = 0, None
                if status == 200:
                    self.acked.append(int(body["id"]))
                    self.keys.append(key)
                    break
                self.failures += 1
                if not self.retry:
                    return  # the server is gone: this writer stops
                time.sleep(0.05)
        self.client.close()


class ReadLoop(threading.Thread):
    """Long-polls one server as agent r until told to stop and nothing more comes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = Client(port)
        self.got: list[int] = []
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        query = urlencode({"channel": "c", "agent": "r", "wait": "true", "timeout": "1",
                           "limit": "200"})
        while True:
            try:
                status, body = self.client.request("GET", f"/messages?{query}")
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(str(e))
                return
            if status != 200:
                self.errors.append(f"{status} {body}")
                return
            self.got += [m["id"] for m in body]
            if not body and self.stop.is_set():
                self.client.close()
                return


class LongPoll(threading.Thread):
    """One long-poll of agent r on `channel`, parked on a server; `answer()` waits for it."""

    def __init__(self, port: int, channel: str, timeout: int) -> None:
        super().__init__(daemon=True)
        self.query = urlencode({"channel": channel, "agent": "r", "wait": "true",
                                "timeout": str(timeout)})
        self.client = Client(port)
        self.answers: list[tuple[int, Any]] = []
        self.start()
        time.sleep(0.3)  # parked (a send before that is found by its read anyway)

    def run(self) -> None:
        self.answers.append(self.client.request("GET", f"/messages?{self.query}"))

    def answer(self) -> tuple[int, Any]:
        """(status, JSON) of the long-poll, once it has answered."""
        self.join(SUBPROCESS_TIMEOUT_S)
        return self.answers[0]


class TwoServerTests(TwoServers):

    def test_send_on_one_wakes_long_poll_on_the_other(self) -> None:
        """A long-poll parked on the second server answers with a message sent to the
        first (through PostgreSQL's NOTIFY, not a timeout)."""
        poll = LongPoll(self.ports[1], "c", 30)
        started = time.monotonic()
        status, body = Client(self.ports[0]).request(
            "POST", "/send", {"channel": "c", "sender": "a", "content": "across"})
        self.assertEqual(status, 200)
        status, body = poll.answer()
        self.assertEqual(status, 200)
        self.assertEqual([m["content"] for m in body], ["across"])
        self.assertLess(time.monotonic() - started, 25, "woken by the timeout, not the send")

    def test_cli_send_wakes_a_server_and_a_cli_wait(self) -> None:
        """The real CLI on the database: its send wakes a long-poll on a server, and its
        `read --wait` is woken by a send through a server."""
        poll = LongPoll(self.ports[1], "c", 30)
        sent = run_cli(None, "send", "c", "cli", "from the CLI", IPC_DB_URL=self.url)
        self.assertEqual(sent.code, 0, sent.err)
        self.assertEqual([m["content"] for m in poll.answer()[1]], ["from the CLI"])
        waiting = subprocess.Popen(
            [sys.executable, "-m", "elipc", "read", "d", "r", "--wait", "--timeout", "30"],
            env=cli_env(None, IPC_DB_URL=self.url), stdout=subprocess.PIPE, text=True)
        self.addCleanup(stop_process, waiting)
        time.sleep(1.0)  # started and listening (a send before that is found by its read)
        status, _ = Client(self.ports[0]).request(
            "POST", "/send", {"channel": "d", "sender": "a", "content": "to the CLI"})
        self.assertEqual(status, 200)
        out, _ = waiting.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        self.assertEqual([m["content"] for m in json.loads(out)], ["to the CLI"])

    def test_readers_on_both_drain_writers_on_both_exactly_once(self) -> None:
        """Four writers (two per server) send 10,000 messages; four readers of one agent
        (two per server) receive every one exactly once, with no gap."""
        writers = [SendLoop(self.ports[n % 2], 2_500) for n in range(4)]
        readers = [ReadLoop(self.ports[n % 2]) for n in range(4)]
        for thread in readers + writers:
            thread.start()
        for writer in writers:
            writer.join(4 * SUBPROCESS_TIMEOUT_S)
        for reader in readers:
            reader.stop.set()
        for reader in readers:
            reader.join(SUBPROCESS_TIMEOUT_S)
        self.assertEqual([r.errors for r in readers], [[]] * 4)
        acked = sorted(i for w in writers for i in w.acked)
        self.assertEqual(len(acked), 10_000)
        got = [i for r in readers for i in r.got]
        self.assertEqual(len(got), len(set(got)), "a message was delivered twice")
        self.assertEqual(sorted(got), acked)
        self.assertEqual(self.stored_ids(), acked)

    def test_server_killed_mid_send_loses_nothing_acknowledged(self) -> None:
        """SIGKILL one server while writers send to both: every id either server
        acknowledged is stored, and the survivor goes on serving."""
        writers = [SendLoop(self.ports[n % 2], 1_500) for n in range(4)]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while sum(len(w.acked) for w in writers) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.procs[0].send_signal(signal.SIGKILL)
        self.procs[0].wait(SUBPROCESS_TIMEOUT_S)
        for writer in writers:
            writer.join(4 * SUBPROCESS_TIMEOUT_S)
        acked = {i for w in writers for i in w.acked}
        self.assertLess(len(acked), 6_000)  # the killed server's writers stopped early
        self.assertTrue(acked <= set(self.stored_ids()), "an acknowledged send was lost")
        status, body = Client(self.ports[1]).request(
            "POST", "/send", {"channel": "c", "sender": "a", "content": "still here"})
        self.assertEqual(status, 200)

    def test_database_restart_during_a_send_storm(self) -> None:
        """PostgreSQL stops and starts while writers send to both servers (retrying with
        their idempotency keys): nothing acknowledged is lost, nothing is stored twice, a
        long-poll parked before the restart is answered by a send after it."""
        writers = [SendLoop(self.ports[n % 2], 800, retry=True) for n in range(4)]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while sum(len(w.acked) for w in writers) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        poll = LongPoll(self.ports[1], "other", 60)
        server = pg.server()
        server.stop(signal.SIGQUIT)  # an immediate shutdown: a crash, recovered at start
        time.sleep(0.5)
        server.start()
        for writer in writers:
            writer.join(4 * SUBPROCESS_TIMEOUT_S)
        self.assertEqual(sorted(len(w.acked) for w in writers), [800] * 4)
        self.assertGreater(sum(w.failures for w in writers), 0, "the restart was not felt")
        acked = [i for w in writers for i in w.acked]
        stored = self.stored_ids()
        self.assertTrue(set(acked) <= set(stored), "an acknowledged send was lost")
        self.assertEqual(len(stored), len(acked), "a retried send was stored twice")
        status, _ = Client(self.ports[0]).request(
            "POST", "/send", {"channel": "other", "sender": "a", "content": "after"})
        self.assertEqual(status, 200)
        self.assertEqual([m["content"] for m in poll.answer()[1]], ["after"])
