"""Streaming tar parsing and webdataset sample grouping (aisio.torch._tar)."""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
import io
import itertools
import pickle
import re
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aisio.errors import ShardFormatError
from aisio.torch import _tar
from aisio.torch._tar import (
    Member,
    Sample,
    aiter_members,
    aiter_samples,
    is_meta,
    iter_members,
    iter_samples,
    parse_header,
    split_key,
)
from aisio.torch._zerodict import ZeroDict

URL = "s3://bucket/shards/shard-000.tar"
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- sources and drivers -------------------------------------------------------------------


class Source:
    """Serves bytes in chunks of the given sizes (cycled), as a socket would."""

    def __init__(self, data: bytes, sizes: Sequence[int] = (1 << 30,)) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = itertools.cycle(sizes)

    def readinto(self, view: memoryview, /) -> int:
        n = min(len(view), next(self._sizes), len(self._data) - self._pos)
        view[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class AsyncSource:
    """The async twin of Source; yields to the loop on every read."""

    def __init__(self, data: bytes, sizes: Sequence[int] = (1 << 30,)) -> None:
        self._sync = Source(data, sizes)

    async def readinto(self, view: memoryview, /) -> int:
        await asyncio.sleep(0)
        return self._sync.readinto(view)


async def _acollect(source: AsyncSource, out: list[Member]) -> None:
    async for member in aiter_members(source, URL):
        out.append(member)


def parse(
    data: bytes, sizes: Sequence[int] = (1 << 30,), mode: str = "sync"
) -> tuple[list[Member], ShardFormatError | None]:
    """Members parsed before the end or the first ShardFormatError, and that error."""
    members: list[Member] = []
    try:
        if mode == "sync":
            members.extend(iter_members(Source(data, sizes), URL))
        else:
            asyncio.run(_acollect(AsyncSource(data, sizes), members))
    except ShardFormatError as exc:
        assert exc.url == URL
        assert isinstance(exc.offset, int)
        assert 0 <= exc.offset <= len(data)
        return members, exc
    return members, None


@contextmanager
def small_buffers(enabled: bool) -> Iterator[None]:
    """Shrink the decoder's allocation sizes so data spans many pieces and skips."""
    if not enabled:
        yield
        return
    with mock.patch.object(_tar, "_PIECE", 1000), mock.patch.object(_tar, "_SKIP", 300):
        yield


# --- building tars -------------------------------------------------------------------------

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def build_tar(entries: Sequence[tuple[str, str, bytes]], fmt: int, **kw: Any) -> bytes:
    """A tar from (kind, name, payload) entries; kind is file, dir, symlink or link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tar:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}.get(
                kind, tarfile.LNKTYPE
            )
            info.linkname = payload.decode()
            tar.addfile(info)
    return buf.getvalue()


def tarfile_members(data: bytes) -> tuple[list[Member], int]:
    """What the stdlib reads: regular members, and the offset of the end-of-archive block."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = []
        for info in tar:
            if info.isreg():
                extracted = tar.extractfile(info)
                assert extracted is not None
                members.append((info.name, extracted.read()))
        return members, tar.offset


def block(
    name: bytes = b"f.txt",
    size: int = 0,
    typeflag: bytes = b"0",
    *,
    size_field: bytes | None = None,
    prefix: bytes = b"",
    magic: bytes = b"ustar\x0000",
    signed: bool = False,
    extra: bytes = b"",
) -> bytes:
    """One header block with a correct checksum (unsigned, or signed as old tars wrote)."""
    raw = bytearray(512)
    raw[0:100] = name[:100].ljust(100, b"\0")
    raw[100:108] = b"0000644\0"
    raw[124:136] = size_field if size_field is not None else b"%011o\0" % size
    raw[156:157] = typeflag
    raw[257:265] = magic
    raw[265 : 265 + len(extra)] = extra
    raw[345:500] = prefix[:155].ljust(155, b"\0")
    raw[148:156] = b" " * 8
    total = sum(b - 256 if signed and b >= 128 else b for b in raw)
    raw[148:156] = b"%06o\0 " % total
    return bytes(raw)


def padded(payload: bytes) -> bytes:
    """Payload followed by NULs up to a block boundary."""
    return payload + b"\0" * (-len(payload) % 512)


def pax_body(records: dict[str, str]) -> bytes:
    """Encode pax records; each length counts its own digits."""
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def entry(name: bytes, payload: bytes, typeflag: bytes = b"0") -> bytes:
    """A header plus padded data."""
    return block(name, len(payload), typeflag) + padded(payload)


END = b"\0" * 1024


# --- strategies ----------------------------------------------------------------------------

components = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/\0"),
    min_size=1,
    max_size=70,
)
names = st.lists(components, min_size=1, max_size=4).map("/".join)
payloads = st.binary(max_size=3000)
chunkings = st.lists(st.integers(1, 1500), min_size=1, max_size=6)
modes = st.sampled_from(["sync", "async"])
entry_lists = st.lists(
    st.one_of(
        st.tuples(st.just("file"), names, payloads),
        st.tuples(st.sampled_from(["dir", "symlink", "link"]), names, st.just(b"target")),
    ),
    max_size=8,
)


