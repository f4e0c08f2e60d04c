"""Security beyond el-ipc, through the real app in memory: each attack fails with the right
status, and nothing is stored or moved."""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher

from elipc import identity, store
from tests.helpers import Keyholder, raw_rows
from tests.test_web import WebCase


class SecureCase(WebCase):
    """An operator `op` and registered agents `herald` and `bob` (secure mode)."""

    def setUp(self) -> None:
        super().setUp()
        self.now = int(self.server.clock.seconds())
        self.op, self.herald, self.bob = Keyholder("op"), Keyholder("herald"), Keyholder("bob")
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        store.add_operator(conn, "op", self.op.public, 1.0)
        for agent in (self.herald, self.bob):
            store.register_agent(conn, agent.name, "", agent.public, "op", 2.0)

    def refused(self, status: int, error: str, answer: tuple[int, Any]) -> None:
        self.assertEqual(answer[0], status, answer)
        self.assertIn(error, answer[1]["error"])
        self.assertEqual(self.stored(), 0)

    def read(self, channel: str, agent: str, headers: dict[str, list[str]] | None = None,
             **params: str) -> tuple[int, Any]:
        query = "&".join([f"channel={channel}", f"agent={agent}",
                          *(f"{k}={v}" for k, v in params.items())])
        return self.answer(self.http.get(self.server.url(f"/messages?{query}"),
                                         headers=headers or {}))

    def security_events(self) -> list[dict[str, Any]]:
        rows = raw_rows(self.server.path,
                        "SELECT content FROM messages WHERE channel = 'elipc/security'")
        return [json.loads(content) for (content,) in rows]


class SendTests(SecureCase):
    """Sends: elipc/2 signatures with timestamp and nonce; el-ipc's outside strict mode."""

    def test_signed_send_carries_what_readers_need(self) -> None:
        """An elipc/2 send is stored with its signature, timestamp and nonce for readers."""
        body = self.herald.send_body("c", "hi", self.now)
        self.assertEqual(self.post("/send", body)[0], 200)
        (message,) = self.read("c", "bob", self.bob.read_headers("c", self.now))[1]
        self.assertEqual((message["signature"], message["signed_timestamp"], message["nonce"]),
                         (body["signature"], self.now, body["nonce"]))
        self.assertTrue(message["signed"])

    def test_impersonation(self) -> None:
        """Signing as herald with bob's key is 403 and stores nothing."""
        body = self.bob.send_body("c", "hi", self.now)
        body["sender"] = "herald"
        self.refused(403, "invalid signature", self.post("/send", body))
        self.assertIn("invalid_signature", [e["kind"] for e in self.security_events()])

    def test_unsigned_and_unknown(self) -> None:
        """No signature, or an unknown sender, is 403."""
        self.refused(403, "signature required", self.post(
            "/send", {"channel": "c", "sender": "herald", "content": "x"}))
        stranger = Keyholder("stranger")
        self.refused(403, "unknown sender: stranger",
                     self.post("/send", stranger.send_body("c", "x", self.now)))

    def test_replayed_send(self) -> None:
        """The same signed send twice: the second is 409 and stored nothing."""
        body = self.herald.send_body("c", "pay 10", self.now)
        self.assertEqual(self.post("/send", body)[0], 200)
        answer = self.post("/send", body)
        self.assertEqual(answer[0], 409, answer)
        self.assertEqual(self.stored(), 1)

    def test_stale_send(self) -> None:
        """A timestamp outside the window (past or future) is 403."""
        for timestamp in (self.now - 301, self.now + 301):
            self.refused(403, "stale timestamp",
                         self.post("/send", self.herald.send_body("c", "x", timestamp)))
        self.assertEqual(self.post("/send", self.herald.send_body("c", "x", self.now - 299))[0],
                         200)

    def test_nonces_forgotten_after_window(self) -> None:
        """Pruning forgets nonces older than twice the window, and only those."""
        self.post("/send", self.herald.send_body("c", "x", self.now, "nonce-old-1"))
        self.server.clock.advance(700)
        self.post("/send", self.herald.send_body("c", "y", self.now + 700, "nonce-new-1"))
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        self.assertEqual(store.forget_nonces(conn, self.server.clock.seconds() - 600), 1)
        self.assertEqual([n for (n,) in raw_rows(self.server.path, "SELECT nonce FROM nonces")],
                         ["nonce-new-1"])

    def test_el_ipc_signature_accepted_outside_strict(self) -> None:
        """el-ipc's signature over channel, sender, content is still accepted (not strict)."""
        signature = identity.sign(self.herald.key, b"c\nherald\nold style")
        answer = self.post("/send", {"channel": "c", "sender": "herald", "content": "old style",
                                     "signature": signature})
        self.assertEqual(answer[0], 200, answer)


