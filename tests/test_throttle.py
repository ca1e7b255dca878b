"""A store that throttles: reads slow down, they do not fail, and clients back off together.

The hostile server enforces a request rate for the whole bucket (a token bucket, as S3
does per prefix) and answers ``503 SlowDown`` beyond it. Several clients read through it at
once, each far faster than its share.
"""

from __future__ import annotations

import threading
import time

import anyio
import pytest

import aisio
from aisio._pace import WINDOW, Pace

from .hostile import Reply, Request, hostile_server


class Bucket:
    """``rate`` requests per second, ``burst`` at once; beyond, 503 SlowDown."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()
        self.lock = threading.Lock()
        self.allowed = self.refused = 0

    def __call__(self, req: Request) -> Reply | None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                self.allowed += 1
                return None
            self.refused += 1
        return Reply.of(503, {"Content-Type": "application/xml"},
                        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
                        b"</Message></Error>")


@pytest.mark.parametrize("flavor", ["s3", "ais"])
async def test_throttled_reads_slow_down_and_all_succeed(flavor: str) -> None:
    bucket = Bucket(rate=60, burst=10)
    objects = {f"o{i:03d}": bytes([i]) * (100 + i) for i in range(40)}
    with hostile_server(flavor, bucket) as srv:
        for key, data in objects.items():
            srv.put(key, data)
        clients = [aisio.AsyncClient(srv.config(max_attempts=3, max_concurrency=8,
                                                throttle_timeout=300.0))
                   for _ in range(4)]
        got: list[dict[str, bytes]] = [{} for _ in clients]

        async def read_all(i: int) -> None:
            async def one(key: str) -> None:
                got[i][key] = await clients[i].get(srv.url_of(key))

            async with anyio.create_task_group() as tg:
                for key in objects:
                    tg.start_soon(one, key)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(clients)):
                    tg.start_soon(read_all, i)
            stats = [c.statistics() for c in clients]
        finally:
            for c in clients:
                await c.aclose()
    assert all(g == objects for g in got)  # not one read failed, each exact
    assert sum(s.throttled for s in stats) == bucket.refused > 0  # the store did throttle
    # storming would cost tens of refusals per success; pacing keeps them to a few
    assert bucket.refused <= 3 * bucket.allowed, (bucket.refused, bucket.allowed)


def test_a_stray_throttle_does_not_slow_a_client_down() -> None:
    now = [0.0]
    pace = Pace(clock=lambda: now[0])

    async def main() -> None:
        for i in range(1000):
            now[0] = i * 0.001
            await pace.take(anyio.sleep)
            if i == 500:
                pace.throttled()  # one 503 among a thousand requests
            else:
                pace.succeeded()

    anyio.run(main)
    assert not pace.limited and pace.cuts == 0


def test_sustained_throttling_cuts_the_rate_once_per_window_and_it_grows_back() -> None:
    now = [0.0]
    pace = Pace(clock=lambda: now[0])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def main() -> None:
        for _ in range(200):  # 200 requests/s, every other one refused, for one second
            await pace.take(sleep)
            now[0] += 0.005
            pace.throttled()
            await pace.take(sleep)
            now[0] += 0.005
            pace.succeeded()

    anyio.run(main)
    assert pace.limited and pace.cuts <= now[0] / WINDOW + 1  # one cut a window at most
    assert pace.rate < 200
    first = pace.rate
    for _ in range(2000):  # no more throttles: the rate creeps back up, then is free
        now[0] += 0.01
        pace.succeeded()
    assert not pace.limited or pace.rate > first


def test_backoff_after_thousands_of_throttles_stays_capped() -> None:
    from aisio._retry import RetryPolicy

    policy = RetryPolicy(base=0.01, cap=0.05)
    assert all(0 <= policy.delay(n, rand=lambda: 1.0) <= 0.05 for n in (1, 100, 1100, 10**6))
