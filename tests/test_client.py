"""The client's methods behave the same on every backend, awaited or blocking."""

from __future__ import annotations

import contextlib
import io
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

import aisio
from aisio import ReaderConstructor

from .conftest import API, Store

MiB = 2**20
READERS = [
    ReaderConstructor.sequential(),
    ReaderConstructor.range_based(),
    ReaderConstructor.range_based(buffer_size=0),
    ReaderConstructor.dcp_optimized(),
]


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


async def test_put_then_get_whole_and_ranges(api: API, store: Store) -> None:
    data = payload(3 * MiB + 17)
    url = store.url("obj.bin")
    info = await api.put(url, data)
    assert info.size == len(data)
    assert await api.get(url) == data
    assert await api.get(url, 0, 100) == data[:100]
    assert await api.get(url, len(data) - 5) == data[-5:]
    assert await api.get(url, 10, 10) == b""


@pytest.mark.parametrize("size", [100, 1 * MiB + 5])
async def test_get_returns_independent_immutable_bytes(api: API, store: Store, size: int) -> None:
    """Large bodies land straight in the ``bytes`` object returned: each one its own."""
    url = store.url("own.bin")
    await api.put(url, payload(size, seed=3))
    first, second = await api.get(url), await api.get(url)
    assert type(first) is bytes and type(second) is bytes
    assert first == second == payload(size, seed=3) and first is not second
    assert hash(first) == hash(payload(size, seed=3))
    await api.put(url, payload(size, seed=4))
    assert await api.get(url) == payload(size, seed=4) and first == payload(size, seed=3)


async def test_large_get_is_split_into_parallel_parts(api: API, store: Store) -> None:
    data = payload(12 * MiB + 3, seed=1)
    url = store.url("big.bin")
    await api.put(url, data)
    before = api.statistics().requests
    assert await api.get(url) == data
    assert api.statistics().requests - before == 3  # 5 MiB parts


async def test_head_reports_size_and_etag(api: API, store: Store) -> None:
    url = store.url("h.bin")
    await api.put(url, b"hello")
    info = await api.head(url)
    assert (info.size, info.url) == (5, url if store.name != "file" else "file://" + url)
    assert info.etag
    if store.name == "s3":  # what botocore's head_object says, field by field
        bucket, key = url.removeprefix("s3://").split("/", 1)
        theirs = store.server.boto3_client().head_object(Bucket=bucket, Key=key)
        assert (info.etag, info.last_modified) == (theirs["ETag"], theirs["LastModified"])


async def test_empty_object(api: API, store: Store) -> None:
    url = store.url("empty")
    await api.put(url, b"")
    assert await api.get(url) == b""
    assert await api.get_into(url, bytearray(10)) == 0
    assert (await api.head(url)).size == 0