class StrictTests(SecureCase):
    """With IPC_STRICT_SIGNATURES=1, el-ipc's replayable signatures are refused."""

    environ = {"IPC_STRICT_SIGNATURES": "1"}

    def test_el_ipc_signature_refused(self) -> None:
        """An el-ipc-style signature is 403 in strict mode; elipc/2 still works."""
        signature = identity.sign(self.herald.key, b"c\nherald\nold style")
        self.refused(403, "strict signatures", self.post("/send", {
            "channel": "c", "sender": "herald", "content": "old style", "signature": signature}))
        self.assertEqual(self.post("/send", self.herald.send_body("c", "new", self.now))[0], 200)


class ReadTests(SecureCase):
    """Reads in secure mode are signed by the reading agent; refusals move nothing."""

    def setUp(self) -> None:
        super().setUp()
        self.post("/send", self.herald.send_body("c", "for bob", self.now))

    def assert_unmoved(self) -> None:
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        self.assertEqual(store.watermark(conn, "c", "bob"), 0)

    def test_unsigned_read(self) -> None:
        """A read without the headers is 401 and moves nothing."""
        answer = self.read("c", "bob")
        self.assertEqual(answer[0], 401, answer)
        self.assert_unmoved()

    def test_read_as_someone_else(self) -> None:
        """herald signing a read as bob is 403; bob's watermark stays."""
        answer = self.read("c", "bob", self.herald.read_headers("c", self.now, agent="bob"))
        self.assertEqual(answer[0], 403, answer)
        self.assert_unmoved()

    def test_replayed_read(self) -> None:
        """bob's read headers used twice: the second is refused."""
        headers = self.bob.read_headers("c", self.now)
        self.assertEqual(len(self.read("c", "bob", headers)[1]), 1)
        self.post("/send", self.herald.send_body("c", "second", self.now))
        answer = self.read("c", "bob", headers)
        self.assertEqual(answer[0], 403, answer)
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        self.assertEqual(store.pending_count(conn, "c", "bob"), 1)

    def test_stale_or_wrong_channel_read(self) -> None:
        """A stale signature, or one made for another channel, is 403."""
        self.assertEqual(self.read("c", "bob", self.bob.read_headers("c", self.now - 400))[0],
                         403)
        self.assertEqual(self.read("c", "bob", self.bob.read_headers("other", self.now))[0], 403)
        self.assert_unmoved()

    def test_acks_are_signed(self) -> None:
        """POST /ack in secure mode needs the agent's ack signature over up_to."""
        def ack(headers: dict[str, list[str]], up_to: int = 1) -> int:
            body = {"channel": "c", "agent": "bob", "up_to": up_to}
            return self.answer(self.http.post(self.server.url("/ack"),
                                              data=json.dumps(body).encode(),
                                              headers=headers))[0]

        def signed(holder: Keyholder, up_to: int) -> dict[str, list[str]]:
            nonce = identity.new_nonce()
            payload = identity.ack_payload("c", "bob", up_to, self.now, nonce)
            return {"X-Elipc-Timestamp": [str(self.now)], "X-Elipc-Nonce": [nonce],
                    "X-Elipc-Signature": [identity.sign(holder.key, payload)]}

        self.assertEqual(ack({}), 401)
        self.assertEqual(ack(signed(self.herald, 1)), 403)
        self.assertEqual(ack(signed(self.bob, 0), up_to=1), 403)  # signed for another up_to
        self.assert_unmoved()
        self.assertEqual(ack(signed(self.bob, 1)), 200)

    def test_signed_long_poll(self) -> None:
        """A signed long-poll waits and is woken like any other."""
        pending = self.http.get(self.server.url("/messages?channel=w&agent=bob&wait=true"),
                                headers=self.bob.read_headers("w", self.now))
        self.http.flush()
        self.assertNoResult(pending)
        self.post("/send", self.herald.send_body("w", "wake", self.now))
        self.assertEqual([m["content"] for m in self.answer(pending)[1]], ["wake"])

    def test_health_pending_is_signed_too(self) -> None:
        """/health's per-agent pending count needs the agent's read signature."""
        self.assertEqual(self.get("/health", channel="c", agent="bob")[0], 401)
        answer = self.answer(self.http.get(self.server.url("/health?channel=c&agent=bob"),
                                           headers=self.bob.read_headers("c", self.now)))
        self.assertEqual(answer[1]["pending"], 1)
        self.assertEqual(self.get("/health")[0], 200)

    def test_security_channel_for_operators_only(self) -> None:
        """Only operators read elipc/security; it holds every refusal."""
        self.read("c", "bob")  # a refusal to report
        self.assertEqual(self.read("elipc/security", "bob",
                                   self.bob.read_headers("elipc/security", self.now))[0], 403)
        status, events = self.read("elipc/security", "op",
                                   self.op.read_headers("elipc/security", self.now))
        self.assertEqual(status, 200)
        kinds = [json.loads(e["content"])["kind"] for e in events]
        self.assertIn("read_signature_required", kinds)
        self.assertIn("security_channel", kinds)


