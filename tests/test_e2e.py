"""End to end: the real `twist elipc`, `twistd elipc`, `elipc serve` and CLI as processes.

These prove the packaging and the wiring; the logic is tested in memory elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from elipc import __version__, identity
from tests.helpers import (
    SUBPROCESS_TIMEOUT_S,
    Keyholder,
    cli_env,
    run_cli,
    run_with_closed_stdout,
    temp_dir,
)

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One blocking HTTP request; returns (status, parsed JSON)."""
    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=SUBPROCESS_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM by pid, then SIGKILL if it hangs; never leave it running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class ServerCase(SynchronousTestCase):
    """Start a real server process on a free port and wait until it answers."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.db = os.path.join(self.dir, "ipc.db")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.dir, "server.log")

    def start(self, *argv: str, **env: str) -> subprocess.Popen[Any]:
        log = open(self.log_path, "ab")
        self.addCleanup(log.close)
        proc = subprocess.Popen(list(argv), env=cli_env(self.db, **env), cwd=self.dir,
                                stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(stop_process, proc)
        self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[Any] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                self.fail(f"server exited {proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.fail(f"server did not listen within {START_TIMEOUT_S} s: {self.log()}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def twist(self, *extra: str, **env: str) -> subprocess.Popen[Any]:
        return self.start(os.path.join(BIN, "twist"), "--log-format=text", "elipc",
                          "--port", str(self.port), *extra, **env)


class TwistTests(ServerCase):
    """`twist elipc` serves el-ipc's API, logs each request, and binds 127.0.0.1."""

    def test_readme_curl_requests(self) -> None:
        """The README's curl commands work against a real server."""
        self.twist()
        curl = shutil.which("curl")
        send = ["-s", "-X", "POST", f"{self.base}/send", "-H", "Content-Type: application/json",
                "-d", '{"channel":"my-channel","sender":"herald","content":"Hello"}']
        if curl:
            out = subprocess.run([curl, *send], capture_output=True, text=True,
                                 timeout=SUBPROCESS_TIMEOUT_S).stdout
            self.assertEqual(json.loads(out), {"ok": True, "id": 1})
            card = subprocess.run([curl, "-s", f"{self.base}/.well-known/agent-card.json"],
                                  capture_output=True, text=True,
                                  timeout=SUBPROCESS_TIMEOUT_S).stdout
            self.assertEqual(json.loads(card)["version"], __version__)
        else:  # the same requests, shaped as curl sends them
            self.assertEqual(http("POST", f"{self.base}/send", json.loads(send[-1]),
                                  {"Content-Type": "application/json"}), (200, {"ok": True, "id": 1}))
        status, messages = http("GET", f"{self.base}/messages?channel=my-channel&agent=b")
        self.assertEqual([m["content"] for m in messages], ["Hello"])
        self.assertIn("POST /send 200", self.log())
        self.assertIn(f"listening on 127.0.0.1:{self.port}", self.log())

    def test_hybrid_cli_write_wakes_http_long_poll(self) -> None:
        """A message the CLI writes straight to the file wakes a pending HTTP long-poll."""
        self.twist("--db", self.db)
        answers: list[Any] = []
        poller = threading.Thread(target=lambda: answers.append(http(
            "GET", f"{self.base}/messages?channel=hybrid&agent=remote&wait=true")))
        poller.start()
        time.sleep(0.5)
        self.assertEqual(run_cli(self.db, "send", "hybrid", "local", "from the CLI").code, 0)
        poller.join(SUBPROCESS_TIMEOUT_S)
        self.assertEqual([m["content"] for m in answers[0][1]], ["from the CLI"])

    def test_secure_mode_across_cli_and_http(self) -> None:
        """Keys made with the CLI sign HTTP sends; unsigned HTTP sends are refused."""
        for args in (("seed", "op", "--out", "op"), ("keygen", "--out", "herald"),
                     ("register", "herald", "--pubkey", "herald.pub", "--as", "op",
                      "--key", "op.key")):
            self.assertEqual(run_cli(self.db, *args, cwd=self.dir).code, 0)
        self.twist()
        body = {"channel": "c", "sender": "herald", "content": "Hello"}
        self.assertEqual(http("POST", f"{self.base}/send", body)[0], 403)
        key = identity.load_private_key(os.path.join(self.dir, "herald.key"))
        body["signature"] = identity.sign(key, b"c\nherald\nHello")  # el-ipc's form
        status, answer = http("POST", f"{self.base}/send", body)
        self.assertEqual((status, answer["ok"]), (200, True))
        self.assertIn("security event signature_required", self.log())

    def test_shutdown_answers_pending_long_polls(self) -> None:
        """SIGTERM answers a pending long-poll with [] and the process stops cleanly."""
        proc = self.twist()
        answers: list[Any] = []
        poller = threading.Thread(target=lambda: answers.append(http(
            "GET", f"{self.base}/messages?channel=c&agent=r&wait=true")))
        poller.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        poller.join(SUBPROCESS_TIMEOUT_S)
        self.assertEqual(answers, [(200, [])])
        # twist re-raises the signal it stopped for, so its status says "terminated".
        self.assertIn(proc.wait(timeout=SUBPROCESS_TIMEOUT_S), (0, -signal.SIGTERM))
        self.assertIn("elipc stopped", self.log())

    def test_api_key_from_environment(self) -> None:
        """IPC_API_KEY makes the server demand the bearer key."""
        self.twist(IPC_API_KEY="k3y")
        self.assertEqual(http("GET", f"{self.base}/health"), (401, {"error": "unauthorized"}))
        self.assertEqual(http("GET", f"{self.base}/health",
                              headers={"Authorization": "Bearer k3y"})[0], 200)
        self.assertIn("security event api_key", self.log())
        self.assertNotIn("k3y", self.log())


