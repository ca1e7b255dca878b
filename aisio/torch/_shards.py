"""Tar shards streamed from object storage: webdataset samples, and zipped member streams.

Each shard is one resumable GET (``Stream``) read through a 1 MiB buffer into the
streaming tar parser, on the loop thread; no shard is held whole. ``prefetch`` shards are
read at once (default 4: the current one and three more), each into a small bounded
queue, and their items reach the sync iterator in shard order, in batches. One GET runs
at one connection's speed (about 100 MB/s to S3), so shards in flight set a worker's
rate: on the benchmark's slow link 4 gave 2.9-3.1x webdataset, 2 gave 1.9x. An error in a prefetched shard
surfaces only after every item of the shards before it.

``ShardReader`` groups members into ``(key, ZeroDict{extension: bytes})`` samples by
webdataset's rules (``aisio.torch._tar``). ``MultiShardStream`` zips several sources, each
a stream of the bytes of every member of every shard, as the AIS seed's multishard stream.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, cast

import anyio
import torch.utils.data
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._bridge import Client, run
from .._client import AsyncClient
from .._config import ClientConfig
from .._engine import Stream
from .._types import ObjectInfo
from .._url import parse_url
from ._datasets import (
    Entry,
    Pipe,
    Shard,
    _config,
    _Epochs,
    _url_text,
    client_for,
    list_entries,
    open_stream,
    resolve_shard,
    select,
)
from ._progress import Progress
from ._tar import Member, Sample, aiter_members, aiter_samples

__all__ = ["MultiShardStream", "ShardReader"]

_CHUNK = 2**20  # bytes per read of a shard; tar headers are served from it
_QUEUE = 8  # items a shard may parse ahead of the consumer (per shard in flight)
_HANDOFF = 16  # items waiting for the sync iterator
_LOOKAHEAD_BYTES = 16 * 2**20  # the first-samples look-ahead stops at this many bytes too


class _Buffered:
    """Small reads (tar headers, small members) served from 1 MiB reads of a Stream."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buf = memoryview(bytearray(_CHUNK))
        self._start = self._end = 0

    async def readinto(self, view: memoryview, /) -> int:
        if self._start == self._end:
            if len(view) >= len(self._buf):  # big member data goes straight to its buffer
                return await self._stream.readinto(view)
            self._start, self._end = 0, await self._stream.readinto(self._buf)
            if self._end == 0:
                return 0
        n = min(len(view), self._end - self._start)
        view[:n] = self._buf[self._start : self._start + n]
        self._start += n
        return n


