"""aisio.torch.dcp on every backend: round trips, interop with torch's own reader and writer,
two ranks with resharding, errors that name the file, and the zip layout prediction."""

from __future__ import annotations

import io
import os
import pickle
import socket
import threading
import zlib
from pathlib import Path
from typing import IO, Any, cast

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint._extension import (
    ExtensionRegistry,
    StreamTransformExtension,
    ZStandard,
)
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import (
    FileSystemReader,
    FileSystemWriter,
    SerializationFormat,
)
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.state_dict_loader import load
from torch.distributed.checkpoint.state_dict_saver import async_save, save
from torch.multiprocessing.spawn import spawn

import aisio
from aisio.errors import ObjectNotFoundError, RangeError
from aisio.torch import _dcp_layout as layout
from aisio.torch.dcp import (
    BinaryPrefixStrategy,
    CheckpointExistsError,
    CheckpointFormatError,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3StorageReader,
    S3StorageWriter,
    StorageReader,
    StorageWriter,
)
from tests.conftest import Store

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled, unavailable or uninitialized")

READERS = {
    "default": None,
    "sequential": aisio.ReaderConstructor.sequential(),
    "range_based": aisio.ReaderConstructor.range_based(buffer_size=4096),
}


def state() -> dict[str, Any]:
    """A state dict with every kind of item DCP stores."""
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(300, 17, generator=g),
        "bf16": torch.randn(129, 33, generator=g).to(torch.bfloat16),
        "i8": torch.randint(-128, 127, (1000,), dtype=torch.int8, generator=g),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "transposed": torch.randn(64, 48, generator=g).t(),  # non-contiguous, whole storage
        "sliced": torch.randn(10, 10, generator=g)[:, 2:5],  # non-contiguous view
        "nested": {"w": torch.randn(5, 5, generator=g), "step": 42},
        "extra": {"names": ["a", "b"], "lr": 0.1},  # BYTE_IO items
    }


def blank(non_contiguous: bool = False) -> dict[str, Any]:
    """Destination tensors of the right shapes, zeroed; optionally non-contiguous ones."""
    out = {
        "f32": torch.zeros(300, 17), "bf16": torch.zeros(129, 33, dtype=torch.bfloat16),
        "i8": torch.zeros(1000, dtype=torch.int8), "scalar": torch.tensor(0.0),
        "empty": torch.empty(0, 4), "transposed": torch.zeros(48, 64), "sliced": torch.zeros(10, 3),
        "nested": {"w": torch.zeros(5, 5), "step": 0}, "extra": {"names": [], "lr": 0.0},
    }
    if non_contiguous:
        out["f32"] = torch.zeros(17, 300).t()
        out["bf16"] = torch.zeros(129, 66, dtype=torch.bfloat16)[:, ::2]
    return out


def assert_same(expected: Any, got: Any, path: str = "") -> None:
    if isinstance(expected, dict):
        assert set(expected) == set(got), path
        for key in expected:
            assert_same(expected[key], got[key], f"{path}/{key}")
    elif isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and got.shape == expected.shape, path
        assert torch.equal(got, expected), path
    else:
        assert got == expected, path


def rank_error(exc: CheckpointException) -> BaseException:
    """The exception rank 0 raised (DCP keeps it with its traceback)."""
    failure = exc.failures[0]
    return failure[0] if isinstance(failure, tuple) else failure


def canon(url: str) -> str:
    """The URL as aisio writes it in errors (plain paths become file:// URLs)."""
    return aisio._url.parse_url(url).url


