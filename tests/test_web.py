"""The real Klein app and broker over a real database, in memory through StubTreq and a Clock."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from elipc import identity, store
from tests.helpers import Server, raw_rows


class WebCase(SynchronousTestCase):
    """A fresh server per test, with helpers that return (status, json)."""

    environ: dict[str, str] = {}
    store = "sqlite"

    def setUp(self) -> None:
        self.server = Server(self, store=self.store, **self.environ)
        self.http = self.server.http

    def answer(self, pending: Deferred[Any]) -> tuple[int, Any]:
        self.server.http.flush()
        response = self.successResultOf(pending)
        return response.code, self.successResultOf(self.http.json_content(response))

    def post(self, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.answer(self.http.post(self.server.url(path), data=data,
                                          headers={k.replace("_", "-"): [v]
                                                   for k, v in headers.items()}))

    def get_later(self, path: str, **params: Any) -> Deferred[Any]:
        query = ("?" + urlencode(params)) if params else ""
        return self.http.get(self.server.url(path + query))

    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return self.answer(self.get_later(path, **params))

    def send(self, channel: str = "c", sender: str = "a", content: str = "hi",
             **extra: str) -> int:
        status, body = self.post("/send", {"channel": channel, "sender": sender,
                                           "content": content, **extra})
        self.assertEqual(status, 200, body)
        return int(body["id"])

    def stored(self) -> int:
        """Messages clients stored (security events on elipc/ channels do not count)."""
        return raw_rows(self.server.path, "SELECT COUNT(*) FROM messages "
                                          "WHERE channel NOT LIKE 'elipc/%'")[0][0]


class EndpointTests(WebCase):
    """Each el-ipc endpoint answers el-ipc's JSON shape."""

    def test_send_then_read_once(self) -> None:
        """POST /send answers {ok, id}; GET /messages returns it once per agent."""
        status, body = self.post("/send", {"channel": "c", "sender": "a", "content": "hello"})
        self.assertEqual((status, body), (200, {"ok": True, "id": 1}))
        status, messages = self.get("/messages", channel="c", agent="b")
        self.assertEqual(status, 200)
        self.assertEqual([(m["id"], m["sender"], m["content"]) for m in messages],
                         [(1, "a", "hello")])
        self.assertEqual(set(messages[0]), {"id", "sender", "content", "timestamp"})
        self.assertEqual(self.get("/messages", channel="c", agent="b"), (200, []))
        self.assertEqual(len(self.get("/messages", channel="c", agent="other")[1]), 1)

    def test_channels(self) -> None:
        """GET /channels lists each channel's count and last message time."""
        self.send("x")
        self.send("x")
        status, channels = self.get("/channels")
        self.assertEqual([(c["channel"], c["count"]) for c in channels], [("x", 2)])

    def test_health(self) -> None:
        """GET /health gives status, the agent's pending count and secure mode."""
        self.send("c")
        self.send("c")
        self.assertEqual(self.get("/health"), (200, {
            "status": "ok", "pending": 0, "secure_mode": False, "security_events": {},
            "oldest_id": 1}))
        self.assertEqual(self.get("/health", channel="c", agent="r")[1]["pending"], 2)

    def test_agents_with_public_keys(self) -> None:
        """GET /agents lists each entry's public key and did:key, nothing private."""
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        public = identity.generate_keypair()[1]
        store.add_operator(conn, "op", public, 1.0)
        status, agents = self.get("/agents")
        self.assertEqual(agents, [{"name": "op", "identity": "", "role": "operator",
                                   "registered_by": None, "created_at": 1.0,
                                   "public_key": public, "did": identity.did_key(public),
                                   "fingerprint": identity.key_fingerprint(public)}])
        self.assertNotIn("PRIVATE", json.dumps(agents))

    def test_agent_card(self) -> None:
        """The agent card is served at its well-known path with el-ipc's shape."""
        status, card = self.get("/.well-known/agent-card.json")
        self.assertEqual(status, 200)
        self.assertEqual(card["skills"][0]["id"], "ipc")
        self.assertEqual(card["capabilities"], {"streaming": True, "pushNotifications": False})

    def test_unknown_path_and_method(self) -> None:
        """Unknown paths are JSON 404s; a wrong method is a JSON 405 naming the right one."""
        self.assertEqual(self.get("/nope"), (404, {"error": "not found"}))
        self.assertEqual(self.get("/send")[0], 405)
        self.assertIn("POST", self.get("/send")[1]["error"])


