"""aisio.torch.compat: every seed class by its seed name, on file/s3/ais, and against the seeds."""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import io
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch.utils.data as tud

import aisio
from aisio.torch import ZeroDict, compat
from aisio.torch.compat import (
    AISBaseIterDataset,
    AISBaseMapDataset,
    AISFileLister,
    AISFileLoader,
    AISIterDataset,
    AISMapDataset,
    AISMultiShardStream,
    AISShardReader,
    AISSourceLister,
    DataShard,
    DynamicBatchSampler,
    S3ClientConfig,
    S3IterableDataset,
    S3MapDataset,
    S3ReaderConstructor,
)
from tests.conftest import Store, make_store

from .shards import tar_bytes

REGION = "us-east-1"


def fill(store: Store, count: int = 12, folder: str = "d/") -> dict[str, bytes]:
    out = {}
    with aisio.Client(store.config) as client:
        for i in range(count):
            data = f"object {i}".encode() * (i + 1)
            client.put(store.url(f"{folder}obj-{i:03d}"), data)
            out[aisio._url.parse_url(store.url(f"{folder}obj-{i:03d}")).key] = data
    return out


def read_key(reader: Any) -> tuple[str, bytes]:
    return reader.key, reader.read()


def bucket_url(store: Store) -> str:
    """The store's bucket (file: its root folder), which AIS-style sources name."""
    return store.prefix


# --- the S3 connector ----------------------------------------------------------------------------


def test_s3_map_dataset(store: Store) -> None:
    data = fill(store)
    keys = sorted(data)
    raw = store.url("d/obj-00")  # a raw string prefix: obj-000 .. obj-009
    ds = S3MapDataset.from_prefix(raw, region=REGION, config=store.config)
    assert (ds.region, ds.endpoint) == (REGION, None)
    assert len(ds) == 10
    reader = ds[3]
    assert (reader.bucket, reader.key, reader.read()) == (
        aisio._url.parse_url(raw).bucket, keys[3], data[keys[3]])
    assert ds[-1].key == keys[9]
    with pytest.raises(IndexError):
        ds[10]
    assert reader.seek(10**6) == len(data[keys[3]])  # clamped

    named = S3MapDataset.from_objects(store.url("d/obj-011"), region=REGION, config=store.config,
                                      transform=read_key)
    assert named[0] == (keys[11], data[keys[11]])
    lazy = S3MapDataset.from_prefix(store.url("d/"), region=REGION, config=store.config,
                                    transform=lambda r: r.read(3),
                                    reader_constructor=S3ReaderConstructor.range_based())
    assert lazy.__getitems__([0, 5]) == [data[keys[0]][:3], data[keys[5]][:3]]

    batches = tud.DataLoader(S3MapDataset.from_prefix(store.url("d/"), region=REGION,
                                                      config=store.config, transform=read_key),
                             batch_size=5, num_workers=2, multiprocessing_context="fork",
                             collate_fn=list)
    assert sorted(item for batch in batches for item in batch) == sorted(data.items())
    bad = S3MapDataset.from_objects(["s3://"], region=REGION, config=store.config)
    with pytest.raises(ValueError):  # checked on first use, as the seed
        len(bad)


