"""Seed-compatible names: the S3 connector's and AIStore's PyTorch classes, run by aisio.

Each class takes its seed's constructor arguments and behaves as ``docs/migration.md``
describes. URLs stand where a seed takes SDK objects; AIStore SDK buckets (anything with
``get_path()``), ``ObjectGroup``s and ``DataShard``s are accepted too and turned into URLs
when the object is built, so nothing of the SDK is kept and every class pickles. Every
class also takes ``config=`` (an ``aisio.ClientConfig``); the seed's own settings
(``region``, ``endpoint``, ``s3client_config``, an SDK object's endpoint) are laid over it.

``S3Checkpoint``, the DCP names (``S3StorageReader``, ``S3StorageWriter``, ``S3FileSystem``,
the prefix strategies) and ``S3LightningCheckpoint`` are loaded on first use from
``aisio.torch._checkpoint``, ``aisio.torch.dcp`` and ``aisio.torch.lightning`` (which
needs Lightning).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import importlib
import importlib.metadata
import io
import os
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
import torch.utils.data

from .._bridge import Reader, run
from .._client import AsyncClient
from .._config import ClientConfig
from .._readers import AsyncReader, MiB, ReaderConstructor
from .._types import ObjectInfo
from .._url import parse_url
from ._datasets import (
    Entry,
    IterableDataset,
    MapDataset,
    ObjectReader,
    Payload,
    Shard,
    _url_text,
    client_for,
    open_stream,
    read_object,
)
from ._sampler import DynamicBatchSampler
from ._shards import MultiShardStream, ShardReader, _Buffered
from ._tar import Member, aiter_members
from ._zerodict import ZeroDict

__all__ = [
    "AISBaseIterDataset",
    "AISBaseMapDataset",
    "AISFileLister",
    "AISFileLoader",
    "AISIterDataset",
    "AISMapDataset",
    "AISMultiShardStream",
    "AISShardReader",
    "AISSourceLister",
    "BinaryPrefixStrategy",  # noqa: F822 (loaded on first use by __getattr__)
    "DCPOptimizedConstructor",
    "DCPOptimizedS3Reader",
    "DCPS3ReaderConstructorProtocol",
    "DataShard",
    "DefaultPrefixStrategy",  # noqa: F822 (loaded on first use by __getattr__)
    "DynamicBatchSampler",
    "HexPrefixStrategy",  # noqa: F822 (loaded on first use by __getattr__)
    "ItemRange",
    "NumericPrefixStrategy",  # noqa: F822 (loaded on first use by __getattr__)
    "RangedS3Reader",
    "RoundRobinPrefixStrategy",  # noqa: F822 (loaded on first use by __getattr__)
    "S3Checkpoint",  # noqa: F822 (loaded on first use by __getattr__)
    "S3ClientConfig",
    "S3FileSystem",  # noqa: F822 (loaded on first use by __getattr__)
    "S3IterableDataset",
    "S3LightningCheckpoint",  # noqa: F822 (loaded on first use by __getattr__)
    "S3MapDataset",
    "S3PrefixStrategyBase",  # noqa: F822 (loaded on first use by __getattr__)
    "S3Reader",
    "S3ReaderConstructor",
    "S3ReaderConstructorProtocol",
    "S3StorageReader",  # noqa: F822 (loaded on first use by __getattr__)
    "S3StorageWriter",  # noqa: F822 (loaded on first use by __getattr__)
    "SequentialS3Reader",
    "__connector_version__",
    "__version__",
]

_LAZY = {
    "S3Checkpoint": "aisio.torch._checkpoint",
    "S3LightningCheckpoint": "aisio.torch.lightning",
    **{name: "aisio.torch.dcp" for name in (
        "BinaryPrefixStrategy", "DefaultPrefixStrategy", "HexPrefixStrategy",
        "NumericPrefixStrategy", "RoundRobinPrefixStrategy", "S3FileSystem",
        "S3PrefixStrategyBase", "S3StorageReader", "S3StorageWriter")},
}


def _version() -> str:
    try:
        return importlib.metadata.version("aisio")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        from .. import __version__

        return __version__


#: aisio's version, read as the connector reads its own ``__version__``
__version__ = _version()
#: the s3torchconnector release whose names and behaviour these classes follow
__connector_version__ = "1.5.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


# === the S3 connector ============================================================================


@dataclass(frozen=True)
class S3ClientConfig:
    """The S3 connector's client settings (``throughput_target_gbps`` is accepted, unused).

    ``requester_pays`` sends ``x-amz-request-payer: requester``; as in the connector it
    needs signed requests, so it cannot be combined with ``unsigned``.
    """

    throughput_target_gbps: float = 10.0
    part_size: int = 8 * MiB
    unsigned: bool = False
    force_path_style: bool = False
    max_attempts: int = 10
    profile: str | None = None
    requester_pays: bool = False

    def __post_init__(self) -> None:
        if self.requester_pays and self.unsigned:
            raise ValueError("requester_pays=True needs signed requests: it cannot be combined "
                             "with unsigned=True (the bucket owner bills the requester by identity)")


# --- readers and their constructors ----------------------------------------------------------------


class S3Reader(abc.ABC, io.BufferedIOBase):
    """The connector's abstract read-only file object over one object: ``bucket``, ``key``, reads, seeks.

    Items of ``S3MapDataset`` and ``S3IterableDataset`` are instances of the subclass that
    matches their reader constructor (``SequentialS3Reader`` for the default one).
    """

    @property
    @abc.abstractmethod
    def bucket(self) -> str: ...

    @property
    @abc.abstractmethod
    def key(self) -> str: ...

    @abc.abstractmethod
    def read(self, size: int | None = None, /) -> bytes: ...

    @abc.abstractmethod
    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int: ...

    @abc.abstractmethod
    def tell(self) -> int: ...

    @abc.abstractmethod
    def readinto(self, buf: Any, /) -> int: ...

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


class _AisioS3Reader(S3Reader):
    """An ``S3Reader`` that reads through aisio; opened on first use when built by hand.

    ``get_object_info`` and ``get_stream`` (the connector's client callbacks) are not
    taken: aisio fetches through its own client, set by ``config=``.
    """

    _constructor: ReaderConstructor = ReaderConstructor.sequential()

    def __init__(self, bucket: str, key: str, get_object_info: Any = None, get_stream: Any = None,
                 *, config: ClientConfig | None = None) -> None:
        super().__init__()
        if get_object_info is not None or get_stream is not None:
            raise TypeError(f"{type(self).__name__} reads through aisio's client: pass config= "
                            "instead of the connector's get_object_info and get_stream")
        if not bucket:
            raise ValueError("bucket must be given")
        self._url = f"s3://{bucket}/{key}"
        self._bucket, self._key = bucket, key
        self._config = config
        self._inner: ObjectReader | None = None

    @classmethod
    def _over(cls, inner: ObjectReader) -> _AisioS3Reader:
        """The reader of this class over an open aisio reader (what the datasets hand out)."""
        reader = cls.__new__(cls)
        io.BufferedIOBase.__init__(reader)
        reader._url, reader._bucket, reader._key = inner.url, inner.bucket, inner.key
        reader._config, reader._inner = None, inner
        return reader

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rewrapped, (type(self), self._opened()))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._url}>"

    def _opened(self) -> ObjectReader:
        if self._inner is None:
            client = client_for(self._config if self._config is not None
                                else ClientConfig.from_env())
            self._inner = ObjectReader(self._url, client.open(self._url, self._constructor))
        return self._inner

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def key(self) -> str:
        return self._key

    @property
    def url(self) -> str:
        """The object's aisio URL."""
        return self._url

    @property
    def size(self) -> int:
        return self._opened().size

    def read(self, size: int | None = None, /) -> bytes:
        return self._opened().read(-1 if size is None else size)

    def read1(self, size: int = -1, /) -> bytes:
        return self._opened().read1(size)

    def readinto(self, buf: Any, /) -> int:
        return self._opened().readinto(buf)

    def readinto1(self, buf: Any, /) -> int:
        return self._opened().readinto1(buf)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        return self._opened().seek(offset, whence)

    def tell(self) -> int:
        return self._opened().tell()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        super().close()


def _rewrapped(cls: type[_AisioS3Reader], inner: ObjectReader) -> _AisioS3Reader:
    return cls._over(inner)


class SequentialS3Reader(_AisioS3Reader):
    """The connector's sequential reader: one streaming GET, what it read is kept."""


class RangedS3Reader(_AisioS3Reader):
    """The connector's range-based reader: a range GET per read, through a ``buffer_size`` buffer."""

    def __init__(self, bucket: str, key: str, get_object_info: Any = None, get_stream: Any = None,
                 buffer_size: int | None = None, *, config: ClientConfig | None = None) -> None:
        super().__init__(bucket, key, get_object_info, get_stream, config=config)
        self._constructor = S3ReaderConstructor.range_based(buffer_size)


@dataclass(frozen=True)
class ItemRange:
    """One DCP item's bytes in its file: ``[start, end)``."""

    start: int
    end: int


class DCPOptimizedS3Reader(_AisioS3Reader):
    """The connector's DCP reader: given the items' byte ranges, coalesced GETs for them."""

    def __init__(self, bucket: str, key: str, item_ranges: Sequence[ItemRange] = (),
                 get_object_info: Any = None, get_stream: Any = None,
                 max_gap_size: float = 32 * MiB, *, config: ClientConfig | None = None) -> None:
        super().__init__(bucket, key, get_object_info, get_stream, config=config)
        self._constructor = ReaderConstructor.dcp_optimized(max_gap_size)
        self.item_ranges = list(item_ranges)

    def _opened(self) -> ObjectReader:
        if self._inner is None:
            client = client_for(self._config if self._config is not None
                                else ClientConfig.from_env())
            ranges = [(r.start, r.end) for r in self.item_ranges]
            self._inner = ObjectReader(self._url, client.open(self._url, self._constructor,
                                                              ranges=ranges or None))
        return self._inner


_READER_CLASSES: dict[str, type[_AisioS3Reader]] = {
    "sequential": SequentialS3Reader, "range_based": RangedS3Reader,
    "dcp_optimized": DCPOptimizedS3Reader,
}


@runtime_checkable
class S3ReaderConstructorProtocol(Protocol):
    """What the connector's reader constructors are: ``constructor(bucket, key, ...) -> S3Reader``."""

    def __call__(self, bucket: str, key: str, get_object_info: Any = None,
                 get_stream: Any = None) -> S3Reader: ...


@runtime_checkable
class DCPS3ReaderConstructorProtocol(Protocol):
    """A reader constructor that takes a DCP load plan's byte ranges (``dcp_optimized()``)."""

    _item_ranges_by_file: dict[str, list[ItemRange]]

    def __call__(self, bucket: str, key: str, get_object_info: Any = None,
                 get_stream: Any = None) -> S3Reader: ...

    def set_item_ranges_by_file(self, plan_items: Any, storage_data: Any,
                                base_path: str | os.PathLike[str]) -> None: ...


class _Constructor(ReaderConstructor):
    """An ``aisio.ReaderConstructor`` that, as the connector's constructors, is callable.

    It compares equal to the plain ``aisio.ReaderConstructor`` of the same settings.
    """

    def __call__(self, bucket: str, key: str, get_object_info: Any = None,
                 get_stream: Any = None) -> S3Reader:
        cls = _READER_CLASSES[self.kind]
        reader = cls(bucket, key, get_object_info, get_stream)
        reader._constructor = self
        return reader

    def _values(self) -> tuple[Any, ...]:
        return (self.kind, self.buffer_size, self.max_gap_size)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Constructor):
            return self._values() == other._values()
        if isinstance(other, ReaderConstructor):
            return self._values() == (other.kind, other.buffer_size, other.max_gap_size)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())


