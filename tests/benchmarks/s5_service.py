"""Scenario 5: an async service: 1,000 concurrent 1 MiB range GETs on the slow link.

Every request starts at once (a burst, after one untimed burst that warms pools and the
allocator, as in a service that has been up for a while); a request's latency is the time from the burst
until its bytes are in hand. Each client is configured for the concurrency asked
(connection pools of that size). The link reference is a client that does nothing but
send the same requests over raw keep-alive sockets and drop the bytes: what the link and
this machine allow at that concurrency, with no client work at all. It reads as few times
as the kernel allows (SO_RCVLOWAT: one wake-up for the rest of a body, as aisio does) and
copies nothing but the response head. A second reference keeps each body in a fresh buffer
of its own: the floor for any client that hands bytes over.
"""

from __future__ import annotations

import asyncio
import socket
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
    """Start every request at once; ``get(start, end)`` returns the number of bytes.

    A service runs for long: one burst warms connection pools and the allocator first
    (untimed, unless ``p["cold"]``), then the timed burst runs.
    """
    latencies: list[float] = []

    async def one(start: int, end: int, t0: float) -> int:
        n = await get(start, end)
        latencies.append(time.perf_counter() - t0)
        return n

    if not p.get("cold"):
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s, e, t0) for s, e in _ranges(p)))
        latencies.clear()
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


async def _aisio_into(p: Params, section: Section) -> dict[str, Any]:
    """``get_into`` buffers the service allocated once and reuses (one per request slot)."""
    import aisio

    from ._common import touched_buffer

    url = f"s3://{BUCKET}/{p['key']}"
    config = aisio_config(p["endpoint"], max_concurrency=p["count"])
    free = [touched_buffer(p["range_size"]) for _ in range(p["count"])]
    async with aisio.AsyncClient(config) as client:
        await client.head(url)

        async def get(start: int, end: int) -> int:
            buf = free.pop()
            try:
                return await client.get_into(url, buf[: end - start], start)
            finally:
                free.append(buf)

        return await _burst(p, get, section)


def aisio_into(p: Params, section: Section) -> dict[str, Any]:
    return asyncio.run(_aisio_into(p, section))


def aisio_into_uvloop(p: Params, section: Section) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_aisio_into(p, section))


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


_HEAD_MAX = 16384


class _Drain(asyncio.BufferedProtocol):
    """Reads one response; done when Content-Length bytes of body are in.

    ``keep=False`` drops the body into a shared scratch buffer; ``keep=True`` reads it into
    a fresh buffer of its own (what any client that hands the bytes over must pay for).
    """

    scratch = memoryview(bytearray(1 << 20))

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.closed = False
        self.sock: Any = None
        self.lowat = 1
        self.reset(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sock = transport.get_extra_info("socket")

    def set_lowat(self, n: int) -> None:
        """Wake only when ``n`` bytes are in: as few reads as the kernel allows (aisio does too)."""
        self.lowat = max(n, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self.lowat)

    def reset(self, done: asyncio.Future[memoryview | None] | None) -> None:
        """Ready for the next response on this keep-alive connection."""
        self.done = done
        self.head = bytearray()
        self.left = -1
        self.body: memoryview | None = None
        self.pos = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.body is not None and self.pos < len(self.body):
            return self.body[self.pos:]
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self.left < 0:
            # only the head's bytes are copied out; the body bytes of this read stay put
            seen = len(self.head)
            self.head += self.scratch[: min(nbytes, _HEAD_MAX)]
            end = self.head.find(b"\r\n\r\n", max(seen - 3, 0))
            if end < 0:
                if len(self.head) >= _HEAD_MAX:
                    raise ConnectionError("response head over 16 KiB")
                return
            length = 0
            for line in bytes(self.head[:end]).split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body_at = end + 4 - seen  # where the body begins in this read
            early = nbytes - body_at
            self.left = length - early
            if self.keep:
                self.body = memoryview(bytearray(length))
                self.body[:early] = self.scratch[body_at:nbytes]
                self.pos = early
            if self.left >= 128 * 1024:
                self.set_lowat(min(self.left, 1 << 20))
        else:
            self.left -= nbytes
            self.pos += nbytes
            if self.left < self.lowat:
                self.set_lowat(self.left)
        if self.left <= 0 and self.done is not None and not self.done.done():
            self.done.set_result(self.body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


async def _raw(p: Params, section: Section, keep: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = p["endpoint"].split("/")[2].split(":")
    path = f"/{BUCKET}/{p['key']}"

    idle: list[tuple[asyncio.BaseTransport, _Drain]] = []

    async def get(start: int, end: int) -> int:
        done: asyncio.Future[memoryview | None] = loop.create_future()
        while idle and idle[-1][1].closed:
            idle.pop()
        if idle:
            transport, proto = idle.pop()
        else:
            transport, proto = await loop.create_connection(lambda: _Drain(keep), host, int(port))
        proto.reset(done)
        transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={start}-{end - 1}"  # type: ignore[attr-defined]
                        f"\r\n\r\n".encode())
        body = await done
        idle.append((transport, proto))
        return end - start if body is None else len(body)

    try:
        return await _burst(p, get, section)
    finally:
        for transport, _ in idle:
            transport.close()


def link_reference(p: Params, section: Section) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_raw(p, section, keep=False))


def link_reference_keep(p: Params, section: Section) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_raw(p, section, keep=True))


PEERS: dict[str, tuple[str, str]] = {
    "aisio async": ("aisio_asyncio", "aisio"),
    "aisio async (uvloop)": ("aisio_uvloop", "aisio"),
    "aisio get_into (reused buffers)": ("aisio_into", "aisio"),
    "aisio get_into (reused buffers, uvloop)": ("aisio_into_uvloop", "aisio"),
    "obstore async": ("obstore_async", "peer"),
    "aiobotocore": ("aiobotocore_async", "peer"),
    "link reference (raw sockets)": ("link_reference", "reference"),
    "raw sockets keeping the bytes": ("link_reference_keep", "reference"),
}

QUICK = ["aisio async", "aisio get_into (reused buffers)", "obstore async", "aiobotocore",
         "link reference (raw sockets)"]
