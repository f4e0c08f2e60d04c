"""protocol.py without any I/O: the requests it builds, the answers it reads, its retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from elipc import identity
from elipc.config import DEFAULT_WAIT_TIMEOUT, REQUEST_TIMEOUT
from elipc.model import Accepted, InvalidInput, Message
from elipc.protocol import (
    Api,
    Call,
    ClientError,
    HttpRequest,
    HttpResponse,
    Outcome,
    RetryPolicy,
    TransportFailure,
    Unreachable,
    exchange,
)

NOW = 1_700_000_000.0


def keypair() -> tuple[Any, str]:
    """A fresh Ed25519 key and its public PEM."""
    private, public = identity.generate_keypair()
    return identity.parse_private_key(private), public


def body(request: HttpRequest) -> dict[str, Any]:
    """A request's JSON body."""
    assert request.body is not None
    parsed: dict[str, Any] = json.loads(request.body)
    return parsed


def ok(answer: object, **headers: str) -> HttpResponse:
    """A 200 answer carrying `answer` as JSON."""
    return HttpResponse(200, headers, json.dumps(answer).encode())


def run(call: Call[Any], outcomes: list[Outcome], policy: RetryPolicy = RetryPolicy(),
        jitter: Callable[[], float] = lambda: 0.0
        ) -> tuple[Any, list[HttpRequest], list[float]]:
    """Drive `exchange` through `outcomes` (one per request it asks for); return its result
    (or what it raised), the requests it made and the delays it asked for."""
    steps = exchange(call, policy, jitter)
    requests: list[HttpRequest] = []
    delays: list[float] = []
    reply: Outcome = None
    try:
        while True:
            step = steps.send(reply)
            if isinstance(step, HttpRequest):
                requests.append(step)
                reply = outcomes.pop(0)
            else:
                delays.append(step)
                reply = None
    except StopIteration as done:
        return done.value, requests, delays
    except Exception as e:  # the outcome under test
        return e, requests, delays


