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

Order and resumption (``_order``, ``_resume``): the epoch's order is an order of shards;
it is dealt out to (rank, worker) slots, and each slot reads its share in order, samples
in tar order, optionally through a seeded shuffle buffer of its own. Every item read is
tagged (share entry ``j``, sample index ``i``): a slot's state is a cursor (j, i), the
tags of what its buffer holds, and of what it took out but has not yet yielded. A
restore reads again only the shards those tags name and the one at the cursor.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
from ..errors import ObjectChangedError
from ._datasets import (
    Entry,
    Pipe,
    Shard,
    _aiter,
    _config,
    _Epochs,
    _url_text,
    changed_since,
    client_for,
    collect,
    list_entries,
    open_stream,
    rank_and_world_size,
    resolve_shard,
)
from ._listing import Listings
from ._manifest import Manifest, count_shards, load_manifest
from ._order import Deal, Position, ShuffleBuffer, key, order_of, remaining_samples
from ._progress import Progress
from ._resume import Ident, Pass, fingerprint
from ._tar import Member, Sample, aiter_members, aiter_samples

__all__ = ["MultiShardStream", "ShardReader"]

logger = logging.getLogger("aisio.torch")

_CHUNK = 2**20  # bytes per read of a shard; tar headers are served from it
_QUEUE = 8  # items a shard may parse ahead of the consumer (per shard in flight)
_HANDOFF = 16  # items waiting for the sync iterator
_LOOKAHEAD_BYTES = 16 * 2**20  # the first-samples look-ahead stops at this many bytes too

_TAKE, _RESTORE, _END = 0, 1, 2  # tags of what a shard's reader sends


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


@dataclass(frozen=True)
class _Job:
    """One shard to read for a slot: entry ``j`` of its share, and which samples to send.

    Samples before ``resume`` were taken by the run being resumed: of those only
    ``wanted`` (held in its buffer) are sent, as restores; with ``restore_only`` nothing
    else is (the shard lies before the cursor). Later samples are sent unless delivered
    before the run began (``before``).
    """

    j: int
    info: ObjectInfo
    upto: int | None
    holes: frozenset[int]
    resume: int = 0
    wanted: frozenset[int] = frozenset()
    restore_only: bool = False

    def tag(self, i: int) -> int | None:
        if self.restore_only or i < self.resume:
            return _RESTORE if i in self.wanted else None
        if i in self.holes or (self.upto is not None and i >= self.upto):
            return _TAKE
        return None

    @property
    def last(self) -> int | None:
        """The last sample worth reading, when the shard need not be read to its end."""
        return max(self.wanted) if self.restore_only and self.wanted else None


def _entries(sources: Iterable[Any], prefix_map: Mapping[Any, str | Sequence[str] | None] | None
             ) -> list[Entry]:
    """Listed prefixes and named shards; a source in ``prefix_map`` is listed per prefix."""
    wanted: dict[str, list[str]] = {}
    for key_, value in (prefix_map or {}).items():
        if value is not None:
            wanted[parse_url(_url_text(key_)).url] = [value] if isinstance(value, str) else list(value)
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


def _jobs(state: Pass, src: int, infos: Sequence[ObjectInfo], unit: Callable[[int], int],
          deal: Deal) -> Iterator[_Job]:
    """The shards slot ``state.shard`` reads for source ``src``, from its cursor on."""
    shard = state.shard
    jc, a = state.cursor[src]
    wanted: dict[int, set[int]] = {}
    for ident in [*state.held, *state.ready]:
        j, i = ident[src]
        wanted.setdefault(j, set()).add(i)

    def job(j: int, restore_only: bool) -> _Job | None:
        entry = deal.entry(shard.rank, shard.worker, j)
        if entry is None:
            return None
        pos, (upto, holes) = entry
        return _Job(j, infos[unit(pos)], upto, frozenset(holes), a if j == jc else 0,
                    frozenset(wanted.get(j, ())), restore_only)

    for j in sorted(k for k in wanted if k < jc):
        before = job(j, True)
        if before is not None:
            yield before
    j = jc
    while (nxt := job(j, False)) is not None:
        yield nxt
        j += 1


