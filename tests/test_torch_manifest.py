"""Manifests: ``aisio manifest`` and ``write_manifest`` write them, ``from_manifest`` reads them.

A dataset built from a manifest never lists (checked by what the loopback S3 server
served, and on every backend by objects added after the manifest staying unseen), knows
its length at once, and reports an object whose ETag changed since, by name.
"""

from __future__ import annotations

import gzip
import itertools
import json
import time
from typing import Any

import pytest

import aisio
from aisio.cli import main
from aisio.torch import IterableDataset, MapDataset, ShardReader, write_manifest
from aisio.torch._manifest import encode_line
from tests.conftest import Store, make_store

from .torch_helpers import lists, put_objects, put_shards, s3_requests  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def url(store: Store, key: str) -> str:
    return aisio._url.parse_url(store.url(key)).url


def test_from_manifest_never_lists_and_reports_changed_objects(store: Store) -> None:
    put_objects(store, 9)
    manifest = store.url("m/train.jsonl.gz")
    assert write_manifest(store.url("o/"), manifest, config=store.config) == 9
    with aisio.Client(store.config) as client:
        raw = client.get(manifest)
        listed = list(client.list(store.url("o/")))
    assert raw[:2] == b"\x1f\x8b"  # gzip
    lines = [json.loads(line) for line in gzip.decompress(raw).splitlines()]
    assert [(e["url"], e["size"], e["etag"]) for e in lines] == [
        (i.url, i.size, i.etag) for i in listed]

    ds = IterableDataset.from_manifest(manifest, config=store.config)
    mds = MapDataset.from_manifest(manifest, config=store.config)
    assert len(ds) == len(mds) == 9 and ds.manifest_url == mds.manifest_url
    every = list(IterableDataset.from_prefix(store.url("o/"), config=store.config))
    assert list(ds) == every and mds[4] == every[4]

    put_objects(store, 12, start=9)  # three objects more
    with aisio.Client(store.config) as client:
        client.put(store.url("o/003"), b"changed")
    fresh = IterableDataset.from_manifest(manifest, config=store.config)
    assert len(fresh) == 9  # never listed, so nothing new appears
    it = iter(fresh)
    assert [next(it)[0] for _ in range(3)] == [url(store, f"o/{i:03d}") for i in range(3)]
    with pytest.raises(aisio.ObjectChangedError, match="changed since the manifest") as info:
        next(it)
    assert info.value.url == url(store, "o/003")
    assert url(store, "m/train.jsonl.gz") in str(info.value)
    with pytest.raises(aisio.ObjectChangedError, match=r"o/003 changed since the manifest"):
        MapDataset.from_manifest(manifest, config=store.config)[3]


def test_shard_reader_from_manifest_with_counts(store: Store) -> None:
    counts = [3, 1, 4]
    put_shards(store, counts)
    manifest = store.url("m/shards.jsonl.gz")
    write_manifest(store.url("s/"), manifest, config=store.config, count_samples=True)
    reader = ShardReader.from_manifest(manifest, config=store.config, shuffle=True)
    assert len(reader) == 8  # from the manifest's counts: nothing read
    assert sorted(key for key, _ in reader) == sorted(
        f"k{k}_{i:02d}" for k, n in enumerate(counts) for i in range(n))
    ranked = ShardReader.from_manifest(manifest, config=store.config, rank=1, world_size=2,
                                       drop_last=True)
    assert len(ranked) == sum(1 for _ in ranked) == 1  # one shard each; the smaller count
    put_shards(store, [2])  # shard 00 rewritten
    with pytest.raises(aisio.ObjectChangedError, match=r"s/00\.tar changed since the manifest"):
        list(ShardReader.from_manifest(manifest, config=store.config))


def test_the_cli_writes_what_from_manifest_reads(request: pytest.FixtureRequest,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("file", "s3"):
        store = make_store(name, request)
        if name == "s3":
            for var, value in store.server.env().items():
                monkeypatch.setenv(var, value)
        put_objects(store, 5)
        out = store.url("o/manifest.jsonl.gz")  # under the prefix: left out of itself
        assert main(["manifest", store.url("o/"), out]) == 0
        assert capsys.readouterr().out.startswith("5 objects -> ")
        ds = IterableDataset.from_manifest(out, config=store.config)
        assert [u for u, _ in ds] == [url(store, f"o/{i:03d}") for i in range(5)]
    assert main(["manifest", store.url("o/"), store.url("o/")]) == 1
    assert "OUT_URL names a prefix" in capsys.readouterr().err


def test_a_bad_manifest_names_its_line(request: pytest.FixtureRequest) -> None:
    store = make_store("file", request)
    with aisio.Client(store.config) as client:
        client.put(store.url("bad.jsonl"), b'{"url": "s3://b/k", "size": 1}\n{"url": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not a manifest entry"):
        IterableDataset.from_manifest(store.url("bad.jsonl"), config=store.config)
    with pytest.raises(aisio.ObjectNotFoundError):
        MapDataset.from_manifest(store.url("missing.jsonl.gz"), config=store.config)


def test_a_manifest_of_100000_objects_is_read_without_listing(s3_requests: Any) -> None:  # noqa: F811
    store, served = s3_requests
    put_objects(store, 3)
    with aisio.Client(store.config) as client:
        real = list(client.list(store.url("o/")))
        fake = (aisio.ObjectInfo(url(store, f"x/{i:06d}"), 1000 + i, f'"{i:032x}"')
                for i in range(100_000 - len(real)))
        data = b"".join(encode_line(info, samples=2, members=4)
                        for info in itertools.chain(real, fake))
        client.put(store.url("m/big.jsonl.gz"), gzip.compress(data))
    manifest = store.url("m/big.jsonl.gz")
    served()
    start = time.monotonic()
    ds = IterableDataset.from_manifest(manifest, config=store.config, rank=0, world_size=1,
                                       prefetch=2)
    assert len(ds) == 100_000
    mds = MapDataset.from_manifest(manifest, config=store.config)
    assert len(mds) == 100_000 and mds.sizes()[-1] == 1000 + 100_000 - 4
    shards = ShardReader.from_manifest(manifest, config=store.config, rank=1, world_size=4)
    assert len(shards) == 50_000  # samples counted in the manifest
    assert time.monotonic() - start < 20
    first = list(itertools.islice(ds, 3))
    assert [u for u, _ in first] == [info.url for info in real]
    assert [u for u, _ in mds.__getitems__([0, 2])] == [real[0].url, real[2].url]
    requests = served()
    assert lists(requests) == 0
    manifest_path = aisio._url.parse_url(manifest).key
    assert any(path.endswith(manifest_path) for _, path, _ in requests)