class RequestTests(SynchronousTestCase):
    """Every endpoint's request, as the server documents it."""

    def setUp(self) -> None:
        self.key, self.public = keypair()
        self.api = Api("herald", self.key, time=lambda: NOW)
        self.open = Api("herald", time=lambda: NOW)

    def test_unsigned_send(self) -> None:
        """An unkeyed send posts JSON with channel, sender, content and an idempotency key."""
        request = self.open.send("ops", "hello").build()
        self.assertEqual((request.method, request.path, request.query), ("POST", "/send", ()))
        self.assertEqual(request.headers["Content-Type"], "application/json")
        fields = body(request)
        self.assertEqual({k: v for k, v in fields.items() if k != "idempotency_key"},
                         {"channel": "ops", "sender": "herald", "content": "hello"})
        self.assertGreaterEqual(len(fields["idempotency_key"]), 16)

    def test_signed_send_verifies(self) -> None:
        """A keyed send carries an elipc/2 signature of its fields that the public key verifies."""
        fields = body(self.api.send("ops", "deploy done", sender="herald").build())
        self.assertEqual(fields["timestamp"], int(NOW))
        payload = identity.send_payload("ops", "herald", fields["timestamp"], fields["nonce"],
                                        "deploy done")
        self.assertTrue(identity.verify(self.public, payload, fields["signature"]))

    def test_send_is_the_same_on_every_attempt(self) -> None:
        """A send's body (signature, nonce, idempotency key) is made once for all its tries."""
        call = self.api.send("ops", "once")
        first, second = call.build(), call.build()
        self.assertEqual(first, second)
        self.assertNotEqual(body(first)["idempotency_key"],
                            body(self.api.send("ops", "once").build())["idempotency_key"])

    def test_given_idempotency_key(self) -> None:
        """A caller's idempotency key is the one sent."""
        self.assertEqual(body(self.open.send("ops", "x", idempotency_key="k-1").build())
                         ["idempotency_key"], "k-1")

    def test_read_query_and_timeout(self) -> None:
        """A long-poll read asks for its wait, limit and manual ack, and may last
        REQUEST_TIMEOUT beyond the wait."""
        request = self.open.read("ops", wait=True, timeout=120.0, limit=10).build()
        self.assertEqual((request.method, request.path), ("GET", "/messages"))
        self.assertEqual(dict(request.query), {"channel": "ops", "agent": "herald",
                                               "ack": "manual", "wait": "true",
                                               "timeout": "120", "limit": "10"})
        self.assertEqual(request.timeout, REQUEST_TIMEOUT + 120.0)
        self.assertIsNone(request.body)

    def test_read_timeouts_by_default(self) -> None:
        """A wait with no timeout may last the server's default wait; no wait, none."""
        waiting = self.open.read("ops", wait=True).build()
        self.assertEqual(waiting.timeout, REQUEST_TIMEOUT + DEFAULT_WAIT_TIMEOUT)
        self.assertNotIn("timeout", dict(waiting.query))
        at_once = self.open.read("ops", ack="auto").build()
        self.assertEqual(at_once.timeout, REQUEST_TIMEOUT)
        self.assertEqual(dict(at_once.query), {"channel": "ops", "agent": "herald",
                                               "ack": "auto"})

    def test_signed_read_is_fresh_per_attempt(self) -> None:
        """Each attempt of a keyed read signs a new nonce, and each signature verifies."""
        call = self.api.read("ops", "herald")
        attempts = [call.build().headers for _ in range(2)]
        self.assertNotEqual(attempts[0]["X-Elipc-Nonce"], attempts[1]["X-Elipc-Nonce"])
        for headers in attempts:
            payload = identity.read_payload("ops", "herald", int(headers["X-Elipc-Timestamp"]),
                                            headers["X-Elipc-Nonce"])
            self.assertTrue(identity.verify(self.public, payload,
                                            headers["X-Elipc-Signature"]))

    def test_signed_ack(self) -> None:
        """An ack posts the watermark and signs it with the elipc/2 ack payload."""
        request = self.api.ack("ops", 42).build()
        self.assertEqual((request.method, request.path), ("POST", "/ack"))
        self.assertEqual(body(request), {"channel": "ops", "agent": "herald", "up_to": 42})
        headers = request.headers
        payload = identity.ack_payload("ops", "herald", 42, int(NOW), headers["X-Elipc-Nonce"])
        self.assertTrue(identity.verify(self.public, payload, headers["X-Elipc-Signature"]))
        read_payload = identity.read_payload("ops", "herald", int(NOW),
                                             headers["X-Elipc-Nonce"])
        self.assertFalse(identity.verify(self.public, read_payload,
                                         headers["X-Elipc-Signature"]))

    def test_history_names_no_agent(self) -> None:
        """History asks by after_id with no agent and no signature, even when keyed."""
        request = self.api.history("ops", after_id=7, limit=5).build()
        self.assertEqual(dict(request.query), {"channel": "ops", "after_id": "7", "limit": "5"})
        self.assertNotIn("X-Elipc-Signature", request.headers)

    def test_health(self) -> None:
        """Health alone is plain; with a channel and an agent it is signed like a read."""
        self.assertEqual(self.api.health().build().query, ())
        headers = self.api.health("ops", "herald").build().headers
        payload = identity.read_payload("ops", "herald", int(NOW), headers["X-Elipc-Nonce"])
        self.assertTrue(identity.verify(self.public, payload, headers["X-Elipc-Signature"]))

    def test_register_signs_locally(self) -> None:
        """A registration carries the operator's signature and never the private key."""
        operator_key, operator_public = keypair()
        _, agent_public = keypair()
        request = self.open.register("carol", agent_public, "op", operator_key, "id-7").build()
        fields = body(request)
        self.assertEqual({k: fields[k] for k in ("name", "public_key", "identity", "operator",
                                                 "timestamp")},
                         {"name": "carol", "public_key": agent_public, "identity": "id-7",
                          "operator": "op", "timestamp": int(NOW)})
        payload = identity.register_payload("carol", "id-7", int(NOW), agent_public)
        self.assertTrue(identity.verify(operator_public, payload, fields["operator_signature"]))
        assert request.body is not None
        self.assertNotIn(b"PRIVATE", request.body)

    def test_bearer_key_on_every_request(self) -> None:
        """With an api_key every endpoint sends it as a bearer token; without, none does."""
        keyed = Api("herald", api_key="s3cret", time=lambda: NOW)
        operator_key, public = keypair()
        for api, expected in ((keyed, "Bearer s3cret"), (self.open, None)):
            calls: list[Call[Any]] = [
                api.send("c", "x"), api.read("c"), api.ack("c", 1), api.history("c"),
                api.channels(), api.agents(), api.health(), api.agent_card(),
                api.register("n", public, "op", operator_key)]
            for call in calls:
                self.assertEqual(call.build().headers.get("Authorization"), expected)

    def test_paths(self) -> None:
        """The directory endpoints are GETs of their documented paths."""
        self.assertEqual([(c.build().method, c.build().path) for c in (
            self.open.channels(), self.open.agents(), self.open.health(),
            self.open.agent_card())],
            [("GET", "/channels"), ("GET", "/agents"), ("GET", "/health"),
             ("GET", "/.well-known/agent-card.json")])

    def test_no_agent_name(self) -> None:
        """A read with no agent, from an Api made for none, is refused before any request."""
        with self.assertRaises(InvalidInput):
            Api().read("ops")

    def test_url_quotes_and_keeps_prefix(self) -> None:
        """url() joins a base with a path prefix and quotes names in the query."""
        request = self.open.read("a b/&c", "é")
        url = request.build().url("https://ipc.example/elipc/")
        parts = urlsplit(url)
        self.assertEqual((parts.netloc, parts.path), ("ipc.example", "/elipc/messages"))
        self.assertEqual(dict(parse_qsl(parts.query))["channel"], "a b/&c")
        self.assertEqual(dict(parse_qsl(parts.query))["agent"], "é")


