"""Whatever a client sends, the answer is JSON and never a 5xx; slow or large requests are cut
off within their bounds. Raw bytes into elipc's own HTTP channel, time on a task.Clock."""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from elipc import store
from elipc.server.site import BODY_TIMEOUT_S, HEAD_TIMEOUT_S
from tests.helpers import Keyholder, Server

SEED = 20261128
ROUTES = ["/send", "/ack", "/register", "/messages", "/channels", "/agents", "/health",
          "/.well-known/agent-card.json"]


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every HTTP response in `raw`: (status, headers with lower-case names, body)."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        if status >= 200:  # 100 Continue is an interim answer, not the response
            found.append((status, headers, rest[:length]))
        raw = rest[length:]
    return found


class RawCase(SynchronousTestCase):
    """A real server in memory; each exchange is one fresh connection fed raw bytes."""

    environ: dict[str, str] = {}

    def setUp(self) -> None:
        self.server = Server(self, **self.environ)

    def connect(self) -> tuple[Any, StringTransport]:
        address = IPv4Address("TCP", "127.0.0.1", 5555)
        protocol = self.server.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, data: bytes, settle: float = 0.0) -> list[tuple[int, dict[str, str], bytes]]:
        """Feed `data`, let up to `settle` seconds pass (a connection the server closes is
        lost at once, as a real one would be), and return what was answered."""
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        waited = 0.0
        while not transport.disconnecting and waited < settle:
            self.server.clock.advance(1)
            waited += 1
        answered = responses(transport.value())
        protocol.connectionLost(Failure(ConnectionDone()))
        return answered

    def assert_json_answers(self, answered: list[tuple[int, dict[str, str], bytes]],
                            request: bytes, head_only: bool = False) -> None:
        """At least one answer; none a 5xx; every one JSON (a 4xx: {"error": text})."""
        self.assertTrue(answered, request)
        for status, headers, body in answered:
            self.assertLess(status, 500, request)
            self.assertEqual(headers.get("content-type"), "application/json", request)
            if head_only:
                continue
            value = json.loads(body)
            if status >= 400:
                self.assertIsInstance(value.get("error"), str, request)


class HostAndTargetTests(RawCase):
    """Property tests: no Host header and no request target reaches Twisted's error page."""

    def test_hosts(self) -> None:
        """Hosts IDNA refuses (long or empty labels, odd characters) are a JSON 400."""
        rng = random.Random(SEED)
        alphabet = "abcxyz019-._:[]@ \t\u00e9\u4e2d\u200b%"
        hosts = [b"a" * 64 + b".example", b"a..b", b".a", b"a.", b"..", b"", b"[::1]",
                 b"127.0.0.1:9876", b"\xff\xfe", "xn--\u00e9".encode()]
        for _ in range(150):
            labels = ["".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 63, 64,
                                                                              70])))
                      for _ in range(rng.randint(1, 4))]
            hosts.append(".".join(labels).encode("utf-8"))
        for host in hosts:
            request = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
            answered = self.exchange(request)
            self.assert_json_answers(answered, request)
            self.assertIn(answered[0][0], (200, 400), request)

    def test_targets(self) -> None:
        """`*`, absolute URLs, odd encodings and stray bytes as targets are answered in JSON."""
        rng = random.Random(SEED + 1)
        targets = [b"*", b"http://x/health", b"health", b"/%", b"/%zz", b"/%FF", b"//health",
                   b"/health?%FF=1", b"/messages?channel=%00&agent=a", b"/..%2F..%2Fetc",
                   b"/health#frag", b"/health?&&&", b"/health?a"]
        for _ in range(150):
            route = rng.choice(ROUTES + ["", "*", "/x"]).encode()
            noise = bytes(rng.choice(b"/?&=%#.;:~*!az09\x80\xff") for _ in range(rng.randint(0, 12)))
            targets.append(route + noise)
        for target in targets:
            for method in (b"GET", b"OPTIONS", b"POST"):
                request = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                self.assert_json_answers(self.exchange(request), request)

    def test_star(self) -> None:
        """OPTIONS * lists the methods; any other method on * is a JSON 405."""
        [(status, headers, body)] = self.exchange(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, json.loads(body)), (200, {"allow": ["GET", "POST", "OPTIONS"]}))
        [(status, headers, body)] = self.exchange(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, headers["allow"]), (405, "OPTIONS"))
        self.assertIn("OPTIONS", json.loads(body)["error"])


