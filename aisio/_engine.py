"""The fetch engine: bounded concurrency, large reads split into parts, retries that resume.

Every GET of every reader goes through here, so each backend does single requests only.
A failed GET is reopened at the first byte not yet received, pinned to the ETag of the
first response, so a retried read never refetches bytes nor mixes object versions.

A read of a whole object is checked against the checksum the store keeps for it, when a
response states one (``Body.checksum``; see ``aisio._checksum`` for which are checked): a
``Stream`` from byte 0 to the end hashes the bytes as they pass, and a read made of
several parts hashes its buffer once they have all landed, with the checksum from the
first response or, from S3, which gives none with ranged answers, from a HEAD sent
alongside the parts. A mismatch is an IntegrityError. Ranged reads are never checked.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import anyio.abc
import anyio.to_thread

from ._backends._base import Backend, Body, HTTPBody
from ._checksum import Checksum, Hasher
from ._config import NEAR, ClientConfig
from ._pace import Pace
from ._planner import Span, coalesce, split
from ._retry import RetryPolicy, is_throttle, is_transient, naming, retry_after_of
from ._slots import Slots
from ._url import Location, redact
from .errors import ObjectChangedError, ObjectNotFoundError, RangeError, TransientError, first_error

__all__ = ["Engine", "Statistics", "Stream"]

_DISCARD = 2**20  # scratch for the gap bytes a coalesced GET reads between segments
_EARNED = 256 * 1024  # bytes a response must bring (or all it was asked for) to earn retries back
_FANOUT = 16  # parts of one read in flight at once from a near server
_HASH_OFF_LOOP = 4 * 2**20  # whole reads at least this large are hashed in a worker thread
_EMPTY = memoryview(b"")


@dataclass(frozen=True)
class Statistics:
    """Counters of one client since it opened: cheap observability for tests and tuning."""

    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    cache_hits: int = 0
    """Blocks served from the local cache (``ClientConfig.cache``)."""
    cache_misses: int = 0
    """Blocks (or uncached reads) the cache fetched from the store."""
    cache_bytes: int = 0
    """Bytes served from the local cache."""
    throttled: int = 0
    """Responses that refused a GET for the store's rate (503 SlowDown, 429); paced and retried."""


