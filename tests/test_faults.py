"""Reads through a misbehaving network return exactly the right bytes, or TransientError.

Every test here reads from local_s3(), local_rgw() or local_ais() through the fault-injecting proxy
of ``tests/faults.py``: connections reset or closed mid-body, bodies shorter than their
Content-Length, stalls, 5xx and 429 answers with Retry-After, ranges the server moved or
ignored. The proxy records each exchange, so the tests check not only the bytes but what
was asked for: a cut read resumes at its first missing byte, pinned to the first ETag.

The long variant (``-m reliability``, ``nox -s reliability``) runs ten times the reads.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import pytest

import aisio
from aisio import ReaderConstructor

from .conftest import API
from .faults import Chaos, Exchange, Fault, FaultProxy, fault_proxy, proxied_ais
from .shards import tar_bytes

KiB, MiB = 2**10, 2**20
BUCKET = "aisio-test"
# throttle_timeout=0: a 503 here is one more fault that uses up attempts (a persistent one
# must end in TransientError); test_throttle.py proves that throttled reads slow down instead
FAST = dict(part_size=256 * KiB, max_concurrency=16, max_attempts=6, read_timeout=1.0,
            connect_timeout=2.0, backoff_base=0.01, backoff_max=0.05, throttle_timeout=0.0)
FIGURES: dict[str, Any] = {}
"""What the fault tests measured, printed at the end of each (``pytest -s`` shows them)."""


@dataclass
class Rig:
    """One store behind a fresh proxy: configs through it and straight to the server."""

    name: str
    proxy: FaultProxy
    server: Any
    prefix: str
    direct: aisio.ClientConfig
    endpoint: str
    data_upstream: str
    """Listener names that serve object bytes (``s3``; ``t`` for every AIS target)."""

    def url(self, key: str) -> str:
        return self.prefix + key

    def key(self, key: str) -> str:
        """The object's name as the proxy sees it in a request path."""
        return self.prefix.split("://", 1)[1].split("/", 1)[1] + key

    def config(self, **changes: Any) -> aisio.ClientConfig:
        """A config that reaches the store through the proxy, fast timeouts and backoff."""
        settings = {**FAST, **changes}
        if self.name == "s3":
            s3 = dataclasses.replace(self.server.s3_options(), endpoint_url=self.endpoint)
            return aisio.ClientConfig(s3=s3, **settings)
        return aisio.ClientConfig(ais=aisio.AISOptions(endpoint=self.endpoint), **settings)

    def data_gets(self, key: str | None = None) -> list[Exchange]:
        """GETs of object bytes the proxy served (not listings, not gateway redirects)."""
        return [x for x in self.proxy.snapshot()
                if x.method == "GET" and x.upstream.startswith(self.data_upstream)
                and "list-type" not in x.query and "/v1/buckets" not in x.path
                and (key is None or x.path.endswith(self.key(key)))]

    def overwrite(self, key: str, data: bytes) -> None:
        """Replace an object behind the client's back (blocking; usable from a proxy hook)."""
        if self.name == "s3":
            self.server.boto3_client().put_object(Bucket=BUCKET, Key=self.key(key), Body=data)
        else:
            self.server.put_object(BUCKET, self.key(key), data)


_counter = iter(range(1_000_000))


@pytest.fixture(params=["s3", "rgw", "ais"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    with fault_proxy(seed=7) as proxy:
        prefix = f"faults-{os.getpid()}-{next(_counter)}/"
        if request.param in ("s3", "rgw"):  # moto, or Ceph's RADOS Gateway: both speak S3
            s3 = request.getfixturevalue(f"{request.param}_server")
            endpoint = proxy.listen(s3.endpoint_url, "s3")
            yield Rig("s3", proxy, s3, f"s3://{BUCKET}/{prefix}", s3.config(), endpoint, "s3")
        else:
            ais = request.getfixturevalue("ais_server")
            endpoint = proxied_ais(proxy, ais)
            direct = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=ais.endpoint))
            yield Rig("ais", proxy, ais, f"ais://{BUCKET}/{prefix}", direct, endpoint, "t")


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def put_direct(rig: Rig, blobs: dict[str, bytes]) -> None:
    """Store test objects without the proxy (set-up is not under test)."""
    async with aisio.AsyncClient(rig.direct) as c, anyio.create_task_group() as tg:
        for key, data in blobs.items():
            tg.start_soon(c.put, rig.url(key), data)


