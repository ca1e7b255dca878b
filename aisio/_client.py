"""AsyncClient: one object for every URL scheme, every method awaited."""

from __future__ import annotations

import builtins
import dataclasses
import enum
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from ._backends import Backend, create_backend
from ._buffers import bytes_of, fresh_bytes, writable_view
from ._config import ClientConfig
from ._engine import Engine, Statistics, Stream
from ._logging import guard_sdk_loggers
from ._readers import AsyncReader, ReaderConstructor
from ._types import ObjectInfo
from ._url import Location, parse_url
from ._writer import AsyncWriter
from .errors import ClosedError, InvalidURLError

__all__ = ["AsyncClient"]

MiB = 2**20


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class AsyncClient:
    """Reads and writes objects at ``s3://``, ``ais://`` and ``file://`` URLs.

    Backends are created on first use in the running event loop; the client belongs to
    that loop. ``config=None`` reads the environment (``ClientConfig.from_env()``).
    """

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config if config is not None else ClientConfig.from_env()
        guard_sdk_loggers()  # every process that uses aisio gets redacted logs, whatever it reads
        self._engine = Engine(self.config)
        self._backends: dict[str, Backend] = {}
        self._state = _State.OPEN

    def __repr__(self) -> str:
        return f"<AsyncClient {self._state.value} backends={sorted(self._backends)}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def statistics(self) -> Statistics:
        """Requests, retries and bytes received so far; the cache's hits, misses and bytes."""
        stats = self._engine.statistics()
        if self.config.cache is None:
            return stats
        from ._cache._backend import cache_counters  # the cache's code loads only when used

        hits, misses, served = cache_counters(self._backends.values())
        return dataclasses.replace(stats, cache_hits=hits, cache_misses=misses, cache_bytes=served)

    def backend(self, url: object) -> tuple[Location, Backend]:
        """The parsed URL and the backend that serves it."""
        if self._state is not _State.OPEN:
            raise ClosedError("the client is closed")
        loc = parse_url(url)
        backend = self._backends.get(loc.scheme)
        if backend is None:
            backend = self._backends[loc.scheme] = create_backend(loc.scheme, self.config)
        return loc, backend

    def _object(self, url: object) -> tuple[Location, Backend]:
        loc, backend = self.backend(url)
        if loc.is_prefix:
            raise InvalidURLError(f"URL names a prefix, not an object: {loc.url}", url=loc.url)
        return loc, backend

    async def head(self, url: object) -> ObjectInfo:
        """Size, etag and last-modified time of one object."""
        loc, backend = self._object(url)
        return await backend.head(loc)

    async def list(
        self, prefix_url: object, *, recursive: bool = True
    ) -> AsyncGenerator[ObjectInfo, None]:
        """Objects under a prefix, sizes included, fetched page by page as you iterate."""
        loc, backend = self.backend(prefix_url)
        async for info in backend.list(loc, recursive=recursive):
            yield info

    async def get(self, url: object, start: int = 0, end: int | None = None, *,
                  etag: str | None = None) -> bytes:
        """The object's bytes, or those of [start, end) (``end`` exclusive).

        ``etag``: only that version (from a listing, a HEAD or a manifest), else
        ``ObjectChangedError``.
        """
        loc, backend = self._object(url)
        view, _, _ = await self._engine.read(backend, loc, start, end, alloc=fresh_bytes, etag=etag)
        return bytes_of(view)

    def stream(self, url: object, start: int = 0, end: int | None = None, *,
               etag: str | None = None, etl_name: str | None = None,
               archpath: str | None = None) -> Stream:
        """One resumable GET of [start, end), read front to back (``async with``, ``readinto``,
        ``fill``; ``open()`` sends it and tells ``object_size``).

        A failed response is reopened at the first byte not yet read, pinned to ``etag`` (or
        to the first response's). ``etl_name``: the output of an AIStore ETL; ``archpath``: a
        file inside an AIStore shard (``ais://`` only; neither is pinned to the object's ETag).
        """
        loc, backend = self._object(url)
        if etl_name or archpath:
            store = getattr(backend, "inner", backend)  # under a cache: ETL outputs go uncached
            variant = getattr(store, "variant", None)
            if variant is None:
                raise InvalidURLError(f"etl_name and archpath need ais:// URLs (an AIStore "
                                      f"cluster runs them): {loc.url}", url=loc.url)
            backend, etag = variant(etl_name=etl_name, archpath=archpath), None
        return self._engine.stream(backend, loc, start, end, etag=etag)

    async def get_view(self, url: object, start: int = 0, end: int | None = None) -> memoryview:
        """Like ``get`` but without the final copy into ``bytes``: a view of a fresh buffer."""
        loc, backend = self._object(url)
        view, _, _ = await self._engine.read(backend, loc, start, end)
        return view

    async def get_into(self, url: object, buffer: Any, start: int = 0) -> int:
        """Fill ``buffer`` with the object's bytes from ``start``; returns bytes written.

        Any writable buffer works (bytearray, memoryview, numpy array, contiguous CPU
        tensor); the bytes land in it directly, parts in parallel.
        """
        loc, backend = self._object(url)
        view, _, _ = await self._engine.read(backend, loc, start, into=writable_view(buffer))
        return len(view)

    async def get_ranges(
        self, url: object, ranges: Sequence[tuple[int, int]], max_gap: float = MiB
    ) -> builtins.list[memoryview]:
        """One view per (start, end) range, in order; ranges nearer than ``max_gap`` share a GET."""
        loc, backend = self._object(url)
        return await self._engine.read_spans(backend, loc, list(ranges), max_gap)

    async def get_ranges_into(
        self, url: object, segments: Sequence[tuple[int, Any]], max_gap: float = MiB
    ) -> None:
        """Fill each (offset, buffer) with the object's bytes at that offset.

        The zero-copy twin of ``get_ranges``: nearby segments share one GET whose bytes
        land straight in the buffers (tensors included); segments must not overlap.
        """
        loc, backend = self._object(url)
        views = [(offset, writable_view(buf)) for offset, buf in segments]
        await self._engine.read_scatter(backend, loc, views, max_gap)

    async def open(
        self,
        url: object,
        reader: ReaderConstructor | None = None,
        *,
        info: ObjectInfo | None = None,
        ranges: Sequence[tuple[int, int]] | None = None,
    ) -> AsyncReader:
        """A file-like reader; ``info`` (from a listing) saves a HEAD, ``ranges`` feed dcp_optimized."""
        loc, backend = self._object(url)
        if info is None:
            info = await backend.head(loc)
        return (reader or ReaderConstructor.default()).create(self._engine, backend, loc, info, ranges)

    async def put(self, url: object, data: Any) -> ObjectInfo:
        """Write a whole object; large data goes up as a concurrent multipart upload."""
        view = memoryview(data).cast("B")
        if len(view) <= self.config.part_size:
            loc, backend = self._object(url)
            return await backend.put(loc, view)
        async with self.writer(url) as w:
            await w.write(view)
        assert w.info is not None
        return w.info

    def writer(self, url: object, *, max_in_flight: int | None = None) -> AsyncWriter:
        """A writer for ``async with``: parts upload concurrently, aborted on failure."""
        loc, backend = self._object(url)
        in_flight = max_in_flight or min(self.config.max_concurrency, 8)
        return AsyncWriter(backend, loc, self.config.part_size, in_flight)

    async def delete(self, url: object) -> None:
        """Remove one object."""
        loc, backend = self._object(url)
        await backend.delete(loc)

    async def aclose(self) -> None:
        """Close every backend's connections; safe to call twice."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        backends, self._backends = self._backends, {}
        for backend in backends.values():
            await backend.aclose()
