"""Map-style and iterable datasets over object URLs, driven by the async core.

A dataset holds only picklable values (URLs, a ``ClientConfig``, a ``ReaderConstructor``,
the transform); each process makes its own ``aisio.Client`` on first use, so DataLoader
workers, forked or spawned, open their own connections with the same settings.

``IterableDataset`` runs one producer on the process's loop thread: it walks this slot's
share of the epoch's order, keeps ``prefetch`` objects in flight and hands finished ones,
in order, to the sync iterator in batches (``Pipe``). ``MapDataset.__getitems__`` fetches
a whole batch with one concurrent gather. Items are ``(url, bytes)``, or
``transform(reader)`` when a transform is given, the reader an ``ObjectReader`` (a
seekable file object).

The listing is made once per dataset and kept (``_listing.Listings``: in memory, and
shared by the DataLoader workers of a process through a local file), or read from a
manifest. The epoch's order is fixed by ``(seed, epoch)`` (``_order.order_of``): the
listing, permuted with ``shuffle`` (the S3 connector's arithmetic otherwise), mixed by a
seeded ``shuffle_buffer``, or resampled. Entry ``q`` of it goes to rank
``q % world_size`` and then, among that rank's entries, to worker
``(q // world_size) % num_workers``, so each object is read exactly once per epoch across
all of them. A pass's state (``_resume.Pass``) is how far its slot got in its share.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import math
import os
import sys
import threading
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar, cast

import anyio
import torch.utils.data

from .. import _bridge
from .._bridge import Client, Reader, run
from .._client import AsyncClient
from .._config import ClientConfig
from .._engine import Stream
from .._readers import AsyncReader, ReaderConstructor
from .._types import ObjectInfo
from .._url import parse_url
from ..errors import InvalidURLError, ObjectChangedError, first_error
from ._listing import Listings
from ._manifest import Manifest, load_manifest
from ._order import Deal, Position, order_of
from ._progress import Progress
from ._resume import Pass, Settings, check_state, fingerprint

__all__ = [
    "Entry",
    "IterableDataset",
    "MapDataset",
    "ObjectReader",
    "Pipe",
    "Shard",
    "client_for",
    "list_entries",
    "open_stream",
    "read_object",
    "resolve_shard",
]

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
Transform = Callable[["ObjectReader"], Any]
Entry = tuple[str, bool]
"""What a dataset reads: ``(url, True)`` lists a prefix, ``(url, False)`` names one object."""

_BATCH = 64  # items handed from the loop thread to the sync iterator per wake-up


# --- per-process clients ---------------------------------------------------------------------

_clients: dict[ClientConfig, Client] = {}


def client_for(config: ClientConfig) -> Client:
    """This process's client for ``config``, shared by every dataset that uses it.

    A ``Client`` re-opens its connections in a forked child, so the dict needs no reset.
    """
    client = _clients.get(config)
    if client is None or client._closed:  # closed by a user: make another
        client = _clients[config] = Client(config)
    return client


@atexit.register
def _close_clients() -> None:
    """Close this process's connections at exit (sessions left open make SDKs complain).

    Done from a daemon thread and given at most 5 s, so a wedged loop cannot hang the exit.
    """
    mine = [c for c in _clients.values() if c._aclient is not None and c._pid == os.getpid()]
    if not mine:
        return

    def close() -> None:
        for client in mine:
            with contextlib.suppress(Exception):
                _bridge.submit(client.aclient.aclose).result(timeout=5)

    thread = threading.Thread(target=close, name="aisio-torch-exit", daemon=True)
    thread.start()
    thread.join(5)


def _config(config: ClientConfig | None) -> ClientConfig:
    return config if config is not None else ClientConfig.from_env()


# --- the reader a transform gets ---------------------------------------------------------------


class ObjectReader(io.BufferedIOBase):
    """A blocking, seekable file object over one object: what a ``transform`` receives.

    ``url``, ``bucket`` and ``key`` name the object (for local files ``bucket`` is ``""``
    and ``key`` the path). Over prefetched bytes every read is served from memory; with a
    ``reader_constructor`` it wraps a lazy ``aisio.Reader``. A seek past the end stops at
    the end, as the S3 connector's readers do.
    """

    def __init__(self, url: str, data: bytes | io.BufferedIOBase) -> None:
        super().__init__()
        loc = parse_url(url)
        self.url = self.name = url
        self.bucket, self.key = loc.bucket, loc.key
        if isinstance(data, io.BufferedIOBase):
            self._raw: io.BufferedIOBase = data
            self._size = int(getattr(data, "size", -1))
            self._data: bytes | None = None
        else:
            self._raw = io.BytesIO(data)
            self._size = len(data)
            self._data = data

    def __repr__(self) -> str:
        return f"<ObjectReader {self.url} size={self._size}>"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._data is None:
            raise TypeError(f"a lazy reader of {self.url} cannot be pickled; "
                            "return the data you need from the transform instead")
        return (_rebuild_reader, (self.url, self._data, self._raw.tell()))

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def read(self, size: int | None = -1, /) -> bytes:
        return self._raw.read(size)

    def read1(self, size: int = -1, /) -> bytes:
        return self._raw.read1(size)

    def readinto(self, buffer: Any, /) -> int:
        return self._raw.readinto(buffer)

    def readinto1(self, buffer: Any, /) -> int:
        return self._raw.readinto1(buffer)

    def readall(self) -> bytes:
        return self._raw.read()

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        pos = self._raw.seek(offset, whence)
        if 0 <= self._size < pos:
            pos = self._raw.seek(self._size)
        return pos

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def _rebuild_reader(url: str, data: bytes, pos: int) -> ObjectReader:
    reader = ObjectReader(url, data)
    reader.seek(pos)
    return reader


# --- fetching ------------------------------------------------------------------------------------


def open_stream(aclient: AsyncClient, url: str, etl_name: str | None = None, *,
                etag: str | None = None) -> Stream:
    """A resumable GET of the whole object (``etl_name``: its ETL output; ais:// only).

    ``etag``: pinned to that version (``ObjectChangedError`` if the object has another);
    an ETL's output is not pinned.
    """
    if etl_name and parse_url(url).scheme != "ais":
        loc = parse_url(url)
        raise InvalidURLError(
            f"etl_name needs ais:// URLs (an ETL runs on an AIStore cluster): {loc.url}",
            url=loc.url)
    return aclient.stream(url, etag=etag, etl_name=etl_name or None)


async def read_object(aclient: AsyncClient, url: str, etl_name: str | None = None, *,
                      etag: str | None = None) -> bytes:
    """The whole object: parts in parallel, or one resumable GET of the ETL's output.

    ``etag``: the read is pinned to that version (``ObjectChangedError`` otherwise).
    """
    if not etl_name:
        return await aclient.get(url, etag=etag)
    async with open_stream(aclient, url, etl_name) as stream:
        await stream.open()  # the first response tells the size of the ETL's output
        buf = bytearray(max(stream.object_size, 0))
        got = await stream.fill(memoryview(buf))
        return bytes(memoryview(buf)[:got])  # not del buf[got:]: a view may linger


# --- listing and sharding ------------------------------------------------------------------------


async def list_entries(aclient: AsyncClient, entries: Sequence[Entry]) -> AsyncGenerator[ObjectInfo]:
    """ObjectInfo for each entry in order: listed prefixes page by page, named objects as is.

    A named object's size is -1 (unknown) until something reads it.
    """
    for url, listed in entries:
        if not listed:
            yield ObjectInfo(parse_url(url).url, -1)
            continue
        async with contextlib.aclosing(aclient.list(url)) as infos:
            async for info in infos:
                yield info


@dataclass(frozen=True)
class Shard:
    """This process's share of a listing: rank ``i % world_size``, then worker ``j % num_workers``."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def keeps(self, index: int) -> bool:
        if index % self.world_size != self.rank:
            return False
        return (index // self.world_size) % self.num_workers == self.worker

    @property
    def everything(self) -> bool:
        return self.world_size == 1 and self.num_workers == 1


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values first, then ``torch.distributed`` if it is initialized, else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
        if rank is None:
            rank = dist.get_rank() if initialized else 0
        if world_size is None:
            world_size = dist.get_world_size() if initialized else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return rank, world_size


def resolve_shard(by_rank: bool, by_worker: bool, rank: int | None = None,
                  world_size: int | None = None) -> Shard:
    """The Shard of the calling process (call it where the items are produced)."""
    r, w = rank_and_world_size(rank, world_size) if by_rank else (0, 1)
    worker, workers = 0, 1
    info = torch.utils.data.get_worker_info() if by_worker else None
    if info is not None:
        worker, workers = info.id, info.num_workers
    return Shard(r, w, worker, workers)


async def collect(infos: AsyncGenerator[ObjectInfo]) -> list[ObjectInfo]:
    """Every item of a listing."""
    async with contextlib.aclosing(infos):
        return [info async for info in infos]


def changed_since(info: ObjectInfo, manifest: str) -> ObjectChangedError:
    """The error for an object whose ETag is not the one its manifest recorded."""
    return ObjectChangedError(
        f"{info.url} changed since the manifest {manifest} was written (the manifest has "
        f"ETag {info.etag}); write the manifest again, or read without it", url=info.url)


class _Epochs:
    """Epochs, and the resumable state of passes (torchdata's ``Stateful`` protocol).

    ``set_epoch`` plus a count of passes, so each pass of a persistent worker differs.
    Pickling (how spawned DataLoader workers get the dataset) also pins the rank and world
    size of an initialized ``torch.distributed``, which a spawned worker does not have.

    A pass is the iteration of the dataset in one process; ``state_dict()`` is how far the
    current one got (or, before one starts, where the next one starts), and
    ``load_state_dict(state)`` makes the next pass resume there.
    """

    _kind = "IterableDataset"
    _epoch = 0
    _passes = 0
    shard_by_rank = False
    shard_by_worker = False
    rank: int | None = None
    world_size: int | None = None
    seed = 0
    shuffle = False
    shuffle_buffer = 0
    resampled = False
    drop_last = False
    _pending: dict[str, Any] | None = None
    _pass: Pass | None = None
    _sources = 1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_pass", None)  # a pass belongs to the process that runs it
        if self.shard_by_rank and (self.rank is None or self.world_size is None):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                state["rank"], state["world_size"] = rank_and_world_size(self.rank,
                                                                         self.world_size)
        return state

    def _check_options(self) -> None:
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be 0 or more, got {self.shuffle_buffer}")

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (shuffle order is a function of seed and epoch).

        Without calls the epochs count up with each pass over this object; in DataLoader
        workers that is each pass of a persistent worker. Call it before each epoch when
        workers are not persistent (they start from the main process's copy each time).
        A state restored with ``load_state_dict`` resumes its own epoch; ``set_epoch`` to
        another epoch after it drops it.
        """
        if self._pending is not None and int(self._pending["epoch"]) != int(epoch):
            self._pending = None
        self._epoch, self._passes = int(epoch), 0

    def _next_epoch(self) -> int:
        epoch = self._epoch + self._passes
        self._passes += 1
        return epoch

    def _settings(self) -> Settings:
        return Settings(int(self.seed), bool(self.shuffle), int(self.shuffle_buffer),
                        bool(self.resampled), bool(self.drop_last))

    def _slot(self) -> Shard:
        """The slot (rank, worker) a pass started here now would read."""
        return resolve_shard(self.shard_by_rank, self.shard_by_worker, self.rank,
                             self.world_size)

    def _begin(self, shard: Shard) -> Pass:
        """Start a pass: the restored state's, or the next epoch's from its start."""
        pending, self._pending = self._pending, None
        if pending is None:
            epoch = self._next_epoch()
            run_ = Pass(self._kind, self._settings(), epoch, shard,
                        [Position() for _ in range(self._sources)], self._sources)
        else:
            run_ = Pass.restore(pending, self._kind, self._settings(), shard, self._sources)
            self._epoch, self._passes = run_.epoch, 1
        self._pass = run_
        return run_

    def state_dict(self) -> dict[str, Any]:
        """How far the current pass got; before a pass, where the next one will start.

        Under ``torchdata.stateful_dataloader.StatefulDataLoader`` each worker's copy
        reports its own pass, and the loader's ``state_dict()`` holds them all.
        """
        if self._pass is not None:
            return self._pass.state()
        if self._pending is not None:
            return dict(self._pending)
        return Pass(self._kind, self._settings(), self._epoch + self._passes, self._slot(),
                    [Position() for _ in range(self._sources)], self._sources).state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass resume where ``state`` was saved.

        ``state`` is a ``state_dict()`` of this slot (what ``StatefulDataLoader`` hands
        each worker back), or the merged state of a whole run from
        ``aisio.torch.elastic_state``, which resumes under any layout.
        """
        check_state(state, self._kind)
        self._settings().check(state, self._kind)
        self._pending = dict(state)
        self._pass = None
        self._epoch, self._passes = int(state["epoch"]), 0


# --- moving items from the loop thread to the sync iterator -------------------------------------


def call_soon_on_loop(fn: Callable[[], object], pid: int) -> None:
    """Call ``fn()`` on this process's loop thread without waiting (cleanup paths)."""
    _bridge.call_soon(fn, pid)


class Pipe(Generic[T]):
    """An async producer running on the loop thread, read by a sync iterator in batches.

    ``produce(emit)`` awaits ``emit(item)`` for each item; at most ``capacity`` items wait
    between the two sides. Iterating yields the items, then raises the producer's error if
    it failed; ``close()`` (also when the iterator is closed early) cancels the producer.
    """

    def __init__(self, produce: Callable[[Callable[[T], Awaitable[None]]], Awaitable[None]],
                 capacity: int) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[T](max(capacity, 1))
        self._pid = os.getpid()
        self._future = _bridge.submit(self._pump, produce)

    async def _pump(self, produce: Callable[[Callable[[T], Awaitable[None]]], Awaitable[None]]
                    ) -> None:
        try:
            async with self._send:
                await produce(self._send.send)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _take(self) -> list[T]:
        try:
            items = [await self._recv.receive()]
        except anyio.EndOfStream:
            self._recv.close()
            return []
        while len(items) < _BATCH:
            try:
                items.append(self._recv.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return items

    def __iter__(self) -> Iterator[T]:
        try:
            while batch := run(self._take):
                yield from batch
            self._future.result()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer and drop what it made; safe to call twice and from GC."""
        if self._pid != os.getpid() or sys.is_finalizing():
            return
        self._future.cancel()
        call_soon_on_loop(self._recv.close, self._pid)


async def gather(calls: Sequence[Callable[[], Awaitable[T]]], limit: int = 64) -> list[T]:
    """Await the calls, ``limit`` at once; results in order, the first failure raised as is."""
    out: list[Any] = [None] * len(calls)
    limiter = anyio.CapacityLimiter(limit)

    async def one(k: int) -> None:
        async with limiter:
            out[k] = await calls[k]()

    try:
        async with anyio.create_task_group() as tg:
            for k in range(len(calls)):
                tg.start_soon(one, k)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return out


class _Slot(Generic[B]):
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: B | None = None
        self.error: Exception | None = None

    async def fill(self, fn: Callable[[A], Awaitable[B]], arg: A) -> None:
        try:
            self.value = await fn(arg)
        except Exception as exc:
            self.error = exc
        self.done.set()


async def ordered_map(items: AsyncGenerator[A], fn: Callable[[A], Awaitable[B]], depth: int,
                      emit: Callable[[B], Awaitable[None]]) -> None:
    """``emit(await fn(item))`` for each item, in order, with up to ``depth`` calls at once."""
    limit = anyio.Semaphore(max(depth, 1))
    send, recv = anyio.create_memory_object_stream[_Slot[B]](math.inf)

    async def feed() -> None:
        async with send, contextlib.aclosing(items):
            async for item in items:
                await limit.acquire()
                slot: _Slot[B] = _Slot()
                tg.start_soon(slot.fill, fn, item)
                send.send_nowait(slot)

    async with anyio.create_task_group() as tg, recv:
        tg.start_soon(feed)
        async for slot in recv:
            await slot.done.wait()
            limit.release()
            if slot.error is not None:
                raise slot.error
            await emit(cast(B, slot.value))


# --- the datasets ----------------------------------------------------------------------------------


def _as_urls(urls: str | os.PathLike[str] | Iterable[Any]) -> list[Any]:
    if isinstance(urls, (str, os.PathLike)) or hasattr(urls, "get_path"):
        return [urls]
    return list(urls)


def _url_text(url: Any) -> str:
    if isinstance(url, str):
        return url
    if isinstance(url, os.PathLike):
        return str(os.fspath(url))
    return parse_url(url).url


Payload = bytes | AsyncReader


class _ObjectSet:
    """What the datasets share: entries to read, settings, and how an object becomes an item."""

    def __init__(self, prefixes: str | Iterable[str] = (), urls: str | Iterable[str] = (), *,
                 transform: Transform | None = None, config: ClientConfig | None = None,
                 reader_constructor: ReaderConstructor | None = None,
                 etl_name: str | None = None) -> None:
        self.config = _config(config)
        self.transform = transform
        self.reader_constructor = reader_constructor
        self.etl_name = etl_name
        self._entries: list[Entry] = [(_url_text(u), True) for u in _as_urls(prefixes)]
        self._entries += [(_url_text(u), False) for u in _as_urls(urls)]
        self._listings = Listings(self)
        self._manifest: Manifest | None = None

    @property
    def client(self) -> Client:
        """This process's client for the dataset's config."""
        return client_for(self.config)

    @property
    def manifest_url(self) -> str | None:
        """The manifest the dataset was built from (its reads are pinned to its ETags)."""
        return self._manifest.url if self._manifest is not None else None

    def _use_manifest(self, url: str) -> None:
        self._manifest = load_manifest(url, self.config)
        self._entries = []

    def _listed(self, aclient: AsyncClient, entries: list[Entry],
                lister: Callable[[], AsyncGenerator[ObjectInfo]] | None = None) -> Manifest:
        """The listing of ``entries``: the manifest's, or made once and shared (``Listings``)."""
        if self._manifest is not None:
            return self._manifest

        def make() -> Manifest:
            infos = lister() if lister is not None else list_entries(aclient, entries)
            return Manifest("", run(collect, infos))

        return self._listings.get(repr(entries), make)

    async def _load(self, aclient: AsyncClient, info: ObjectInfo) -> Payload:
        """Runs on the loop thread: the object's bytes, or an open lazy reader."""
        manifest = self.manifest_url if not self.etl_name else None
        try:
            if self.reader_constructor is not None:
                known = info if info.size >= 0 else None
                if manifest is None and known is not None:
                    known = ObjectInfo(info.url, info.size)  # only a manifest pins versions
                return await aclient.open(info.url, self.reader_constructor, info=known)
            return await read_object(aclient, info.url, self.etl_name,
                                     etag=info.etag if manifest else None)
        except ObjectChangedError as exc:
            if manifest is None or info.etag is None:
                raise
            raise changed_since(info, manifest) from exc

    def _item(self, info: ObjectInfo, payload: Payload) -> Any:
        """Runs in the consumer: the dataset item made from one loaded object."""
        if isinstance(payload, AsyncReader):
            reader = ObjectReader(info.url, Reader(payload))
            return reader if self.transform is None else self.transform(reader)
        if self.transform is None:
            return info.url, payload
        return self.transform(ObjectReader(info.url, payload))


class MapDataset(_ObjectSet, torch.utils.data.Dataset[Any]):
    """Objects by index; ``__getitems__`` fetches a DataLoader batch concurrently.

    The listing is made on first use (``len``, an index, ``object_infos``) and kept, so a
    DataLoader's workers receive it with the dataset when the main process listed first
    (when they list, the first lists for all; see ``from_manifest`` to list never).
    Items are ``(url, bytes)``, or ``transform(reader)``; with a ``reader_constructor``
    the transform gets a lazy reader of that kind instead of prefetched bytes.
    """

    def __init__(self, prefixes: str | Iterable[str] = (), urls: str | Iterable[str] = (), *,
                 transform: Transform | None = None, config: ClientConfig | None = None,
                 reader_constructor: ReaderConstructor | None = None,
                 etl_name: str | None = None) -> None:
        super().__init__(prefixes, urls, transform=transform, config=config,
                         reader_constructor=reader_constructor, etl_name=etl_name)
        self._infos: list[ObjectInfo] | None = None

    @classmethod
    def from_prefix(cls, url: str | Iterable[str], transform: Transform | None = None,
                    config: ClientConfig | None = None, *,
                    reader_constructor: ReaderConstructor | None = None) -> MapDataset:
        """Every object under ``url`` (one prefix or several), listed on first use."""
        return cls(url, transform=transform, config=config, reader_constructor=reader_constructor)

    @classmethod
    def from_urls(cls, urls: str | Iterable[str], transform: Transform | None = None,
                  config: ClientConfig | None = None, *,
                  reader_constructor: ReaderConstructor | None = None) -> MapDataset:
        """The objects named by ``urls``, in that order (no listing)."""
        return cls((), urls, transform=transform, config=config,
                   reader_constructor=reader_constructor)

    @classmethod
    def from_manifest(cls, url: str, transform: Transform | None = None,
                      config: ClientConfig | None = None, *,
                      reader_constructor: ReaderConstructor | None = None) -> MapDataset:
        """The objects of a manifest (``aisio manifest``), read now with one GET; never lists.

        Reads are pinned to the manifest's ETags: an object changed since it was written
        raises ``ObjectChangedError`` naming the object and the manifest.
        """
        ds = cls((), (), transform=transform, config=config,
                 reader_constructor=reader_constructor)
        ds._use_manifest(url)
        assert ds._manifest is not None
        ds._infos = list(ds._manifest.infos)
        return ds

    def __repr__(self) -> str:
        count = "unlisted" if self._infos is None else f"{len(self._infos)} objects"
        return f"<{type(self).__name__} {count}>"

    def object_infos(self) -> list[ObjectInfo]:
        """The listing (made once, then kept); size -1 for objects named by URL."""
        if self._infos is None:
            self._infos = list(self._listed(self.client.aclient, list(self._entries)).infos)
        return self._infos

    def sizes(self) -> list[int]:
        """Every object's size: from the listing, with one HEAD per object named by URL."""
        infos = self.object_infos()
        missing = [i for i, info in enumerate(infos) if info.size < 0]
        if missing:
            aclient = self.client.aclient
            found = run(gather, [partial(aclient.head, infos[i].url) for i in missing])
            for i, info in zip(missing, found, strict=True):
                infos[i] = info
        return [info.size for info in infos]

    def __len__(self) -> int:
        return len(self.object_infos())

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The items at ``indices``, their objects fetched concurrently in one round trip."""
        every = self.object_infos()
        infos = [every[i] for i in indices]
        aclient = self.client.aclient
        payloads = run(gather, [partial(self._load, aclient, info) for info in infos])
        return [self._item(info, p) for info, p in zip(infos, payloads, strict=True)]


async def _aiter(items: Iterable[T]) -> AsyncGenerator[T]:
    for item in items:
        yield item


class IterableDataset(_ObjectSet, _Epochs, torch.utils.data.IterableDataset[Any]):
    """Objects streamed in an epoch's order with ``prefetch`` in flight, sharded by rank and worker.

    ``prefixes`` are listed (raw string prefixes, recursively) once, when first needed, and
    the listing is kept (shared by the DataLoader workers); ``urls`` name objects; see
    ``from_manifest`` to list never. Items are ``(url, bytes)``, or ``transform(reader)``.

    The epoch's order is fixed by ``(seed, epoch)``: the listing order, permuted with
    ``shuffle``, then mixed by a seeded buffer of ``shuffle_buffer`` positions; with
    ``resampled`` an endless run of objects drawn with replacement. Entry ``q`` of the order
    goes to rank ``q % world_size``, then worker ``(q // world_size) % num_workers``
    (``shard_by_rank`` / ``shard_by_worker`` turn either split off), so each object is read
    once per epoch across all of them. ``drop_last``: the order is cut to a multiple of the
    world size, so every rank gets the same number of objects. ``rank`` and ``world_size``
    default to ``torch.distributed``'s, read when a pass starts.

    ``state_dict()`` / ``load_state_dict()`` follow torchdata's ``Stateful`` protocol.
    ``reader_constructor``: the transform gets a lazy reader of that kind instead of
    prefetched bytes. ``etl_name``: read each object through that AIS ETL (ais:// only).
    ``show_progress``: a tqdm bar of objects and bytes on stderr.
    """

    def __init__(self, prefixes: str | Iterable[str] = (), urls: str | Iterable[str] = (), *,
                 transform: Transform | None = None, config: ClientConfig | None = None,
                 reader_constructor: ReaderConstructor | None = None,
                 etl_name: str | None = None, shard_by_rank: bool = True,
                 shard_by_worker: bool = True, shuffle: bool = False, seed: int = 0,
                 shuffle_buffer: int = 0, resampled: bool = False, drop_last: bool = False,
                 prefetch: int = 16, rank: int | None = None, world_size: int | None = None,
                 show_progress: bool = False) -> None:
        super().__init__(prefixes, urls, transform=transform, config=config,
                         reader_constructor=reader_constructor, etl_name=etl_name)
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.shard_by_rank, self.shard_by_worker = shard_by_rank, shard_by_worker
        self.shuffle, self.seed, self.prefetch = shuffle, seed, prefetch
        self.shuffle_buffer, self.resampled, self.drop_last = shuffle_buffer, resampled, drop_last
        self.rank, self.world_size = rank, world_size
        self.show_progress = show_progress
        self._check_options()

    @classmethod
    def from_prefix(cls, url: str | Iterable[str], transform: Transform | None = None,
                    config: ClientConfig | None = None, shard_by_rank: bool = True,
                    shard_by_worker: bool = True, shuffle: bool = False, seed: int = 0,
                    **options: Any) -> IterableDataset:
        """Every object under ``url`` (one prefix or several), listed once when first needed.

        ``options``: ``shuffle_buffer``, ``resampled``, ``drop_last``, ``reader_constructor``,
        ``prefetch`` (objects in flight, 16), ``rank``, ``world_size``, ``show_progress``,
        ``etl_name`` (see the class).
        """
        return cls(url, transform=transform, config=config, shard_by_rank=shard_by_rank,
                   shard_by_worker=shard_by_worker, shuffle=shuffle, seed=seed, **options)

    @classmethod
    def from_urls(cls, urls: str | Iterable[str], transform: Transform | None = None,
                  config: ClientConfig | None = None, shard_by_rank: bool = True,
                  shard_by_worker: bool = True, shuffle: bool = False, seed: int = 0,
                  **options: Any) -> IterableDataset:
        """The objects named by ``urls``, in that order."""
        return cls((), urls, transform=transform, config=config, shard_by_rank=shard_by_rank,
                   shard_by_worker=shard_by_worker, shuffle=shuffle, seed=seed, **options)

    @classmethod
    def from_manifest(cls, url: str, transform: Transform | None = None,
                      config: ClientConfig | None = None, shard_by_rank: bool = True,
                      shard_by_worker: bool = True, shuffle: bool = False, seed: int = 0,
                      **options: Any) -> IterableDataset:
        """The objects of a manifest (``aisio manifest``), read now with one GET; never lists.

        ``len()`` is known at once. Reads are pinned to the manifest's ETags: an object
        changed since it was written raises ``ObjectChangedError`` naming it and the manifest.
        """
        ds = cls((), (), transform=transform, config=config, shard_by_rank=shard_by_rank,
                 shard_by_worker=shard_by_worker, shuffle=shuffle, seed=seed, **options)
        ds._use_manifest(url)
        return ds

    def __repr__(self) -> str:
        if self._manifest is not None:
            return f"<{type(self).__name__} {len(self._manifest)} objects from {self._manifest.url}>"
        return f"<{type(self).__name__} {len(self._entries)} sources>"

    def _plan(self) -> tuple[list[Entry], Shard]:
        """The entries this process lists and which of their items it keeps."""
        shard = resolve_shard(self.shard_by_rank, self.shard_by_worker, self.rank,
                              self.world_size)
        return list(self._entries), shard

    def _slot(self) -> Shard:
        return self._plan()[1]

    def _infos(self, aclient: AsyncClient, entries: list[Entry]) -> AsyncGenerator[ObjectInfo]:
        return list_entries(aclient, entries)

    def _listing(self, aclient: AsyncClient, entries: list[Entry]) -> Manifest:
        return self._listed(aclient, entries, partial(self._infos, aclient, entries))

    def _progress_title(self) -> str:
        return type(self).__name__

    def __len__(self) -> int:
        """Objects this rank reads in an epoch (all its workers together); known at once
        from a manifest, else from the listing (made now if need be)."""
        if self.resampled:
            raise TypeError(f"a resampled {type(self).__name__} is endless: it has no len()")
        entries, _ = self._plan()
        count = len(self._listing(self.client.aclient, entries).infos)
        rank, world = (rank_and_world_size(self.rank, self.world_size) if self.shard_by_rank
                       else (0, 1))
        deal = Deal(Position(), count, world, 1, world if self.drop_last else 0)
        return deal.count(rank, 0)

    def __iter__(self) -> Iterator[Any]:
        entries, shard = self._plan()
        return self._run(self._begin(shard), entries)

    def _deal(self, state: Pass, count: int) -> Deal:
        """The rest of the epoch dealt out to the layout of ``state`` (drop_last: by rank)."""
        shard = state.shard
        total = None if self.resampled else count
        group = shard.world_size if self.drop_last and not self.resampled else 0
        deal = Deal(state.base[0], total, shard.world_size, shard.num_workers, group)
        state.kept = deal.kept
        return deal

    def _run(self, state: Pass, entries: list[Entry]) -> Iterator[Any]:
        aclient = self.client.aclient
        listing = self._listing(aclient, entries)
        infos = listing.infos
        state.check_listing([len(infos)], [fingerprint(info.url for info in infos)],
                            self._what(entries))
        if not infos:
            return
        unit = order_of(len(infos), self.seed, state.epoch, shuffle=self.shuffle,
                        buffer=self.shuffle_buffer, resampled=self.resampled)
        deal, shard, first = self._deal(state, len(infos)), state.shard, state.cursor[0][0]

        def mine() -> Iterator[ObjectInfo]:
            j = first
            while (entry := deal.entry(shard.rank, shard.worker, j)) is not None:
                yield infos[unit(entry[0])]
                j += 1

        async def produce(emit: Callable[[tuple[ObjectInfo, Payload]], Awaitable[None]]) -> None:
            async def load(info: ObjectInfo) -> tuple[ObjectInfo, Payload]:
                return info, await self._load(aclient, info)

            await ordered_map(_aiter(mine()), load, self.prefetch, emit)

        pipe = Pipe(produce, self.prefetch)
        progress = Progress(self._progress_title(), enabled=self.show_progress)
        try:
            for info, payload in pipe:
                size = len(payload) if isinstance(payload, bytes) else max(payload.size, 0)
                progress.update(size)
                item = self._item(info, payload)
                state.cursor[0][0] += 1
                state.yielded += 1
                yield item
        finally:
            pipe.close()
            progress.close()

    def _what(self, entries: list[Entry]) -> str:
        if self._manifest is not None:
            return f"the manifest {self._manifest.url}"
        return "the listing of " + ", ".join(url for url, _ in entries[:3]) + (
            ", ..." if len(entries) > 3 else "")