def report(name: str, **figures: Any) -> None:
    FIGURES[name] = figures
    print(f"\nFIGURES {name}: {figures}")


# -- a read cut off mid-part resumes at the first byte it did not receive --


@pytest.mark.parametrize("kind", ["short", "stall", "reset"])
async def test_cut_read_resumes_from_the_first_missing_byte(rig: Rig, kind: str) -> None:
    size, cut = 3 * MiB + 123, 1_000_003
    data = payload(size, 1)
    await put_direct(rig, {"cut.bin": data})
    rig.proxy.add(Fault(kind, after=cut), path=rig.key("cut.bin"), upstream=rig.data_upstream)
    async with aisio.AsyncClient(rig.config(part_size=8 * MiB, read_timeout=0.5)) as c:
        assert await c.get(rig.url("cut.bin")) == data
        stats = c.statistics()
    first, second, *rest = rig.data_gets("cut.bin")
    assert not rest and first.fault == kind and second.fault is None
    assert first.range == f"bytes=0-{8 * MiB - 1}"
    resume = int(second.range.removeprefix("bytes=").split("-")[0])  # type: ignore[union-attr]
    assert second.range == f"bytes={resume}-{size - 1}"
    if kind == "reset":  # bytes in flight when the RST came are lost, and fetched again
        assert 0 <= resume <= cut and first.body_bytes == cut
    else:
        assert resume == cut and first.body_bytes == cut
    if rig.name == "s3":  # the resumed GET is pinned to the first response's ETag
        assert second.headers["if-match"].strip('"') and second.headers["if-match"]
    refetched = first.body_bytes + second.body_bytes - size
    assert refetched == cut - resume
    assert (stats.requests, stats.retries, stats.bytes_received) == (2, 1, size)


async def test_cut_in_the_middle_of_one_part_refetches_only_that_parts_tail(rig: Rig) -> None:
    size, part = 5 * MiB, MiB
    data = payload(size, 2)
    await put_direct(rig, {"parts.bin": data})
    third = f"bytes={2 * part}-"
    rig.proxy.add(Fault("short", after=300_000), path=rig.key("parts.bin"), range=third,
                  upstream=rig.data_upstream)
    async with aisio.AsyncClient(rig.config(part_size=part)) as c:
        assert await c.get(rig.url("parts.bin")) == data
        assert c.statistics().bytes_received == size
    gets = rig.data_gets("parts.bin")
    assert len(gets) == 6
    assert sorted(x.range or "" for x in gets if x.fault is None) == sorted(
        [f"bytes={i * part}-{(i + 1) * part - 1}" for i in (0, 1, 3, 4)]
        + [f"bytes={2 * part + 300_000}-{3 * part - 1}"])
    assert sum(x.body_bytes for x in gets) == size  # not one byte fetched twice


# -- faults that do not go away: TransientError after max_attempts, with the cause --


async def test_parts_in_flight_follow_how_near_the_store_is(rig: Rig) -> None:
    """A near store gets 16 parts of a read at once (more only cost CPU); a far one all 64."""
    data = payload(48 * 64 * KiB, 4)
    await put_direct(rig, {"wide.bin": data})
    config = rig.config(part_size=64 * KiB, max_concurrency=64)
    data_listeners = [n for n in rig.proxy.listeners if n.startswith(rig.data_upstream)]

    async def most_open() -> int:
        rig.proxy.reset_peaks()
        async with aisio.AsyncClient(config) as c:
            assert await c.get(rig.url("wide.bin")) == data
        return sum(rig.proxy.max_open(n) for n in data_listeners)

    # near: the first response head comes within a few ms; a loaded machine may slow one
    # past the 10 ms that tell near from far, so the best of three reads counts
    near = min([await most_open() for _ in range(3)])
    rig.proxy.add(Fault("delay", seconds=0.05), times=-1, upstream=rig.data_upstream)
    far = await most_open()
    assert near <= 17 < 40 <= far, (near, far)


def most_in_flight(exchanges: list[Exchange]) -> int:
    """The most exchanges the proxy had under way at one moment."""
    events = sorted([(x.started, 1) for x in exchanges] + [(x.finished, -1) for x in exchanges])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


