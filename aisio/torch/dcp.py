"""Distributed checkpoints (``torch.distributed.checkpoint``) saved to and loaded from URLs.

``StorageWriter`` writes what torch's ``FileSystemWriter`` writes (one ``.distcp`` object
per rank and thread bucket, each item the bytes of ``torch.save``, then a pickled
``.metadata``), so either side can be torch's own. ``.metadata`` goes up last, in one
PUT: a save that fails midway never looks like a complete checkpoint.

``StorageReader`` runs one coroutine per load that reads every file concurrently. With
the default ``dcp_optimized`` reader each file's byte ranges are coalesced into a few
GETs whose tensor bytes land straight in the destination tensors; each item's zip header
arrives in the same GET and is checked before the tensor is committed. ``sequential()``
and ``range_based()`` read the files one after another through that reader instead.

Integrity: the writer records each item's CRC32C (of the bytes as stored) in the metadata
(``Metadata.aisio_checksums``: {"algorithm", "items": {index: CRC}}; torch's own reader
ignores it). ``verify(url)`` (and ``aisio verify URL``) reads every file without loading
anything and checks each item's bytes against it, and every item's place against the
files' sizes. A load checks the items it reads whole; tensors that land in place are
checked by their zip header only (their trailer is never read): ``verify`` covers them.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import io
import math
import os
import pickle
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, cast

import anyio
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import filesystem as _torch_fs
from torch.distributed.checkpoint import storage as _storage
from torch.distributed.checkpoint._extension import ExtensionRegistry, StreamTransformExtension
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .. import _bridge, _checksum
from .._buffers import writable_view
from .._client import AsyncClient
from .._config import ClientConfig
from .._planner import coalesce
from .._readers import ReaderConstructor
from .._url import parse_url
from ..errors import AisioError, IntegrityError, InvalidURLError, ObjectNotFoundError, RangeError, first_error
from . import _dcp_layout as layout
from ._checkpoint import compat_config
from ._datasets import client_for

__all__ = [
    "BinaryPrefixStrategy",
    "CheckpointExistsError",
    "CheckpointFormatError",
    "DefaultPrefixStrategy",
    "HexPrefixStrategy",
    "LoadStatistics",
    "NumericPrefixStrategy",
    "PrefixStrategy",
    "RoundRobinPrefixStrategy",
    "S3FileSystem",
    "S3PrefixStrategyBase",
    "S3StorageReader",
    "S3StorageWriter",
    "StorageReader",
    "StorageWriter",
    "UrlFileSystem",
    "VerifyReport",
    "averify",
    "verify",
]

# torch's own class: .metadata files pickle it, so both sides must use the same one
_StorageInfo = _torch_fs._StorageInfo
_METADATA = ".metadata"
_SUFFIX = ".distcp"
_DCP_VERSION = getattr(_torch_fs, "CURRENT_DCP_VERSION", "1.0.0")
_WHOLE_GET = 2**50  # part size of the scatter client: the reader cuts spans itself
_SMALL_WRITE = 1 << 20  # torch.save's small writes are gathered up to this before a hop
_CHECKSUMS = "aisio_checksums"  # the Metadata attribute with the items' CRCs
_ITEM_CRC = "_aisio_crc"  # carries an item's CRC on its _StorageInfo from write_data to finish


def _join(base: str, name: str) -> str:
    """The URL of ``name`` (which may contain '/') inside the checkpoint folder ``base``."""
    loc = parse_url(base)
    key = loc.key.rstrip("/")
    return loc.child(f"{key}/{name}" if key or loc.scheme == "file" else name).url


def _metadata_name(rank: int | None) -> str:
    return _METADATA if rank is None else f"__{rank}{_METADATA}"


class _CheckpointURL:
    """What DCP asks of a storage reader or writer about where the checkpoint lives."""

    url: str

    @property
    def checkpoint_id(self) -> str:
        """The checkpoint's URL."""
        return self.url

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        try:
            parse_url(checkpoint_id)
        except InvalidURLError:
            return False
        return True


def _done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


# ---------------------------------------------------------------------------- file system


class UrlFileSystem(_torch_fs.FileSystemBase):
    """torch's ``FileSystemBase`` over aisio URLs: what ``StorageWriter.fs`` and ``StorageReader.fs`` are.

    Paths are URLs (or local paths). ``create_stream(url, "wb")`` is a multipart writer whose
    object appears when the stream closes, ``"rb"`` a reader made by ``reader_constructor``;
    ``rename`` on an object store copies through this process and deletes the source.
    """

    def __init__(self, config: ClientConfig | None = None,
                 reader_constructor: ReaderConstructor | None = None) -> None:
        self.config = config if config is not None else ClientConfig.from_env()
        self.reader_constructor = reader_constructor
        self._path: str | os.PathLike[str] = ""

    def __repr__(self) -> str:
        return f"<aisio {type(self).__name__}>"

    @property
    def client(self) -> _bridge.Client:
        return client_for(self.config)

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[io.IOBase]:
        url = os.fspath(path)
        if mode == "wb":
            with self.client.writer(url) as writer:
                yield writer
        elif mode == "rb":
            reader = self.client.open(url, self.reader_constructor)
            try:
                yield reader
            finally:
                reader.close()
        else:
            raise ValueError(f"create_stream opens streams with mode 'rb' or 'wb', not {mode!r}")

    def concat_path(self, path: str | os.PathLike[str], suffix: str) -> str:
        return _join(os.fspath(path), suffix)

    def init_path(self, path: str | os.PathLike[str]) -> str | os.PathLike[str]:
        self._path = path
        return path

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        """Move one object: a local rename for files, else a copy (streamed) and a delete."""
        old, new = parse_url(os.fspath(path)), parse_url(os.fspath(new_path))
        if old.scheme == new.scheme == "file":
            os.makedirs(os.path.dirname(new.key) or ".", exist_ok=True)
            try:
                os.replace(old.key, new.key)
            except FileNotFoundError as exc:
                raise ObjectNotFoundError(f"cannot rename {old.url}: it does not exist",
                                          url=old.url) from exc
            return
        client = self.client
        with client.open(old.url, ReaderConstructor.sequential()) as reader, \
                client.writer(new.url) as writer:
            while chunk := reader.read(self.config.part_size):
                writer.write(chunk)
        client.delete(old.url)

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        """Folders exist by their objects; a local one is made (as torch's FileSystem does)."""
        loc = parse_url(os.fspath(path))
        if loc.scheme == "file":
            os.makedirs(loc.key, exist_ok=True)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        try:
            parse_url(checkpoint_id)
        except InvalidURLError:
            return False
        return True

    def exists(self, path: str | os.PathLike[str]) -> bool:
        try:
            self.client.head(os.fspath(path))
        except ObjectNotFoundError:
            return False
        return True

    def rm_file(self, path: str | os.PathLike[str]) -> None:
        self.client.delete(os.fspath(path))

    def ls(self, path: str | os.PathLike[str]) -> list[str]:
        """The URLs of the objects under the folder ``path``."""
        folder = os.fspath(path)
        folder = folder if folder.endswith("/") else folder + "/"
        return [info.url for info in self.client.list(folder)]


