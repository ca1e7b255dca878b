"""The file objects ``AisioFileSystem.open`` returns: aisio's sync Reader and Writer with
the attributes fsspec callers look for (``fs``, ``path``, ``mode``, ``details``, ``info()``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._bridge import Reader, Writer
from .._readers import AsyncReader
from .._writer import AsyncWriter

if TYPE_CHECKING:
    from ._filesystem import AisioFileSystem

__all__ = ["AisioReadFile", "AisioWriteFile"]

_MIN_AHEAD = 256 * 2**10  # read-ahead after a jump; doubles up to block_size while reads follow on


class AisioReadFile(Reader):
    """A seekable, read-only file with adaptive read-ahead over aisio's range reader.

    A read as large as the read-ahead goes straight to the store (exact bytes, parts in
    parallel), so the column chunks pyarrow asks for cost one GET each and nothing more.
    Smaller reads fill a buffer: ``_MIN_AHEAD`` after a jump (a footer, a random record),
    doubling up to ``block_size`` while reads follow each other, so small sequential reads
    (torch.load, CSV, a DCP file's tensors in offset order) become few large GETs.
    """

    def __init__(self, areader: AsyncReader, fs: AisioFileSystem, path: str,
                 details: dict[str, Any], block_size: int) -> None:
        super().__init__(areader)
        self.fs, self.path, self.mode = fs, path, "rb"
        self.details = details
        self.blocksize = block_size
        self._min_ahead = min(block_size, _MIN_AHEAD)
        self._ahead = self._min_ahead
        self._buf = memoryview(b"")  # bytes of [_buf_start, _buf_start + len) of the object
        self._buf_start = 0
        self._last_end = -1  # where the previous read ended: the next one there is sequential

    def __repr__(self) -> str:
        return f"<AisioReadFile {self.fs.unstrip_protocol(self.path)} pos={self.tell()}>"

    def info(self) -> dict[str, Any]:
        """What the filesystem knew of the object when the file was opened."""
        return self.details

    def _buffered(self, pos: int, view: memoryview) -> int:
        """Copy what the buffer holds of ``view`` from ``pos``; the count copied."""
        offset = pos - self._buf_start
        if offset < 0 or offset >= len(self._buf):
            return 0
        n = min(len(view), len(self._buf) - offset)
        view[:n] = self._buf[offset:offset + n]
        return n

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        pos = self.tell()
        view = view[:max(0, min(len(view), self.size - pos))]
        if not view:
            return 0
        done = self._buffered(pos, view)
        if done == len(view):
            self.seek(pos + done)
            self._last_end = pos + done
            return done
        start = pos + done
        rest = view[done:]
        if start == self._last_end or done:
            self._ahead = min(self.blocksize, max(self._ahead * 2, self._min_ahead))
        else:
            self._ahead = self._min_ahead
        self.seek(start)
        if len(rest) >= self._ahead:  # large: straight into the caller's buffer
            got = super().readinto(rest)
        else:
            fill = memoryview(bytearray(min(self.size - start, self._ahead)))
            self._buf = memoryview(b"")
            n = super().readinto(fill)
            self._buf, self._buf_start = fill[:n], start
            got = min(n, len(rest))
            rest[:got] = fill[:got]
            self.seek(start + got)
        self._last_end = start + got
        return done + got

    readinto1 = readinto

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self.tell())
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(memoryview(buf)[:n])

    read1 = read

    def readall(self) -> bytes:
        return self.read(-1)

    def peek(self, size: int = 0) -> bytes:
        """Bytes from the position on, without moving it: what the buffer holds (``readline`` uses it)."""
        pos = self.tell()
        if not self._buf_start <= pos < self._buf_start + len(self._buf):
            first = self.read(1)
            self.seek(pos)
            if not self._buf_start <= pos < self._buf_start + len(self._buf):
                return first  # no read-ahead (block_size 0): one byte
        return bytes(self._buf[pos - self._buf_start:])

    def close(self) -> None:
        self._buf = memoryview(b"")
        super().close()


class AisioWriteFile(Writer):
    """A write-only file over aisio's multipart writer: nothing is visible until ``close``;
    leaving a ``with`` block on an exception aborts the upload."""

    def __init__(self, awriter: AsyncWriter, fs: AisioFileSystem, path: str, mode: str) -> None:
        super().__init__(awriter)
        self.fs, self.path, self.mode = fs, path, mode

    def __repr__(self) -> str:
        return f"<AisioWriteFile {self.fs.unstrip_protocol(self.path)} {'closed' if self.closed else 'open'}>"

    def close(self) -> None:
        """Finish the upload, then forget cached listings that no longer hold."""
        was_open = not self.closed
        try:
            super().close()
        finally:
            if was_open:
                self.fs.wrote(self.path, self.info)

    def discard(self) -> None:
        """Abort the upload (fsspec's name for it)."""
        self.abort()
