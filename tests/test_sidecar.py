"""`sidecar/plugin.py` loaded the way el's sidecar loads it, driven through an `api` dict of the
documented shape: el-ipc's routes byte for byte, its drain events, and one queue shared with
the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from elipc import identity
from tests.clirun import CliResult, process_env, run_cli
from tests.helpers import temp_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "sidecar", "plugin.py")


class FakeEl:
    """el's side of the contract: its events table in a real SQLite file, insert_event and
    notify_waiters, the route and poller registries, get_db and db_lock."""

    def __init__(self, folder: str) -> None:
        self.db_path = os.path.join(folder, "el-sidecar.db")
        self.routes: dict[tuple[str, str], Any] = {}
        self.pollers: list[tuple[str, Any]] = []
        self.notified = 0
        self.lock = threading.RLock()
        with self.lock, sqlite3.connect(self.db_path) as conn:
            conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, source TEXT, ts TEXT, "
                         "user_id TEXT, text TEXT, channel TEXT, type TEXT, thread_ts TEXT, "
                         "bot_id TEXT, metadata TEXT)")
        self.api = {
            "insert_event": self.insert_event, "notify_waiters": self.notify_waiters,
            "register_route": lambda method, path, handler: self.routes.__setitem__(
                (method.upper(), path), handler),
            "register_poller": lambda name, func: self.pollers.append((name, func)),
            "register_init": lambda name, func: None,
            "register_on_pick": lambda name, func: None,
            "register_enrichment": lambda name, func: None,
            "register_watch_handler": lambda *args: None,
            "get_db": lambda: sqlite3.connect(self.db_path), "db_lock": self.lock,
            "project_root": folder,
        }

    def insert_event(self, source: str, ts: str = "", user_id: str = "", text: str = "",
                     channel: str = "", type: str = "", thread_ts: str = "", bot_id: str = "",
                     metadata: dict[str, Any] | None = None) -> bool:
        """el's insert_event: one row, metadata as JSON."""
        with self.lock, sqlite3.connect(self.db_path) as conn:
            conn.execute("INSERT INTO events (source, ts, user_id, text, channel, type, "
                         "thread_ts, bot_id, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (source, ts, user_id, text, channel, type, thread_ts, bot_id,
                          json.dumps(metadata) if metadata else None))
        return True

    def notify_waiters(self) -> None:
        """el wakes its drain's long-poll."""
        self.notified += 1

    def drained(self) -> list[dict[str, Any]]:
        """The events as el's drain hands them out (user_id renamed user)."""
        with self.lock, sqlite3.connect(self.db_path) as conn:
            rows = conn.execute("SELECT source, type, user_id, text, channel, metadata "
                                "FROM events ORDER BY id").fetchall()
        return [{"source": s, "type": t, "user": u, "text": x, "channel": c,
                 "metadata": json.loads(m) if m else None} for s, t, u, x, c, m in rows]