@pytest.mark.parametrize("kind", ["bytearray", "numpy", "tensor", "bf16-tensor"])
async def test_get_into_fills_any_writable_buffer(api: API, store: Store, kind: str) -> None:
    data = payload(6 * MiB, seed=2)
    url = store.url("into.bin")
    await api.put(url, data)
    buf: object
    if kind == "bytearray":
        buf = bytearray(len(data))
    elif kind == "numpy":
        buf = np.zeros(len(data) // 4, dtype=np.float32)
    elif kind == "tensor":
        buf = torch.empty(len(data) // 8, dtype=torch.float64)
    else:
        buf = torch.empty(len(data) // 2, dtype=torch.bfloat16)
    assert await api.get_into(url, buf) == len(data)
    raw = buf.view(torch.uint8).numpy().tobytes() if isinstance(buf, torch.Tensor) else bytes(buf)  # type: ignore[call-overload]
    assert raw == data


async def test_get_into_from_offset_stops_at_end_of_object(api: API, store: Store) -> None:
    data = payload(1000)
    url = store.url("o.bin")
    await api.put(url, data)
    buf = bytearray(600)
    assert await api.get_into(url, buf, start=700) == 300
    assert bytes(buf[:300]) == data[700:]
    assert await api.get_into(url, buf, start=1000) == 0


async def test_get_ranges_coalesces_nearby_ranges(api: API, store: Store) -> None:
    data = payload(2 * MiB, seed=3)
    url = store.url("r.bin")
    await api.put(url, data)
    ranges = [(100, 200), (0, 50), (150, 400), (1_500_000, 1_500_010), (7, 7)]
    before = api.statistics().requests
    views = await api.get_ranges(url, ranges, max_gap=1000)
    assert [bytes(v) for v in views] == [data[s:e] for s, e in ranges]
    assert api.statistics().requests - before == 2  # [0, 400) and the far one

    before = api.statistics().requests
    await api.get_ranges(url, ranges, max_gap=float("inf"))
    assert api.statistics().requests - before == 1


@pytest.mark.parametrize("reader", READERS, ids=lambda r: f"{r.kind}-{r.buffer_size}")
async def test_readers_read_seek_tell(api: API, store: Store, reader: ReaderConstructor) -> None:
    data = payload(600_000, seed=4)
    url = store.url("f.bin")
    await api.put(url, data)
    r = await api.open(url, reader, ranges=[(0, 1000), (500_000, 600_000)])
    assert await r.read(10) == data[:10]
    assert await r.tell() == 10
    assert await r.seek(-100, os.SEEK_END) == len(data) - 100
    assert await r.read() == data[-100:]
    assert await r.read(5) == b""
    await r.seek(123)
    buf = bytearray(1000)
    assert await r.readinto(buf) == 1000 and bytes(buf) == data[123:1123]
    await r.seek(10, os.SEEK_CUR)
    assert await r.read(3) == data[1133:1136]
    await r.seek(len(data) + 10)
    assert await r.read(1) == b""
    await r.close()


# offsets and whences as io takes them: anything with __index__ (bools too), nothing else
SEEK_ARGS: list[tuple[object, object]] = [
    (1.5, 0), (2.0, 0), ("1", 0), (None, 0), (b"1", 0), (Fraction(3), 0), (np.float64(3), 0),
    (True, 0), (np.int64(7), 0), (3, 1.0), (3, True), (-5, np.int8(2)),
]


async def test_reader_seek_takes_integers_as_io_does(api: API, store: Store) -> None:
    data = payload(1000, seed=5)
    url = store.url("seek.bin")
    await api.put(url, data)
    r = await api.open(url)
    try:
        for offset, whence in SEEK_ARGS:
            ref = io.BytesIO(data)
            ref.seek(100)
            await r.seek(100)
            try:
                expected: int | None = ref.seek(offset, whence)  # type: ignore[arg-type]
            except TypeError:
                expected = None
            if expected is None:
                with pytest.raises(TypeError):
                    await r.seek(offset, whence)  # type: ignore[arg-type]
            else:
                assert await r.seek(offset, whence) == expected  # type: ignore[arg-type]
            assert await r.tell() == ref.tell(), (offset, whence)
            assert await r.read(3) == ref.read(3)
    finally:
        await r.close()


async def test_list_is_recursive_with_sizes_and_optionally_flat(api: API, store: Store) -> None:
    for key, size in [("a/1", 1), ("a/b/2", 2), ("c", 3)]:
        await api.put(store.url(key), b"x" * size)
    assert sorted(i.size for i in await api.list(store.prefix)) == [1, 2, 3]
    flat = await api.list(store.url("a/"), recursive=False)
    assert [i.size for i in flat] == [1]


async def test_list_pages_through_more_than_one_page(store: Store) -> None:
    import anyio

    async with aisio.AsyncClient(store.config) as c:
        async with anyio.create_task_group() as tg:
            for i in range(1005):
                tg.start_soon(c.put, store.url(f"many/{i:05d}"), b"")
        found = [i async for i in c.list(store.url("many/"))]
    assert [i.url[-5:] for i in found] == [f"{i:05d}" for i in range(1005)]


async def test_writer_uploads_parts_and_object_appears_at_close(api: API, store: Store) -> None:
    data = payload(12 * MiB + 5, seed=5)
    url = store.url("w.bin")
    chunks = [data[i:i + 1_000_000] for i in range(0, len(data), 1_000_000)]
    info = await api.write(url, chunks)
    assert info.size == len(data)
    assert await api.get(url) == data


async def test_small_writer_is_one_put(api: API, store: Store) -> None:
    url = store.url("small.bin")
    await api.write(url, [b"ab", b"cd"])
    assert await api.get(url) == b"abcd"


async def test_failed_writer_leaves_no_object(api: API, store: Store) -> None:
    url = store.url("failed.bin")
    data = payload(11 * MiB, seed=6)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        if api.sync:
            import anyio

            def blocking() -> None:
                assert isinstance(api.client, aisio.Client)
                with api.client.writer(url) as w:
                    w.write(data)
                    raise Boom

            await anyio.to_thread.run_sync(blocking)
        else:
            assert isinstance(api.client, aisio.AsyncClient)
            async with api.client.writer(url) as aw:
                await aw.write(data)
                raise Boom
    with pytest.raises(aisio.ObjectNotFoundError):
        await api.head(url)
    assert await api.list(store.prefix) == []
    if store.name == "s3":
        uploads = store.server.boto3_client().list_multipart_uploads(Bucket="aisio-test")
        assert not [u for u in uploads.get("Uploads", []) if u["Key"].endswith("failed.bin")]


async def test_delete(api: API, store: Store) -> None:
    url = store.url("d")
    await api.put(url, b"1")
    await api.delete(url)
    with pytest.raises(aisio.ObjectNotFoundError):
        await api.get(url)
    with pytest.raises(aisio.ObjectNotFoundError):
        await api.delete(url)


async def test_missing_object_names_the_url(api: API, store: Store) -> None:
    url = store.url("nope.bin")
    for call in (api.get(url), api.head(url), api.get_into(url, bytearray(4)), api.open(url)):
        with pytest.raises(aisio.ObjectNotFoundError, match=r"nope\.bin") as info:
            await call
        assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 2), (0, 11), (20, 30), (20, None)])