class LongPollTests(WebCase):
    """wait=true holds the request until a send, a timeout, a disconnect or shutdown."""

    def test_send_wakes_waiter(self) -> None:
        """A pending long-poll answers as soon as a message is sent to its channel."""
        pending = self.get_later("/messages", channel="c", agent="r", wait="true")
        self.http.flush()
        self.assertNoResult(pending)
        self.send("other")
        self.http.flush()
        self.assertNoResult(pending)
        self.send("c", content="news")
        status, messages = self.answer(pending)
        self.assertEqual([m["content"] for m in messages], ["news"])

    def test_pending_message_answers_at_once(self) -> None:
        """A long-poll with something unread does not wait."""
        self.send("c")
        self.assertEqual(len(self.get("/messages", channel="c", agent="r", wait="true")[1]), 1)

    def test_default_timeout_answers_empty(self) -> None:
        """After 30 s without a message the long-poll answers []."""
        pending = self.get_later("/messages", channel="c", agent="r", wait="true")
        self.http.flush()
        self.server.clock.advance(29.9)
        self.http.flush()
        self.assertNoResult(pending)
        self.server.clock.advance(0.2)
        self.assertEqual(self.answer(pending), (200, []))
        self.assertEqual(len(self.server.broker.waiters), 0)

    def test_custom_timeout(self) -> None:
        """timeout=S asks for a shorter (or longer) wait."""
        pending = self.get_later("/messages", channel="c", agent="r", wait="true", timeout="120")
        self.http.flush()
        self.server.clock.advance(100)
        self.http.flush()
        self.assertNoResult(pending)
        self.server.clock.advance(21)
        self.assertEqual(self.answer(pending), (200, []))

    def test_disconnect_removes_waiter_and_keeps_watermark(self) -> None:
        """A client that goes away is forgotten at once; its next read gets the message."""
        pending = self.get_later("/messages", channel="c", agent="r", wait="true")
        self.http.flush()
        self.assertEqual(len(self.server.broker.waiters), 1)
        pending.cancel()
        self.http.flush()
        self.failureResultOf(pending)
        self.assertEqual(len(self.server.broker.waiters), 0)
        self.send("c", content="kept")
        self.assertEqual([m["content"] for m in self.get("/messages", channel="c", agent="r")[1]],
                         ["kept"])

    def test_shutdown_answers_waiters(self) -> None:
        """Stopping the broker answers every pending long-poll with [] and holds no waiter."""
        pendings = [self.get_later("/messages", channel=f"c{i}", agent="r", wait="true")
                    for i in range(3)]
        self.http.flush()
        self.server.broker.stopService()
        for pending in pendings:
            self.assertEqual(self.answer(pending), (200, []))
        self.assertEqual(len(self.server.broker.waiters), 0)

    def test_many_waiters_one_channel(self) -> None:
        """Every agent waiting on a channel gets the message; each reads it once."""
        pendings = {agent: self.get_later("/messages", channel="c", agent=agent, wait="true")
                    for agent in ("a", "b", "c")}
        self.http.flush()
        self.send("c", content="all")
        for agent, pending in pendings.items():
            self.assertEqual([m["content"] for m in self.answer(pending)[1]], ["all"], agent)

    def test_linger_gathers_a_burst(self) -> None:
        """With linger, a woken long-poll waits that long and answers the whole burst."""
        pending = self.get_later("/messages", channel="c", agent="r", wait="true", linger="0.5")
        self.http.flush()
        self.send("c", content="one")
        self.http.flush()
        self.assertNoResult(pending)
        self.send("c", content="two")
        self.server.clock.advance(0.5)
        self.assertEqual([m["content"] for m in self.answer(pending)[1]], ["one", "two"])

    def test_linger_when_already_pending(self) -> None:
        """Linger applies when a message is already waiting too."""
        self.send("c", content="one")
        pending = self.get_later("/messages", channel="c", agent="r", wait="true", linger="1")
        self.http.flush()
        self.assertNoResult(pending)
        self.server.clock.advance(1)
        self.assertEqual(len(self.answer(pending)[1]), 1)

    def test_external_commit_wakes_waiter(self) -> None:
        """A message written straight into the file (the CLI) wakes the long-poll on a poll."""
        pending = self.get_later("/messages", channel="c", agent="r", wait="true")
        self.http.flush()
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        store.insert_message(conn, "c", "cli", "from the CLI", "", 1.0)
        self.server.clock.advance(0.01)
        self.assertEqual([m["content"] for m in self.answer(pending)[1]], ["from the CLI"])

    def test_no_polling_while_idle(self) -> None:
        """With nobody waiting, time passing costs no database work."""
        pending = self.get_later("/messages", channel="c", agent="r", wait="true", timeout="1")
        self.http.flush()
        self.server.clock.advance(1)
        self.answer(pending)
        calls = self.server.writer.calls
        self.server.clock.pump([0.01] * 100)
        self.assertEqual(self.server.writer.calls, calls)


