"""aisio.torch datasets on every backend: items, prefetch, sharding, shuffle, DataLoader workers."""

from __future__ import annotations

import collections
import io
import pickle
import time
from typing import Any

import pytest
import torch
import torch.utils.data as tud

import aisio
from aisio.torch import DynamicBatchSampler, IterableDataset, MapDataset, ObjectReader
from aisio.torch._datasets import Shard
from tests.conftest import Store, make_store

from .shards import tar_bytes

# 4 workers on a 2-core machine: torch's advice, not a failure
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def fill(store: Store, count: int, size: int = 100, folder: str = "d/") -> dict[str, bytes]:
    """``count`` objects of distinct content under ``folder``; url -> bytes."""
    out = {}
    with aisio.Client(store.config) as client:
        for i in range(count):
            url = store.url(f"{folder}obj-{i:03d}")
            data = bytes([i % 251]) * (size + i)
            client.put(url, data)
            out[parse(url)] = data
    return out


def parse(url: str) -> str:
    return aisio._url.parse_url(url).url


def key_and_length(reader: Any) -> tuple[str, int]:
    """A transform importable by spawned workers."""
    return reader.key, len(reader.read())


def url_of(item: tuple[str, bytes]) -> str:
    return item[0]


def loader(dataset: Any, workers: int, context: str | None = "fork", **kw: Any
           ) -> tud.DataLoader[Any]:
    if workers == 0:
        context = None
    kw.setdefault("batch_size", None)
    return tud.DataLoader(dataset, num_workers=workers, multiprocessing_context=context, **kw)


# --- map-style ------------------------------------------------------------------------------------


def test_map_dataset_items(store: Store) -> None:
    data = fill(store, 12)
    ds = MapDataset.from_prefix(store.url("d/"), config=store.config)
    assert len(ds) == 12
    urls = sorted(data)
    assert [info.url for info in ds.object_infos()] == urls
    assert ds[3] == (urls[3], data[urls[3]])
    assert ds[-1] == (urls[-1], data[urls[-1]])
    with pytest.raises(IndexError):
        ds[12]
    assert ds.__getitems__([5, 0, 5]) == [(urls[i], data[urls[i]]) for i in (5, 0, 5)]
    assert ds.sizes() == [len(data[u]) for u in urls]

    named = MapDataset.from_urls(urls[::-1], config=store.config)
    assert [named[i][0] for i in range(len(named))] == urls[::-1]
    assert named.sizes() == [len(data[u]) for u in urls[::-1]]  # HEADs for named objects


def test_map_dataset_transform_gets_a_reader(store: Store) -> None:
    data = fill(store, 3, size=1000)
    seen: list[Any] = []

    def transform(reader: Any) -> bytes:
        assert isinstance(reader, ObjectReader) and isinstance(reader, io.BufferedIOBase)
        seen.append((reader.url, reader.bucket, reader.key))
        assert reader.seekable() and reader.readable() and not reader.writable()
        assert reader.read(10) == data[reader.url][:10] and reader.tell() == 10
        assert reader.seek(-5, io.SEEK_END) == len(data[reader.url]) - 5
        assert reader.seek(10**9) == len(data[reader.url])  # clamped, as the S3 connector
        assert reader.read() == b""
        reader.seek(0)
        return reader.read()

    ds = MapDataset.from_prefix(store.url("d/"), transform, store.config)
    assert ds.__getitems__([0, 1, 2]) == [data[u] for u in sorted(data)]
    loc = aisio._url.parse_url(sorted(data)[0])
    assert seen[0] == (loc.url, loc.bucket, loc.key)

    lazy = MapDataset.from_prefix(store.url("d/"), lambda r: (type(r).__name__, r.read(4)),
                                  store.config,
                                  reader_constructor=aisio.ReaderConstructor.range_based(0))
    assert lazy[1] == ("ObjectReader", data[sorted(data)[1]][:4])


def test_map_dataset_dataloader_and_pickle(store: Store) -> None:
    data = fill(store, 20)
    ds = MapDataset.from_prefix(store.url("d/"), config=store.config)
    before = pickle.loads(pickle.dumps(ds))  # not listed yet: lists on its own
    assert len(before) == 20
    got = [item for batch in loader(ds, 2, batch_size=6, collate_fn=list) for item in batch]
    assert sorted(got) == sorted(data.items())
    ds[0]
    again = pickle.loads(pickle.dumps(ds))  # listed and used: only values cross
    assert again[1] == ds[1]


def test_map_dataset_errors(store: Store) -> None:
    fill(store, 2)
    ds = MapDataset.from_urls([store.url("d/obj-000"), store.url("d/missing")],
                              config=store.config)
    assert ds[0][1]
    with pytest.raises(aisio.ObjectNotFoundError):
        ds.__getitems__([0, 1])


# --- iterable --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [1, 16])
def test_iterable_dataset_in_listing_order(store: Store, prefetch: int) -> None:
    data = fill(store, 25)
    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, prefetch=prefetch)
    assert list(ds) == sorted(data.items())
    assert list(ds) == sorted(data.items())  # listed again each pass
    named = IterableDataset.from_urls(sorted(data)[::-1], key_and_length, store.config)
    assert [n for _, n in named] == [len(data[u]) for u in sorted(data)[::-1]]