class AnswerTests(SynchronousTestCase):
    """Answers become domain values; refusals become ClientError."""

    api = Api("reader", time=lambda: NOW)
    shape = {"id": 3, "sender": "a", "content": "hi", "timestamp": 1.5, "signed": True,
             "signature": "c2ln", "signed_timestamp": 1, "nonce": "n" * 8}

    def test_page_of_messages(self) -> None:
        """A /messages list becomes Messages on the read channel, in order."""
        page = self.api.read("ops").parse(ok([self.shape, {**self.shape, "id": 4}]))
        self.assertEqual(page.messages, [Message(3, "ops", "a", "hi", 1.5, "c2ln", 1, "n" * 8),
                                         Message(4, "ops", "a", "hi", 1.5, "c2ln", 1, "n" * 8)])
        self.assertFalse(page.more)
        self.assertEqual(page.last_id, 4)

    def test_more_header(self) -> None:
        """X-Elipc-More: true marks a page that has more behind it; false does not."""
        self.assertTrue(self.api.history("ops").parse(ok([], **{"x-elipc-more": "true"})).more)
        self.assertFalse(self.api.read("ops").parse(ok([], **{"x-elipc-more": "false"})).more)

    def test_accepted(self) -> None:
        """A send's answer is Accepted with its id, and duplicate when the server says so."""
        parse = self.api.send("c", "x").parse
        self.assertEqual(parse(ok({"ok": True, "id": 9})), Accepted(9))
        self.assertEqual(parse(ok({"ok": True, "id": 9, "duplicate": True})),
                         Accepted(9, duplicate=True))

    def test_watermark(self) -> None:
        """An ack's answer is the watermark number."""
        self.assertEqual(self.api.ack("c", 5).parse(ok({"ok": True, "watermark": 5})), 5)

    def test_refusal(self) -> None:
        """A 4xx is a ClientError with the status and the server's error text."""
        refused = HttpResponse(403, {}, b'{"error": "invalid signature"}')
        error = self.assertRaises(ClientError, self.api.channels().parse, refused)
        self.assertEqual((error.status, error.message), (403, "invalid signature"))
        self.assertEqual(str(error), "403: invalid signature")

    def test_redirect_is_no_answer(self) -> None:
        """A proxy's redirect is a ClientError, not a page of whatever it carried."""
        moved = HttpResponse(302, {"location": "/login"}, b"[]")
        self.assertEqual(self.assertRaises(ClientError, self.api.read("c").parse,
                                           moved).status, 302)

    def test_html_refusal(self) -> None:
        """A proxy's HTML refusal becomes the start of its text, not a JSON error."""
        html = b"<html><body>" + b"x" * 500 + b"</body></html>"
        error = self.assertRaises(ClientError, self.api.agents().parse,
                                  HttpResponse(413, {}, html))
        self.assertEqual(error.message, html[:200].decode())


