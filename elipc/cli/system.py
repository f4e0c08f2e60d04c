"""The CLI's view of time: a clock it is handed, so tests can run `read --wait` and retries
without sleeping. No Twisted import."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for signatures and stored times, a monotonic time for deadlines, and sleep."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The process's real clock."""

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Block for `seconds`."""
        time.sleep(seconds)