class DCPOptimizedConstructor(_Constructor):
    """The connector's ``dcp_optimized()`` constructor: takes the plan's ranges per file.

    ``S3StorageReader.prepare_local_plan`` (and aisio's ``StorageReader``) call
    ``set_item_ranges_by_file``; the ranges are what a call for a ``.distcp`` key reads.
    """

    def __init__(self, max_gap_size: float = 32 * MiB) -> None:
        if max_gap_size < 0:
            raise ValueError(f"max_gap_size must be >= 0, got {max_gap_size}")
        super().__init__("dcp_optimized", max_gap_size=max_gap_size)
        object.__setattr__(self, "_item_ranges_by_file", {})

    _item_ranges_by_file: dict[str, list[ItemRange]]

    def set_item_ranges_by_file(self, plan_items: Any, storage_data: Any,
                                base_path: str | os.PathLike[str]) -> None:
        """Record each planned item's byte range under its file's URL (replacing earlier ones)."""
        ranges: dict[str, list[ItemRange]] = collections.defaultdict(list)
        if plan_items and not storage_data:
            raise ValueError("storage_data is empty: it is needed to find each item's file range")
        base = os.fspath(base_path)
        for item in plan_items or ():
            info = storage_data[item.storage_index]
            url = _child_url(base, info.relative_path)
            ranges[url].append(ItemRange(info.offset, info.offset + info.length))
        object.__setattr__(self, "_item_ranges_by_file", ranges)

    def __call__(self, bucket: str, key: str, get_object_info: Any = None,
                 get_stream: Any = None) -> S3Reader:
        """A sequential reader for ``.metadata``, a DCP reader over the ranges recorded for a file."""
        if key.endswith(".metadata"):
            return SequentialS3Reader(bucket, key, get_object_info, get_stream)
        url = f"s3://{bucket}/{key}"
        if url not in self._item_ranges_by_file:
            raise ValueError(f"no byte ranges were recorded for {url}: a DCP-optimized reader "
                             "reads the ranges of a load plan (set_item_ranges_by_file); for "
                             "other reads use S3ReaderConstructor.sequential()")
        return DCPOptimizedS3Reader(bucket, key, self._item_ranges_by_file[url], get_object_info,
                                    get_stream, self.max_gap_size)