class RetryTests(SynchronousTestCase):
    """exchange retries 5xx and failures with capped, jittered backoff, and nothing else."""

    api = Api("agent", time=lambda: NOW)
    down = TransportFailure("ConnectionRefusedError: [Errno 111] Connection refused")

    def test_success_at_once(self) -> None:
        """An answer on the first try is parsed, with no delay."""
        result, requests, delays = run(self.api.channels(), [ok([{"channel": "c"}])])
        self.assertEqual((result, len(requests), delays), ([{"channel": "c"}], 1, []))

    def test_server_fault_then_answer(self) -> None:
        """A 503 is tried again after a backoff, and the next answer is the result."""
        busy = HttpResponse(503, {}, b'{"error": "storage unavailable"}')
        result, requests, delays = run(self.api.ack("c", 1),
                                       [busy, ok({"ok": True, "watermark": 1})])
        self.assertEqual((result, len(requests), delays), (1, 2, [0.1]))

    def test_backoff_doubles_up_to_its_cap(self) -> None:
        """Delays double from `backoff` and stop growing at `max_backoff` (no jitter)."""
        outcomes: list[Outcome] = [self.down] * 6 + [ok([])]
        result, requests, delays = run(self.api.agents(), outcomes)
        self.assertEqual((result, len(requests)), ([], 7))
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 2.5])

    def test_jitter_stays_between_half_and_full(self) -> None:
        """With jitter, each delay is between half and all of its capped backoff."""
        policy = RetryPolicy(retries=3, backoff=1.0, max_backoff=3.0)
        _, _, delays = run(self.api.agents(), [self.down] * 3 + [ok([])], policy,
                           lambda: 0.999)
        for delay, full in zip(delays, [1.0, 2.0, 3.0]):
            self.assertTrue(full / 2 <= delay < full, (delay, full))
        self.assertEqual(len(delays), 3)

    def test_refusal_is_not_retried(self) -> None:
        """A 4xx raises ClientError at once: one request, no delay."""
        refused = HttpResponse(409, {}, b'{"error": "ack past the last message"}')
        error, requests, delays = run(self.api.ack("c", 99), [refused, ok({})])
        assert isinstance(error, ClientError)
        self.assertEqual((error.status, len(requests), delays), (409, 1, []))

    def test_gives_up(self) -> None:
        """After its retries, exchange raises Unreachable (a ConnectionError) naming the
        request, the number of tries and the last failure."""
        bad_gateway = HttpResponse(502, {}, b"<html>Bad Gateway</html>")
        policy = RetryPolicy(retries=2)
        error, requests, delays = run(self.api.channels(),
                                      [self.down, self.down, bad_gateway], policy)
        self.assertIsInstance(error, Unreachable)
        self.assertIsInstance(error, ConnectionError)
        self.assertEqual(str(error), "GET /channels failed after 3 tries: "
                                     "HTTP 502: <html>Bad Gateway</html>")
        self.assertEqual((len(requests), len(delays)), (3, 2))

    def test_transport_failure_named(self) -> None:
        """A last failure with no answer is named by what the transport said."""
        error, _, _ = run(self.api.send("c", "x"), [self.down], RetryPolicy(retries=0))
        self.assertEqual(str(error), "POST /send failed after 1 tries: "
                                     "ConnectionRefusedError: [Errno 111] Connection refused")

    def test_retried_send_repeats_itself_and_read_signs_anew(self) -> None:
        """Through retries a send's request never changes, while a keyed read signs anew."""
        key, _ = keypair()
        api = Api("agent", key, time=lambda: NOW)
        _, sends, _ = run(api.send("c", "x"), [self.down, self.down, ok({"id": 1})])
        self.assertEqual(sends[0], sends[2])
        _, reads, _ = run(api.read("c"), [self.down, self.down, ok([])])
        self.assertEqual(len({r.headers["X-Elipc-Nonce"] for r in reads}), 3)