def encodable(entries: Sequence[tuple[str, str, bytes]], fmt: str) -> bytes | None:
    """The tar, or None when the format cannot hold the names (ustar and long names)."""
    try:
        return build_tar(entries, FORMATS[fmt])
    except ValueError:
        return None


# --- members: the stdlib writes, we read the same --------------------------------------------


@PROPERTY
@given(
    entries=entry_lists,
    fmt=st.sampled_from(sorted(FORMATS)),
    sizes=chunkings,
    mode=modes,
    small=st.booleans(),
)
def test_members_match_tarfile(
    entries: list[tuple[str, str, bytes]], fmt: str, sizes: list[int], mode: str, small: bool
) -> None:
    data = encodable(entries, fmt)
    if data is None:
        return
    expected, _ = tarfile_members(data)
    with small_buffers(small):
        got, error = parse(data, sizes, mode)
    assert error is None
    assert got == expected


@PROPERTY
@given(entries=entry_lists, sizes=chunkings, comment=st.text(max_size=50))
def test_pax_global_header_is_not_a_member(
    entries: list[tuple[str, str, bytes]], sizes: list[int], comment: str
) -> None:
    entries = [*entries, ("file", "last.txt", b"x")]  # tarfile cannot read a lone 'g' either
    data = build_tar(entries, tarfile.PAX_FORMAT, pax_headers={"comment": comment + "x"})
    assert data[156:157] == b"g"
    assert parse(data, sizes) == (tarfile_members(data)[0], None)


def test_long_names_in_every_format() -> None:
    long = "d" * 120 + "/ü" * 40 + "/" + "f" * 99 + ".jpg"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = build_tar([("file", long, b"x" * 10)], fmt)
        assert parse(data) == ([(long, b"x" * 10)], None)
    split = "p" * 150 + "/" + "n" * 99  # ustar: prefix field + name field
    data = build_tar([("file", split, b"y")], tarfile.USTAR_FORMAT)
    assert parse(data) == ([(split, b"y")], None)


# --- truncation and corruption -------------------------------------------------------------


@PROPERTY
@given(entries=entry_lists, fmt=st.sampled_from(["gnu", "pax"]), data=st.data(), mode=modes)
def test_truncated_tar_gives_prefix_then_error(
    entries: list[tuple[str, str, bytes]], fmt: str, data: st.DataObject, mode: str
) -> None:
    full = encodable(entries, fmt)
    assert full is not None
    expected, end = tarfile_members(full)
    cut = data.draw(st.integers(0, len(full)), label="cut")
    sizes = data.draw(chunkings, label="sizes")
    got, error = parse(full[:cut], sizes, mode)
    assert got == expected[: len(got)]
    if error is None:
        assert cut >= end + 512 or (cut > 0 and cut % 512 == 0)
    else:
        assert error.offset is not None and error.offset % 512 == 0 and error.offset <= cut
    if cut >= end + 512:
        assert (got, error) == (expected, None)


@PROPERTY
@given(
    entries=entry_lists,
    fmt=st.sampled_from(sorted(FORMATS)),
    data=st.data(),
    mode=modes,
    small=st.booleans(),
)
def test_corrupted_tar_gives_prefix_then_error_or_parses(
    entries: list[tuple[str, str, bytes]], fmt: str, data: st.DataObject, mode: str, small: bool
) -> None:
    original = encodable(entries, fmt)
    if original is None or not entries:
        return
    expected, _ = tarfile_members(original)
    damaged = bytearray(original)
    edits = data.draw(
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), min_size=1),
        label="edits",
    )
    for pos, value in edits:
        damaged[pos] = value
    first = min(pos for pos, _ in edits)
    with small_buffers(small):
        got, _ = parse(bytes(damaged), data.draw(chunkings, label="sizes"), mode)
    # Members whose data ends before the first damaged byte come out unchanged.
    with tarfile.open(fileobj=io.BytesIO(original), mode="r:") as tar:
        intact = sum(1 for info in tar if info.isreg() and info.offset_data + info.size <= first)
    assert got[:intact] == expected[:intact]