async def test_max_concurrency_holds_and_cancelled_waiters_give_their_slots_back(rig: Rig) -> None:
    blobs = {f"slots/{i:02d}.bin": payload(100_000, i) for i in range(24)}
    await put_direct(rig, blobs)
    rig.proxy.add(Fault("delay", seconds=0.05), times=-1, upstream=rig.data_upstream)
    async with aisio.AsyncClient(rig.config(max_concurrency=4)) as c:
        await c.head(rig.url("slots/00.bin"))  # the AIS target is known: all GETs go there
        with anyio.move_on_after(0.08):  # most of these wait for a slot when cancelled
            async with anyio.create_task_group() as tg:
                for key in blobs:
                    tg.start_soon(c.get, rig.url(key))
        rig.proxy.clear()
        rig.proxy.add(Fault("delay", seconds=0.05), times=-1, upstream=rig.data_upstream)
        got: dict[str, bytes] = {}

        async def one(key: str) -> None:
            got[key] = await c.get(rig.url(key))

        with anyio.fail_after(30):  # lost slots would leave reads waiting for ever
            async with anyio.create_task_group() as tg:
                for key in blobs:
                    tg.start_soon(one, key)
    with anyio.move_on_after(5):  # the proxy marks a GET finished just after its last byte
        while len([x for x in rig.data_gets() if x.finished]) < len(blobs):
            await anyio.sleep(0.01)
    assert got == blobs
    gets = [x for x in rig.data_gets() if x.finished]
    assert len(gets) >= len(blobs)
    assert most_in_flight(gets) == 4  # never more, and not one slot lost to the cancelled reads


@pytest.mark.parametrize("fault", [
    Fault("status", status=503), Fault("status", status=500, code="InternalError"),
    Fault("reset", after=0), Fault("short", after=0), Fault("stall", after=0), Fault("drop"),
], ids=lambda f: f"{f.kind}-{f.status}" if f.kind == "status" else f.kind)
async def test_persistent_fault_raises_transient_error_after_max_attempts(
    rig: Rig, fault: Fault
) -> None:
    await put_direct(rig, {"doomed.bin": payload(100_000)})
    rig.proxy.add(fault, path=rig.key("doomed.bin"), upstream=rig.data_upstream, times=-1)
    async with aisio.AsyncClient(rig.config(max_attempts=3, read_timeout=0.3)) as c:
        started = time.monotonic()
        with pytest.raises(aisio.TransientError, match=r"doomed\.bin") as info:
            await c.get(rig.url("doomed.bin"))
        assert time.monotonic() - started < 10
        assert info.value.attempts == 3
        assert isinstance(info.value.__cause__, (OSError, aisio.RequestError))
        assert c.statistics().retries == 2
    faulted = [x for x in rig.data_gets("doomed.bin") if x.fault]
    # a dropped connection that had been reused is retried once on a fresh one by the pool
    assert 3 <= len(faulted) <= (6 if fault.kind == "drop" else 3)


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_control_requests_give_up_after_max_attempts_too(rig: Rig, method: str) -> None:
    await put_direct(rig, {"ctl/a": b"a"})
    if method == "HEAD":
        rig.proxy.add(Fault("status", status=503), method="HEAD", times=-1)
    else:  # the listing
        rig.proxy.add(Fault("status", status=503), method="GET", ranged=False, times=-1,
                      upstream="s3" if rig.name == "s3" else "gateway")
    async with aisio.AsyncClient(rig.config(max_attempts=3)) as c:
        with pytest.raises(aisio.TransientError) as info:
            if method == "HEAD":
                await c.head(rig.url("ctl/a"))
            else:
                [i async for i in c.list(rig.url("ctl/"))]
        assert info.value.attempts == 3
    assert sum(1 for x in rig.proxy.snapshot() if x.fault) == 3


# -- throttling: Retry-After is honoured, backoff is jittered --


async def test_backoff_waits_at_least_retry_after(rig: Rig) -> None:
    await put_direct(rig, {"slow.bin": payload(50_000)})
    for method in ("HEAD", "GET"):
        rig.proxy.add(Fault("status", status=429, code="SlowDown", retry_after="1"),
                      method=method, path=rig.key("slow.bin"), times=2,
                      upstream=rig.data_upstream)
    async with aisio.AsyncClient(rig.config(backoff_base=0.01, backoff_max=5)) as c:
        info = await c.head(rig.url("slow.bin"))
        assert await c.get(rig.url("slow.bin")) == payload(50_000)
        assert info.size == 50_000
    waits = _waits_after_faults(rig.proxy.snapshot(), rig.key("slow.bin"))
    assert len(waits) == 4
    assert all(0.95 <= w < 3 for w in waits), waits  # full jitter alone would be < 0.04 s