# ---------------------------------------------------------------------------- prefixes


class PrefixStrategy(abc.ABC):
    """Names the key prefix of a rank's data files; spreading ranks over prefixes avoids throttling."""

    def __call__(self, rank: int) -> str:
        return self.generate_prefix(rank)

    @abc.abstractmethod
    def generate_prefix(self, rank: int) -> str:
        """The prefix of ``rank``'s files, relative to the checkpoint URL."""


S3PrefixStrategyBase = PrefixStrategy  # the S3 connector's name


class DefaultPrefixStrategy(PrefixStrategy):
    """``__{rank}_``: the file names torch's FileSystemWriter uses."""

    def generate_prefix(self, rank: int) -> str:
        return f"__{rank}_"


def _epoch(epoch_num: int | None) -> str:
    return "" if epoch_num is None else f"epoch_{epoch_num}/"


class NumericPrefixStrategy(PrefixStrategy):
    """``{digits}/[epoch_{n}/]__{rank}_``: rank mod ``prefix_count`` in base ``base``, digits reversed.

    Reversed digits vary in the first character, which is what S3 partitions keys by.
    ``prefix_count`` defaults to the world size when torch.distributed is initialized.
    """

    def __init__(self, base: int, epoch_num: int | None = None, min_prefix_length: int = 10,
                 prefix_count: int | None = None) -> None:
        if not 2 <= base <= 16:
            raise ValueError(f"base must be between 2 and 16, got {base}")
        if min_prefix_length < 1:
            raise ValueError(f"min_prefix_length must be positive, got {min_prefix_length}")
        if epoch_num is not None and not isinstance(epoch_num, int):
            raise ValueError(f"epoch_num must be None or an integer, got {epoch_num!r}")
        if prefix_count is not None and (not isinstance(prefix_count, int) or prefix_count < 1):
            raise ValueError(f"prefix_count must be a positive integer, got {prefix_count!r}")
        if prefix_count is None:
            prefix_count = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.base, self.epoch_num, self.prefix_count = base, epoch_num, prefix_count
        self.min_prefix_len = min_prefix_length  # the connector's attribute name
        digits = 1
        while base**digits < prefix_count:
            digits += 1
        self.prefix_length = max(digits, min_prefix_length)
        #: the prefix of each of the ``prefix_count`` slots, as the connector lists them
        self.prefix_map = [self._digits(n) for n in range(prefix_count)]

    def _digits(self, n: int) -> str:
        """``n`` in ``base``, ``prefix_length`` digits, least significant first."""
        digits = []
        for _ in range(self.prefix_length):
            n, d = divmod(n, self.base)
            digits.append("0123456789abcdef"[d])
        return "".join(digits)

    def generate_prefix(self, rank: int) -> str:
        return f"{self.prefix_map[rank % len(self.prefix_map)]}/{_epoch(self.epoch_num)}__{rank}_"


class BinaryPrefixStrategy(NumericPrefixStrategy):
    """Numeric prefixes in base 2."""

    def __init__(self, epoch_num: int | None = None, min_prefix_length: int = 10,
                 prefix_count: int | None = None) -> None:
        super().__init__(2, epoch_num, min_prefix_length, prefix_count)


class HexPrefixStrategy(NumericPrefixStrategy):
    """Numeric prefixes in base 16."""

    def __init__(self, epoch_num: int | None = None, min_prefix_length: int = 10,
                 prefix_count: int | None = None) -> None:
        super().__init__(16, epoch_num, min_prefix_length, prefix_count)


class RoundRobinPrefixStrategy(PrefixStrategy):
    """``{user_prefixes[rank % n]}/[epoch_{n}/]__{rank}_``."""

    def __init__(self, user_prefixes: Sequence[str], epoch_num: int | None = None) -> None:
        if not user_prefixes:
            raise ValueError("user_prefixes must not be empty")
        self.user_prefixes, self.epoch_num = list(user_prefixes), epoch_num

    def generate_prefix(self, rank: int) -> str:
        chosen = self.user_prefixes[rank % len(self.user_prefixes)]
        return f"{chosen}/{_epoch(self.epoch_num)}__{rank}_"


# ---------------------------------------------------------------------------- writer


@dataclass(frozen=True)
class _FilePrefix:
    """The plan's storage data: where a rank's files go (what torch's _StoragePrefix carries)."""

    prefix: str


class _UploadStream:
    """What torch.save writes into: gathers its small writes, so each costs no loop-thread hop."""

    def __init__(self, writer: _bridge.Writer, algorithm: str) -> None:
        self._writer = writer
        self._pending = bytearray()
        self.algorithm = algorithm
        self._hash = _checksum.function(algorithm)
        self.crc = 0
        """The CRC of everything written so far (items' CRCs are cut out of it)."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.crc = self._hash(view, self.crc)
        if len(self._pending) + len(view) < _SMALL_WRITE:
            self._pending += view
            return len(view)
        self._drain()
        self._writer.write(view)
        return len(view)

    def _drain(self) -> None:
        if self._pending:
            self._writer.write(self._pending)
            self._pending = bytearray()

    def tell(self) -> int:
        return self._writer.tell() + len(self._pending)

    def flush(self) -> None:
        """torch.save flushes at its end; the bytes stay gathered until ``close``."""

    def close(self) -> None:
        self._drain()
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


def _buckets(items: list[WriteItem], count: int) -> list[list[WriteItem]]:
    """Split items into ``count`` files: byte items dealt round, tensors largest first to the lightest."""
    if count <= 1:
        return [items]
    buckets: list[list[WriteItem]] = [[] for _ in range(count)]
    sizes = [0] * count
    byte_items = [i for i in items if i.type == WriteItemType.BYTE_IO]
    tensors = [i for i in items if i.type != WriteItemType.BYTE_IO]
    for n, item in enumerate(byte_items):
        buckets[n % count].append(item)
    for item in sorted(tensors, key=lambda i: i.tensor_storage_size() or 0, reverse=True):
        lightest = sizes.index(min(sizes))
        buckets[lightest].append(item)
        sizes[lightest] += item.tensor_storage_size() or 0
    return buckets


def _savable(data: Any) -> torch.Tensor:
    """A CPU tensor whose storage is exactly its row-major bytes (fast to load, nothing extra saved)."""
    tensor = data.detach() if isinstance(data, torch.Tensor) else torch.as_tensor(data)
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


class _Unclosable(io.RawIOBase):
    """Hands writes on to the file's stream; closing it (as a transform's close does) keeps that open."""

    def __init__(self, raw: _UploadStream) -> None:
        super().__init__()
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._raw.write(data)


def _accelerator_in_use() -> bool:
    """What torch's FileSystemWriter asks before copying tensors ahead: is there a device to copy from?"""
    if torch.cuda.is_available():
        return True
    custom = getattr(torch, torch._C._get_privateuse1_backend_name(), None)
    return bool(custom is not None and custom.is_available())