@PROPERTY
@given(garbage=st.binary(max_size=3000), sizes=chunkings, mode=modes)
def test_garbage_raises_shard_format_error(garbage: bytes, sizes: list[int], mode: str) -> None:
    _, error = parse(garbage, sizes, mode)
    assert error is not None or garbage[:512] == bytes(512)


crafted_entries = st.lists(
    st.tuples(
        st.sampled_from([b"0", b"\0", b"7", b"5", b"1", b"2", b"x", b"g", b"L", b"K", b"S", b"V"]),
        st.binary(max_size=120),
        st.one_of(
            st.binary(max_size=700),
            st.dictionaries(
                st.sampled_from(["path", "size", "comment", "GNU.sparse.map", "mtime"]),
                st.text(max_size=20),
                max_size=3,
            ).map(pax_body),
        ),
        st.one_of(st.just(0), st.integers(-700, 700)),
        st.booleans(),
    ),
    max_size=6,
)


@PROPERTY
@given(
    entries=crafted_entries,
    tail=st.sampled_from([b"", END, b"\0" * 512, b"junk"]),
    sizes=chunkings,
    mode=modes,
)
def test_crafted_headers_never_raise_anything_else(
    entries: list[tuple[bytes, bytes, bytes, int, bool]], tail: bytes, sizes: list[int], mode: str
) -> None:
    data = b""
    for typeflag, name, payload, delta, signed in entries:
        size = max(0, len(payload) + delta)
        data += block(name, size, typeflag, signed=signed) + padded(payload)
    parse(data + tail, sizes, mode)


def test_empty_source_is_an_error() -> None:
    members, error = parse(b"")
    assert members == [] and error is not None and error.offset == 0


def test_archive_without_members() -> None:
    assert parse(build_tar([], tarfile.PAX_FORMAT)) == ([], None)
    assert parse(b"\0" * 512) == ([], None)


def test_eof_at_a_block_boundary_ends_the_archive() -> None:
    data = entry(b"a.txt", b"hello") + entry(b"b.txt", b"")
    assert parse(data) == ([("a.txt", b"hello"), ("b.txt", b"")], None)


def test_nothing_after_the_first_zero_block_is_read() -> None:
    data = entry(b"a.txt", b"1") + b"\0" * 512 + b"not a header" * 100
    assert parse(data) == ([("a.txt", b"1")], None)


def test_bad_checksum_names_the_header_offset() -> None:
    second = bytearray(entry(b"b.txt", b"2"))
    second[0] = ord("c")
    data = entry(b"a.txt", b"1") + bytes(second) + END
    members, error = parse(data)
    assert members == [("a.txt", b"1")]
    assert error is not None and error.offset == 1024 and "checksum" in str(error)


def test_member_running_past_eof() -> None:
    data = entry(b"a.txt", b"1") + block(b"big.bin", 5000) + b"x" * 100
    members, error = parse(data)
    assert members == [("a.txt", b"1")]
    assert error is not None and error.offset == 1024 and "big.bin" in str(error)


def test_truncated_header_and_padding() -> None:
    data = entry(b"a.txt", b"1")
    for cut in (1, 511, 513, 1023):
        members, error = parse(data[:cut])
        assert error is not None, cut
    members, error = parse(data[:600])
    assert members == [("a.txt", b"1")] and error is not None and "padding" in str(error)
    members, error = parse(data + block()[:100])
    assert members == [("a.txt", b"1")] and error is not None and error.offset == 1024


def test_huge_declared_size_fails_fast_without_allocating_it() -> None:
    size_field = b"\x80" + (2**60).to_bytes(11, "big")
    members, error = parse(block(b"x.bin", size_field=size_field) + b"y" * 100)
    assert members == [] and error is not None and error.offset == 0