async def test_backoff_is_jittered_and_capped(rig: Rig) -> None:
    blobs = {f"j/{i:02d}": payload(1000, i) for i in range(16)}
    await put_direct(rig, blobs)
    for key in blobs:
        rig.proxy.add(Fault("status", status=503), path=rig.key(key), times=2,
                      upstream=rig.data_upstream)
    config = rig.config(backoff_base=0.4, backoff_max=0.5)
    async with aisio.AsyncClient(config) as c, anyio.create_task_group() as tg:
        for key in blobs:
            tg.start_soon(c.get, rig.url(key))
    by_key: dict[str, list[float]] = collections.defaultdict(list)
    for key in blobs:
        by_key[key] = _waits_after_faults(rig.proxy.snapshot(), rig.key(key))
    first = [w[0] for w in by_key.values()]
    second = [w[1] for w in by_key.values()]
    # full jitter: the first wait is uniform in [0, 0.4), the second in [0, min(0.8, cap))
    assert all(w < 0.4 + 0.3 for w in first), first
    assert all(w < 0.5 + 0.3 for w in second), second
    assert max(first) - min(first) > 0.1, first  # not a fixed delay
    report(f"jitter-{rig.name}", first=sorted(round(w, 3) for w in first))


def _waits_after_faults(exchanges: list[Exchange], key: str) -> list[float]:
    """Seconds between each faulted answer for ``key`` and the client's next request."""
    mine = sorted((x for x in exchanges if x.path.endswith(key)), key=lambda x: x.started)
    waits = []
    for i, x in enumerate(mine):
        if x.fault and i + 1 < len(mine):
            waits.append(mine[i + 1].started - x.answered)
    return waits


# -- ranges the server (or a middlebox) got wrong are never accepted --


@pytest.mark.parametrize("kind", ["shift_range", "lie_range", "ignore_range"])
async def test_wrong_or_missing_content_range_is_refused_and_retried(rig: Rig, kind: str) -> None:
    data = payload(2 * MiB + 5, 3)
    await put_direct(rig, {"range.bin": data})
    rig.proxy.add(Fault(kind, shift=4096), path=rig.key("range.bin"), ranged=True,
                  upstream=rig.data_upstream)
    async with aisio.AsyncClient(rig.config(part_size=4 * MiB)) as c:
        assert await c.get(rig.url("range.bin"), 1000, 1_500_000) == data[1000:1_500_000]
        assert c.statistics().retries == 1
    assert [x.fault for x in rig.data_gets("range.bin")] == [kind, None]


# -- an object replaced while a faulted read resumes: ObjectChangedError, never a mix --


@pytest.mark.parametrize("how", ["get", "sequential", "range_based", "sync-sequential"])
async def test_object_replaced_between_a_cut_and_its_resume_is_detected(
    rig: Rig, how: str
) -> None:
    old, new = payload(2 * MiB, 4), payload(2 * MiB, 5)
    await put_direct(rig, {"swap.bin": old})
    rig.proxy.add(Fault("short", after=700_000), path=rig.key("swap.bin"),
                  upstream=rig.data_upstream, hook=lambda: rig.overwrite("swap.bin", new))
    config = rig.config(part_size=8 * MiB)
    client: aisio.AsyncClient | aisio.Client = (
        aisio.Client(config) if how.startswith("sync") else aisio.AsyncClient(config))
    api = API(client)
    try:
        with pytest.raises(aisio.ObjectChangedError, match=r"swap\.bin"):
            if how == "get":
                got = await api.get(rig.url("swap.bin"))
            else:
                kind = how.removeprefix("sync-")
                reader = (ReaderConstructor.sequential() if kind == "sequential"
                          else ReaderConstructor.range_based(buffer_size=0))
                r = await api.open(rig.url("swap.bin"), reader)
                got = await r.read()
            assert got == old, "mixed or new bytes returned"  # pragma: no cover
    finally:
        if isinstance(client, aisio.Client):
            await anyio.to_thread.run_sync(client.close)
        else:
            await client.aclose()
    resumed = rig.data_gets("swap.bin")[-1]
    if rig.name == "s3":
        assert resumed.headers.get("if-match") and resumed.status == 412