class IdempotencyTests(WebCase):
    """A repeated Idempotency-Key stores nothing and answers the first send's id."""

    def send_with(self, sender: str, key: str, content: str = "x",
                  as_header: bool = True) -> tuple[int, Any]:
        body: dict[str, Any] = {"channel": "c", "sender": sender, "content": content}
        if as_header:
            return self.post("/send", body, Idempotency_Key=key)
        return self.post("/send", {**body, "idempotency_key": key})

    def test_repeat_is_duplicate(self) -> None:
        """The same key twice (header or field) gives the first id with duplicate: true."""
        self.assertEqual(self.send_with("a", "k-1"), (200, {"ok": True, "id": 1}))
        self.assertEqual(self.send_with("a", "k-1", "changed", as_header=False),
                         (200, {"ok": True, "id": 1, "duplicate": True}))
        self.assertEqual(self.stored(), 1)

    def test_keys_are_per_sender(self) -> None:
        """Another sender's identical key is another send."""
        self.send_with("a", "k-1")
        self.assertEqual(self.send_with("b", "k-1"), (200, {"ok": True, "id": 2}))

    def test_forgotten_after_a_day(self) -> None:
        """After 24 hours the pruner forgets the key and it stores anew."""
        self.send_with("a", "k-1")
        self.server.broker.startService()
        self.server.clock.advance(24 * 3600 + 61)
        self.assertEqual(self.send_with("a", "k-1"), (200, {"ok": True, "id": 2}))

    def test_header_wins_over_the_field(self) -> None:
        """With both, the header names the send; the field must still be a valid key."""
        first = self.post("/send", {"channel": "c", "sender": "a", "content": "x",
                                    "idempotency_key": "one"}, Idempotency_Key="two")
        again = self.post("/send", {"channel": "c", "sender": "a", "content": "x"},
                          Idempotency_Key="two")
        self.assertEqual((first[0], again[1]), (200, {**first[1], "duplicate": True}))
        bad = self.post("/send", {"channel": "c", "sender": "a", "content": "x",
                                  "idempotency_key": 5}, Idempotency_Key="three")
        self.assertEqual(bad[0], 400)


class RetentionTimerTests(WebCase):
    """With a retention period, the server deletes old messages on its own."""

    environ = {"IPC_RETENTION": "1h"}

    def test_timer_prunes(self) -> None:
        """Messages pass out of the window and are deleted by the next pass."""
        self.send("c", content="old")
        self.server.broker.startService()
        self.server.clock.advance(1800)
        self.send("c", content="new")
        self.server.clock.advance(1800 + 60)
        self.assertEqual([m["content"] for m in self.get("/messages", channel="c",
                                                          agent="r")[1]], ["new"])


class ApiKeyTests(WebCase):
    """With IPC_API_KEY, every request needs Authorization: Bearer <key>."""

    environ = {"IPC_API_KEY": "s3cret"}

    def test_missing_or_wrong_key(self) -> None:
        """No key, a wrong key or another scheme is 401 for every path, known or not."""
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            answer = self.answer(self.http.get(self.server.url("/health"), headers=headers))
            self.assertEqual(answer, (401, {"error": "unauthorized"}))
        self.assertEqual(self.get("/nope")[0], 401)
        self.assertEqual(self.post("/send", {"channel": "c", "sender": "a", "content": "x"})[0],
                         401)
        self.assertEqual(self.stored(), 0)

    def test_right_key(self) -> None:
        """The right bearer key is let through."""
        answer = self.answer(self.http.get(self.server.url("/health"),
                                           headers={"Authorization": "Bearer s3cret"}))
        self.assertEqual(answer[0], 200)


