"""Async readers: file-like access to one object, built on the engine.

Three strategies, chosen with ``ReaderConstructor`` (names as in the S3 connector):
``sequential`` streams one GET and keeps what it read; ``range_based`` issues a range
GET per read through a small buffer; ``dcp_optimized`` fetches known byte ranges with
few coalesced GETs. All readers answer reads from memory they already hold without
I/O (``read_nowait``), which lets the sync twin skip the loop thread for small reads.
"""

from __future__ import annotations

import bisect
import io
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._buffers import writable_view
from ._planner import coalesce
from ._types import ObjectInfo
from ._url import Location
from .errors import ClosedError

if TYPE_CHECKING:
    from ._backends import Backend
    from ._engine import Engine, Stream

__all__ = ["AsyncReader", "ReaderConstructor"]

MiB = 2**20
_READ_AHEAD = 2 * MiB  # sequential: how far past a small read one request may fill


@dataclass(frozen=True)
class ReaderConstructor:
    """How ``open`` reads an object; a frozen value, so datasets pickle it to workers."""

    kind: str = "sequential"
    buffer_size: int = 8 * MiB
    max_gap_size: float = 32 * MiB

    @staticmethod
    def sequential() -> ReaderConstructor:
        """One streaming GET; keeps what it has read, so any access pattern works."""
        return ReaderConstructor("sequential")

    @staticmethod
    def range_based(buffer_size: int = 8 * MiB) -> ReaderConstructor:
        """A range GET per read; reads smaller than ``buffer_size`` fill the buffer first."""
        if buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, got {buffer_size}")
        return ReaderConstructor("range_based", buffer_size=buffer_size)

    @staticmethod
    def dcp_optimized(max_gap_size: float = 32 * MiB) -> ReaderConstructor:
        """Given the byte ranges a load needs, one GET per group closer than ``max_gap_size``."""
        if max_gap_size < 0 or math.isnan(max_gap_size):
            raise ValueError(f"max_gap_size must be >= 0, got {max_gap_size}")
        return ReaderConstructor("dcp_optimized", max_gap_size=max_gap_size)

    @staticmethod
    def default() -> ReaderConstructor:
        """The default reader: ``sequential()``."""
        return ReaderConstructor.sequential()

    @staticmethod
    def get_reader_type_string(constructor: ReaderConstructor | None) -> str:
        """``"sequential"``, ``"range_based"`` or ``"dcp_optimized"``."""
        return (constructor or ReaderConstructor.default()).kind

    def create(
        self, engine: Engine, backend: Backend, loc: Location, info: ObjectInfo,
        ranges: Sequence[tuple[int, int]] | None = None,
    ) -> AsyncReader:
        """A reader of this kind over one object whose size and etag are known."""
        if self.kind == "sequential":
            return SequentialReader(engine, backend, loc, info)
        if self.kind == "range_based":
            return RangeBasedReader(engine, backend, loc, info, self.buffer_size)
        if self.kind == "dcp_optimized":
            return DcpOptimizedReader(engine, backend, loc, info, ranges or (), self.max_gap_size)
        raise ValueError(f"unknown reader kind {self.kind!r}")


