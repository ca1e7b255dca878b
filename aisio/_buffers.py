"""Turning caller buffers (bytearray, memoryview, numpy arrays, torch tensors) into byte views."""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["writable_view"]


def writable_view(buffer: Any) -> memoryview:
    """A flat, writable ``memoryview`` of unsigned bytes over ``buffer``'s own memory.

    Torch tensors do not export the buffer protocol, so a contiguous CPU tensor is viewed
    through its data pointer (torch is never imported here); the caller keeps the tensor
    alive while the view is in use.
    """
    if _is_tensor(buffer):
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


def _is_tensor(obj: object) -> bool:
    return all(hasattr(obj, a) for a in ("data_ptr", "element_size", "is_contiguous", "device"))