async def test_bad_ranges_raise_range_error(api: API, store: Store, start: int, end: int | None) -> None:
    url = store.url("ten")
    await api.put(url, b"0123456789")
    with pytest.raises(aisio.RangeError, match="ten"):
        await api.get(url, start, end)


async def test_get_ranges_past_the_end_raise_range_error(api: API, store: Store) -> None:
    url = store.url("ten")
    await api.put(url, b"0123456789")
    with pytest.raises(aisio.RangeError, match="ten"):
        await api.get_ranges(url, [(0, 5), (8, 12)])


@pytest.mark.parametrize("bad", ["", "s3://", "s3://Bad_Bucket/x", "gopher://h/x", "s3:///key"])
async def test_bad_urls_raise_invalid_url_error(api: API, bad: str) -> None:
    with pytest.raises(aisio.InvalidURLError) as info:
        await api.get(bad)
    assert isinstance(info.value, ValueError)


async def test_prefix_is_not_an_object(api: API, store: Store) -> None:
    with pytest.raises(aisio.InvalidURLError, match="prefix"):
        await api.get(store.url("dir/"))


@pytest.mark.parametrize("key", ["with space", "ünïcode/κλειδί", "q?x#y%z+w", "a=b&c"])
async def test_odd_keys_round_trip(api: API, store: Store, key: str) -> None:
    url = store.url(key)
    await api.put(url, key.encode())
    assert await api.get(url) == key.encode()
    assert [i.size for i in await api.list(store.prefix)] == [len(key.encode())]