# -- thousands of reads of every kind under a random fault schedule --


READERS = {
    "sequential": ReaderConstructor.sequential(),
    "range_based": ReaderConstructor.range_based(buffer_size=64 * KiB),
    "range_based-0": ReaderConstructor.range_based(buffer_size=0),
    "dcp_optimized": ReaderConstructor.dcp_optimized(max_gap_size=64 * KiB),
}
SIZES = [0, 1, 100, 4095, 65_536, 262_143, 262_144, 262_145, 700_001, MiB + 17, 1_500_000]
ODD_KEYS = ["with space.bin", "ünïcode/κλειδί.bin", "q?x#y%z+w.bin", "a=b&c.bin"]


def _random_range(rng: random.Random, n: int) -> tuple[int, int]:
    a = rng.randint(0, n)
    return a, rng.randint(a, n)


async def _one_read(api: API, rng: random.Random, url: str, data: bytes) -> str:
    """One random read of ``url``, checked byte for byte; returns what kind it was."""
    n = len(data)
    op = rng.choice(["get", "get", "get_into", "get_ranges", "get_ranges_into", "reader",
                     "reader", "reader"])
    if op == "get":
        if rng.random() < 0.4:
            assert await api.get(url) == data
        else:
            s, e = _random_range(rng, n)
            assert await api.get(url, s, e) == data[s:e]
    elif op == "get_into":
        buf = bytearray(rng.randint(0, n + 10))
        start = rng.randint(0, n)
        got = await api.get_into(url, buf, start)
        assert got == min(len(buf), n - start) and bytes(buf[:got]) == data[start:start + got]
    elif op == "get_ranges":
        ranges = [_random_range(rng, n) for _ in range(rng.randint(1, 5))]
        gap = rng.choice([0, 4096, MiB, math.inf])
        views = await api.get_ranges(url, ranges, gap)
        assert [bytes(v) for v in views] == [data[s:e] for s, e in ranges]
    elif op == "get_ranges_into":
        cuts = sorted(rng.sample(range(n + 1), min(n + 1, 2 * rng.randint(1, 4))))
        pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a]
        bufs = [bytearray(b - a) for a, b in pairs]
        await api.get_ranges_into(url, [(a, buf) for (a, _), buf in zip(pairs, bufs,
                                                                         strict=True)],
                                  rng.choice([0, 8192, math.inf]))
        assert [bytes(b) for b in bufs] == [data[a:b] for a, b in pairs]
    else:
        kind = rng.choice(list(READERS))
        op = f"reader-{kind}"
        ranges = [_random_range(rng, n) for _ in range(3)]
        r = await api.open(url, READERS[kind], ranges=ranges)
        pos = 0
        try:
            for _ in range(rng.randint(1, 6)):
                action = rng.random()
                if action < 0.25:
                    pos = await r.seek(rng.randint(0, n + 5))
                elif action < 0.5 and ranges:
                    s, e = ranges.pop()
                    pos = await r.seek(s)
                    assert await r.read(e - s) == data[s:e]
                    pos = e
                elif action < 0.75:
                    k = rng.randint(0, 300_000)
                    assert await r.read(k) == data[pos:pos + k]
                    pos = min(n, pos + k) if pos < n else pos
                else:
                    buf = bytearray(rng.randint(1, 200_000))
                    got = await r.readinto(buf)
                    assert bytes(buf[:got]) == data[pos:pos + len(buf)]
                    pos = pos + got
                assert await r.tell() == pos
        finally:
            await r.close()
    return op


@dataclass
class Tally:
    """What a chaos run did: reads checked per kind, retries given up, requests."""

    checked: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    transient: int = 0
    doomed: int = 0
    errors: list[BaseException] = dataclasses.field(default_factory=list)


