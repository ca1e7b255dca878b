"""Client-side pacing: a store that throttles (503 SlowDown, 429) gets fewer requests, not more.

Each client keeps one ``Pace`` per (backend, bucket). Until the store throttles, it costs
nothing and limits nothing. On the first throttle it starts at the rate the client was
actually sending, cut by ``DECREASE``; each success then adds a little (``GROWTH`` of the
rate at the last throttle per second), each throttle cuts again. Many clients that each
do this converge on sharing what the store allows, as TCP flows share a link, instead of
storming it with retries: S3's per-prefix limits (about 5,500 GETs/s) hold for a fleet of
thousands of workers because each backs off on its own, with no coordination.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

__all__ = ["Pace"]

DECREASE = 0.75  # a cut multiplies the rate by this
GROWTH = 0.05  # per second, the rate grows by this share of the rate at the last cut
MIN_RATE = 0.5  # requests per second: the floor, so a client always makes progress
SHARE = 0.05  # a window cuts the rate once this share of its requests (and 2) were throttled
WINDOW = 1.0  # seconds: at most one cut per window, as TCP cuts once per round trip
FREE = 4.0  # a rate grown to this many times the last cut's is unlimited again


class Pace:
    """A request rate that is unlimited until the store throttles, then adapts (AIMD).

    A stray 503 does not slow a client down: a window cuts the rate only when ``SHARE`` of
    its requests (and at least two) were throttled, and at most once.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.rate = float("inf")
        self._peak = 0.0  # the rate at the last cut
        self._next = 0.0  # when the next request may go
        self._start = clock()  # this window's requests and throttles
        self._sent = self._refused = 0
        self._last_cut = -WINDOW
        self.cuts = 0

    @property
    def limited(self) -> bool:
        return self.rate != float("inf")

    def _roll(self, now: float) -> None:
        if now - self._start >= WINDOW:
            self._start, self._sent, self._refused = now, 0, 0

    async def take(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Wait for this request's turn (at once while unlimited)."""
        now = self._clock()
        self._roll(now)
        self._sent += 1
        if self.limited:
            start = max(now, self._next)
            self._next = start + 1.0 / self.rate
            if start > now:
                await sleep(start - now)

    def throttled(self) -> None:
        """The store refused a request for its rate: send less, if that is what is going on."""
        now = self._clock()
        self._roll(now)
        self._refused += 1
        if self._refused < max(2.0, SHARE * self._sent) or now - self._last_cut < WINDOW:
            return
        if not self.limited:  # start from what this client was actually sending
            self.rate = max(self._sent / max(now - self._start, 0.1), 2 * MIN_RATE)
        self._last_cut = now
        self.cuts += 1
        self._peak = self.rate
        self.rate = max(MIN_RATE, self.rate * DECREASE)

    def succeeded(self) -> None:
        """A request went through: probe for a little more."""
        if self.limited:
            self.rate += GROWTH * max(self._peak, 1.0) / self.rate
            if self.rate > FREE * self._peak:
                self.rate = float("inf")