def _fsync_local(url: str) -> None:
    """Flush a local file and its folder entry to disk (object stores are durable once a PUT completes)."""
    loc = parse_url(url)
    if loc.scheme != "file":
        return
    for path, flags in ((loc.key, os.O_RDONLY), (os.path.dirname(loc.key) or ".", os.O_RDONLY)):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _serialization_format(value: Any) -> Any:
    """torch's SerializationFormat.TORCH_SAVE (the only one written here), checked."""
    formats = getattr(_torch_fs, "SerializationFormat", None)
    if formats is None:  # a torch without the option: only torch.save exists
        if value not in (None, "torch_save"):
            raise ValueError(f"serialization_format {value!r} is not known to this torch")
        return value
    fmt = formats(value) if isinstance(value, str) else value
    if not isinstance(fmt, formats):
        raise ValueError(f"serialization_format must be a {formats.__name__}, got {value!r}")
    if fmt != formats.TORCH_SAVE:
        raise NotImplementedError(
            f"serialization_format={fmt} is not supported by aisio's StorageWriter: torch's "
            "FileSystemReader cannot read such files either (only its Hugging Face reader does); "
            "use SerializationFormat.TORCH_SAVE")
    return fmt


def _checked_extensions(extensions: Sequence[Any] | None) -> tuple[Any, ...]:
    out = tuple(extensions or ())
    for ex in out:
        if not isinstance(ex, StreamTransformExtension):
            raise TypeError(f"_extensions takes StreamTransformExtension instances (such as "
                            f"ZStandard()), got {ex!r}")
    return out


class CheckpointExistsError(AisioError, FileExistsError, RuntimeError):
    """``overwrite=False`` and the folder already holds a checkpoint.

    The text is torch's (``Checkpoint already exists and self.overwrite=False.``) and it is
    a ``RuntimeError`` as torch's is, so code written for FileSystemWriter keeps working;
    ``url`` names the metadata object found.
    """


class CheckpointFormatError(AisioError, ValueError):
    """A checkpoint's ``.metadata`` is truncated or is not DCP metadata; ``url`` names it."""


_EXISTS = "Checkpoint already exists and self.overwrite=False."