def _slot_totals(deal: Deal, counts: Sequence[int], unit: Callable[[int], int]) -> list[int]:
    """Samples left in every slot's share (counts: samples per unit)."""
    totals = []
    for r in range(deal.world_size):
        for w in range(deal.num_workers):
            total, j = 0, 0
            while (entry := deal.entry(r, w, j)) is not None:
                pos, before = entry
                total += remaining_samples(counts[unit(pos)], before)
                j += 1
            totals.append(total)
    return totals


class _ShardSet(_Epochs):
    """Shards to read (listed or named), how to share them out, and how to read one."""

    _kind = "ShardReader"

    def __init__(self, urls_or_prefixes: str | Iterable[Any],
                 prefix_map: Mapping[Any, str | Sequence[str] | None] | None = None,
                 etl_name: str | None = None, config: ClientConfig | None = None, *,
                 shard_by_rank: bool = True, shard_by_worker: bool = True,
                 shuffle: bool = False, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, prefetch: int = 4, shuffle_buffer: int = 0,
                 resampled: bool = False, drop_last: bool = False,
                 _manifest: Manifest | None = None) -> None:
        sources = [urls_or_prefixes] if isinstance(urls_or_prefixes, str) else list(urls_or_prefixes)
        if not sources and _manifest is None:
            raise ValueError("no shard URLs or prefixes given")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self._entries = _entries(sources, prefix_map)
        self.etl_name = etl_name
        self.config = _config(config)
        self.shard_by_rank, self.shard_by_worker = shard_by_rank, shard_by_worker
        self.shuffle, self.seed = shuffle, seed
        self.shuffle_buffer, self.resampled, self.drop_last = shuffle_buffer, resampled, drop_last
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        self._keys: set[str] = set()  # extensions seen so far: every ZeroDict carries them
        self._listings = Listings(self)
        self._manifest = _manifest
        self._check_options()
        urls = [url for url, _ in self._entries] + (
            [info.url for info in _manifest.infos] if _manifest is not None else [])
        if etl_name:
            for url in urls:
                if parse_url(url).scheme != "ais":
                    raise ValueError(f"etl_name needs ais:// URLs (an ETL runs on an AIStore "
                                     f"cluster), got {url}")

    @property
    def client(self) -> Client:
        """This process's client for the reader's config."""
        return client_for(self.config)

    @property
    def manifest_url(self) -> str | None:
        """The manifest the reader was built from (its reads are pinned to its ETags)."""
        return self._manifest.url if self._manifest is not None else None

    def _plan(self) -> tuple[list[Entry], Shard]:
        """The entries this process lists and which of their shards it reads."""
        shard = resolve_shard(self.shard_by_rank, self.shard_by_worker, self.rank,
                              self.world_size)
        return list(self._entries), shard

    def _slot(self) -> Shard:
        return self._plan()[1]

    def _listed(self, entries: list[Entry] | None = None, *, counted: bool = False) -> Manifest:
        """The shards: the manifest's, or listed once and shared by the workers.

        ``counted``: with every shard's samples and members, counted (one read of every
        shard, shared too) when the manifest does not give them.
        """
        if self._manifest is not None and (not counted or self._manifest.samples is not None):
            return self._manifest
        aclient = self.client.aclient
        entries = list(self._entries) if entries is None else entries

        def make() -> Manifest:
            if self._manifest is not None:
                return self._manifest
            return Manifest("", run(collect, list_entries(aclient, entries)))

        listing = self._listings.get(repr(entries), make)
        if not counted:
            return listing

        def count() -> Manifest:
            logger.warning("counting the samples of %d shards (drop_last=True needs them): "
                           "write a manifest with counts to skip this",
                           len(listing.infos))
            samples, members = run(count_shards, aclient, listing.infos)
            return Manifest(listing.url, listing.infos, samples, members)

        return self._listings.get(repr(entries) + "#counted", count)

    def shard_infos(self) -> list[ObjectInfo]:
        """Every shard (all ranks and workers; size -1 for shards named by URL), listed once."""
        return list(self._listed().infos)

    def _what(self) -> str:
        if self._manifest is not None:
            return f"the manifest {self._manifest.url}"
        return "the listing of " + ", ".join(url for url, _ in self._entries[:3]) + (
            ", ..." if len(self._entries) > 3 else "")

    def _shard_items(self, members: AsyncGenerator[Member], url: str) -> AsyncGenerator[Any]:
        """What one shard yields; by default webdataset samples."""
        return cast(AsyncGenerator[Any], aiter_samples(members, url, self._keys))

    async def _read_shard(self, aclient: AsyncClient, job: _Job,
                          send: MemoryObjectSendStream[Any]) -> None:
        info = job.info
        manifest = self.manifest_url if not self.etl_name else None
        async with send:
            try:
                try:
                    async with open_stream(aclient, info.url, self.etl_name,
                                           etag=info.etag if manifest else None) as stream:
                        members = cast(AsyncGenerator[Member],
                                       aiter_members(_Buffered(stream), info.url))
                        last = job.last
                        i = 0
                        async with contextlib.aclosing(members), \
                                contextlib.aclosing(self._shard_items(members, info.url)) as items:
                            async for item in items:
                                tag = job.tag(i)
                                if tag is not None:
                                    await send.send((tag, job.j, i, item))
                                i += 1
                                if last is not None and i > last:
                                    return
                except ObjectChangedError as exc:
                    if manifest is None or info.etag is None:
                        raise
                    raise changed_since(info, manifest) from exc
                if not job.restore_only:
                    await send.send((_END, job.j, i, None))
            except anyio.BrokenResourceError:
                return  # the consumer went away
            except Exception as exc:
                with contextlib.suppress(anyio.BrokenResourceError):
                    await send.send(_Failed(exc))

    async def _produce(self, aclient: AsyncClient, jobs: AsyncGenerator[_Job],
                       emit: Callable[[Any], Awaitable[None]]) -> None:
        """Read the shards of ``jobs`` in order, ``prefetch`` at once; emit their items."""
        limit = anyio.Semaphore(self.prefetch)
        send, recv = anyio.create_memory_object_stream[MemoryObjectReceiveStream[Any]](math.inf)
        opened: list[MemoryObjectReceiveStream[Any]] = []

        async def feed() -> None:
            async with send, contextlib.aclosing(jobs):
                async for job in jobs:
                    await limit.acquire()
                    shard_send, shard_recv = anyio.create_memory_object_stream[Any](_QUEUE)
                    opened.append(shard_recv)
                    tg.start_soon(self._read_shard, aclient, job, shard_send)
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

    def _pipe(self, aclient: AsyncClient, jobs: Iterable[_Job]) -> Pipe[Any]:
        return Pipe(partial(self._produce, aclient, _aiter(jobs)), _HANDOFF)

    def _order(self, count: int, epoch: int) -> Callable[[int], int]:
        return order_of(count, self.seed, epoch, shuffle=self.shuffle, resampled=self.resampled)

    def _deal(self, state: Pass, src: int, count: int) -> Deal:
        shard = state.shard
        group = (shard.world_size * shard.num_workers
                 if self.drop_last and not self.resampled else 0)
        deal = Deal(state.base[src], None if self.resampled else count, shard.world_size,
                    shard.num_workers, group)
        state.kept = deal.kept
        return deal


