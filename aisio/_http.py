"""HTTP/1.1 connection pool for data-path requests: response bodies land in the caller's buffer.

The socket is read by an ``asyncio.BufferedProtocol`` whose ``get_buffer()`` hands the
transport a slice of the memoryview given to ``Response.readinto``, so the kernel (or the
TLS layer) copies body bytes straight into it. Only the status line, headers, chunk-size
lines, reads under 64 KiB, and body bytes that arrive between two reads pass through a
small per-connection buffer (256 KiB). Reading pauses once that buffer is full while no
caller buffer waits, so a slow consumer holds no more than it (and the socket's buffer).
While a large view waits, the socket's SO_RCVLOWAT is raised to what the view still needs
(up to 1 MiB), so the kernel wakes the loop once for it rather than once per arriving packet
burst; a timer lowers it again if the server stalls, so bytes that came are never held back.

A read of 4 MiB or more from a server that answered within 10 ms is copied from the
socket by one of the pool's two worker threads instead (plain HTTP only): on loopback or
in the same rack the copy out of the kernel is the bottleneck, and one event-loop thread
can only do it on one core.

Errors: transport failures are ``OSError`` (``ConnectError``, ``ServerDisconnectedError``,
``TimeoutError``), which the engine retries; a malformed response or an untrusted TLS
certificate is ``aisio.errors.RequestError``. Malformed includes what could otherwise hand
back wrong bytes or never end: a transfer coding other than ``chunked`` (bodies are never
decoded), Transfer-Encoding beside Content-Length, a number that is not a few ASCII digits,
over 8 interim (1xx) heads, trailers or a head over 64 KiB. The whole head must arrive
within read_timeout of sending the request. Error bodies are read with a cap
(``Response.read(limit=ERROR_BODY_LIMIT)``). No message contains a URL's query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import select
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from ._config import NEAR
from ._slots import Slots
from ._url import redact
from .errors import ClosedError, InvalidURLError, RequestError

__all__ = [
    "ERROR_BODY_LIMIT",
    "ConnectError",
    "HTTPPool",
    "Headers",
    "PoolStats",
    "Response",
    "ServerDisconnectedError",
    "parse_content_range",
]

ERROR_BODY_LIMIT = 64 * 1024  # most bytes of an error or redirect body worth reading: Response.read(limit)

_SPILL = 256 * 1024  # per connection: head, chunk lines, small reads, bytes between reads
_DIRECT = 64 * 1024  # reads at least this big go straight from the socket to the caller
_MAX_LINE = 64 * 1024  # longest response head or chunk-size line accepted
_READ_CHUNK = 256 * 1024  # read() of a body of unknown length, piece by piece
_THREAD_MIN = 4 * 1024 * 1024  # reads this big from a near server are copied by a worker thread
_COPIERS = 2  # worker threads per pool that copy large bodies from near servers
_POLL = 0.05  # seconds a copying thread waits for data before it looks at its stop flag
_LOWAT_MIN = 128 * 1024  # a direct read of at least this wakes the loop only when ...
_LOWAT = 1024 * 1024  # ... all of it, or this much, has come
_HEAD_READ = 4096  # a head ahead of a large body is read in pieces this big (most fit one)
_MAX_INTERIM = 8  # 1xx responses accepted ahead of the final one
_NEVER = float("inf")  # no deadline


def _lowat_works() -> bool:
    """Linux 4.19+ wakes a reader when SO_RCVLOWAT is lowered and grows the buffer to fit it."""
    if sys.platform != "linux":
        return False
    try:
        major, minor = (int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    except ValueError:
        return False
    return (major, minor) >= (4, 19)


_LOWAT_WORKS = _lowat_works()
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CTL = re.compile(r"[\r\n\x00]")
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only (str.isdigit takes '\u0663', int() 5000 digits)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")  # a chunk size
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)", re.ASCII | re.IGNORECASE)

# How the end of a body is found.
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)


class ConnectError(ConnectionError):
    """The TCP or TLS connection to the server could not be made."""


class ServerDisconnectedError(ConnectionError):
    """The connection closed or reset before the response was complete."""


@dataclass(frozen=True)
class PoolStats:
    """Counters of an HTTPPool: connections opened and reused, idle now, and socket reads."""

    opened: int
    reused: int
    idle: int
    reads: int = 0


class Headers(Mapping[str, str]):
    """Response headers; lookup ignores case; repeated fields are joined with ', '."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # lower-case names

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:  # Mapping's goes through KeyError
        return self._fields.get(name.lower(), default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


class _Conn(asyncio.BufferedProtocol):
    """One connection; the transport reads into ``_target`` when a caller waits, else ``_buf``."""

    __slots__ = (
        "_buf",
        "_copier",
        "_deadline",
        "_end",
        "_filled",
        "_head_cap",
        "_head_in",
        "_last",
        "_late",
        "_loop",
        "_lowat",
        "_mv",
        "_paused",
        "_pos",
        "_sock",
        "_stop",
        "_target",
        "_timeout",
        "_timer",
        "_waiter",
        "_want",
        "_write_waiter",
        "closed",
        "eof",
        "error",
        "host",
        "partial",
        "received",
        "transport",
        "waited",
        "where",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        where: str,
        host: _Host,
        copier: _Copier | None = None,
    ) -> None:
        self._loop = loop
        self._copier = copier
        self._timeout = read_timeout
        self._buf = bytearray(_SPILL)
        self._mv = memoryview(self._buf)
        self._pos = 0  # unread bytes of _buf are [_pos, _end)
        self._end = 0
        self._target: memoryview | None = None
        self._filled = 0
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._deadline = _NEVER  # loop time by which the wait under way must be over
        self._late = "response from {} not in time"  # the message then ({} is the URL)
        self._paused = False
        self._stop: threading.Event | None = None  # set to stop a copying thread
        self._sock: Any = None  # the plain TCP socket, whose SO_RCVLOWAT we raise
        self._lowat = 1
        self._head_cap = 0  # if set, reads before the head is in take at most this many bytes
        self._head_in = False  # the head has come: what follows is the large body
        self.error: BaseException | None = None  # why the connection was lost, if it failed
        self.host = host  # the pool entry whose slot this connection holds while in use
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.eof = False
        self.received = 0  # bytes received since the current request was sent
        self.partial = 0  # bytes read_into put in the caller's view before it raised
        self.where = where  # scheme://host:port/path of the current request, for messages
        self.waited = 1.0  # seconds from sending the current request to its head

    # -- asyncio callbacks: keep these lean, they run once per socket read --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if _LOWAT_WORKS and transport.get_extra_info("sslcontext") is None:
            self._sock = transport.get_extra_info("socket")

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self._target
        if target is not None:
            return target[self._filled :]
        if self._pos == self._end:
            self._pos = self._end = 0
        elif self._end == _SPILL:
            n = self._end - self._pos
            self._buf[:n] = self._buf[self._pos : self._end]
            self._pos, self._end = 0, n
        if self._head_cap:
            return self._mv[self._end : self._end + self._head_cap]
        return self._mv[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.host.reads += 1
        self.received += nbytes
        self._last = self._loop.time()
        if self._target is not None:
            self._filled += nbytes
            left = self._want - self._filled
            if self._lowat > 1 and left < self._lowat:  # raised (plain TCP): lower it as it fills
                self._set_lowat(left)
            if left > 0:
                return
            self._target = None  # later bytes go to _buf until it is full
        else:
            self._end += nbytes
            # Pause when _buf is full (the socket holds the rest), or when a read comes
            # after the head of a large body: that body waits in the socket for the
            # caller's view (asyncio runs the caller before reading again; uvloop does not).
            if self._end - self._pos >= _SPILL or (self._head_cap and self._head_in):
                self._paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            elif self._head_cap:
                start = max(self._end - nbytes - 3, self._pos)
                self._head_in = self._buf.find(b"\r\n\r\n", start, self._end) >= 0
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        writer = self._write_waiter
        if writer is not None and not writer.done():
            writer.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_waiter = self._loop.create_future()

    def resume_writing(self) -> None:
        writer, self._write_waiter = self._write_waiter, None
        if writer is not None and not writer.done():
            writer.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_lowat(self, n: int) -> None:
        """Let the kernel wake the loop only once ``n`` bytes are in (or EOF): fewer reads.

        A large body would otherwise come in as many reads as the sender's pacing makes
        (a 1 MiB range over a paced link: about 7 reads and loop wake-ups; now 2). Lowering
        it wakes the loop at once if that many bytes are already waiting.
        """
        n = max(n, 1)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except (OSError, ValueError, AttributeError):  # closed (uvloop: ValueError), or no TCP
            self._sock = None
            n = 1
        self._lowat = n

    def _on_timer(self) -> None:
        """Fail the wait if no byte came for read_timeout or ``_deadline`` passed, else look again.

        Between waits the timer just lapses; a wait arms it again.
        """
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        now = self._loop.time()
        idle = self._last + self._timeout
        due = idle if idle < self._deadline else self._deadline
        if now < due - 1e-3:
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        if self._lowat > 1:  # bytes may be waiting under the low-water mark: read them
            self._set_lowat(1)
            self._timer = self._loop.call_later(min(self._timeout, 0.1), self._on_timer)
            return
        if now >= idle - 1e-3 or not self.received:  # silent for read_timeout, or till the deadline
            silent = min(self._timeout, self._deadline - self._last)
            msg = f"no data from {self.where} for {silent:.3g} s"
        else:  # bytes keep coming, too slowly to be done in time (a head trickled byte by byte)
            msg = self._late.format(self.where)
        waiter.set_exception(TimeoutError(msg))
        waiter.exception()  # marked retrieved: a waiter cancelled meanwhile logs nothing

    # -- used by the pool and the response --

    def _wait(self) -> asyncio.Future[None]:
        """A future that buffer_updated or EOF completes, or read_timeout idle fails (await it).

        A plain function, not a coroutine: every request waits twice (head, body), and a
        coroutine per wait was a tenth of the objects the collector had to trace.
        """
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        if self._paused:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        self._last = loop.time()
        if self._timer is None:  # one timer per connection, re-armed only when it fires
            # never later than the deadline; and a deadline only moves on, so no timer is late
            due = self._last + self._timeout
            self._timer = loop.call_at(due if due < self._deadline else self._deadline, self._on_timer)
        return waiter

    async def read_into(self, view: memoryview) -> int:
        """Fill ``view``: buffered bytes first, then straight from the socket; short only at EOF.

        The last few KiB of a view go through ``_buf`` instead: one larger socket read
        then serves several small reads without a trip through the event loop.
        """
        want = len(view)
        got = 0
        self.partial = 0
        self._head_cap = 0
        while True:
            n = self._end - self._pos
            if n:
                if n > want - got:
                    n = want - got
                pos = self._pos
                view[got : got + n] = self._mv[pos : pos + n]
                self._pos = pos + n
                got += n
            if got == want or self.eof:
                return got
            if want - got < _DIRECT:
                self.partial = got
                await self._wait()
                continue
            if want - got >= _THREAD_MIN and self._copier is not None and self.waited < NEAR:
                return await self._read_in_thread(view, got)
            self._target = view
            self._filled = got
            self._want = want
            if want - got >= _LOWAT_MIN and self._sock is not None:
                self._set_lowat(min(want - got, _LOWAT))
            try:
                await self._wait()
            except BaseException:
                self.partial = self._filled
                raise
            finally:
                self._target = None
                if self._lowat > 1:
                    self._set_lowat(1)
            return self._filled

    async def _read_in_thread(self, view: memoryview, got: int) -> int:
        """Fill the rest of ``view`` in a worker thread, so a second core copies from the kernel.

        The transport stops reading first; the thread reads a duplicate of the socket's
        descriptor, so a close on the loop cannot hand it another socket's bytes. The
        read does not return (nor raise) before the thread has stopped writing to ``view``.
        """
        transport = self.transport
        assert transport is not None and self._copier is not None
        if not self._paused:
            self._paused = True
            transport.pause_reading()
        fd = transport.get_extra_info("socket").fileno()
        self._stop = stop = threading.Event()
        left = self._deadline - self._loop.time()
        future = self._copier.run(self._loop, _copy_from_socket, fd, view, got, self._timeout, left, stop)
        before = got
        try:
            got, error = await asyncio.shield(future)
        except BaseException:
            stop.set()
            self.partial, _ = await _uncancelled(future)
            raise
        finally:
            self._stop = None
        self.received += got - before
        self._last = self._loop.time()
        if self._end != self._pos:  # the loop read too: the order of bytes is lost
            self.abort()
            raise RequestError(f"bytes from {self.where} arrived out of order", url=self.where)
        if got == len(view):
            return got
        self.eof = True  # or an error, or closed by abort(): the connection is done
        self.error = self.error or error
        self.abort()
        if isinstance(error, TimeoutError):
            self.partial = got
            late = self._late.format(self.where) if error.args else None
            raise TimeoutError(late or f"no data from {self.where} for {self._timeout:g} s")
        return got

    async def read_until(self, sep: bytes) -> bytes:
        """Bytes up to ``sep`` (consumed, not returned): a head or a line, at most _MAX_LINE."""
        scanned = 0
        while True:
            limit = min(self._end, self._pos + _MAX_LINE + len(sep))
            i = self._buf.find(sep, self._pos + scanned, limit)
            if i >= 0:
                data = bytes(self._mv[self._pos : i])
                self._pos = i + len(sep)
                return data
            if self._end - self._pos >= _MAX_LINE + len(sep):
                raise RequestError(
                    f"malformed response from {self.where}: head or line over {_MAX_LINE} bytes",
                    url=self.where,
                )
            if self.eof:
                raise self.disconnected("before the response head was complete")
            scanned = max(self._end - self._pos - len(sep) + 1, 0)
            await self._wait()

    def disconnected(self, when: str) -> ServerDisconnectedError:
        """The error for a connection that ended too soon, with the transport's cause."""
        cause = f": {self.error}" if self.error is not None else ""
        err = ServerDisconnectedError(f"connection to {self.where} closed {when}{cause}")
        err.__cause__ = self.error
        return err

    def send(self, head: bytes, body: bytes | memoryview | None, large: bool = False) -> None:
        """Queue a request on the transport; a closed transport shows up as EOF on read.

        ``large``: a large body is expected, so its head is read alone, and reading pauses
        after it until the body's first ``read_into``.
        """
        self.received = 0
        self._head_cap = _HEAD_READ if large else 0
        self._head_in = False
        assert self.transport is not None
        self.transport.write(head)
        if body:
            self.transport.write(body)

    async def drain(self) -> None:
        """Wait until the transport has room again (large PUT bodies); the head is due that much later."""
        writer = self._write_waiter
        if writer is None or self.eof:
            return
        start = self._loop.time()
        try:
            async with asyncio.timeout(self._timeout):
                await writer
        except TimeoutError:
            raise TimeoutError(f"sending to {self.where} stalled for {self._timeout:g} s") from None
        self._deadline += self._loop.time() - start

    def reusable(self) -> bool:
        """True if the connection is open, quiet and has no unread bytes."""
        transport = self.transport
        return (
            not self.eof and self._pos == self._end and transport is not None and not transport.is_closing()
        )

    def park(self) -> None:
        """Keep reading while idle in the pool, so a server's close is noticed early."""
        self._head_cap = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close now; nothing is written into a caller's buffer after this."""
        self._target = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stop is not None:
            self._stop.set()
        if self.transport is not None:
            self.transport.abort()


@dataclass
class _Host:
    """The connections to one (scheme, host, port): a bound on how many, and the idle ones."""

    slots: Slots
    idle: list[_Conn]
    reads: int = 0  # socket reads by its connections, for stats()


class Response:
    """A response whose body is read once, front to back; satisfies the ``Body`` protocol.

    ``readinto`` fills the whole view unless the body ends first. When it fails after
    filling part of a view it returns that part, and raises on the next call, so the
    engine can resume from exactly the bytes it has.
    """

    __slots__ = (
        "_chunk_left",
        "_conn",
        "_done",
        "_error",
        "_keep",
        "_left",
        "_mode",
        "_pool",
        "_progress",
        "content_length",
        "headers",
        "reason",
        "status",
        "url",
        "waited",
    )

    def __init__(
        self,
        pool: HTTPPool,
        conn: _Conn,
        status: int,
        reason: str,
        headers: Headers,
        content_length: int | None,
        mode: int,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.url = conn.where  # redacted: scheme://host:port/path
        self.waited = 0.0  # seconds from sending the request to its head: how near the server is
        self._pool = pool
        self._conn: _Conn | None = conn
        self._mode = mode
        self._keep = keep_alive
        self._left = (content_length or 0) if mode == _LENGTH else 0
        self._chunk_left = -1  # -1: the first chunk-size line is still to come
        self._done = False
        self._error: BaseException | None = None
        self._progress = 0
        if mode == _NONE or (mode == _LENGTH and self._left == 0):
            self._finish()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} {self.url}>"

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next body bytes; fewer only at the end of the body, 0 after."""
        if type(view) is not memoryview or view.readonly or view.format != "B" or view.ndim != 1:
            view = _byte_view(view)
        conn = self._conn
        if conn is None or self._mode != _LENGTH:
            return await self._readinto_other(view)
        left = self._left
        if len(view) > left:
            view = view[:left]
        try:
            n = await conn.read_into(view)
        except OSError as exc:  # a stall: keep the bytes that came, raise on the next call
            traceback.clear_frames(exc.__traceback__)  # its frames hold the caller's view
            if not conn.partial:
                self._abort()
                raise
            self._left -= conn.partial
            return self._fail(exc, conn.partial)
        except BaseException:
            self._abort()
            raise
        self._left = left = left - n
        if n == len(view):
            if not left:
                self._finish()
            return n
        got = (self.content_length or 0) - left
        err = conn.disconnected(f"after {got} of {self.content_length} body bytes")
        return self._fail(err, n)

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body as bytes (for small bodies: errors, listings, whole objects).

        ``limit``: at most that many bytes. A longer body is cut there and its connection
        closed, not read on, so an error or redirect body costs at most ``limit`` bytes of
        memory and of waiting whatever its Content-Length or chunks say: the backends read
        those with ``limit=ERROR_BODY_LIMIT``. A body that fits leaves the connection reusable.
        """
        if limit is not None:
            return await self._read_capped(limit)
        if self._conn is not None and self._mode == _LENGTH:
            buf = bytearray(self._left)
            view = memoryview(buf)
            got = 0
            while got < len(buf):
                n = await self.readinto(view[got:])
                if not n:
                    break
                got += n
            return bytes(view[:got])
        pieces = []
        buf = bytearray(_READ_CHUNK)
        while n := await self.readinto(memoryview(buf)):
            pieces.append(bytes(buf[:n]))
        return b"".join(pieces)

    async def aclose(self) -> None:
        """Release the connection: back to the pool if the body was read to the end, else closed."""
        self._abort()

    def close(self) -> None:
        """``aclose`` without a wait (it never waits): for callers that cannot be cancelled."""
        self._abort()

    # -- internals --

    async def _read_capped(self, limit: int) -> bytes:
        """``read(limit)``: unless the length is known, one byte past ``limit`` tells a longer body."""
        if limit < 0:
            raise ValueError("limit must be at least 0")
        known = self._conn is not None and self._mode == _LENGTH
        size = min(self._left, limit) if known else limit + 1
        view = memoryview(bytearray(size))
        got = 0
        while got < size and (n := await self.readinto(view[got:])):
            got += n
        if got > limit or (known and self._conn is not None):  # more follows: do not read it
            self._abort()
        return bytes(view[: min(got, limit)])

    def _finish(self) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn, self._keep)

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn, False)

    def _fail(self, err: BaseException, n: int) -> int:
        """Close the connection; return the bytes of this call if any, raise now otherwise."""
        self._abort()
        if n:
            self._error = err
            return n
        raise err

    async def _readinto_other(self, view: memoryview) -> int:
        """The slow paths: done, closed, failed, chunked or read-until-close bodies."""
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if self._done:
            return 0
        if self._conn is None:
            raise ClosedError(f"response from {self.url} is closed", url=self.url)
        self._progress = 0
        try:
            if self._mode == _CHUNKED:
                return await self._read_chunked(view)
            return await self._read_until_close(view)
        except (OSError, RequestError) as exc:
            return self._fail(exc, self._progress)
        except BaseException:
            self._abort()
            raise

    async def _read_until_close(self, view: memoryview) -> int:
        conn = self._conn
        assert conn is not None
        try:
            n = await conn.read_into(view)
        except OSError:
            self._progress = conn.partial  # kept: returned now, the error raised next call
            raise
        if n < len(view):
            if conn.error is not None:
                self._progress = n
                raise conn.disconnected("in the middle of the body")
            self._finish()
        return n

    async def _read_chunked(self, view: memoryview) -> int:
        conn = self._conn
        assert conn is not None
        size = len(view)
        while self._progress < size:
            if self._chunk_left <= 0:
                if self._chunk_left == 0 and await conn.read_until(b"\r\n"):
                    raise RequestError(f"malformed chunk from {self.url}", url=self.url)
                chunk = _chunk_size(await conn.read_until(b"\r\n"))
                if chunk is None:
                    raise RequestError(f"malformed chunk size from {self.url}", url=self.url)
                self._chunk_left = chunk
                if not chunk:
                    trailers = 0
                    while line := await conn.read_until(b"\r\n"):  # trailer fields, ignored
                        trailers += len(line) + 2
                        if trailers > _MAX_LINE:  # endless trailers would keep us reading
                            msg = f"malformed response from {self.url}: trailers over {_MAX_LINE} bytes"
                            raise RequestError(msg, url=self.url)
                    self._finish()
                    break
            done = self._progress
            want = min(size - done, self._chunk_left)
            try:
                n = await conn.read_into(view[done : done + want])
            except OSError:
                self._progress += conn.partial
                raise
            self._progress += n
            self._chunk_left -= n
            if n < want:
                raise conn.disconnected("in the middle of a chunk")
        return self._progress