def _child_url(base: str, name: str) -> str:
    """``name`` inside the folder URL ``base``, as the connector joins them."""
    return f"{base.rstrip('/')}/{name}"


class S3ReaderConstructor(ReaderConstructor):
    """The connector's factory of reader constructors; each is an ``aisio.ReaderConstructor`` too."""

    @staticmethod
    def sequential() -> ReaderConstructor:
        return _Constructor("sequential")

    @staticmethod
    def range_based(buffer_size: int | None = None) -> ReaderConstructor:
        """The seed's ``range_based``: ``None`` means an 8 MiB buffer."""
        plain = ReaderConstructor.range_based(8 * MiB if buffer_size is None else buffer_size)
        return _Constructor("range_based", buffer_size=plain.buffer_size)

    @staticmethod
    def dcp_optimized(max_gap_size: float = 32 * MiB) -> ReaderConstructor:
        return DCPOptimizedConstructor(ReaderConstructor.dcp_optimized(max_gap_size).max_gap_size)

    @staticmethod
    def default() -> ReaderConstructor:
        return S3ReaderConstructor.sequential()

    @staticmethod
    def get_reader_type_string(constructor: Any) -> str:
        """``"sequential"``, ``"range_based"``, ``"dcp_optimized"``, or ``"unknown"``."""
        if constructor is None:
            return "sequential"
        if isinstance(constructor, ReaderConstructor):
            return constructor.kind
        func = getattr(constructor, "func", None)  # functools.partial(SequentialS3Reader), ...
        for kind, cls in _READER_CLASSES.items():
            if func is cls:
                return kind
        return "unknown"