class StorageWriter(_CheckpointURL, _storage.StorageWriter, AsyncStager):
    """Saves a DCP checkpoint to a URL folder (``s3://``, ``ais://``, ``file://`` or a path).

    Takes torch's ``FileSystemWriter`` options and writes the same files:

    - ``single_file_per_rank``: one object per rank and thread bucket, ``{prefix}{n}.distcp``
      (``thread_count`` of them, empty ones too, as torch writes them); False: one object
      per item. ``prefix_strategy`` names the prefix of each rank's files.
    - ``thread_count``: objects serialized and uploaded in parallel.
    - ``per_thread_copy_ahead``: bytes of accelerator tensors copied to the CPU ahead of
      their upload (torch's overlapping loader; used, as in torch, when there is an
      accelerator and ``thread_count`` is 1).
    - ``cache_staged_state_dict``: ``dcp.async_save`` stages into one CPU copy kept for
      the next save (pinned when an accelerator is there).
    - ``sync_files``: local files are fsynced; an object store's completed upload already is.
    - ``overwrite=False``: a folder that already holds a checkpoint raises
      ``CheckpointExistsError``, a ``RuntimeError`` with torch's text.
    - ``_extensions``: torch's stream transforms (``ZStandard()``, ...), applied per item and
      named in the metadata, so torch's FileSystemReader undoes them.
    - ``serialization_format``: ``TORCH_SAVE`` only; ``SAFETENSORS`` raises NotImplementedError.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        config: ClientConfig | None = None,
        *,
        single_file_per_rank: bool = True,
        sync_files: bool = True,
        thread_count: int = 1,
        per_thread_copy_ahead: int = 10_000_000,
        cache_staged_state_dict: bool = False,
        overwrite: bool = True,
        _extensions: Sequence[StreamTransformExtension] | None = None,
        serialization_format: Any = None,
        prefix_strategy: PrefixStrategy | Callable[[int], str] | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive integer, got {thread_count!r}")
        if per_thread_copy_ahead < 0:
            raise ValueError(f"per_thread_copy_ahead must be >= 0, got {per_thread_copy_ahead}")
        self.url = os.fspath(url)
        self.config = config if config is not None else ClientConfig.from_env()
        self.single_file_per_rank = bool(single_file_per_rank)
        self.sync_files = bool(sync_files)
        self.thread_count = thread_count
        self.per_thread_copy_ahead = per_thread_copy_ahead
        self.cache_staged_state_dict = bool(cache_staged_state_dict)
        self.overwrite = overwrite
        self.extensions = _checked_extensions(_extensions)
        self.serialization_format = _serialization_format(
            serialization_format if serialization_format is not None
            else getattr(getattr(_torch_fs, "SerializationFormat", None), "TORCH_SAVE", None))
        self.prefix_strategy = prefix_strategy or DefaultPrefixStrategy()
        self.max_in_flight = max_in_flight
        self.save_id = uuid.uuid4().hex
        self.rank: int | None = None
        self.is_coordinator = False
        self.use_collectives = True
        self.state_dict_cache: Any = None

    def __repr__(self) -> str:
        return f"<aisio StorageWriter {self.url}>"

    @property
    def path(self) -> str:
        """The checkpoint's URL (torch's FileSystemWriter calls it ``path``)."""
        return self.url

    @property
    def client(self) -> _bridge.Client:
        """This process's client for the writes."""
        return client_for(self.config)

    @property
    def fs(self) -> UrlFileSystem:
        """torch's ``FileSystemBase`` over this writer's client (``exists``, ``rm_file``, ``rename``...)."""
        return UrlFileSystem(self.config)

    # -- staging (dcp.async_save)

    _synchronize_after_execute = False

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A CPU copy of ``state_dict`` for ``dcp.async_save`` to upload while training goes on."""
        from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

        if not self.cache_staged_state_dict:
            staged = _create_cpu_state_dict(state_dict)
            _copy_state_dict(state_dict, staged)
            return staged
        if self.state_dict_cache is None:
            self.state_dict_cache = _create_cpu_state_dict(state_dict,
                                                           pin_memory=_accelerator_in_use())
        return _copy_state_dict(state_dict, self.state_dict_cache)

    def synchronize_staging(self) -> None:
        """Staging is done when ``stage`` returns."""

    def close(self) -> None:
        """Drops the cached staging copy."""
        self.state_dict_cache = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "state_dict_cache": None}

    # -- the save protocol

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.url = os.fspath(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")
        self.use_collectives = kwargs.get("use_collectives", True)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.url, save_id=self.save_id)

    def _own_metadata(self) -> str:
        rank = None if self.use_collectives else self.rank
        return _join(self.url, _metadata_name(rank))

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if not self.overwrite:
            # as torch: without collectives the lowest rank's metadata stands for the checkpoint
            found = _join(self.url, _metadata_name(None if self.use_collectives else 0))
            if self._exists(found):
                raise CheckpointExistsError(_EXISTS, url=found)
        if self.rank is not None and not self.use_collectives:
            plan = dataclasses.replace(plan, storage_data=_FilePrefix(self.prefix_strategy(self.rank)))
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # an overwritten checkpoint must not look complete before the new .metadata lands
        self._remove(self._own_metadata())
        return [
            plan if plan.storage_data is not None
            else dataclasses.replace(plan, storage_data=_FilePrefix(self.prefix_strategy(i)))
            for i, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        prefix = getattr(plan.storage_data, "prefix", None)
        if not isinstance(prefix, str):
            raise ValueError("the save plan has no file prefix; was prepare_global_plan called?")
        groups = (_buckets(plan.items, self.thread_count) if self.single_file_per_rank
                  else [[item] for item in plan.items])
        files = [(f"{prefix}{n}{_SUFFIX}", items) for n, items in enumerate(groups)]
        workers = min(self.thread_count, len(files))
        if workers <= 1:
            results = [self._write_file(name, items, planner) for name, items in files]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="aisio-dcp-save") as pool:
                results = list(pool.map(lambda f: self._write_file(f[0], f[1], planner), files))
        return _done([r for rs in results for r in rs])

    def _tensors(self, items: list[WriteItem], planner: SavePlanner
                 ) -> Iterator[tuple[torch.Tensor, WriteItem]]:
        """The items' tensors on the CPU, copied ahead from an accelerator as torch does."""
        if self.per_thread_copy_ahead > 0 and self.thread_count == 1 and _accelerator_in_use():
            loader = _torch_fs._OverlappingCpuLoader(
                planner.resolve_data, inflight_threshhold=self.per_thread_copy_ahead)
            for item in items:
                loader.add(item.tensor_storage_size() or 0, item)
            for tensor, obj in loader.values():
                yield _savable(tensor), cast("WriteItem", obj)
            return
        for item in items:
            yield _savable(planner.resolve_data(item)), item

    def _write_file(self, name: str, items: list[WriteItem], planner: SavePlanner) -> list[WriteResult]:
        """Serialize ``items`` (byte items first, as torch does) into one uploaded object."""
        url = _join(self.url, name)
        stream = _UploadStream(self.client.writer(url, max_in_flight=self.max_in_flight),
                               _checksum.upload_algorithm())
        results = []
        try:
            for item in items:
                if item.type == WriteItemType.BYTE_IO:
                    data = planner.resolve_data(item)
                    assert isinstance(data, io.BytesIO)
                    results.append(self._write_item(stream, name, item, data.getbuffer()))
            tensors = [item for item in items if item.type != WriteItemType.BYTE_IO]
            for tensor, item in self._tensors(tensors, planner):
                results.append(self._write_item(stream, name, item, tensor))
            stream.close()
        except BaseException:
            stream.abort()
            raise
        if self.sync_files:
            _fsync_local(url)
        return results

    def _write_item(self, stream: _UploadStream, name: str, item: WriteItem,
                    data: torch.Tensor | memoryview) -> WriteResult:
        """One item at the stream's end, through the extensions' transforms if there are any."""
        offset, before = stream.tell(), stream.crc
        target: Any = stream
        for ex in self.extensions:
            target = ex.transform_to(target if target is not stream else _Unclosable(stream))
        if isinstance(data, torch.Tensor):
            torch.save(data, cast("IO[bytes]", target))
        else:
            target.write(data)
        if target is not stream:
            target.close()
        length = stream.tell() - offset
        info = (_StorageInfo(name, offset, length) if not self.extensions else _StorageInfo(
            name, offset, length,
            transform_descriptors=[ex.get_descriptor() for ex in reversed(self.extensions)]))
        # the item's CRC: the stream's CRC after it, with the CRC before it cut out (XOR)
        crc = _checksum.combine(stream.algorithm, before, stream.crc, length)
        setattr(info, _ITEM_CRC, (stream.algorithm, crc))  # pickled with it to the coordinator
        return WriteResult(index=item.index, size_in_bytes=length, storage_data=info)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Write ``.metadata`` in one PUT, after every rank's files are complete."""
        metadata.version = _DCP_VERSION
        metadata.storage_data = {r.index: r.storage_data for rs in results for r in rs}
        crcs: dict[Any, int] = {}
        algorithms = set()
        for index, info in metadata.storage_data.items():
            carried = vars(info).pop(_ITEM_CRC, None)  # the stored _StorageInfo stays torch's
            if carried is not None:
                algorithms.add(carried[0])
                crcs[index] = carried[1]
        if len(algorithms) == 1 and len(crcs) == len(metadata.storage_data):
            setattr(metadata, _CHECKSUMS, {"algorithm": algorithms.pop(), "items": crcs})
        metadata.storage_meta = self.storage_meta()
        url = self._own_metadata()
        self.client.put(url, pickle.dumps(metadata))
        if self.sync_files:
            _fsync_local(url)

    def _exists(self, url: str) -> bool:
        try:
            self.client.head(url)
        except ObjectNotFoundError:
            return False
        return True

    def _remove(self, url: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self.client.delete(url)


# ---------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class LoadStatistics:
    """How the last ``read_data`` went: items landed in place, copied, or read whole."""

    files: int = 0
    in_place: int = 0
    copied: int = 0
    whole: int = 0
    refetched: int = 0
    requests: int = 0


@dataclass
class _Stored:
    """One stored item of a .distcp file and the read items this rank needs from it."""

    info: Any  # torch's _StorageInfo
    reads: list[ReadItem]
    targets: list[torch.Tensor] = field(default_factory=list)
    dtype: torch.dtype | None = None
    shape: tuple[int, ...] = ()
    mode: str = "whole"  # "in_place" | "copied" | "whole"
    data_start: int = 0
    run: tuple[int, int] = (0, 0)
    head: bytearray = field(default_factory=bytearray)
    data: bytearray = field(default_factory=bytearray)

    def segments(self) -> list[tuple[int, memoryview]]:
        """(file offset, buffer) pairs this item's bytes go to."""
        off = self.info.offset
        if self.mode == "whole":
            return [(off, memoryview(self.data))] if self.data else []
        segs = [(off, memoryview(self.head))]
        assert self.dtype is not None
        payload = off + self.data_start + self.run[0] * self.dtype.itemsize
        view = writable_view(self.targets[0]) if self.mode == "in_place" else memoryview(self.data)
        if len(view):
            segs.append((payload, view))
        return segs


class StorageReader(_CheckpointURL, _storage.StorageReader):
    """Loads a DCP checkpoint from a URL folder (``s3://``, ``ais://``, ``file://`` or a path).

    ``reader_constructor`` is ``ReaderConstructor.dcp_optimized()`` when None: ranges
    closer than its ``max_gap_size`` share a GET, and the spans of all files are cut into
    about ``streams`` GETs in flight (pieces no smaller than ``config.part_size``): more
    streams suit S3, fewer suit servers that pay per request for the whole object.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        config: ClientConfig | None = None,
        reader_constructor: ReaderConstructor | None = None,
        *,
        streams: int = 8,
        _extension_registry: ExtensionRegistry | None = None,
    ) -> None:
        super().__init__()
        if streams < 1:
            raise ValueError(f"streams must be positive, got {streams}")
        self.url = os.fspath(url)
        self.config = config if config is not None else ClientConfig.from_env()
        self.reader_constructor = reader_constructor or ReaderConstructor.dcp_optimized()
        self.streams = streams
        self.extension_registry = _extension_registry
        self.load_id = uuid.uuid4().hex
        self.metadata: Metadata | None = None
        self.storage_data: dict[Any, Any] = {}
        self._raw_metadata: dict[str, bytes] = {}
        self._chunks: dict[tuple[str, tuple[int, ...]], tuple[torch.dtype, tuple[int, ...]]] = {}
        self._checksums: tuple[str, dict[Any, int]] | None = None
        self._stats = LoadStatistics()

    def __repr__(self) -> str:
        return f"<aisio StorageReader {self.url} {self.reader_constructor.kind}>"

    @property
    def client(self) -> _bridge.Client:
        """This process's client for the reads (unsplit GETs with dcp_optimized: spans are cut here)."""
        config = self.config
        if self.reader_constructor.kind == "dcp_optimized":
            config = config.replace(part_size=_WHOLE_GET)
        return client_for(config)

    @property
    def path(self) -> str:
        """The checkpoint's URL (torch's FileSystemReader calls it ``path``)."""
        return self.url

    @property
    def fs(self) -> UrlFileSystem:
        """torch's ``FileSystemBase`` over this reader's client, reading with its reader constructor."""
        return UrlFileSystem(self.config, self.reader_constructor)

    def statistics(self) -> LoadStatistics:
        """How the last ``read_data`` of this reader went."""
        return self._stats

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.url = os.fspath(checkpoint_id)
        self.load_id = uuid.uuid4().hex
        self.metadata, self.storage_data = None, {}
        self._raw_metadata.clear()
        self._chunks.clear()

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The checkpoint's ``.metadata`` (``__{rank}.metadata`` with ``rank=``), fetched once."""
        name = _metadata_name(kwargs.get("rank"))
        raw = self._raw_metadata.get(name)
        if raw is None:
            url = _join(self.url, name)
            try:
                raw = self._raw_metadata[name] = self.client.get(url)
            except ObjectNotFoundError as exc:
                raise ObjectNotFoundError(
                    f"no DCP checkpoint at {self.url}: {url} does not exist", url=url) from exc
        metadata = _unpickled_metadata(raw, _join(self.url, name))
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        if metadata.storage_data is None:
            raise ValueError(f"the metadata of {self.url} has no storage_data")
        self.metadata, self.storage_data = metadata, metadata.storage_data
        self._checksums = _item_checksums(metadata)
        self._chunks.clear()
        for fqn, md in metadata.state_dict_metadata.items():
            if isinstance(md, TensorStorageMetadata):
                for chunk in md.chunks:
                    self._chunks[(fqn, tuple(chunk.offsets))] = (md.properties.dtype,
                                                                 tuple(chunk.sizes))

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Order the items by storage offset, as the S3 connector does.

        A reader constructor with ``set_item_ranges_by_file`` (the connector's protocol) is
        handed the byte ranges of the plan, as the connector's reader hands them.
        """
        data = self.storage_data
        items = sorted(plan.items, key=lambda r: data[r.storage_index].offset)
        inject = getattr(self.reader_constructor, "set_item_ranges_by_file", None)
        if callable(inject):
            inject(items, data, self.url)
        return dataclasses.replace(plan, items=items)

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    # -- reading

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Fetch every file of the plan in one coroutine, then check and commit item by item."""
        files: dict[str, list[_Stored]] = {}
        by_index: dict[Any, _Stored] = {}
        for req in plan.items:
            stored = by_index.get(req.storage_index)
            if stored is None:
                info = self.storage_data[req.storage_index]
                stored = by_index[req.storage_index] = _Stored(info, [])
                files.setdefault(info.relative_path, []).append(stored)
            stored.reads.append(req)
        for stored in by_index.values():
            self._plan(stored, planner)
        before = self._requests()
        self._fetch(files)
        refetch = {path: bad for path, items in files.items()
                   if (bad := [s for s in items if s.mode != "whole" and not self._verified(s)])}
        for items in refetch.values():
            for stored in items:
                stored.mode, stored.data = "whole", bytearray(stored.info.length)
        if refetch:
            self._fetch(refetch, check_sizes=False)
        for index, stored in by_index.items():
            if stored.mode == "whole":
                self._check_item(index, stored)
        for items in files.values():
            for stored in items:
                self._commit(stored, planner)
        modes = [s.mode for s in by_index.values()]
        self._stats = LoadStatistics(
            files=len(files), in_place=modes.count("in_place"), copied=modes.count("copied"),
            whole=modes.count("whole"), refetched=sum(map(len, refetch.values())),
            requests=self._requests() - before)
        return _done(None)

    def _requests(self) -> int:
        return self.client.statistics().requests

    def _plan(self, stored: _Stored, planner: LoadPlanner) -> None:
        """Choose how a stored item is read: into the destination, into a scratch run, or whole."""
        info, req = stored.info, stored.reads[0]
        if req.type == LoadItemType.BYTE_IO:
            stored.data = bytearray(info.length)
            return
        stored.targets = [planner.resolve_tensor(r).detach() for r in stored.reads]
        chunk = self._chunks.get((req.storage_index.fqn, tuple(req.storage_index.offset or ())))
        if chunk is not None:
            stored.dtype, stored.shape = chunk
        predicted = layout.predict_layout(*chunk) if chunk is not None else None
        if (predicted is None or predicted[1] != info.length or len(stored.reads) > 1
                or getattr(info, "transform_descriptors", None) or stored.dtype is None):
            stored.data = bytearray(info.length)
            return
        stored.data_start = predicted[0]
        a, b, exact = layout.box_run(stored.shape, req.storage_offsets, req.lengths)
        stored.run = (a, b)
        stored.head = bytearray(stored.data_start)
        target = stored.targets[0]
        if (exact and target.device.type == "cpu" and target.dtype == stored.dtype
                and target.layout == torch.strided and target.is_contiguous()
                and not target.is_conj() and not target.is_neg()
                and tuple(target.shape) == tuple(req.lengths)):
            stored.mode = "in_place"
        else:
            stored.mode = "copied"
            stored.data = bytearray((b - a) * stored.dtype.itemsize)

    def _verified(self, stored: _Stored) -> bool:
        """Does the item's own header confirm where the prediction put its payload?"""
        header = layout.parse_header(stored.head)
        assert stored.dtype is not None
        return (header is not None and header.data_start == stored.data_start
                and header.is_plain(stored.dtype, stored.shape))

    def _check_item(self, index: Any, stored: _Stored) -> None:
        """An item read whole must have the CRC the writer recorded (if it recorded one)."""
        if self._checksums is None or index not in self._checksums[1]:
            return
        algorithm, crcs = self._checksums
        got = _checksum.function(algorithm)(stored.data, 0)
        if got != crcs[index]:
            url = _join(self.url, stored.info.relative_path)
            raise _corrupt_item(url, index, stored.info, algorithm, crcs[index], got)

    def _commit(self, stored: _Stored, planner: LoadPlanner) -> None:
        """Hand the item to the planner: bytes to load_bytes, tensors copied in and committed."""
        req = stored.reads[0]
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, io.BytesIO(self._untransformed(stored).read()))
            return
        if stored.mode == "copied":
            assert stored.dtype is not None
            flat = _frombuffer(stored.data, stored.dtype)
            src = layout.box_view(flat, stored.shape, req.lengths)
            _copy_into(stored.targets[0], src, req)
        elif stored.mode == "whole":
            whole = self._load_whole(stored)
            for r, target in zip(stored.reads, stored.targets, strict=True):
                _copy_into(target, layout.narrow(whole, r.storage_offsets, r.lengths), r)
        for r, target in zip(stored.reads, stored.targets, strict=True):
            planner.commit_tensor(r, target)

    def _untransformed(self, stored: _Stored) -> io.BytesIO:
        """The item's bytes with any stream transforms (torch's extensions) undone."""
        raw = io.BytesIO(stored.data)
        descriptors = getattr(stored.info, "transform_descriptors", None)
        if not descriptors:
            return raw
        transforms = _torch_fs._StorageReaderTransforms(self.extension_registry)
        return io.BytesIO(transforms.transform_load_stream(stored.reads[0], descriptors, raw).read())

    def _load_whole(self, stored: _Stored) -> torch.Tensor:
        """The stored tensor from the item's full bytes: by its header if plain, else torch.load."""
        if stored.dtype is not None and not getattr(stored.info, "transform_descriptors", None):
            header = layout.parse_header(memoryview(stored.data)[:1 << 16])
            if header is not None and header.is_plain(stored.dtype, stored.shape):
                end = header.data_start + header.storage_nbytes
                if end <= len(stored.data):
                    flat = _frombuffer(memoryview(stored.data)[header.data_start:end], stored.dtype)
                    return flat.view(stored.shape)
        loaded = torch.load(self._untransformed(stored), map_location="cpu", weights_only=True)
        if not isinstance(loaded, torch.Tensor):
            raise ValueError(f"item {stored.reads[0].storage_index.fqn} of "
                             f"{_join(self.url, stored.info.relative_path)} is not a tensor")
        return loaded

    # -- I/O

    def _file_ends(self) -> dict[str, int]:
        """The size each file must have at least, by the metadata."""
        ends: dict[str, int] = {}
        for info in self.storage_data.values():
            ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
        return ends

    def _fetch(self, files: dict[str, list[_Stored]], *, check_sizes: bool = True) -> None:
        """Fill the items' buffers; with ``check_sizes`` a file shorter than its metadata fails.

        The check costs no request of its own: the scatter read also fetches each file's
        last byte (its zip trailer is usually in the same GET), the readers know the size.
        """
        ends = self._file_ends()
        segments: dict[str, list[tuple[int, memoryview]]] = {}
        need: dict[str, int] = {}
        for path, items in files.items():
            url = _join(self.url, path)
            segments[url] = [seg for s in items for seg in s.segments()]
            need[url] = ends[path] if check_sizes else 0
            last = max((off + len(v) for off, v in segments[url]), default=0)
            if check_sizes and ends[path] > last:
                segments[url].append((ends[path] - 1, memoryview(bytearray(1))))
        if self.reader_constructor.kind == "dcp_optimized":
            _bridge.run(self._scatter_all, segments, need)
        else:
            _bridge.run(self._read_in_turn, segments, need)

    async def _scatter_all(self, segments: dict[str, list[tuple[int, memoryview]]],
                           need: dict[str, int]) -> None:
        """All files at once: coalesced spans cut into about ``streams`` similar GETs."""
        aclient = self.client.aclient
        max_gap = self.reader_constructor.max_gap_size
        spans = {url: coalesce([(off, off + len(v)) for off, v in segs], max_gap)
                 for url, segs in segments.items()}
        total = sum(s.size for ss in spans.values() for s in ss)
        part = max(self.config.part_size, math.ceil(total / self.streams))

        async def one_file(url: str) -> None:
            segs = segments[url]
            pieces = [_cut(span.start, span.end, [segs[i] for i in span.members], part)
                      for span in spans[url] if span.size]
            try:
                async with anyio.create_task_group() as tg:
                    for piece in (p for ps in pieces for p in ps):
                        tg.start_soon(aclient.get_ranges_into, url, piece, math.inf)
            except BaseExceptionGroup as group:
                raise first_error(group) from None

        try:
            async with anyio.create_task_group() as tg:
                for url in segments:
                    tg.start_soon(self._explained, one_file, url, need[url])
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _read_in_turn(self, segments: dict[str, list[tuple[int, memoryview]]],
                            need: dict[str, int]) -> None:
        """One file after another through the configured reader, items in offset order."""
        aclient = self.client.aclient

        async def one_file(url: str) -> None:
            reader = await aclient.open(url, self.reader_constructor)
            try:
                if reader.size < need[url]:
                    raise _truncated(url, reader.size, need[url], self.url)
                for off, view in sorted(segments[url], key=lambda s: s[0]):
                    reader.seek(off)
                    got = 0
                    while got < len(view):
                        n = await reader.readinto(view[got:])
                        if n == 0:
                            raise RangeError(f"short object {url}", url=url)
                        got += n
            finally:
                await reader.aclose()

        for url in segments:
            await self._explained(one_file, url, need[url])

    async def _explained(self, fn: Callable[[str], Any], url: str, need: int) -> None:
        """Run ``fn(url)``, turning a missing or short object into an error that names it."""
        try:
            await fn(url)
        except ObjectNotFoundError as exc:
            raise ObjectNotFoundError(
                f"checkpoint file {url} is missing (it is listed in the metadata of {self.url})",
                url=url) from exc
        except RangeError as exc:
            size = (await self.client.aclient.head(url)).size
            if size >= need:
                raise
            raise _truncated(url, size, need, self.url) from exc


def _unpickled_metadata(raw: bytes, url: str) -> Metadata:
    """The ``Metadata`` pickled in ``raw``; anything else raises CheckpointFormatError naming ``url``."""
    try:
        metadata = pickle.loads(raw)
    except Exception as exc:  # truncated or foreign bytes fail in many ways inside pickle
        raise CheckpointFormatError(
            f"{url} is not DCP metadata: its {len(raw)} bytes do not unpickle "
            f"({type(exc).__name__}: {exc}); the checkpoint is truncated or corrupt", url=url
        ) from exc
    if not isinstance(metadata, Metadata):
        raise CheckpointFormatError(
            f"{url} is not DCP metadata: it holds a pickled {type(metadata).__name__}", url=url)
    return metadata


def _item_checksums(metadata: Metadata) -> tuple[str, dict[Any, int]] | None:
    """(algorithm, {index: CRC}) that aisio's writer recorded, if it did and it can be computed."""
    recorded = getattr(metadata, _CHECKSUMS, None)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("items"), dict):
        return None
    algorithm = recorded.get("algorithm")
    try:
        _checksum.function(str(algorithm))
    except ValueError:
        return None
    return str(algorithm), recorded["items"]


