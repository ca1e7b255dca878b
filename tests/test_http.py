"""aisio._http against real servers on loopback: a scripted asyncio server for edge cases."""

from __future__ import annotations

import array
import asyncio
import contextlib
import datetime
import gc
import gzip
import hashlib
import ipaddress
import random
import ssl
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from aisio import _http
from aisio._http import (
    ERROR_BODY_LIMIT,
    ConnectError,
    HTTPPool,
    Response,
    ServerDisconnectedError,
    parse_content_range,
)
from aisio._retry import is_transient
from aisio.errors import ClosedError, RequestError


@lru_cache(maxsize=16)
def pattern(n: int) -> bytes:
    """Deterministic, non-periodic bytes, so a shifted or repeated piece is caught."""
    return random.Random(n).randbytes(n)


Route = Callable[["Server", asyncio.StreamWriter, "Request"], Awaitable[bool]]
BIG = 12 << 20  # a body this big, in one view from a near server, is copied by a worker thread
pattern(BIG)  # made now, so the server answers at once, as a near one does


class Request:
    """What the test server saw: method, path, query, headers, body."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader, seq: int) -> None:
        line, *fields = head.decode("latin-1").split("\r\n")
        self.method, target, _ = line.split(" ")
        parts = urlsplit(target)
        self.path = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.headers = {}
        for field in fields:
            if field:
                name, _, value = field.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self.reader = reader
        self.body = b""
        self.seq = seq  # 0 for the first request on its connection

    def n(self, default: int = 1000) -> int:
        return int(self.query.get("n", default))


class Server:
    """An HTTP/1.1 server whose answer is chosen by the request path; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[Request] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()  # set whenever a connection ends
        self.port = 0
        self.scheme = "http"
        self.scripts: dict[str, bytes] = {}  # what /script?k= sends
        self._server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        self.scheme = "https" if ssl_context else "http"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            seq = 0
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                req = Request(head[:-4], reader, seq)
                if "content-length" in req.headers:
                    req.body = await reader.readexactly(int(req.headers["content-length"]))
                self.requests.append(req)
                seq += 1
                route = ROUTES[req.path]
                if not await route(self, writer, req):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop(); a cancelled handler task makes asyncio.streams log an error
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self.tasks.discard(task)
            self.closed.set()


