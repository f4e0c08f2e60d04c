"""The CLI's remote mode (`--server URL`) against the real server: in memory through StubTreq,
and once over a real socket with the real socket transport."""

from __future__ import annotations

import io
import json
import os
import socket
from dataclasses import dataclass
from typing import IO, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock as ReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from elipc.cli.transport import HttpTransport
from elipc.config import MAX_WAIT_TIMEOUT, Settings
from elipc.model import ConfigError
from elipc.protocol import HttpRequest, HttpResponse, TransportFailure
from tests.clirun import TerminalOutput
from tests.helpers import Server, raw_rows, temp_dir

ENV = {"IPC_AGENT_NAME": "Herald", "IPC_AGENT_URL": "https://ipc.example"}


class ServerClock:
    """The CLI's Clock on the server's task.Clock: sleeping moves the server's time on."""

    def __init__(self, clock: ReactorClock) -> None:
        self.clock = clock
        self.slept: list[float] = []

    def time(self) -> float:
        """The server's time (what signatures carry)."""
        return self.clock.seconds()

    def monotonic(self) -> float:
        """The server's time again: deadlines run on it too."""
        return self.clock.seconds()

    def sleep(self, seconds: float) -> None:
        """Let `seconds` of server time pass, at once."""
        self.slept.append(seconds)
        self.clock.advance(seconds)


class InMemoryTransport:
    """The CLI's transport into the real Klein app through StubTreq: each request is served
    at once, a long-poll by letting the server's clock run until it answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.requests: list[HttpRequest] = []

    def fetch(self, request: HttpRequest) -> HttpResponse:
        """Serve `request` in memory and return the server's answer."""
        self.requests.append(request)
        http: Any = self.server.http  # StubTreq: treq's functions, made at run time
        response = self.settled(http.request(request.method, self.server.url(request.target()),
                                             data=request.body, headers=request.headers),
                                request.timeout)
        body = self.settled(http.content(response), request.timeout)
        headers = {name.decode().lower(): b", ".join(values).decode("latin-1")
                   for name, values in response.headers.getAllRawHeaders()}
        return HttpResponse(response.code, headers, body)

    def settled(self, pending: Deferred[Any], timeout: float) -> Any:
        """The result of `pending`, letting up to `timeout` seconds of server time pass."""
        results: list[Any] = []
        pending.addBoth(results.append)
        self.server.http.flush()
        waited = 0.0
        while not results and waited < timeout:
            self.server.clock.advance(1.0)
            self.server.http.flush()
            waited += 1.0
        if not results:
            raise TransportFailure("TimeoutError: no answer in memory")
        if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]


@dataclass
class Run:
    """What one CLI run printed."""

    out: str
    err: str


class RemoteCase(SynchronousTestCase):
    """A server in memory; the remote CLI and the local CLI on its database, side by side."""

    environ: dict[str, str] = ENV

    def setUp(self) -> None:
        self.server = Server(self, **self.environ)
        self.dir = temp_dir(self)
        self.clock = ServerClock(self.server.clock)
        self.transport = InMemoryTransport(self.server)
        self.settings = Settings.load({**self.environ, "IPC_SERVER_URL": self.server.url("")})

    def file(self, name: str) -> str:
        """A path in this test's folder."""
        return os.path.join(self.dir, name)

    def run_remote(self, *argv: str, stdout: IO[str] | None = None) -> tuple[int, Run]:
        """Run `elipc --server URL ARGV` in process over the in-memory transport."""
        from elipc.cli import main

        out, err = stdout or TerminalOutput(), io.StringIO()
        code = main(["--server", self.settings.server_url, *argv], environ=self.environ,
                    stdin=io.BytesIO(), stdout=out, stderr=err, clock=self.clock,
                    transport=self.transport)
        return code, Run(out.getvalue() if isinstance(out, io.StringIO) else "", err.getvalue())

    def remote(self, *argv: str, stdout: IO[str] | None = None) -> Run:
        """Run `elipc --server URL ARGV` in process; fail the test if it fails."""
        code, run = self.run_remote(*argv, stdout=stdout)
        self.assertEqual(code, 0, run.err)
        return run

    def refused(self, *argv: str) -> str:
        """The one line a failing remote run tells its user (exit status 1)."""
        code, run = self.run_remote(*argv)
        self.assertEqual(code, 1, run.out)
        self.assertEqual(len(run.err.splitlines()), 1, run.err)
        self.assertTrue(run.err.startswith("elipc: "), run.err)
        return run.err[len("elipc: "):].rstrip("\n")

    def local(self, *argv: str) -> Run:
        """Run `elipc ARGV` on the server's database file, in process."""
        from elipc.cli import main

        stdout, stderr = TerminalOutput(), io.StringIO()
        code = main(list(argv), environ={**self.environ, "IPC_DB_PATH": self.server.path},
                    stdin=io.BytesIO(), stdout=stdout, stderr=stderr, clock=self.clock)
        self.assertEqual(code, 0, stderr.getvalue())
        return Run(stdout.getvalue(), stderr.getvalue())

    def registered(self, name: str) -> str:
        """Seed operator `op` and register `name` locally; return the path of name's key."""
        self.local("seed", "op", "--out", self.file("op"))
        self.local("keygen", "--out", self.file(name))
        self.local("register", name, "--pubkey", self.file(f"{name}.pub"), "--as", "op",
                   "--key", self.file("op.key"))
        return self.file(f"{name}.key")


