"""The local cache (``ClientConfig(cache=...)``) in one process, on every backend.

What is checked: a second read of any kind is served from the cache (and by a new client,
as another process would be); a changed object is fetched again; writes through the client
forget the URL; broken blocks are dropped and fetched again; an object larger than the cache
streams through uncached; eviction is least-recently-used and keeps the limit; the options
and ``aisio cache ls|du|clear``. Several processes at once: ``test_cache_processes.py``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import aisio
from aisio._cache._store import Store
from aisio._url import parse_url
from aisio.cli import main

from . import conftest

KiB = 2**10
BLOCK = 64 * KiB


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Cached:
    """A store, a config that reaches it with a cache in ``folder``, and one without."""

    store: conftest.Store
    folder: str
    plain: aisio.ClientConfig

    def config(self, **options: Any) -> aisio.ClientConfig:
        settings: dict[str, Any] = {"max_bytes": 64 * BLOCK, "block_size": BLOCK, **options}
        return self.plain.replace(cache=aisio.CacheOptions(self.folder, **settings))

    def url(self, key: str) -> str:
        return self.store.url(key)

    def disk(self) -> Store:
        return Store(self.folder, 1, BLOCK)

    async def put(self, files: dict[str, bytes]) -> dict[str, aisio.ObjectInfo]:
        """Write objects behind the cache's back (a client without one)."""
        async with aisio.AsyncClient(self.plain) as c:
            return {key: await c.put(self.url(key), data) for key, data in files.items()}


@pytest.fixture(params=["file", "s3", "ais"])
def cached(request: pytest.FixtureRequest, tmp_path: Any) -> Cached:
    """Each backend (RGW is one more S3 server; the wrapper is the same over it)."""
    store = conftest.make_store(request.param, request, part_size=BLOCK)
    return Cached(store, str(tmp_path / "cache"), store.config)


def block_files(folder: str, suffix: str = ".blk") -> dict[str, int]:
    """Name -> size of the cache's files that end in ``suffix``."""
    out = {}
    for root, _, names in os.walk(os.path.join(folder, "v1", "blocks")):
        for name in names:
            if name.endswith(suffix):
                out[name] = os.path.getsize(os.path.join(root, name))
    return out


def ledger(folder: str) -> int:
    with Store(folder, 1, BLOCK)._ledger() as led:
        return led.total


def counts(stats: aisio.Statistics) -> tuple[int, int, int]:
    return stats.cache_hits, stats.cache_misses, stats.cache_bytes


# -- served from the cache --


async def read_every_way(c: aisio.AsyncClient, url: str, data: bytes) -> None:
    """get, get_into, ranges, scatter and the three readers; each must give the right bytes."""
    n = len(data)
    assert await c.get(url) == data
    buf = bytearray(n)
    assert await c.get_into(url, buf) == n and buf == data
    assert await c.get(url, 100, 2 * BLOCK + 5) == data[100:2 * BLOCK + 5]
    spans = [(0, 10), (BLOCK - 3, BLOCK + 50), (n - 7, n)]
    assert [bytes(v) for v in await c.get_ranges(url, spans, max_gap=0)] == [data[s:e] for s, e in spans]
    a, b = bytearray(20), bytearray(BLOCK + 1)
    await c.get_ranges_into(url, [(5, a), (2 * BLOCK - 1, b)])
    assert a == data[5:25] and b == data[2 * BLOCK - 1:3 * BLOCK]
    info = await c.head(url)
    for constructor in (aisio.ReaderConstructor.sequential(),
                        aisio.ReaderConstructor.range_based(1000),
                        aisio.ReaderConstructor.dcp_optimized(0)):
        async with await c.open(url, constructor, info=info, ranges=spans) as r:
            r.seek(BLOCK - 3)
            assert await r.read(53) == data[BLOCK - 3:BLOCK + 50]
            r.seek(n - 7)
            assert await r.read() == data[n - 7:]
            r.seek(0)
            assert await r.read(10) == data[:10]
            assert await r.read() == data[10:]


