"""Streaming tar shards: members from any ``readinto`` source, grouped as webdataset samples.

Nothing here buffers a shard: ``TarDecoder`` is a sans-I/O state machine that hands out the
buffer to fill next (a 512-byte header, a piece of member data, or scratch space for bytes it
discards), and two thin drivers, ``aiter_members`` (``await source.readinto``) and
``iter_members`` (plain ``source.readinto``), feed it. ``SampleGrouper`` applies the
webdataset key rules to the members; ``aiter_samples`` / ``iter_samples`` drive it.

Formats: ustar (``prefix`` + ``name``), GNU (``L`` long names, base-256 numbers, ``K``
ignored), pax (``x``/``X`` for the next member, ``g`` for all later ones; ``path`` and
``size`` are honoured, an empty value removes a key). Regular files are types ``0``, NUL and
``7``. Directories, links, devices and fifos are skipped (no data is read for them, as in
tarfile); any other type's data is read past and dropped. GNU sparse members (type ``S`` or
``GNU.sparse.*`` pax keys) raise, rather than yield bytes that differ from the file.

Ends and errors: the first all-zero block ends the archive and nothing after it is read (as
tarfile does); EOF exactly at a block boundary where a header would start also ends it. An
empty source, EOF inside a header, member data or its padding, EOF or an end block right
after a pax/long-name header, a bad checksum, a non-octal number field and a malformed pax
record raise ``ShardFormatError``; ``offset`` is the start of the header block of the entry
that failed. (tarfile and so webdataset silently stop at a bad header after the first one;
here it is an error.) So does a size no file can have (over 2**63 - 1 bytes, from a
base-256 field or a pax ``size`` of any number of digits): every number read from a shard
is checked before it is converted, so a hostile shard gives ShardFormatError, never
ValueError or OverflowError.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from aisio.errors import ShardFormatError
from aisio.torch._zerodict import ZeroDict

__all__ = [
    "BLOCK_SIZE",
    "AsyncReadable",
    "Member",
    "Readable",
    "Sample",
    "SampleGrouper",
    "TarDecoder",
    "TarHeader",
    "aiter_members",
    "aiter_samples",
    "is_meta",
    "iter_members",
    "iter_samples",
    "parse_header",
    "parse_pax",
    "split_key",
]

BLOCK_SIZE = 512
_PIECE = 8 * 2**20  # first allocation for member data; later pieces double the total
_SKIP = 64 * 2**10  # scratch size for bytes that are read and dropped

_MAX_SIZE = 2**63 - 1  # off_t: no file, and so no tar member, is larger
_MAX_DIGITS = len(str(_MAX_SIZE))
_REGULAR = frozenset("0\x007")
_NO_DATA = frozenset("123456")  # links, devices, directories, fifos: the size is ignored
_PAX = frozenset("xX")
_DIRECTORY = "5"

Member = tuple[str, bytes]
Sample = tuple[str, ZeroDict]


class AsyncReadable(Protocol):
    """An async byte source: ``readinto`` fills a prefix of the view, 0 means EOF."""

    async def readinto(self, view: memoryview, /) -> int: ...


class Readable(Protocol):
    """A blocking byte source: ``readinto`` fills a prefix of the view, 0 means EOF."""

    def readinto(self, view: memoryview, /) -> int: ...


@dataclass(frozen=True, slots=True)
class TarHeader:
    """One parsed header block: name (ustar prefix applied), data size and type flag."""

    name: str
    size: int
    typeflag: str


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str, url: str | None, offset: int) -> int:
    if field[0] in (0x80, 0xFF):  # GNU base-256, big-endian; 0xFF marks a negative value
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip()
    if digits.translate(None, b"01234567"):
        raise ShardFormatError(f"tar header {what} field is not octal", url=url, offset=offset)
    return int(digits, 8) if digits else 0


_HIGH_BYTES = bytes(range(0x80, 0x100))


def _checksums(block: bytes) -> tuple[int, int]:
    rest = block[:148] + block[156:]
    unsigned = 256 + sum(rest)  # the checksum field itself counts as eight spaces
    high = len(rest) - len(rest.translate(None, _HIGH_BYTES))  # bytes >= 0x80, counted in C
    return unsigned, unsigned - 256 * high


def parse_header(
    block: bytes | bytearray | memoryview, *, url: str | None = None, offset: int = 0
) -> TarHeader | None:
    """Parse one 512-byte header block; ``None`` for an all-zero (end-of-archive) block."""
    raw = bytes(block)
    if len(raw) != BLOCK_SIZE:
        raise ShardFormatError(f"tar header of {len(raw)} bytes", url=url, offset=offset)
    if raw.count(0) == BLOCK_SIZE:
        return None
    if _number(raw[148:156], "checksum", url, offset) not in _checksums(raw):
        raise ShardFormatError("bad tar header checksum", url=url, offset=offset)
    size = _number(raw[124:136], "size", url, offset)
    if size < 0:
        raise ShardFormatError("negative tar member size", url=url, offset=offset)
    if size > _MAX_SIZE:
        raise ShardFormatError(f"absurd tar member size ({size} bytes)", url=url, offset=offset)
    name = _text(raw[0:100])
    if raw[257:263] == b"ustar\0":  # POSIX ustar: long paths are split into prefix/name
        prefix = _text(raw[345:500])
        if prefix:
            name = f"{prefix}/{name}"
    return TarHeader(name=name, size=size, typeflag=chr(raw[156]))


def parse_pax(data: bytes, *, url: str | None = None, offset: int = 0) -> dict[str, str]:
    """Parse pax records (``"<len> <key>=<value>\\n"``); trailing NUL padding is allowed."""
    records: dict[str, str] = {}
    body = bytes(data).rstrip(b"\0")
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos, pos + 21)
        if space <= pos or not body[pos:space].isdigit():
            raise ShardFormatError("malformed pax record length", url=url, offset=offset)
        end = pos + int(body[pos:space])
        keyword, equals, value = body[space + 1 : end - 1].partition(b"=")
        if end > len(body) or end <= space + 1 or body[end - 1] != 0x0A or not keyword:
            raise ShardFormatError("malformed pax record", url=url, offset=offset)
        if not equals:
            raise ShardFormatError("pax record without '='", url=url, offset=offset)
        records[keyword.decode("utf-8", "surrogateescape")] = value.decode(
            "utf-8", "surrogateescape"
        )
        pos = end
    return records


def _merge(into: dict[str, str], records: dict[str, str]) -> None:
    for key, value in records.items():
        if value:
            into[key] = value
        else:
            into.pop(key, None)


class _Phase(enum.Enum):
    HEADER = enum.auto()
    DATA = enum.auto()
    PADDING = enum.auto()


class _Use(enum.Enum):
    MEMBER = enum.auto()
    PAX = enum.auto()
    GLOBAL = enum.auto()
    LONG_NAME = enum.auto()
    DROP = enum.auto()


class TarDecoder:
    """Sans-I/O tar parser: fill ``buffer()``, then pass the byte count to ``advance()``."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.done = False
        self._offset = 0  # bytes consumed from the source
        self._entry = 0  # offset of the header block of the entry being parsed
        self._header = bytearray(BLOCK_SIZE)
        self._scratch = bytearray()
        self._phase = _Phase.HEADER
        self._target = memoryview(self._header)
        self._filled = 0
        self._use = _Use.DROP
        self._name = ""
        self._remaining = 0  # data bytes of the entry not yet in a target
        self._pieces: list[bytearray] = []
        self._collected = 0
        self._globals: dict[str, str] = {}
        self._pax: dict[str, str] | None = None
        self._long_name: str | None = None
        self._pending = False  # a pax, long-name or long-link header awaits its member

    def buffer(self) -> memoryview:
        """The writable view the next bytes of the source go into."""
        if self.done:
            raise ValueError("the tar archive has ended")
        return self._target[self._filled :]

    def advance(self, count: int) -> Member | None:
        """Take ``count`` bytes written into ``buffer()`` (0 = EOF); a completed member or None."""
        if self.done:
            raise ValueError("the tar archive has ended")
        if count == 0:
            self._eof()
            return None
        if not 0 < count <= len(self._target) - self._filled:
            raise ValueError(f"readinto reported {count} bytes for a smaller buffer")
        self._filled += count
        self._offset += count
        if self._filled < len(self._target):
            return None
        if self._phase is _Phase.HEADER:
            return self._on_header()
        if self._phase is _Phase.DATA:
            return self._on_data()
        if self._remaining:
            self._next_target()
        else:
            self._expect_header()
        return None

    def _fail(self, message: str) -> ShardFormatError:
        return ShardFormatError(message, url=self.url, offset=self._entry)

    def _eof(self) -> None:
        if self._phase is _Phase.HEADER and self._filled == 0:
            if self._pending:
                raise self._fail("tar shard ends right after an extended header")
            if self._offset == 0:
                raise self._fail("empty tar shard")
            self.done = True
            return
        what = {
            _Phase.HEADER: "a header",
            _Phase.DATA: f"the data of {self._name!r}" if self._name else "extended header data",
            _Phase.PADDING: "block padding",
        }[self._phase]
        raise self._fail(f"tar shard truncated: it ends at byte {self._offset}, inside {what}")

    def _expect_header(self) -> None:
        self._phase = _Phase.HEADER
        self._entry = self._offset
        self._name = ""
        self._target = memoryview(self._header)
        self._filled = 0

    def _on_header(self) -> Member | None:
        header = parse_header(self._header, url=self.url, offset=self._entry)
        if header is None:
            if self._pending:
                raise self._fail("tar shard ends right after an extended header")
            self.done = True
            return None
        flag = header.typeflag
        if flag in _PAX or flag in "gLK":
            self._pending = True
            use = {"g": _Use.GLOBAL, "L": _Use.LONG_NAME, "K": _Use.DROP}.get(flag, _Use.PAX)
            return self._expect_data(header.size, use)
        pax = dict(self._globals)
        if self._pax is not None:
            _merge(pax, self._pax)
        name = header.name if self._long_name is None else self._long_name
        name = pax["path"].rstrip("/") if "path" in pax else name
        size = header.size
        if "size" in pax:
            size = self._pax_size(pax["size"])
        self._pax, self._long_name, self._pending = None, None, False
        if flag == "S" or any(key.startswith("GNU.sparse.") for key in pax):
            raise self._fail(f"GNU sparse member {name!r} is not supported")
        if flag in _NO_DATA or (flag == "\0" and name.endswith("/")):
            self._expect_header()
            return None
        self._name = name
        return self._expect_data(size, _Use.MEMBER if flag in _REGULAR else _Use.DROP)

    def _pax_size(self, text: str) -> int:
        """A pax ``size`` value as an int; ShardFormatError unless decimal and below 2**63."""
        if not (text.isascii() and text.isdigit()):
            raise self._fail(f"pax size is not a decimal number: {text[:40]!a}")
        digits = text.lstrip("0") or "0"
        # int() of a long string is slow, or refused past 4300 digits: look at the length first
        if len(digits) > _MAX_DIGITS or int(digits) > _MAX_SIZE:
            raise self._fail(f"absurd pax size ({len(digits)} digits)")
        return int(digits)

    def _expect_data(self, size: int, use: _Use) -> Member | None:
        self._phase = _Phase.DATA
        self._use = use
        self._remaining = size
        self._pieces = []
        self._collected = 0
        if size == 0:
            return self._finish(b"")
        self._next_target()
        return None

    def _next_target(self) -> None:
        if self._use is _Use.DROP or self._phase is _Phase.PADDING:
            if not self._scratch:
                self._scratch = bytearray(_SKIP)
            self._target = memoryview(self._scratch)[: min(self._remaining, _SKIP)]
        else:
            # Grow with the bytes that really arrived, so a corrupt size cannot allocate much.
            piece = bytearray(min(self._remaining, max(_PIECE, self._collected)))
            self._pieces.append(piece)
            self._target = memoryview(piece)
        self._remaining -= len(self._target)
        self._filled = 0

    def _on_data(self) -> Member | None:
        self._collected += len(self._target)
        if self._remaining:
            self._next_target()
            return None
        pieces = self._pieces
        self._pieces = []
        data = bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)
        return self._finish(data)

    def _finish(self, data: bytes) -> Member | None:
        size = self._collected
        member: Member | None = None
        if self._use is _Use.MEMBER:
            member = (self._name, data)
        elif self._use is _Use.LONG_NAME:
            self._long_name = _text(data)
        elif self._use is _Use.PAX:
            self._pax = parse_pax(data, url=self.url, offset=self._entry)
        elif self._use is _Use.GLOBAL:
            _merge(self._globals, parse_pax(data, url=self.url, offset=self._entry))
        self._remaining = -size % BLOCK_SIZE
        if self._remaining:
            self._phase = _Phase.PADDING
            self._next_target()
        else:
            self._expect_header()
        return member


