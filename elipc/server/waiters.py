"""Long-poll waiters: one list of Deferreds per channel, woken when the channel may have news.

A waiter is a Deferred that fires True when woken and False when its timeout passes or the
server shuts down. Cancelling it (Klein does, when the client disconnects) removes it at once.
Idle waiters cost nothing: no timer but their own timeout, no polling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class Waiter(Deferred[bool]):
    """A wait on one channel (which its canceller reads: no closure per waiter)."""

    __slots__ = ("channel",)

    def __init__(self, channel: str, canceller: Callable[[Deferred[Any]], None]) -> None:
        super().__init__(canceller)
        self.channel = channel


class Waiters:
    """The pending long-polls, by channel."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # Per channel, a dict used as an ordered set: removal on disconnect is O(1).
        self._by_channel: dict[str, dict[Deferred[bool], None]] = {}
        self._closed = False
        self._cancelled = self._forget  # bound once: every waiter's canceller, no closure each

    @property
    def closed(self) -> bool:
        """Whether the server is stopping (every wait answers at once)."""
        return self._closed

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._by_channel.values())

    def __bool__(self) -> bool:
        return bool(self._by_channel)

    def wait(self, channel: str, timeout: float | None) -> Deferred[bool]:
        """A Deferred that fires True when `channel` is woken, False after `timeout` seconds
        (None: no timeout; the waiter is cancelled or woken)."""
        if self._closed:
            return succeed(False)
        waiter = Waiter(channel, self._cancelled)
        self._by_channel.setdefault(channel, {})[waiter] = None
        if timeout is not None:
            waiter.addTimeout(timeout, self._clock, onTimeoutCancel=_timed_out)
        return waiter

    def wake(self, channel: str) -> None:
        """Fire every waiter of `channel` with True."""
        for waiter in self._by_channel.pop(channel, ()):
            waiter.callback(True)

    def wake_channels(self, channels: set[str] | None) -> None:
        """Wake each of `channels` (those that another process wrote to, say); None: every
        channel (what was written is not known)."""
        for channel in (set(self._by_channel) if channels is None
                        else channels & self._by_channel.keys()):
            self.wake(channel)

    def close(self) -> None:
        """Answer every waiter as timed out (False) and refuse new ones: the server is stopping."""
        self._closed = True
        waiting, self._by_channel = self._by_channel, {}
        for waiters in waiting.values():
            for waiter in waiters:
                waiter.callback(False)

    def _forget(self, waiter: Deferred[Any]) -> None:
        assert isinstance(waiter, Waiter)  # the canceller of Waiters only
        channel = waiter.channel
        waiting = self._by_channel.get(channel, {})
        if waiting.pop(waiter, False) is None and not waiting:
            del self._by_channel[channel]


def _timed_out(result: object, timeout: float) -> bool:
    return False