def head(status: str = "200 OK", **fields: object) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def r_data(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    body = pattern(req.n())
    if "range" in req.headers:
        start, end = (int(x) for x in req.headers["range"].removeprefix("bytes=").split("-"))
        body = body[start : end + 1]
    w.write(head(Content_Length=len(body)))
    if req.method != "HEAD":
        w.write(body)
    return True


async def r_chunked(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    sizes = [int(s) for s in req.query["sizes"].split(",")]
    body = pattern(sum(sizes))
    w.write(head(Transfer_Encoding="chunked"))
    pos = 0
    for size in sizes:
        w.write(f"{size:x};ext=1\r\n".encode() + body[pos : pos + size] + b"\r\n")
        pos += size
        await w.drain()
    w.write(b"0\r\nX-Trailer: yes\r\n\r\n")
    return True


async def r_close(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(head(Connection="close") + pattern(req.n()))
    return False


async def r_close_cl(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(head(Content_Length=req.n(), Connection="close") + pattern(req.n()))
    return False


async def r_short(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(head(Content_Length=req.n()) + pattern(req.n())[: req.n() // 2])
    return False


async def r_stall_head(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    await req.reader.read()  # until the client goes away
    return False


async def r_stall_body(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(head(Content_Length=req.n()) + pattern(req.n())[:100])
    await w.drain()
    await req.reader.read()
    return False


async def r_chunked_stall(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(head(Transfer_Encoding="chunked") + b"1388\r\n" + pattern(5000)[:100])
    await w.drain()
    await req.reader.read()
    return False


async def r_trickle(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    data = head(Content_Length=req.n()) + pattern(req.n())
    gap = float(req.query.get("gap", 0))
    for i in range(len(data)):
        w.write(data[i : i + 1])
        await w.drain()
        await asyncio.sleep(gap if i >= len(data) - 10 else 0)
    return True


async def r_paced(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    """The body in ``pieces`` writes ``gap`` seconds apart, as a paced link delivers it."""
    body, pieces = pattern(req.n()), int(req.query.get("pieces", 16))
    gap = float(req.query.get("gap", 0.005))
    w.write(head(Content_Length=len(body)))
    await w.drain()
    step = -(-len(body) // pieces)
    for i in range(0, len(body), step):
        await asyncio.sleep(gap)
        w.write(body[i : i + step])
        await w.drain()
    return True


async def r_drop_after(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(head(Content_Length=req.n()) + pattern(req.n()))  # says keep-alive, then closes
    return False


async def r_first_only(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    if req.seq > 0:  # a reused connection: hang up without a byte, as a stale one does
        return False
    return await r_data(srv, w, req)


async def r_slow_head(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    await asyncio.sleep(float(req.query.get("delay", 0.05)))
    return await r_data(srv, w, req)


async def r_garbage(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(b"HTTP/1.1 abc\r\n\r\n")
    return False


async def r_raw_head(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    """A head as given in ?lines= (fields split by '|'), then the body 'hello'."""
    fields = req.query.get("lines", "").split("|")
    w.write(("\r\n".join(["HTTP/1.1 200 OK", *fields]) + "\r\n\r\nhello").encode("latin-1"))
    return False


async def r_big_head(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
    return False


async def r_put(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    digest = hashlib.sha256(req.body).hexdigest().encode()
    w.write(head("201 Created", Content_Length=len(digest)) + digest)
    return True


async def r_no_content(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(head("204 No Content"))
    return True


async def r_interim(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return await r_data(srv, w, req)


async def r_script(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    """The bytes in srv.scripts[?k=], verbatim; then hang up, or with &keep=1 serve on."""
    w.write(srv.scripts[req.query["k"]])
    return "keep" in req.query


async def r_huge_error(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    """A 404 that says its body is 1 GB, and sends it until the client goes."""
    w.write(head("404 Not Found", Content_Length=10**9))
    while not w.is_closing():
        w.write(pattern(1 << 20))
        await w.drain()
    return False


async def r_endless_chunked(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    """A 500 whose chunked body never ends."""
    w.write(head("500 Internal Server Error", Transfer_Encoding="chunked"))
    piece = pattern(8192)
    while not w.is_closing():
        w.write(b"2000\r\n" + piece + b"\r\n")
        await w.drain()
    return False


async def r_interim_flood(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    """?count= 103 heads (default: endless), ?gap= s apart, then the 10-byte answer of /data."""
    count, gap = int(req.query.get("count", 10**9)), float(req.query.get("gap", 0))
    for _ in range(count):
        if w.is_closing():
            return False
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await w.drain()
        await asyncio.sleep(gap)
    return await r_data(srv, w, req)


async def r_head_trickle(srv: Server, w: asyncio.StreamWriter, req: Request) -> bool:
    """A head that never ends, one byte every ?gap= s."""
    w.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
    gap = float(req.query.get("gap", 0.05))
    while not w.is_closing():
        w.write(b"a")
        await w.drain()
        await asyncio.sleep(gap)
    return False


ROUTES: dict[str, Route] = {
    "/data": r_data,
    "/chunked": r_chunked,
    "/close": r_close,
    "/close-cl": r_close_cl,
    "/short": r_short,
    "/stall-head": r_stall_head,
    "/stall-body": r_stall_body,
    "/chunked-stall": r_chunked_stall,
    "/trickle": r_trickle,
    "/paced": r_paced,
    "/drop-after": r_drop_after,
    "/first-only": r_first_only,
    "/slow-head": r_slow_head,
    "/garbage": r_garbage,
    "/big-head": r_big_head,
    "/raw-head": r_raw_head,
    "/put": r_put,
    "/no-content": r_no_content,
    "/interim": r_interim,
    "/script": r_script,
    "/huge-error": r_huge_error,
    "/endless-chunked": r_endless_chunked,
    "/interim-flood": r_interim_flood,
    "/head-trickle": r_head_trickle,
}


@pytest.fixture(autouse=True)
def near_means_within_100_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded machine can take over 10 ms to answer on loopback; the far server takes 300."""
    monkeypatch.setattr(_http, "NEAR", 0.1)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    await srv.start()
    yield srv
    await srv.stop()
    gc.collect()  # an unclosed transport would warn now, and warnings are errors


@pytest.fixture
async def pool() -> AsyncIterator[HTTPPool]:
    async with HTTPPool(max_connections_per_host=4, connect_timeout=5, read_timeout=5) as p:
        yield p


async def read_all(resp: Response, view_size: int = 65536) -> bytes:
    """The body, read through readinto with views of one size."""
    out = bytearray()
    buf = memoryview(bytearray(view_size))
    while n := await resp.readinto(buf):
        out += buf[:n]
    return bytes(out)


def copy_threads() -> int:
    return sum(t.name.startswith("aisio-copy") for t in threading.enumerate())


def threads_used(pool: HTTPPool) -> bool:
    """Whether ``pool`` has started worker threads to copy a body."""
    return pool._copier is not None and pool._copier._threads > 0


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- bodies --


@pytest.mark.parametrize("view_size", [1, 7, 4096, 65536, 1 << 20, 4 << 20])
async def test_content_length_body_in_any_view_size(server: Server, pool: HTTPPool, view_size: int) -> None:
    n = 300_001 if view_size > 1 else 20_001
    resp = await pool.request("GET", server.url(f"/data?n={n}"))
    assert (resp.status, resp.reason, resp.content_length) == (200, "OK", n)
    assert resp.headers["Content-Length"] == str(n)
    assert await read_all(resp, view_size) == pattern(n)
    assert await resp.readinto(memoryview(bytearray(10))) == 0  # stays at the end


async def test_empty_view_reads_nothing(server: Server, pool: HTTPPool) -> None:
    for path in ("/data?n=100", "/close?n=100", "/chunked?sizes=100"):
        resp = await pool.request("GET", server.url(path))
        assert await resp.readinto(memoryview(bytearray(0))) == 0
        assert await resp.read() == pattern(100)


async def test_readinto_lands_in_typed_buffers(server: Server, pool: HTTPPool) -> None:
    ints = array.array("i", [0]) * 1000
    resp = await pool.request("GET", server.url("/data?n=4000"))
    assert await resp.readinto(memoryview(ints)) == 4000
    assert ints.tobytes() == pattern(4000)
    with pytest.raises(TypeError):
        await resp.readinto(memoryview(b"readonly"))
    await resp.aclose()


async def test_keep_alive_reuse_is_lifo_and_counted(server: Server, pool: HTTPPool) -> None:
    for _ in range(5):
        resp = await pool.request("GET", server.url("/data?n=100000"))
        assert await read_all(resp) == pattern(100000)
    assert server.connections == 1
    stats = pool.stats()
    assert (stats.opened, stats.reused, stats.idle) == (1, 4, 1)


async def test_read_head_no_content_and_interim(server: Server, pool: HTTPPool) -> None:
    resp = await pool.request("GET", server.url("/data?n=5000"))
    assert await resp.read() == pattern(5000)
    resp = await pool.request("HEAD", server.url("/data?n=5000"))
    assert resp.content_length == 5000
    assert await resp.read() == b""
    resp = await pool.request("GET", server.url("/no-content"))
    assert resp.status == 204
    assert await resp.read() == b""
    resp = await pool.request("GET", server.url("/interim?n=10"))
    assert (resp.status, await resp.read()) == (200, pattern(10))
    assert server.connections == 1


async def test_range_header_is_passed(server: Server, pool: HTTPPool) -> None:
    resp = await pool.request("GET", server.url("/data?n=1000"), {"Range": "bytes=10-19"})
    assert await resp.read() == pattern(1000)[10:20]


@pytest.mark.parametrize("view_size", [3, 4096, 1 << 20])
async def test_chunked_body(server: Server, pool: HTTPPool, view_size: int) -> None:
    sizes = [1, 5, 70000, 3, 100000, 65536]
    resp = await pool.request("GET", server.url("/chunked?sizes=" + ",".join(map(str, sizes))))
    assert resp.content_length is None
    assert await read_all(resp, view_size) == pattern(sum(sizes))
    resp = await pool.request("GET", server.url("/data?n=10"))
    assert await resp.read() == pattern(10)
    assert server.connections == 1  # the chunked connection was reused


async def test_connection_close_is_not_reused(server: Server, pool: HTTPPool) -> None:
    for _ in range(2):
        resp = await pool.request("GET", server.url("/close-cl?n=70000"))
        assert await read_all(resp) == pattern(70000)
    resp = await pool.request("GET", server.url("/close?n=200000"))  # body ends at close
    assert resp.content_length is None
    assert await read_all(resp, 4096) == pattern(200000)
    assert server.connections == 3
    assert pool.stats().reused == 0


async def test_put_body(server: Server, pool: HTTPPool) -> None:
    data = pattern(3 << 20)
    for body in (data, memoryview(data), memoryview(data).cast("i")):
        resp = await pool.request("PUT", server.url("/put"), body=body)
        assert resp.status == 201
        assert await resp.read() == hashlib.sha256(data).hexdigest().encode()
    assert server.requests[-1].headers["content-length"] == str(len(data))


# -- failures --


@pytest.mark.parametrize("size", [100000, BIG], ids=["on-loop", "in-thread"])
async def test_short_body_raises_after_returning_what_came(
    server: Server, pool: HTTPPool, size: int
) -> None:
    resp = await pool.request("GET", server.url(f"/short?n={size}"))
    buf = memoryview(bytearray(size))
    n = await resp.readinto(buf)
    assert n == size // 2 and buf[:n] == pattern(size)[: size // 2]
    assert threads_used(pool) == (size == BIG)
    with pytest.raises(ServerDisconnectedError, match=f"after {size // 2} of {size} body bytes"):
        await resp.readinto(buf)
    resp = await pool.request("GET", server.url(f"/short?n={size}"))
    with pytest.raises(ConnectionError):
        await resp.read()


async def test_timeout_waiting_for_head(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.3) as pool:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no data from .*stall-head for 0.3 s"):
            await pool.request("GET", server.url("/stall-head?X-Amz-Signature=secret"))
        assert 0.25 < time.monotonic() - start < 3
        # the slot was given back and the broken connection not kept
        resp = await pool.request("GET", server.url("/data?n=10"))
        assert await resp.read() == pattern(10)
        assert server.connections == 2


async def test_timeout_in_body_closes_connection(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.3) as pool:
        resp = await pool.request("GET", server.url("/stall-body?n=10000"))
        buf = memoryview(bytearray(100))
        assert await resp.readinto(buf) == 100
        with pytest.raises(TimeoutError):
            await resp.readinto(buf)
        await wait_for(lambda: server.open == 0)
        assert pool.stats().idle == 0


@pytest.mark.parametrize("path", ["/stall-body?n=5000", f"/stall-body?n={BIG}", "/chunked-stall"])
@pytest.mark.parametrize("view_size", [1000, 1 << 20, BIG])
async def test_timeout_keeps_the_bytes_that_came(server: Server, path: str, view_size: int) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.3) as pool:
        resp = await pool.request("GET", server.url(path))
        buf = memoryview(bytearray(view_size))
        assert await resp.readinto(buf) == 100  # the stall: what came is returned...
        assert buf[:100] == pattern(int(path.partition("n=")[2] or 5000))[:100]
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no data from"):  # ...and the timeout raised next
            await resp.readinto(buf)
        assert time.monotonic() - started < 3
        assert threads_used(pool) == (view_size == BIG and str(BIG) in path)


async def test_trickle_resets_the_timeout_on_every_byte(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.5) as pool:
        # the head and body come one byte per write; the last 10 bytes 0.15 s apart,
        # longer in total than read_timeout, each gap shorter
        resp = await pool.request("GET", server.url("/trickle?n=3000&gap=0.15"))
        assert await read_all(resp, 1 << 20) == pattern(3000)
        resp = await pool.request("GET", server.url("/data?n=10"))
        assert await resp.read() == pattern(10)
        assert server.connections == 1


async def test_a_paced_body_wakes_the_loop_once_it_is_all_in(server: Server, pool: HTTPPool) -> None:
    # 1 MiB in 16 writes 5 ms apart: SO_RCVLOWAT lets the kernel hold the pieces until the
    # view can be filled, instead of one socket read (and loop wake-up) per piece
    n = 1 << 20
    resp = await pool.request("GET", server.url(f"/paced?n={n}&pieces=16&gap=0.005"))
    before = pool.stats().reads
    buf = bytearray(n)
    assert await resp.readinto(memoryview(buf)) == n
    assert bytes(buf) == pattern(n)
    assert pool.stats().reads - before <= 3


async def test_a_body_slower_than_the_low_water_mark_still_arrives(server: Server) -> None:
    # 8 pieces of 32 KiB, 0.15 s apart: each gap under read_timeout, the whole over it
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.5) as pool:
        n = 256 << 10
        resp = await pool.request("GET", server.url(f"/paced?n={n}&pieces=8&gap=0.15"))
        buf = bytearray(n)
        assert await resp.readinto(memoryview(buf)) == n
        assert bytes(buf) == pattern(n)


@pytest.mark.parametrize("size", [10000, BIG], ids=["on-loop", "in-thread"])
async def test_cancelled_readinto_closes_connection(server: Server, pool: HTTPPool, size: int) -> None:
    resp = await pool.request("GET", server.url(f"/stall-body?n={size}"))
    buf = memoryview(bytearray(size // 2))
    task = asyncio.create_task(resp.readinto(buf))
    await asyncio.sleep(0.1)
    assert threads_used(pool) == (size == BIG)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)  # a copying thread stops within a poll interval
    await wait_for(lambda: server.open == 0)  # the server saw the connection close
    assert pool.stats().idle == 0
    with pytest.raises(ClosedError):
        await resp.readinto(buf)
    await resp.aclose()
    await resp.aclose()
    assert asyncio.all_tasks() - set(server.tasks) == {asyncio.current_task()}


async def test_cancelled_request_gives_its_slot_back(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=5) as pool:
        task = asyncio.create_task(pool.request("GET", server.url("/stall-head")))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        resp = await asyncio.wait_for(pool.request("GET", server.url("/data?n=10")), 5)
        assert await resp.read() == pattern(10)
        assert server.connections == 2


async def test_stale_idle_connection_is_replaced(server: Server, pool: HTTPPool) -> None:
    resp = await pool.request("GET", server.url("/drop-after?n=10"))
    assert await resp.read() == pattern(10)
    await wait_for(lambda: server.open == 0)
    resp = await pool.request("GET", server.url("/data?n=10"))
    assert await resp.read() == pattern(10)
    assert server.connections == 2


async def test_stale_race_is_retried_once_for_get_only(server: Server, pool: HTTPPool) -> None:
    resp = await pool.request("GET", server.url("/data?n=10"))
    await resp.read()
    # the server hangs up on the reused connection without a byte: retried on a fresh one
    resp = await pool.request("GET", server.url("/first-only?n=10"))
    assert await resp.read() == pattern(10)
    assert server.connections == 2
    with pytest.raises(ServerDisconnectedError):
        await pool.request("POST", server.url("/first-only?n=10"), body=b"x")
    assert server.connections == 2


async def test_connections_per_host_are_bounded(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=2, connect_timeout=5, read_timeout=5) as pool:

        async def get() -> bytes:
            resp = await pool.request("GET", server.url("/slow-head?n=100000"))
            return await read_all(resp)

        results = await asyncio.gather(*(get() for _ in range(8)))
        assert results == [pattern(100000)] * 8
        assert server.max_open == 2 and server.connections == 2


async def test_slow_consumer_pauses_reading(server: Server, pool: HTTPPool) -> None:
    n = 32 << 20
    resp = await pool.request("GET", server.url(f"/data?n={n}"))
    buf = memoryview(bytearray(1 << 20))
    assert await resp.readinto(buf) == len(buf)
    conn = resp._conn
    assert conn is not None and conn.transport is not None
    await asyncio.sleep(0.2)
    assert not conn.transport.is_reading()  # the socket is left to fill and push back
    got = len(buf)
    while n := await resp.readinto(buf):
        got += n
    assert got == 32 << 20


async def test_large_bodies_from_a_near_server_are_copied_by_worker_threads(server: Server) -> None:
    await wait_for(lambda: copy_threads() == 0)  # other tests' pools are gone
    async with HTTPPool(max_connections_per_host=2, connect_timeout=5, read_timeout=5) as pool:

        async def get(path: str) -> bytes:
            resp = await pool.request("GET", server.url(path))
            data = bytearray(BIG + 1)
            with memoryview(data) as buf:
                assert await resp.readinto(buf[:7]) == 7  # a small read first: from the loop
                n = 7 + await resp.readinto(buf[7:])
                assert await resp.readinto(buf) == 0
            body = bytes(data[:n])
            data.clear()  # BufferError if a view of it were still held (by a thread, say)
            return body

        far = await asyncio.gather(*(get(f"/slow-head?n={BIG}&delay=0.3") for _ in range(2)))
        assert far == [pattern(BIG)] * 2 and copy_threads() == 0  # 300 ms away: on the loop
        near = await asyncio.gather(*(get(f"/data?n={BIG}") for _ in range(4)))
        assert near == [pattern(BIG)] * 4 and copy_threads() > 0
        assert server.connections == 2  # each connection went back to the pool after its thread
    await wait_for(lambda: copy_threads() == 0)  # closing the pool ends its threads


async def test_closing_the_pool_stops_a_copying_thread(server: Server) -> None:
    pool = HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=30)
    resp = await pool.request("GET", server.url(f"/stall-body?n={BIG}"))
    buf = memoryview(bytearray(BIG))
    assert await resp.readinto(buf[:100]) == 100
    task = asyncio.create_task(resp.readinto(buf[100:]))
    await wait_for(lambda: copy_threads() > 0)
    await pool.aclose()
    with pytest.raises(ServerDisconnectedError):
        await asyncio.wait_for(task, 2)
    await wait_for(lambda: server.open == 0 and copy_threads() == 0)


async def test_malformed_responses_raise_request_error(server: Server, pool: HTTPPool) -> None:
    with pytest.raises(RequestError, match="malformed status line"):
        await pool.request("GET", server.url("/garbage"))
    with pytest.raises(RequestError, match="over 65536 bytes"):
        await pool.request("GET", server.url("/big-head"))


async def test_response_heads_are_read_as_http_1_1_says(server: Server, pool: HTTPPool) -> None:
    lines = ["Content-LENGTH: 5, 5", "X-Multi: a", "x-multi:  b ", "X-Folded: one", "\t two",
             "ETag: \"MiXeD\""]
    resp = await pool.request("GET", server.url("/raw-head?lines=" + quote("|".join(lines))))
    assert dict(resp.headers) == {"content-length": "5, 5", "x-multi": "a, b",
                                  "x-folded": "one two", "etag": '"MiXeD"'}
    assert (resp.content_length, await resp.read()) == (5, b"hello")
    for bad, match in [("No colon here", "malformed header line"),
                       ("Bad Name: x", "malformed header line"),
                       ("Content-Length: 5, 6", "malformed Content-Length"),
                       ("Content-Length: \u00b2", "malformed Content-Length")]:
        with pytest.raises(RequestError, match=match):
            await pool.request("GET", server.url("/raw-head?lines=" + quote(bad)))


async def test_messages_never_carry_the_query(server: Server, pool: HTTPPool) -> None:
    secret = "?X-Amz-Signature=sekrit&token=sekrit"
    resp = await pool.request("GET", server.url("/short?n=100") + "&X-Amz-Credential=sekrit")
    with pytest.raises(ConnectionError) as short:
        await resp.read()
    with pytest.raises(ConnectError) as refused:
        await pool.request("GET", f"http://127.0.0.1:1/x{secret}")
    with pytest.raises(RequestError) as bad:
        await pool.request("GET", server.url("/garbage" + secret))
    for exc in (short.value, refused.value, bad.value):
        assert "sekrit" not in str(exc) and "sekrit" not in repr(exc)
    assert "sekrit" not in repr(resp)


async def test_closed_pool_and_bad_urls(server: Server) -> None:
    pool = HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=5)
    with pytest.raises(ValueError):
        await pool.request("GET", "ftp://host/x")
    with pytest.raises(ValueError):
        await pool.request("GET", server.url("/data"), {"X-Bad": "a\r\nInjected: 1"})
    resp = await pool.request("GET", server.url("/stall-body?n=1000"))
    await pool.aclose()
    await pool.aclose()
    with pytest.raises(ConnectionError):
        await read_all(resp)
    with pytest.raises(ClosedError):
        await pool.request("GET", server.url("/data"))


async def test_aclose_wakes_requests_waiting_for_a_slot(server: Server) -> None:
    pool = HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=5)
    held = await pool.request("GET", server.url("/stall-body?n=1000"))
    waiting = asyncio.create_task(pool.request("GET", server.url("/data?n=10")))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await pool.aclose()
    with pytest.raises(ClosedError):
        await waiting
    await held.aclose()
    assert server.connections == 1


# -- exact bytes or a typed error, and nothing hangs (issue 15) --


def scripted(server: Server, data: bytes, keep: bool = True) -> str:
    """A URL answered with ``data`` verbatim; its query carries a secret no message may show.

    ``keep``: the server leaves the connection open, so a close seen is the client's.
    """
    key = str(len(server.scripts))
    server.scripts[key] = data
    return server.url(f"/script?k={key}{'&keep=1' if keep else ''}&X-Amz-Signature=sekrit")


def chunked(data: bytes, size: int = 3) -> bytes:
    """``data`` in chunks of ``size``, then the last chunk."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def refused_and_dropped(err: RequestError) -> None:
    """A RequestError the engine does not retry, naming the URL without its query."""
    assert "/script" in str(err) and err.url is not None and "/script" in err.url
    assert "sekrit" not in str(err) and "sekrit" not in err.url
    assert not is_transient(err)


GZIPPED = gzip.compress(b"hello")


@pytest.mark.parametrize(
    "status_and_fields, body",
    [
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked", chunked(GZIPPED)),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip", GZIPPED),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip", GZIPPED),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity", b"hello"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked", chunked(b"hello")),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5", chunked(b"hello")),
        ("HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked", chunked(b"hello")),
        ("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked", chunked(b"hello")),
    ],
    ids=["gzip-chunked", "gzip", "chunked-gzip", "identity", "chunked-twice", "te-cl", "cl-te", "http-1.0"],
)
async def test_framing_other_than_one_chunked_coding_is_refused(
    server: Server, pool: HTTPPool, status_and_fields: str, body: bytes
) -> None:
    url = scripted(server, status_and_fields.encode() + b"\r\n\r\n" + body)
    with pytest.raises(RequestError, match="Transfer-Encoding") as err:
        await pool.request("GET", url)
    refused_and_dropped(err.value)
    await wait_for(lambda: server.open == 0)  # closed by the client: the server kept it open
    assert pool.stats().idle == 0


async def test_chunked_in_any_case_and_on_a_head_is_fine(server: Server, pool: HTTPPool) -> None:
    url = scripted(server, b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  CHUNKED \r\n\r\n" + chunked(b"hello"))
    resp = await pool.request("GET", url)
    assert await resp.read() == b"hello"
    url = scripted(server, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    resp = await pool.request("HEAD", url)
    assert (resp.status, resp.content_length, await resp.read()) == (200, None, b"")
    assert server.connections == 1


@pytest.mark.parametrize(
    "path, status, stream",
    [("/huge-error", 404, pattern(1 << 20)), ("/endless-chunked", 500, pattern(8192) * 8)],
    ids=["content-length-1GB", "endless-chunked"],
)
async def test_an_error_body_is_read_up_to_the_limit_and_its_connection_dropped(
    server: Server, pool: HTTPPool, path: str, status: int, stream: bytes
) -> None:
    resp = await pool.request("GET", server.url(path))
    assert resp.status == status
    tracemalloc.start()
    started = time.monotonic()
    try:
        body = await asyncio.wait_for(resp.read(limit=ERROR_BODY_LIMIT), 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2
    assert body == stream[:ERROR_BODY_LIMIT]  # the first 64 KiB, exactly
    assert peak < 4 * ERROR_BODY_LIMIT  # not the gigabyte the head announced
    await wait_for(lambda: server.open == 0)  # the client hung up rather than read on
    assert pool.stats().idle == 0
    with pytest.raises(ClosedError):
        await resp.readinto(memoryview(bytearray(10)))


async def test_a_body_within_the_limit_is_read_whole_and_its_connection_kept(
    server: Server, pool: HTTPPool
) -> None:
    limit = ERROR_BODY_LIMIT
    for path, n in [("/data?n=1000", 1000), (f"/data?n={limit}", limit), ("/data?n=0", 0),
                    (f"/chunked?sizes={limit}", limit), (f"/chunked?sizes=100,{limit - 100}", limit)]:
        resp = await pool.request("GET", server.url(path))
        assert await resp.read(limit=limit) == pattern(n), path
    assert (server.connections, pool.stats().idle) == (1, 1)
    resp = await pool.request("GET", server.url("/close?n=100"))  # ends at close
    assert await resp.read(limit=limit) == pattern(100)
    for path in ("/data?n=1000", "/chunked?sizes=5,5,5"):  # over the limit: cut, and closed
        resp = await pool.request("GET", server.url(path))
        assert await resp.read(limit=10) == pattern(1000 if "data" in path else 15)[:10]
    await wait_for(lambda: server.open == 0)
    assert pool.stats().idle == 0
    resp = await pool.request("GET", server.url("/data?n=10"))
    with pytest.raises(ValueError):
        await resp.read(limit=-1)
    await resp.aclose()


async def test_interim_responses_are_bounded_in_number_and_in_time(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.5) as pool:
        resp = await pool.request("GET", server.url("/interim-flood?count=8&n=10"))  # 8: accepted
        assert (resp.status, await resp.read()) == (200, pattern(10))
        started = time.monotonic()
        with pytest.raises(RequestError, match="over 8 interim") as err:
            await asyncio.wait_for(pool.request("GET", server.url("/interim-flood")), 5)  # endless
        assert time.monotonic() - started < 2 and not is_transient(err.value)
        # six, each well within read_timeout, all of them not: the head's deadline
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no complete response head from .*flood within 0.5 s"):
            await asyncio.wait_for(pool.request("GET", server.url("/interim-flood?count=6&gap=0.2&n=10")), 5)
        assert 0.45 < time.monotonic() - started < 2
        url = scripted(server, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        with pytest.raises(RequestError, match=r"101 'Switching Protocols' from .*no upgrade") as err:
            await pool.request("GET", url)
        refused_and_dropped(err.value)
        await wait_for(lambda: server.open == 0)
        assert pool.stats().idle == 0


async def test_a_head_trickled_byte_by_byte_times_out(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.3) as pool:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no complete response head from .*trickle within 0.3 s"):
            await asyncio.wait_for(pool.request("GET", server.url("/head-trickle?gap=0.02")), 5)
        assert 0.25 < time.monotonic() - started < 2
        resp = await pool.request("GET", server.url("/data?n=10"))
        assert await resp.read() == pattern(10)
        assert server.connections == 2


async def test_request_timeout_bounds_a_body_that_trickles(server: Server) -> None:
    with pytest.raises(ValueError):
        HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=1, request_timeout=0)
    # read_timeout well above the gaps, so a loaded machine's late piece cannot trip it first
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=3,
                        request_timeout=0.5) as pool:
        # the last 10 bytes 0.15 s apart: never idle for read_timeout, over request_timeout
        resp = await pool.request("GET", server.url("/trickle?n=3000&gap=0.15"))
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"not complete within 0.5 s of the request"):
            await asyncio.wait_for(read_all(resp, 1 << 20), 5)
        assert time.monotonic() - started < 1
        # the same in a worker thread's copy: 16 pieces 0.1 s apart
        resp = await pool.request("GET", server.url(f"/paced?n={BIG}&pieces=16&gap=0.1"))
        with pytest.raises(TimeoutError, match=r"not complete within 0.5 s of the request"):
            await asyncio.wait_for(read_all(resp, BIG), 5)
        assert threads_used(pool) and time.monotonic() - started < 2.5
        resp = await pool.request("GET", server.url("/data?n=1000"))  # in time: unharmed
        assert await resp.read() == pattern(1000)


async def test_a_request_timeout_under_read_timeout_bounds_a_reused_connections_head(server: Server) -> None:
    async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=5,
                        request_timeout=0.3) as pool:
        resp = await pool.request("GET", server.url("/data?n=10"))  # its wait armed the timer 5 s on
        assert await resp.read() == pattern(10)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no data from .*stall-head for 0.3 s"):
            await asyncio.wait_for(pool.request("GET", server.url("/stall-head")), 5)  # reused
        assert time.monotonic() - started < 2 and server.connections == 1


@pytest.mark.parametrize(
    "value",
    ["9" * 5000, "1" * 20, "\u00b3", "1\u00b2", "\u0663", "+5", "-5", "0x5", "5 5", "5,", "", " "],
)
async def test_content_length_is_one_to_nineteen_ascii_digits(
    server: Server, pool: HTTPPool, value: str
) -> None:
    raw = value.encode("latin-1") if value.isascii() or value < "\u0100" else value.encode()
    url = scripted(server, b"HTTP/1.1 200 OK\r\nContent-Length: " + raw + b"\r\n\r\nhello")
    with pytest.raises(RequestError, match="malformed Content-Length") as err:
        await pool.request("GET", url)
    refused_and_dropped(err.value)
    url = scripted(server, b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000005\r\n\r\nhello")
    resp = await pool.request("GET", url)
    assert (resp.content_length, await resp.read()) == (5, b"hello")


@pytest.mark.parametrize(
    "chunks",
    [b"1" + b"0" * 16, b"f" * 5000, b" 5", b"+5", b"-1", b"0x5", b"5\xb3", b"\xd9\xa3", b"", b";x", b"5 5"],
)
async def test_chunk_sizes_are_one_to_sixteen_hex_digits(
    server: Server, pool: HTTPPool, chunks: bytes
) -> None:
    te = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    url = scripted(server, te + chunks + b"\r\nhello\r\n")
    resp = await pool.request("GET", url)
    with pytest.raises(RequestError, match="malformed chunk size") as err:
        await read_all(resp)
    refused_and_dropped(err.value)
    await wait_for(lambda: server.open == 0)
    good = b"5 ;ext=1\r\nhello\r\n0000000000000001\r\n!\r\n0\r\n\r\n"
    resp = await pool.request("GET", scripted(server, te + good))
    assert await read_all(resp) == b"hello!"


async def test_endless_trailers_are_refused(server: Server, pool: HTTPPool) -> None:
    trailers = b"X-Trailer: " + b"a" * 50 + b"\r\n"
    url = scripted(server, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                   + trailers * 2000)  # 128 KiB of them, no end
    resp = await pool.request("GET", url)
    buf = memoryview(bytearray(100))
    assert await resp.readinto(buf) == 5 and bytes(buf[:5]) == b"hello"
    with pytest.raises(RequestError, match="trailers over 65536 bytes") as err:
        await resp.readinto(buf)
    refused_and_dropped(err.value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bytes 0-0/1", (0, 0, 1)),
        ("bytes 10-19/1000", (10, 19, 1000)),
        ("BYTES 10-19/*", (10, 19, None)),
        (" bytes 0-9/10 ", (0, 9, 10)),
        (f"bytes 0-{10**18}/{10**19 - 1}", (0, 10**18, 10**19 - 1)),
        ("bytes */1000", None),  # unsatisfied: no range to return
        ("bytes 19-10/1000", None),
        ("bytes 0-10/10", None),
        ("bytes 0-9", None),
        ("bytes=0-9/10", None),
        ("bytes  0-9/10", None),
        ("bits 0-9/10", None),
        ("byte\u017f 0-9/10", None),  # U+017F folds to 's' unless matching is ASCII-only
        ("bytes 0-\u0663/10", None),
        ("bytes 0-\u00b3/10", None),
        ("bytes +0-9/10", None),
        ("bytes 0-9/-1", None),
        (f"bytes 0-{'9' * 20}/*", None),
        (f"bytes 0-9/{'9' * 5000}", None),
        ("bytes 0-9/10\n", None),
        ("", None),
    ],
)
def test_parse_content_range(value: str, expected: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(value) == expected


# -- TLS --


def make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aisio test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


async def test_https_verified_by_default_and_with_trusted_ca(tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = Server()
    await srv.start(server_ctx)
    try:
        async with HTTPPool(max_connections_per_host=2, connect_timeout=5, read_timeout=5) as p:
            with pytest.raises(RequestError, match="not trusted"):
                await p.request("GET", srv.url("/data?n=10"))
        trusted = ssl.create_default_context(cafile=str(ca))
        async with HTTPPool(
            max_connections_per_host=2, connect_timeout=5, read_timeout=5, ssl_context=trusted
        ) as p:
            for _ in range(2):
                resp = await p.request("GET", srv.url("/data?n=3000000"))
                assert await read_all(resp, 1 << 20) == pattern(3000000)
            sizes = "1,70000,5"
            resp = await p.request("GET", srv.url(f"/chunked?sizes={sizes}"))
            assert await read_all(resp, 4096) == pattern(70006)
            assert p.stats().reused == 2
    finally:
        await srv.stop()


def test_runs_on_uvloop() -> None:
    """The optional faster loop: its transports call the same BufferedProtocol hooks."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        srv = Server()
        await srv.start()
        try:
            async with HTTPPool(max_connections_per_host=2, connect_timeout=5, read_timeout=0.3) as pool:
                for view_size in (7, 1 << 20):
                    resp = await pool.request("GET", srv.url("/data?n=3000000"))
                    assert await read_all(resp, view_size) == pattern(3000000)
                resp = await pool.request("GET", srv.url("/chunked?sizes=5,70000,3"))
                assert await read_all(resp, 4096) == pattern(70008)
                resp = await pool.request("GET", srv.url(f"/data?n={BIG}"))
                assert await read_all(resp, BIG) == pattern(BIG) and threads_used(pool)
                for path, view_size in ((f"/stall-body?n={BIG}", BIG), ("/stall-body?n=1000", 65536)):
                    resp = await pool.request("GET", srv.url(path))
                    with pytest.raises(TimeoutError):
                        await read_all(resp, view_size)
                assert pool.stats().reused == 4
                with pytest.raises(TimeoutError, match="no complete response head"):  # uvloop's clock
                    await asyncio.wait_for(pool.request("GET", srv.url("/head-trickle?gap=0.02")), 5)
            async with HTTPPool(max_connections_per_host=1, connect_timeout=5, read_timeout=0.3) as pool:
                # a large ranged body: head read alone, then the body in few reads, also
                # when it came right behind the head (uvloop reads on at once: it pauses)
                n = 1 << 20
                for path in (f"/paced?n={n}&pieces=16", f"/data?n={n}"):
                    before = pool.stats().reads
                    resp = await pool.request("GET", srv.url(path), expected=n)
                    buf = bytearray(n)
                    assert await resp.readinto(memoryview(buf)) == n and bytes(buf) == pattern(n)
                    assert pool.stats().reads - before <= 6, path
                resp = await pool.request("GET", srv.url(f"/stall-body?n={n}"), expected=n)
                with pytest.raises(TimeoutError):
                    await read_all(resp, n)
        finally:
            await srv.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