async def test_a_second_read_of_any_kind_comes_from_the_cache(cached: Cached) -> None:
    data = payload(3 * BLOCK + 1234, 1)  # four blocks, the last one short
    await cached.put({"a.bin": data})
    url = cached.url("a.bin")
    async with aisio.AsyncClient(cached.config()) as c:
        assert await c.get(url) == data
        assert counts(c.statistics()) == (0, 4, 0)
        await read_every_way(c, url, data)
        hits, misses, served = counts(c.statistics())
        assert misses == 4 and hits > 4 and served > 2 * len(data)  # nothing fetched twice
    files = block_files(cached.folder)
    assert len(files) == 4 and sum(files.values()) == ledger(cached.folder)
    assert sum(files.values()) - len(data) < 4 * 300  # headers only
    async with aisio.AsyncClient(cached.config()) as c:  # a new client, as in another process
        assert await c.get(url) == data
        assert counts(c.statistics()) == (4, 0, len(data))


async def test_an_empty_object_and_reads_at_the_end(cached: Cached) -> None:
    data = payload(2 * BLOCK, 2)  # ends on a block boundary
    await cached.put({"empty": b"", "even.bin": data})
    async with aisio.AsyncClient(cached.config()) as c:
        listed = {i.url: i async for i in c.list(cached.url(""))}
        empty = listed[parse_url(cached.url("empty")).url]
        for _ in range(2):
            assert await c.get(cached.url("empty")) == b""  # the HEAD says: no bytes to get
            async with await c.open(cached.url("empty"), info=empty) as r:
                assert await r.read() == b""  # the size comes from the store, then the cache
            assert await c.get(cached.url("even.bin")) == data
            assert await c.get(cached.url("even.bin"), 2 * BLOCK) == b""
            assert await c.get(cached.url("even.bin"), BLOCK, 2 * BLOCK) == data[BLOCK:]
            with pytest.raises(aisio.RangeError):
                await c.get(cached.url("even.bin"), 0, 2 * BLOCK + 1)
        assert counts(c.statistics())[:2] == (4, 2)  # even.bin's two blocks, fetched once


async def test_a_changed_object_is_fetched_again(cached: Cached) -> None:
    old, new = payload(2 * BLOCK + 10, 3), payload(2 * BLOCK + 10, 4)  # same size, other bytes
    await cached.put({"c.bin": old})
    url = cached.url("c.bin")
    async with aisio.AsyncClient(cached.config()) as c:
        assert await c.get(url) == old
        await cached.put({"c.bin": new})  # behind the cache's back
        assert await c.get(url) == new  # the HEAD says which version is current
        assert c.statistics().cache_misses == 6
        (info,) = [i async for i in c.list(cached.url(""))]  # a listing's ETag: no HEAD needed
        async with await c.open(url, info=info) as r:
            assert await r.read() == new
        assert c.statistics().cache_misses == 6
    versions = cached.disk().summaries()  # the old version stays until evicted, never served
    assert len(versions) == 2 and info.etag in [v.etag for v in versions]


async def test_writes_through_the_client_forget_the_object(cached: Cached) -> None:
    url = cached.url("w.bin")
    first, second, third = payload(BLOCK + 5, 5), payload(BLOCK + 9, 6), payload(3 * BLOCK, 7)
    async with aisio.AsyncClient(cached.config()) as c:
        await c.put(url, first)
        assert await c.get(url) == first and len(block_files(cached.folder)) == 2
        await c.put(url, second)
        assert block_files(cached.folder) == {}
        assert await c.get(url) == second
        async with c.writer(url) as w:  # an upload in parts
            await w.write(third)
        assert block_files(cached.folder) == {}
        assert await c.get(url) == third and len(block_files(cached.folder)) == 3
        await c.delete(url)
        assert block_files(cached.folder) == {}
        with pytest.raises(aisio.ObjectNotFoundError):
            await c.get(url)
    assert ledger(cached.folder) == 0


# -- broken entries --