class SameOutputTests(RemoteCase):
    """Remote mode prints exactly what local mode prints, command by command."""

    def test_send(self) -> None:
        """send answers the same JSON locally and remotely, ids counting on."""
        self.assertEqual(json.loads(self.local("send", "c", "a", "one").out),
                         {"ok": True, "id": 1, "channel": "c", "signed": False})
        self.assertEqual(json.loads(self.remote("send", "c", "a", "two").out),
                         {"ok": True, "id": 2, "channel": "c", "signed": False})

    def test_read(self) -> None:
        """A remote read prints what a local read prints, and acknowledges what it printed."""
        self.local("send", "c", "a", "one")
        self.remote("send", "c", "a", "two")
        printed = self.remote("read", "c", "r1").out
        self.assertEqual(printed, self.local("read", "c", "r2").out)
        self.assertEqual([m["content"] for m in json.loads(printed)], ["one", "two"])
        self.assertEqual(self.remote("read", "c", "r1").out, "[]\n")

    def test_read_verify(self) -> None:
        """read --verify marks messages the same way: unknown senders unverified, a
        registered sender's signed message verified."""
        self.local("send", "c", "a", "plain")
        self.assertEqual(self.remote("read", "c", "r1", "--verify").out,
                         self.local("read", "c", "r2", "--verify").out)
        key = self.registered("herald")
        self.remote("send", "c", "herald", "signed", "--key", key)
        printed = self.remote("read", "c", "herald", "--verify", "--key", key).out
        self.assertEqual(printed, self.local("read", "c", "r3", "--verify").out)
        self.assertEqual([(m["content"], m["verified"]) for m in json.loads(printed)],
                         [("plain", False), ("signed", True)])

    def test_views(self) -> None:
        """channels, history, agent-card and agents print the same remotely and locally."""
        for content in ("one", "two", "three"):
            self.local("send", "c", "a", content)
        self.registered("herald")
        for command in (("channels",), ("history", "c", "--after-id", "1"),
                        ("agent-card",), ("agents",)):
            self.assertEqual(self.remote(*command), self.local(*command), command)
        history = json.loads(self.remote("history", "c", "--after-id", "1").out)
        self.assertEqual([m["content"] for m in history], ["two", "three"])
        self.assertEqual(json.loads(self.remote("agent-card").out)["name"], "Herald")

    def test_more_waiting(self) -> None:
        """A full page says on stderr that more is waiting, for read and history alike."""
        for content in ("one", "two"):
            self.local("send", "c", "a", content)
        for remote_command, local_command in (
                (("read", "c", "r1", "--limit", "1"), ("read", "c", "r2", "--limit", "1")),
                (("history", "c", "--limit", "1"), ("history", "c", "--limit", "1"))):
            remote, local = self.remote(*remote_command), self.local(*local_command)
            self.assertEqual(remote, local, remote_command)
            self.assertEqual(len(json.loads(remote.out)), 1)
            self.assertIn("more messages are waiting on c", remote.err)

    def test_register(self) -> None:
        """register signs locally with --key and answers as the local command does."""
        self.local("seed", "op", "--out", self.file("op"))
        for name in ("k1", "k2"):
            self.local("keygen", "--out", self.file(name))
        by_local = self.local("register", "x1", "--pubkey", self.file("k1.pub"), "--as", "op",
                              "--key", self.file("op.key")).out
        by_remote = self.remote("register", "x2", "--pubkey", self.file("k2.pub"), "--as",
                                "op", "--key", self.file("op.key")).out
        self.assertEqual(by_remote, by_local.replace("x1", "x2"))
        self.assertEqual(json.loads(by_remote)["message"],
                         "Agent 'x2' registered by operator 'op'")
        self.assertEqual(self.remote("agents"), self.local("agents"))
        self.assertIn("x2", self.remote("agents").out)


