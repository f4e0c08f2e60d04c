"""Rate limits: token buckets per sender (or agent) and address, and per address for requests
naming nobody; 429 with Retry-After once empty, flowing again after the refill (task.Clock);
the CLI and the client wait as they are told."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from elipc.protocol import Api, HttpResponse, RetryPolicy, exchange, retry_after
from elipc.server.limits import MAX_BUCKETS, RateLimited, RateLimits
from tests.helpers import Server
from tests.test_remote_cli import RemoteCase


class BucketTests(SynchronousTestCase):
    def setUp(self) -> None:
        """Two requests a second, three at once."""
        self.clock = Clock()
        self.limits = RateLimits(self.clock, rate=2.0, burst=3)

    def test_burst_then_rate(self) -> None:
        """A full bucket lets `burst` through, then refuses with the wait until a token is
        back; time refills it at `rate`."""
        for _ in range(3):
            self.limits.charge("10.0.0.1", "alice")
        with self.assertRaises(RateLimited) as refused:
            self.limits.charge("10.0.0.1", "alice")
        self.assertEqual(refused.exception.retry_after, 1)
        self.assertEqual(refused.exception.kind, "rate_limited")
        self.clock.advance(0.5)
        self.limits.charge("10.0.0.1", "alice")  # one token came back
        self.assertRaises(RateLimited, self.limits.charge, "10.0.0.1", "alice")

    def test_keys(self) -> None:
        """Each name has its own bucket per address, and requests naming nobody share their
        address's: spending alice's tokens from elsewhere is not possible."""
        for _ in range(3):
            self.limits.charge("10.0.0.1", "alice")
        self.limits.charge("10.0.0.2", "alice")
        self.limits.charge("10.0.0.1", "bob")
        self.limits.charge("10.0.0.1")
        self.assertRaises(RateLimited, self.limits.charge, "10.0.0.1", "alice")

    def test_off(self) -> None:
        """Rate 0: nothing is ever refused, nothing is kept."""
        limits = RateLimits(self.clock, rate=0.0, burst=1)
        for _ in range(1000):
            limits.charge("10.0.0.1", "alice")
        self.assertEqual(len(limits), 0)

    def test_idle_buckets_are_forgotten(self) -> None:
        """Buckets full again are dropped as others are used, and never more than
        MAX_BUCKETS are kept."""
        for n in range(10):
            self.limits.charge(f"10.0.0.{n}")
        self.clock.advance(2)  # 3 tokens at 2 a second: full again
        self.limits.charge("10.0.1.1")
        self.assertEqual(len(self.limits), 1)
        self.assertLessEqual(MAX_BUCKETS, 100_000)


class ServerLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        """A server allowing one request a second, two at once."""
        self.server = Server(self, IPC_RATE_LIMIT="1", IPC_RATE_BURST="2")

    def request(self, method: str, path: str, **body: Any) -> tuple[int, Any, Any]:
        http = self.server.http
        pending = http.request(method, self.server.url(path), json=body or None)
        http.flush()
        response = self.successResultOf(pending)
        return (response.code, json.loads(self.successResultOf(http.content(response))),
                response.headers)

    def send(self, sender: str = "a") -> tuple[int, Any, Any]:
        return self.request("POST", "/send", channel="c", sender=sender, content="x")

    def test_429_then_flowing_again(self) -> None:
        """Past the burst a sender gets 429 {"error"} with Retry-After, counted as a
        security event; after the refill its sends flow again. Others are not held up."""
        self.assertEqual([self.send()[0] for _ in range(2)], [200, 200])
        status, answer, headers = self.send()
        self.assertEqual(status, 429)
        self.assertIn("rate limit", answer["error"])
        self.assertEqual(headers.getRawHeaders("retry-after"), ["1"])
        self.assertEqual(self.send("b")[0], 200)
        self.server.clock.advance(1)
        self.assertEqual(self.send()[0], 200)
        health = self.request("GET", "/health")[1]
        self.assertEqual(health["security_events"]["rate_limited"], 1)

    def test_address_pays_for_anonymous_and_bad_requests(self) -> None:
        """Requests naming nobody, and requests refused before they name anyone, are
        charged to their address."""
        self.assertEqual(self.request("GET", "/channels")[0], 200)
        self.assertEqual(self.request("POST", "/send", channel="c")[0], 400)
        status, _, headers = self.request("GET", "/agents")
        self.assertEqual(status, 429)
        self.assertEqual(headers.getRawHeaders("retry-after"), ["1"])


class ClientRetryTests(SynchronousTestCase):
    def test_exchange_waits_retry_after(self) -> None:
        """A 429 is asked again after its Retry-After (at most a minute), the same send."""
        call = Api().send("c", "hi", "a")
        steps = exchange(call, RetryPolicy(), lambda: 0.0)
        first = next(steps)
        self.assertEqual(steps.send(HttpResponse(429, {"retry-after": "3"}, b"{}")), 3.0)
        again = steps.send(None)
        self.assertEqual(again.body, first.body)  # the same idempotency key
        with self.assertRaises(StopIteration) as done:
            steps.send(HttpResponse(200, {}, b'{"ok": true, "id": 4}'))
        self.assertEqual(done.exception.value.id, 4)
        self.assertEqual(retry_after(HttpResponse(429, {"retry-after": "9999"}), 1.0), 60.0)
        self.assertEqual(retry_after(HttpResponse(429, {}), 1.5), 1.5)


class CliRetryTests(RemoteCase):
    environ = {"IPC_RATE_LIMIT": "1", "IPC_RATE_BURST": "1"}

    def test_cli_waits_and_sends(self) -> None:
        """The remote CLI meets a 429, sleeps the Retry-After, and its send goes through."""
        self.remote("send", "c", "a", "one")
        self.assertTrue(json.loads(self.remote("send", "c", "a", "two").out)["ok"])
        self.assertIn(1.0, self.clock.slept)
        stored = [m["content"] for m in json.loads(self.local("history", "c").out)]
        self.assertEqual(stored, ["one", "two"])