class BadInputTests(WebCase):
    """Bad input is a 4xx with a JSON error saying what was wrong; the server keeps serving."""

    def bad(self, status: int, expected: str, answer: tuple[int, Any]) -> None:
        self.assertEqual(answer[0], status, answer)
        self.assertIn(expected, answer[1]["error"])

    def assert_still_serving(self) -> None:
        """After all that, nothing was stored and the server still answers."""
        self.assertEqual(self.stored(), 0)
        self.assertEqual(self.get("/health")[0], 200)

    def test_numbers_too_long_to_be_numbers(self) -> None:
        """5,000 digits in an id or a limit is a 400, not Python's refusal to make an int
        of it (a 500)."""
        digits = "9" * 5000
        for path, params in [("/history", {"channel": "c", "after_id": digits}),
                             ("/history", {"channel": "c", "before_id": digits}),
                             ("/messages", {"channel": "c", "agent": "r", "limit": digits}),
                             ("/search", {"q": "x", "limit": digits}),
                             ("/activity", {"after_id": digits})]:
            status, body = self.answer(self.get_later(path, **params))
            self.assertEqual(status, 400, (path, body))
            self.assertIn("whole number", body["error"])

    def test_malformed_bodies(self) -> None:
        """Broken JSON, non-objects, empty bodies, deep nesting and invalid UTF-8 are 400."""
        self.bad(400, "not valid JSON", self.post("/send", b"{bad"))
        self.bad(400, "must be a JSON object", self.post("/send", b"[1, 2]"))
        self.bad(400, "must be a JSON object", self.post("/send", b'"text"'))
        self.bad(400, "empty", self.post("/send", b""))
        self.bad(400, "not valid JSON", self.post("/send", b"[" * 100000))
        self.bad(400, "not valid UTF-8", self.post("/send", b'{"channel": "\xff"}'))
        self.assert_still_serving()


    def test_fields(self) -> None:
        """Missing fields, wrong types and broken names or content are 400."""
        base = {"channel": "c", "sender": "a", "content": "x"}
        self.bad(400, "required", self.post("/send", {"channel": "c", "sender": "a"}))
        self.bad(400, "required", self.post("/send", {**base, "channel": ""}))
        self.bad(400, "channel must be a string", self.post("/send", {**base, "channel": 5}))
        self.bad(400, "content must be a string", self.post("/send", {**base, "content": ["x"]}))
        self.bad(400, "signature must be base64", self.post("/send", {**base, "signature": 1}))
        self.bad(400, "signature must be base64", self.post("/send", {**base, "signature": "x"}))
        self.bad(400, "reserved", self.post("/send", {**base, "channel": "elipc/security"}))
        self.bad(400, "go together", self.post("/send", {**base, "signature": "A" * 86 + "==",
                                                         "timestamp": 1}))
        self.bad(400, "nonce must be", self.post("/send", {**base, "signature": "A" * 86 + "==",
                                                           "timestamp": 1, "nonce": "short"}))
        self.bad(400, "timestamp must be", self.post("/send", {
            **base, "signature": "A" * 86 + "==", "timestamp": "soon", "nonce": "n" * 12}))
        self.bad(400, "control characters", self.post("/send", {**base, "sender": "a\nb"}))
        self.bad(400, "longer than 256", self.post("/send", {**base, "channel": "c" * 257}))
        self.bad(400, "not valid UTF-8", self.post("/send", {**base, "content": "\ud800"}))
        self.assert_still_serving()


    def test_content_over_limit(self) -> None:
        """Content over the limit is 413."""
        self.server = Server(self, IPC_MAX_CONTENT_BYTES="10")
        self.http = self.server.http
        self.bad(413, "limit is 10", self.post("/send", {"channel": "c", "sender": "a",
                                                        "content": "x" * 11}))
        self.assert_still_serving()


    def test_form_encoded_json_body(self) -> None:
        """JSON sent with curl -d's form content type is still JSON; its '=' is no parameter."""
        answer = self.post("/send", {"channel": "c", "sender": "a", "content": "x=1&y=2"},
                           Content_Type="application/x-www-form-urlencoded")
        self.assertEqual(answer, (200, {"ok": True, "id": 1}))
        self.assertEqual(self.get("/messages", channel="c", agent="r")[1][0]["content"], "x=1&y=2")

    def test_body_over_limit(self) -> None:
        """A body over the limit is 413, whether its length is declared or not."""
        self.server.site.max_body_bytes = 100
        self.bad(413, "over the limit of 100 bytes", self.post("/send", b"{" + b" " * 200 + b"}"))
        self.assert_still_serving()


    def test_query_parameters(self) -> None:
        """Missing, unknown, repeated or malformed parameters are 400."""
        self.bad(400, "channel and agent params required", self.get("/messages", channel="c"))
        self.bad(400, "unknown query parameter", self.get("/messages", channel="c", agent="a",
                                                          wiat="true"))
        self.bad(400, "unknown query parameter", self.get("/channels", x="1"))
        self.bad(400, "more than once", self.answer(self.http.get(
            self.server.url("/messages?channel=c&channel=d&agent=a"))))
        self.bad(400, "wait must be true or false", self.get("/messages", channel="c",
                                                             agent="a", wait="soon"))
        for value in ("-1", "301", "nan", "inf", "x"):
            self.bad(400, "timeout", self.get("/messages", channel="c", agent="a",
                                              wait="true", timeout=value))
        self.bad(400, "linger", self.get("/messages", channel="c", agent="a", linger="99"))
        for value in ("0", "10001", "x", "-5"):
            self.bad(400, "limit", self.get("/messages", channel="c", agent="a", limit=value))
        self.bad(400, "ack must be", self.get("/messages", channel="c", agent="a", ack="maybe"))
        self.bad(400, "after_id", self.get("/messages", channel="c", agent="a", after_id="1"))
        self.bad(400, "after_id", self.get("/history", channel="c", after_id="x"))
        self.bad(400, "up_to", self.post("/ack", {"channel": "c", "agent": "a", "up_to": "1"}))
        self.bad(400, "control characters", self.get("/messages", channel="c\x00", agent="a"))
        self.bad(400, "not valid UTF-8", self.answer(self.http.get(
            self.server.url("/messages?channel=%FF&agent=a"))))
        self.bad(400, "control characters", self.get("/health", channel="c", agent="\x07"))
        self.assert_still_serving()


