"""CachingBackend: any Backend, its GETs served from the node's cache when it holds the bytes.

The wrapper speaks the Backend protocol, so the engine, the readers and every dataset read
through it unchanged. A GET of [start, end) becomes a walk over fixed-size blocks: each
block comes from its cache file (checked: header, length, CRC-32) or from the store, in one
GET per block at most (or one GET for a run of missing blocks), and is then written to the
cache under the block's lock, so that processes missing the same block at once fetch it once.

Which version a read may be served: the one whose ETag the caller pinned (the engine passes
``etag=`` from a listing, a HEAD or a read's first response), so known versions cost no
request at all. Without one, a HEAD says which version is current (trusted for
``validate_after`` seconds, across processes). A block is never served for another ETag.

What never fails a read: a cache that cannot be written (a full disk, a read-only folder)
or read is logged once per client on the ``aisio.cache`` logger and bypassed; an object
larger than ``max_bytes`` streams through uncached; a block locked by a process that makes no
progress for ``read_timeout`` seconds is fetched without the lock (and not stored).
Writes through the wrapper (put, multipart upload, delete) forget every cached version of
the URL.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import anyio
import anyio.to_thread

from .._backends._base import Backend, Body, HTTPBody, Upload
from .._types import ObjectInfo
from .._url import Location, redact
from ..errors import ObjectChangedError, RangeError
from ._options import CacheOptions
from ._store import Block, Entry, Store, norm_etag, try_lock, unlock

__all__ = ["CachingBackend", "cache_counters"]

_log = logging.getLogger("aisio.cache")
_INLINE = 256 * 1024  # cached blocks up to this size are read on the loop, larger ones in a thread
_POLL_FIRST, _POLL_MAX = 0.002, 0.05  # seconds between tries of a block's lock
_BIG_SEEN = 4096  # objects remembered per backend as too large to cache


def cache_counters(backends: Iterable[object]) -> tuple[int, int, int]:
    """(hits, misses, bytes served from the cache) summed over the caching backends given."""
    hits = misses = served = 0
    for backend in backends:
        if isinstance(backend, CachingBackend):
            hits, misses, served = hits + backend.hits, misses + backend.misses, served + backend.served
    return hits, misses, served


def _same(pinned: str, got: str | None) -> bool:
    return got is None or norm_etag(pinned) == norm_etag(got)


class CachingBackend:
    """``inner`` with a cache in front of its GETs (see the module docstring)."""

    def __init__(self, inner: Backend, options: CacheOptions, patience: float) -> None:
        self.inner = inner
        self.options = options
        self.min_part_size = inner.min_part_size
        self.store = Store(options.dir, options.max_bytes, options.block_size)
        try:
            self.store.ensure()
        except OSError as exc:
            raise type(exc)(exc.errno, f"cannot use the cache folder {options.dir} "
                            f"(CacheOptions.dir): {exc.strerror}") from exc
        self.patience = patience
        self.hits = 0
        """Blocks served from the cache."""
        self.misses = 0
        """Blocks (and uncached reads) fetched from the store."""
        self.served = 0
        """Bytes handed to readers from the cache."""
        self._big: dict[tuple[str, str], int] = {}  # (url, etag) -> size, too large to cache
        self._reported: set[str] = set()

    def __repr__(self) -> str:
        return f"<CachingBackend {self.options.dir} over {self.inner!r}>"

    def trouble(self, what: str, exc: OSError) -> None:
        """A cache file operation failed: log once per kind, carry on without the cache."""
        if what not in self._reported:
            self._reported.add(what)
            _log.warning("aisio cache at %s: cannot %s (%s); reading from the store instead",
                         self.options.dir, what, exc.strerror or exc)

    # -- the control plane: passed through, writes forget the URL --

    async def head(self, loc: Location) -> ObjectInfo:
        info = await self.inner.head(loc)
        if info.etag is not None:
            self._remember(loc.url, info.etag, info.size)
        return info

    def list(self, loc: Location, *, recursive: bool = True) -> AsyncIterator[ObjectInfo]:
        return self.inner.list(loc, recursive=recursive)

    async def put(self, loc: Location, data: memoryview) -> ObjectInfo:
        try:
            return await self.inner.put(loc, data)
        finally:
            await self.invalidate(loc)

    async def create_upload(self, loc: Location) -> Upload:
        return _Upload(await self.inner.create_upload(loc), self, loc)

    async def delete(self, loc: Location) -> None:
        try:
            await self.inner.delete(loc)
        finally:
            await self.invalidate(loc)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def invalidate(self, loc: Location) -> None:
        """Forget every cached version of ``loc`` (shielded: a cancelled write forgets too)."""
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self.store.invalidate, loc.url)
            except OSError as exc:
                self.trouble("forget a written object", exc)

    def _remember(self, url: str, etag: str, size: int) -> None:
        """Record a HEAD's answer for clients that trust one for a while (and keep a record
        that such a client made up to date, whatever this client's own ``validate_after``)."""
        try:
            self.store.remember(url, etag, size, create=self.options.validate_after > 0)
        except OSError as exc:
            self.trouble("record a HEAD", exc)

    # -- the data plane --

    async def open_body(
        self, loc: Location, start: int, end: int | None, *, etag: str | None = None, **extra: Any
    ) -> Body:
        if extra:  # e.g. an ETL's output (etl_name=): not the object's bytes, never cached
            return cast(Body, await cast(Any, self.inner).open_body(loc, start, end, etag=etag, **extra))
        if etag is not None:  # pinned by the caller: what the cache holds of it needs no request
            return await self._open(loc, etag, start, end, -1, recalled=False)
        after = self.options.validate_after
        seen = self.store.recall(loc.url, after) if after > 0 else None
        recalled = seen is not None
        for attempt in range(3):  # a HEAD trusted still, else a fresh one (twice, if it races a write)
            if seen is None:
                info = await self.inner.head(loc)
                if info.etag is None:  # nothing to tell versions apart by: no caching
                    self.misses += 1
                    return await self.inner.open_body(loc, start, end)
                self._remember(loc.url, info.etag, info.size)
                seen, recalled = (info.etag, info.size), False
            try:
                return await self._open(loc, seen[0], start, end, seen[1], recalled=recalled)
            except ObjectChangedError:  # not that version any more, and no byte served: ask again
                if attempt == 2:
                    raise
                seen = None
        raise AssertionError("unreachable")

    async def _open(self, loc: Location, etag: str, start: int, end: int | None, size: int, *,
                    recalled: bool) -> Body:
        key = (loc.url, norm_etag(etag))
        size = self._big.get(key, size)
        if size > self.options.max_bytes:  # larger than the whole cache: streams through
            if start > size:
                raise RangeError(f"offset {start} is past the end of {loc.url} ({size} bytes)",
                                 url=loc.url)
            self.misses += 1
            return await self.inner.open_body(loc, start, end, etag=etag)
        body = _CachedBody(self, loc, self.store.entry(loc.url, etag), start, end, recalled)
        try:
            await body.start(size)
        except BaseException:
            await body.aclose()
            raise
        if body.bypass:
            if len(self._big) >= _BIG_SEEN:
                self._big.clear()
            self._big[key] = body.object_size
        return body


