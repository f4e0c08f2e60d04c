"""GET /stream: Server-Sent Events over a real loopback socket to the real site, the server's
clock a task.Clock. Automatic and manual delivery, Last-Event-ID, history, several channels,
secure mode, a client that goes away and one that stops reading."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from elipc import identity, store
from tests.helpers import Server

WAIT_S = 10.0
RCVBUF = 16384


class StreamClient:
    """A raw HTTP/1.1 client on a socket, taking events apart as they come (non-blocking)."""

    def __init__(self, port: int, target: str, headers: dict[str, str] | None = None,
                 receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer:  # before connecting, so the window is agreed on with it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
        self.raw = b""  # the head, then (for a 200) the body's first bytes
        self.head: bytes | None = None
        self._chunked = b""  # received, not yet taken out of its chunks
        self._body = b""  # taken out, not yet whole events
        self.parsed: list[dict[str, Any]] = []
        self.comments: list[bytes] = []

    def pump(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 20):
                self.raw += chunk if self.head is None else b""
                self._chunked += chunk
        except BlockingIOError:
            pass
        if self.head is None and b"\r\n\r\n" in self._chunked:
            self.head, _, self._chunked = self._chunked.partition(b"\r\n\r\n")
        if self.head is not None and b"chunked" in self.head.lower():
            self._take_chunks()

    def _take_chunks(self) -> None:
        while b"\r\n" in self._chunked:
            size_line, _, after = self._chunked.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0 or len(after) < size + 2:
                return
            self._body += after[:size]
            self._chunked = after[size + 2:]
        while b"\n\n" in self._body:
            block, _, self._body = self._body.partition(b"\n\n")
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self.parsed.append(json.loads(line[6:]))
                elif line.startswith(b":"):
                    self.comments.append(line)

    def refused(self) -> bool:
        """Whether the whole of a JSON error answer is in."""
        return self.head is not None and self._chunked.endswith(b"}")

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1]) if b"\r\n" in self.raw else 0

    def events(self) -> list[dict[str, Any]]:
        """The data of every whole event so far."""
        return self.parsed

    def close(self) -> None:
        self.sock.close()


class StreamCase(TestCase):
    store = "sqlite"

    def setUp(self) -> None:
        """The in-memory server's site on a loopback port."""
        self.server = Server(self, store=self.store, **self.environ())
        self.port_ = reactor.listenTCP(0, self.server.site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port_.stopListening)
        self.port = self.port_.getHost().port
        self.clients: list[StreamClient] = []
        self.addCleanup(self.close_all)

    def environ(self) -> dict[str, str]:
        # The server's clock stands still: buckets would never refill.
        return {"IPC_RATE_LIMIT": "0"}

    async def close_all(self) -> None:
        for client in self.clients:
            client.close()
        await self.until(lambda: not self.api_streams())

    def api_streams(self) -> set[Any]:
        return self.server.site.streams

    def open(self, target: str, **kwargs: Any) -> StreamClient:
        client = StreamClient(self.port, target, **kwargs)
        self.clients.append(client)
        return client

    async def until(self, condition: Any, client: StreamClient | None = None) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if time.monotonic() > deadline:
                self.fail("timed out" + (f": {len(client.parsed)} events, "
                                         f"{len(client._chunked)} bytes unparsed, "
                                         f"{client._chunked[:80]!r}" if client else ""))
            await deferLater(reactor, 0.01, lambda: None)
            if client is not None:
                client.pump()

    def send(self, channel: str, content: str, sender: str = "a") -> int:
        http = self.server.http
        pending = http.post(self.server.url("/send"), json={"channel": channel, "sender": sender,
                                                            "content": content})
        http.flush()
        response = self.successResultOf(pending)
        body = self.successResultOf(http.content(response))
        assert response.code == 200, body
        return int(json.loads(body)["id"])

    def watermark(self, channel: str, agent: str) -> int:
        conn = store.open_database(self.server.path)
        try:
            return store.watermark(conn, channel, agent)
        finally:
            conn.close()

    async def events(self, client: StreamClient, count: int) -> list[dict[str, Any]]:
        await self.until(lambda: len(client.events()) >= count, client)
        return client.events()