class _Failed:
    """A shard's error, queued behind its items so earlier shards are delivered first."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _entries(sources: Iterable[Any], prefix_map: Mapping[Any, str | Sequence[str] | None] | None
             ) -> list[Entry]:
    """Listed prefixes and named shards; a source in ``prefix_map`` is listed per prefix."""
    wanted: dict[str, list[str]] = {}
    for key, value in (prefix_map or {}).items():
        if value is not None:
            wanted[parse_url(_url_text(key)).url] = [value] if isinstance(value, str) else list(value)
    entries: list[Entry] = []
    seen: set[str] = set()
    for source in sources:
        if isinstance(source, tuple):  # an Entry, taken as is (the compat classes build them)
            entries.append(source)
            continue
        loc = parse_url(_url_text(source))
        seen.add(loc.url)
        if loc.url in wanted:
            entries += [(loc.child(loc.key + p).url, True) for p in wanted[loc.url]]
        else:
            entries.append((loc.url, loc.is_prefix))
    unknown = sorted(set(wanted) - seen)
    if unknown:
        raise ValueError(f"prefix_map names sources that are not read: {unknown}")
    return entries


class _ShardSet(_Epochs):
    """Shards to read (listed or named), how to share them out, and how to read one."""

    def __init__(self, urls_or_prefixes: str | Iterable[Any],
                 prefix_map: Mapping[Any, str | Sequence[str] | None] | None = None,
                 etl_name: str | None = None, config: ClientConfig | None = None, *,
                 shard_by_rank: bool = True, shard_by_worker: bool = True,
                 shuffle: bool = False, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, prefetch: int = 4) -> None:
        sources = [urls_or_prefixes] if isinstance(urls_or_prefixes, str) else list(urls_or_prefixes)
        if not sources:
            raise ValueError("no shard URLs or prefixes given")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self._entries = _entries(sources, prefix_map)
        self.etl_name = etl_name
        self.config = _config(config)
        self.shard_by_rank, self.shard_by_worker = shard_by_rank, shard_by_worker
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        self._keys: set[str] = set()  # extensions seen so far: every ZeroDict carries them
        if etl_name:
            for url, _ in self._entries:
                if parse_url(url).scheme != "ais":
                    raise ValueError(f"etl_name needs ais:// URLs (an ETL runs on an AIStore "
                                     f"cluster), got {url}")

    @property
    def client(self) -> Client:
        """This process's client for the reader's config."""
        return client_for(self.config)

    def _plan(self) -> tuple[list[Entry], Shard]:
        """The entries this process lists and which of their shards it reads."""
        shard = resolve_shard(self.shard_by_rank, self.shard_by_worker, self.rank,
                              self.world_size)
        return list(self._entries), shard

    def shard_infos(self) -> list[ObjectInfo]:
        """Every shard, listed now (all ranks and workers; size -1 for shards named by URL)."""
        aclient, entries = self.client.aclient, self._entries

        async def listing() -> list[ObjectInfo]:
            return [info async for info in list_entries(aclient, entries)]

        return run(listing)

    def _shard_items(self, members: AsyncGenerator[Member], url: str) -> AsyncGenerator[Any]:
        """What one shard yields; by default webdataset samples."""
        return cast(AsyncGenerator[Any], aiter_samples(members, url, self._keys))

    async def _read_shard(self, aclient: AsyncClient, info: ObjectInfo,
                          send: MemoryObjectSendStream[Any]) -> None:
        async with send:
            try:
                async with open_stream(aclient, info.url, self.etl_name) as stream:
                    members = cast(AsyncGenerator[Member], aiter_members(_Buffered(stream), info.url))
                    async with contextlib.aclosing(members), \
                            contextlib.aclosing(self._shard_items(members, info.url)) as items:
                        async for item in items:
                            await send.send(item)
            except anyio.BrokenResourceError:
                return  # the consumer went away
            except Exception as exc:
                with contextlib.suppress(anyio.BrokenResourceError):
                    await send.send(_Failed(exc))

    async def _produce(self, aclient: AsyncClient, infos: AsyncGenerator[ObjectInfo],
                       emit: Callable[[Any], Awaitable[None]]) -> None:
        """Read the shards of ``infos`` in order, ``prefetch`` at once; emit their items."""
        limit = anyio.Semaphore(self.prefetch)
        send, recv = anyio.create_memory_object_stream[MemoryObjectReceiveStream[Any]](math.inf)
        opened: list[MemoryObjectReceiveStream[Any]] = []

        async def feed() -> None:
            async with send, contextlib.aclosing(infos):
                async for info in infos:
                    await limit.acquire()
                    shard_send, shard_recv = anyio.create_memory_object_stream[Any](_QUEUE)
                    opened.append(shard_recv)
                    tg.start_soon(self._read_shard, aclient, info, shard_send)
                    send.send_nowait(shard_recv)

        try:
            async with anyio.create_task_group() as tg, recv:
                tg.start_soon(feed)
                async for shard_recv in recv:
                    async with shard_recv:
                        async for item in shard_recv:
                            if isinstance(item, _Failed):
                                raise item.error
                            await emit(item)
                    opened.remove(shard_recv)
                    limit.release()
        finally:
            for stream in opened:
                stream.close()

    def _pipe(self, aclient: AsyncClient, infos: AsyncGenerator[ObjectInfo]) -> Pipe[Any]:
        return Pipe(partial(self._produce, aclient, infos), _HANDOFF)


def _sample_bytes(sample: Sample) -> int:
    return sum(len(value) for value in sample[1].values())


class ShardReader(_ShardSet, torch.utils.data.IterableDataset[Sample]):
    """Webdataset-style samples ``(key, ZeroDict{extension: bytes})`` streamed from tar shards.

    ``urls_or_prefixes``: shard URLs, and prefixes (ending in ``/`` or a bare bucket) whose
    every object is a shard. ``prefix_map`` maps a source to name prefixes under it: only
    those are listed, prefix by prefix (``{"s3://b/": ["train-"]}``). ``etl_name`` reads
    each shard through an ETL already running on the AIS cluster (ais:// only).

    Shards are shared out over ranks and DataLoader workers (each read once per epoch),
    optionally shuffled by ``(seed, epoch)`` (see ``set_epoch``); samples keep tar order.
    A truncated or corrupt shard raises ``ShardFormatError`` naming it and the offset.
    ``prefetch`` shards are read at once, each over a connection of its own.

    Every sample is a ``ZeroDict`` holding each extension seen so far (``b""`` where it
    lacks one), and the first 64 samples (at most 16 MiB) are read before the first is
    yielded, so the default collate sees every extension that occurs early in the stream.
    """

    _lookahead = 64  # samples held before the first is yielded, to learn the extensions

    def __init__(self, urls_or_prefixes: str | Iterable[Any],
                 prefix_map: Mapping[Any, str | Sequence[str] | None] | None = None,
                 etl_name: str | None = None, show_progress: bool = False,
                 config: ClientConfig | None = None, *, shard_by_rank: bool = True,
                 shard_by_worker: bool = True, shuffle: bool = False, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 prefetch: int = 4) -> None:
        super().__init__(urls_or_prefixes, prefix_map, etl_name, config,
                         shard_by_rank=shard_by_rank, shard_by_worker=shard_by_worker,
                         shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                         prefetch=prefetch)
        self.show_progress = show_progress

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._entries)} sources>"

    def _with_keys(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        """Give each sample every extension seen so far, after a look-ahead at the start."""
        if not self._lookahead:
            yield from samples
            return
        held: list[Sample] = []
        size = 0
        error: Exception | None = None
        try:
            for sample in samples:
                held.append(sample)
                size += _sample_bytes(sample)
                if len(held) >= self._lookahead or size >= _LOOKAHEAD_BYTES:
                    break
        except Exception as exc:  # raised after the samples before it
            error = exc
        for sample in itertools.chain(held, samples) if error is None else held:
            for key in tuple(self._keys):
                sample[1].setdefault(key, b"")
            yield sample
        if error is not None:
            raise error

    def __iter__(self) -> Iterator[Sample]:
        epoch = self._next_epoch()
        entries, shard = self._plan()
        aclient = self.client.aclient
        infos = select(list_entries(aclient, entries), shard, self.shuffle, self.seed, epoch)
        pipe = self._pipe(aclient, infos)
        progress = Progress(type(self).__name__, enabled=self.show_progress, unit="sample")
        try:
            for sample in self._with_keys(iter(pipe)):
                progress.update(_sample_bytes(sample))
                yield sample
        finally:
            pipe.close()
            progress.close()


class _MemberSet(_ShardSet):
    """One source of a MultiShardStream: the bytes of every member of every shard."""

    def __init__(self, *args: Any, sort_members: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sort_members = sort_members

    async def _shard_items(self, members: AsyncGenerator[Member], url: str
                           ) -> AsyncGenerator[bytes]:
        if not self.sort_members:
            async for _, data in members:
                yield data
            return
        held = [member async for member in members]
        held.sort(key=lambda member: member[0])
        for _, data in held:
            yield data


class MultiShardStream(_Epochs, torch.utils.data.IterableDataset[tuple[bytes, ...]]):
    """Tuples of member bytes, one from each source, as the AIS seed's multishard stream.

    Each source (a shard URL, a prefix of shards, or a list of them) is one stream of the
    bytes of every member of every shard, in listing then tar order; the streams are
    zipped, so iteration stops with the shortest. Shards are shared out over ranks and
    DataLoader workers by their index in each source's listing, so sharded sources must
    have the same number of shards, their members aligned (checked: a different count
    raises ValueError).
    """

    def __init__(self, sources: Sequence[str | Sequence[str]], *, etl_name: str | None = None,
                 config: ClientConfig | None = None, shard_by_rank: bool = True,
                 shard_by_worker: bool = True, rank: int | None = None,
                 world_size: int | None = None, prefetch: int = 4,
                 show_progress: bool = False) -> None:
        if isinstance(sources, str) or not sources:
            raise ValueError("MultiShardStream needs a list of sources")
        cfg = _config(config)
        self._sets = [
            _MemberSet(source, None, etl_name, cfg, prefetch=prefetch) for source in sources
        ]
        self.config = cfg
        self.shard_by_rank, self.shard_by_worker = shard_by_rank, shard_by_worker
        self.rank, self.world_size = rank, world_size
        self.show_progress = show_progress

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._sets)} sources>"

    def _infos_per_source(self, shard: Shard) -> list[list[ObjectInfo] | None]:
        if shard.everything:
            return [None] * len(self._sets)
        listings = [s.shard_infos() for s in self._sets]
        counts = {len(listing) for listing in listings}
        if len(counts) > 1:
            raise ValueError(
                "sharded MultiShardStream sources must have the same number of shards, got "
                f"{[len(listing) for listing in listings]}; pass shard_by_rank=False and "
                "shard_by_worker=False to read every source whole")
        return [[info for i, info in enumerate(listing) if shard.keeps(i)]
                for listing in listings]

    def __iter__(self) -> Iterator[tuple[bytes, ...]]:
        self._next_epoch()
        shard = resolve_shard(self.shard_by_rank, self.shard_by_worker, self.rank,
                              self.world_size)
        aclient = client_for(self.config).aclient
        pipes: list[Pipe[Any]] = []
        progress = Progress(type(self).__name__, enabled=self.show_progress, unit="tuple")
        try:
            for member_set, infos in zip(self._sets, self._infos_per_source(shard), strict=True):
                listing = (list_entries(aclient, member_set._entries) if infos is None
                           else _from_list(infos))
                pipes.append(member_set._pipe(aclient, listing))
            for items in zip(*pipes, strict=False):
                progress.update(sum(len(item) for item in items))
                yield tuple(items)
        finally:
            for pipe in pipes:
                pipe.close()
            progress.close()


async def _from_list(infos: list[ObjectInfo]) -> AsyncGenerator[ObjectInfo]:
    for info in infos:
        yield info