def identity(reader: Any) -> Any:
    """The S3 connector's default transform: items are the readers themselves."""
    return reader


def _s3_config(region: str | None, endpoint: str | None, s3client_config: Any,
               config: ClientConfig | None) -> ClientConfig:
    """One frozen ClientConfig from the seed's (region, endpoint, s3client_config)."""
    base = config if config is not None else ClientConfig.from_env()
    s3 = dataclasses.replace(base.s3, region=region or base.s3.region,
                             endpoint_url=endpoint or base.s3.endpoint_url)
    if s3client_config is None:
        return base.replace(s3=s3)
    s3 = dataclasses.replace(
        s3, unsigned=bool(s3client_config.unsigned) or s3.unsigned,
        force_path_style=bool(s3client_config.force_path_style) or s3.force_path_style,
        profile=s3client_config.profile or s3.profile,
        requester_pays=bool(getattr(s3client_config, "requester_pays", False)) or s3.requester_pays)
    return base.replace(s3=s3, part_size=int(s3client_config.part_size),
                        max_attempts=int(s3client_config.max_attempts))


def _prefetched(reader_constructor: ReaderConstructor | None) -> ReaderConstructor | None:
    """Sequential readers read everything anyway: prefetch the bytes instead (None)."""
    if reader_constructor is None or reader_constructor.kind == "sequential":
        return None
    return reader_constructor


@dataclass(frozen=True)
class _Prefix:
    """``get_dataset_objects`` of ``from_prefix``: list under a raw string prefix."""

    url: str

    def __call__(self, client: Any) -> Iterator[ObjectInfo]:
        return iter(client.list(self.url))


@dataclass(frozen=True)
class _Objects:
    """``get_dataset_objects`` of ``from_objects``: the URLs as given."""

    urls: tuple[str, ...]

    def __call__(self, client: Any) -> Iterator[ObjectInfo]:
        return (ObjectInfo(parse_url(url).url, -1) for url in self.urls)


def _s3_entries(get_dataset_objects: Any) -> list[Entry] | None:
    if isinstance(get_dataset_objects, _Prefix):
        return [(get_dataset_objects.url, True)]
    if isinstance(get_dataset_objects, _Objects):
        return [(url, False) for url in get_dataset_objects.urls]
    return None  # a user's callable


def _object_uris(object_uris: str | Iterable[str]) -> _Objects:
    if isinstance(object_uris, (str, os.PathLike)):
        return _Objects((_url_text(object_uris),))
    return _Objects(tuple(_url_text(u) for u in object_uris))


def _info_of(item: Any) -> ObjectInfo:
    """An item of a user's ``get_dataset_objects``: URL, ObjectInfo, or bucket/key data."""
    if isinstance(item, ObjectInfo):
        return item
    if isinstance(item, (str, os.PathLike)):
        return ObjectInfo(parse_url(item).url, -1)
    size = getattr(getattr(item, "object_info", None), "size", None)
    url = f"s3://{item.bucket}/{item.key}"
    return ObjectInfo(url, int(size) if size is not None else -1)


class _S3Dataset:
    """What the two S3 datasets share: the seed's settings and the user-callable listing."""

    _region: str | None
    _endpoint: str | None
    _get_dataset_objects: Any
    _reader_class: type[_AisioS3Reader] = SequentialS3Reader
    transform: Any

    def _item(self, info: ObjectInfo, payload: Payload) -> Any:
        """The item: ``transform`` of the connector's reader class for the reader constructor."""
        inner = ObjectReader(info.url, Reader(payload) if isinstance(payload, AsyncReader)
                             else payload)
        reader = self._reader_class._over(inner)
        return reader if self.transform is None else self.transform(reader)

    @property
    def region(self) -> str | None:
        return self._region

    @property
    def endpoint(self) -> str | None:
        return self._endpoint


class S3MapDataset(_S3Dataset, MapDataset):
    """The S3 connector's map dataset: ``transform(reader)`` per object, listed on first use.

    The default transform is the identity, so items are readers (``.bucket``, ``.key``,
    ``read()``). Sequential readers (the default) are served from bytes fetched with the
    batch; other reader kinds read lazily as the transform asks. ``ais://`` and
    ``file://`` URLs work as well as ``s3://``.
    """

    def __init__(self, region: str, get_dataset_objects: Callable[[Any], Iterable[Any]],
                 endpoint: str | None = None, transform: Callable[[Any], Any] = identity,
                 s3client_config: Any = None,
                 reader_constructor: ReaderConstructor | None = None, *,
                 config: ClientConfig | None = None) -> None:
        super().__init__(transform=transform,
                         config=_s3_config(region, endpoint, s3client_config, config),
                         reader_constructor=_prefetched(reader_constructor))
        self._region, self._endpoint = region, endpoint
        self._get_dataset_objects = get_dataset_objects
        self._entries = _s3_entries(get_dataset_objects) or []
        self._reader_class = _READER_CLASSES[(reader_constructor or ReaderConstructor.default()).kind]

    @classmethod
    def from_prefix(cls, s3_uri: str, *, region: str,  # type: ignore[override]
                    endpoint: str | None = None, transform: Callable[[Any], Any] = identity,
                    s3client_config: Any = None,
                    reader_constructor: ReaderConstructor | None = None,
                    config: ClientConfig | None = None) -> S3MapDataset:
        """Every object whose key starts with the URI's key (a raw string prefix)."""
        return cls(region, _Prefix(_url_text(s3_uri)), endpoint, transform, s3client_config,
                   reader_constructor, config=config)

    @classmethod
    def from_objects(cls, object_uris: str | Iterable[str], *, region: str,
                     endpoint: str | None = None, transform: Callable[[Any], Any] = identity,
                     s3client_config: Any = None,
                     reader_constructor: ReaderConstructor | None = None,
                     config: ClientConfig | None = None) -> S3MapDataset:
        """The objects named by ``object_uris`` (checked on first use)."""
        return cls(region, _object_uris(object_uris), endpoint, transform, s3client_config,
                   reader_constructor, config=config)

    def object_infos(self) -> list[ObjectInfo]:
        if self._infos is None and _s3_entries(self._get_dataset_objects) is None:
            self._infos = [_info_of(item) for item in self._get_dataset_objects(self.client)]
        return super().object_infos()