class SecureE2ETests(ServerCase):
    """Attacks against a real server fail with the right status and are logged as security
    events (the registration attacks and their logs are proven in process, test_security)."""

    def setUp(self) -> None:
        super().setUp()
        for args in (("seed", "op", "--out", "op"), ("keygen", "--out", "herald"),
                     ("keygen", "--out", "bob")):
            self.assertEqual(run_cli(self.db, *args, cwd=self.dir).code, 0)
        for name in ("herald", "bob"):
            self.assertEqual(run_cli(self.db, "register", name, "--pubkey", f"{name}.pub",
                                     "--as", "op", "--key", "op.key", cwd=self.dir).code, 0)
        self.op, self.herald, self.bob = (Keyholder(n, os.path.join(self.dir, f"{n}.key"))
                                          for n in ("op", "herald", "bob"))

    def read(self, channel: str, agent: str, headers: dict[str, list[str]] | None = None,
             ) -> tuple[int, Any]:
        flat = {k: v[0] for k, v in (headers or {}).items()}
        return http("GET", f"{self.base}/messages?channel={channel}&agent={agent}", None, flat)

    def test_attacks(self) -> None:
        """Replayed and stale sends, foreign, unsigned and replayed reads all fail."""
        self.twist()
        now = int(time.time())
        body = self.herald.send_body("c", "pay bob 10", now)
        self.assertEqual(http("POST", f"{self.base}/send", body)[0], 200)
        self.assertEqual(http("POST", f"{self.base}/send", body)[0], 409)
        stale = self.herald.send_body("c", "old", now - 3600)
        self.assertEqual(http("POST", f"{self.base}/send", stale)[0], 403)
        self.assertEqual(self.read("c", "bob")[0], 401)
        self.assertEqual(self.read("c", "bob", self.herald.read_headers("c", now, agent="bob"))[0],
                         403)
        headers = self.bob.read_headers("c", now)
        status, messages = self.read("c", "bob", headers)
        self.assertEqual([m["content"] for m in messages], ["pay bob 10"])
        self.assertEqual(self.read("c", "bob", headers)[0], 403)
        self.assertIn("security event replayed_nonce", self.log())


class RemoteCliTests(ServerCase):
    """The remote CLI as a real process (the rest of remote mode is tested in memory in
    tests/test_remote_cli.py)."""

    def test_acknowledges_only_after_printing(self) -> None:
        """A remote reader whose stdout is dead leaves the messages unacknowledged."""
        self.twist()
        self.assertEqual(run_cli(self.db, "send", "c", "a", "precious", cwd=self.dir).code, 0)
        code = run_with_closed_stdout(
            [sys.executable, "-m", "elipc", "--server", self.base, "read", "c", "r", "--wait"],
            cli_env(None))
        self.assertNotEqual(code, 0)
        again = run_cli(None, "--server", self.base, "read", "c", "r", cwd=self.dir)
        self.assertEqual(again.code, 0, again.err)
        self.assertEqual([m["content"] for m in json.loads(again.out)], ["precious"])