class BoundsTests(RawCase):
    """Every way a request can be slow or large has a bound in bytes and in time."""

    def test_chunked_body_cut_off_at_the_limit(self) -> None:
        """A chunked body is refused with 413 the moment it passes the limit, before it ends,
        and nothing more is read from that connection."""
        self.server.site.max_body_bytes = 100
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              b"\r\n80\r\n" + b"x" * 101)
        [(status, _, body)] = responses(transport.value())
        self.assertEqual((status, json.loads(body)),
                         (413, {"error": "request body is over the limit of 100 bytes"}))
        self.assertTrue(transport.disconnecting)
        written = len(transport.value())
        protocol.dataReceived(b"x" * 10_000 + b"\r\n0\r\n\r\n")
        self.assertEqual(len(transport.value()), written)

    def trickle(self, start: bytes, byte: bytes, bound: float) -> tuple[str, StringTransport]:
        """Send `start`, then `byte` every second until `bound` has passed: nothing may be
        answered before, a 408 must be at `bound`; return its error and the transport."""
        protocol, transport = self.connect()
        protocol.dataReceived(start)
        for _ in range(int(bound) - 1):
            self.server.clock.advance(1)
            protocol.dataReceived(byte)
        self.assertEqual(transport.value(), b"")
        self.server.clock.advance(1)
        [(status, _, body)] = responses(transport.value())
        self.assertEqual(status, 408)
        return json.loads(body)["error"], transport

    def test_trickled_head_times_out(self) -> None:
        """A request head still incomplete HEAD_TIMEOUT_S after its first byte is a 408,
        however steadily its bytes trickle in."""
        error, transport = self.trickle(b"GET /health HTTP/1.1\r\nX-Slow: ", b"a",
                                        HEAD_TIMEOUT_S)
        self.assertIn(f"within {HEAD_TIMEOUT_S:g} s", error)
        self.assertTrue(transport.disconnecting)

    def test_slow_body_times_out(self) -> None:
        """A body still incomplete BODY_TIMEOUT_S after its head is a 408, however steadily
        its bytes trickle in."""
        error, _ = self.trickle(
            b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{", b" ",
            BODY_TIMEOUT_S)
        self.assertIn("request body", error)

    def test_keep_alive_requests_each_get_their_own_deadline(self) -> None:
        """A connection that sends request after request within the bounds is never cut."""
        protocol, transport = self.connect()
        for _ in range(5):
            protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            self.server.clock.advance(HEAD_TIMEOUT_S - 1)
        self.assertEqual([status for status, _, _ in responses(transport.value())], [200] * 5)
        self.assertFalse(transport.disconnecting)


class FuzzTests(RawCase):
    """A seeded raw-request fuzzer over every route: methods, targets, headers, bodies and
    encodings; no answer is a 5xx, every one is JSON, every 4xx says what was wrong."""

    COUNT = 600

    def setUp(self) -> None:
        super().setUp()
        self.keyholder = FuzzKeyholder("a")

    def body(self, rng: random.Random, keyholder: Keyholder) -> bytes:
        now = int(self.server.clock.seconds())
        choices: list[Any] = [
            {"channel": "c", "sender": "a", "content": "hi"},
            {"channel": "c", "agent": "a", "up_to": rng.choice([0, 1, -1, 2**70, "1", None])},
            keyholder.send_body("c", "signed", now),
            keyholder.registration("n", keyholder.public, now),
            {"channel": rng.choice(["", "elipc/x", "c" * 300, "\u0000", 5]), "sender": "a",
             "content": rng.choice(["x", "", None, ["x"], "\ud800"])},
            {"signature": "A" * 86 + "==", "timestamp": rng.choice(["x", -1, 1.5, 10**13]),
             "nonce": rng.choice(["short", "n" * 65, "ok-nonce-123"])},
            [1, 2], "text", 12, None, {"a": {"b": {"c": [None] * 3}}},
            {"idempotency_key": rng.choice(["", "k", "k" * 300, 7])},
        ]
        value = rng.choice(choices)
        text = json.dumps(value)
        encoding = rng.choice(["utf-8"] * 6 + ["latin-1", "utf-16", "raw", "cut"])
        if encoding == "raw":
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        if encoding == "cut":
            return text.encode()[: rng.randint(0, len(text))]
        return text.encode(encoding, "replace")

    def headers(self, rng: random.Random, body: bytes, keyholder: Keyholder) -> list[bytes]:
        headers = [b"Host: " + rng.choice([b"x", b"127.0.0.1:9876"] * 4 + [b"a..b", b"\xff"])]
        framing = rng.choice(["length"] * 6 + ["chunked", "none", "both", "wrong"])
        if framing == "length":
            headers.append(b"Content-Length: %d" % len(body))
        elif framing == "both":
            headers += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
        elif framing == "wrong":
            headers.append(b"Content-Length: " + rng.choice([b"-1", b"abc", b"1e3", b""]))
        elif framing == "chunked":
            headers.append(b"Transfer-Encoding: chunked")
        extra = [b"Content-Type: " + rng.choice([b"application/json", b"text/plain",
                                                 b"application/x-www-form-urlencoded"]),
                 b"Idempotency-Key: " + rng.choice([b"k-1", b"", b"\xff\xfe", b"k" * 300]),
                 b"Authorization: Bearer " + rng.choice([b"x", b"", b"\x00"]),
                 b"Accept-Encoding: gzip", b"Expect: 100-continue"]
        extra += [b"%s: %s" % (name, value) for name, value in
                  keyholder.read_headers_raw("c", int(self.server.clock.seconds()))]
        extra += [b"X-Elipc-Nonce: " + rng.choice([b"x", b"n" * 80, b"\xff" * 10])]
        headers += rng.sample(extra, rng.randint(0, len(extra)))
        return headers

    def target(self, rng: random.Random) -> bytes:
        route = rng.choice(ROUTES)
        if rng.random() < 0.5:  # well-formed for the route, so requests get past the checks
            params = {"/messages": ["channel=c", "agent=a"], "/health": []}.get(route, [])
            return (route + ("?" + "&".join(params) if params else "")).encode()
        params = rng.sample(["channel=c", "agent=a", "wait=true", "timeout=1", "linger=0.1",
                             "limit=5", "ack=manual", "after_id=0", "wait=maybe",
                             "timeout=-1", "limit=0", "ack=x", "after_id=1e9", "channel=",
                             "agent=%FF", "bogus=1", "channel=c"], rng.randint(0, 5))
        return (route + ("?" + "&".join(params) if params else "")).encode()

    def test_fuzz_every_route(self) -> None:
        """COUNT seeded requests, each on its own connection, each answered in JSON < 500."""
        self.fuzz()

    def fuzz(self) -> dict[int, int]:
        """Run the fuzzer; return how often each status was answered."""
        rng = random.Random(SEED + 2)
        keyholder = self.keyholder
        statuses: dict[int, int] = {}
        for _ in range(self.COUNT):
            method = rng.choice([b"GET", b"POST"] * 4 + [b"PUT", b"DELETE", b"PATCH",
                                                         b"OPTIONS", b"HEAD", b"BREW", b"get"])
            body = self.body(rng, keyholder) if rng.random() < 0.8 else b""
            headers = self.headers(rng, body, keyholder)
            framed = body
            if b"Transfer-Encoding: chunked" in headers:
                framed = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
            request = (method + b" " + self.target(rng) + b" HTTP/1.1\r\n"
                       + b"\r\n".join(headers) + b"\r\n\r\n" + framed)
            # Long-polls and unfinished bodies are answered once their time is up.
            answered = self.exchange(request, settle=BODY_TIMEOUT_S + 301)
            self.assert_json_answers(answered, request, head_only=method == b"HEAD")
            for status, _, _ in answered:
                statuses[status] = statuses.get(status, 0) + 1
        # The fuzzer reaches the routes, not only the framing checks.
        self.assertGreater(statuses.get(200, 0), 20, statuses)
        self.assertGreaterEqual(len(statuses), 4, statuses)
        return statuses


class SecureFuzzTests(FuzzTests):
    """The same fuzzer in secure mode: signatures checked, refusals recorded as events."""

    def setUp(self) -> None:
        super().setUp()
        conn = store.open_database(self.server.path)
        store.add_operator(conn, "op", Keyholder("op").public, 1.0)
        store.register_agent(conn, "a", "", self.keyholder.public, "op", 1.0)
        conn.close()

    def test_fuzz_every_route(self) -> None:
        """COUNT seeded requests in secure mode: JSON, < 500, refusals among them."""
        statuses = self.fuzz()
        self.assertTrue({401, 403} & statuses.keys(), statuses)


class FuzzKeyholder(Keyholder):
    """A Keyholder whose read headers come as raw (name, value) bytes."""

    def read_headers_raw(self, channel: str, timestamp: int) -> list[tuple[bytes, bytes]]:
        return [(name.encode(), values[0].encode())
                for name, values in self.read_headers(channel, timestamp).items()]