class HTTPPool:
    """Keep-alive HTTP/1.1 connections per (scheme, host, port), reused last-in first-out.

    Time limits: ``connect_timeout`` for TCP and TLS set-up; ``read_timeout`` for any wait
    without a byte, and for the whole response head (all of it, 1xx heads included, must
    come within ``read_timeout`` of sending the request: a head trickled byte by byte is
    cut off too); ``request_timeout``, if given, for the whole request, from sending it to
    the last body byte, the caller's own time between reads included (a backstop for a
    body trickled forever; off by default). All fail a wait with ``TimeoutError``.
    """

    def __init__(
        self,
        *,
        max_connections_per_host: int,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        request_timeout: float | None = None,
    ) -> None:
        if max_connections_per_host < 1:
            raise ValueError("max_connections_per_host must be at least 1")
        if request_timeout is not None and not request_timeout > 0:
            raise ValueError("request_timeout must be above 0")
        self._limit = max_connections_per_host
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._request_timeout = request_timeout
        head = read_timeout if request_timeout is None else min(read_timeout, request_timeout)
        self._head_time = head  # the head is due this long after the request is sent
        self._head_late = f"no complete response head from {{}} within {head:g} s of the request"
        self._body_late = f"response from {{}} not complete within {request_timeout or 0:g} s of the request"
        self._ssl_context = ssl_context
        self._hosts: dict[tuple[str, str, int], _Host] = {}
        self._conns: set[_Conn] = set()
        self._closed = False
        self._opened = 0
        self._reused = 0
        self._copier = _Copier() if _COPIERS else None

    async def __aenter__(self) -> HTTPPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stats(self) -> PoolStats:
        """Connections opened and reused so far, idle now, and socket reads so far."""
        idle = sum(len(host.idle) for host in self._hosts.values())
        reads = sum(host.reads for host in self._hosts.values())
        return PoolStats(opened=self._opened, reused=self._reused, idle=idle, reads=reads)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | memoryview | None = None,
        *,
        expected: int | None = None,
    ) -> Response:
        """Send one request and read its head; the body is left for ``Response.readinto``.

        The caller must read the body to the end or ``aclose()`` the response: until then
        it holds one of the host's connections. ``expected``: the body size the caller
        asked for (its Range); when large, the head is read alone, so that no body byte
        passes through the connection's own buffer on its way to the caller's.
        """
        if self._closed:
            raise ClosedError("the HTTP pool is closed")
        scheme, host, port, authority, target, where = _split_url(url)
        if isinstance(body, memoryview) and (body.format != "B" or body.ndim != 1):
            body = body.cast("B")  # transports slice what they could not send yet
        head = _request_head(method, authority, target, headers, body)
        key = (scheme, host, port)
        pool = self._hosts.get(key)
        if pool is None:
            pool = self._hosts[key] = _Host(Slots(self._limit), [])
        retried = False
        while True:
            await pool.slots.acquire()
            conn = None
            reused = False
            try:
                if self._closed:  # closed while we waited for a slot
                    raise ClosedError("the HTTP pool is closed")
                conn = self._checkout(pool)
                if conn is None:
                    conn = await self._connect(pool, scheme, host, port, where)
                    self._conns.add(conn)
                else:
                    reused = True
                if self._closed:  # closed while we connected
                    raise ClosedError("the HTTP pool is closed")
                conn.where = where
                sent = conn._loop.time()
                conn.send(head, body, expected is not None and expected >= _LOWAT_MIN)
                conn._deadline = sent + self._head_time
                conn._late = self._head_late
                await conn.drain()
                interim = 0
                while True:
                    block = await conn.read_until(b"\r\n\r\n")
                    version, status, reason, headers = _parse_head(block, where)
                    if not 100 <= status < 200:
                        break
                    interim += 1
                    if status == 101 or interim > _MAX_INTERIM:
                        msg = (f"101 {reason[:40]!r} from {where}, no upgrade asked for" if status == 101
                               else f"over {_MAX_INTERIM} interim (1xx) responses from {where}")
                        raise RequestError(msg, url=where)
                if self._request_timeout is None:
                    conn._deadline = _NEVER
                else:
                    conn._deadline = sent + self._request_timeout
                    conn._late = self._body_late
                response = self._response(conn, method, version, status, reason, headers)
                response.waited = conn.waited = conn._loop.time() - sent
                return response
            except BaseException as exc:
                if conn is None:
                    pool.slots.release()
                else:
                    self._release(conn, False)
                stale = reused and conn is not None and not conn.received
                if retried or not stale or method not in _IDEMPOTENT or not isinstance(exc, ConnectionError):
                    raise
                # The server closed an idle connection as we sent: its idle siblings are
                # probably stale too; retry once on a fresh connection.
                retried = True
                while pool.idle:
                    self._discard(pool.idle.pop())

    async def aclose(self) -> None:
        """Close every connection, idle or in use; in-flight reads fail. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        conns = list(self._conns)
        self._conns.clear()
        for host in self._hosts.values():
            host.idle.clear()
            for _ in range(self._limit):  # wake every request waiting for a slot
                host.slots.release()
        for conn in conns:
            conn.abort()
        pending = [conn.closed for conn in conns if not conn.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._copier is not None:
            self._copier.shutdown()

    # -- internals --

    def _checkout(self, pool: _Host) -> _Conn | None:
        while pool.idle:
            conn = pool.idle.pop()
            if conn.reusable():
                self._reused += 1
                return conn
            self._discard(conn)
        return None

    def _release(self, conn: _Conn, keep: bool) -> None:
        """Give a connection's slot back; park the connection if it can serve another request."""
        if keep and not self._closed and conn.reusable():
            conn.park()
            conn.host.idle.append(conn)
        else:
            self._discard(conn)
        conn.host.slots.release()

    def _discard(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        conn.abort()

    async def _connect(self, pool: _Host, scheme: str, host: str, port: int, where: str) -> _Conn:
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            elif not isinstance(self._ssl_context, ssl.SSLContext):  # a factory: made on first use
                self._ssl_context = self._ssl_context()
            context = self._ssl_context
        origin = where.split("/", 3)
        origin_text = "/".join(origin[:3])
        copier = None if context else self._copier  # TLS bodies stay on the loop
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop, self._read_timeout, where, pool, copier),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError:
            msg = f"connecting to {origin_text} timed out after {self._connect_timeout:g} s"
            raise TimeoutError(msg) from None
        except ssl.SSLCertVerificationError as exc:
            msg = f"TLS certificate of {origin_text} not trusted: {exc.verify_message}"
            raise RequestError(msg, url=where) from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {origin_text}: {exc}") from exc
        self._opened += 1
        return conn

    def _response(
        self, conn: _Conn, method: str, version: str, status: int, reason: str, headers: Headers
    ) -> Response:
        """The response a head describes: how its body ends, and whether the connection stays."""
        keep = version == "HTTP/1.1"
        connection = headers.get("connection")
        if connection is not None:
            tokens = {t.strip().lower() for t in connection.split(",")}
            if "close" in tokens:
                keep = False
            elif "keep-alive" in tokens:
                keep = True
        length = _content_length(headers, conn.where)
        coding = headers.get("transfer-encoding")
        if coding is not None:
            _check_coding(coding, version, length, conn.where)
        if method == "HEAD" or status in (204, 304):
            mode = _NONE
        elif coding is not None:
            mode = _CHUNKED
        elif length is not None:
            mode = _LENGTH
        else:
            mode, keep = _CLOSE, False
        return Response(self, conn, status, reason, headers, length, mode, keep)


