"""``torch.save`` / ``torch.load`` with objects: ``Checkpoint`` and the S3 connector's ``S3Checkpoint``.

``torch.load`` reads a zip through ``seek`` and ``readinto``: the directory at the end,
then each record. A small object is fetched whole in one go (parallel parts past
``part_size``) and served from memory; a large one is read through a range reader whose
small buffer catches the record headers while tensor bytes go straight from range GETs
into the tensors.
"""

from __future__ import annotations

import asyncio
import io
import logging
import operator
import os
import threading
from typing import Any

from .. import _bridge
from .._bridge import Client, Writer
from .._config import ClientConfig
from .._readers import ReaderConstructor
from ._datasets import client_for

__all__ = ["Checkpoint", "S3Checkpoint", "compat_config"]

MiB = 2**20


class _CheckpointWriter(Writer):
    """A writer that, like a file, completes its upload when dropped unclosed.

    ``torch.save(obj, ckpt.writer(url))`` never closes the writer it is given; the object
    appears when the writer is released. Inside ``with`` an exception aborts instead.
    """

    def __del__(self) -> None:
        if self.closed or self._pid != os.getpid():
            return  # done, or the parent's upload: not this process's to finish
        if threading.current_thread() is _bridge._thread:  # dropped on the loop thread itself
            task = asyncio.ensure_future(self._w.close())
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)
            return
        try:
            self.close()
        except Exception:  # a finalizer cannot raise; the failed upload was aborted
            _log.exception("the upload of %s failed", self.name)


_CLOSING: set[asyncio.Future[Any]] = set()
_log = logging.getLogger("aisio.torch")


class Checkpoint:
    """Readers and writers for ``torch.load`` / ``torch.save`` at any URL.

    ``whole_object_size``: objects up to this size are fetched whole, in one go, before
    ``torch.load`` reads them; larger ones are read by ranges through a ``buffer_size``
    buffer (tensor bytes bypass it).
    """

    def __init__(self, config: ClientConfig | None = None, *, whole_object_size: int = 256 * MiB,
                 buffer_size: int = 1 * MiB) -> None:
        self.config = config if config is not None else ClientConfig.from_env()
        self.whole_object_size = whole_object_size
        self.buffer_size = buffer_size

    @property
    def _client(self) -> Client:
        return client_for(self.config)

    def __repr__(self) -> str:
        return f"<aisio Checkpoint part_size={self.config.part_size}>"

    def reader(self, url: object) -> io.BufferedIOBase:
        """A seekable file object over the object at ``url``, for ``torch.load``."""
        info = self._client.head(url)
        if info.size <= self.whole_object_size:
            view = self._client.get_view(url)
            return _MemoryReader(view, info.url)
        return self._client.open(url, ReaderConstructor.range_based(self.buffer_size), info=info)

    def writer(self, url: object) -> Writer:
        """A writable file object; the object appears on ``close()`` (or when the writer is dropped)."""
        return _CheckpointWriter(self._client.aclient.writer(url))


class _MemoryReader(io.BufferedIOBase):
    """A read-only, seekable file object over bytes already fetched (no copy on ``readinto``)."""

    def __init__(self, view: memoryview, name: str) -> None:
        super().__init__()
        self._view, self._pos, self.name = view, 0, name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        offset, whence = operator.index(offset), operator.index(whence)  # 1.5 is a TypeError, as in io
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._pos:self._pos + len(target)]
        target[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = self._view[self._pos:end]
        self._pos += len(chunk)
        return chunk.tobytes()

    read1 = read
    readinto1 = readinto

    def close(self) -> None:
        self._view = memoryview(b"")
        super().close()


def compat_config(region: str | None, endpoint: str | None, s3client_config: Any,
                  config: ClientConfig | None) -> ClientConfig:
    """The ClientConfig for the S3 connector's arguments (an aisio ClientConfig is taken as is)."""
    from .compat import _s3_config

    if isinstance(s3client_config, ClientConfig):
        config, s3client_config = s3client_config, None
    return _s3_config(region, endpoint, s3client_config, config)


class S3Checkpoint(Checkpoint):
    """The S3 connector's ``S3Checkpoint(region, endpoint=None, s3client_config=None)``."""

    def __init__(self, region: str, endpoint: str | None = None, s3client_config: Any = None,
                 *, config: ClientConfig | None = None) -> None:
        super().__init__(compat_config(region, endpoint, s3client_config, config))
        self.region, self.endpoint = region, endpoint