class RawHttpTests(SynchronousTestCase):
    """Requests broken below the API (framing) get JSON answers from elipc's channel."""

    def setUp(self) -> None:
        self.server = Server(self)

    def exchange(self, data: bytes) -> tuple[bytes, StringTransport]:
        protocol = self.server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        return transport.value(), transport

    def json_error(self, raw: bytes) -> tuple[int, str]:
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Type: application/json", head)
        return int(head.split(b" ")[1]), json.loads(body)["error"]

    def test_bad_content_length(self) -> None:
        """A non-numeric Content-Length is a JSON 400 and the connection closes."""
        raw, transport = self.exchange(
            b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}")
        status, error = self.json_error(raw)
        self.assertEqual(status, 400)
        self.assertIn("Content-Length", error)
        self.assertTrue(transport.disconnecting)

    def test_declared_oversize_refused_before_reading(self) -> None:
        """A declared body over the limit is refused at once with a JSON 413."""
        raw, transport = self.exchange(
            b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{")
        self.assertEqual(self.json_error(raw)[0], 413)
        self.assertTrue(transport.disconnecting)

    def test_missing_content_length(self) -> None:
        """A POST with neither Content-Length nor chunked encoding is 411."""
        raw, _ = self.exchange(b"POST /send HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.json_error(raw), (411, "Content-Length required"))

    def test_path_not_utf8(self) -> None:
        """A path that is not UTF-8 once unquoted is a JSON 400, not Klein's plain text."""
        raw, _ = self.exchange(b"GET /%FF HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.json_error(raw), (400, "the URL's path or host is not valid UTF-8"))

    def test_chunked_oversize(self) -> None:
        """A chunked body that grows past the limit is 413 and is not kept."""
        self.server.site.max_body_bytes = 10
        raw, _ = self.exchange(
            b"POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n")
        self.assertEqual(self.json_error(raw)[0], 413)


# The same endpoints on PostgreSQL: the server's contract with its store holds on both.
class EndpointPostgresTests(EndpointTests):
    store = "postgresql"


class LongPollPostgresTests(LongPollTests):
    store = "postgresql"

    def test_external_commit_wakes_waiter(self) -> None:
        """On PostgreSQL another process's commit arrives as a notification, which needs a
        running reactor: NotifyFeedTests (test_postgres.py) and the two-server tests."""
        raise SkipTest("covered by test_postgres.NotifyFeedTests on a real reactor")


class IdempotencyPostgresTests(IdempotencyTests):
    store = "postgresql"


class BadInputPostgresTests(BadInputTests):
    store = "postgresql"