class S3IterableDataset(_S3Dataset, IterableDataset):
    """The S3 connector's iterable dataset: lazy listing, unsharded unless ``enable_sharding``.

    With ``enable_sharding`` item ``i`` goes to rank ``i % world_size``, then worker
    ``(i // world_size) % num_workers``; rank and world size are read here, when
    ``torch.distributed`` is initialized, as the seed does.
    """

    def __init__(self, region: str, get_dataset_objects: Callable[[Any], Iterable[Any]],
                 endpoint: str | None = None, transform: Callable[[Any], Any] = identity,
                 s3client_config: Any = None, enable_sharding: bool = False,
                 reader_constructor: ReaderConstructor | None = None, *,
                 config: ClientConfig | None = None, prefetch: int = 16) -> None:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if initialized else (0, 1)
        super().__init__(transform=transform,
                         config=_s3_config(region, endpoint, s3client_config, config),
                         reader_constructor=_prefetched(reader_constructor),
                         shard_by_rank=enable_sharding, shard_by_worker=enable_sharding,
                         rank=rank, world_size=world_size, prefetch=prefetch)
        self._region, self._endpoint = region, endpoint
        self._get_dataset_objects = get_dataset_objects
        self._entries = _s3_entries(get_dataset_objects) or []
        self._reader_class = _READER_CLASSES[(reader_constructor or ReaderConstructor.default()).kind]
        self.enable_sharding = enable_sharding

    @classmethod
    def from_prefix(cls, s3_uri: str, *, region: str,  # type: ignore[override]
                    endpoint: str | None = None, transform: Callable[[Any], Any] = identity,
                    s3client_config: Any = None, enable_sharding: bool = False,
                    reader_constructor: ReaderConstructor | None = None,
                    config: ClientConfig | None = None) -> S3IterableDataset:
        """Every object whose key starts with the URI's key, listed page by page each pass."""
        return cls(region, _Prefix(_url_text(s3_uri)), endpoint, transform, s3client_config,
                   enable_sharding, reader_constructor, config=config)

    @classmethod
    def from_objects(cls, object_uris: str | Iterable[str], *, region: str,
                     endpoint: str | None = None, transform: Callable[[Any], Any] = identity,
                     s3client_config: Any = None, enable_sharding: bool = False,
                     reader_constructor: ReaderConstructor | None = None,
                     config: ClientConfig | None = None) -> S3IterableDataset:
        """The objects named by ``object_uris``."""
        return cls(region, _object_uris(object_uris), endpoint, transform, s3client_config,
                   enable_sharding, reader_constructor, config=config)

    def _infos(self, aclient: AsyncClient, entries: list[Entry]) -> AsyncGenerator[ObjectInfo]:
        if _s3_entries(self._get_dataset_objects) is not None:
            return super()._infos(aclient, entries)
        return _user_listing(self._get_dataset_objects, self.client)


async def _user_listing(fn: Callable[[Any], Iterable[Any]], client: Any
                        ) -> AsyncGenerator[ObjectInfo]:
    """A user's blocking ``get_dataset_objects(client)``, pulled in a worker thread."""
    items = iter(await anyio.to_thread.run_sync(fn, client))

    def take() -> list[Any]:
        return [item for _, item in zip(range(1000), items, strict=False)]

    while batch := await anyio.to_thread.run_sync(take):
        for item in batch:
            yield _info_of(item)


# === AIStore ========================================================================================

_SDK_PATH = re.compile(r"(?P<provider>[a-z0-9]+)/@(?P<uuid>[^#/]*)#(?P<ns>[^/]*)/(?P<bucket>[^/]+)/?")


def _bucket_url(source: Any) -> str:
    """``ais://bucket/`` (``?provider=`` for other providers) of an SDK bucket or a URL."""
    if isinstance(source, (str, os.PathLike)):
        return _url_text(source)
    path = str(source.get_path())
    match = _SDK_PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"not an AIStore bucket path: {path!r}")
    if match["uuid"] or match["ns"]:
        raise ValueError(f"buckets of remote clusters or namespaces are not supported: {path!r}")
    provider = match["provider"]
    suffix = "" if provider == "ais" else f"?provider={provider}"
    return f"ais://{match['bucket']}/{suffix}"