class RegisterTests(SecureCase):
    """POST /register takes an operator's signature, never a private key."""

    def test_register_and_use(self) -> None:
        """A fresh operator signature registers an agent, which can then send."""
        carol = Keyholder("carol")
        answer = self.post("/register", self.op.registration("carol", carol.public, self.now,
                                                             "uuid-c"))
        self.assertEqual(answer, (200, {"ok": True,
                                        "message": "Agent 'carol' registered by operator 'op'"}))
        self.assertEqual(self.post("/send", carol.send_body("c", "hello", self.now))[0], 200)
        entry = [a for a in self.get("/agents")[1] if a["name"] == "carol"][0]
        self.assertEqual((entry["registered_by"], entry["identity"], entry["did"]),
                         ("op", "uuid-c", identity.did_key(carol.public)))

    def directory(self) -> list[tuple[str, str]]:
        return raw_rows(self.server.path, "SELECT name, public_key FROM agents ORDER BY name")

    def test_private_key_refused_unlogged(self) -> None:
        """el-ipc's body with operator_key is 400 and the key appears nowhere, logs included;
        a good registration's signature is not logged either."""
        logged: list[str] = []
        observer = lambda event: logged.append(formatEvent(event) + repr(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        before = self.directory()
        private = identity.generate_keypair()[0]
        answer = self.post("/register", {"name": "x", "public_key": self.bob.public,
                                         "operator": "op", "operator_key": private})
        good = self.op.registration("carol", Keyholder("carol").public, self.now)
        self.assertEqual(self.post("/register", good)[0], 200)
        self.assertTrue(logged)
        self.assertNotIn(private.splitlines()[1], "".join(logged))
        self.assertNotIn(good["operator_signature"], "".join(logged))
        before = sorted([*before, ("carol", good["public_key"])])
        self.assertEqual(answer[0], 400)
        self.assertIn("sign the registration locally", answer[1]["error"])
        self.assertNotIn("PRIVATE", json.dumps(answer[1]))
        self.assertEqual(self.directory(), before)
        self.assertEqual([e["kind"] for e in self.security_events()], ["private_key_sent"])
        self.assertNotIn("PRIVATE", json.dumps(self.security_events()))

    def test_forged_and_non_operator(self) -> None:
        """A signature by a non-operator, or by the wrong key, is 403 and changes nothing."""
        before = self.directory()
        mallory = Keyholder("mallory")
        by_agent = self.herald.registration("mallory", mallory.public, self.now)
        self.assertEqual(self.post("/register", by_agent)[0], 403)
        forged = mallory.registration("mallory", mallory.public, self.now)
        forged["operator"] = "op"
        self.assertEqual(self.post("/register", forged)[0], 403)
        self.assertEqual(self.directory(), before)

    def test_replay_after_window(self) -> None:
        """A registration replayed after its window is 403 (stale)."""
        carol = Keyholder("carol")
        body = self.op.registration("carol", carol.public, self.now)
        self.server.clock.advance(301)
        self.assertEqual(self.post("/register", body)[0], 403)

    def test_replay_inside_window_and_rollback(self) -> None:
        """The same registration twice is 409; an older one cannot undo a newer key."""
        old, new = Keyholder("carol"), Keyholder("carol")
        first = self.op.registration("carol", old.public, self.now)
        self.assertEqual(self.post("/register", first)[0], 200)
        self.assertEqual(self.post("/register", first)[0], 409)
        rotated = self.op.registration("carol", new.public, self.now + 1)
        self.assertEqual(self.post("/register", rotated)[0], 200)
        older = self.op.registration("carol", old.public, self.now - 5)
        self.assertEqual(self.post("/register", older)[0], 409)
        self.assertIn(("carol", new.public), self.directory())

    def test_malformed_registration(self) -> None:
        """Missing fields, a bad key or a malformed signature are 400."""
        body = self.op.registration("carol", Keyholder("carol").public, self.now)
        for field, value in (("public_key", "not a key"), ("operator_signature", "short"),
                             ("timestamp", "noon"), ("name", "")):
            self.assertEqual(self.post("/register", {**body, field: value})[0], 400, field)


class EventTests(SecureCase):
    """Refusals are counted, and written to elipc/security at a bounded rate."""

    def test_counted_in_health(self) -> None:
        """/health counts security events by kind."""
        for _ in range(3):
            self.post("/send", {"channel": "c", "sender": "herald", "content": "x"})
        self.assertEqual(self.get("/health")[1]["security_events"], {"signature_required": 3})

    def test_rate_limited(self) -> None:
        """A flood of refusals writes at most 60 events a minute, then says what it skipped."""
        for _ in range(100):
            self.post("/send", {"channel": "c", "sender": "herald", "content": "x"})
        self.assertEqual(len(self.security_events()), 60)
        self.server.clock.advance(60)
        self.post("/send", {"channel": "c", "sender": "herald", "content": "x"})
        self.assertEqual(self.security_events()[-1]["suppressed_before"], 40)

    def test_no_secrets_in_events(self) -> None:
        """Events name kinds, senders and addresses, never signatures or keys."""
        self.post("/send", self.bob.send_body("c", "x", self.now) | {"sender": "herald"})
        text = json.dumps(self.security_events())
        self.assertNotIn("signature\":", text.replace("invalid_signature", ""))
        self.assertNotIn("BEGIN", text)


# Secure mode on PostgreSQL: the same rules, in the same transactions.
class SendPostgresTests(SendTests):
    store = "postgresql"


class ReadPostgresTests(ReadTests):
    store = "postgresql"


class RegisterPostgresTests(RegisterTests):
    store = "postgresql"