def _sample_bytes(sample: Sample) -> int:
    return sum(len(value) for value in sample[1].values())


class _Restore:
    """Items of a restored pass read again: what its buffer held, and what it had ready."""

    def __init__(self, state: Pass, whole: bool = False) -> None:
        self.state, self.whole = state, whole
        self.got: list[dict[tuple[int, int], Any]] = [{} for _ in range(state.sources)]
        self.pending = bool(state.held or state.ready)

    def add(self, src: int, j: int, i: int, item: Any) -> None:
        self.got[src][(j, i)] = item

    def item(self, ident: Ident, what: str) -> Any:
        try:
            parts = [self.got[src][pos] for src, pos in enumerate(ident)]
        except KeyError:
            raise ValueError(f"could not read again sample {ident} of the state being "
                             f"restored: {what} changed since it was saved") from None
        return tuple(parts) if self.whole else parts[0]

    def rebuild(self, buffer: ShuffleBuffer[tuple[Ident, Any]] | None, what: str
                ) -> list[Any]:
        """Refill ``buffer`` as it was; returns the items that were ready, in order."""
        state = self.state
        self.pending = False
        if buffer is not None:
            buffer.items = [(ident, self.item(ident, what)) for ident in state.held]
            buffer.step = state.step
        ready = [self.item(ident, what) for ident in state.ready]
        state.held = []
        self.got = []
        return ready