class _Upload:
    """A multipart upload whose completion forgets the URL's cached versions."""

    def __init__(self, inner: Upload, owner: CachingBackend, loc: Location) -> None:
        self._inner, self._owner, self._loc = inner, owner, loc

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        await self._inner.upload_part(number, offset, data)

    async def complete(self) -> ObjectInfo:
        try:
            return await self._inner.complete()
        finally:
            await self._owner.invalidate(self._loc)

    async def abort(self) -> None:
        await self._inner.abort()


class _CachedBody:
    """One GET of [start, end) served block by block from the cache or the store (a Body).

    At most one block's lock is held at a time, and only while that block is fetched and
    written, never while the caller is away between reads.
    """

    def __init__(self, owner: CachingBackend, loc: Location, entry: Entry, start: int,
                 end: int | None, recalled: bool) -> None:
        self._owner, self._loc, self._entry = owner, loc, entry
        self._recalled = recalled  # the version is what a recent HEAD said, not the caller
        self._store = owner.store
        self._bs = owner.store.block_size
        self.etag: str | None = entry.etag
        self.object_size = -1
        self.latency = 0.0
        self.bypass = False
        """The object is larger than the cache: blocks are fetched, never stored."""
        self._pos, self._end, self._stop = start, end, start
        self._held = memoryview(b"")  # one whole block, for reads that do not cover one
        self._held_start = 0
        self._held_cached = False
        self._scratch: bytearray | None = None
        self._pending: tuple[int, Block] | None = None  # the first block, opened by start()
        self._lock: tuple[int, str, int] | None = None  # (block, path, descriptor)
        self._inner: Body | None = None
        self._inner_pos = 0
        self._inner_end = -1  # -1: to the end of the object

    async def start(self, size: int) -> None:
        """Before the first read: learn the object's size (given, from a cached block or from
        the store) and open the first block, from the cache or, under its lock, the store.

        So a version that is no longer the store's fails here, in ``open_body``, where the
        caller that did not pin the version can ask a HEAD and start again.
        """
        if size >= 0:
            self._sized(size)
            if self._pos >= size:
                return
        found = await self._prepare(self._pos // self._bs)
        if size < 0:
            self._sized(found)
        size = self.object_size
        if self._inner is not None and not 0 <= self._inner_end <= size:
            self._inner_end = size
        if size > self._owner.options.max_bytes:
            self.bypass = True
            self._release()
        elif size == 0 and self._pending is not None:  # the empty object's block answered
            self._owner.hits += 1
        elif size == 0 and self._inner is not None:  # nothing to fetch: store its block now
            self._owner.misses += 1
            if self._holds(0):
                await self._commit(0, memoryview(b""))
            self._release()

    def _sized(self, size: int) -> None:
        if self._pos > size:
            raise RangeError(f"offset {self._pos} is past the end of {self._loc.url} ({size} bytes)",
                             url=self._loc.url)
        self.object_size = size
        self._stop = size if self._end is None else min(self._end, size)

    async def _prepare(self, index: int) -> int:
        """Open block ``index`` from the cache, or lock it and open its GET; the object's size."""
        block = self._open_cached(index, self.object_size)
        if block is None:
            await self._take(index)
            if self._holds(index):
                block = self._open_cached(index, self.object_size)
        if block is not None:
            self._release()
            self._pending = index, block
            return block.object_size
        await self._open_inner(index * self._bs, self._fetch_end())
        assert self._inner is not None
        size = self._inner.object_size
        if size < 0:  # the response did not say: a HEAD does, for the version pinned
            info = await self._owner.inner.head(self._loc)
            if not _same(self._entry.etag, info.etag):
                raise self._changed(info.etag)
            size = info.size
        return size

    def _fetch_end(self) -> int | None:
        """Where a GET from a block's start ends: with the read's last block (clamped by the
        store while the object's size is not known yet)."""
        if self.object_size < 0:
            return None if self._end is None else -(-self._end // self._bs) * self._bs
        return min(self.object_size, -(-self._stop // self._bs) * self._bs)

    # -- Body --

    async def readinto(self, view: memoryview) -> int:
        pos = self._pos
        if pos >= self._stop or not view:
            return 0
        offset = pos - self._held_start
        if 0 <= offset < len(self._held):
            n = min(len(view), len(self._held) - offset, self._stop - pos)
            view[:n] = self._held[offset:offset + n]
            if self._held_cached:
                self._owner.served += n
            self._pos += n
            return n
        index = pos // self._bs
        first = index * self._bs
        length = self._store.block_length(self.object_size, index)
        if pos == first and len(view) >= length and first + length <= self._stop:
            # the whole block lands in the caller's buffer, no copy
            if await self._load(index, view[:length]):
                self._owner.served += length
            self._pos += length
            return length
        self._held = memoryview(b"")
        if self._scratch is None or len(self._scratch) < length:
            self._scratch = bytearray(length)
        target = memoryview(self._scratch)[:length]
        self._held_cached = await self._load(index, target)
        self._held, self._held_start = target, first
        return await self.readinto(view)

    async def aclose(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._store.close_block(pending[1])
        await self._close_inner()
        self._release()
        self._held, self._scratch = memoryview(b""), None

    # -- one block --

    async def _load(self, index: int, target: memoryview) -> bool:
        """Fill ``target`` with block ``index``; True if it came from the cache."""
        if not self.bypass:
            if await self._from_cache(index, target):
                return True
            if not self._holds(index):
                await self._take(index)
                if self._holds(index) and await self._from_cache(index, target):
                    self._release()  # filled by another process while we waited
                    return True
        try:
            await self._fetch(index, target)
            self._owner.misses += 1
            if self._holds(index) and not self.bypass:
                await self._commit(index, target)
        finally:
            self._release()
        return False

    def _open_cached(self, index: int, size: int) -> Block | None:
        try:
            return self._store.open_block(self._entry, index, size)
        except OSError as exc:
            self._owner.trouble("read a block", exc)
            return None

    async def _from_cache(self, index: int, target: memoryview) -> bool:
        pending, self._pending = self._pending, None
        block = None
        if pending is not None:
            if pending[0] == index:
                block = pending[1]
            else:
                self._store.close_block(pending[1])
        if block is None:
            block = self._open_cached(index, self.object_size)
            if block is None:
                return False
        try:
            if len(target) > _INLINE:  # preadv and crc32 let go of the GIL: another core works
                good = await anyio.to_thread.run_sync(self._store.read_block, block, target)
            else:
                good = self._store.read_block(block, target)
        except OSError as exc:
            self._owner.trouble("read a block", exc)
            return False
        if good:
            self._owner.hits += 1
        return good

    def _holds(self, index: int) -> bool:
        return self._lock is not None and self._lock[0] == index

    async def _take(self, index: int) -> None:
        """Take block ``index``'s lock, waiting while another process fetches it; without it
        after ``patience`` seconds (its holder is stuck) or if the lock cannot be made."""
        self._release()
        path = self._store.lock_path(self._entry, index)
        deadline = time.monotonic() + self._owner.patience
        delay = _POLL_FIRST
        while True:
            try:
                fd = try_lock(path)
            except OSError as exc:
                self._owner.trouble("lock a block", exc)
                return
            if fd is not None:
                self._lock = index, path, fd
                return
            if time.monotonic() >= deadline:
                _log.debug("%s: block %d stayed locked %.0f s; fetching it uncached",
                           redact(self._loc.url), index, self._owner.patience)
                return
            await self._close_inner()  # hold no connection while waiting
            await anyio.sleep(delay)
            delay = min(2 * delay, _POLL_MAX)

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            with contextlib.suppress(OSError):
                unlock(lock[1], lock[2])

    async def _commit(self, index: int, data: memoryview) -> None:
        try:
            await anyio.to_thread.run_sync(
                self._store.commit, self._entry, index, self.object_size, data)
        except OSError as exc:
            self._owner.trouble("write a block", exc)

    # -- the store --

    async def _fetch(self, index: int, target: memoryview) -> None:
        first = index * self._bs
        if self._inner is None or self._inner_pos != first:
            await self._close_inner()
            await self._open_inner(first, self._fetch_end())
        assert self._inner is not None
        got = 0
        try:
            while got < len(target):
                n = await self._inner.readinto(target[got:])
                if n == 0:
                    raise ConnectionError(
                        f"body of {self._loc.url} ended early at byte {first + got}")
                got += n
        except BaseException:
            await self._close_inner()
            raise
        self._inner_pos += got
        if self._inner_pos >= self._inner_end:
            await self._close_inner()

    async def _open_inner(self, start: int, end: int | None) -> None:
        body = await self._owner.inner.open_body(self._loc, start, end, etag=self._entry.etag)
        self._inner, self._inner_pos = body, start
        self._inner_end = -1 if end is None else end
        self.latency = body.latency
        size = self.object_size
        if not _same(self._entry.etag, body.etag) or (
                size >= 0 and body.object_size >= 0 and body.object_size != size):
            await self._close_inner()
            raise self._changed(body.etag)

    def _changed(self, etag: str | None) -> ObjectChangedError:
        url = self._loc.url
        if self._recalled:  # the next read asks a HEAD
            self._store.forget(url)
        return ObjectChangedError(
            f"{url} changed while it was being read (ETag {redact(str(etag))[:80]}, the read "
            f"began with {redact(self._entry.etag)[:80]})", url=url)

    async def _close_inner(self) -> None:
        body, self._inner = self._inner, None
        if isinstance(body, HTTPBody):
            body.close()
        elif body is not None:
            with anyio.CancelScope(shield=True):
                await body.aclose()