@pytest.mark.parametrize("workers", [0, 4])  # 2 workers: most other tests
def test_iterable_sharding_reads_each_object_once(store: Store, workers: int) -> None:
    data = fill(store, 23)
    got: collections.Counter[str] = collections.Counter()
    for rank in range(2):  # a world of two ranks, each with its own DataLoader
        ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, rank=rank,
                                         world_size=2)
        mine = [url for url, _ in loader(ds, workers)]
        assert 9 <= len(mine) <= 14
        got.update(mine)
    assert got == collections.Counter(data.keys())


def test_iterable_without_sharding_duplicates_per_worker(store: Store) -> None:
    data = fill(store, 5)
    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config,
                                     shard_by_worker=False, shard_by_rank=False)
    got = collections.Counter(url for url, _ in loader(ds, 2))
    assert got == collections.Counter({url: 2 for url in data})


def test_each_object_is_fetched_once(request: pytest.FixtureRequest) -> None:
    store = make_store("ais", request)
    data = fill(store, 16)
    before = store.server.count(node="targets", method="GET")
    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, rank=1, world_size=2)
    got = [url for url, _ in loader(ds, 2)]
    assert len(got) == 8
    ds0 = IterableDataset.from_prefix(store.url("d/"), config=store.config, rank=0, world_size=2)
    got += [url for url, _ in loader(ds0, 4)]
    assert sorted(got) == sorted(data)
    assert store.server.count(node="targets", method="GET") - before == 16


def test_shuffle_is_deterministic_per_seed_and_epoch(store: Store) -> None:
    data = fill(store, 30)

    def order(seed: int, epoch: int, **kw: Any) -> list[str]:
        ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, shuffle=True,
                                         seed=seed, **kw)
        ds.set_epoch(epoch)
        return [url for url, _ in ds]

    first = order(1, 0)
    assert sorted(first) == sorted(data) and first != sorted(data)
    assert order(1, 0) == first
    assert order(1, 1) != first and order(2, 0) != first

    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, shuffle=True, seed=1)
    passes = [[url for url, _ in ds] for _ in range(2)]  # passes count epochs up
    assert passes == [first, order(1, 1)]

    got: collections.Counter[str] = collections.Counter()
    for rank in range(2):
        ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, shuffle=True,
                                         seed=7, rank=rank, world_size=2)
        ds.set_epoch(3)
        got.update(url for url, _ in loader(ds, 2))
    assert got == collections.Counter(data.keys())


def test_persistent_workers_across_epochs(store: Store) -> None:
    data = fill(store, 12)
    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, shuffle=True)
    dl = loader(ds, 2, persistent_workers=True)
    epochs = [[url for url, _ in dl] for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(data)
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_spawned_workers(request: pytest.FixtureRequest, context: str) -> None:
    store = make_store("ais" if context == "spawn" else "s3", request)
    data = fill(store, 10)
    ds = IterableDataset.from_prefix(store.url("d/"), key_and_length, store.config)
    got = sorted(tuple(item) for item in loader(ds, 2, context))
    assert got == sorted((aisio._url.parse_url(u).key, len(b)) for u, b in data.items())
    if context == "spawn":
        mds = MapDataset.from_prefix(store.url("d/"), config=store.config)
        urls = [url for batch in loader(mds, 2, context, batch_size=4, collate_fn=list)
                for url, _ in batch]
        assert sorted(urls) == sorted(data)
        return
    from aisio.torch import ShardReader

    with aisio.Client(store.config) as client:
        for s in range(3):
            client.put(store.url(f"shards/{s}.tar"), tar_bytes([(f"k{s}.txt", b"t"), (f"k{s}.x", b"")]))
    reader = ShardReader(store.url("shards/"), config=store.config)
    assert sorted(key for key, _ in loader(reader, 2, context)) == ["k0", "k1", "k2"]


def test_dataset_pickles_without_live_state(store: Store) -> None:
    fill(store, 3)
    ds = IterableDataset.from_prefix(store.url("d/"), key_and_length, store.config)
    assert len(list(ds)) == 3
    blob = pickle.dumps(ds)
    assert b"AsyncClient" not in blob and b"portal" not in blob
    assert list(pickle.loads(blob)) == list(ds)


def test_breaking_early_cancels_what_is_in_flight(request: pytest.FixtureRequest) -> None:
    store = make_store("ais", request)
    fill(store, 60, size=1000)
    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, prefetch=4)
    before = store.server.count(node="targets", method="GET")
    it = iter(ds)
    next(it)
    next(it)
    it.close()
    time.sleep(0.3)
    settled = store.server.count(node="targets", method="GET")
    time.sleep(0.3)
    assert store.server.count(node="targets", method="GET") == settled
    assert settled - before < 20