def test_base256_size_and_signed_checksum() -> None:
    size_field = b"\x80" + (700).to_bytes(11, "big")
    data = block(b"\xe9t\xe9.bin", size_field=size_field, signed=True) + padded(b"z" * 700)
    name = b"\xe9t\xe9.bin".decode("utf-8", "surrogateescape")  # as tarfile decodes it
    assert parse(data + END) == ([(name, b"z" * 700)], None)
    header = parse_header(data[:512], url=URL)
    assert header is not None and (header.name, header.size) == (name, 700)


def test_negative_and_non_octal_sizes() -> None:
    for field in (b"\xff" * 12, b"00000000x12\0", b"0000000\xff012\0"):
        members, error = parse(block(b"a.txt", size_field=field) + END)
        assert members == [] and error is not None and error.offset == 0


def test_ustar_prefix_only_for_posix_magic() -> None:
    posix = block(b"name.txt", 1, prefix=b"some/dir") + padded(b"1")
    gnu = block(b"name.txt", 1, prefix=b"some/dir", magic=b"ustar  \0") + padded(b"2")
    assert parse(posix + gnu + END) == ([("some/dir/name.txt", b"1"), ("name.txt", b"2")], None)


def test_gnu_long_name_and_long_link() -> None:
    long = b"L" * 300 + b".txt"
    data = (
        entry(b"././@LongLink", long + b"\0", b"L")
        + entry(b"short", b"1")
        + entry(b"././@LongLink", b"target" * 50, b"K")
        + block(b"link", 0, b"2")
        + entry(b"after.txt", b"2")
        + END
    )
    assert parse(data) == ([(long.decode(), b"1"), ("after.txt", b"2")], None)


def test_pax_path_size_global_and_removal() -> None:
    data = (
        entry(b"PaxHeader", pax_body({"path": "global.dat"}), b"g")
        + entry(b"one", b"1")
        + entry(b"PaxHeader", pax_body({"path": "own/path.txt/", "size": "5"}), b"x")
        + block(b"two", 0)  # pax size overrides the header's 0
        + padded(b"55555")
        + entry(b"PaxHeader", pax_body({"path": ""}), b"x")
        + entry(b"three", b"3")
        + END
    )
    assert parse(data) == (
        [("global.dat", b"1"), ("own/path.txt", b"55555"), ("three", b"3")],
        None,
    )


@pytest.mark.parametrize(
    "pax",
    [b"5 a=b", b"x a=b\n", b"99 a=b\n", b"6 ab\n", b"7 a=b\nX", b"0 =\n"],
)
def test_malformed_pax_records(pax: bytes) -> None:
    data = entry(b"h", pax, b"x") + entry(b"a.txt", b"1") + END
    members, error = parse(data)
    assert members == [] and error is not None and error.offset == 0


def test_extended_header_without_member() -> None:
    for tail in (b"", END):
        for flag, body in ((b"x", pax_body({"path": "p"})), (b"L", b"name"), (b"g", b"")):
            members, error = parse(entry(b"h", body, flag) + tail)
            assert members == [] and error is not None, (flag, tail)


def test_sparse_members_are_refused() -> None:
    _, error = parse(entry(b"s.bin", b"1", b"S") + END)
    assert error is not None and "sparse" in str(error)
    sparse_pax = entry(b"h", pax_body({"GNU.sparse.major": "1"}), b"x")
    _, error = parse(sparse_pax + entry(b"s.bin", b"1") + END)
    assert error is not None and "sparse" in str(error)


def test_special_entries_are_skipped() -> None:
    data = (
        block(b"dir/", 0, b"5")
        + block(b"olddir/", 0, b"\0")  # v7: a regular type with a trailing slash
        + block(b"sym", 0, b"2")
        + block(b"hard", 700, b"1")  # the size of a link is ignored, as tarfile does
        + entry(b"label", b"v" * 600, b"V")  # unknown types: data read past and dropped
        + entry(b"contig.bin", b"7", b"7")
        + entry(b"old.bin", b"0", b"\0")
        + END
    )
    assert parse(data) == ([("contig.bin", b"7"), ("old.bin", b"0")], None)