class Engine:
    """Runs the GETs of one client within ``max_concurrency`` and ``max_attempts``."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.policy = RetryPolicy.of(config)
        self.limiter = Slots(config.max_concurrency)
        self._sleep = sleep
        self._rand = rand
        self._requests = self._retries = self._bytes = 0
        self._latency: dict[tuple[int, str], float] = {}  # (backend, bucket) -> last probe's wait
        self._paces: dict[tuple[int, str], Pace] = {}  # (backend, bucket) -> its request rate
        self._throttled = 0

    def pace(self, backend: Backend, bucket: str) -> Pace:
        """The request rate for one bucket of one backend (unlimited until it throttles)."""
        key = (id(backend), bucket)
        pace = self._paces.get(key)
        if pace is None:
            pace = self._paces[key] = Pace()
        return pace

    def statistics(self) -> Statistics:
        return Statistics(self._requests, self._retries, self._bytes, throttled=self._throttled)

    def stream(
        self, backend: Backend, loc: Location, start: int = 0, end: int | None = None,
        *, etag: str | None = None,
    ) -> Stream:
        """A resumable GET of [start, end); opened on the first read."""
        return Stream(self, backend, loc, start, end, etag)

    async def read(
        self, backend: Backend, loc: Location, start: int = 0, end: int | None = None,
        *, into: memoryview | None = None, size: int | None = None, etag: str | None = None,
        alloc: Callable[[int], Awaitable[memoryview]] | None = None,
    ) -> tuple[memoryview, int, str | None]:
        """Read [start, end) of an object, its parts in parallel; returns (view, size, etag).

        Without ``end`` the read goes to the end of the object. With ``into`` the bytes
        land in that buffer and the read also stops at its end; otherwise ``alloc``
        (default: a zeroed bytearray) makes a buffer of the exact size, once. Without
        ``size`` the first part's response headers tell the size, so a small object costs
        one request, read by the calling task, and the other parts start before the first
        one has arrived. ``end`` past the object is a RangeError.
        """
        if start < 0 or (end is not None and end < start):
            raise RangeError(f"invalid range [{start}, {end}) for {loc.url}", url=loc.url)
        part = self.config.part_size
        first = part if end is None else min(part, end - start)
        if into is not None:
            first = min(first, len(into))
        if first == 0 and size is None:
            return memoryview(b""), -1, etag
        # the first part takes a slot of its own, handed on to the task that finishes it
        stream = Stream(self, backend, loc, start, start + first, etag)
        await self.limiter.acquire()
        handed = False
        try:
            if size is None:
                try:
                    await stream.open()  # the head tells size and etag
                except RangeError:  # a range at or past the end: a HEAD tells the size
                    stream.object_size = stream.end = (await backend.head(loc)).size
                self._latency[id(backend), loc.bucket] = stream.latency
                size, etag = stream.object_size, stream.etag
            if start > size or (end is not None and end > size):
                raise RangeError(
                    f"range [{start}, {end if end is not None else ''}) is past the end of "
                    f"{loc.url} ({size} bytes)", url=loc.url)
            total = (size if end is None else end) - start
            if into is not None:
                total = min(total, len(into))
                view = into[:total]
            else:
                view = await alloc(total) if alloc is not None else memoryview(bytearray(total))
            first = min(first, total)
            parts = split(first, total, part)
            if not parts:
                handed = True
                await self._finish(stream, view)  # a whole object: the stream checked it
                return view, size, etag
            whole = start == 0 and total == size
            stored: list[Checksum | None] = [None]
            try:
                async with anyio.create_task_group() as tg:
                    handed = True
                    tg.start_soon(self._finish, stream, view[:first])
                    fanout = self._fanout(backend, loc)
                    for a, b in parts:
                        tg.start_soon(self._fill, backend, loc, view[a:b], start + a, etag, fanout)
                    ask = getattr(backend, "object_checksum", None) if whole else None
                    if ask is not None and stream.object_checksum is None:
                        tg.start_soon(_asked_checksum, ask, loc, etag, stored)
            except BaseExceptionGroup as group:
                _raise_first(group)
            checksum = stream.object_checksum or stored[0]
            if whole and checksum is not None:
                await _check_whole(loc.url, checksum, view)
            return view, size, etag
        finally:
            if not handed:
                await stream.aclose()
                self.limiter.release()

    async def read_spans(
        self, backend: Backend, loc: Location, ranges: Sequence[tuple[int, int]],
        max_gap: float, *, etag: str | None = None,
    ) -> list[memoryview]:
        """Fetch many ranges with few GETs: one view per range, in the order given."""
        for s, e in ranges:
            if s < 0 or e < s:
                raise RangeError(f"invalid range [{s}, {e}) for {loc.url}", url=loc.url)
        out: list[memoryview] = [memoryview(b"")] * len(ranges)

        async def fetch(span: Span) -> None:
            view, _, _ = await self.read(backend, loc, span.start, span.end, etag=etag)
            for i in span.members:
                s, e = ranges[i]
                out[i] = view[s - span.start:e - span.start]

        try:
            async with anyio.create_task_group() as tg:
                for span in coalesce(ranges, max_gap):
                    if span.size:
                        tg.start_soon(fetch, span)
        except BaseExceptionGroup as group:
            _raise_first(group)
        return out

    async def read_scatter(
        self, backend: Backend, loc: Location, segments: Sequence[tuple[int, memoryview]],
        max_gap: float, *, etag: str | None = None,
    ) -> None:
        """Fill each (offset, view) with the object's bytes there: few GETs, no extra copy.

        Segments nearer than ``max_gap`` share a GET; large spans are cut into
        ``part_size`` GETs in parallel, each streaming straight into the views it covers
        and dropping the gap bytes between them. Segments must not overlap.
        """
        ranges = [(off, off + len(view)) for off, view in segments]
        for (s0, e0), (s1, _) in zip(sorted(ranges), sorted(ranges)[1:], strict=False):
            if s1 < e0:
                raise ValueError(f"overlapping segments [{s0}, {e0}) and [{s1}, ...) of {loc.url}")
        if any(s < 0 for s, _ in ranges):
            raise RangeError(f"negative offset in a scatter read of {loc.url}", url=loc.url)
        jobs: list[tuple[int, int, list[tuple[int, memoryview]]]] = []
        for span in coalesce(ranges, max_gap):
            members = sorted(span.members, key=lambda i: ranges[i][0])
            for a, b in split(span.start, span.end, self.config.part_size):
                pieces = []
                for i in members:
                    s, e = ranges[i]
                    lo, hi = max(s, a), min(e, b)
                    if lo < hi:
                        pieces.append((lo, segments[i][1][lo - s:hi - s]))
                if pieces:
                    jobs.append((pieces[0][0], pieces[-1][0] + len(pieces[-1][1]), pieces))
        fanout = self._fanout(backend, loc)
        try:
            async with anyio.create_task_group() as tg:
                for start, end, pieces in jobs:
                    tg.start_soon(self._scatter, backend, loc, start, end, pieces, etag, fanout)
        except BaseExceptionGroup as group:
            _raise_first(group)

    def _fanout(self, backend: Backend, loc: Location) -> Slots:
        """How many parts of one read run at once: few from a near server, many from a far one.

        Many streams hide a far server's latency and per-connection limit (S3: tens of ms
        to the first byte, about 100 MB/s a connection); from a near one they only cost
        CPU: 1 GiB from nginx on loopback ran at 2.1 GB/s with 64 streams, 2.9 with 8 or
        16. A bucket whose last probe answered within ``NEAR`` gets ``_FANOUT`` streams.
        """
        most = self.config.max_concurrency
        latency = self._latency.get((id(backend), loc.bucket))
        near = latency is not None and latency < NEAR
        return Slots(min(_FANOUT, most) if near else most)

    async def _scatter(
        self, backend: Backend, loc: Location, start: int, end: int,
        pieces: list[tuple[int, memoryview]], etag: str | None, fanout: Slots,
    ) -> None:
        """One GET of [start, end) streamed into ``pieces`` (sorted, within the range)."""
        async with fanout, self.limiter:
            # scratch for the gap bytes: as big as the largest gap (often a few bytes of
            # headers), made once a slot is held, so queued jobs hold no memory
            biggest, pos = 0, start
            for offset, view in pieces:
                biggest, pos = max(biggest, offset - pos), offset + len(view)
            scratch = memoryview(bytearray(min(_DISCARD, biggest)))
            stream = Stream(self, backend, loc, start, end, etag)
            try:
                for offset, view in pieces:
                    while stream.position < offset:
                        gap = min(len(scratch), offset - stream.position)
                        if await stream.readinto(scratch[:gap]) == 0:
                            break
                    if await stream.fill(view) < len(view):
                        raise RangeError(
                            f"[{offset}, {offset + len(view)}) is past the end of {loc.url} "
                            f"({stream.object_size} bytes)", url=loc.url)
            finally:
                await stream.aclose()

    async def _finish(self, stream: Stream, view: memoryview) -> None:
        """Fill ``view`` from the open first part, then close it and free its slot."""
        try:
            # one read fills a part on the way in (the HTTP pool's reads are whole);
            # stream.fill's loop is for bodies that come in pieces (files, httpx)
            got = await stream.readinto(view)
            if got < len(view):
                got += await stream.fill(view[got:])
        finally:
            self.limiter.release()
            await stream.aclose()
        if got < len(view):
            url = stream.loc.url
            raise ObjectChangedError(f"{url} is shorter than when the read began", url=url)

    async def _fill(
        self, backend: Backend, loc: Location, view: memoryview, start: int, etag: str | None,
        fanout: Slots,
    ) -> None:
        """Fill ``view`` exactly with one part, holding one slot of the read and of the client."""
        async with fanout:
            stream = Stream(self, backend, loc, start, start + len(view), etag)
            await self.limiter.acquire()
            await self._finish(stream, view)


async def _asked_checksum(ask: Callable[[Location, str | None], Awaitable[Checksum | None]],
                          loc: Location, etag: str | None, out: list[Checksum | None]) -> None:
    """Ask the backend for the object's stored checksum; a failure only skips the check."""
    try:
        out[0] = await ask(loc, etag)
    except Exception:  # the read's own result does not depend on this answer
        out[0] = None


