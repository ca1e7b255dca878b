"""Scenario 5: an async service: 1,000 concurrent 1 MiB range GETs on the slow link.

Every request starts at once (a burst); a request's latency is the time from the burst
until its bytes are in hand. Each client is configured for the concurrency asked
(connection pools of that size). The link reference is a client that does nothing but
send the same requests over raw sockets and drop the bytes: what the link and this
machine allow at that concurrency, with no client work at all.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ._common import BUCKET, aiobotocore_client, aisio_config, obstore_store
from ._harness import Section

Params = dict[str, Any]


def _ranges(p: Params) -> list[tuple[int, int]]:
    """``count`` ranges of ``range_size`` bytes, consecutive, wrapping at the object's end."""
    size, step, count = p["size"], p["range_size"], p["count"]
    slots = size // step
    return [((i % slots) * step, (i % slots) * step + step) for i in range(count)]


def _summary(latencies: list[float], got: int, p: Params) -> dict[str, Any]:
    expected = p["count"] * p["range_size"]
    if got != expected:
        raise RuntimeError(f"read {got} bytes, expected {expected}")
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    return {"bytes": got, "requests": len(lat), "p50_ms": pct(0.50) * 1e3,
            "p99_ms": pct(0.99) * 1e3, "max_ms": lat[-1] * 1e3}


async def _burst(p: Params, get: Any, section: Section) -> dict[str, Any]:
    """Start every request at once; ``get(start, end)`` returns the number of bytes."""
    latencies: list[float] = []

    async def one(start: int, end: int, t0: float) -> int:
        n = await get(start, end)
        latencies.append(time.perf_counter() - t0)
        return n

    with section:
        t0 = time.perf_counter()
        got = sum(await asyncio.gather(*(one(s, e, t0) for s, e in _ranges(p))))
    return _summary(latencies, got, p)


# --- aisio -------------------------------------------------------------------------------------


async def _aisio(p: Params, section: Section) -> dict[str, Any]:
    import aisio

    url = f"s3://{BUCKET}/{p['key']}"
    config = aisio_config(p["endpoint"], max_concurrency=p["count"])
    async with aisio.AsyncClient(config) as client:
        await client.head(url)

        async def get(start: int, end: int) -> int:
            return len(await client.get(url, start, end))

        return await _burst(p, get, section)


def aisio_asyncio(p: Params, section: Section) -> dict[str, Any]:
    return asyncio.run(_aisio(p, section))


def aisio_uvloop(p: Params, section: Section) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_aisio(p, section))


# --- peers ---------------------------------------------------------------------------------------


def obstore_async(p: Params, section: Section) -> dict[str, Any]:
    import obstore

    store = obstore_store(p["endpoint"])

    async def main() -> dict[str, Any]:
        await obstore.head_async(store, p["key"])

        async def get(start: int, end: int) -> int:
            data = await obstore.get_range_async(store, p["key"], start=start, end=end)
            return len(memoryview(data))

        return await _burst(p, get, section)

    return asyncio.run(main())


def aiobotocore_async(p: Params, section: Section) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with aiobotocore_client(p["endpoint"], max_pool=p["count"]) as s3:
            await s3.head_object(Bucket=BUCKET, Key=p["key"])

            async def get(start: int, end: int) -> int:
                resp = await s3.get_object(Bucket=BUCKET, Key=p["key"],
                                           Range=f"bytes={start}-{end - 1}")
                async with resp["Body"] as body:
                    return len(await body.read())

            return await _burst(p, get, section)

    return asyncio.run(main())


# --- the link reference: raw sockets, bytes dropped --------------------------------------------


class _Drain(asyncio.BufferedProtocol):
    """Reads one response into a shared scratch buffer; done when Content-Length is in."""

    scratch = memoryview(bytearray(1 << 20))

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done
        self.head = bytearray()
        self.left = -1

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self.left < 0:
            self.head += self.scratch[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.head[:end]).split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.left = length - (len(self.head) - end - 4)
        else:
            self.left -= nbytes
        if self.left <= 0 and not self.done.done():
            self.done.set_result(0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


async def _raw(p: Params, section: Section) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = p["endpoint"].split("/")[2].split(":")
    path = f"/{BUCKET}/{p['key']}"

    async def get(start: int, end: int) -> int:
        done: asyncio.Future[int] = loop.create_future()
        transport, _ = await loop.create_connection(lambda: _Drain(done), host, int(port))
        transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={start}-{end - 1}"
                        f"\r\n\r\n".encode())
        await done
        transport.close()
        return end - start

    return await _burst(p, get, section)


def link_reference(p: Params, section: Section) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_raw(p, section))


PEERS: dict[str, tuple[str, str]] = {
    "aisio async": ("aisio_asyncio", "aisio"),
    "aisio async (uvloop)": ("aisio_uvloop", "aisio"),
    "obstore async": ("obstore_async", "peer"),
    "aiobotocore": ("aiobotocore_async", "peer"),
    "link reference (raw sockets)": ("link_reference", "reference"),
}

QUICK = ["aisio async", "obstore async", "aiobotocore", "link reference (raw sockets)"]
