"""GET /metrics: Prometheus' text format, parsed by prometheus_client's own parser, moving
as traffic flows."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Server


class MetricsTests(SynchronousTestCase):
    environ: dict[str, str] = {}
    AUTH: dict[str, str] = {}

    def setUp(self) -> None:
        """A server in memory."""
        self.server = Server(self, **self.environ)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                **body: Any) -> tuple[int, bytes, Any]:
        """One request; its status, body and headers."""
        http = self.server.http
        pending = http.request(method, self.server.url(path),
                               headers={**self.AUTH, **(headers or {})}, json=body or None)
        http.flush()
        response = self.successResultOf(pending)
        return response.code, self.successResultOf(http.content(response)), response.headers

    def scrape(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        """Every sample of a scrape, by name and labels."""
        status, body, response_headers = self.request("GET", "/metrics", headers)
        self.assertEqual(status, 200, body)
        self.assertTrue(response_headers.getRawHeaders("content-type")[0].startswith(
            "text/plain; version=0.0.4"))
        samples = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def test_traffic_moves_the_metrics(self) -> None:
        """Sends, reads, acks, refusals, bytes and the histograms count what happened."""
        before = self.scrape()
        for name in ("elipc_sends_total", "elipc_waiting_long_polls", "elipc_open_streams",
                     "elipc_queued_writes", "elipc_send_seconds_count",
                     "process_resident_memory_bytes"):
            self.assertIn(name, before)
        self.assertEqual(before["elipc_sends_total"], 0)
        for content in ("one", "two"):
            self.assertEqual(self.request("POST", "/send", channel="c", sender="a",
                                          content=content)[0], 200)
        self.assertEqual(self.request("GET", "/messages?channel=c&agent=r&ack=manual")[0], 200)
        self.assertEqual(self.request("POST", "/ack", channel="c", agent="r", up_to=2)[0], 200)
        self.assertEqual(self.request("POST", "/send", channel="elipc/x", sender="a",
                                      content="reserved")[0], 400)
        after = self.scrape()
        self.assertEqual(after["elipc_sends_total"], 2)
        self.assertEqual(after["elipc_reads_total"], 1)
        self.assertEqual(after["elipc_messages_delivered_total"], 2)
        self.assertEqual(after["elipc_acks_total"], 1)
        self.assertEqual(after["elipc_send_seconds_count"], 2)
        self.assertGreaterEqual(after["elipc_writer_batch_size_count"], 3)
        self.assertGreater(after["elipc_request_body_bytes_total"], 150)

    def test_wake_and_waiting(self) -> None:
        """A waiting long-poll shows in the gauge; the send that wakes it is timed."""
        http = self.server.http
        waiting = http.get(self.server.url("/messages?channel=c&agent=r&wait=true"),
                           headers=self.AUTH)
        http.flush()
        self.assertEqual(self.scrape()["elipc_waiting_long_polls"], 1)
        self.request("POST", "/send", channel="c", sender="a", content="wake")
        self.assertEqual(self.successResultOf(waiting).code, 200)
        after = self.scrape()
        self.assertEqual(after["elipc_waiting_long_polls"], 0)
        self.assertEqual(after["elipc_wake_seconds_count"], 1)

    def test_refusals_by_kind(self) -> None:
        """A refused (secure-mode) send counts under its kind."""
        from elipc import identity, store

        _, public = identity.generate_keypair()
        conn = store.open_database(self.server.path)
        store.add_operator(conn, "op", public, 1.0)
        conn.close()
        self.assertEqual(self.request("POST", "/send", channel="c", sender="a",
                                      content="x")[0], 403)
        self.assertEqual(self.scrape()['elipc_refusals_total{kind=signature_required}'], 1)


class MetricsBehindApiKeyTests(MetricsTests):
    """With an API key, /metrics is behind it like every path."""

    environ = {"IPC_API_KEY": "k"}
    AUTH = {"Authorization": "Bearer k"}

    def test_needs_the_key(self) -> None:
        """Without the key (or with a wrong one): 401, and the refusal is counted."""
        status, _, _ = self.request("GET", "/metrics", {"Authorization": "Bearer nope"})
        self.assertEqual(status, 401)
        self.assertEqual(self.scrape()["elipc_refusals_total{kind=api_key}"], 1)


class MetricsOffTests(SynchronousTestCase):
    def test_off(self) -> None:
        """IPC_METRICS=0: nothing is counted and /metrics is a 404 saying so."""
        server = Server(self, IPC_METRICS="0")
        pending = server.http.post(server.url("/send"), json={"channel": "c", "sender": "a",
                                                              "content": "x"})
        server.http.flush()
        self.assertEqual(self.successResultOf(pending).code, 200)
        pending = server.http.get(server.url("/metrics"))
        server.http.flush()
        response = self.successResultOf(pending)
        self.assertEqual(response.code, 404)
        self.assertIn(b"IPC_METRICS", self.successResultOf(server.http.content(response)))