async def test_broken_blocks_are_dropped_and_fetched_again(cached: Cached) -> None:
    data = payload(3 * BLOCK + 77, 8)
    await cached.put({"b.bin": data})
    url = cached.url("b.bin")
    async with aisio.AsyncClient(cached.config()) as c:
        assert await c.get(url) == data
    paths = sorted(os.path.join(root, n) for root, _, names in
                   os.walk(os.path.join(cached.folder, "v1", "blocks")) for n in names)
    by_index = {int(p.rsplit("-", 1)[1].split(".")[0]): p for p in paths}
    with open(by_index[0], "r+b") as f:  # one data bit flipped: the CRC catches it
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with open(by_index[1], "r+b") as f:  # cut short
        f.truncate(os.path.getsize(by_index[1]) - 1)
    with open(by_index[2], "r+b") as f:  # a header bit flipped: its own CRC catches it
        f.seek(30)
        byte = f.read(1)
        f.seek(30)
        f.write(bytes([byte[0] ^ 4]))
    async with aisio.AsyncClient(cached.config()) as c:
        assert await c.get(url) == data
        assert counts(c.statistics())[:2] == (1, 3)  # block 3 was sound; the others refetched
        assert await c.get(url) == data
        assert counts(c.statistics())[:2] == (5, 3)
    assert ledger(cached.folder) >= sum(block_files(cached.folder).values())  # over, never under
    assert cached.disk().clear() > 0
    assert ledger(cached.folder) == 0 and block_files(cached.folder) == {}


# -- the size limit --