class RemoteBehaviourTests(RemoteCase):
    """What only remote mode does: sign requests, poll long, acknowledge late, fail clearly."""

    def test_signed_send_and_read(self) -> None:
        """In secure mode the remote CLI signs sends and reads with --key; unsigned, the
        server's refusal is the line printed."""
        key = self.registered("herald")
        self.assertTrue(json.loads(self.remote("send", "c", "herald", "hi", "--key",
                                               key).out)["signed"])
        self.assertIn("signed read required", self.refused("read", "c", "herald"))
        self.assertEqual(self.refused("send", "c", "herald", "unsigned"),
                         "signature required (secure mode active)")
        messages = json.loads(self.remote("read", "c", "herald", "--key", key).out)
        self.assertEqual([m["content"] for m in messages], ["hi"])

    def test_acknowledges_only_after_printing(self) -> None:
        """A reader whose output fails sends no ack: the messages come again."""
        self.local("send", "c", "a", "precious")

        class Broken(io.StringIO):
            def write(self, text: str) -> int:
                """Fail as a pipe whose reader died."""
                raise BrokenPipeError("the reader went away")

        code, _ = self.run_remote("read", "c", "r", stdout=Broken())
        self.assertEqual(code, 1)
        self.assertNotIn("/ack", [r.path for r in self.transport.requests])
        self.assertIn("precious", self.remote("read", "c", "r").out)
        self.assertEqual([r.path for r in self.transport.requests][-1], "/ack")

    def test_wait_spans_long_polls(self) -> None:
        """read --wait longer than the server's longest poll asks again until --timeout."""
        start = self.server.clock.seconds()
        self.assertEqual(self.remote("read", "c", "r", "--wait", "--timeout", "700").out,
                         "[]\n")
        waits = [dict(r.query)["timeout"] for r in self.transport.requests]
        self.assertEqual(waits, [f"{MAX_WAIT_TIMEOUT:g}", f"{MAX_WAIT_TIMEOUT:g}", "100"])
        self.assertGreaterEqual(self.server.clock.seconds() - start, 700)

    def test_wait_returns_the_first_message(self) -> None:
        """read --wait prints a message sent while it waits, and acknowledges it."""
        original = self.transport.fetch

        def fetch(request: HttpRequest) -> HttpResponse:
            """Have a local send commit 50 s into the first long-poll."""
            if request.path == "/messages" and len(self.transport.requests) == 1:
                self.server.clock.callLater(50, self.local, "send", "c", "a", "late")
            return original(request)

        self.transport.fetch = fetch  # type: ignore[method-assign]  # a hook, not a mock
        printed = json.loads(self.remote("read", "c", "r", "--wait", "--timeout", "600").out)
        self.assertEqual([m["content"] for m in printed], ["late"])
        self.assertEqual(raw_rows(self.server.path, "SELECT last_id FROM watermarks "
                                                    "WHERE agent = 'r'"), [(1,)])

    def test_local_only_commands(self) -> None:
        """seed and prune refuse remote mode in one line naming the fix."""
        for argv in (("seed", "x"), ("prune", "--older-than", "7d")):
            message = self.refused(*argv)
            self.assertIn("local database only", message)
            self.assertIn("unset --server", message)
        self.assertEqual(self.transport.requests, [])

    def test_unreachable_server(self) -> None:
        """A server nobody listens on is one line naming it, after the retries' backoff."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
        self.settings = Settings.load({"IPC_SERVER_URL": url})
        self.transport = HttpTransport(url)  # type: ignore[assignment]  # the real one
        message = self.refused("channels")
        self.assertTrue(message.startswith(f"cannot reach {url}: GET /channels failed after "
                                           "7 tries: ConnectionRefusedError"), message)
        self.assertEqual(len(self.clock.slept), 6)

    def test_api_key(self) -> None:
        """The bearer key from the settings is sent; without it the server's 401 is the line."""
        server = Server(self, IPC_API_KEY="s3cret")
        self.transport = InMemoryTransport(server)
        self.clock = ServerClock(server.clock)
        self.environ = {"IPC_API_KEY": "s3cret"}
        self.assertEqual(self.remote("channels").out, "[]\n")
        self.environ = {}
        self.assertEqual(self.refused("channels"), "unauthorized")