async def aiter_members(source: AsyncReadable, url: str | None = None) -> AsyncIterator[Member]:
    """Yield ``(name, data)`` for each regular file of the tar read from ``source``."""
    decoder = TarDecoder(url)
    while not decoder.done:
        member = decoder.advance(await source.readinto(decoder.buffer()))
        if member is not None:
            yield member


def iter_members(source: Readable, url: str | None = None) -> Iterator[Member]:
    """Yield ``(name, data)`` for each regular file of the tar read from ``source``."""
    decoder = TarDecoder(url)
    while not decoder.done:
        member = decoder.advance(source.readinto(decoder.buffer()))
        if member is not None:
            yield member


# webdataset's rules (webdataset.tariterators.base_plus_ext and tar_file_iterator): the key
# is the path up to the first dot of the basename and the extension is everything after it;
# a basename with no dot, or whose only dots lead it, has no key (but see split_key); names
# matching the metadata patterns below are skipped; extensions are lowercased, keys are not.
_KEY_EXT = re.compile(r"((?:.*/)?[^.]+)\.([^/]*)")
_META = re.compile(r"__[^/]*__(?:$|/)")
_RESERVED = frozenset({"__key__", "__url__"})  # webdataset's own sample fields


def split_key(name: str) -> tuple[str, str] | None:
    """Split a member name into (key, extension) as webdataset does; None if it has no key."""
    # Quirks kept on purpose: "dir/.ext" gives ("dir/", "ext"), since the non-dot run before
    # the dot may cross a slash; "." does not match a newline in the directory part.
    match = _KEY_EXT.fullmatch(name)
    return None if match is None else (match[1], match[2])