class _Copier:
    """Worker threads that copy large bodies for one pool, started on first use.

    Daemon threads, not a ThreadPoolExecutor: a copy waiting on a stalled server must not
    hold up the interpreter's exit until read_timeout.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._threads = 0
        self._pid = os.getpid()

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Call ``fn(*args)`` in a worker thread; its outcome arrives in the returned future."""
        if self._pid != os.getpid():  # a forked child has none of its parent's threads
            self._jobs, self._threads, self._pid = queue.SimpleQueue(), 0, os.getpid()
        if self._threads < _COPIERS:
            self._threads += 1
            threading.Thread(target=self._work, name=f"aisio-copy-{self._threads}", daemon=True).start()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def shutdown(self) -> None:
        """Let the threads end once the copies under way are done."""
        for _ in range(self._threads):
            self._jobs.put(None)
        self._threads = 0

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            del job
            try:
                outcome = (future.set_result, fn(*args))
            except BaseException as exc:  # handed to the waiting task
                outcome = (future.set_exception, exc)
            del fn, args  # they hold the caller's view: let go before the caller goes on
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, *outcome)
            del loop, future, outcome


def _settle(future: asyncio.Future[Any], setter: Callable[[Any], None], value: Any) -> None:
    if not future.done():
        setter(value)


def _copy_from_socket(
    fd: int, view: memoryview, got: int, timeout: float, left: float, stop: threading.Event
) -> tuple[int, OSError | None]:
    """Read into ``view[got:]`` until full, EOF, an error or ``stop``: (bytes in view, error).

    Runs in a worker thread, on a duplicate of ``fd``, so a close on the loop cannot
    make it read another socket's bytes. The error is ``TimeoutError()`` after ``timeout``
    seconds without a byte, ``TimeoutError("late")`` once ``left`` seconds have passed.
    """
    try:
        mine = os.dup(fd)
    except OSError as exc:  # out of descriptors: an error for the engine to retry
        return got, exc
    try:
        poller = select.poll()
        poller.register(mine, select.POLLIN)
        last = time.monotonic()
        end = last + left
        size = len(view)
        while got < size and not stop.is_set():
            try:
                n = os.readv(mine, [view[got:]])
            except BlockingIOError:
                if not poller.poll(_POLL * 1000):
                    now = time.monotonic()
                    if now - last > timeout:
                        return got, TimeoutError()
                    if now > end:
                        return got, TimeoutError("late")
                continue
            except OSError as exc:
                return got, exc
            if not n:
                break
            got += n
            last = time.monotonic()
            if last > end and got < size:
                return got, TimeoutError("late")
        return got, None
    finally:
        os.close(mine)