class HttpTransportTests(SynchronousTestCase):
    """The stdlib transport on its own."""

    def test_urls(self) -> None:
        """http and https URLs, with a port and a path prefix, are understood; others refused."""
        plain = HttpTransport("http://127.0.0.1:9876")
        self.assertEqual((plain.secure, plain.host, plain.port, plain.prefix),
                         (False, "127.0.0.1", 9876, ""))
        behind = HttpTransport("https://ipc.example/elipc/")
        self.assertEqual((behind.secure, behind.host, behind.port, behind.prefix),
                         (True, "ipc.example", 443, "/elipc"))
        for bad in ("ftp://ipc.example", "ipc.example:9876", "http://"):
            self.assertRaises(ConfigError, HttpTransport, bad)

    def test_refused_is_a_transport_failure(self) -> None:
        """A refused connection is a TransportFailure, never an OSError."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            transport = HttpTransport(f"http://127.0.0.1:{s.getsockname()[1]}")
        error = self.assertRaises(TransportFailure, transport.fetch, HttpRequest("GET", "/"))
        self.assertIn("ConnectionRefusedError", str(error))


class CannedServer:
    """A socket on 127.0.0.1 that answers each request it reads with the next canned reply
    (a proxy's way of answering: chunked, up to the close, after a 100 Continue)."""

    def __init__(self, case: SynchronousTestCase, *replies: bytes) -> None:
        import threading

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.requests: list[bytes] = []
        self.replies = list(replies)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        case.addCleanup(self.listener.close)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/base"

    def serve(self) -> None:
        while self.replies:
            connection, _ = self.listener.accept()
            with connection:
                while self.replies:
                    request = connection.recv(65536)
                    if not request:
                        break
                    self.requests.append(request)
                    reply = self.replies.pop(0)
                    connection.sendall(reply)
                    if b"Connection: close" in reply or b"Content-Length" not in reply \
                            and b"chunked" not in reply:
                        break


class HttpFramingTests(SynchronousTestCase):
    """The socket transport reads every framing an HTTP/1.1 server or proxy may answer."""

    def test_framings_and_keep_alive(self) -> None:
        """Content-Length, chunked (with a trailer) and 100 Continue on one kept-alive
        connection; then a body that runs to the close, on a new one."""
        server = CannedServer(
            self,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Elipc-More: true\r\n\r\n[]",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\n[1,\r\n2;ext=1\r\n2]\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n<html>bad</html>",
        )
        transport = HttpTransport(server.url)
        self.addCleanup(transport.close)
        first = transport.fetch(HttpRequest("GET", "/messages", (("channel", "c"),)))
        self.assertEqual((first.status, first.headers["x-elipc-more"], first.body),
                         (200, "true", b"[]"))
        chunked = transport.fetch(HttpRequest("GET", "/x"))
        self.assertEqual((chunked.status, chunked.body), (200, b"[1,2]"))
        created = transport.fetch(HttpRequest("POST", "/send", (), {}, b"{}"))
        self.assertEqual((created.status, created.body), (201, b""))
        self.assertEqual(transport.opened, 1)
        closing = transport.fetch(HttpRequest("GET", "/y"))
        self.assertEqual((closing.status, closing.body), (502, b"<html>bad</html>"))
        self.assertTrue(server.requests[0].startswith(b"GET /base/messages?channel=c HTTP/1.1"))
        self.assertIn(b"Content-Length: 2\r\n\r\n{}", server.requests[2])

    def test_garbage_is_a_transport_failure(self) -> None:
        """An answer that is not HTTP, or stops mid-body, is a TransportFailure."""
        for reply in (b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n[]"):
            server = CannedServer(self, reply)
            transport = HttpTransport(server.url)
            self.assertRaises(TransportFailure, transport.fetch, HttpRequest("GET", "/"))
            transport.close()


class SocketTests(TestCase):
    """The socket transport over a real socket to the real server listening in this process."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.server = Server(self, **ENV)
        # Any: the global reactor is typed as a module, and zope methods confuse mypy.
        port: Any = cast(Any, reactor).listenTCP(0, self.server.site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    def cli(self, *argv: str) -> str:
        """Run the remote CLI on its default transport (blocking: call it in a thread)."""
        from elipc.cli import main

        stdout, stderr = io.StringIO(), io.StringIO()
        code = main(["--server", self.url, *argv], environ={}, stdin=io.BytesIO(),
                    stdout=stdout, stderr=stderr)
        assert code == 0, stderr.getvalue()
        return stdout.getvalue()

    def session(self) -> tuple[list[str], int]:
        """send, read, read again and history; and how many connections two requests took."""
        printed = [self.cli("send", "c", "a", "over tcp"), self.cli("read", "c", "r"),
                   self.cli("read", "c", "r"), self.cli("history", "c")]
        transport = HttpTransport(self.url)
        try:
            for _ in range(2):
                self.assertEqual(transport.fetch(HttpRequest("GET", "/health")).status, 200)
            return printed, transport.opened
        finally:
            transport.close()

    async def test_over_a_socket(self) -> None:
        """The stdlib transport sends, reads, acknowledges and keeps its connection alive."""
        printed, connections = await deferToThread(self.session)
        sent, first, again, history = printed
        self.assertEqual(json.loads(sent), {"ok": True, "id": 1, "channel": "c",
                                            "signed": False})
        self.assertEqual([m["content"] for m in json.loads(first)], ["over tcp"])
        self.assertEqual(again, "[]\n")
        self.assertEqual(json.loads(history), json.loads(first))
        self.assertEqual(connections, 1)