def _corrupt_item(url: str, index: Any, info: Any, algorithm: str, expected: int,
                  got: int) -> IntegrityError:
    return IntegrityError(
        f"checkpoint file {url}: item {index.fqn} (bytes {info.offset} to "
        f"{info.offset + info.length}) does not match the {algorithm} the checkpoint recorded "
        f"({expected:08x}, read {got:08x}): the file is corrupt", url=url, algorithm=algorithm,
        expected=f"{expected:08x}", actual=f"{got:08x}")


def _truncated(url: str, size: int, need: int, checkpoint: str) -> RangeError:
    return RangeError(f"checkpoint file {url} is truncated: it has {size} bytes but the "
                      f"metadata of {checkpoint} expects {need}", url=url)


def _cut(start: int, end: int, segs: list[tuple[int, memoryview]],
         part: int) -> list[list[tuple[int, memoryview]]]:
    """Cut the span [start, end) into similar pieces of at most ``part`` bytes, segments sliced."""
    count = max(1, math.ceil((end - start) / part))
    step = math.ceil((end - start) / count)
    pieces: list[list[tuple[int, memoryview]]] = []
    for lo in range(start, end, step):
        hi = min(lo + step, end)
        piece = [(max(off, lo), view[max(off, lo) - off:min(off + len(view), hi) - off])
                 for off, view in segs if off < hi and off + len(view) > lo]
        if piece:
            pieces.append(piece)
    return pieces


