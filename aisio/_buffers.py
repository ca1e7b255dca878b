"""Turning caller buffers (bytearray, memoryview, numpy arrays, torch tensors) into byte views."""

from __future__ import annotations

import ctypes
import errno
import sys
from typing import Any

import anyio.to_thread

__all__ = ["bytes_of", "fresh_bytes", "fresh_bytes_view", "writable_view"]

_FILL_BYTES = sys.implementation.name == "cpython"
_FILL_MIN = 64 * 1024  # below this a bytearray and one copy cost less than the ctypes calls
_new_bytes: Any = None
if _FILL_BYTES:
    _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_PREFAULT_MIN = 512 * 1024  # below this a thread hop costs more than the page faults it moves
_PAGE = 4096
_MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault a range in with one call
_madvise: Any = None
if sys.platform == "linux":
    _libc = ctypes.CDLL(None, use_errno=True)  # foreign calls release the GIL
    _madvise = _libc.madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def writable_view(buffer: Any) -> memoryview:
    """A flat, writable ``memoryview`` of unsigned bytes over ``buffer``'s own memory.

    Torch tensors do not export the buffer protocol, so a contiguous CPU tensor is viewed
    through its data pointer (torch is never imported here); the caller keeps the tensor
    alive while the view is in use.
    """
    if type(buffer) not in (bytearray, memoryview) and _is_tensor(buffer):
        if buffer.device.type != "cpu":
            raise TypeError(f"only CPU tensors can be filled, got a tensor on {buffer.device}")
        if not buffer.is_contiguous():
            raise TypeError("the tensor must be contiguous to be filled in place")
        nbytes = buffer.numel() * buffer.element_size()
        if nbytes == 0:
            return memoryview(bytearray())
        return memoryview((ctypes.c_char * nbytes).from_address(buffer.data_ptr())).cast("B")
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError(f"expected a writable buffer, got {type(buffer).__name__}") from None
    if view.readonly:
        raise TypeError(f"the buffer is read-only ({type(buffer).__name__})")
    if not view.c_contiguous:
        raise TypeError("the buffer must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def fresh_bytes_view(size: int) -> memoryview:
    """A writable view of ``size`` new bytes that ``bytes_of`` turns into ``bytes`` without a copy.

    On CPython the view is over the storage of a new, not yet shared ``bytes`` object (what
    ``socket.recv`` does in C): the body lands once, with no zero-fill and no final copy,
    which halves the fresh memory a ``get`` touches. Elsewhere, and for small sizes, it is
    a ``bytearray`` that ``bytes_of`` copies.
    """
    if not _FILL_BYTES or size < _FILL_MIN:
        return memoryview(bytearray(size))
    owner = _new_bytes(None, size)
    address = ctypes.cast(ctypes.c_char_p(owner), ctypes.c_void_p).value
    assert address is not None
    array = (ctypes.c_char * size).from_address(address)
    array.owner = owner  # type: ignore[attr-defined]  # keeps the bytes alive with the view
    return memoryview(array).cast("B")


async def fresh_bytes(size: int) -> memoryview:
    """``fresh_bytes_view(size)`` with its pages faulted in by a worker thread for large sizes.

    A fresh 1 MiB buffer costs about 0.5 ms of page faults when the body lands in it; done
    here, off the event loop, while the response is on its way, that CPU comes from the
    other core instead of the loop that serves every connection.
    """
    view = fresh_bytes_view(size)
    if _madvise is not None and size >= _PREFAULT_MIN:
        await anyio.to_thread.run_sync(_populate, view)
    return view


def _populate(view: memoryview) -> None:
    """Fault in the whole pages of ``view`` (a no-op on kernels without MADV_POPULATE_WRITE)."""
    global _madvise
    array = view.obj
    start = ctypes.addressof(array)  # type: ignore[arg-type]
    lo = (start + _PAGE - 1) & ~(_PAGE - 1)
    hi = (start + len(view)) & ~(_PAGE - 1)
    failed = hi > lo and _madvise is not None and _madvise(lo, hi - lo, _MADV_POPULATE_WRITE) != 0
    if failed and ctypes.get_errno() == errno.EINVAL:
        _madvise = None  # an older kernel: let the body fault the pages in


def bytes_of(view: memoryview) -> bytes:
    """The ``bytes`` behind a filled ``fresh_bytes_view`` (a copy only for a bytearray)."""
    owner = getattr(view.obj, "owner", None)
    if isinstance(owner, bytes) and len(owner) == len(view):
        return owner
    return view.tobytes()


def _is_tensor(obj: object) -> bool:
    return all(hasattr(obj, a) for a in ("data_ptr", "element_size", "is_contiguous", "device"))