async def _chaos_worker(api: API, rng: random.Random, blobs: dict[str, bytes], urls: dict[str, str],
                        doomed: list[str], reads: int, tally: Tally, attempts: int) -> None:
    keys = list(blobs)
    for _ in range(reads):
        if doomed and rng.random() < 0.03:
            url = rng.choice(doomed)
            try:
                await api.get(url)
            except aisio.TransientError as exc:
                assert exc.attempts == attempts
                tally.doomed += 1
                continue
            raise AssertionError(f"a read of {url} succeeded through a permanent fault")
        key = rng.choice(keys)
        try:
            tally.checked[await _one_read(api, rng, urls[key], blobs[key])] += 1
        except aisio.TransientError as exc:  # allowed: max_attempts faults in a row
            assert exc.attempts == attempts, exc
            tally.transient += 1
        except BaseException as exc:
            tally.errors.append(exc)
            raise


async def run_chaos(rig: Rig, reads: int, *, seed: int, rate: float = 0.15) -> dict[str, Any]:
    """``reads`` random reads (async and sync clients, every reader) under random faults."""
    rng = random.Random(seed)
    blobs = {f"obj-{i}-{size}": payload(size, seed * 1000 + i) for i, size in enumerate(SIZES)}
    blobs.update({key: payload(rng.randint(1, 300_000), i) for i, key in enumerate(ODD_KEYS)})
    doomed = {"doomed-503": b"x" * 1000, "doomed-reset": b"y" * 300_000}
    await put_direct(rig, {**blobs, **doomed})
    config = rig.config()
    rig.proxy.add(Fault("status", status=503), path=rig.key("doomed-503"), times=-1,
                  upstream=rig.data_upstream)
    rig.proxy.add(Fault("reset", after=0), path=rig.key("doomed-reset"), times=-1,
                  upstream=rig.data_upstream)
    rig.proxy.set_chaos(Chaos(rate=rate, stall_seconds=5))
    urls = {key: rig.url(key) for key in blobs}
    doomed_urls = [rig.url(k) for k in doomed]
    tally = Tally()
    started = time.monotonic()
    sync = aisio.Client(config)
    try:
        async with aisio.AsyncClient(config) as ac:
            workers = [(API(ac), 12), (API(sync), 4)]
            total = sum(n for _, n in workers)
            async with anyio.create_task_group() as tg:
                for i, (api, count) in enumerate(workers):
                    for j in range(count):
                        tg.start_soon(_chaos_worker, api, random.Random(seed + 100 * i + j),
                                      blobs, urls, doomed_urls, reads // total, tally,
                                      config.max_attempts)
            stats = [ac.statistics(), sync.statistics()]
    finally:
        await anyio.to_thread.run_sync(sync.close)
    elapsed = time.monotonic() - started
    assert rig.proxy.wait_idle(10), "connections left open after the clients closed"
    exchanges = rig.proxy.snapshot()
    gets = [x for x in rig.data_gets() if x.status in (200, 206)]
    received = sum(s.bytes_received for s in stats)
    random_faults = collections.Counter(x.fault for x in exchanges
                                        if x.fault and "doomed" not in x.path)
    figures = {
        "reads_checked": sum(tally.checked.values()), "gave_up": tally.transient,
        "doomed_reads": tally.doomed, "requests": len(exchanges),
        "random_faults": dict(sorted(random_faults.items())),
        "random_faults_total": sum(random_faults.values()),
        "faults_total": sum(rig.proxy.injected.values()),
        "retries": sum(s.retries for s in stats), "bytes_received": received,
        "refetched_bytes": sum(x.body_bytes for x in gets) - received,
        "seconds": round(elapsed, 1), "by_kind": dict(tally.checked),
    }
    assert not tally.errors
    assert figures["reads_checked"] >= 0.9 * reads
    assert len(tally.checked) >= 8  # every read kind ran
    return figures


async def test_random_faults_every_read_is_exact_or_transient_error(rig: Rig) -> None:
    figures = await run_chaos(rig, 1200, seed=11)
    assert figures["random_faults_total"] > 100 and figures["doomed_reads"] > 0
    report(f"chaos-{rig.name}", **figures)


@pytest.mark.reliability
async def test_random_faults_ten_thousand_reads(rig: Rig) -> None:
    figures = await run_chaos(rig, 10_000, seed=12)
    report(f"chaos-long-{rig.name}", **figures)


# -- datasets, shard readers and DCP restores under random faults --


WORKERS_WARNING = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
DIST_WARNING = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled, unavailable or uninitialized")


def _as_list(batch: Any) -> Any:
    return batch