class AsyncReader:
    """An open object: ``await read()``, ``await readinto()``, ``seek()``, ``tell()``."""

    def __init__(self, engine: Engine, backend: Backend, loc: Location, info: ObjectInfo) -> None:
        self._engine, self._backend, self._loc = engine, backend, loc
        self.url, self.size, self.etag = info.url, info.size, info.etag
        self._pos = 0
        self._held = memoryview(b"")  # bytes of [_held_start, _held_start + len) already fetched
        self._held_start = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} pos={self._pos} size={self.size}>"

    async def __aenter__(self) -> AsyncReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _check(self) -> None:
        if self.closed:
            raise ClosedError(f"I/O on a closed reader of {self.url}", url=self.url)

    def tell(self) -> int:
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the read position; past the end is allowed and reads nothing.

        ``offset`` and ``whence`` must be integers (anything with ``__index__``, bools
        too), as for ``io`` files: ``seek(1.5)`` is a TypeError, not a fractional position.
        """
        self._check()
        offset, whence = operator.index(offset), operator.index(whence)
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos} in {self.url}")
        self._pos = pos
        return pos

    def _want(self, size: int | None) -> int:
        left = max(0, self.size - self._pos)
        return left if size is None or size < 0 else min(size, left)

    async def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if negative); b"" at the end."""
        self._check()
        n = self._want(None if size is None else operator.index(size))
        if n == 0:
            return b""
        buf = bytearray(n)
        got = await self._read_any(memoryview(buf))
        return bytes(memoryview(buf)[:got])  # not del buf[got:]: a view may linger

    async def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current position; returns the bytes written."""
        self._check()
        view = writable_view(buffer)
        view = view[: self._want(len(view))]
        if not view:
            return 0
        return await self._read_any(view)

    def read_nowait(self, view: memoryview) -> int | None:
        """Serve ``view`` from memory already held, or None if that needs I/O."""
        self._check()
        want = self._want(len(view))
        if want == 0:
            return 0
        got = self._copy_held(view[:want])
        if got is not None:
            self._pos += got
        return got

    def _copy_held(self, view: memoryview) -> int | None:
        """Copy ``view`` from the held region if it covers it, else None."""
        offset = self._pos - self._held_start
        if offset < 0 or offset + len(view) > len(self._held):
            return None
        view[:] = self._held[offset:offset + len(view)]
        return len(view)

    async def _read_any(self, view: memoryview) -> int:
        held = self._copy_held(view)
        if held is not None:
            self._pos += held
            return held
        return await self._readinto(view)

    async def _fetch(self, view: memoryview, start: int) -> int:
        """Fill ``view`` from object offset ``start`` with parallel range GETs."""
        got, _, _ = await self._engine.read(self._backend, self._loc, start, into=view,
                                            size=self.size, etag=self.etag)
        return len(got)

    async def _readinto(self, view: memoryview) -> int:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.closed = True


class SequentialReader(AsyncReader):
    """One streaming GET; every byte read is kept, so seeking back costs no request."""

    def __init__(self, engine: Engine, backend: Backend, loc: Location, info: ObjectInfo) -> None:
        super().__init__(engine, backend, loc, info)
        self._buf: memoryview | None = None
        self._filled = 0
        self._stream: Stream | None = None

    def _copy_held(self, view: memoryview) -> int | None:
        if self._buf is None or self._pos + len(view) > self._filled:
            return None
        view[:] = self._buf[self._pos:self._pos + len(view)]
        return len(view)

    async def _readinto(self, view: memoryview) -> int:
        target = self._pos + len(view)
        if self._buf is None:
            self._buf = memoryview(bytearray(self.size))
            self._stream = self._engine.stream(self._backend, self._loc, 0, self.size, etag=self.etag)
        assert self._stream is not None
        while self._filled < target:
            stop = min(self.size, max(target, self._filled + _READ_AHEAD))
            n = await self._stream.readinto(self._buf[self._filled:stop])
            if n == 0:
                break
            self._filled += n
        got = max(0, min(target, self._filled) - self._pos)
        view[:got] = self._buf[self._pos:self._pos + got]
        self._pos += got
        return got

    async def aclose(self) -> None:
        self.closed = True
        stream, self._stream, self._buf = self._stream, None, None
        if stream is not None:
            await stream.aclose()


class RangeBasedReader(AsyncReader):
    """A range GET per read: small reads go through a buffer, large ones straight to the caller."""

    def __init__(self, engine: Engine, backend: Backend, loc: Location, info: ObjectInfo,
                 buffer_size: int) -> None:
        super().__init__(engine, backend, loc, info)
        self._buffer_size = buffer_size
        self._store: memoryview | None = None  # allocated once, reused by every fill

    async def _readinto(self, view: memoryview) -> int:
        if len(view) >= self._buffer_size:
            got = await self._fetch(view, self._pos)
            self._pos += got
            return got
        if self._store is None:
            self._store = memoryview(bytearray(self._buffer_size))
        self._held = memoryview(b"")
        n = min(self._buffer_size, self.size - self._pos)
        got = await self._fetch(self._store[:n], self._pos)
        self._held_start, self._held = self._pos, self._store[:got]
        served = min(got, len(view))
        view[:served] = self._held[:served]
        self._pos += served
        return served

    async def aclose(self) -> None:
        self.closed = True
        self._store, self._held = None, memoryview(b"")


class DcpOptimizedReader(AsyncReader):
    """Reads declared byte ranges from a few coalesced GETs, span by span in offset order.

    Reads outside the declared ranges fall back to a plain range GET.
    """

    def __init__(self, engine: Engine, backend: Backend, loc: Location, info: ObjectInfo,
                 ranges: Sequence[tuple[int, int]], max_gap: float) -> None:
        super().__init__(engine, backend, loc, info)
        self._spans = [(s.start, s.end) for s in coalesce(list(ranges), max_gap) if s.end > s.start]
        self._starts = [s for s, _ in self._spans]

    async def _readinto(self, view: memoryview) -> int:
        i = bisect.bisect_right(self._starts, self._pos) - 1
        if i >= 0 and self._pos + len(view) <= self._spans[i][1]:
            start, end = self._spans[i]
            self._held = memoryview(b"")  # free the previous span before fetching the next
            data = memoryview(bytearray(end - start))
            await self._fetch(data, start)
            self._held_start, self._held = start, data
            return await self._read_any(view)
        got = await self._fetch(view, self._pos)
        self._pos += got
        return got

    async def aclose(self) -> None:
        self.closed = True
        self._held = memoryview(b"")