def names(store: Store, prefix: str) -> list[str]:
    with aisio.Client(store.config) as client:
        base = aisio._url.parse_url(store.url(prefix)).key
        return sorted(aisio._url.parse_url(i.url).key[len(base):]
                      for i in client.list(store.url(prefix)))


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("reader", list(READERS))
def test_round_trip(store: Store, reader: str) -> None:
    url = store.url("ckpt")
    save(state(), storage_writer=StorageWriter(url, store.config, thread_count=3))
    assert names(store, "ckpt/") == [".metadata", "__0_0.distcp", "__0_1.distcp", "__0_2.distcp"]
    for non_contiguous in (False, True):
        out = blank(non_contiguous)
        storage = StorageReader(url, store.config, READERS[reader])
        load(out, storage_reader=storage)
        assert_same(state(), out)
        stats = storage.statistics()
        assert stats.files == 3 and stats.refetched == 0
        # aisio writes every tensor row-major, so each lands in place unless the
        # destination is non-contiguous
        assert stats.in_place == (5 if non_contiguous else 7)
        assert stats.copied == (2 if non_contiguous else 0)


def test_default_reader_one_get_per_file(store: Store) -> None:
    url = store.url("ckpt")
    save(state(), storage_writer=StorageWriter(url, store.config, thread_count=2))
    storage = StorageReader(url, store.config)
    load(blank(), storage_reader=storage)
    assert storage.statistics().requests == 2
    # max_gap_size=0 and many streams: one GET per coalesced run, cut into parts
    storage = StorageReader(url, store.config.replace(part_size=1024),
                            aisio.ReaderConstructor.dcp_optimized(0), streams=64)
    out = blank()
    load(out, storage_reader=storage)
    assert_same(state(), out)
    assert storage.statistics().requests > 20