@pytest.mark.parametrize("value", [
    "9" * 5000,  # past int()'s 4300-digit limit: a ValueError, were it converted
    "1" * 20, str(2**63), "0" * 3000 + "1" * 20,
    "1e5", "-5", "+5", " 5", "5 ", "0x10", "5.0", "\uff15", "\u0665", "\u00b2",
])
@pytest.mark.parametrize("flag", [b"x", b"g"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_absurd_or_malformed_pax_sizes_are_shard_format_errors(
    value: str, flag: bytes, mode: str
) -> None:
    data = entry(b"one.txt", b"1") + entry(b"PaxHeader", pax_body({"size": value}), flag)
    data += block(b"two.txt", 1) + padded(b"2") + END
    members, error = parse(data, mode=mode)
    assert members == [("one.txt", b"1")]
    assert error is not None and error.offset == 1024 + 512 + len(padded(pax_body({"size": value})))
    assert URL in str(error) and f"byte {error.offset}" in str(error) and "pax size" in str(error)


def test_the_largest_pax_size_is_accepted_with_leading_zeros() -> None:
    # 2**63 - 1 is a size a file may have: no format error, just a truncated shard
    value = "0" * 100 + str(2**63 - 1)
    members, error = parse(entry(b"h", pax_body({"size": value}), b"x") + block(b"big.bin") + b"x")
    assert members == [] and error is not None and "truncated" in str(error)
    members, error = parse(entry(b"h", pax_body({"size": "0" * 100 + "3"}), b"x")
                           + block(b"a.bin") + padded(b"abc") + END)
    assert (members, error) == ([("a.bin", b"abc")], None)


def test_absurd_base256_sizes_are_shard_format_errors() -> None:
    for size_field in (b"\x80" + b"\xff" * 11, b"\x80" + (2**63).to_bytes(11, "big")):
        members, error = parse(entry(b"a.txt", b"1") + block(b"x.bin", size_field=size_field) + END)
        assert members == [("a.txt", b"1")]
        assert error is not None and error.offset == 1024 and "absurd" in str(error)


@PROPERTY
@given(digits=st.text("0123456789", min_size=1, max_size=6000), mode=modes)
def test_any_pax_size_parses_or_is_a_shard_format_error(digits: str, mode: str) -> None:
    tail = padded(b"m" * 7) + END  # 1536 bytes after the member's header
    data = entry(b"h", pax_body({"size": digits}), b"x") + block(b"m.bin") + tail
    members, error = parse(data, mode=mode)  # anything but a ShardFormatError propagates
    significant = digits.lstrip("0") or "0"
    size = 2**63 if len(significant) > 19 else int(significant)  # int() refuses 4300+ digits
    if size >= 2**63:
        assert members == [] and error is not None and "absurd pax size" in str(error)
    elif size > len(tail):
        assert members == [] and error is not None and "truncated" in str(error)
    elif size == 0:  # the data block is then read as a header
        assert members == [("m.bin", b"")] and error is not None and "checksum" in str(error)
    else:
        assert (members, error) == ([("m.bin", tail[:size])], None)


@PROPERTY
@given(size_field=st.binary(min_size=12, max_size=12), checksum_field=st.binary(min_size=8, max_size=8))
def test_any_number_field_parses_or_is_a_shard_format_error(
    size_field: bytes, checksum_field: bytes
) -> None:
    raw = bytearray(block(b"a.bin", size_field=size_field))
    for header in (bytes(raw), bytes(raw[:148] + checksum_field + raw[156:])):
        try:
            parsed = parse_header(header, url=URL, offset=512)
        except ShardFormatError as exc:
            assert exc.offset == 512 and URL in str(exc)
        else:
            assert parsed is not None and 0 <= parsed.size < 2**63


@PROPERTY
@given(body=st.lists(st.tuples(st.text("0123456789", min_size=1, max_size=30),
                               st.binary(max_size=40)), max_size=5))
def test_any_pax_record_lengths_parse_or_are_a_shard_format_error(
    body: list[tuple[str, bytes]]
) -> None:
    data = b"".join(length.encode() + b" " + rest for length, rest in body)
    try:
        _tar.parse_pax(data, url=URL, offset=0)
    except ShardFormatError as exc:
        assert exc.offset == 0


def test_decoder_refuses_use_after_end() -> None:
    decoder = _tar.TarDecoder(URL)
    decoder.advance(_fill(decoder.buffer(), b"\0" * 512))
    assert decoder.done
    with pytest.raises(ValueError):
        decoder.buffer()
    with pytest.raises(ValueError):
        decoder.advance(0)


def _fill(view: memoryview, data: bytes) -> int:
    view[: len(data)] = data
    return len(data)


def test_decoder_refuses_overlong_counts() -> None:
    decoder = _tar.TarDecoder(URL)
    with pytest.raises(ValueError):
        decoder.advance(513)


# --- webdataset key rules ------------------------------------------------------------------

wds_names = st.text(st.sampled_from("ab./_\nAZ-é"), max_size=14)


@PROPERTY
@given(name=wds_names)
def test_split_key_is_webdatasets(name: str) -> None:
    from webdataset.tariterators import base_plus_ext

    base, ext = base_plus_ext(name)
    assert split_key(name) == (None if base is None else (base, ext))


@PROPERTY
@given(name=wds_names)
def test_is_meta_is_webdatasets(name: str) -> None:
    from webdataset import tariterators

    pattern = inspect.signature(tariterators.tar_file_iterator).parameters["skip_meta"].default
    top = tariterators.meta_prefix, tariterators.meta_suffix
    skipped = "/" not in name and name.startswith(top[0]) and name.endswith(top[1])
    skipped = skipped or bool(re.match(pattern, name))
    assert is_meta(name) == skipped


def test_key_rule_examples() -> None:
    assert split_key("dir/a.b/c.seg.PNG") == ("dir/a.b/c", "seg.PNG")
    assert split_key("noext") is None
    assert split_key(".hidden") is None
    assert split_key("dir/.hidden") == ("dir/", "hidden")  # webdataset's quirk, kept
    assert split_key("a.b/c") is None
    assert is_meta("__meta__") and is_meta("__index__/x.json") and not is_meta("__a__.txt")


def wds_samples(data: bytes) -> tuple[list[tuple[str, dict[str, bytes]]], bool]:
    """webdataset's own reading of a shard: (samples, whether it raised ValueError)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    out = []
    fields = {"__key__", "__url__"}  # no __local_path__: this pipeline does not set it
    try:
        source = [{"url": URL, "stream": io.BytesIO(data)}]
        for sample in group_by_keys(tar_file_expander(source)):
            out.append((sample["__key__"], {k: v for k, v in sample.items() if k not in fields}))
    except ValueError:
        return out, True
    return out, False


def our_samples(data: bytes, sizes: Sequence[int] = (1 << 30,)) -> tuple[list[Sample], bool]:
    """Our reading of a shard: (samples, whether it raised ShardFormatError)."""
    out: list[Sample] = []
    try:
        out.extend(iter_samples(iter_members(Source(data, sizes), URL), URL))
    except ShardFormatError as exc:
        assert exc.url == URL
        return out, True
    return out, False


def assert_same_samples(
    ours: Sequence[Sample], theirs: Sequence[tuple[str, dict[str, bytes]]]
) -> None:
    """Same keys and bytes; our extra (filled) extensions read as b""."""
    assert [key for key, _ in ours] == [key for key, _ in theirs]
    for (_, got), (_, want) in zip(ours, theirs, strict=True):
        assert isinstance(got, ZeroDict)
        assert {ext: got[ext] for ext in want} == want
        assert all(got[ext] == b"" for ext in got.keys() - want.keys())


keys = st.one_of(
    st.text(st.sampled_from("abcXY/._-é0"), min_size=1, max_size=12),
    st.sampled_from(["__meta__", "__index__/a", "dir/", ".hid", "a.b", "A/B.C/d"]),
)
extensions = st.one_of(
    st.text(st.sampled_from("abjpgJPG.0_"), min_size=1, max_size=8).filter(
        lambda e: not e.startswith("_")
    ),
    st.sampled_from(["jpg", "JPG", "cls", "seg.png", "json"]),
)
meta_extensions = st.sampled_from(["__bad__", "__url__", "_meta", "__local_path__"])


@PROPERTY
@given(
    samples=st.lists(
        st.tuples(
            keys,
            st.dictionaries(extensions, st.binary(max_size=300), min_size=1, max_size=4),
            st.dictionaries(meta_extensions, st.text(max_size=3), max_size=2),
        ),
        max_size=8,
    ),
    keep_meta=st.booleans(),
    fmt=st.sampled_from(["GNU_FORMAT", "PAX_FORMAT", "USTAR_FORMAT"]),
    sizes=chunkings,
)
def test_groups_like_webdataset(
    samples: list[tuple[str, dict[str, bytes], dict[str, str]]],
    keep_meta: bool,
    fmt: str,
    sizes: list[int],
) -> None:
    from webdataset import TarWriter

    buf = io.BytesIO()
    with TarWriter(buf, keep_meta=keep_meta, format=fmt, encoder=False) as writer:
        for key, fields, meta in samples:
            writer.write({"__key__": key, **fields, **meta})
    data = buf.getvalue()
    theirs, they_raised = wds_samples(data)
    ours, we_raised = our_samples(data, sizes)
    assert we_raised == they_raised
    assert_same_samples(ours, theirs)


def test_groups_like_webdataset_on_a_local_file(tmp_path: Any) -> None:
    import webdataset as wds

    path = tmp_path / "shard-000000.tar"
    with wds.TarWriter(str(path)) as writer:
        for i in range(20):
            sample: dict[str, Any] = {"__key__": f"dir/s{i:03d}", "jpg": bytes([i]) * i}
            if i % 3:
                sample["cls"] = str(i)
            if i % 4 == 0:
                sample["Seg.PNG"] = b"seg"
            writer.write(sample)
    dataset = wds.WebDataset(str(path), shardshuffle=False)
    fields = {"__key__", "__url__", "__local_path__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # webdataset never closes the file
        theirs = [(s["__key__"], {k: v for k, v in s.items() if k not in fields}) for s in dataset]
        del dataset
        gc.collect()
    ours, raised = our_samples(path.read_bytes(), (4096, 333))
    assert not raised and len(ours) == 20
    assert_same_samples(ours, theirs)
    assert ours[0][1]["cls"] == b""  # the first sample lacks cls; it reads as empty


async def test_async_samples_from_a_shard() -> None:
    data = build_tar(
        [("file", "s1.jpg", b"a"), ("file", "s1.cls", b"1"), ("file", "s2.jpg", b"b")],
        tarfile.PAX_FORMAT,
    )
    seen: set[str] = {"json"}
    got = [s async for s in aiter_samples(aiter_members(AsyncSource(data, (100,)), URL), URL, seen)]
    assert got == [
        ("s1", {"jpg": b"a", "cls": b"1", "json": b""}),
        ("s2", {"jpg": b"b", "cls": b"", "json": b""}),
    ]
    assert seen == {"jpg", "cls", "json"}


def test_duplicate_extension_is_an_error() -> None:
    members = [("a.jpg", b"1"), ("a.JPG", b"2")]
    with pytest.raises(ShardFormatError, match="duplicate"):
        list(iter_samples(members, URL))
    for reserved in ("a.__key__", "a.__url__"):
        with pytest.raises(ShardFormatError):
            list(iter_samples([("a.jpg", b"1"), (reserved, b"2")], URL))
    # A reserved extension that starts a sample: the sample before it still comes out first.
    samples = iter_samples([("a.jpg", b"1"), ("b.__url__", b"2"), ("c.jpg", b"3")], URL)
    assert next(samples) == ("a", {"jpg": b"1"})
    with pytest.raises(ShardFormatError):
        next(samples)


def test_bad_samples_are_dropped_and_keys_not_lowercased() -> None:
    members = [("A.jpg", b"1"), ("A.__bad__", b"yes"), ("B.JPG", b"2"), ("B.__bad__", b"")]
    assert [(k, dict(v)) for k, v in iter_samples(members)] == [
        ("B", {"jpg": b"2", "__bad__": b""})
    ]


def test_non_consecutive_keys_are_separate_samples() -> None:
    members = [("a.x", b"1"), ("b.x", b"2"), ("a.y", b"3")]
    assert [k for k, _ in iter_samples(members)] == ["a", "b", "a"]


# --- ZeroDict ------------------------------------------------------------------------------


def test_zero_dict_semantics() -> None:
    d = ZeroDict({"jpg": b"1"}, ["cls", "jpg"])
    assert d == {"jpg": b"1", "cls": b""}  # as the aistore SDK's ZeroDict(dict, keys)
    assert d["missing"] == b"" and "missing" not in d and d.get("missing") is None
    assert isinstance(d, dict) and ZeroDict() == {}
    for clone in (pickle.loads(pickle.dumps(d)), copy.copy(d), copy.deepcopy(d)):
        assert type(clone) is ZeroDict and clone == d and clone["other"] == b""


def test_zero_dict_collates_with_torchs_default() -> None:
    from torch.utils.data import default_collate

    batch = [ZeroDict({"jpg": b"1"}, ["jpg", "cls"]), ZeroDict({"jpg": b"2"}), ZeroDict()]
    assert default_collate(batch) == {"jpg": [b"1", b"2", b""], "cls": [b"", b"", b""]}