@WORKERS_WARNING
def test_datasets_and_shards_in_workers_are_exact_under_faults(rig: Rig) -> None:
    from torch.utils.data import DataLoader

    from aisio.torch import IterableDataset, MapDataset, ShardReader

    from .test_reliability import tcp_connections

    rng = random.Random(21)
    objects = {f"ds/{i:03d}.bin": rng.randbytes(rng.randint(0, 400_000)) for i in range(40)}
    samples = {f"s{s}/k{i:02d}": {"txt": f"{s}-{i}".encode(), "bin": rng.randbytes(
        rng.randint(1, 50_000))} for s in range(6) for i in range(10)}
    shards = {f"shards/{s}.tar": tar_bytes([(f"{key}.{ext}", data)
                                       for key, sample in samples.items() if key[1] == str(s)
                                       for ext, data in sample.items()]) for s in range(6)}
    anyio.run(put_direct, rig, {**objects, **shards})
    expected = {rig.url(k): v for k, v in objects.items()}
    rig.proxy.set_chaos(Chaos(rate=0.12, stall_seconds=5))
    config = rig.config(max_attempts=8)

    def load(dataset: Any) -> list[Any]:
        loader = DataLoader(dataset, batch_size=None, num_workers=2,
                            multiprocessing_context="fork", timeout=120, collate_fn=_as_list)
        return list(loader)

    mapped = load(MapDataset.from_prefix(rig.url("ds/"), config=config))
    assert sorted(mapped) == sorted(expected.items())
    streamed = load(IterableDataset.from_prefix(rig.url("ds/"), config=config))
    assert sorted(streamed) == sorted(expected.items())
    got = {key: dict(sample) for key, sample in load(ShardReader(rig.url("shards/"),
                                                                 config=config))}
    assert got == samples
    # the workers are gone and so are their connections: what is open is the parent's
    # own client (it listed the prefix), kept for reuse
    ports = [int(lis.url.rsplit(":", 1)[1]) for lis in rig.proxy.listeners.values()]
    deadline = time.monotonic() + 15
    while rig.proxy.open_connections() != tcp_connections(ports) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.proxy.open_connections() == tcp_connections(ports)
    report(f"datasets-{rig.name}", items=len(mapped) + len(streamed) + len(got),
           faults=rig.proxy.counts(), faults_total=sum(rig.proxy.injected.values()))
    assert sum(rig.proxy.injected.values()) > 10


@DIST_WARNING
@pytest.mark.parametrize("reader", ["dcp_optimized", "sequential", "range_based"])
def test_dcp_restore_is_exact_under_faults(rig: Rig, reader: str) -> None:
    import torch
    from torch.distributed.checkpoint import load, save

    from aisio.torch.dcp import StorageReader, StorageWriter

    g = torch.Generator().manual_seed(5)
    state = {"w": torch.randn(512, 300, generator=g), "b": torch.randn(4000, generator=g),
             "h": torch.randn(77, 129, generator=g).to(torch.bfloat16),
             "step": 7, "meta": {"names": ["a", "b"]}}
    url = rig.url("ckpt")
    save(state, storage_writer=StorageWriter(url, rig.direct, thread_count=3))
    constructors = {"dcp_optimized": None, "sequential": ReaderConstructor.sequential(),
                    "range_based": ReaderConstructor.range_based(buffer_size=64 * KiB)}
    config = rig.config(max_attempts=8, part_size=256 * KiB)
    rounds = 4
    for _ in range(rounds):
        rig.proxy.add(Fault("short", fraction=0.5), path=".distcp", upstream=rig.data_upstream)
        rig.proxy.set_chaos(Chaos(rate=0.25, stall_seconds=5))
        blank = {"w": torch.zeros(512, 300), "b": torch.zeros(4000),
                 "h": torch.zeros(77, 129, dtype=torch.bfloat16), "step": 0,
                 "meta": {"names": []}}
        load(blank, storage_reader=StorageReader(url, config, constructors[reader]))
        for key in ("w", "b", "h"):
            assert torch.equal(blank[key], state[key]), key
        assert blank["step"] == 7 and blank["meta"] == {"names": ["a", "b"]}
    report(f"dcp-{rig.name}-{reader}", restores=rounds, faults=rig.proxy.counts())
    assert rig.proxy.injected["short"] >= rounds