def test_torch_checkpoint_uploaded_as_is_restores(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "torch-ckpt"
    save(state(), storage_writer=FileSystemWriter(folder, thread_count=2))
    with aisio.Client(store.config) as client:
        for path in folder.iterdir():
            client.put(store.url(f"up/{path.name}"), path.read_bytes())
    for reader in READERS.values():
        out = blank()
        storage = StorageReader(store.url("up/"), store.config, reader)
        load(out, storage_reader=storage)
        assert_same(state(), out)
        # torch keeps the transposed tensor's strides: its header says so, and it is re-read
        assert storage.statistics().refetched == 1


def test_aisio_checkpoint_restores_with_torch_reader(store: Store, tmp_path: Path) -> None:
    save(state(), storage_writer=StorageWriter(store.url("ckpt"), store.config, thread_count=2))
    folder = tmp_path / "download"
    folder.mkdir()
    with aisio.Client(store.config) as client:
        for name in names(store, "ckpt/"):
            (folder / name).write_bytes(client.get(store.url(f"ckpt/{name}")))
    out = blank()
    load(out, storage_reader=FileSystemReader(folder))
    assert_same(state(), out)


def test_checkpoint_id_and_reset(store: Store) -> None:
    writer = StorageWriter("unused", store.config)
    save(state(), storage_writer=writer, checkpoint_id=store.url("a"))
    assert writer.checkpoint_id == store.url("a")
    reader = StorageReader("unused", store.config)
    out = blank()
    load(out, storage_reader=reader, checkpoint_id=store.url("a"))
    assert_same(state(), out)
    assert StorageReader.validate_checkpoint_id(store.url("a"))
    assert StorageWriter.validate_checkpoint_id("/some/path")
    assert not StorageReader.validate_checkpoint_id("ftp://host/x")


def test_metadata_is_read_once_until_reset(store: Store) -> None:
    save(state(), storage_writer=StorageWriter(store.url("c"), store.config))
    reader = StorageReader(store.url("c"), store.config)
    before = reader.client.statistics().requests
    first, second = reader.read_metadata(), reader.read_metadata()
    assert reader.client.statistics().requests == before + 1
    assert first.state_dict_metadata.keys() == second.state_dict_metadata.keys()
    reader.reset()
    reader.read_metadata()
    assert reader.client.statistics().requests == before + 2


def test_readers_and_writers_pickle(store: Store) -> None:
    reader = StorageReader(store.url("c"), store.config, aisio.ReaderConstructor.sequential())
    writer = StorageWriter(store.url("c"), store.config, thread_count=2,
                           prefix_strategy=HexPrefixStrategy(prefix_count=4))
    save(state(), storage_writer=pickle.loads(pickle.dumps(writer)))
    reader.read_metadata()
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.reader_constructor == reader.reader_constructor and copy.config == store.config
    out = blank()
    load(out, storage_reader=copy)
    assert_same(state(), out)


def test_rank_local_metadata(store: Store) -> None:
    url = store.url("local")
    save(state(), storage_writer=StorageWriter(url, store.config), use_collectives=False)
    assert names(store, "local/") == ["__0.metadata", "__0_0.distcp"]
    out = blank()
    load(out, storage_reader=StorageReader(url, store.config))  # falls back to __0.metadata
    assert_same(state(), out)


class HeldWriter(StorageWriter):
    """A StorageWriter whose uploads wait until the test lets them go."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.go = threading.Event()

    def write_data(self, plan: Any, planner: Any) -> Any:
        assert self.go.wait(60)
        return super().write_data(plan, planner)


@pytest.mark.parametrize("cached", [False, True])
def test_async_save_stages_then_uploads_while_training_goes_on(store: Store,
                                                               cached: bool) -> None:
    writer = HeldWriter(store.url("async"), store.config, cache_staged_state_dict=cached)
    live = state()
    future = async_save(live, storage_writer=writer)  # returns once staged; upload held
    assert not future.done()
    live["f32"].add_(1)  # training goes on, changing the tensors in place
    live["nested"]["w"].zero_()
    writer.go.set()
    future.result(timeout=60)
    out = blank()
    load(out, storage_reader=StorageReader(store.url("async"), store.config))
    assert_same(state(), out)  # what was staged, not what changed after
    if cached:  # the staging copy is kept for the next save
        staged = writer.state_dict_cache
        assert staged is not None
        ptr = staged["f32"].data_ptr()
        writer.reset(store.url("async2"))
        async_save(live, storage_writer=writer, checkpoint_id=store.url("async2")).result(60)
        assert writer.state_dict_cache["f32"].data_ptr() == ptr
        out = blank()
        load(out, storage_reader=StorageReader(store.url("async2"), store.config))
        assert torch.equal(out["f32"], live["f32"]) and torch.equal(out["nested"]["w"],
                                                                    live["nested"]["w"])
        writer.close()
        assert writer.state_dict_cache is None


# --- saving: prefixes, overwrite, failures ----------------------------------------------------


def test_prefix_strategies() -> None:
    assert DefaultPrefixStrategy()(3) == "__3_"
    assert BinaryPrefixStrategy(prefix_count=4)(1) == "1000000000/__1_"
    assert BinaryPrefixStrategy(prefix_count=4, min_prefix_length=1)(2) == "01/__2_"
    assert HexPrefixStrategy(epoch_num=5, prefix_count=32, min_prefix_length=2)(17) == (
        "11/epoch_5/__17_")
    assert HexPrefixStrategy(prefix_count=4, min_prefix_length=3)(6) == "200/__6_"
    assert RoundRobinPrefixStrategy(["x", "y"], epoch_num=1)(3) == "y/epoch_1/__3_"
    with pytest.raises(ValueError):
        RoundRobinPrefixStrategy([])
    with pytest.raises(ValueError):
        HexPrefixStrategy(min_prefix_length=0)


def test_prefix_strategy_spreads_files(store: Store) -> None:
    url = store.url("spread")
    strategy = RoundRobinPrefixStrategy(["p1", "p2"], epoch_num=3)
    save(state(), storage_writer=StorageWriter(url, store.config, thread_count=2,
                                                   prefix_strategy=strategy))
    assert names(store, "spread/") == [".metadata", "p1/epoch_3/__0_0.distcp",
                                       "p1/epoch_3/__0_1.distcp"]
    out = blank()
    load(out, storage_reader=StorageReader(url, store.config))
    assert_same(state(), out)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this on purpose")


def test_failed_save_never_looks_complete(store: Store) -> None:
    url = store.url("ckpt")
    save(state(), storage_writer=StorageWriter(url, store.config))
    assert ".metadata" in names(store, "ckpt/")
    broken = {**state(), "zzz": Unpicklable()}  # fails after the tensors are planned
    with pytest.raises(CheckpointException, match="on purpose"):
        save(broken, storage_writer=StorageWriter(url, store.config))
    assert ".metadata" not in names(store, "ckpt/")  # the old one is gone, no new one
    with pytest.raises(CheckpointException, match="no DCP checkpoint"):
        load(blank(), storage_reader=StorageReader(url, store.config))


def test_overwrite_false_refuses_as_torch_does(store: Store, tmp_path: Path) -> None:
    url = store.url("ckpt")
    save(state(), storage_writer=StorageWriter(url, store.config, overwrite=False))  # fresh: fine
    with pytest.raises(CheckpointException, match="already exists") as info:
        save(state(), storage_writer=StorageWriter(url, store.config, overwrite=False))
    ours = rank_error(info.value)
    assert isinstance(ours, CheckpointExistsError)
    assert isinstance(ours, RuntimeError) and isinstance(ours, FileExistsError)
    assert isinstance(ours, aisio.AisioError) and ours.url == canon(store.url("ckpt/.metadata"))
    assert isinstance(pickle.loads(pickle.dumps(ours)), CheckpointExistsError)
    folder = tmp_path / "torch"
    save(state(), storage_writer=FileSystemWriter(folder))
    with pytest.raises(CheckpointException) as info:
        save(state(), storage_writer=FileSystemWriter(folder, overwrite=False))
    theirs = rank_error(info.value)
    assert type(theirs) is RuntimeError and str(ours) == str(theirs)
    assert str(ours) == "Checkpoint already exists and self.overwrite=False."
    # without collectives, as torch, rank 0's metadata stands for the checkpoint
    save(state(), storage_writer=StorageWriter(store.url("local"), store.config),
         use_collectives=False)
    with pytest.raises(CheckpointExistsError):
        save(state(), storage_writer=StorageWriter(store.url("local"), store.config,
                                                   overwrite=False), use_collectives=False)


# --- bad metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle-like garbage", "not metadata",
                                    "empty"])
def test_bad_metadata_is_a_typed_error_naming_the_file(store: Store, damage: str) -> None:
    url = store.url("ckpt")
    save(state(), storage_writer=StorageWriter(url, store.config))
    metadata_url = canon(store.url("ckpt/.metadata"))
    g = torch.Generator().manual_seed(3)
    with aisio.Client(store.config) as client:
        good = client.get(metadata_url)
        noise = bytes(torch.randint(0, 256, (512,), dtype=torch.uint8, generator=g).tolist())
        bad = {"truncated": good[:len(good) // 2], "garbage": noise,
               "pickle-like garbage": b"\x80\x04\x95" + noise,
               "not metadata": pickle.dumps({"a": 1}), "empty": b""}[damage]
        client.put(metadata_url, bad)
    reader = StorageReader(url, store.config)
    with pytest.raises(CheckpointFormatError) as direct:
        reader.read_metadata()
    error = direct.value
    assert isinstance(error, aisio.AisioError) and isinstance(error, ValueError)
    assert error.url == metadata_url and metadata_url in str(error)
    assert not isinstance(error, (EOFError, pickle.UnpicklingError))
    # dcp.load tries the rank-local metadata next and reports both failures in one message
    with pytest.raises(CheckpointException, match="is not DCP metadata") as info:
        load(blank(), storage_reader=StorageReader(url, store.config))
    assert metadata_url in str(rank_error(info.value))
    assert isinstance(pickle.loads(pickle.dumps(error)), CheckpointFormatError)


# --- every FileSystemWriter option, both ways round with torch --------------------------------------


class Zlib(StreamTransformExtension):
    """A stream transform for the tests: zlib, so nothing beyond the standard library is needed."""

    @staticmethod
    def registry_name() -> str:
        return "aisio-test.zlib"

    @staticmethod
    def from_descriptor(version: str) -> Zlib:
        assert version == "1"
        return Zlib()

    def get_descriptor(self) -> str:
        return f"{self.registry_name()}/1"

    def transform_to(self, output: IO[bytes]) -> IO[bytes]:
        return cast(IO[bytes], _ZlibWriter(output))

    def transform_from(self, input: IO[bytes]) -> IO[bytes]:
        return io.BytesIO(zlib.decompress(input.read()))


class _ZlibWriter(io.RawIOBase):
    def __init__(self, output: IO[bytes]) -> None:
        super().__init__()
        self.output, self.z = output, zlib.compressobj()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.output.write(self.z.compress(data))
        return memoryview(data).nbytes

    def close(self) -> None:
        if not self.closed:
            self.output.write(self.z.flush())
            self.output.close()
        super().close()


def registry() -> ExtensionRegistry:
    reg = ExtensionRegistry()
    reg.register(Zlib)
    return reg


OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "file per item": {"single_file_per_rank": False},
    "file per item, 3 threads": {"single_file_per_rank": False, "thread_count": 3},
    "4 threads": {"thread_count": 4},
    "no copy ahead": {"per_thread_copy_ahead": 0},
    "cached staging": {"cache_staged_state_dict": True},
    "no sync": {"sync_files": False},
    "sync": {"sync_files": True},
    "overwrite=False": {"overwrite": False},
    "torch_save format": {"serialization_format": SerializationFormat.TORCH_SAVE},
    "zlib extension": {"_extensions": [Zlib()], "thread_count": 2},
    "zlib twice": {"_extensions": [Zlib(), Zlib()]},
}
if ZStandard.is_available():
    OPTIONS["zstd extension"] = {"_extensions": [ZStandard()], "thread_count": 2}


def download(store: Store, prefix: str, folder: Path) -> Path:
    folder.mkdir(parents=True)
    with aisio.Client(store.config) as client:
        for name in names(store, prefix):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(client.get(store.url(prefix + name)))
    return folder


def upload(store: Store, folder: Path, prefix: str) -> None:
    with aisio.Client(store.config) as client:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.put(store.url(prefix + str(path.relative_to(folder))), path.read_bytes())


@pytest.mark.parametrize("option", list(OPTIONS))
def test_writer_options_both_ways_round_with_torch(store: Store, tmp_path: Path,
                                                    option: str) -> None:
    kwargs = OPTIONS[option]
    save(state(), storage_writer=StorageWriter(store.url("ours"), store.config, **kwargs))
    theirs = tmp_path / "theirs"
    save(state(), storage_writer=FileSystemWriter(theirs, **kwargs))
    assert names(store, "ours/") == sorted(p.name for p in theirs.iterdir())  # same files
    extensions = kwargs.get("_extensions", [])
    expected = [e.get_descriptor() for e in reversed(extensions)] or None
    for checkpoint in (store.url("ours"), theirs):
        reader = StorageReader(checkpoint, store.config, _extension_registry=registry())
        infos = reader.read_metadata().storage_data.values()
        assert {tuple(i.transform_descriptors or ()) for i in infos} == {tuple(expected or ())}
    # ours through torch's reader, and torch's through ours, with each reader kind
    out = blank()
    load(out, storage_reader=FileSystemReader(download(store, "ours/", tmp_path / "ours"),
                                              _extension_registry=registry()))
    assert_same(state(), out)
    upload(store, theirs, "theirs/")
    for checkpoint in (store.url("ours"), store.url("theirs")):
        for reader in READERS.values():
            out = blank(non_contiguous=True)
            load(out, storage_reader=StorageReader(checkpoint, store.config, reader,
                                                   _extension_registry=registry()))
            assert_same(state(), out)


def test_extensions_transform_the_stored_bytes(store: Store) -> None:
    zeros = {"z": torch.zeros(1 << 16), "extra": {"n": [0] * 1000}}
    save(zeros, storage_writer=StorageWriter(store.url("plain"), store.config))
    save(zeros, storage_writer=StorageWriter(store.url("zlib"), store.config, _extensions=[Zlib()]))
    with aisio.Client(store.config) as client:
        plain = client.head(store.url("plain/__0_0.distcp")).size
        packed = client.head(store.url("zlib/__0_0.distcp")).size
    assert packed < plain // 20
    with pytest.raises(CheckpointException, match="Unknown extension"):  # no registry for it
        load({"z": torch.ones(1 << 16), "extra": {"n": []}},
             storage_reader=StorageReader(store.url("zlib"), store.config))
    out = {"z": torch.ones(1 << 16), "extra": {"n": []}}
    load(out, storage_reader=StorageReader(store.url("zlib"), store.config,
                                           _extension_registry=registry()))
    assert torch.equal(out["z"], zeros["z"]) and out["extra"] == zeros["extra"]


@pytest.mark.parametrize("sync_files", [True, False])
def test_sync_files_fsyncs_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       sync_files: bool) -> None:
    synced: list[str] = []
    fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    folder = tmp_path / "ckpt"
    save(state(), storage_writer=StorageWriter(folder, thread_count=2, sync_files=sync_files))
    expected = {str(folder / n) for n in (".metadata", "__0_0.distcp", "__0_1.distcp")}
    assert (expected | {str(folder)} if sync_files else set()) == set(synced)


def test_writer_options_that_cannot_work_raise() -> None:
    with pytest.raises(NotImplementedError, match="SAFETENSORS"):
        StorageWriter("/tmp/x", serialization_format=SerializationFormat.SAFETENSORS)
    with pytest.raises(ValueError):
        StorageWriter("/tmp/x", serialization_format="bogus")
    with pytest.raises(TypeError, match="StreamTransformExtension"):
        StorageWriter("/tmp/x", _extensions=["zstd"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="thread_count"):
        StorageWriter("/tmp/x", thread_count=0)
    with pytest.raises(ValueError, match="per_thread_copy_ahead"):
        StorageWriter("/tmp/x", per_thread_copy_ahead=-1)
    with pytest.raises(TypeError):
        StorageWriter("/tmp/x", bogus=True)  # type: ignore[call-arg]


# --- layout: torch's, rank for rank ----------------------------------------------------------------


def drive_save(writers: list[Any], states: list[dict[str, Any]]) -> Metadata:
    """One save by ``len(states)`` ranks in this process, each step as dcp.save takes it."""
    planners = [DefaultSavePlanner() for _ in states]
    local = []
    for rank, (writer, planner, sd) in enumerate(zip(writers, planners, states, strict=True)):
        planner.set_up_planner(state_dict=sd, storage_meta=writer.storage_meta(),
                               is_coordinator=rank == 0)
        writer.set_up_storage_writer(rank == 0, rank=rank, use_collectives=True)
        local.append(writer.prepare_local_plan(planner.create_local_plan()))
    plans, metadata = planners[0].create_global_plan(local)
    plans = writers[0].prepare_global_plan(plans)
    results = []
    for writer, planner, plan in zip(writers, planners, plans, strict=True):
        future = writer.write_data(planner.finish_plan(plan), planner)
        future.wait()
        results.append(future.value())
    writers[0].finish(metadata, results)
    return cast(Metadata, metadata)


def rank_states() -> list[dict[str, Any]]:
    """Rank 0 holds most, rank 1 a little, rank 2 nothing: an idle rank."""
    return [state(), {"r1": torch.arange(10.0), "extra1": {"k": 1}}, {}]


@pytest.mark.parametrize("single_file_per_rank", [True, False])
def test_layout_matches_torch_rank_for_rank(store: Store, tmp_path: Path,
                                            single_file_per_rank: bool) -> None:
    options = {"thread_count": 4, "single_file_per_rank": single_file_per_rank}
    theirs = drive_save([FileSystemWriter(tmp_path / "t", **options) for _ in range(3)],
                        rank_states())
    ours = drive_save([StorageWriter(store.url("o"), store.config, **options) for _ in range(3)],
                      rank_states())
    torch_files = sorted(p.name for p in (tmp_path / "t").iterdir())
    if single_file_per_rank:
        assert len(torch_files) == 3 * 4 + 1  # every rank writes thread_count files
    assert names(store, "o/") == torch_files
    assert ({i: s.relative_path for i, s in ours.storage_data.items()}
            == {i: s.relative_path for i, s in theirs.storage_data.items()})
    if single_file_per_rank:  # the idle rank's files are there, empty, as torch writes them
        with aisio.Client(store.config) as client:
            assert client.head(store.url("o/__2_3.distcp")).size == 0
    out = {**blank(), "r1": torch.zeros(10), "extra1": {"k": 0}}
    load(out, storage_reader=StorageReader(store.url("o"), store.config))
    assert_same({**state(), "r1": torch.arange(10.0), "extra1": {"k": 1}}, out)


def test_idle_rank_gets_its_prefix_folder(store: Store) -> None:
    strategy = RoundRobinPrefixStrategy(["p0", "p1", "p2"])
    drive_save([StorageWriter(store.url("rr"), store.config, thread_count=2,
                              prefix_strategy=strategy) for _ in range(3)], rank_states())
    assert names(store, "rr/") == [".metadata"] + [f"p{r}/__{r}_{n}.distcp"
                                                   for r in range(3) for n in range(2)]


# --- errors that name the file ----------------------------------------------------------------


@pytest.mark.parametrize("reader", ["default", "sequential"])
def test_missing_file_is_named(store: Store, reader: str) -> None:
    url = store.url("ckpt")
    save(state(), storage_writer=StorageWriter(url, store.config, thread_count=2))
    with aisio.Client(store.config) as client:
        client.delete(store.url("ckpt/__0_1.distcp"))
    with pytest.raises(CheckpointException) as info:
        load(blank(), storage_reader=StorageReader(url, store.config, READERS[reader]))
    error = rank_error(info.value)
    assert isinstance(error, ObjectNotFoundError)
    assert "__0_1.distcp is missing" in str(error)
    assert isinstance(pickle.loads(pickle.dumps(error)), ObjectNotFoundError)


@pytest.mark.parametrize("reader", ["default", "sequential"])
def test_truncated_file_is_named(store: Store, reader: str) -> None:
    url = store.url("ckpt")
    save(state(), storage_writer=StorageWriter(url, store.config, thread_count=2))
    victim = store.url("ckpt/__0_0.distcp")
    with aisio.Client(store.config) as client:
        data = client.get(victim)
        client.put(victim, data[:-100])
    with pytest.raises(CheckpointException) as info:
        load(blank(), storage_reader=StorageReader(url, store.config, READERS[reader]))
    error = rank_error(info.value)
    assert isinstance(error, RangeError)
    assert f"__0_0.distcp is truncated: it has {len(data) - 100} bytes" in str(error)
    assert f"expects {len(data)}" in str(error)


# --- the S3 connector's names -------------------------------------------------------------------


def test_s3_connector_names(request: pytest.FixtureRequest) -> None:
    from tests.conftest import make_store

    store = make_store("s3", request)
    s3 = store.server
    url = store.url("seed")
    writer = S3StorageWriter(s3.region, url, store.config, thread_count=2, sync_files=True)
    assert writer.region == s3.region and writer.thread_count == 2
    save(state(), storage_writer=writer)
    out = blank()
    reader = S3StorageReader(s3.region, url, store.config,
                             aisio.ReaderConstructor.range_based())
    load(out, storage_reader=reader)
    assert_same(state(), out)
    assert reader.config.s3.region == s3.region
    from aisio.torch.compat import S3ClientConfig

    seed = S3ClientConfig(force_path_style=True, part_size=6 << 20)
    reader = S3StorageReader(s3.region, url, seed, config=store.config)
    assert reader.config.part_size == 6 << 20 and reader.config.max_attempts == 10
    out = blank()
    load(out, storage_reader=reader)
    assert_same(state(), out)
    with pytest.raises(TypeError, match="bogus"):
        S3StorageWriter(s3.region, url, bogus=1)


# --- two ranks (gloo on loopback) ---------------------------------------------------------------


def _full() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {"rows": torch.randn(64, 40, generator=g),
            "bf16": torch.randn(33, 10, generator=g).to(torch.bfloat16),
            "i8": torch.randint(-100, 100, (50, 6), dtype=torch.int8, generator=g),
            "replicated": torch.arange(12.0).reshape(3, 4), "step": 7}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_ranks(rank: int, world: int, port: int, url: str, config: aisio.ClientConfig) -> None:
    """Save sharded by rows with two ranks, then load sharded by columns (resharding)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = _full()

        def sharded(dim: int, zero: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"replicated": torch.zeros(3, 4) if zero else full["replicated"],
                                   "step": 0 if zero else full["step"]}
            for key in ("rows", "bf16", "i8"):
                value = torch.zeros_like(full[key]) if zero else full[key]
                out[key] = distribute_tensor(value, mesh, [Shard(dim)])
            return out

        save(sharded(0, False), storage_writer=StorageWriter(url, config, thread_count=2))
        for dim, reader in ((1, None), (0, aisio.ReaderConstructor.sequential())):
            out = sharded(dim, True)
            load(out, storage_reader=StorageReader(url, config, reader))
            for key in ("rows", "bf16", "i8"):
                assert torch.equal(out[key].full_tensor(), full[key]), (rank, dim, key)
            assert torch.equal(out["replicated"], full["replicated"]) and out["step"] == 7
    finally:
        dist.destroy_process_group()


def test_two_ranks_save_and_reshard(store: Store) -> None:
    url = store.url("ranks")
    spawn(_two_ranks, args=(2, _free_port(), url, store.config), nprocs=2)  # type: ignore[no-untyped-call]
    assert names(store, "ranks/") == [".metadata", "__0_0.distcp", "__0_1.distcp",
                                      "__1_0.distcp", "__1_1.distcp"]
    out = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0) for k, v in _full().items()}
    load(out, storage_reader=StorageReader(url, store.config))  # one rank, plain tensors
    assert_same(_full(), out)


