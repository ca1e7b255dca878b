"""Property tests: range planning and every reader agree with slicing a reference buffer."""

from __future__ import annotations

import io
import itertools
import os

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aisio
from aisio import ReaderConstructor
from aisio._planner import coalesce, split

ranges_st = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 2_000)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=30,
)


@given(ranges=ranges_st, max_gap=st.one_of(st.integers(0, 3_000), st.just(float("inf"))))
def test_coalesce_covers_every_range_once_and_respects_the_gap(
    ranges: list[tuple[int, int]], max_gap: float
) -> None:
    spans = coalesce(ranges, max_gap)
    members = sorted(i for s in spans for i in s.members)
    assert members == list(range(len(ranges)))
    for span in spans:
        for i in span.members:
            assert span.start <= ranges[i][0] <= ranges[i][1] <= span.end
    for a, b in itertools.pairwise(spans):
        assert a.end < b.start  # disjoint, ordered, never touching
        assert b.start - a.end >= max_gap  # a smaller gap would have merged them


@given(start=st.integers(0, 10_000), length=st.integers(0, 50_000), part=st.integers(1, 9_000))
def test_split_tiles_the_range(start: int, length: int, part: int) -> None:
    parts = split(start, start + length, part)
    assert [p for p in parts if p[1] - p[0] > part] == []
    flat = [i for a, b in parts for i in range(a, b)] if length < 2_000 else None
    if flat is not None:
        assert flat == list(range(start, start + length))
    assert (parts[0][0] if parts else start) == start
    assert (parts[-1][1] if parts else start) == start + length


REFERENCE = os.urandom(300_000)
READERS = [
    ReaderConstructor.sequential(),
    ReaderConstructor.range_based(buffer_size=4096),
    ReaderConstructor.range_based(buffer_size=0),
    ReaderConstructor.dcp_optimized(max_gap_size=1000),
    ReaderConstructor.dcp_optimized(max_gap_size=float("inf")),
]
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(-1, 40_000)),
        st.tuples(st.just("readinto"), st.integers(0, 40_000)),
        st.tuples(st.just("seek"), st.integers(0, 320_000)),
        st.tuples(st.just("seek_cur"), st.integers(-50_000, 50_000)),
        st.tuples(st.just("seek_end"), st.integers(-320_000, 10)),
    ),
    max_size=25,
)


def apply_ops(reader: io.BufferedIOBase, ops: list[tuple[str, int]]) -> None:
    """Run ops on ``reader`` and on a BytesIO of the reference; they must agree at each step."""
    ref = io.BytesIO(REFERENCE)
    for op, arg in ops:
        if op == "read":
            assert reader.read(arg) == ref.read(arg)
        elif op == "readinto":
            a, b = bytearray(arg), bytearray(arg)
            assert reader.readinto(a) == ref.readinto(b)
            assert a == b
        else:
            whence = {"seek": 0, "seek_cur": 1, "seek_end": 2}[op]
            target = {0: arg, 1: ref.tell() + arg, 2: len(REFERENCE) + arg}[whence]
            if target < 0:
                continue
            assert reader.seek(arg, whence) == ref.seek(arg, whence)
        assert reader.tell() == ref.tell()


@pytest.fixture(scope="module", params=["file", "s3"])
def reference_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[aisio.ClientConfig, str]:
    if request.param == "file":
        path = tmp_path_factory.mktemp("ref") / "ref.bin"
        path.write_bytes(REFERENCE)
        return aisio.ClientConfig(part_size=50_000), str(path)
    s3 = request.getfixturevalue("s3_server")
    s3.boto3_client().put_object(Bucket="aisio-test", Key="prop/ref.bin", Body=REFERENCE)
    return s3.config(part_size=50_000), "s3://aisio-test/prop/ref.bin"


@pytest.mark.parametrize("constructor", READERS, ids=lambda r: f"{r.kind}-{r.buffer_size}-{r.max_gap_size}")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_st, ranges=ranges_st)
def test_sync_readers_match_slicing(
    reference_url: tuple[aisio.ClientConfig, str], constructor: ReaderConstructor,
    ops: list[tuple[str, int]], ranges: list[tuple[int, int]],
) -> None:
    config, url = reference_url
    with aisio.Client(config) as client:
        reader = client.open(url, constructor, ranges=[(s * 20, e * 20) for s, e in ranges])
        try:
            apply_ops(reader, ops)
        finally:
            reader.close()


@pytest.mark.parametrize("constructor", READERS[:3], ids=lambda r: f"{r.kind}-{r.buffer_size}")
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_st)
def test_async_readers_match_slicing(
    reference_url: tuple[aisio.ClientConfig, str], constructor: ReaderConstructor,
    ops: list[tuple[str, int]],
) -> None:
    config, url = reference_url

    async def main() -> None:
        ref = io.BytesIO(REFERENCE)
        async with aisio.AsyncClient(config) as client, await client.open(url, constructor) as r:
            for op, arg in ops:
                if op == "read":
                    assert await r.read(arg) == ref.read(arg)
                elif op == "readinto":
                    a, b = bytearray(arg), bytearray(arg)
                    assert await r.readinto(a) == ref.readinto(b) and a == b
                else:
                    whence = {"seek": 0, "seek_cur": 1, "seek_end": 2}[op]
                    target = {0: arg, 1: ref.tell() + arg, 2: len(REFERENCE) + arg}[whence]
                    if target >= 0:
                        assert r.seek(arg, whence) == ref.seek(arg, whence)

    anyio.run(main)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=ranges_st, max_gap=st.integers(0, 5_000))
def test_get_ranges_match_slicing(
    reference_url: tuple[aisio.ClientConfig, str], ranges: list[tuple[int, int]], max_gap: int
) -> None:
    config, url = reference_url
    scaled = [(s * 20, min(e * 20, len(REFERENCE))) for s, e in ranges]
    scaled = [(s, e) for s, e in scaled if s <= e]
    with aisio.Client(config) as client:
        views = client.get_ranges(url, scaled, max_gap=max_gap)
    assert [bytes(v) for v in views] == [REFERENCE[s:e] for s, e in scaled]
