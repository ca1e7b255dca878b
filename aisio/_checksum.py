"""Checksums that travel with an object: sent with every upload, checked on whole-object reads.

What aisio sends is CRC32C: S3 (``x-amz-checksum-crc32c``) and AIS (``ais-checksum-type:
crc32c``) both verify it before they store the object. The ``crc32c`` package computes it
with the CPU's CRC instruction: 13 GB/s a core here (zlib's CRC32: 2 to 4 GB/s, MD5:
0.76, SHA-256: 1.2), on any buffer (bytearrays and tensors too, no copy), the GIL released.

What aisio checks on a read is whatever full-object checksum the store returns, if it is
one that costs little to compute:

- CRC32C (``crc32c``), CRC32 (zlib: what botocore sends by default), CRC64NVME (S3's own
  default for objects uploaded without a checksum; needs ``awscrt``, else not checked);
- AIS's ``xxhash`` and ``xxhash2`` (both XXH64, seed 0; needs ``xxhash``, else not checked).

MD5, SHA-1, SHA-256 and SHA-512 are never computed on a read: at 0.7 to 1.2 GB/s a core
they would cost more than the read itself from a near store. Nor are composite checksums
of multipart objects (``value-N``): they are a checksum of the parts' checksums, which no
read of the object's bytes can reproduce.

CRC32 and CRC32C of concatenated pieces are combined from the pieces' CRCs (``combine``),
so a multipart upload hashes each byte once and still sends a whole-object CRC.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import IntegrityError

__all__ = [
    "Checksum",
    "Hasher",
    "ais_value",
    "combine",
    "crc32c",
    "from_ais",
    "from_s3",
    "function",
    "hasher",
    "s3_value",
    "upload_algorithm",
]

_Fn = Callable[[Any, int], int]  # (data, running value) -> new value

# reflected CRC polynomials (bit 31 is x^0)
_POLY = {"crc32": 0xEDB88320, "crc32c": 0x82F63B78}
_WIDTH = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "xxhash": 8}
_S3_NAMES = ("crc32c", "crc32", "crc64nvme")  # what S3 may return that we can compute
_AIS_NAMES = {"crc32c": "crc32c", "xxhash": "xxhash", "xxhash2": "xxhash"}
_FUNCTIONS: dict[str, _Fn | None] = {}


def _load(algorithm: str) -> _Fn | None:
    """The running-value function of ``algorithm``; None if no fast implementation is installed.

    Imported on first use: a process that never uploads nor verifies never loads them.
    """
    if algorithm in _FUNCTIONS:
        return _FUNCTIONS[algorithm]
    fn: _Fn | None = None
    try:
        if algorithm == "crc32":
            fn = zlib.crc32
        elif algorithm == "crc32c":
            import crc32c as _crc32c

            fn = _crc32c.crc32c
        elif algorithm == "crc64nvme":  # S3's default checksum; awscrt: botocore's optional CRT
            from awscrt import checksums  # type: ignore[import-not-found,unused-ignore]

            fn = checksums.crc64nvme
    except ImportError:
        fn = None
    _FUNCTIONS[algorithm] = fn
    return fn


def crc32c(data: Any, value: int = 0) -> int:
    """CRC32C of ``data`` (any buffer), continuing from ``value``; CRC32 if crc32c is missing."""
    fn = _load("crc32c") or zlib.crc32
    return fn(data, value)


def function(algorithm: str) -> _Fn:
    """``fn(data, value) -> value`` of an upload algorithm (``upload_algorithm()``'s answer)."""
    fn = _load(algorithm)
    if fn is None or algorithm not in _POLY:
        raise ValueError(f"{algorithm!r} is not an algorithm uploads use here")
    return fn


def upload_algorithm() -> str:
    """The checksum uploads carry: CRC32C, or zlib's CRC32 where the crc32c package is missing."""
    return "crc32c" if _load("crc32c") is not None else "crc32"


# -- combining CRCs of concatenated pieces (GF(2) polynomial arithmetic) --

_POWERS: dict[str, list[int]] = {}


def _mulmod(a: int, b: int, poly: int) -> int:
    """a(x) * b(x) mod p(x), reflected: bit 31 holds x^0, shifting right multiplies by x."""
    product = 0
    bit = 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ poly if b & 1 else b >> 1
    return product


def _powers(algorithm: str) -> list[int]:
    """x^(2^k) mod p for k = 0..63, made once per polynomial."""
    table = _POWERS.get(algorithm)
    if table is None:
        poly = _POLY[algorithm]
        table = [1 << 30]  # x^1
        for _ in range(63):
            table.append(_mulmod(table[-1], table[-1], poly))
        _POWERS[algorithm] = table
    return table


def combine(algorithm: str, crc1: int, crc2: int, len2: int) -> int:
    """The CRC of A + B from crc1 = CRC(A), crc2 = CRC(B) and len2 = len(B) (crc32, crc32c).

    CRC(A + B) = CRC(A) * x^(8 len2) + CRC(B) mod p: the pre- and post-conditioning of
    the standard CRCs cancel out. About popcount(len2) polynomial products, each 32 steps.
    """
    if len2 < 0:
        raise ValueError(f"a length cannot be negative: {len2}")
    poly, table = _POLY[algorithm], _powers(algorithm)
    shift = 1 << 31  # x^0
    n, k = len2, 3  # x^(8 len2) = product of x^(2^k) over the bits of len2, k from 3
    while n:
        if n & 1:
            shift = _mulmod(table[k], shift, poly)
        n >>= 1
        k += 1
    return _mulmod(shift, crc1, poly) ^ crc2


# -- what a store says, and checking bytes against it --


@dataclass(frozen=True, slots=True)
class Checksum:
    """The full-object checksum a store returned: ``algorithm`` (lower case), its value."""

    algorithm: str
    value: int

    def text(self) -> str:
        """The value as hex, as messages show it."""
        return f"{self.value:0{2 * _WIDTH.get(self.algorithm, 4)}x}"

    def hasher(self) -> Hasher | None:
        """A running hash of this checksum's algorithm; None if none is installed here."""
        return hasher(self.algorithm)

    def check(self, url: str, computed: int) -> None:
        """Raise IntegrityError (naming ``url``) unless ``computed`` is this checksum."""
        if computed != self.value:
            actual = Checksum(self.algorithm, computed).text()
            raise IntegrityError(
                f"{url}: the bytes read do not match the store's {self.algorithm} checksum "
                f"(store {self.text()}, read {actual}): corrupted in transit or in the store",
                url=url, algorithm=self.algorithm, expected=self.text(), actual=actual)


class Hasher:
    """A checksum computed over bytes fed in order (``update``), read as ``value``."""

    __slots__ = ("_fn", "_xxh", "algorithm", "value")

    def __init__(self, algorithm: str, fn: _Fn | None, xxh: Any = None) -> None:
        self.algorithm, self._fn, self._xxh = algorithm, fn, xxh
        self.value = 0

    def update(self, data: Any) -> None:
        """Feed the next bytes (any buffer)."""
        if self._fn is not None:
            self.value = self._fn(data, self.value)
        else:
            self._xxh.update(data)
            self.value = self._xxh.intdigest()


def hasher(algorithm: str) -> Hasher | None:
    """A running hash of ``algorithm``; None if it is not one aisio checks, or not installed."""
    if algorithm == "xxhash":
        try:
            import xxhash
        except ImportError:
            return None
        return Hasher(algorithm, None, xxhash.xxh64(seed=0))
    if algorithm not in _S3_NAMES:
        return None
    fn = _load(algorithm)
    return Hasher(algorithm, fn) if fn is not None else None


def from_s3(headers: Mapping[str, str]) -> Checksum | None:
    """The full-object checksum in an S3 answer that covers the whole object, if it has one.

    Skipped: composite checksums (``value-N``, or ``x-amz-checksum-type: COMPOSITE``), and
    those of a multipart object (ETag ``...-N``) not declared ``FULL_OBJECT``: S3 answers a
    GET of the object's whole range with the composite value without its ``-N``.
    """
    for name in _S3_NAMES:
        text = headers.get(f"x-amz-checksum-{name}")
        if not text:
            continue
        kind = (headers.get("x-amz-checksum-type") or "").upper()
        multipart = "-" in (headers.get("etag") or "")
        if "-" in text or kind == "COMPOSITE" or (multipart and kind != "FULL_OBJECT"):
            return None
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _WIDTH[name]:
            return None
        return Checksum(name, int.from_bytes(raw, "big"))
    return None


def from_ais(headers: Mapping[str, str]) -> Checksum | None:
    """The object's checksum in an AIS answer (``ais-checksum-type``/``-value``), if checkable."""
    kind = _AIS_NAMES.get((headers.get("ais-checksum-type") or "").strip().lower())
    text = (headers.get("ais-checksum-value") or "").strip()
    if kind is None or not text or len(text) != 2 * _WIDTH[kind]:
        return None
    try:
        return Checksum(kind, int(text, 16))
    except ValueError:
        return None


def s3_value(algorithm: str, value: int) -> str:
    """A CRC as S3 headers and XML carry it: base64 of its big-endian bytes."""
    return base64.b64encode(value.to_bytes(_WIDTH[algorithm], "big")).decode()


def ais_value(algorithm: str, value: int) -> str:
    """A CRC as AIS headers carry it: lower-case hex of its big-endian bytes."""
    return f"{value:0{2 * _WIDTH[algorithm]}x}"