def test_iterable_errors_come_after_the_items_before(store: Store) -> None:
    fill(store, 3)
    urls = [store.url("d/obj-000"), store.url("d/obj-001"), store.url("d/missing"),
            store.url("d/obj-002")]
    ds = IterableDataset.from_urls(urls, config=store.config)
    it = iter(ds)
    assert [next(it)[0] for _ in range(2)] == [parse(u) for u in urls[:2]]
    with pytest.raises(aisio.ObjectNotFoundError):
        next(it)


def test_iterable_lazy_readers(store: Store) -> None:
    data = fill(store, 4, size=5000)
    ds = IterableDataset.from_prefix(
        store.url("d/"), lambda r: (r.url, r.read(7)), store.config,
        reader_constructor=aisio.ReaderConstructor.range_based(0))
    assert list(ds) == [(u, data[u][:7]) for u in sorted(data)]


def test_etl_name(store: Store) -> None:
    data = fill(store, 3)
    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, etl_name="upper")
    if store.name != "ais":
        with pytest.raises(ValueError, match="etl_name needs ais://"):
            list(ds)
        return
    store.server.add_etl("upper", lambda b, args: b.upper().replace(b"\x05", b"ETL"))
    assert list(ds) == [(u, data[u].upper().replace(b"\x05", b"ETL")) for u in sorted(data)]
    mds = MapDataset(store.url("d/"), config=store.config, etl_name="upper")
    first = next(iter(ds))
    assert mds[0] == first


def test_progress_bar(store: Store, capfd: pytest.CaptureFixture[str]) -> None:
    fill(store, 6, size=2000)
    ds = IterableDataset.from_prefix(store.url("d/"), config=store.config, show_progress=True)
    assert len(list(ds)) == 6
    err = capfd.readouterr().err
    assert "IterableDataset" in err and "6.00obj" in err and "B/s" in err and "kB" in err
    assert len(list(loader(ds, 2))) == 6
    err = capfd.readouterr().err
    assert "[worker 0/2]" in err and "[worker 1/2]" in err


# --- DynamicBatchSampler ---------------------------------------------------------------------------


def test_dynamic_batch_sampler_packs_by_size(request: pytest.FixtureRequest,
                                             caplog: pytest.LogCaptureFixture) -> None:
    store = make_store("ais", request)
    sizes = [30, 50, 20, 0, 120, 40, 60, 100, 10]
    with aisio.Client(store.config) as client:
        for i, size in enumerate(sizes):
            client.put(store.url(f"s/{i}"), b"x" * size)
    ds = MapDataset.from_prefix(store.url("s/"), config=store.config)
    heads = store.server.count(method="HEAD")
    batches = list(DynamicBatchSampler(ds, max_batch_size=100))
    assert store.server.count(method="HEAD") == heads  # sizes came from the listing
    assert batches == [[0, 1, 2], [5, 6], [7], [8]]
    assert "size of 0 bytes" in caplog.text and "larger than the max batch size" in caplog.text
    assert list(DynamicBatchSampler(ds, 100, allow_oversized_samples=True)) == [
        [0, 1, 2], [4], [5, 6], [7], [8]]
    assert list(DynamicBatchSampler(ds, 100, drop_last=True)) == [[0, 1, 2], [5, 6], [7]]
    assert list(DynamicBatchSampler(ds, 100, drop_last=True, saturation_factor=0.05)) == [
        [0, 1, 2], [5, 6], [7], [8]]
    assert len(DynamicBatchSampler(ds, 100)) == len(sizes)  # samples, as the seed
    with pytest.raises(ValueError, match="saturation_factor"):
        DynamicBatchSampler(ds, 100, saturation_factor=1.5)

    sampler = DynamicBatchSampler(ds, 100, shuffle=True,
                                  generator=torch.Generator().manual_seed(0))
    shuffled = list(sampler)
    flat = sorted(i for batch in shuffled for i in batch)
    assert flat == [0, 1, 2, 5, 6, 7, 8]
    assert all(sum(sizes[i] for i in batch) <= 100 for batch in shuffled)

    dl = tud.DataLoader(ds, batch_sampler=DynamicBatchSampler(ds, 100), num_workers=2,
                        multiprocessing_context="fork", collate_fn=list)
    assert [[len(b) for _, b in batch] for batch in dl] == [[30, 50, 20], [40, 60], [100],
                                                           [10]]


def test_rank_from_torch_distributed_is_pinned_for_spawned_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from aisio.torch import MultiShardStream, ShardReader

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    config = aisio.ClientConfig()
    for ds in (IterableDataset.from_prefix("s3://bucket/", config=config),
               ShardReader("s3://bucket/", config=config),
               MultiShardStream(["s3://a/", "s3://b/"], config=config)):
        assert ds.rank is None
        copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives
        assert (copy.rank, copy.world_size) == (1, 2)
    ds = IterableDataset.from_prefix("s3://bucket/", config=config)
    assert ds._plan()[1] == Shard(1, 2, 0, 1)
    unsharded = IterableDataset.from_prefix("s3://bucket/", config=config, shard_by_rank=False)
    assert pickle.loads(pickle.dumps(unsharded)).rank is None