async def test_object_replaced_mid_read_never_mixes_versions(api: API, store: Store) -> None:
    url = store.url("changing.bin")
    old, new = payload(2 * MiB, seed=7), payload(2 * MiB, seed=8)
    await api.put(url, old)
    ranged = await api.open(url, ReaderConstructor.range_based(buffer_size=4096))
    streamed = await api.open(url, ReaderConstructor.sequential())
    assert await ranged.read(1000) == old[:1000]
    assert await streamed.read(1000) == old[:1000]
    await api.put(url, new)
    with pytest.raises(aisio.ObjectChangedError, match=r"changing\.bin"):
        await ranged.read()  # the next range GET is pinned to the old ETag
    with contextlib.suppress(aisio.ObjectChangedError):  # one GET: the old version, or an error
        assert old[:1000] + await streamed.read() == old
    await ranged.close()
    await streamed.close()


async def test_get_ranges_into_lands_bytes_in_caller_buffers(api: API, store: Store) -> None:
    data = payload(11 * MiB, seed=9)
    url = store.url("scatter.bin")
    await api.put(url, data)
    segments = [(0, 10), (100, 5000), (6 * MiB - 3, 2 * MiB), (10 * MiB, MiB)]
    buffers = [bytearray(n) for _, n in segments]
    tensor = torch.empty(MiB // 4, dtype=torch.float32)
    before = api.statistics().requests
    await api.get_ranges_into(url, [(s, b) for (s, _), b in zip(segments[:3], buffers, strict=False)]
                              + [(10 * MiB, tensor)], max_gap=float("inf"))
    assert [bytes(b) for b in buffers[:3]] == [data[s:s + n] for s, n in segments[:3]]
    assert tensor.view(torch.uint8).numpy().tobytes() == data[10 * MiB:]
    assert api.statistics().requests - before == 3  # one span, cut into 5 MiB parts
    with pytest.raises(aisio.RangeError, match=r"scatter\.bin"):
        await api.get_ranges_into(url, [(11 * MiB - 1, bytearray(2))])


async def test_file_listing_survives_symlink_loops_and_odd_names(tmp_path: object) -> None:
    root = str(tmp_path)
    os.makedirs(f"{root}/d/sub")
    os.symlink(f"{root}/d", f"{root}/d/sub/loop")  # a link back up the tree
    with open(f"{root}/d/sub/100%25 ü #1.bin", "wb") as f:
        f.write(b"x")
    async with aisio.AsyncClient() as c:
        found = [i async for i in c.list(f"{root}/d/")]
        assert len(found) == 1
        assert await c.get(found[0].url) == b"x"  # the listed URL parses back to the path


async def test_get_pinned_to_an_etag_refuses_another_version(api: API, store: Store) -> None:
    url = store.url("pinned.bin")
    old = await api.put(url, b"version one")
    assert await api.get(url, etag=old.etag) == b"version one"
    await api.put(url, b"version two, longer")
    with pytest.raises(aisio.ObjectChangedError) as info:
        await api.get(url, etag=old.etag)
    assert info.value.url == aisio._url.parse_url(url).url


async def test_a_stream_reads_front_to_back_and_tells_the_size(store: Store) -> None:
    data = bytes(range(256)) * 40
    async with aisio.AsyncClient(store.config) as client:
        url = store.url("streamed.bin")
        await client.put(url, data)
        async with client.stream(url, 100) as stream:
            assert await stream.open() == 0 and stream.object_size == len(data)
            buf = bytearray(len(data))
            n = await stream.fill(memoryview(buf))
        assert bytes(buf[:n]) == data[100:]
        with pytest.raises(aisio.InvalidURLError):
            client.stream(url, etl_name="x") if store.name != "ais" else client.stream(store.prefix)


def test_first_error_unwraps_nested_groups_past_cancellations() -> None:
    import asyncio

    inner = ExceptionGroup("inner", [aisio.RangeError("bad", url="s3://b/k")])
    group = BaseExceptionGroup("outer", [asyncio.CancelledError(), inner])
    assert isinstance(aisio.errors.first_error(group), aisio.RangeError)
    only = BaseExceptionGroup("only", [asyncio.CancelledError()])
    assert isinstance(aisio.errors.first_error(only), asyncio.CancelledError)