class Request:
    """What el's handler offers a plugin's route: _read_body, _send_json, headers."""

    def __init__(self, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.body, self.headers = body, headers or {}
        self.status: int | None = None
        self.sent = b""

    def _read_body(self) -> bytes:
        return self.body

    def _send_json(self, data: object, status: int = 200) -> None:
        self.status, self.sent = status, json.dumps(data).encode()


def load_plugin(el: FakeEl, environ: dict[str, str]) -> None:
    """Import sidecar/plugin.py as el's sidecar does and call register(api)."""
    spec = importlib.util.spec_from_file_location("elipc", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with mock.patch.dict(os.environ, environ, clear=True), mock.patch("sys.stderr"):
        module.register(el.api)


class SidecarCase(SynchronousTestCase):
    environ: dict[str, str] = {}

    def setUp(self) -> None:
        """A project folder with el's database, elipc's database, and the plugin loaded."""
        self.dir = temp_dir(self)
        self.db = os.path.join(self.dir, "ipc.db")
        self.el = FakeEl(self.dir)
        load_plugin(self.el, {"IPC_DB_PATH": self.db, "HOME": self.dir, **self.environ})

    def post(self, path: str, body: object) -> Request:
        """POST `body` (JSON unless bytes) to a plugin route."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = Request(raw)
        self.el.routes[("POST", path)](req)
        return req

    def get(self, path: str, headers: dict[str, str] | None = None, **params: str) -> Request:
        """GET a plugin route with unquoted `params`, as el parses them."""
        req = Request(headers=headers)
        self.el.routes[("GET", path)](req, params)
        return req

    def cli(self, *args: str) -> CliResult:
        """`elipc ARGS` on the same database, in process."""
        result = run_cli(self.db, *args, cwd=self.dir)
        self.assertEqual(result.code, 0, result.err)
        return result

    def secure(self) -> str:
        """Seed operator op and register agent herald; return herald's key file."""
        self.cli("seed", "op", "--out", "op")
        self.cli("keygen", "--out", "herald")
        self.cli("register", "herald", "--pubkey", "herald.pub", "--as", "op", "--key", "op.key")
        return os.path.join(self.dir, "herald.key")


class RouteTests(SidecarCase):
    def test_routes(self) -> None:
        """Exactly el-ipc's routes are registered; no follower without IPC_AGENT/CHANNELS."""
        self.assertEqual(set(self.el.routes), {
            ("POST", "/ipc/send"), ("POST", "/ipc/register"), ("GET", "/ipc/messages"),
            ("GET", "/ipc/agents"), ("GET", "/ipc/channels"),
            ("GET", "/.well-known/agent-card.json")})
        self.assertEqual(self.el.pollers, [])

    def test_send_shares_the_queue(self) -> None:
        """A send answers el-ipc's bytes, lands in elipc's database (the CLI reads it) and is
        a drain event of el-ipc's shape."""
        req = self.post("/ipc/send", {"channel": "c", "sender": "bob", "content": "hi"})
        self.assertEqual((req.status, req.sent), (200, b'{"ok": true, "id": 1}'))
        self.assertEqual([m["content"] for m in self.cli("read", "c", "alice").json()], ["hi"])
        self.assertEqual(self.el.drained(), [{
            "source": "ipc", "type": "ipc_message", "user": "bob", "text": "hi",
            "channel": "c", "metadata": {"sender": "bob", "channel": "c", "message_id": 1}}])
        self.assertEqual(self.el.notified, 1)

    def test_send_errors(self) -> None:
        """Bad bodies get el-ipc's errors, and nothing is stored."""
        for body, sent in (
                (b"{nope", b'{"error": "invalid json"}'),
                (b"[1]", b'{"error": "invalid json"}'),
                ({"channel": "c", "sender": "bob"},
                 b'{"error": "channel, sender, and content required"}'),
                ({"channel": "c", "sender": "b\x01", "content": "x"},
                 b'{"error": "sender must not contain control characters"}'),
                ({"channel": "c", "sender": "bob", "content": 5},
                 b'{"error": "content must be a string"}')):
            req = self.post("/ipc/send", body)
            self.assertEqual((req.status, req.sent), (400, sent), body)
        self.assertEqual(self.cli("channels").json(), [])

    def test_messages(self) -> None:
        """GET /ipc/messages: el-ipc's shape; with agent the watermark moves (shared with the
        CLI); with after_id, from there; without agent, history moving nothing."""
        for content in ("one", "two"):
            self.cli("send", "c", "bob", content)
        req = self.get("/ipc/messages", channel="c", agent="alice")
        self.assertEqual(req.status, 200)
        sent = json.loads(req.sent)
        self.assertEqual(req.sent, json.dumps([
            {"id": 1, "sender": "bob", "content": "one", "timestamp": sent[0]["timestamp"]},
            {"id": 2, "sender": "bob", "content": "two", "timestamp": sent[1]["timestamp"]},
        ]).encode())
        self.assertEqual(self.cli("read", "c", "alice").json(), [])
        self.assertEqual(self.get("/ipc/messages", channel="c", agent="alice").sent, b"[]")
        self.assertEqual(len(json.loads(self.get("/ipc/messages", channel="c").sent)), 2)
        after = json.loads(self.get("/ipc/messages", channel="c", after_id="1").sent)
        self.assertEqual([m["id"] for m in after], [2])
        req = self.get("/ipc/messages")
        self.assertEqual((req.status, req.sent), (400, b'{"error": "channel param required"}'))
        self.assertEqual(self.get("/ipc/messages", channel="c", after_id="x").status, 400)

    def test_views(self) -> None:
        """agents, channels and the agent card answer what the CLI prints."""
        self.cli("send", "c", "bob", "one")
        self.secure()
        self.assertEqual(json.loads(self.get("/ipc/channels").sent), self.cli("channels").json())
        agents = json.loads(self.get("/ipc/agents").sent)
        self.assertEqual([(a["name"], a["role"]) for a in agents],
                         [("op", "operator"), ("herald", "agent")])
        self.assertTrue(all(a["did"].startswith("did:key:z") for a in agents))
        self.assertEqual(json.loads(self.get("/.well-known/agent-card.json").sent),
                         self.cli("agent-card").json())


class SecureTests(SidecarCase):
    def setUp(self) -> None:
        """Secure mode: operator op, agent herald."""
        super().setUp()
        self.key = self.secure()

    def alerts(self) -> list[dict[str, Any]]:
        """The security_alert events drained so far."""
        return [e for e in self.el.drained() if e["type"] == "security_alert"]

    def test_refusals_are_el_ipc_s(self) -> None:
        """Unsigned, unknown and forged sends get el-ipc's 403s and security alerts; nothing
        is stored."""
        forged = identity.sign(identity.load_private_key(self.key),
                               identity.legacy_send_payload("c", "herald", "other"))
        for body, error, alert in (
                ({"sender": "herald"}, "signature required (secure mode active)",
                 "unsigned_message: sender=herald, channel=c — message sent without signature "
                 "in secure mode"),
                ({"sender": "mallory", "signature": forged}, "unknown sender: mallory",
                 "unknown_sender: sender=mallory, channel=c — sender not registered in agent "
                 "registry"),
                ({"sender": "herald", "signature": forged}, "invalid signature",
                 "invalid_signature: sender=herald, channel=c — signature verification "
                 "failed")):
            req = self.post("/ipc/send", {"channel": "c", "content": "hi", **body})
            self.assertEqual((req.status, req.sent), (403, json.dumps({"error": error}).encode()))
            self.assertEqual(self.alerts()[-1]["text"], f"[SECURITY] {alert}")
        self.assertEqual([a["metadata"]["alert_type"] for a in self.alerts()],
                         ["unsigned_message", "unknown_sender", "invalid_signature"])
        self.assertEqual(self.cli("history", "c").json(), [])
        recorded = [json.loads(m["content"])["kind"]
                    for m in self.cli("read", "elipc/security", "op").json()]
        self.assertEqual(recorded, ["signature_required", "unknown_sender", "invalid_signature"])

    def test_signed_send(self) -> None:
        """el-ipc's signature (over channel, sender, content) is accepted, as are elipc/2's
        three fields, each marked signed."""
        key = identity.load_private_key(self.key)
        legacy = identity.sign(key, identity.legacy_send_payload("c", "herald", "old"))
        self.assertEqual(self.post("/ipc/send", {"channel": "c", "sender": "herald",
                                                 "content": "old", "signature": legacy}).sent,
                         b'{"ok": true, "id": 1}')
        signed = identity.sign_send(key, "c", "herald", "new", int(time.time()))
        req = self.post("/ipc/send", {"channel": "c", "sender": "herald", "content": "new",
                                      "signature": signed.signature,
                                      "timestamp": signed.timestamp, "nonce": signed.nonce})
        self.assertEqual(req.status, 200, req.sent)
        got = json.loads(self.get("/ipc/messages", channel="c").sent)
        self.assertEqual([(m["content"], m.get("signed")) for m in got],
                         [("old", True), ("new", True)])

    def test_reads_are_signed(self) -> None:
        """Moving an agent's watermark takes its read signature, as on the server."""
        self.cli("send", "c", "op", "x", "--key", "op.key")
        req = self.get("/ipc/messages", channel="c", agent="herald")
        self.assertEqual(req.status, 401)
        self.assertIn("signed read required", json.loads(req.sent)["error"])
        now, nonce = int(time.time()), identity.new_nonce()
        signature = identity.sign(identity.load_private_key(self.key),
                                  identity.read_payload("c", "herald", now, nonce))
        headers = {"X-Elipc-Timestamp": str(now), "X-Elipc-Nonce": nonce,
                   "X-Elipc-Signature": signature}
        req = self.get("/ipc/messages", headers=headers, channel="c", agent="herald")
        self.assertEqual([m["content"] for m in json.loads(req.sent)], ["x"])
        self.assertEqual(self.get("/ipc/messages", channel="elipc/security").status, 403)

    def test_register(self) -> None:
        """A private key is refused (400, an alert, never stored); an operator's local
        signature registers; nothing else does in secure mode."""
        _, public = identity.generate_keypair()
        req = self.post("/ipc/register", {"name": "scout", "public_key": public,
                                          "operator": "op", "operator_key": "PRIVATE"})
        self.assertEqual(req.status, 400)
        self.assertNotIn(b"PRIVATE", req.sent)
        self.assertEqual(self.alerts()[-1]["metadata"]["alert_type"], "private_key_sent")
        req = self.post("/ipc/register", {"name": "scout", "public_key": public})
        self.assertEqual(req.status, 403)
        now = int(time.time())
        signature = identity.sign(identity.load_private_key(os.path.join(self.dir, "op.key")),
                                  identity.register_payload("scout", "", now, public))
        req = self.post("/ipc/register", {"name": "scout", "public_key": public,
                                          "operator": "op", "timestamp": now,
                                          "operator_signature": signature})
        self.assertEqual(req.sent,
                         b'{"ok": true, "message": "Agent \'scout\' registered by operator '
                         b'\'op\'"}')
        req = self.post("/ipc/register", {"name": "x"})
        self.assertEqual((req.status, req.sent),
                         (400, b'{"error": "name and public_key required"}'))


class OpenRegistrationTests(SidecarCase):
    def test_refused_unless_allowed(self) -> None:
        """On the 0.0.0.0 listener, open-mode registration is refused by default."""
        _, public = identity.generate_keypair()
        req = self.post("/ipc/register", {"name": "scout", "public_key": public})
        self.assertEqual(req.status, 403)
        self.assertIn("IPC_SIDECAR_OPEN_REGISTRATION", json.loads(req.sent)["error"])
        self.assertEqual(self.cli("agents").out.strip(),
                         "No agents registered (open mode — anyone can send)")


class OpenRegistrationAllowedTests(SidecarCase):
    environ = {"IPC_SIDECAR_OPEN_REGISTRATION": "1"}

    def test_allowed(self) -> None:
        """Allowed, it registers an agent (el-ipc's answer), never an operator."""
        _, public = identity.generate_keypair()
        req = self.post("/ipc/register", {"name": "scout", "public_key": public})
        self.assertEqual(req.sent, b'{"ok": true, "message": "Agent \'scout\' registered '
                                   b'(open mode)"}')
        self.assertIn("scout", self.cli("agents").out)
        req = self.post("/ipc/register", {"name": "boss", "public_key": public,
                                          "role": "operator"})
        self.assertEqual(req.status, 400)


class Receiver(BaseHTTPRequestHandler):
    """Another sidecar's /ipc/send (or a redirect, for /away)."""

    received: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/away":
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.received.append(body)
        answer = b'{"ok": true, "id": 7}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


class ForwardTests(SidecarCase):
    def setUp(self) -> None:
        """A receiving sidecar on a free loopback port, allowed as a forward target."""
        self.receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.addCleanup(self.receiver.server_close)
        self.addCleanup(self.receiver.shutdown)
        threading.Thread(target=self.receiver.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{self.receiver.server_address[1]}"
        self.allowed, self.redirecting = f"{base}/ipc/send", f"{base}/away"
        Receiver.received = []
        self.environ = {"IPC_SIDECAR_FORWARD": f"{self.allowed},{self.redirecting}"}
        super().setUp()

    def test_only_allowed_urls(self) -> None:
        """forward_to posts to an allowed URL (el-ipc's answer); any other URL is a 400 with
        nothing stored or sent; a redirect is not followed."""
        body = {"channel": "c", "sender": "bob", "content": "hi"}
        req = self.post("/ipc/send", {**body, "forward_to": "http://169.254.169.254/"})
        self.assertEqual(req.status, 400)
        self.assertEqual(self.cli("channels").json(), [])
        req = self.post("/ipc/send", {**body, "forward_to": self.allowed})
        self.assertEqual(json.loads(req.sent), {"ok": True, "id": 1, "forwarded": {
            "ok": True, "remote_response": {"ok": True, "id": 7}}})
        self.assertEqual(json.loads(Receiver.received[0]),
                         {"channel": "c", "sender": "bob", "content": "hi", "signature": ""})
        req = self.post("/ipc/send", {**body, "forward_to": self.redirecting})
        self.assertFalse(json.loads(req.sent)["forwarded"]["ok"])
        self.assertEqual(len(Receiver.received), 1)


class DrainTests(SidecarCase):
    environ = {"IPC_AGENT": "alice", "IPC_CHANNELS": "review,ops"}

    def sidecar(self) -> Any:
        """The plugin's Sidecar, through the follower it registered."""
        [(name, follow)] = self.el.pollers
        self.assertEqual(name, "elipc")
        return follow.__self__

    def contents(self) -> list[tuple[str, str]]:
        """(channel, text) of each ipc_message event drained so far."""
        return [(e["channel"], e["text"]) for e in self.el.drained()
                if e["type"] == "ipc_message"]

    def test_cli_messages_reach_the_drain(self) -> None:
        """Messages the CLI writes on followed channels become drain events for IPC_AGENT,
        and its watermark moves past them (the CLI's read then has nothing)."""
        self.cli("send", "review", "bob", "look")
        self.cli("send", "elsewhere", "bob", "ignored")
        self.post("/ipc/send", {"channel": "ops", "sender": "bob", "content": "via sidecar"})
        self.assertEqual(self.sidecar().follow_once(self.sidecar().conn()), 2)
        self.assertEqual(self.contents(), [("review", "look"), ("ops", "via sidecar")])
        event = self.el.drained()[0]
        self.assertEqual(event["metadata"], {"sender": "bob", "channel": "review",
                                             "message_id": 1, "agent": "alice"})
        self.assertEqual(self.cli("read", "review", "alice").json(), [])
        self.assertEqual(self.sidecar().follow_once(self.sidecar().conn()), 0)

    def test_at_least_once(self) -> None:
        """If the drain cannot take an event, the watermark stays: it comes next time."""
        self.cli("send", "review", "bob", "kept")
        sidecar = self.sidecar()
        with mock.patch.dict(self.el.api, {"insert_event": mock.Mock(side_effect=OSError)}):
            with self.assertRaises(OSError):
                sidecar.follow_once(sidecar.conn())
        self.assertEqual(sidecar.follow_once(sidecar.conn()), 1)
        self.assertEqual(self.contents(), [("review", "kept")])

    def test_follower_thread(self) -> None:
        """The registered poller, running as el runs it, wakes on another process's commit."""
        sidecar = self.sidecar()
        thread = threading.Thread(target=sidecar.follow, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(sidecar.stopping.set)
        self.cli("send", "ops", "bob", "wake")
        for _ in range(100):
            if self.contents():
                break
            time.sleep(0.05)
        self.assertEqual(self.contents(), [("ops", "wake")])


LOADER = """
import importlib.abc, importlib.util, json, sys
blocked = sys.argv[2].split(",")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("elipc", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
routes = {}
api = {"register_route": lambda m, p, h: routes.__setitem__(p, h),
       "register_poller": lambda n, f: None,
       "insert_event": lambda source, **kw: True, "notify_waiters": lambda: None}
module.register(api)
class Req:
    headers = {}
    def _read_body(self):
        return b'{"channel": "c", "sender": "bob", "content": "hi"}'
    def _send_json(self, data, status=200):
        print(json.dumps([status, data]))
if "/ipc/send" in routes:
    routes["/ipc/send"](Req())
print(json.dumps(sorted(routes)))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "twisted")))
"""


class LoadingTests(SynchronousTestCase):
    def load(self, blocked: str) -> subprocess.CompletedProcess[str]:
        """Load the plugin in a fresh python3 where `blocked` packages cannot be imported."""
        folder = temp_dir(self)
        env = process_env(os.path.join(folder, "ipc.db"), PYTHONPATH="", HOME=folder)
        return subprocess.run([sys.executable, "-c", LOADER, PLUGIN, blocked], env=env,
                              capture_output=True, text=True, timeout=60)

    def test_runs_without_twisted(self) -> None:
        """With Twisted unimportable, the plugin registers and stores a message."""
        done = self.load("twisted,klein,treq")
        self.assertEqual(done.returncode, 0, done.stderr)
        status, sent, twisted = done.stdout.splitlines()
        self.assertEqual(json.loads(status), [200, {"ok": True, "id": 1}])
        self.assertIn("/ipc/send", json.loads(sent))
        self.assertEqual(json.loads(twisted), [])

    def test_says_once_when_elipc_is_missing(self) -> None:
        """With elipc unimportable everywhere, one line on stderr and no routes."""
        done = self.load("elipc")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.splitlines()[0], "[]")
        [line] = done.stderr.splitlines()
        self.assertIn("[elipc] sidecar plugin not loaded", line)
