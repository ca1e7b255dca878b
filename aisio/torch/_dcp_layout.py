"""Where a tensor's bytes sit inside a DCP ``.distcp`` item, worked out without I/O.

torch's DCP writers store each tensor as the bytes of ``torch.save(tensor)``: an
uncompressed zip whose ``<archive>/data/0`` record holds the storage. Predicting where
that record's bytes start lets a load land them straight in the destination tensor; the
item's own header (read in the same request) is checked before the tensor is committed,
so a wrong prediction costs a re-read, never wrong data.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import pickle
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

import torch

__all__ = [
    "StoredTensor",
    "box_run",
    "box_view",
    "narrow",
    "parse_header",
    "predict_layout",
    "rowmajor_strides",
]

_LOCAL_HEADER = b"PK\x03\x04"
# the legacy typed-storage class names torch.save pickles for these dtypes
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
}
_HEAD_KEEP = 1 << 16  # header bytes kept while predicting; the payload starts well before


@dataclass(frozen=True)
class StoredTensor:
    """What an item's zip header says about the tensor it holds."""

    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    storage_nbytes: int
    data_start: int  # offset of the storage bytes from the start of the item

    def is_plain(self, dtype: torch.dtype, size: Sequence[int]) -> bool:
        """True if the payload is exactly a row-major ``dtype`` tensor of ``size``."""
        return (
            self.dtype == dtype
            and self.size == tuple(size)
            and self.storage_offset == 0
            and self.storage_nbytes == math.prod(self.size) * dtype.itemsize
            and all(n <= 1 or a == b for n, a, b in
                    zip(self.size, self.stride, rowmajor_strides(self.size), strict=True))
        )


class _Sink(io.RawIOBase):
    """A seekable write-only stream that counts bytes and keeps only the first few."""

    def __init__(self) -> None:
        super().__init__()
        self.head = bytearray()
        self.pos = self.end = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self.pos < _HEAD_KEEP:
            keep = memoryview(data).cast("B")[: _HEAD_KEEP - self.pos]
            if len(self.head) < self.pos:
                self.head.extend(bytes(self.pos - len(self.head)))
            self.head[self.pos:self.pos + len(keep)] = keep
        self.pos += n
        self.end = max(self.end, self.pos)
        return n

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.end}[whence]
        self.pos = base + offset
        return self.pos


@functools.lru_cache(maxsize=4096)
def predict_layout(dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(payload offset, item length) of ``torch.save`` of a contiguous CPU tensor, or None.

    Runs torch's own writer with ``skip_data`` on an untouched tensor, so the answer
    follows whatever this torch version writes; None if that is not possible.
    """
    skip_data = getattr(torch.serialization, "skip_data", None)
    if skip_data is None:
        return None
    try:
        tensor = torch.empty(shape, dtype=dtype)  # virtual memory, never touched
        sink = _Sink()
        with skip_data():
            torch.save(tensor, cast("IO[bytes]", sink))
    except (RuntimeError, MemoryError, ValueError):
        return None
    header = parse_header(sink.head)
    if header is None:
        return None
    return header.data_start, sink.end


def _records(head: bytes, start: int, prefix: bytes) -> dict[bytes, int]:
    """Names (without the archive prefix) and data offsets of the zip records in ``head``."""
    found: dict[bytes, int] = {}
    i = head.find(_LOCAL_HEADER, start)
    while 0 <= i <= len(head) - 30:
        fnl, exl = struct.unpack_from("<HH", head, i + 26)
        name = head[i + 30:i + 30 + fnl]
        if len(name) == fnl and name.startswith(prefix):
            found[name[len(prefix):]] = i + 30 + fnl + exl
        i = head.find(_LOCAL_HEADER, i + 4)
    return found


class _Storage:
    """Stands in for a storage class named in the pickle; ``dtype`` None means untyped."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype


def _rebuild(version: int) -> Any:
    def record(storage: Any, offset: int, size: Any, stride: Any, *rest: Any) -> tuple[Any, ...]:
        dtype = rest[2] if version == 3 and len(rest) > 2 else None
        return ("tensor", storage, offset, tuple(size), tuple(stride), dtype)
    return record


class _HeaderUnpickler(pickle.Unpickler):
    """Reads the pickle of one plain tensor, refusing anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return _rebuild(int(name[-1]))
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.storage" and name == "UntypedStorage":
            return _Storage(None)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a tensor header")

    def persistent_load(self, pid: Any) -> Any:
        return pid


def parse_header(data: Any) -> StoredTensor | None:
    """The tensor described by the front of a ``torch.save`` zip, or None if unexpected.

    ``data`` must reach at least to the start of the storage bytes.
    """
    head = bytes(data)
    if len(head) < 30 or not head.startswith(_LOCAL_HEADER):
        return None
    method, = struct.unpack_from("<H", head, 8)
    fnl, exl = struct.unpack_from("<HH", head, 26)
    name = head[30:30 + fnl]
    if method != 0 or not name.endswith(b"data.pkl"):
        return None
    prefix = name[: -len(b"data.pkl")]
    stream = io.BytesIO(head)
    stream.seek(30 + fnl + exl)
    try:
        found = _HeaderUnpickler(stream).load()
    except Exception:
        return None
    if not (isinstance(found, tuple) and found[0] == "tensor"):
        return None
    _, pid, offset, size, stride, v3_dtype = found
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[2] == "0"
            and isinstance(pid[1], _Storage) and isinstance(pid[4], int)):
        return None
    dtype = pid[1].dtype or v3_dtype
    if not isinstance(dtype, torch.dtype):
        return None
    nbytes = pid[4] if pid[1].dtype is None else pid[4] * dtype.itemsize
    records = _records(head, stream.tell(), prefix)
    order = records.get(b"byteorder")
    if order is not None and not head[order:].startswith(sys.byteorder.encode()):
        return None
    start = records.get(b"data/0")
    if start is None:
        return None
    return StoredTensor(dtype, size, stride, offset, nbytes, start)


def rowmajor_strides(size: Sequence[int]) -> tuple[int, ...]:
    """Element strides of a contiguous (row-major) tensor of ``size``."""
    strides, acc = [], 1
    for n in reversed(size):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def box_run(size: Sequence[int], offsets: Sequence[int], lengths: Sequence[int]) -> tuple[int, int, bool]:
    """Elements [a, b) of a row-major tensor covering a box, and whether the box is exactly that run."""
    if any(n == 0 for n in lengths):
        return 0, 0, True
    strides = rowmajor_strides(size)
    a = sum(o * s for o, s in zip(offsets, strides, strict=True))
    b = sum((o + n - 1) * s for o, n, s in zip(offsets, lengths, strides, strict=True)) + 1
    return a, b, b - a == math.prod(lengths)


def box_view(flat: torch.Tensor, size: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    """The box of ``lengths`` starting at the first element of ``flat``, a run cut from a ``size`` tensor."""
    return flat.as_strided(tuple(lengths), rowmajor_strides(size), flat.storage_offset())


def narrow(tensor: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    """``tensor`` narrowed to the box at ``offsets`` of ``lengths``."""
    for dim, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
        if offset != 0 or length != tensor.size(dim):
            tensor = tensor.narrow(dim, offset, length)
    return tensor