class RunnerTests(ServerCase):
    """Other ways to run the same service: twistd (foreground, daemon) and `elipc serve`."""

    def test_elipc_serve(self) -> None:
        """`elipc serve PORT` runs the server in the foreground."""
        self.start(os.path.join(BIN, "elipc"), "serve", str(self.port))
        self.assertEqual(http("GET", f"{self.base}/health")[1]["status"], "ok")

    def test_twistd_foreground(self) -> None:
        """`twistd -n elipc` runs it in the foreground."""
        self.start(os.path.join(BIN, "twistd"), "-n", "--pidfile=", "elipc",
                   "--port", f"tcp:{self.port}:interface=127.0.0.1")
        self.assertEqual(http("GET", f"{self.base}/health")[0], 200)

    def test_twistd_daemon(self) -> None:
        """Daemonized twistd writes its pid file and log file; it stops on SIGTERM by pid."""
        pidfile = os.path.join(self.dir, "elipc.pid")
        logfile = os.path.join(self.dir, "elipc.log")
        completed = subprocess.run(
            [os.path.join(BIN, "twistd"), f"--pidfile={pidfile}", f"--logfile={logfile}",
             "elipc", "--port", str(self.port)],
            env=cli_env(self.db), cwd=self.dir, capture_output=True, text=True,
            timeout=SUBPROCESS_TIMEOUT_S)
        self.assertEqual(completed.returncode, 0, completed.stderr)
        self.wait_ready()
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(_kill_quietly, pid)
        self.assertEqual(http("GET", f"{self.base}/health")[0], 200)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(os.path.exists(pidfile), "twistd did not stop")
        with open(logfile) as f:
            self.assertIn("GET /health 200", f.read())

    def test_port_in_use_fails(self) -> None:
        """A port already taken is reported and the server does not hang around."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", self.port))
            taken.listen()
            completed = subprocess.run(
                [os.path.join(BIN, "elipc"), "serve", str(self.port)], env=cli_env(self.db),
                capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        self.assertEqual(completed.returncode, 1)
        self.assertIn("cannot listen", completed.stderr)

    def test_port_in_use_fails_under_twist(self) -> None:
        """Under twist too, a port already taken ends the process with status 1."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", self.port))
            taken.listen()
            completed = subprocess.run(
                [os.path.join(BIN, "twist"), "--log-format=text", "elipc", "--port",
                 str(self.port)], env=cli_env(self.db), capture_output=True, text=True,
                timeout=SUBPROCESS_TIMEOUT_S)
        self.assertEqual(completed.returncode, 1)
        self.assertIn("cannot listen", completed.stdout + completed.stderr)

    def test_unusable_database_fails_fast(self) -> None:
        """A corrupt database stops start-up with one clear line."""
        with open(self.db, "wb") as f:
            f.write(b"not sqlite" * 100)
        completed = subprocess.run(
            [os.path.join(BIN, "twist"), "elipc", "--port", str(self.port)],
            env=cli_env(self.db), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        self.assertNotEqual(completed.returncode, 0)
        self.assertIn("not an SQLite database", completed.stderr + completed.stdout)
        self.assertNotIn("Traceback", completed.stderr + completed.stdout)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class PackagingTests(SynchronousTestCase):
    """The plugin is found by `twist` and shipped in the wheel."""

    def test_twist_lists_elipc(self) -> None:
        """`twist --help` lists the elipc plugin."""
        out = subprocess.run([os.path.join(BIN, "twist"), "--help"], capture_output=True,
                             text=True, timeout=SUBPROCESS_TIMEOUT_S).stdout
        self.assertIn("elipc", out)

    def test_wheel_carries_plugin(self) -> None:
        """The built wheel holds twisted/plugins/elipc_plugin.py and no twisted/__init__.py."""
        out = temp_dir(self)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "-w", out, REPO], check=True,
                       capture_output=True, timeout=120)
        (wheel,) = [n for n in os.listdir(out) if n.endswith(".whl")]
        names = set(zipfile.ZipFile(os.path.join(out, wheel)).namelist())
        self.assertIn("twisted/plugins/elipc_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("elipc/store/__init__.py", names)
        console = os.path.join(REPO, "elipc", "console")
        for folder, _, files in os.walk(console):  # the console's files, every one
            for name in files:
                path = os.path.relpath(os.path.join(folder, name), REPO)
                self.assertIn(path.replace(os.sep, "/"), names)