def _sdk_endpoint(source: Any) -> str | None:
    """The AIS endpoint an SDK object was made for, if it is one."""
    holder = getattr(source, "bck", source)
    client = getattr(holder, "client", None)
    base = getattr(client, "base_url", None)
    if not isinstance(base, str):
        return None
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _prefixes_for(source: Any, url: str, prefix_map: Mapping[Any, Any]) -> list[str] | None:
    for key, value in prefix_map.items():
        same = key is source or (isinstance(key, (str, os.PathLike))
                                 and parse_url(_url_text(key)).url == parse_url(url).url)
        if same and value is not None:
            return [value] if isinstance(value, str) else list(value)
    return None


def _ais_groups(sources: Any, prefix_map: Mapping[Any, Any] | None, config: ClientConfig | None,
                owner: str, *, raw: bool = True) -> tuple[list[list[Entry]], ClientConfig]:
    """Per source, the entries to read; and the config, with an SDK object's endpoint.

    A bucket (or URL) is listed, per prefix when the map names it; an ObjectGroup gives its
    objects by name. ``raw``: a URL source is a raw string prefix even without a ``/``.
    """
    if not sources:
        raise ValueError(f"<{owner}> ais_source_list must be provided")
    if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    groups: list[list[Entry]] = []
    endpoint = None
    for source in sources:
        endpoint = endpoint or _sdk_endpoint(source)
        if hasattr(source, "list_names") and hasattr(source, "bck"):  # an ObjectGroup
            loc = parse_url(_bucket_url(source.bck))
            names = list(source.list_names())
            prefixes = _prefixes_for(source, loc.url, prefix_map or {})
            chosen = names if prefixes is None else [
                n for p in prefixes for n in names if n.startswith(p)]
            groups.append([(loc.child(n).url, False) for n in chosen])
            continue
        loc = parse_url(_bucket_url(source))
        prefixes = _prefixes_for(source, loc.url, prefix_map or {})
        if prefixes is None:
            groups.append([(loc.url, raw or loc.is_prefix)])
        else:
            groups.append([(loc.child(loc.key + p).url, True) for p in prefixes])
    cfg = config if config is not None else ClientConfig.from_env()
    if cfg.ais.endpoint is None and endpoint:
        cfg = cfg.replace(ais=dataclasses.replace(cfg.ais, endpoint=endpoint))
    return groups, cfg


def _name(url: str) -> str:
    """The object's name in its bucket, as the AIS seed yields it."""
    return parse_url(url).key


def _sources_of_this_worker(groups: list[list[Entry]], by_worker: bool) -> list[Entry] | None:
    """With ``partition_sources_by_worker``, a DataLoader worker's whole sources (the SDK's
    split); None to share objects out as usual."""
    info = torch.utils.data.get_worker_info()
    if not by_worker or info is None or info.num_workers <= 1:
        return None
    return [entry for group in groups[info.id::info.num_workers] for entry in group]


@dataclass(frozen=True)
class _Props:
    size: int


@dataclass(frozen=True)
class AISObject:
    """An entry of ``get_obj_list()``: ``name``, ``size`` (and ``props_cached.size``), ``url``."""

    url: str
    name: str
    size: int

    @property
    def props_cached(self) -> _Props:
        return _Props(self.size)

    props = props_cached


def _objects(infos: Iterable[ObjectInfo]) -> Iterator[AISObject]:
    for info in infos:
        yield AISObject(info.url, _name(info.url), info.size)


class AISBaseMapDataset(MapDataset, abc.ABC):
    """The AIS seed's map-style base: lists every source in ``__init__``.

    Subclasses implement ``__getitem__``; ``get_obj_list()`` gives the objects (``name``,
    ``size``, ``props_cached.size``, ``url``); ``self.client`` reads them.
    """

    def __init__(self, ais_source_list: Any, prefix_map: Mapping[Any, Any] | None = None, *,
                 config: ClientConfig | None = None, etl_name: str | None = None) -> None:
        groups, cfg = _ais_groups(ais_source_list, prefix_map, config, type(self).__name__)
        super().__init__(config=cfg, etl_name=etl_name)
        self._entries = [entry for group in groups for entry in group]
        self.object_infos()

    def get_obj_list(self) -> list[AISObject]:
        """The listed objects (objects named in an ObjectGroup cost a HEAD each for the size)."""
        self.sizes()
        return list(_objects(self.object_infos()))

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Any: ...

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        return [self.__getitem__(index) for index in indices]


class AISMapDataset(AISBaseMapDataset):
    """The AIS seed's map dataset: ``(object name, bytes)``; a DataLoader batch is one gather."""

    def __init__(self, ais_source_list: Any = (), prefix_map: Mapping[Any, Any] | None = None,
                 etl_name: str | None = None, *, config: ClientConfig | None = None) -> None:
        super().__init__(ais_source_list, prefix_map, config=config, etl_name=etl_name)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.__getitems__([index])[0]
        except IndexError:
            raise IndexError(
                f"<{type(self).__name__}> index must be in bounds of dataset") from None

    __getitems__ = MapDataset.__getitems__

    def _item(self, info: ObjectInfo, payload: Payload) -> Any:
        assert isinstance(payload, bytes)
        return _name(info.url), payload