# --- the zip layout --------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "shape"), [
    (torch.float32, (2048, 1024)), (torch.bfloat16, (7,)), (torch.int8, (3, 5, 7, 11)),
    (torch.float32, ()), (torch.float64, (0, 5)), (torch.float8_e4m3fn, (3, 3)),
    (torch.uint16, (5,)), (torch.bool, (9,)), (torch.complex64, (2, 2)),
    (torch.float32, (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)),
])
def test_layout_prediction_matches_torch_save(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    buffer = io.BytesIO()
    torch.save(torch.zeros(shape, dtype=dtype), buffer)
    data = buffer.getvalue()
    predicted = layout.predict_layout(dtype, shape)
    assert predicted is not None and predicted[1] == len(data)
    header = layout.parse_header(data[:predicted[0]])
    assert header is not None and header.data_start == predicted[0]
    assert header.is_plain(dtype, shape)


def test_header_rejects_what_is_not_plain() -> None:
    buffer = io.BytesIO()
    torch.save(torch.arange(12.0).reshape(3, 4).t(), buffer)
    header = layout.parse_header(buffer.getvalue())
    assert header is not None and not header.is_plain(torch.float32, (4, 3))
    buffer = io.BytesIO()
    torch.save({"not": "a tensor"}, buffer)
    assert layout.parse_header(buffer.getvalue()) is None
    assert layout.parse_header(b"garbage" * 10) is None


def test_box_runs() -> None:
    assert layout.box_run((4, 6), (1, 0), (2, 6)) == (6, 18, True)  # whole rows
    assert layout.box_run((4, 6), (0, 3), (4, 3)) == (3, 24, False)  # columns
    assert layout.box_run((4, 6), (2, 1), (1, 4)) == (13, 17, True)  # part of one row
    assert layout.box_run((), (), ()) == (0, 1, True)
    flat = torch.arange(24.0).reshape(4, 6)
    a, b, _ = layout.box_run((4, 6), (0, 3), (4, 3))
    box = layout.box_view(flat.reshape(-1)[a:b], (4, 6), (4, 3))
    assert torch.equal(box, flat[:, 3:])