def is_meta(name: str) -> bool:
    """True for names webdataset skips as metadata: ``__x__`` at top level or as a directory."""
    top_level = "/" not in name and name.startswith("__") and name.endswith("__")
    return top_level or _META.match(name) is not None


class SampleGrouper:
    """Groups consecutive members with the same key into ``(key, ZeroDict)`` samples."""

    def __init__(self, url: str | None = None, keys: set[str] | None = None) -> None:
        self.url = url
        self.keys: set[str] = set() if keys is None else keys  # extensions seen so far
        self._key: str | None = None
        self._sample: dict[str, bytes] = {}
        self._error: ShardFormatError | None = None  # raised once the sample before it is out

    def add(self, name: str, data: bytes) -> Sample | None:
        """Add one member; returns the previous sample when this member starts a new one."""
        if self._error is not None:
            raise self._error
        split = None if is_meta(name) else split_key(name)
        if split is None:
            return None
        key, extension = split[0], split[1].lower()
        done = None
        if key != self._key:
            done = self._emit()
            self._key, self._sample = key, {}
        if extension in self._sample or extension in _RESERVED:
            self._error = ShardFormatError(
                f"duplicate extension {extension!r} in sample {key!r} (member {name!r})",
                url=self.url,
            )
            if done is None:
                raise self._error
            return done  # webdataset yields the finished sample, then raises
        self._sample[extension] = data
        self.keys.add(extension)
        return done

    def finish(self) -> Sample | None:
        """End of the shard: returns the last sample, if any."""
        if self._error is not None:
            raise self._error
        done = self._emit()
        self._key, self._sample = None, {}
        return done

    def _emit(self) -> Sample | None:
        # webdataset drops a sample whose "__bad__" entry is truthy (non-empty bytes).
        if self._key is None or self._sample.get("__bad__"):
            return None
        return self._key, ZeroDict(self._sample, sorted(self.keys))


async def aiter_samples(
    members: AsyncIterable[Member], url: str | None = None, keys: set[str] | None = None
) -> AsyncIterator[Sample]:
    """Group members into ``(key, ZeroDict{extension: bytes})`` samples, webdataset-style."""
    grouper = SampleGrouper(url, keys)
    async for name, data in members:
        sample = grouper.add(name, data)
        if sample is not None:
            yield sample
    last = grouper.finish()
    if last is not None:
        yield last


def iter_samples(
    members: Iterable[Member], url: str | None = None, keys: set[str] | None = None
) -> Iterator[Sample]:
    """Group members into ``(key, ZeroDict{extension: bytes})`` samples, webdataset-style."""
    grouper = SampleGrouper(url, keys)
    for name, data in members:
        sample = grouper.add(name, data)
        if sample is not None:
            yield sample
    last = grouper.finish()
    if last is not None:
        yield last