class AISBaseIterDataset(IterableDataset, abc.ABC):
    """The AIS seed's iterable base: lazy listing, split over DataLoader workers (not ranks).

    ``partition_sources_by_worker``: worker ``w`` of ``N`` lists only sources ``w::N``.
    Subclasses implement ``__iter__``, using ``_get_worker_iter_info()`` as in the seed.
    """

    def __init__(self, ais_source_list: Any, prefix_map: Mapping[Any, Any] | None = None,
                 partition_sources_by_worker: bool = False, *,
                 config: ClientConfig | None = None, etl_name: str | None = None,
                 show_progress: bool = False) -> None:
        groups, cfg = _ais_groups(ais_source_list, prefix_map, config, type(self).__name__)
        super().__init__(config=cfg, etl_name=etl_name, shard_by_rank=False,
                         shard_by_worker=True, show_progress=show_progress)
        self._groups = groups
        self._entries = [entry for group in groups for entry in group]
        self._partition_sources_by_worker = partition_sources_by_worker
        self._obj_iterator: Iterator[AISObject] | None = None

    def _plan(self) -> tuple[list[Entry], Shard]:
        mine = _sources_of_this_worker(self._groups, self._partition_sources_by_worker)
        return (mine, Shard()) if mine is not None else super()._plan()

    def _create_objects_iter(self, entries: list[Entry] | None = None) -> Iterator[AISObject]:
        """Every object of the given entries (default: all), listed lazily."""
        client = self.client
        for url, listed in self._entries if entries is None else entries:
            if listed:
                yield from _objects(client.list(url))
            else:
                yield AISObject(parse_url(url).url, _name(url), -1)

    def _reset_iterator(self) -> None:
        self._obj_iterator = self._create_objects_iter()

    def _get_worker_iter_info(self) -> tuple[Iterator[AISObject], str]:
        """This worker's objects and its name (``" (Worker i)"``), as in the seed."""
        self._reset_iterator()
        assert self._obj_iterator is not None
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers == 1:
            return self._obj_iterator, ""
        name = f" (Worker {info.id})"
        entries, _ = self._plan()
        if self._partition_sources_by_worker:
            return self._create_objects_iter(entries), name
        every = self._obj_iterator
        return (obj for i, obj in enumerate(every) if i % info.num_workers == info.id), name

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int:
        """Lists everything (one listing pass) and counts."""
        return sum(1 for _ in self._create_objects_iter())


class AISIterDataset(AISBaseIterDataset):
    """The AIS seed's iterable dataset: ``(object name, bytes)`` for this worker's objects."""

    def __init__(self, ais_source_list: Any, prefix_map: Mapping[Any, Any] | None = None,
                 etl_name: str | None = None, show_progress: bool = False,
                 partition_sources_by_worker: bool = False, *,
                 config: ClientConfig | None = None) -> None:
        super().__init__(ais_source_list, prefix_map, partition_sources_by_worker, config=config,
                         etl_name=etl_name, show_progress=show_progress)

    __iter__ = IterableDataset.__iter__

    def _item(self, info: ObjectInfo, payload: Payload) -> Any:
        assert isinstance(payload, bytes)
        return _name(info.url), payload


def _seed_split(name: str) -> tuple[str, str] | None:
    """The AIS seed's (basename, extension): file name up to its first dot, after its last."""
    file_name = name.rsplit("/", 1)[-1]
    _, dot, extension = file_name.rpartition(".")
    if not dot or not extension:
        return None
    return file_name.split(".")[0], extension


class AISShardReader(ShardReader):
    """The AIS seed's shard reader: ``(basename, ZeroDict{extension: bytes})`` per sample.

    Keys and grouping follow the seed: the basename is the file name without its
    directory, up to its first dot; the extension is after its last dot; members group by
    basename over the whole shard (so one shard's samples are held until it ends). Shards
    are streamed, split over DataLoader workers (not ranks).
    """

    ZeroDict = ZeroDict

    def __init__(self, bucket_list: Any, prefix_map: Mapping[Any, Any] | None = None,
                 etl_name: str | None = None, show_progress: bool = False,
                 partition_sources_by_worker: bool = False, *,
                 config: ClientConfig | None = None) -> None:
        groups, cfg = _ais_groups(bucket_list, prefix_map, config, type(self).__name__)
        super().__init__([entry for group in groups for entry in group], None, etl_name,
                         show_progress, cfg, shard_by_rank=False, shard_by_worker=True)
        self._groups = groups
        self._partition_sources_by_worker = partition_sources_by_worker

    def _plan(self) -> tuple[list[Entry], Shard]:
        mine = _sources_of_this_worker(self._groups, self._partition_sources_by_worker)
        return (mine, Shard()) if mine is not None else super()._plan()

    async def _shard_items(self, members: AsyncGenerator[Member], url: str
                           ) -> AsyncGenerator[Any]:
        samples: dict[str, dict[str, bytes]] = {}
        extensions: set[str] = set()
        async for name, data in members:
            split = _seed_split(name)
            if split is None:
                continue
            basename, extension = split
            extensions.add(extension)
            samples.setdefault(basename, {})[extension] = data
        for basename, sample in samples.items():
            yield basename, ZeroDict(sample, extensions)

    def _with_keys(self, samples: Iterator[Any]) -> Iterator[Any]:
        # Extensions gathered shard by shard in reading order, for the life of this object:
        # done here, not where shards are parsed, since the next shard is parsed meanwhile.
        for sample in samples:
            self._keys.update(sample[1])
            for key in tuple(self._keys):
                sample[1].setdefault(key, b"")
            yield sample

    def __len__(self) -> int:
        """The number of member files in every shard (reads every shard once)."""
        aclient = client_for(self.config).aclient
        infos = self.shard_infos()

        async def count() -> int:
            total = 0
            for info in infos:
                async with open_stream(aclient, info.url, self.etl_name) as stream:
                    async for _ in aiter_members(_Buffered(stream), info.url):
                        total += 1
            return total

        return run(count)


