"""ShardReader and MultiShardStream on every backend, checked against webdataset's reader."""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any

import pytest
import torch.utils.data as tud
import webdataset as wds

import aisio
from aisio.errors import ShardFormatError
from aisio.torch import MultiShardStream, ShardReader, ZeroDict
from tests.conftest import Store, make_store

from .shards import tar_bytes

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def sample(shard: int, i: int) -> dict[str, Any]:
    """A webdataset sample; some extensions are missing, some have dots or capitals."""
    out: dict[str, Any] = {"__key__": f"dir/s{shard}/x_{i:03d}", "cls": str(i % 3).encode()}
    if i % 2 == 0:
        out["jpg"] = bytes([i % 256]) * (300 + 7 * i)
    if i % 3 == 0:
        out["seg.png"] = f"mask {shard}-{i}".encode()
    if i % 5 == 0:
        out["TXT"] = f"caption {shard}-{i}".encode()
    return out


def write_shards(store: Store, folder: str, count: int, per_shard: int, name: str = "shard",
                 big: int = 0) -> list[str]:
    """Write shards with webdataset's TarWriter to a local folder and to the store."""
    local = os.path.join(str(store.server_dir), folder)
    os.makedirs(local, exist_ok=True)
    paths = []
    for s in range(count):
        path = os.path.join(local, f"{name}-{s:03d}.tar")
        with wds.TarWriter(path) as writer:
            for i in range(per_shard):
                item = sample(s, i)
                if big and i == 1:
                    item["bin"] = os.urandom(big)
                writer.write(item)
        with open(path, "rb") as f:
            put(store, {store.url(f"{folder}{name}-{s:03d}.tar"): f.read()})
        paths.append(path)
    return paths


def put(store: Store, objects: dict[str, bytes]) -> None:
    with aisio.Client(store.config) as client:
        for url, data in objects.items():
            client.put(url, data)


@pytest.fixture
def shards_store(store: Store, tmp_path: Any) -> Store:
    store.server_dir = tmp_path / "local"  # type: ignore[attr-defined]
    return store


