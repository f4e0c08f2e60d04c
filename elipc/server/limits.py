"""Rate limits: a token bucket per sender (or agent) and address, and per remote address for
requests that name nobody.

A bucket holds up to `burst` tokens and gains `rate` a second; each request takes one. An
empty bucket refuses the request with how long until a token is back (Retry-After). A name
claimed from another address has a bucket of its own, so nobody can spend an agent's tokens by
sending in its name. Buckets idle long enough to be full again are forgotten, and there are
never more than MAX_BUCKETS.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from elipc.model import Rejected

MAX_BUCKETS = 100_000


class RateLimited(Rejected):
    """Over the rate limit: `retry_after` whole seconds until the next request may pass."""

    def __init__(self, key: str, retry_after: int, **context: str) -> None:
        super().__init__(f"rate limit exceeded for {key}: retry after {retry_after} s",
                         "rate_limited", **context)
        self.retry_after = retry_after


class RateLimits:
    """The buckets of one server; `rate` 0 turns limiting off."""

    def __init__(self, clock: IReactorTime, rate: float, burst: int) -> None:
        self._clock = clock
        self.rate, self.burst = rate, max(1, burst)
        # key -> (tokens, when they were counted); oldest use first.
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def charge(self, address: str, name: str | None = None) -> None:
        """Take a token from the bucket of (`name`, `address`), or of `address` alone when the
        request names nobody; RateLimited when it is empty."""
        if not self.rate:
            return
        now = self._clock.seconds()
        key = (name or "", address)
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            who = f"sender {name}" if name else f"address {address}"
            raise RateLimited(who, max(1, wait), sender=name or "")
        self._buckets[key] = (tokens - 1.0, now)
        self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        # The oldest-used bucket first: once one is full again it behaves as a new one would.
        refill = self.burst / self.rate
        while self._buckets:
            key, (tokens, then) = next(iter(self._buckets.items()))
            if len(self._buckets) <= MAX_BUCKETS and now - then < refill:
                return
            del self._buckets[key]