@dataclass
class DataShard:
    """A set of shards: every object of a bucket under ``prefix`` (the SDK's DataShard)."""

    client_url: str
    bucket_name: str
    provider: str = "ais"
    prefix: str = ""
    etl_name: str | None = None

    def url(self) -> str:
        """The shards' prefix as an aisio URL."""
        provider = str(getattr(self.provider, "value", self.provider))
        suffix = "" if provider == "ais" else f"?provider={provider}"
        return f"ais://{self.bucket_name}/{self.prefix}{suffix}"


class AISMultiShardStream(MultiShardStream):
    """The AIS seed's multishard stream: tuples of member bytes, one per ``DataShard``.

    Members of a shard come in name order (the seed's listing order); no worker or rank
    sharding, as in the seed.
    """

    def __init__(self, data_sources: Sequence[Any], *, config: ClientConfig | None = None
                 ) -> None:
        shards = [s if isinstance(s, DataShard) else DataShard(
            s.client_url, s.bucket_name, getattr(s.provider, "value", s.provider), s.prefix,
            s.etl_name) for s in data_sources]
        cfg = config if config is not None else ClientConfig.from_env()
        if cfg.ais.endpoint is None and shards:
            cfg = cfg.replace(ais=dataclasses.replace(cfg.ais, endpoint=shards[0].client_url))
        super().__init__([[(s.url(), True)] for s in shards],  # type: ignore[list-item]
                         config=cfg, shard_by_rank=False, shard_by_worker=False)
        for member_set, shard in zip(self._sets, shards, strict=True):
            member_set.etl_name = shard.etl_name
            member_set.sort_members = True


class AISSourceLister:
    """The URL of every object of every source under ``prefix``, listed lazily (a plain iterable).

    URLs are aisio's (``ais://bucket/name``); ``etl_name`` is kept for the loader.
    """

    def __init__(self, ais_sources: Any, prefix: str = "", etl_name: str | None = None, *,
                 config: ClientConfig | None = None) -> None:
        self.etl_name = etl_name
        groups, self.config = _ais_groups(ais_sources, {s: prefix for s in _listify(ais_sources)}
                                          if prefix else None, config, type(self).__name__)
        self._entries = [entry for group in groups for entry in group]

    def __iter__(self) -> Iterator[str]:
        client = client_for(self.config)
        for url, listed in self._entries:
            if listed:
                yield from (info.url for info in client.list(url))
            else:
                yield url

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError("AISSourceLister is iterable only")


def _listify(sources: Any) -> list[Any]:
    return list(sources) if isinstance(sources, (list, tuple)) else [sources]


class AISFileLister:
    """The URL of every object under each prefix URL of ``source_datapipe`` (``url``: the AIS endpoint)."""

    def __init__(self, source_datapipe: Iterable[str], url: str, length: int = -1, *,
                 config: ClientConfig | None = None) -> None:
        self.source_datapipe, self.url, self.length = source_datapipe, url, length
        cfg = config if config is not None else ClientConfig.from_env()
        self.config = cfg.replace(ais=dataclasses.replace(cfg.ais, endpoint=cfg.ais.endpoint or url))

    def __iter__(self) -> Iterator[str]:
        client = client_for(self.config)
        for prefix in self.source_datapipe:
            for info in client.list(prefix):
                yield info.url

    def __len__(self) -> int:
        if self.length == -1:
            raise TypeError(f"{type(self).__name__} instance doesn't have valid length")
        return self.length


class AISFileLoader:
    """``(url, reader)`` for each object URL of ``source_datapipe``: a sync, seekable reader."""

    def __init__(self, source_datapipe: Iterable[str], url: str, length: int = -1,
                 etl_name: str | None = None, *, config: ClientConfig | None = None) -> None:
        self.source_datapipe, self.url, self.length = source_datapipe, url, length
        self.etl_name = etl_name
        cfg = config if config is not None else ClientConfig.from_env()
        self.config = cfg.replace(ais=dataclasses.replace(cfg.ais, endpoint=cfg.ais.endpoint or url))

    def __iter__(self) -> Iterator[tuple[str, ObjectReader]]:
        client = client_for(self.config)
        for url in self.source_datapipe:
            if self.etl_name:
                aclient, etl = client.aclient, self.etl_name
                yield url, ObjectReader(url, run(read_object, aclient, url, etl))
            else:
                yield url, ObjectReader(url, client.open(url))

    def __len__(self) -> int:
        return len(self.source_datapipe)  # type: ignore[arg-type]