def webdataset_samples(paths: list[str]) -> list[tuple[str, dict[str, bytes]]]:
    """webdataset's own reader (its tar expander and key grouping) over local shard files."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    out = []
    for path in paths:
        with open(path, "rb") as stream:
            for s in group_by_keys(tar_file_expander([{"url": path, "stream": stream}])):
                out.append((s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}))
    return out


def same_as_webdataset(ours: list[tuple[str, ZeroDict]],
                       theirs: list[tuple[str, dict[str, bytes]]]) -> None:
    assert [key for key, _ in ours] == [key for key, _ in theirs]
    for (_, mine), (_, ref) in zip(ours, theirs, strict=True):
        assert isinstance(mine, ZeroDict)
        assert {k: v for k, v in mine.items() if k in ref} == ref
        assert all(v == b"" for k, v in mine.items() if k not in ref)  # ZeroDict's fillers


def test_matches_webdataset_reader(shards_store: Store) -> None:
    paths = write_shards(shards_store, "wds/", 4, 15, big=3 * 2**20)
    theirs = webdataset_samples(paths)
    reader = ShardReader(shards_store.url("wds/"), config=shards_store.config)
    same_as_webdataset(list(reader), theirs)
    assert theirs[1][1]["bin"] and "seg.png" in theirs[0][1] and "txt" in theirs[0][1]
    # named shards, in the order given
    named = ShardReader([shards_store.url("wds/shard-002.tar"), shards_store.url("wds/shard-000.tar")],
                        config=shards_store.config)
    same_as_webdataset(list(named), webdataset_samples([paths[2], paths[0]]))


def test_default_collate_in_workers(shards_store: Store) -> None:
    write_shards(shards_store, "wds/", 4, 10)
    reader = ShardReader(shards_store.url("wds/"), config=shards_store.config)
    loader = tud.DataLoader(reader, batch_size=4, num_workers=2, multiprocessing_context="fork")
    keys, batches = [], []
    for batch_keys, batch in loader:
        keys += batch_keys
        batches.append(batch)
        assert set(batch) >= {"cls"} and all(len(v) == len(batch_keys) for v in batch.values())
    assert sorted(keys) == sorted(f"dir/s{s}/x_{i:03d}" for s in range(4) for i in range(10))
    assert any(b"" in batch.get("txt", []) for batch in batches)


@pytest.mark.parametrize("workers", [0, 4])  # 2 workers: most other tests
def test_shards_are_shared_out_once(shards_store: Store, workers: int) -> None:
    write_shards(shards_store, "wds/", 6, 3)
    got: collections.Counter[str] = collections.Counter()
    for rank in range(2):
        reader = ShardReader(shards_store.url("wds/"), config=shards_store.config, rank=rank,
                             world_size=2, shuffle=True, seed=3)
        loader = tud.DataLoader(reader, batch_size=None, num_workers=workers,
                                multiprocessing_context="fork" if workers else None)
        got.update(key for key, _ in loader)
    assert got == collections.Counter(f"dir/s{s}/x_{i:03d}" for s in range(6) for i in range(3))


def test_shard_shuffle_is_deterministic(shards_store: Store) -> None:
    write_shards(shards_store, "wds/", 8, 1)

    def order(epoch: int) -> list[str]:
        reader = ShardReader(shards_store.url("wds/"), config=shards_store.config, shuffle=True,
                             seed=5)
        reader.set_epoch(epoch)
        return [key for key, _ in reader]

    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == [f"dir/s{s}/x_000" for s in range(8)]


def test_truncated_and_corrupt_shards_raise_after_the_shards_before(store: Store) -> None:
    good = tar_bytes([("a.txt", b"1"), ("a.cls", b"x"), ("b.txt", b"2")])
    long = tar_bytes([("c.txt", b"3"), ("c.bin", b"z" * 5000), ("d.txt", b"4")])
    put(store, {store.url("bad/0.tar"): good,
                store.url("bad/1.tar"): long[:512 + 512 + 512 + 1000]})  # cut inside c.bin
    reader = ShardReader(store.url("bad/"), config=store.config)
    it = iter(reader)
    assert [next(it)[0] for _ in range(2)] == ["a", "b"]
    with pytest.raises(ShardFormatError) as info:
        next(it)
    assert info.value.url == aisio._url.parse_url(store.url("bad/1.tar")).url
    assert info.value.offset == 1024 and "truncated" in str(info.value)
    assert "bad/1.tar" in str(info.value.url)

    corrupt = bytearray(long)
    corrupt[1024 + 148] ^= 0x01  # the checksum of c.bin's header
    put(store, {store.url("bad/1.tar"): bytes(corrupt)})
    with pytest.raises(ShardFormatError, match="checksum") as info:
        list(ShardReader(store.url("bad/"), config=store.config))
    assert info.value.offset == 1024
    err = pickle.loads(pickle.dumps(info.value))  # crosses from DataLoader workers
    assert (err.url, err.offset) == (info.value.url, info.value.offset)


def test_prefix_map_and_named_shards(shards_store: Store) -> None:
    write_shards(shards_store, "m/", 2, 2, name="train")
    write_shards(shards_store, "m/", 2, 2, name="val")
    source = shards_store.url("m/")
    only_val = ShardReader(source, prefix_map={source: "val-"}, config=shards_store.config)
    assert len(list(only_val)) == 4
    both = ShardReader([source], prefix_map={source: ["val-001", "train-"]},
                       config=shards_store.config)
    assert [key for key, _ in both] == ["dir/s1/x_000", "dir/s1/x_001", "dir/s0/x_000",
                                         "dir/s0/x_001", "dir/s1/x_000", "dir/s1/x_001"]
    with pytest.raises(ValueError, match="prefix_map names sources"):
        ShardReader(source, prefix_map={shards_store.url("other/"): "x"},
                    config=shards_store.config)


def test_etl_name(shards_store: Store) -> None:
    paths = write_shards(shards_store, "e/", 2, 3)
    if shards_store.name != "ais":
        with pytest.raises(ValueError, match="etl_name needs ais://"):
            ShardReader(shards_store.url("e/"), etl_name="identity", config=shards_store.config)
        return
    reader = ShardReader(shards_store.url("e/"), etl_name="identity", config=shards_store.config)
    same_as_webdataset(list(reader), webdataset_samples(paths))
    missing = ShardReader(shards_store.url("e/"), etl_name="nope", config=shards_store.config)
    with pytest.raises(aisio.AisioError):
        list(missing)


def test_progress_and_early_close(shards_store: Store, capfd: pytest.CaptureFixture[str]) -> None:
    write_shards(shards_store, "p/", 3, 4)
    reader = ShardReader(shards_store.url("p/"), show_progress=True, config=shards_store.config)
    assert len(list(reader)) == 12
    err = capfd.readouterr().err
    assert "ShardReader" in err and "sample" in err and "B/s" in err
    it = iter(reader)
    next(it)
    it.close()  # cancels the shards in flight; nothing left open (warnings are errors)
    blob = pickle.dumps(reader)
    assert len(list(pickle.loads(blob))) == 12


def test_multishard_stream(shards_store: Store) -> None:
    write_shards(shards_store, "ms/a/", 2, 3)
    write_shards(shards_store, "ms/b/", 2, 3)
    write_shards(shards_store, "ms/c/", 1, 3)
    a, b, c = (shards_store.url(f"ms/{x}/") for x in "abc")
    cfg = shards_store.config
    tuples = list(MultiShardStream([a, b], config=cfg))
    # every member of every shard, in tar order: x_000.TXT, x_000.cls, x_000.jpg, ...
    assert len(tuples) == 2 * (4 + 1 + 2)
    assert all(x == y for x, y in tuples)
    assert tuples[:2] == [(b"caption 0-0", b"caption 0-0"), (b"0", b"0")]
    shortest = list(MultiShardStream([a, c], config=cfg))
    assert len(shortest) == 4 + 1 + 2

    got: collections.Counter[bytes] = collections.Counter()
    loader = tud.DataLoader(MultiShardStream([a, b], config=cfg), batch_size=None,
                            num_workers=2, multiprocessing_context="fork")
    for x, y in loader:
        assert x == y
        got[x] += 1
    assert got == collections.Counter(x for x, _ in tuples)
    with pytest.raises(ValueError, match="same number of shards"):
        list(MultiShardStream([a, c], config=cfg, rank=0, world_size=2))


def test_shard_reader_on_a_real_size_shard(request: pytest.FixtureRequest, tmp_path: Any
                                           ) -> None:
    store = make_store("s3", request)
    store.server_dir = tmp_path  # type: ignore[attr-defined]
    paths = write_shards(store, "big/", 1, 40, big=9 * 2**20)
    reader = ShardReader(store.url("big/"), config=store.config)
    same_as_webdataset(list(reader), webdataset_samples(paths))


def test_a_shard_is_streamed_not_held(tmp_path: Any) -> None:
    path = tmp_path / "big.tar"
    with wds.TarWriter(str(path)) as writer:
        for i in range(100):
            writer.write({"__key__": f"s{i:03d}", "bin": bytes(2**20)})
    config = aisio.ClientConfig()
    reader = ShardReader(str(path), config=config)
    before = reader.client.statistics().bytes_received
    it = iter(reader)
    key, first = next(it)
    read = reader.client.statistics().bytes_received - before
    assert key == "s000" and len(first["bin"]) == 2**20
    assert read < 60 * 2**20  # of 100 MiB: the look-ahead and queues, not the shard
    assert sum(1 for _ in it) == 99