async def _check_whole(url: str, checksum: Checksum, view: memoryview) -> None:
    """Check a whole object's bytes against ``checksum``; large ones off the event loop."""
    hasher = checksum.hasher()
    if hasher is None:
        return
    if len(view) >= _HASH_OFF_LOOP:
        await anyio.to_thread.run_sync(hasher.update, view)
    else:
        hasher.update(view)
    checksum.check(url, hasher.value)


def _raise_first(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the error that failed a task group without the group; its cause is kept."""
    error = _first_error(group)
    raise error from error.__cause__


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    return first_error(group)


def same_version(pinned: str, got: str | None) -> bool:
    """True if a response's ETag names the version a read is pinned to (quotes, W/ aside)."""
    if got is None:
        return False
    return pinned.removeprefix("W/").strip('"') == got.removeprefix("W/").strip('"')


class Stream:
    """One GET body that reopens at the next unread byte after a transient failure.

    Pinned to the ETag of its first response: every later response must carry the same one
    (whether or not the server honoured If-Match), so a resumed read cannot mix versions.
    A stream over a whole object whose first response states the object's checksum
    (``object_checksum``) hashes what it reads and raises IntegrityError at the end if the
    bytes differ.
    ``max_attempts`` counts failures in a row; a response earns them back only by bringing
    ``_EARNED`` bytes (or all it was asked for), so a fault that recurs on every response
    ends in TransientError after a bounded number of requests.
    ``async with`` closes it.
    """

    def __init__(
        self, engine: Engine, backend: Backend, loc: Location, start: int,
        end: int | None, etag: str | None,
    ) -> None:
        self._engine, self._backend, self.loc = engine, backend, loc
        self.position, self.end, self.etag = start, end, etag
        self.object_size = -1
        self.latency = 0.0  # seconds the last response head took (Body.latency)
        self._body: Body | None = None
        self._failures = 0
        self._throttles = 0
        self._first_throttle = 0.0
        self._opened_at = start  # position when the current response began
        self._pace = engine.pace(backend, loc.bucket)
        self.object_checksum: Checksum | None = None
        """The whole object's checksum, as the first response stated it (None: it did not)."""
        self._hasher: Hasher | None = None  # set while the stream hashes a whole object

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def open(self) -> Coroutine[Any, Any, int]:
        """Send the request now (reads do it lazily) to learn the size and etag; await it.

        ``readinto``'s own coroutine, not one around it: a GET waits for its head in here.
        """
        return self.readinto(_EMPTY)

    async def fill(self, view: memoryview) -> int:
        """Read until ``view`` is full or the range ends; returns the bytes written."""
        got = 0
        while got < len(view):
            n = await self.readinto(view[got:])
            if n == 0:
                break
            got += n
        return got

    async def readinto(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes; 0 at the end of the range (or for an empty view)."""
        engine = self._engine
        if self.end is not None and self.position >= self.end:
            return 0
        if self.end is not None and len(view) > self.end - self.position:
            view = view[: self.end - self.position]
        while True:
            try:
                if self._body is None:
                    engine._requests += 1
                    await self._pace.take(engine._sleep)
                    self._body = body = await self._backend.open_body(
                        self.loc, self.position, self.end, etag=self.etag)
                    self._pace.succeeded()
                    self._opened_at = self.position
                    self.latency = body.latency
                    if self.etag is None:
                        self.etag = body.etag
                    elif not same_version(self.etag, body.etag) and body.object_size != self.position:
                        raise ObjectChangedError(
                            f"{self.loc.url} changed while it was being read (ETag "
                            f"{redact(str(body.etag))[:80]}, the read began with {redact(self.etag)[:80]})",
                            url=self.loc.url)
                    first = self.object_size < 0
                    self.object_size = body.object_size
                    if self.object_size < 0:  # e.g. Content-Range: bytes a-b/*
                        self.object_size = await self._size_by_head()
                    if self.end is None or self.end > self.object_size:
                        self.end = self.object_size
                    if first and self.position == 0:
                        self._start_hashing(body)
                    if self.position >= self.end:
                        return 0
                if not view:
                    return 0
                n = await self._body.readinto(view)
                if n == 0 and self.position < self.object_size:
                    raise ConnectionError(
                        f"body of {self.loc.url} ended early at byte {self.position}")
            except Exception as exc:
                await self.aclose()
                if isinstance(exc, ObjectNotFoundError) and self.etag is not None:
                    raise  # the object vanished mid-read: no retry can help
                if is_throttle(exc) and await self._slowed_down(exc):
                    continue
                self._failures += 1
                if not is_transient(exc):
                    renamed = naming(exc, self.loc.url)
                    if renamed is exc:
                        raise
                    raise renamed from exc
                if self._failures >= engine.policy.max_attempts:
                    raise TransientError(
                        f"{self.loc.url}: gave up after {self._failures} attempts: "
                        f"{redact(str(exc)) or type(exc).__name__}",
                        url=self.loc.url, attempts=self._failures) from exc
                engine._retries += 1
                await engine._sleep(engine.policy.delay(
                    self._failures, retry_after_of(exc), engine._rand))
                continue
            self.position += n
            engine._bytes += n
            if self._failures and self.position - self._opened_at >= min(_EARNED, self._asked()):
                self._failures = 0
            if n == 0 or self.position >= (self.object_size if self.end is None else self.end):
                await self.aclose()  # the range is done: free its connection now
            if self._hasher is not None:
                self._hashed(view, n)
            return n

    def _start_hashing(self, body: Body) -> None:
        """After the first response from byte 0: hash the read if it spans the whole object."""
        checksum = getattr(body, "checksum", None)  # bodies that never state one lack it
        self.object_checksum = checksum
        if checksum is not None and self.end == self.object_size:
            self._hasher = checksum.hasher()
            if self._hasher is not None and self.object_size == 0:
                self._hashed(_EMPTY, 0)

    def _hashed(self, view: memoryview, n: int) -> None:
        """Hash the ``n`` bytes just read; at the end of the object, check them."""
        hasher = self._hasher
        assert hasher is not None and self.object_checksum is not None
        if n:
            hasher.update(view[:n])
        if self.position >= self.object_size:
            self._hasher = None
            self.object_checksum.check(self.loc.url, hasher.value)

    async def _slowed_down(self, exc: Exception) -> bool:
        """After a throttle: pace this bucket down and wait; False once throttle_timeout is over."""
        engine = self._engine
        now = time.monotonic()
        self._first_throttle = self._first_throttle or now
        if now - self._first_throttle >= engine.policy.throttle_timeout:
            return False
        self._pace.throttled()
        self._throttles += 1
        engine._retries += 1
        engine._throttled += 1
        await engine._sleep(engine.policy.delay(self._throttles, retry_after_of(exc), engine._rand))
        return True

    def _asked(self) -> int:
        """Bytes the current response was asked for."""
        end = self.object_size if self.end is None else self.end
        return max(end - self._opened_at, 1)

    async def _size_by_head(self) -> int:
        """The object's size when a response did not tell it; a HEAD of another version is refused."""
        info = await self._backend.head(self.loc)
        if self.etag is not None and not same_version(self.etag, info.etag):
            raise ObjectChangedError(f"{self.loc.url} changed while it was being read",
                                     url=self.loc.url)
        return info.size

    async def aclose(self) -> None:
        body, self._body = self._body, None
        if isinstance(body, HTTPBody):
            body.close()  # never waits, so a cancelled task closes it all the same
        elif body is not None:
            with anyio.CancelScope(shield=True):
                await body.aclose()