def _frombuffer(data: Any, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D ``dtype`` tensor over ``data``'s bytes, without a copy."""
    view = memoryview(data).cast("B")
    if not len(view):
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(view, dtype=torch.uint8).view(dtype)


def _copy_into(target: torch.Tensor, src: torch.Tensor, req: ReadItem) -> None:
    if tuple(target.shape) != tuple(src.shape):
        raise ValueError(f"{req.storage_index.fqn}: destination has size {tuple(target.shape)} "
                         f"but the checkpoint holds {tuple(src.shape)}")
    target.copy_(src)


# ---------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` checked of a checkpoint: files, items, bytes read, and what was wrong.

    ``checksummed`` items were compared with the CRC the writer recorded; the rest (a
    checkpoint written by torch's own writer, or by an older aisio) only with their sizes.
    """

    url: str
    files: int = 0
    items: int = 0
    checksummed: int = 0
    bytes_read: int = 0
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


_VERIFY_CHUNK = 8 * 2**20  # bytes a file is read by, hashed into the items they belong to
_VERIFY_FILES = 4  # files read at once
_MAX_LISTED = 20  # problems named in the error's message


def verify(url: str | os.PathLike[str], config: ClientConfig | None = None, *,
           rank: int | None = None) -> VerifyReport:
    """Check a DCP checkpoint without loading it: every ``.distcp`` file is read front to back
    and each item's bytes are compared with what the metadata says.

    Every file the metadata names must exist and hold each item's byte range; an item with a
    CRC recorded by aisio's writer must have that CRC; a whole file read from a store that
    keeps its checksum is also checked against it. Raises IntegrityError listing what is
    wrong (missing or short files too), else returns the ``VerifyReport``. ``rank``: the
    metadata of a checkpoint saved without collectives (``__{rank}.metadata``).
    """
    client = client_for(config if config is not None else ClientConfig.from_env())
    report = _bridge.run(averify, client.aclient, os.fspath(url), rank)
    return report


async def averify(client: AsyncClient, url: str, rank: int | None = None) -> VerifyReport:
    """``verify`` on an open AsyncClient (the ``aisio verify`` command's way)."""
    name = _metadata_name(rank)
    meta_url = _join(url, name)
    try:
        raw = await client.get(meta_url)
    except ObjectNotFoundError as exc:
        raise ObjectNotFoundError(f"no DCP checkpoint at {url}: {meta_url} does not exist",
                                  url=meta_url) from exc
    metadata = _unpickled_metadata(raw, meta_url)
    if not isinstance(metadata.storage_data, dict):
        raise CheckpointFormatError(f"{meta_url} has no storage_data", url=meta_url)
    checksums = _item_checksums(metadata)
    files: dict[str, list[tuple[Any, Any]]] = {}
    for index, info in metadata.storage_data.items():
        files.setdefault(info.relative_path, []).append((index, info))
    problems: list[str] = []
    totals = [0, 0]  # bytes read, items checksummed
    limiter = anyio.Semaphore(_VERIFY_FILES)

    async def one_file(path: str, items: list[tuple[Any, Any]]) -> None:
        async with limiter:
            file_url = _join(url, path)
            try:
                read, checked = await _verify_file(client, file_url, items, checksums)
            except ObjectNotFoundError:
                problems.append(f"{file_url}: missing (the metadata lists {len(items)} items in it)")
                return
            except IntegrityError as exc:  # the store's own checksum of the whole file
                problems.append(str(exc))
                return
            except _Problems as found:
                problems.extend(found.problems)
                read, checked = found.read, found.checked
            totals[0] += read
            totals[1] += checked

    async with anyio.create_task_group() as tg:
        for path, items in sorted(files.items()):
            tg.start_soon(one_file, path, items)
    report = VerifyReport(url, len(files), len(metadata.storage_data), totals[1], totals[0],
                          tuple(sorted(problems)))
    if problems:
        listed = "; ".join(report.problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        error = IntegrityError(f"checkpoint {url} is damaged: {listed}{more}", url=url)
        error.report = report  # type: ignore[attr-defined]
        raise error
    return report


class _Problems(Exception):
    """What was wrong with one file, and how much of it was read and checked (internal)."""

    def __init__(self, problems: list[str], read: int, checked: int) -> None:
        super().__init__(problems)
        self.problems, self.read, self.checked = problems, read, checked


async def _verify_file(client: AsyncClient, url: str, items: list[tuple[Any, Any]],
                       checksums: tuple[str, dict[Any, int]] | None) -> tuple[int, int]:
    """Read one file front to back, hashing each item's bytes; (bytes read, items checksummed).

    Raises _Problems with what did not match (items past the end, wrong CRCs).
    """
    items = sorted(items, key=lambda pair: pair[1].offset)
    crcs = checksums[1] if checksums is not None else {}
    fn = _checksum.function(checksums[0]) if checksums is not None else None
    running = {i: 0 for i, (index, _) in enumerate(items) if index in crcs}
    problems: list[str] = []
    buf = memoryview(bytearray(_VERIFY_CHUNK))
    pos = first = 0  # first: the earliest item that may still get bytes
    async with client.stream(url) as stream:
        await stream.open()
        size = stream.object_size
        while True:
            n = await stream.readinto(buf)
            if n == 0:
                break
            end = pos + n
            while first < len(items) and items[first][1].offset + items[first][1].length <= pos:
                first += 1
            for i in range(first, len(items)):
                info = items[i][1]
                if info.offset >= end:
                    break
                if fn is not None and i in running:
                    lo, hi = max(info.offset, pos), min(info.offset + info.length, end)
                    if lo < hi:
                        running[i] = fn(buf[lo - pos:hi - pos], running[i])
            pos = end
    for i, (index, info) in enumerate(items):
        if info.offset + info.length > size:
            problems.append(f"{url}: item {index.fqn} (bytes {info.offset} to "
                            f"{info.offset + info.length}) is past the end of the file "
                            f"({size} bytes): the file is truncated")
        elif i in running and checksums is not None and running[i] != crcs[index]:
            problems.append(str(_corrupt_item(url, index, info, checksums[0], crcs[index],
                                              running[i])))
    if problems:
        raise _Problems(problems, pos, len(running))
    return pos, len(running)


# ---------------------------------------------------------------------------- S3 connector names


class S3FileSystem(UrlFileSystem):
    """The S3 connector's ``S3FileSystem(region, s3_client, s3client_config, reader_constructor)``.

    ``s3_client`` may be an ``aisio.Client`` (its config is used); the connector's own
    client objects are not accepted.
    """

    def __init__(self, region: str, s3_client: Any = None, s3client_config: Any = None,
                 reader_constructor: ReaderConstructor | None = None, *,
                 config: ClientConfig | None = None) -> None:
        if s3_client is not None:
            if not isinstance(s3_client, (_bridge.Client, AsyncClient)):
                raise TypeError("s3_client must be an aisio.Client (or left out: the file system "
                                f"makes its own); got {type(s3_client).__name__}")
            config = config if config is not None else s3_client.config
        super().__init__(compat_config(region, None, s3client_config, config),
                         reader_constructor or ReaderConstructor.default())
        self.region = region


class S3StorageWriter(StorageWriter):
    """The S3 connector's ``S3StorageWriter(region, path, ...)`` over ``StorageWriter``.

    ``kwargs`` are torch's FileSystemWriter options, each honoured as ``StorageWriter``
    honours it (``sync_files`` is accepted too; an upload is durable once complete).
    """

    def __init__(self, region: str, path: str | os.PathLike[str], s3client_config: Any = None,
                 prefix_strategy: PrefixStrategy | None = None, thread_count: int = 1,
                 **kwargs: Any) -> None:
        config = kwargs.pop("config", None)
        super().__init__(path, compat_config(region, None, s3client_config, config),
                         thread_count=thread_count, prefix_strategy=prefix_strategy, **kwargs)
        self.region = region

    @property
    def fs(self) -> S3FileSystem:
        """The connector's ``S3FileSystem`` over this writer's settings."""
        return S3FileSystem(self.region, config=self.config)


class S3StorageReader(StorageReader):
    """The S3 connector's ``S3StorageReader(region, path, ...)`` over ``StorageReader``."""

    def __init__(self, region: str, path: str | os.PathLike[str], s3client_config: Any = None,
                 reader_constructor: ReaderConstructor | None = None, *,
                 config: ClientConfig | None = None) -> None:
        super().__init__(path, compat_config(region, None, s3client_config, config),
                         reader_constructor)
        self.region = region

    @property
    def fs(self) -> S3FileSystem:
        """The connector's ``S3FileSystem`` over this reader's settings and reader constructor."""
        return S3FileSystem(self.region, reader_constructor=self.reader_constructor,
                            config=self.config)