async def _uncancelled(future: asyncio.Future[Any]) -> Any:
    """Wait for ``future`` to the end, even if cancelled meanwhile (it will end soon)."""
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
    return future.result()


def _byte_view(buffer: Any) -> memoryview:
    """A writable, flat, unsigned-byte view of any buffer (bytearray, numpy, tensor memory)."""
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    if view.readonly:
        raise TypeError("readinto needs a writable buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


_SPLIT_CACHE: dict[str, tuple[str, str, int, str, str, str]] = {}


def _split_url(url: str) -> tuple[str, str, int, str, str, str]:
    """``_parse_url``, remembered: a reader sends many GETs to the same (presigned) URL."""
    hit = _SPLIT_CACHE.get(url)
    if hit is None:
        hit = _parse_url(url)
        if len(_SPLIT_CACHE) >= 1024:
            _SPLIT_CACHE.clear()
        _SPLIT_CACHE[url] = hit
    return hit


def _parse_url(url: str) -> tuple[str, str, int, str, str, str]:
    """scheme, host, port, Host header, request target, and the url without its query."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise InvalidURLError(f"malformed URL: {redact(url)}", url=redact(url)) from None
    if scheme not in ("http", "https") or not host:
        raise InvalidURLError(f"not an http(s) URL: {redact(url)}", url=redact(url))
    name = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    authority = name if port == default else f"{name}:{port}"
    target = parts.path or "/"
    if _CTL.search(target) or " " in target:
        raise InvalidURLError(f"URL path with control characters: {redact(url)}", url=redact(url))
    where = f"{scheme}://{authority}{target}"
    if parts.query:
        target = f"{target}?{parts.query}"
    return scheme, host, port, authority, target, where


_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
_NAMES: dict[str, str] = {}  # header names already found to be tokens -> lower case


def _header_name(name: str) -> str | None:
    """``name`` in lower case if it is a valid field name (a token), else None; remembered."""
    lower = _NAMES.get(name)
    if lower is None and _TOKEN.fullmatch(name):
        lower = name.lower()
        if len(_NAMES) < 1024:  # names from servers and callers could be endless
            _NAMES[name] = lower
    return lower


def _request_head(
    method: str,
    authority: str,
    target: str,
    headers: Mapping[str, str] | None,
    body: bytes | memoryview | None,
) -> bytes:
    """The request line and header block; Host and Content-Length added unless given."""
    if method not in _METHODS and not _TOKEN.fullmatch(method):
        raise ValueError(f"invalid HTTP method {method!r}")
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    names = set()
    for name, value in (headers or {}).items():
        lower = _header_name(name)
        if lower is None or _CTL.search(value):
            raise ValueError(f"invalid HTTP header {name!r}")  # never echo the value
        names.add(lower)
        lines.append(f"{name}: {value}\r\n")
    if "host" not in names:
        lines.insert(1, f"Host: {authority}\r\n")
    if "content-length" not in names and "transfer-encoding" not in names:
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif method in ("PUT", "POST"):
            lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _parse_head(block: bytes, where: str) -> tuple[str, int, str, Headers]:
    """Version, status, reason and headers of a response head (without the blank line)."""
    lines = block.decode("latin-1").split("\r\n")
    status_line = lines[0]
    version, _, status = status_line.partition(" ")
    code, _, reason = status.partition(" ")
    if (version != "HTTP/1.1" and version != "HTTP/1.0") or len(code) != 3 or not _DIGITS.fullmatch(code):
        msg = f"malformed status line from {where}: {status_line[:60]!r}"
        raise RequestError(msg, url=where)
    fields: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        lower = (_NAMES.get(name) or _header_name(name)) if sep else None  # hit: no call
        if lower is None:
            if line[:1] in (" ", "\t") and last:  # obsolete line folding
                fields[last] += " " + line.strip()
                continue
            raise RequestError(f"malformed header line from {where}: {line[:60]!r}", url=where)
        last = lower
        value = value.strip(" \t")
        fields[lower] = f"{fields[lower]}, {value}" if lower in fields else value
    return version, int(code), reason.strip(), Headers(fields)


def _content_length(headers: Headers, where: str) -> int | None:
    """Content-Length as an int; repeated equal values are accepted, anything else refused.

    A number is 1 to 19 ASCII digits: ``str.isdigit`` alone takes Arabic-Indic and superscript
    digits, and ``int()`` of thousands of digits raises a bare ValueError.
    """
    raw = headers.get("content-length")
    if raw is None:
        return None
    if len(raw) <= 19 and raw.isascii() and raw.isdigit():  # the usual case: one plain number
        return int(raw)
    values = {v.strip(" \t") for v in raw.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise RequestError(f"malformed Content-Length from {where}: {raw[:40]!r}", url=where)
    return int(values.pop())


def _check_coding(coding: str, version: str, length: int | None, where: str) -> None:
    """Refuse a Transfer-Encoding other than plain ``chunked``, or one beside Content-Length.

    Bodies are never decoded here, so a gzip coding would hand back compressed bytes as the
    object; both framing fields at once is how responses are smuggled (RFC 9112 6.3), and
    an HTTP/1.0 message with a transfer coding has faulty framing (RFC 9112 6.1).
    """
    if length is not None:
        problem = "both Transfer-Encoding and Content-Length"
    elif version != "HTTP/1.1":
        problem = f"Transfer-Encoding in an {version} response"
    elif coding.strip(" \t").lower() != "chunked":
        problem = f"unsupported Transfer-Encoding {coding[:40]!r}"
    else:
        return
    raise RequestError(f"{problem} from {where}", url=where)


def _chunk_size(line: bytes) -> int | None:
    """The size in a chunk-size line (extensions ignored), or None: 1 to 16 hex digits."""
    digits = line.split(b";", 1)[0].rstrip(b" \t")
    return int(digits, 16) if _HEX.fullmatch(digits) else None


def parse_content_range(value: str) -> tuple[int, int, int | None] | None:
    """(first, last, total) of ``Content-Range: bytes first-last/total``; total None for ``*``.

    None for anything else: another unit, an unsatisfied range (``bytes */total``), a number
    that is not 1 to 19 ASCII digits, first after last, or last at or past total.
    """
    match = _CONTENT_RANGE.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    first, last, size = int(match[1]), int(match[2]), match[3]
    total = None if size == "*" else int(size)
    if first > last or (total is not None and last >= total):
        return None
    return first, last, total