class DeliveryTests(StreamCase):
    async def test_automatic(self) -> None:
        """Messages already there and those sent later arrive as events (id, data with the
        channel); the agent's watermark moves past what was written."""
        first = self.send("c", "before")
        client = self.open("/stream?channel=c&agent=r")
        await self.until(lambda: client.status == 200, client)
        self.assertIn(b"text/event-stream", client.head or b"")
        second = self.send("c", "after")
        events = await self.events(client, 2)
        self.assertEqual([(e["id"], e["channel"], e["content"]) for e in events],
                         [(first, "c", "before"), (second, "c", "after")])
        self.assertEqual(self.watermark("c", "r"), second)

    async def test_manual_with_ack_and_last_event_id(self) -> None:
        """ack=manual moves nothing as events go; POST /ack moves the watermark; a
        reconnection with Last-Event-ID acknowledges up to it and resumes after."""
        ids = [self.send("c", f"m{i}") for i in range(3)]
        client = self.open("/stream?channel=c&agent=r&ack=manual")
        await self.events(client, 3)
        self.assertEqual(self.watermark("c", "r"), 0)
        http = self.server.http
        http.post(self.server.url("/ack"), json={"channel": "c", "agent": "r", "up_to": ids[0]})
        http.flush()
        self.assertEqual(self.watermark("c", "r"), ids[0])
        client.close()
        again = self.open("/stream?channel=c&agent=r&ack=manual",
                          headers={"Last-Event-ID": str(ids[1])})
        events = await self.events(again, 1)
        self.assertEqual([e["id"] for e in events], [ids[2]])
        self.assertEqual(self.watermark("c", "r"), ids[1])

    async def test_history_and_several_channels(self) -> None:
        """Without an agent, after_id streams two channels' history live, in id order, and
        moves nothing."""
        ids = [self.send(c, c) for c in ("c", "d", "c")]
        client = self.open(f"/stream?channel=c&channel=d&after_id={ids[0]}")
        self.send("d", "live")
        events = await self.events(client, 3)
        self.assertEqual([(e["channel"], e["content"]) for e in events],
                         [("d", "d"), ("c", "c"), ("d", "live")])
        self.assertEqual(self.watermark("c", "r"), 0)

    async def test_heartbeat(self) -> None:
        """With nothing to say, a comment every 15 s (the server's clock)."""
        client = self.open("/stream?channel=c&agent=r")
        await self.until(lambda: self.api_streams() and client.status == 200, client)
        await self.until(lambda: bool(self.server.broker.waiters), client)
        self.server.clock.advance(15)
        await self.until(lambda: b": keep-alive" in client.comments, client)

    async def test_disconnect(self) -> None:
        """A client that goes away leaves no stream and no waiter behind."""
        client = self.open("/stream?channel=c&agent=r")
        await self.until(lambda: bool(self.server.broker.waiters), client)
        client.close()
        self.clients.remove(client)
        await self.until(lambda: not self.api_streams() and not self.server.broker.waiters)

    async def test_bad_requests(self) -> None:
        """Mistakes are 400s with {"error"}: no channel, ack without agent, after_id with
        one, a bad Last-Event-ID."""
        for target, headers in (("/stream", {}), ("/stream?channel=c&ack=manual", {}),
                                ("/stream?channel=c&agent=r&after_id=1", {}),
                                ("/stream?channel=c&agent=r", {"Last-Event-ID": "x"})):
            client = self.open(target, headers=headers)
            await self.until(client.refused, client)
            self.assertEqual(client.status, 400, target)
            self.assertIn(b'{"error": ', client.raw)

    async def test_slow_reader(self) -> None:
        """A client that stops reading pauses its stream: the server stops reading for it,
        so most of a large backlog stays unread (and undelivered) instead of piling up in
        memory; once the client reads, the rest comes."""
        big = "x" * 20_000
        total = 500
        for i in range(total):
            self.send("c", f"{i}:{big}")
        client = self.open("/stream?channel=c&agent=r", receive_buffer=RCVBUF)
        streams = self.api_streams()
        await self.until(lambda: streams and next(iter(streams)).paused is not None)
        await deferLater(reactor, 0.2, lambda: None)
        held = self.watermark("c", "r")
        # Taken: what fits the kernel's socket buffers, and a page or two of events.
        self.assertLess(held, total / 2)
        await self.until(lambda: len(client.events()) == total, client)
        self.assertEqual(self.watermark("c", "r"), total)


class SecureStreamTests(StreamCase):
    def setUp(self) -> None:
        super().setUp()
        private, public = identity.generate_keypair()
        _, self.agent_public = identity.generate_keypair()
        self.key = identity.parse_private_key(private)
        conn = store.open_database(self.server.path)
        store.add_operator(conn, "op", public, 1.0)
        conn.close()

    def signed(self, channels: list[str], agent: str) -> dict[str, str]:
        now, nonce = int(self.server.clock.seconds()), identity.new_nonce()
        signature = identity.sign(self.key, identity.stream_payload(channels, agent, now, nonce))
        return {"X-Elipc-Timestamp": str(now), "X-Elipc-Nonce": nonce,
                "X-Elipc-Signature": signature}

    async def test_signed(self) -> None:
        """Unsigned: 401. Signed by the agent (an operator here) over all its channels: the
        stream opens; a signature over other channels: 403."""
        unsigned = self.open("/stream?channel=c&agent=op")
        await self.until(unsigned.refused, unsigned)
        self.assertEqual(unsigned.status, 401)
        wrong = self.open("/stream?channel=c&channel=d&agent=op",
                          headers=self.signed(["c"], "op"))
        await self.until(wrong.refused, wrong)
        self.assertEqual(wrong.status, 403)
        client = self.open("/stream?channel=c&channel=d&agent=op",
                           headers=self.signed(["c", "d"], "op"))
        await self.until(lambda: client.status == 200, client)
        sent = self.send_signed("d", "hi")
        self.assertEqual([e["id"] for e in await self.events(client, 1)], [sent])

    def send_signed(self, channel: str, content: str) -> int:
        signed = identity.sign_send(self.key, channel, "op", content,
                                    int(self.server.clock.seconds()))
        http = self.server.http
        pending = http.post(self.server.url("/send"), json={
            "channel": channel, "sender": "op", "content": content,
            "signature": signed.signature, "timestamp": signed.timestamp,
            "nonce": signed.nonce})
        http.flush()
        return int(json.loads(self.successResultOf(http.content(
            self.successResultOf(pending))))["id"])




class DeliveryPostgresTests(DeliveryTests):
    store = "postgresql"
