"""Read one large object over loopback HTTP (nginx) into a preallocated buffer, many ways.

Compares aisio._http (one stream; concurrent range GETs; optionally on uvloop) with
http.client, aiohttp, httpx, obstore and curl. Every client fills the same touched
buffer (curl writes to /dev/null), so page faults are not measured. Methods run
alternately, round after round; the table shows the median GB/s (1e9 bytes/s), the
median of each round's ratio to http.client, and the client's CPU seconds per GiB, which
is steadier than wall clock on a shared machine.

    python tests/benchmarks/bench_http.py [--size-mib 1024] [--rounds 5] [--only aisio]

Needs nginx (apt-get install -y nginx); aiohttp, httpx, obstore, uvloop and curl are
used when present.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _nginx import serve

from aisio._http import HTTPPool

NAME = "object.bin"
VIEW = 64 << 20  # readinto size for single-stream aisio reads


def make_object(folder: Path, size: int) -> Path:
    """A file of ``size`` bytes: 1 MiB of random bytes, repeated."""
    path = folder / NAME
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
        f.write(block[: size & ((1 << 20) - 1)])
    return path


def touched_buffer(size: int) -> memoryview:
    """A bytearray whose pages are already mapped, so no client pays the page faults."""
    buf = bytearray(size)
    view = memoryview(buf)
    ones = b"\1" * (64 << 20)
    for pos in range(0, size, len(ones)):
        view[pos : pos + len(ones)] = ones[: size - pos]
    return view


# -- the clients; each returns the number of bytes it read --


def run_http_client(url: str, buf: memoryview) -> int:
    host = url.split("/")[2]
    conn = http.client.HTTPConnection(host)
    try:
        conn.request("GET", "/" + NAME)
        resp = conn.getresponse()
        got = 0
        while got < len(buf):
            n = resp.readinto(buf[got:])
            if not n:
                break
            got += n
        return got
    finally:
        conn.close()


def run_curl(url: str, buf: memoryview) -> int:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", f"{url}/{NAME}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(float(out.stdout))


async def aisio_one(url: str, buf: memoryview) -> int:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=30) as pool:
        resp = await pool.request("GET", f"{url}/{NAME}")
        got = 0
        while n := await resp.readinto(buf[got : got + VIEW]):
            got += n
        return got


def aisio_ranges(streams: int, part: int) -> Callable[[str, memoryview], Awaitable[int]]:
    """``streams`` workers each GET the next ``part``-byte range into its slice of buf."""

    async def run(url: str, buf: memoryview) -> int:
        async with HTTPPool(max_connections_per_host=streams, connect_timeout=5, read_timeout=30) as pool:
            starts = iter(range(0, len(buf), part))

            async def worker() -> int:
                got = 0
                for start in starts:
                    end = min(start + part, len(buf))
                    rng = {"Range": f"bytes={start}-{end - 1}"}
                    resp = await pool.request("GET", f"{url}/{NAME}", rng)
                    view = buf[start:end]
                    pos = 0
                    while n := await resp.readinto(view[pos:]):
                        pos += n
                    got += pos
                return got

            return sum(await asyncio.gather(*(worker() for _ in range(streams))))

    return run


async def aiohttp_one(url: str, buf: memoryview) -> int:
    import aiohttp

    session = aiohttp.ClientSession(auto_decompress=False)
    async with session, session.get(f"{url}/{NAME}") as resp:
        got = 0
        async for chunk in resp.content.iter_any():
            buf[got : got + len(chunk)] = chunk
            got += len(chunk)
        return got


async def httpx_one(url: str, buf: memoryview) -> int:
    import httpx

    async with httpx.AsyncClient() as client, client.stream("GET", f"{url}/{NAME}") as resp:
        got = 0
        async for chunk in resp.aiter_raw():
            buf[got : got + len(chunk)] = chunk
            got += len(chunk)
        return got


async def obstore_one(url: str, buf: memoryview) -> int:
    import obstore
    from obstore.store import HTTPStore

    store = HTTPStore.from_url(url, client_options={"allow_http": True})
    resp = await obstore.get_async(store, NAME)
    got = 0
    async for chunk in resp.stream(min_chunk_size=8 << 20):
        view = memoryview(chunk)
        buf[got : got + len(view)] = view
        got += len(view)
    return got


def on_asyncio(fn: Callable[[str, memoryview], Awaitable[int]]) -> Callable[..., int]:
    return lambda url, buf: asyncio.run(fn(url, buf))  # type: ignore[arg-type]


def on_uvloop(fn: Callable[[str, memoryview], Awaitable[int]]) -> Callable[..., int]:
    import uvloop

    def run(url: str, buf: memoryview) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(fn(url, buf))  # type: ignore[arg-type]

    return run


def methods() -> dict[str, Callable[[str, memoryview], int]]:
    """Name -> blocking callable, for every client installed here."""
    have = {m: importlib.util.find_spec(m) is not None for m in ("aiohttp", "httpx", "obstore")}
    table: dict[str, Callable[[str, memoryview], int]] = {
        "http.client readinto": run_http_client,
        "aisio 1 stream": on_asyncio(aisio_one),
        "aisio 4 x 8 MiB ranges": on_asyncio(aisio_ranges(4, 8 << 20)),
        "aisio 8 x 8 MiB ranges": on_asyncio(aisio_ranges(8, 8 << 20)),
        "aisio 4 x 64 MiB ranges": on_asyncio(aisio_ranges(4, 64 << 20)),
    }
    if importlib.util.find_spec("uvloop"):
        table["aisio 1 stream, uvloop"] = on_uvloop(aisio_one)
        table["aisio 8 x 8 MiB, uvloop"] = on_uvloop(aisio_ranges(8, 8 << 20))
    if have["aiohttp"]:
        table["aiohttp iter_any"] = on_asyncio(aiohttp_one)
    if have["httpx"]:
        table["httpx aiter_raw"] = on_asyncio(httpx_one)
    if have["obstore"]:
        table["obstore stream 8 MiB"] = on_asyncio(obstore_one)
    if shutil.which("curl"):
        table["curl -o /dev/null"] = run_curl
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="run methods whose name contains this")
    args = parser.parse_args(argv)
    size = args.size_mib << 20
    table = {k: v for k, v in methods().items() if args.only in k or "http.client" in k}
    results: dict[str, list[float]] = {name: [] for name in table}
    cpu_per_gib: dict[str, list[float]] = {name: [] for name in table}
    with tempfile.TemporaryDirectory(prefix="aisio-bench-") as tmp:
        make_object(Path(tmp), size)
        buf = touched_buffer(size)
        with serve(tmp) as url:
            run_http_client(url, buf)  # warm the page cache and nginx
            names = list(table)
            for rnd in range(args.rounds):
                # each round starts one method later, so none always follows the same one
                shift = rnd % len(names)
                for name in names[shift:] + names[:shift]:
                    fn = table[name]
                    cpu = cpu_seconds()
                    start = time.perf_counter()
                    got = fn(url, buf)
                    elapsed = time.perf_counter() - start
                    if got != size:
                        raise SystemExit(f"{name}: read {got} bytes, expected {size}")
                    results[name].append(size / elapsed / 1e9)
                    cpu_per_gib[name].append((cpu_seconds() - cpu) * (1 << 30) / size)
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    load = os.getloadavg()[0]
    report(results, cpu_per_gib, size, f"{os.cpu_count()} cores, load average {load:.1f}")


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (curl)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def report(speeds: dict[str, list[float]], cpu: dict[str, list[float]], size: int, machine: str) -> None:
    """A markdown table: median GB/s (wall clock), spread, ratio, client CPU per GiB."""
    base = speeds["http.client readinto"]
    print(f"\n{size >> 20} MiB object from nginx on loopback; {machine}; median of rounds")
    print("GB/s = 1e9 bytes/s of wall clock; vs http.client = median of per-round ratios;")
    print("CPU = client user+sys seconds per GiB\n")
    print(f"| {'method':<26} | GB/s | min-max     | vs http.client | CPU s/GiB |")
    print(f"|{'-' * 28}|------|-------------|----------------|-----------|")
    for name, runs in speeds.items():
        med = statistics.median(runs)
        spread = f"{min(runs):.2f}-{max(runs):.2f}"
        per_gib = statistics.median(cpu[name])
        ratio = statistics.median(x / y for x, y in zip(runs, base, strict=True))
        print(f"| {name:<26} | {med:4.2f} | {spread:<11} | {ratio:>13.2f}x | {per_gib:9.2f} |")


if __name__ == "__main__":
    main()