async def test_an_object_larger_than_the_cache_streams_through(cached: Cached) -> None:
    big, small = payload(5 * BLOCK + 3, 9), payload(BLOCK // 2, 10)
    await cached.put({"big.bin": big, "small.bin": small})
    config = cached.config(max_bytes=2 * BLOCK)
    async with aisio.AsyncClient(config) as c:
        await read_every_way(c, cached.url("big.bin"), big)
        assert block_files(cached.folder) == {}
        stats = c.statistics()
        assert stats.cache_hits == stats.cache_bytes == 0 and stats.cache_misses > 0
        assert await c.get(cached.url("small.bin")) == small
        assert await c.get(cached.url("small.bin")) == small
        assert len(block_files(cached.folder)) == 1 and c.statistics().cache_hits == 1


async def test_eviction_takes_the_least_recently_used_blocks(tmp_path: Any) -> None:
    folder = str(tmp_path / "cache")
    config = aisio.ClientConfig(cache=aisio.CacheOptions(folder, max_bytes=3 * BLOCK + 3 * KiB,
                                                         block_size=BLOCK))
    objects = {k: payload(BLOCK, i) for i, k in enumerate("abcd")}
    for key, data in objects.items():
        (tmp_path / key).write_bytes(data)
    async with aisio.AsyncClient(config) as c:
        for key in "abca":  # a, b, c cached; then a used again
            assert await c.get(str(tmp_path / key)) == objects[key]
            time.sleep(0.01)  # file times tick in milliseconds
        assert len(block_files(folder)) == 3
        assert await c.get(str(tmp_path / "d")) == objects["d"]  # b and c leave (down to 90%)
        assert sum(block_files(folder).values()) <= 3 * BLOCK + 3 * KiB
        await c.get(str(tmp_path / "a"))
        await c.get(str(tmp_path / "d"))
        assert counts(c.statistics())[:2] == (3, 4)  # a twice and d from the cache
    assert len(block_files(folder)) == 2 and ledger(folder) == sum(block_files(folder).values())


# -- options --


def test_options_are_checked_frozen_and_picklable(tmp_path: Any) -> None:
    assert aisio.ClientConfig().cache is None and aisio.ClientConfig.from_env({}).cache is None
    options = aisio.CacheOptions("~/x", max_bytes=10, block_size=8192, validate_after=5)
    assert options.dir == os.path.expanduser("~/x") and options.validate_after == 5.0
    assert aisio.CacheOptions("rel").dir == os.path.abspath("rel")
    config = aisio.ClientConfig(cache=options)
    assert pickle.loads(pickle.dumps(config)) == config and hash(config) == hash(pickle.loads(
        pickle.dumps(config)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_bytes = 1  # type: ignore[misc]
    for bad in ({"max_bytes": 0}, {"block_size": 100}, {"block_size": 2**31}, {"validate_after": -1},
                {"validate_after": float("nan")}):
        with pytest.raises(ValueError):
            aisio.CacheOptions("x", **bad)
    for wrong in ({"max_bytes": 1.5}, {"max_bytes": True}, {"validate_after": "1"}):
        with pytest.raises(TypeError):
            aisio.CacheOptions("x", **wrong)
    with pytest.raises(ValueError):
        aisio.CacheOptions("")
    with pytest.raises(TypeError):
        aisio.ClientConfig(cache={"dir": "x"})  # type: ignore[arg-type]


def test_from_env_reads_the_cache_variables() -> None:
    env = {"AISIO_CACHE_DIR": "/nvme/c", "AISIO_CACHE_MAX_BYTES": "500GiB",
           "AISIO_CACHE_BLOCK_SIZE": "4M", "AISIO_CACHE_VALIDATE_AFTER": "30"}
    assert aisio.ClientConfig.from_env(env).cache == aisio.CacheOptions(
        "/nvme/c", max_bytes=500 * 2**30, block_size=4 * 2**20, validate_after=30)
    assert aisio.ClientConfig.from_env({"AISIO_CACHE_DIR": "/c", "AISIO_CACHE_MAX_BYTES": "123"}
                                       ).cache == aisio.CacheOptions("/c", max_bytes=123)
    for bad in ({"AISIO_CACHE_MAX_BYTES": "1G"}, {"AISIO_CACHE_DIR": "/c", "AISIO_CACHE_MAX_BYTES": "lots"},
                {"AISIO_CACHE_DIR": "/c", "AISIO_CACHE_VALIDATE_AFTER": "soon"}):
        with pytest.raises(ValueError, match="AISIO_CACHE_"):
            aisio.ClientConfig.from_env(bad)


async def test_a_cache_folder_that_cannot_be_made_is_an_error(tmp_path: Any) -> None:
    (tmp_path / "file").write_bytes(b"x")
    config = aisio.ClientConfig(cache=aisio.CacheOptions(str(tmp_path / "file" / "cache")))
    async with aisio.AsyncClient(config) as c:
        with pytest.raises(OSError, match="cache folder"):
            await c.get(str(tmp_path / "file"))


# -- aisio cache --


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("AWS_", "AIS_", "AISIO_")):
            monkeypatch.delenv(name)
    yield


def test_the_cache_command_lists_sizes_and_clears(tmp_path: Any, capsys: Any, no_env: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = str(tmp_path / "cache")
    (tmp_path / "one.bin").write_bytes(payload(3 * BLOCK, 11))
    (tmp_path / "two.bin").write_bytes(payload(10, 12))
    with aisio.Client(aisio.ClientConfig(cache=aisio.CacheOptions(folder, block_size=BLOCK))) as c:
        c.get(str(tmp_path / "one.bin"))
        c.get(str(tmp_path / "two.bin"), 0, 5)
    on_disk = sum(block_files(folder).values())
    assert main(["cache", "ls", "--dir", folder]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[1] == str(3 * BLOCK) and lines[0].endswith("one.bin")
    assert lines[1].split()[1] == "10" and lines[1].endswith("two.bin")
    monkeypatch.setenv("AISIO_CACHE_DIR", folder)  # the default folder
    assert main(["cache", "du"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == str(on_disk)
    assert main(["cache", "du", "--json"]) == 0
    assert '"blocks": 4, "objects": 2' in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith(f"cleared {on_disk} from {folder}")
    assert block_files(folder) == {} and main(["cache", "ls"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("AISIO_CACHE_DIR")
    assert main(["cache", "du"]) == 1
    assert "AISIO_CACHE_DIR" in capsys.readouterr().err
    assert main(["cache", "du", "--dir", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.startswith("0\t") and not (tmp_path / "none").exists()


def test_the_cache_runs_under_trio(tmp_path: Any) -> None:
    trio = pytest.importorskip("trio")
    if tuple(int(p) for p in trio.__version__.split(".")[:2]) < (0, 32):
        pytest.skip(f"anyio's trio backend needs trio >= 0.32, found {trio.__version__}")
    data = payload(5 * 2**20 // 2, 13)  # blocks of 1 MiB: read and checked in worker threads
    (tmp_path / "t.bin").write_bytes(data)
    options = aisio.CacheOptions(str(tmp_path / "cache"), block_size=2**20)
    config = aisio.ClientConfig(part_size=2**20, cache=options)

    async def main() -> None:
        async with aisio.AsyncClient(config) as c:
            assert await c.get(str(tmp_path / "t.bin")) == data
            assert await c.get(str(tmp_path / "t.bin")) == data
            assert counts(c.statistics()) == (3, 3, len(data))
            await c.put(str(tmp_path / "t.bin"), b"new")
            assert await c.get(str(tmp_path / "t.bin")) == b"new"

    trio.run(main)
