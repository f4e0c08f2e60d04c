"""Prometheus metrics: what the server counts, times and holds, on a registry of its own.

`GET /metrics` (behind the API key when one is set, like every path) renders the registry in
Prometheus' text format in the reactor's thread pool, so a scrape never blocks the reactor.
The hot paths pay a counter increment or a histogram observation (about a microsecond each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Off:
    """A metric that counts nothing (metrics turned off)."""

    def inc(self, amount: float = 1) -> None:
        """Nothing."""

    def observe(self, amount: float) -> None:
        """Nothing."""

    def labels(self, *values: str) -> _Off:
        """Itself."""
        return self


OFF: Any = _Off()


class Metrics:
    """Every metric of one server (or, turned off, stand-ins that count nothing)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = registry = CollectorRegistry(auto_describe=True)
        if not enabled:
            self.sends = self.reads = self.delivered = self.acks = self.refusals = OFF
            self.bytes_in = self.send_seconds = self.wake_seconds = OFF
            self.batch_size = self.commit_seconds = OFF
            return
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
        self.sends = Counter("elipc_sends", "Messages stored (duplicates of an idempotent "
                             "send not counted)", registry=registry)
        self.reads = Counter("elipc_reads", "Reads answered (GET /messages)",
                             registry=registry)
        self.delivered = Counter("elipc_messages_delivered", "Messages handed to readers",
                                 registry=registry)
        self.acks = Counter("elipc_acks", "Acknowledgements (POST /ack)", registry=registry)
        self.refusals = Counter("elipc_refusals", "Requests refused, by kind (security "
                                "events, rate limits)", ["kind"], registry=registry)
        self.bytes_in = Counter("elipc_request_body_bytes", "Request body bytes received",
                                registry=registry)
        self.send_seconds = Histogram("elipc_send_seconds", "A send, from its request to its "
                                      "commit", buckets=LATENCY_BUCKETS, registry=registry)
        self.wake_seconds = Histogram("elipc_wake_seconds", "A woken long-poll, from the "
                                      "commit that woke it to its answer",
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("elipc_writer_batch_size", "Writes the writer committed "
                                    "in one transaction", buckets=BATCH_BUCKETS,
                                    registry=registry)
        self.commit_seconds = Histogram("elipc_writer_commit_seconds", "One writer turn: its "
                                        "batch and the commit", buckets=LATENCY_BUCKETS,
                                        registry=registry)
        self._waiting = Gauge("elipc_waiting_long_polls", "Long-polls waiting for a message",
                              registry=registry)
        self._streams = Gauge("elipc_open_streams", "Open event streams (GET /stream)",
                              registry=registry)
        self._queued = Gauge("elipc_queued_writes", "Writes waiting for the writer's next "
                             "turn", registry=registry)

    def watch(self, waiting: Callable[[], float], streams: Callable[[], float],
              queued: Callable[[], float]) -> None:
        """Read the gauges from these functions at each scrape."""
        if not self.enabled:
            return
        self._waiting.set_function(waiting)
        self._streams.set_function(streams)
        self._queued.set_function(queued)

    def writer_turn(self, batch: int, seconds: float) -> None:
        """One writer turn committed `batch` writes in `seconds` (called in its thread)."""
        self.batch_size.observe(batch)
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        """The text exposition (call it in a thread: the process collector reads /proc)."""
        return generate_latest(self.registry)
