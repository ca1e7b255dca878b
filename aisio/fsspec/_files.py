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


class AisioReadFile(Reader):
    """A seekable, read-only file over aisio's range reader: reads smaller than the block
    fill it (one GET), larger ones go straight to the caller in parallel parts."""

    def __init__(self, areader: AsyncReader, fs: AisioFileSystem, path: str,
                 details: dict[str, Any], block_size: int) -> None:
        super().__init__(areader)
        self.fs, self.path, self.mode = fs, path, "rb"
        self.details = details
        self.blocksize = block_size

    def __repr__(self) -> str:
        return f"<AisioReadFile {self.fs.unstrip_protocol(self.path)} pos={self.tell()}>"

    def info(self) -> dict[str, Any]:
        """What the filesystem knew of the object when the file was opened."""
        return self.details


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