class ShardReader(_ShardSet, torch.utils.data.IterableDataset[Sample]):
    """Webdataset-style samples ``(key, ZeroDict{extension: bytes})`` streamed from tar shards.

    ``urls_or_prefixes``: shard URLs, and prefixes (ending in ``/`` or a bare bucket) whose
    every object is a shard. ``prefix_map`` maps a source to name prefixes under it: only
    those are listed, prefix by prefix (``{"s3://b/": ["train-"]}``). ``etl_name`` reads
    each shard through an ETL already running on the AIS cluster (ais:// only).
    ``from_manifest`` builds one from a manifest, without listing.

    The epoch's order of shards is fixed by ``(seed, epoch)`` (``shuffle``; ``resampled``:
    endless, shards drawn with replacement); shards are dealt out to ranks and DataLoader
    workers as in ``IterableDataset`` (each read once per epoch); samples keep tar order,
    unless ``shuffle_buffer`` mixes them through a seeded buffer of that many samples per
    worker. ``drop_last``: every rank and worker gets the same number of shards and of
    samples (sample counts come from a manifest that has them, or are counted once).
    ``state_dict()`` / ``load_state_dict()`` follow torchdata's ``Stateful`` protocol.
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
                 shuffle_buffer: int = 0, resampled: bool = False, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None,
                 prefetch: int = 4, _manifest: Manifest | None = None) -> None:
        super().__init__(urls_or_prefixes, prefix_map, etl_name, config,
                         shard_by_rank=shard_by_rank, shard_by_worker=shard_by_worker,
                         shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                         prefetch=prefetch, shuffle_buffer=shuffle_buffer, resampled=resampled,
                         drop_last=drop_last, _manifest=_manifest)
        self.show_progress = show_progress

    @classmethod
    def from_manifest(cls, url: str, *, config: ClientConfig | None = None,
                      **options: Any) -> ShardReader:
        """The shards of a manifest (``aisio manifest``), read now with one GET; never lists.

        Reads are pinned to the manifest's ETags (a shard changed since raises
        ``ObjectChangedError`` naming it and the manifest). With sample counts in the
        manifest (``write_manifest(..., count_samples=True)``), ``len()`` is known at once.
        ``options``: the constructor's keywords.
        """
        cfg = _config(config)
        return cls((), config=cfg, _manifest=load_manifest(url, cfg), **options)

    def __repr__(self) -> str:
        if self._manifest is not None:
            return f"<{type(self).__name__} {len(self._manifest)} shards from {self._manifest.url}>"
        return f"<{type(self).__name__} {len(self._entries)} sources>"

    def __len__(self) -> int:
        """Samples this rank reads in an epoch (all its workers together), when the sample
        counts are known: from a manifest that has them, or counted for ``drop_last``."""
        if self.resampled:
            raise TypeError(f"a resampled {type(self).__name__} is endless: it has no len()")
        entries = list(self._entries)
        if (self._manifest is None or self._manifest.samples is None) and not self.drop_last:
            raise TypeError(f"{type(self).__name__} does not know its sample count: build "
                            "it from a manifest written with count_samples=True")
        listing = self._listed(entries, counted=True)
        assert listing.samples is not None
        rank, world = (rank_and_world_size(self.rank, self.world_size) if self.shard_by_rank
                       else (0, 1))
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info is not None and self.shard_by_worker else 1
        count = len(listing.infos)
        deal = Deal(Position(), count, world, workers, world * workers if self.drop_last else 0)
        totals = _slot_totals(deal, listing.samples, self._order(count, self._epoch))
        if self.drop_last:
            return min(totals) * workers if totals else 0
        return sum(totals[rank * workers:(rank + 1) * workers])

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
            for key_ in tuple(self._keys):
                sample[1].setdefault(key_, b"")
            yield sample
        if error is not None:
            raise error

    def __iter__(self) -> Iterator[Sample]:
        entries, shard = self._plan()
        return self._run(self._begin(shard), entries)

    def _run(self, state: Pass, entries: list[Entry]) -> Iterator[Sample]:
        self._keys.update(state.keys)
        state.keys = self._keys  # the live set: saved with the state
        listing = self._listed(entries, counted=self.drop_last and not self.resampled)
        infos = listing.infos
        state.check_listing([len(infos)], [fingerprint(info.url for info in infos)], self._what())
        if not infos:
            return
        aclient = self.client.aclient
        unit = self._order(len(infos), state.epoch)
        deal = self._deal(state, 0, len(infos))
        limit = None
        if self.drop_last and not self.resampled:
            assert listing.samples is not None
            limit = min(_slot_totals(deal, listing.samples, unit))
        pipe = self._pipe(aclient, _jobs(state, 0, infos, unit, deal))
        progress = Progress(type(self).__name__, enabled=self.show_progress, unit="sample")
        try:
            samples = self._with_keys(self._samples(state, pipe))
            while limit is None or state.yielded < limit:
                try:
                    sample = next(samples)
                except StopIteration:
                    break
                state.ready.popleft()
                state.yielded += 1
                progress.update(_sample_bytes(sample))
                yield sample
        finally:
            pipe.close()
            progress.close()

    def _samples(self, state: Pass, pipe: Pipe[Any]) -> Iterator[Sample]:
        """The slot's samples in order (through its shuffle buffer), keeping ``state``."""
        restore = _Restore(state)
        size = self.shuffle_buffer
        buffer: ShuffleBuffer[tuple[Ident, Any]] | None = None
        if size > 1:
            s = state.shard
            buffer = ShuffleBuffer(size, key(self.seed, state.epoch, "samples", s.rank,
                                             s.world_size, s.worker, s.num_workers))
        for tag, j, i, item in pipe:
            if tag == _RESTORE:
                restore.add(0, j, i, item)
                continue
            if restore.pending:
                yield from restore.rebuild(buffer, self._what())
                state.buffer = buffer
            if tag == _END:
                state.cursor[0] = [j + 1, 0]
                continue
            state.cursor[0] = [j, i + 1]
            ident: Ident = ((j, i),)
            if buffer is None:
                state.ready.append(ident)
                yield item
                continue
            state.buffer = buffer
            out, value = buffer.push((ident, item))
            if out:
                assert value is not None
                state.ready.append(value[0])
                yield value[1]
        if restore.pending:
            yield from restore.rebuild(buffer, self._what())
        state.buffer = buffer
        while buffer is not None and buffer.items:
            held, item = buffer.pop()
            state.ready.append(held)
            yield item


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
    bytes of every member of every shard, in the epoch's order of shards then tar order;
    the streams are zipped, so iteration stops with the shortest. The shards of every
    source follow one order and one deal (``shuffle``, ``seed``, ``resampled``, sharding
    over ranks and DataLoader workers by index, as ``ShardReader``), so sources that are
    sharded, shuffled or resampled must have the same number of shards, their members
    aligned (checked: a different count raises ValueError). ``shuffle_buffer`` mixes the
    tuples; ``drop_last`` gives every rank and worker as many shards and tuples.
    ``state_dict()`` / ``load_state_dict()`` follow torchdata's ``Stateful`` protocol.
    """

    _kind = "MultiShardStream"

    def __init__(self, sources: Sequence[str | Sequence[str]], *, etl_name: str | None = None,
                 config: ClientConfig | None = None, shard_by_rank: bool = True,
                 shard_by_worker: bool = True, shuffle: bool = False, seed: int = 0,
                 shuffle_buffer: int = 0, resampled: bool = False, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None, prefetch: int = 4,
                 show_progress: bool = False) -> None:
        if isinstance(sources, str) or not sources:
            raise ValueError("MultiShardStream needs a list of sources")
        cfg = _config(config)
        self._sets = [
            _MemberSet(source, None, etl_name, cfg, prefetch=prefetch) for source in sources
        ]
        self._sources = len(self._sets)
        self.config = cfg
        self.shard_by_rank, self.shard_by_worker = shard_by_rank, shard_by_worker
        self.shuffle, self.seed = shuffle, seed
        self.shuffle_buffer, self.resampled, self.drop_last = shuffle_buffer, resampled, drop_last
        self.rank, self.world_size = rank, world_size
        self.show_progress = show_progress
        self._check_options()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._sets)} sources>"

    def __iter__(self) -> Iterator[tuple[bytes, ...]]:
        return self._run(self._begin(self._slot()))

    def _run(self, state: Pass) -> Iterator[tuple[bytes, ...]]:
        shard = state.shard
        counted = self.drop_last and not self.resampled
        listings = [s._listed(counted=counted) for s in self._sets]
        counts = [len(listing.infos) for listing in listings]
        aligned = self.shuffle or self.resampled or self.drop_last or not shard.everything
        if aligned and len(set(counts)) > 1:
            raise ValueError(
                "sharded, shuffled or resampled MultiShardStream sources must have the same "
                f"number of shards, got {counts}; pass shard_by_rank=False and "
                "shard_by_worker=False to read every source whole, in listing order")
        state.check_listing(counts, [fingerprint(i.url for i in listing.infos)
                                     for listing in listings], "the listings of the sources")
        if not all(counts):
            return
        aclient = client_for(self.config).aclient
        pipes: list[Pipe[Any]] = []
        limit = None
        progress = Progress(type(self).__name__, enabled=self.show_progress, unit="tuple")
        try:
            for src, (member_set, listing) in enumerate(zip(self._sets, listings, strict=True)):
                unit = order_of(len(listing.infos), self.seed, state.epoch,
                                shuffle=self.shuffle, resampled=self.resampled)
                group = (shard.world_size * shard.num_workers if counted else 0)
                deal = Deal(state.base[src], None if self.resampled else len(listing.infos),
                            shard.world_size, shard.num_workers, group)
                if src == 0:
                    state.kept = deal.kept
                if counted:
                    assert listing.members is not None
                    least = min(_slot_totals(deal, listing.members, unit))
                    limit = least if limit is None else min(limit, least)
                pipes.append(member_set._pipe(aclient, _jobs(state, src, listing.infos, unit,
                                                             deal)))
            tuples = self._tuples(state, pipes)
            while limit is None or state.yielded < limit:
                try:
                    items = next(tuples)
                except StopIteration:
                    break
                state.ready.popleft()
                state.yielded += 1
                progress.update(sum(len(item) for item in items))
                yield items
        finally:
            for pipe in pipes:
                pipe.close()
            progress.close()

    def _tuples(self, state: Pass, pipes: list[Pipe[Any]]) -> Iterator[tuple[bytes, ...]]:
        """The slot's tuples in order (through its shuffle buffer), keeping ``state``."""
        restore = _Restore(state, whole=True)
        sources = [_Source(src, pipe, state, restore) for src, pipe in enumerate(pipes)]
        buffer: ShuffleBuffer[tuple[Ident, Any]] | None = None
        if self.shuffle_buffer > 1:
            s = state.shard
            buffer = ShuffleBuffer(self.shuffle_buffer, key(self.seed, state.epoch, "tuples",
                                                            s.rank, s.world_size, s.worker,
                                                            s.num_workers))
        if restore.pending:
            for source in sources:  # what a restore reads again comes first in every source
                source.prime()
            yield from restore.rebuild(buffer, "the sources")
        state.buffer = buffer
        while True:
            current: list[tuple[tuple[int, int], Any]] = []
            for source in sources:  # as zip: the first source to end ends it
                got = source.take()
                if got is None:
                    break
                current.append(got)
            if len(current) < len(sources):
                break
            ident = tuple(pos for pos, _ in current)
            items = tuple(item for _, item in current)
            if buffer is None:
                state.ready.append(ident)
                yield items
                continue
            out, value = buffer.push((ident, items))
            if out:
                assert value is not None
                state.ready.append(value[0])
                yield value[1]
        while buffer is not None and buffer.items:
            held, items = buffer.pop()
            state.ready.append(held)
            yield items


class _Source:
    """One source's tagged items: restores put aside, the cursor moved as members are taken."""

    def __init__(self, src: int, pipe: Pipe[Any], state: Pass, restore: _Restore) -> None:
        self.src, self.state, self.restore = src, state, restore
        self._items = iter(pipe)
        self._peeked: tuple[int, int, Any] | None = None

    def _next(self) -> tuple[int, int, Any] | None:
        """The next member taken (j, i, bytes); restores and shard ends handled on the way."""
        for tag, j, i, item in self._items:
            if tag == _RESTORE:
                self.restore.add(self.src, j, i, item)
            elif tag == _END:
                self.state.cursor[self.src] = [j + 1, 0]
            else:
                return j, i, item
        return None

    def prime(self) -> None:
        """Read past the restores (up to the first member taken, kept for ``take``)."""
        if self._peeked is None:
            self._peeked = self._next()

    def take(self) -> tuple[tuple[int, int], Any] | None:
        got, self._peeked = (self._peeked, None) if self._peeked is not None else (self._next(), None)
        if got is None:
            return None
        j, i, item = got
        self.state.cursor[self.src] = [j, i + 1]
        return (j, i), item