def test_s3_iterable_dataset(store: Store) -> None:
    data = fill(store, 9)
    ds = S3IterableDataset.from_prefix(store.url("d/"), region=REGION, config=store.config,
                                       transform=read_key)
    assert list(ds) == sorted(data.items())
    readers = list(S3IterableDataset.from_prefix(store.url("d/"), region=REGION,
                                                  config=store.config))
    assert [(r.key, r.read()) for r in readers] == sorted(data.items())
    crossed = tud.DataLoader(S3IterableDataset.from_prefix(store.url("d/"), region=REGION,
                                                           config=store.config),
                             batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert sorted((r.key, r.read()) for r in crossed) == sorted(2 * list(data.items()))

    def run(sharded: bool) -> collections.Counter[str]:
        ds = S3IterableDataset.from_prefix(store.url("d/"), region=REGION, config=store.config,
                                           transform=read_key, enable_sharding=sharded)
        loader = tud.DataLoader(ds, batch_size=None, num_workers=2,
                                multiprocessing_context="fork")
        return collections.Counter(key for key, _ in loader)

    assert run(False) == collections.Counter({k: 2 for k in data})  # the seed's default
    assert run(True) == collections.Counter(data.keys())

    urls = [store.url(f"d/{k.rsplit('/', 1)[1]}") for k in sorted(data)[:3]]
    named = S3IterableDataset.from_objects(urls, region=REGION, config=store.config,
                                           transform=read_key)
    assert list(named) == list(named) == sorted(data.items())[:3]  # re-read every epoch


def test_s3_dataset_with_get_dataset_objects(store: Store) -> None:
    data = fill(store, 4)

    def objects(client: aisio.Client) -> Iterator[Any]:
        yield from client.list(store.url("d/"))

    ds = S3MapDataset(REGION, objects, transform=read_key, config=store.config)
    assert [ds[i] for i in range(len(ds))] == sorted(data.items())
    it = S3IterableDataset(REGION, objects, transform=read_key, config=store.config)
    assert list(it) == sorted(data.items())


def test_s3_client_config_and_reader_constructor() -> None:
    cfg = compat._s3_config("eu-west-1", "http://127.0.0.1:9", S3ClientConfig(
        part_size=16 * 2**20, force_path_style=True, unsigned=True), aisio.ClientConfig())
    assert (cfg.part_size, cfg.max_attempts) == (16 * 2**20, 10)  # the seed's 10 attempts
    assert (cfg.s3.region, cfg.s3.endpoint_url) == ("eu-west-1", "http://127.0.0.1:9")
    assert cfg.s3.force_path_style and cfg.s3.unsigned
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    from s3torchconnector import S3ClientConfig as SeedConfig

    seeded = compat._s3_config(REGION, None, SeedConfig(part_size=5 * 2**20), None)
    assert (seeded.part_size, seeded.max_attempts) == (5 * 2**20, 10)

    rc = S3ReaderConstructor
    assert rc.range_based().buffer_size == 8 * 2**20 and rc.range_based(0).buffer_size == 0
    assert rc.get_reader_type_string(rc.dcp_optimized()) == "dcp_optimized"
    assert rc.get_reader_type_string(None) == "sequential" == rc.default().kind
    assert rc.sequential() == aisio.ReaderConstructor.sequential()


def test_public_names() -> None:
    import aisio.torch

    for module in (aisio.torch, compat):
        assert module.__all__ == sorted(module.__all__)
        for name in module.__all__:
            if name in ("Checkpoint", *compat._LAZY):
                continue  # other modules', checked below when they are there
            assert getattr(module, name) is not None
    assert compat.DynamicBatchSampler is aisio.torch.DynamicBatchSampler


def test_lazy_names_from_other_modules() -> None:
    assert compat.S3ReaderConstructor.default() == aisio.ReaderConstructor.default()
    with pytest.raises(AttributeError):
        compat.NoSuchName  # noqa: B018
    for name, module in compat._LAZY.items():
        try:
            __import__(module)
        except ImportError:
            continue  # that engineer's module is not there yet
        assert getattr(compat, name) is getattr(sys.modules[module], name)


def test_s3_classes_match_the_seed(request: pytest.FixtureRequest,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """s3torchconnector itself, against the same local S3 server: same items, same shards."""
    seed = pytest.importorskip("s3torchconnector")
    store = make_store("s3", request)
    data = fill(store, 7)
    for name, value in store.server.env().items():
        monkeypatch.setenv(name, value)
    endpoint = store.server.endpoint_url
    uri = store.url("d/obj-00")
    theirs = seed.S3MapDataset.from_prefix(uri, region=REGION, endpoint=endpoint,
                                           s3client_config=seed.S3ClientConfig(
                                               force_path_style=True))
    ours = S3MapDataset.from_prefix(uri, region=REGION, endpoint=endpoint,
                                    s3client_config=S3ClientConfig(force_path_style=True))
    assert len(ours) == len(theirs) == 7
    assert [read_key(ours[i]) for i in range(7)] == [read_key(theirs[i]) for i in range(7)]
    for sharded in (False, True):
        got = []
        for cls in (seed.S3IterableDataset, S3IterableDataset):
            ds = cls.from_prefix(store.url("d/"), region=REGION, endpoint=endpoint,
                                 transform=read_key, enable_sharding=sharded,
                                 s3client_config=(seed.S3ClientConfig if cls is not
                                                  S3IterableDataset else S3ClientConfig)(
                                     force_path_style=True))
            got.append(list(tud.DataLoader(ds, batch_size=None, num_workers=2,
                                           multiprocessing_context="fork")))
        assert got[0] == got[1]
        assert len(got[0]) == (7 if sharded else 14) and sorted(data.items())[0] in [
            tuple(x) for x in got[0]]


# --- AIStore -------------------------------------------------------------------------------------


def sdk_bucket(store: Store) -> Any:
    """An aistore SDK Bucket for the ais store, else the store's bucket URL."""
    if store.name != "ais":
        return bucket_url(store)
    from aistore.sdk import Client

    return Client(store.server.endpoint).bucket("aisio-test")


def test_ais_map_dataset(store: Store) -> None:
    data = fill(store)
    keys = sorted(data)
    source = sdk_bucket(store)
    if store.name == "ais":  # an SDK bucket: its endpoint comes with it, prefixes from its root
        folder = aisio._url.parse_url(store.url("d/")).key
        ds = AISMapDataset(source, prefix_map={source: folder + "obj-00"})
    else:
        ds = AISMapDataset(source, prefix_map={source: "d/obj-00"}, config=store.config)
    assert len(ds) == 10
    name, content = ds[4]
    assert content == data[keys[4]] and keys[4].endswith(name)
    assert [o.props_cached.size for o in ds.get_obj_list()] == [len(data[k]) for k in keys[:10]]
    with pytest.raises(IndexError, match="index must be in bounds"):
        ds[10]
    with pytest.raises(ValueError, match="ais_source_list must be provided"):
        AISMapDataset([], config=store.config)
    loader = tud.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork",
                            collate_fn=list)
    assert sorted(c for batch in loader for _, c in batch) == sorted(data[k] for k in keys[:10])
    batches = list(DynamicBatchSampler(ds, max_batch_size=100))
    assert sum(len(b) for b in batches) == 10
    assert all(sum(len(data[keys[i]]) for i in b) <= 100 for b in batches)
    assert pickle.loads(pickle.dumps(ds))[4] == ds[4]


def test_ais_iter_dataset(store: Store) -> None:
    data = fill(store, 6, "a/")
    data |= fill(store, 5, "b/")
    cfg = store.config
    a, b = store.url("a/"), store.url("b/")
    ds = AISIterDataset([a, b], config=cfg)
    assert [content for _, content in ds] == [data[k] for k in sorted(data)]
    assert len(ds) == 11
    for partition in (False, True):
        ds = AISIterDataset([a, b], partition_sources_by_worker=partition, config=cfg)
        loader = tud.DataLoader(ds, batch_size=None, num_workers=2,
                                multiprocessing_context="fork")
        assert collections.Counter(name for name, _ in loader) == collections.Counter(
            data.keys())
    mapped = AISIterDataset([a, b], prefix_map={b: ["obj-003", "obj-001"]}, config=cfg)
    assert [n.rsplit("/", 1)[1] for n, _ in mapped][6:] == ["obj-003", "obj-001"]


def test_ais_sdk_objects_and_etl(request: pytest.FixtureRequest) -> None:
    store = make_store("ais", request)
    data = fill(store, 6)
    from aistore.sdk import Client
    from aistore.sdk.multiobj import ObjectGroup

    bucket = Client(store.server.endpoint).bucket("aisio-test")
    keys = sorted(data)
    group = ObjectGroup(bucket, obj_names=[keys[4], keys[1]])
    ds = AISMapDataset([group])
    assert [ds[i] for i in range(2)] == [(keys[4], data[keys[4]]), (keys[1], data[keys[1]])]
    assert [o.size for o in ds.get_obj_list()] == [len(data[keys[4]]), len(data[keys[1]])]
    store.server.add_etl("upper", lambda b, args: b.upper())
    it = AISIterDataset(group, etl_name="upper")
    assert list(it) == [(keys[4], data[keys[4]].upper()), (keys[1], data[keys[1]].upper())]
    lister = AISSourceLister([bucket], prefix=keys[0].rsplit("/", 1)[0] + "/")
    assert list(lister) == [f"ais://aisio-test/{k}" for k in keys]
    with pytest.raises(NotImplementedError):
        lister[0]
    files = AISFileLister([store.url("")], url=store.server.endpoint, length=6)
    assert list(files) == [f"ais://aisio-test/{k}" for k in keys] and len(files) == 6
    with pytest.raises(TypeError):
        len(AISFileLister([], url=store.server.endpoint))
    loader = AISFileLoader(list(files)[:2], url=store.server.endpoint, etl_name="upper")
    assert [(u, r.read()) for u, r in loader] == [
        (f"ais://aisio-test/{k}", data[k].upper()) for k in keys[:2]]
    plain = AISFileLoader(list(files)[:1], url=store.server.endpoint)
    _, reader = next(iter(plain))
    assert reader.read() == data[keys[0]] and reader.key == keys[0] and len(plain) == 1


def test_ais_base_classes_for_subclassers(store: Store) -> None:
    data = fill(store, 5)
    cfg = store.config

    class Sizes(AISBaseMapDataset):
        def __len__(self) -> int:
            return len(self.get_obj_list())

        def __getitem__(self, index: int) -> Any:
            obj = self.get_obj_list()[index]
            return obj.name, obj.size, self.client.get(obj.url)

    ds = Sizes(store.url("d/"), config=cfg)
    assert [ds[i][1:] for i in range(len(ds))] == [
        (len(data[k]), data[k]) for k in sorted(data)]
    assert ds.__getitems__([1, 0]) == [ds[1], ds[0]]

    class Names(AISBaseIterDataset):
        def __iter__(self) -> Iterator[Any]:
            objects, worker = self._get_worker_iter_info()
            for obj in objects:
                yield obj.name + worker

    names = Names(store.url("d/"), config=cfg)
    assert [n.rsplit("/", 1)[1] for n in names] == [f"obj-{i:03d}" for i in range(5)]
    loader = tud.DataLoader(names, batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
    got = sorted(loader)
    assert len(got) == 5 and sum(n.endswith("(Worker 1)") for n in got) == 2


SHARD = [("x/a.seg.png", b"1"), ("x/a.txt", b"2"), ("y/b.txt", b"3"), ("a.jpg", b"4"),
         ("noext", b"5"), ("y/b.TXT", b"6")]


def test_ais_shard_reader_seed_rules(store: Store) -> None:
    with aisio.Client(store.config) as client:
        client.put(store.url("s/0.tar"), tar_bytes(SHARD))
        client.put(store.url("s/1.tar"), tar_bytes([("c.cls", b"7")]))
    reader = AISShardReader(store.url("s/"), config=store.config)
    got = list(iter(reader))
    assert got == [("a", {"png": b"1", "txt": b"2", "jpg": b"4", "TXT": b""}),
                   ("b", {"txt": b"3", "TXT": b"6", "png": b"", "jpg": b""}),
                   ("c", {"cls": b"7", "png": b"", "txt": b"", "jpg": b"", "TXT": b""})]
    assert all(isinstance(sample, ZeroDict) for _, sample in got)
    assert AISShardReader.ZeroDict is ZeroDict
    assert len(reader) == len(SHARD) + 1  # member files, as the seed counts
    loader = tud.DataLoader(AISShardReader(store.url("s/"), config=store.config),
                            batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert sorted(key for key, _ in loader) == ["a", "b", "c"]


def test_ais_multishard_stream(request: pytest.FixtureRequest) -> None:
    store = make_store("ais", request)  # DataShard names AIS buckets
    with aisio.Client(store.config) as client:
        for src in ("img", "txt"):
            for s in range(2):
                members = [(f"s{s}_{i}.{src}", f"{src}{s}{i}".encode()) for i in (2, 0, 1)]
                client.put(store.url(f"{src}/shard-{s}.tar"), tar_bytes(members))
    key = aisio._url.parse_url(store.url("")).key
    sources = [DataShard(store.server.endpoint, "aisio-test", prefix=key + src + "/")
               for src in ("img", "txt")]
    got = list(AISMultiShardStream(sources))
    assert got == [(f"img{s}{i}".encode(), f"txt{s}{i}".encode())
                   for s in range(2) for i in range(3)]  # members in name order, as the seed
    from aistore.sdk import DataShard as SeedDataShard

    seeded = [SeedDataShard(store.server.endpoint, "aisio-test", prefix=key + "img/")]
    assert list(AISMultiShardStream(seeded)) == [(x,) for x, _ in got]


def test_ais_classes_match_the_seed(request: pytest.FixtureRequest,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """aistore.pytorch itself, against the same local AIS server: same items."""
    shim = types.ModuleType("alive_progress")
    shim.alive_it = lambda it, **kw: it  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "alive_progress", shim)  # the seed's console bars
    seed = pytest.importorskip("aistore.pytorch")
    from aistore.sdk import Client

    store = make_store("ais", request)
    data = fill(store, 8)
    key = aisio._url.parse_url(store.url("")).key
    with aisio.Client(store.config) as client:
        client.put(store.url("s/0.tar"), tar_bytes(SHARD))
        client.put(store.url("s/1.tar"), tar_bytes([("c.cls", b"7"), ("a.jpg", b"8")]))
    bucket = Client(store.server.endpoint).bucket("aisio-test")
    prefix_map = {bucket: [key + "d/obj-00", key + "d/"]}
    for theirs, ours in [
        (seed.AISMapDataset(bucket, prefix_map), AISMapDataset(bucket, prefix_map)),
    ]:
        assert len(ours) == len(theirs) == 16
        assert [ours[i] for i in range(16)] == [theirs[i] for i in range(16)]
        assert [(o.name, o.props_cached.size) for o in ours.get_obj_list()] == [
            (o.name, o.props_cached.size) for o in theirs.get_obj_list()]
        assert list(DynamicBatchSampler(ours, 50)) == list(seed.DynamicBatchSampler(theirs, 50))
    assert list(AISIterDataset(bucket, prefix_map)) == list(iter(
        seed.AISIterDataset(bucket, prefix_map)))
    shards = {bucket: key + "s/"}
    assert list(iter(AISShardReader(bucket, shards))) == list(iter(
        seed.AISShardReader(bucket, shards)))
    assert len(data) == 8


# --- the connector's DCP, reader and config names ----------------------------------------------------


def test_connector_names_are_all_here() -> None:
    seed = pytest.importorskip("s3torchconnector")
    seed_dcp = pytest.importorskip("s3torchconnector.dcp")
    seed_readers = pytest.importorskip("s3torchconnector.s3reader")

    wanted = {*seed.__all__, *seed_dcp.__all__, *seed_readers.__all__,
              "DCPOptimizedConstructor", "S3ReaderConstructorProtocol",
              "DCPS3ReaderConstructorProtocol", "ItemRange"}
    left_out = {"S3Writer", "S3Exception"}  # the connector's own client types: aisio has its own
    assert {n for n in wanted - left_out if not hasattr(compat, n)} == set()
    assert compat.__version__ == importlib.metadata.version("aisio")
    assert compat.__connector_version__.count(".") == 2
    assert isinstance(seed.__version__, str) and isinstance(compat.__version__, str)


def test_requester_pays_as_the_connector() -> None:
    assert not S3ClientConfig().requester_pays
    cfg = compat._s3_config(REGION, None, S3ClientConfig(requester_pays=True), aisio.ClientConfig())
    assert cfg.s3.requester_pays and pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(ValueError, match="unsigned"):
        S3ClientConfig(requester_pays=True, unsigned=True)
    seed = pytest.importorskip("s3torchconnector")
    if "requester_pays" in {f.name for f in dataclasses.fields(seed.S3ClientConfig)}:
        with pytest.raises(ValueError, match="unsigned"):  # connectors from 1.5.1 on
            seed.S3ClientConfig(requester_pays=True, unsigned=True)
        assert compat._s3_config(REGION, None, seed.S3ClientConfig(requester_pays=True),
                                 None).s3.requester_pays


def test_prefix_strategies_match_the_seed() -> None:
    seed = pytest.importorskip("s3torchconnector.dcp")
    from s3torchconnector.dcp.s3_prefix_strategy import RoundRobinPrefixStrategy as SeedRR

    for name in ("BinaryPrefixStrategy", "HexPrefixStrategy"):
        for count in (1, 3, 16, 17, 300):
            for length in (1, 4, 10):
                for epoch in (None, 2):
                    kw = {"prefix_count": count, "min_prefix_length": length, "epoch_num": epoch}
                    ours, theirs = getattr(compat, name)(**kw), getattr(seed, name)(**kw)
                    assert ours.prefix_map == theirs.prefix_map, (name, kw)
                    assert ours.min_prefix_len == theirs.min_prefix_len
                    assert [ours(r) for r in range(40)] == [theirs(r) for r in range(40)]
    assert isinstance(compat.HexPrefixStrategy(), compat.NumericPrefixStrategy)
    assert compat.DefaultPrefixStrategy()(7) == seed.DefaultPrefixStrategy()(7)
    assert ([compat.RoundRobinPrefixStrategy(["a", "b"], 3)(r) for r in range(4)]
            == [SeedRR(["a", "b"], 3)(r) for r in range(4)])
    for bad in ({"min_prefix_length": 0}, {"prefix_count": 0}, {"epoch_num": "1"}):
        with pytest.raises(ValueError):
            seed.HexPrefixStrategy(**bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            compat.HexPrefixStrategy(**bad)


def test_reader_constructors_match_the_seed() -> None:
    seed = pytest.importorskip("s3torchconnector")
    from s3torchconnector.s3reader import DCPS3ReaderConstructorProtocol as SeedDCPProtocol
    from s3torchconnector.s3reader import S3ReaderConstructorProtocol as SeedProtocol

    ours_rc, theirs_rc = S3ReaderConstructor, seed.S3ReaderConstructor
    for make in ("sequential", "range_based", "dcp_optimized", "default"):
        ours, theirs = getattr(ours_rc, make)(), getattr(theirs_rc, make)()
        assert (ours_rc.get_reader_type_string(ours)
                == theirs_rc.get_reader_type_string(theirs)), make
        assert isinstance(ours, compat.S3ReaderConstructorProtocol)
        assert isinstance(theirs, SeedProtocol)
        assert (isinstance(ours, compat.DCPS3ReaderConstructorProtocol)
                == isinstance(theirs, SeedDCPProtocol) == (make == "dcp_optimized"))
        assert pickle.loads(pickle.dumps(ours)) == ours
    assert ours_rc.get_reader_type_string(None) == theirs_rc.get_reader_type_string(None)
    assert ours_rc.get_reader_type_string(object()) == theirs_rc.get_reader_type_string(
        object()) == "unknown"
    assert isinstance(ours_rc.dcp_optimized(), compat.DCPOptimizedConstructor)
    assert ours_rc.dcp_optimized(7).max_gap_size == theirs_rc.dcp_optimized(7)._max_gap_size
    for rc in (ours_rc, theirs_rc):
        with pytest.raises(ValueError):
            rc.dcp_optimized(-1)
    # aisio's own ReaderConstructor values still compare equal
    assert ours_rc.range_based(4096) == aisio.ReaderConstructor.range_based(4096)
    assert ours_rc.dcp_optimized() == aisio.ReaderConstructor.dcp_optimized()


def reader_behaviour(reader: Any) -> list[Any]:
    """A fixed walk over a reader: what a transform might do, recorded step by step."""
    buf = bytearray(5)
    steps: list[Any] = [type(reader).__name__, reader.bucket, reader.key, reader.readable(),
                        reader.seekable(), reader.writable(), reader.read(3), reader.tell()]
    steps += [reader.readinto(buf), bytes(buf), reader.seek(-2, io.SEEK_END), reader.read(),
              reader.seek(10**6), reader.read(4), reader.seek(1), reader.read(None),
              reader.seek(2, io.SEEK_SET), reader.seek(3, io.SEEK_CUR), reader.read(2)]
    return steps


def test_reader_classes_match_the_seed(request: pytest.FixtureRequest,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seed = pytest.importorskip("s3torchconnector")
    store = make_store("s3", request)
    data = fill(store, 3)
    for name, value in store.server.env().items():
        monkeypatch.setenv(name, value)
    endpoint = store.server.endpoint_url
    for make in ("sequential", "range_based"):
        got = []
        for mod, cls in ((seed, seed.S3MapDataset), (compat, S3MapDataset)):
            rc = getattr(mod.S3ReaderConstructor, make)()
            ds = cls.from_prefix(store.url("d/"), region=REGION, endpoint=endpoint,
                                 reader_constructor=rc,
                                 s3client_config=mod.S3ClientConfig(force_path_style=True))
            item = ds[2]
            assert isinstance(item, mod.S3Reader)
            got.append(reader_behaviour(item))
        assert got[0] == got[1], make
        assert got[1][0] == {"sequential": "SequentialS3Reader",
                             "range_based": "RangedS3Reader"}[make]
    key = sorted(data)[1]
    bucket = aisio._url.parse_url(store.url("")).bucket
    reader = S3ReaderConstructor.range_based(16)(bucket, key)  # a constructor is callable
    assert isinstance(reader, compat.RangedS3Reader) and reader.read() == data[key]
    assert compat.SequentialS3Reader(bucket, key).read() == data[key]
    with pytest.raises(TypeError, match="config"):
        compat.SequentialS3Reader(bucket, key, lambda: None, lambda: iter(()))
    items = list(tud.DataLoader(S3MapDataset.from_prefix(store.url("d/"), region=REGION,
                                                         config=store.config),
                                batch_size=None, num_workers=1, multiprocessing_context="fork"))
    assert [type(i).__name__ for i in items] == ["SequentialS3Reader"] * 3  # pickled back


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled, unavailable or uninitialized")
def test_dcp_reader_plans_and_ranges_match_the_seed(request: pytest.FixtureRequest,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The connector's S3StorageReader and ours: same item order, same ranges, each other's files."""
    seed = pytest.importorskip("s3torchconnector")
    import s3torchconnector.dcp as seed_dcp
    from s3torchconnector._s3client import S3Client
    from torch.distributed.checkpoint import load, save
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from aisio.torch.dcp import S3StorageReader, S3StorageWriter
    from tests.test_dcp import assert_same, blank, state

    store = make_store("s3", request)
    for name, value in store.server.env().items():
        monkeypatch.setenv(name, value)
    s3 = store.server
    seed_cfg = seed.S3ClientConfig(force_path_style=True)
    seed_client = S3Client(s3.region, endpoint=s3.endpoint_url, s3client_config=seed_cfg)
    url = store.url("ours")
    save(state(), storage_writer=S3StorageWriter(s3.region, url, thread_count=3,
                                                 config=store.config))

    def plan_of(reader: Any) -> Any:
        metadata = reader.read_metadata()
        reader.set_up_storage_reader(metadata, True)
        planner = DefaultLoadPlanner()
        planner.set_up_planner(blank(), metadata, True)
        return reader.prepare_local_plan(planner.create_local_plan())

    ours = S3StorageReader(s3.region, url, reader_constructor=S3ReaderConstructor.dcp_optimized(),
                           config=store.config)
    theirs = seed_dcp.S3StorageReader(s3.region, url, s3client_config=seed_cfg,
                                      reader_constructor=seed.S3ReaderConstructor.dcp_optimized())
    theirs.fs = seed_dcp.S3FileSystem(s3.region, s3_client=seed_client,
                                      reader_constructor=theirs._reader_constructor)
    ours_plan, theirs_plan = plan_of(ours), plan_of(theirs)
    assert [i.storage_index for i in ours_plan.items] == [i.storage_index for i in theirs_plan.items]

    def ranges(rc: Any) -> dict[str, list[tuple[int, int]]]:
        return {k: [(r.start, r.end) for r in v] for k, v in rc._item_ranges_by_file.items()}

    assert ranges(ours.reader_constructor) == ranges(theirs._reader_constructor) != {}
    rc, key = ours.reader_constructor, aisio._url.parse_url(url).key
    bucket = aisio._url.parse_url(url).bucket
    assert type(rc(bucket, key + "/.metadata")).__name__ == "SequentialS3Reader"
    assert isinstance(rc(bucket, key + "/__0_1.distcp"), compat.DCPOptimizedS3Reader)
    with pytest.raises(ValueError, match="no byte ranges"):
        rc(bucket, key + "/other")
    # each loads the other's checkpoint
    out = blank()
    load(out, storage_reader=theirs)
    assert_same(state(), out)
    writer = seed_dcp.S3StorageWriter(s3.region, store.url("theirs"), s3client_config=seed_cfg,
                                      thread_count=2)
    writer.fs = seed_dcp.S3FileSystem(s3.region, s3_client=seed_client)
    save(state(), storage_writer=writer)
    for reader in (S3ReaderConstructor.dcp_optimized(), S3ReaderConstructor.sequential()):
        out = blank()
        load(out, storage_reader=S3StorageReader(s3.region, store.url("theirs"),
                                                 reader_constructor=reader, config=store.config))
        assert_same(state(), out)


def test_s3_file_system_matches_the_seed(request: pytest.FixtureRequest,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seed = pytest.importorskip("s3torchconnector")
    import s3torchconnector.dcp as seed_dcp
    from s3torchconnector._s3client import S3Client

    from aisio.torch.dcp import S3StorageReader, S3StorageWriter, StorageWriter

    store = make_store("s3", request)
    s3 = store.server
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    theirs = seed_dcp.S3FileSystem(s3.region, s3_client=S3Client(
        s3.region, endpoint=s3.endpoint_url,
        s3client_config=seed.S3ClientConfig(force_path_style=True)))
    ours = compat.S3FileSystem(s3.region, s3client_config=S3ClientConfig(force_path_style=True))

    def walk(fs: Any, folder: str) -> list[Any]:
        a, b = fs.concat_path(folder, "a"), fs.concat_path(folder, "sub/b")
        with fs.create_stream(a, "wb") as stream:
            stream.write(b"payload " * 1000)
        steps = [a, b, fs.exists(a), fs.exists(b)]
        fs.rename(a, b)
        steps += [fs.exists(a), fs.exists(b)]
        with fs.create_stream(b, "rb") as stream:
            steps.append(stream.read())
        fs.rm_file(b)
        steps += [fs.exists(b), fs.init_path(folder) == folder, fs.mkdir(folder)]
        with pytest.raises(ValueError), fs.create_stream(b, "ab"):
            pass
        return steps

    folder = store.url("fs")
    assert walk(ours, folder) == walk(theirs, folder)
    for checkpoint_id in (folder, "s3://bucket/key", Path("relative")):
        assert (ours.validate_checkpoint_id(checkpoint_id)
                == theirs.validate_checkpoint_id(checkpoint_id))
    # the writer's and reader's .fs, as on the connector's classes
    writer = S3StorageWriter(s3.region, folder, config=store.config)
    reader = S3StorageReader(s3.region, folder, config=store.config)
    for fs in (writer.fs, reader.fs):
        assert isinstance(fs, compat.S3FileSystem)
        with fs.create_stream(fs.concat_path(folder, "x"), "wb") as stream:
            stream.write(b"x")
        assert fs.exists(fs.concat_path(folder, "x")) and theirs.exists(f"{folder}/x")
        fs.rm_file(fs.concat_path(folder, "x"))
        assert not theirs.exists(f"{folder}/x")
    assert writer.validate_checkpoint_id(folder) and writer.fs.validate_checkpoint_id(folder)
    local = make_store("file", request)
    fs = StorageWriter(local.url("ckpt"), local.config).fs
    assert walk(fs, local.url("ckpt"))[2:] == walk(theirs, store.url("fs2"))[2:]
