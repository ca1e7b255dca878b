"""The local file system (``file://`` URLs and plain paths): the embedded default.

Reads use ``os.preadv`` in worker threads straight into the caller's buffer; writes go
to a hidden temporary file renamed into place, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._types import ObjectInfo
from .._url import Location, file_url
from ..errors import (
    AccessDeniedError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
)

__all__ = ["FileBackend"]

T = TypeVar("T")
_LIST_BATCH = 1000


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"'


def _info(path: str, st: os.stat_result) -> ObjectInfo:
    modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
    return ObjectInfo(file_url(path), st.st_size, _etag(st), modified)


def _mapped(path: str, exc: OSError) -> Exception:
    url = file_url(path)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return ObjectNotFoundError(f"no such file: {url}", url=url)
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"permission denied: {url}", url=url)
    if isinstance(exc, IsADirectoryError):
        return InvalidURLError(f"is a directory, not an object: {url}", url=url)
    return exc


async def _run(path: str, fn: Callable[..., T], *args: object) -> T:
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        raise _mapped(path, exc) from exc


class _FileBody:
    """An open file positioned at ``start``; reads block in a worker thread."""

    def __init__(self, fd: int, start: int, end: int, st: os.stat_result) -> None:
        self._fd, self._pos, self._end = fd, start, end
        self.object_size, self.etag = st.st_size, _etag(st)
        self.latency = 0.0

    async def readinto(self, view: memoryview) -> int:
        if self._fd < 0:
            raise ValueError("body is closed")
        view = view[: max(0, self._end - self._pos)]
        if not view:
            return 0
        n = await anyio.to_thread.run_sync(os.preadv, self._fd, [view], self._pos)
        self._pos += n
        return n

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class _FileUpload:
    """Parts written at their offsets into a hidden temp file, renamed on completion."""

    def __init__(self, path: str, fd: int, tmp: str) -> None:
        self._path, self._fd, self._tmp = path, fd, tmp

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        await _run(self._path, _pwrite_all, self._fd, data, offset)

    async def complete(self) -> ObjectInfo:
        fd, self._fd = self._fd, -1
        os.close(fd)
        await _run(self._path, os.replace, self._tmp, self._path)
        return _info(self._path, os.stat(self._path))

    async def abort(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _open_temp(path: str) -> tuple[int, str]:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:64] + ".", suffix=".part", dir=folder)
    os.fchmod(fd, 0o644)
    return fd, tmp


def _walk(
    root: str, prefix: str, recursive: bool, seen: set[tuple[int, int]] | None = None
) -> list[tuple[str, os.stat_result]]:
    """Files under ``root`` whose path starts with ``prefix``, in path order.

    Symlinked folders are followed once each: ``seen`` holds the (device, inode) of every
    folder entered, so a link back up the tree cannot loop.
    """
    out: list[tuple[str, os.stat_result]] = []
    seen = set() if seen is None else seen
    try:
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            return out
        seen.add((st.st_dev, st.st_ino))
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        path = entry.path
        if entry.is_dir(follow_symlinks=True):
            if ((path + "/").startswith(prefix) and recursive) or prefix.startswith(path + "/"):
                out.extend(_walk(path, prefix, recursive, seen))
        elif path.startswith(prefix) and entry.is_file(follow_symlinks=True):
            if not recursive and "/" in path[len(prefix):]:
                continue
            if entry.name.startswith(".") and entry.name.endswith(".part"):
                continue  # an upload in progress
            out.append((path, entry.stat()))
    return out


class FileBackend:
    """Objects are files; a prefix is a path prefix (a folder when it ends in '/')."""

    min_part_size = 0

    async def head(self, loc: Location) -> ObjectInfo:
        st = await _run(loc.key, os.stat, loc.key)
        if not os.path.isfile(loc.key):
            raise InvalidURLError(f"not a regular file: {loc.url}", url=loc.url)
        return _info(loc.key, st)

    async def list(self, loc: Location, *, recursive: bool = True) -> AsyncIterator[ObjectInfo]:
        prefix = loc.key
        root = prefix.rstrip("/") if prefix.endswith("/") else os.path.dirname(prefix)
        if not prefix.endswith("/") and os.path.isdir(prefix):
            prefix, root = prefix + "/", prefix
        found = await _run(root or "/", _walk, root or "/", prefix, recursive)
        for i in range(0, len(found), _LIST_BATCH):
            for path, st in found[i:i + _LIST_BATCH]:
                yield _info(path, st)
            await anyio.lowlevel.checkpoint()

    async def open_body(
        self, loc: Location, start: int, end: int | None, *, etag: str | None = None
    ) -> _FileBody:
        def _open() -> tuple[int, os.stat_result]:
            fd = os.open(loc.key, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                return fd, os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise

        fd, st = await _run(loc.key, _open)
        try:
            if os.path.isdir(loc.key):
                raise _mapped(loc.key, IsADirectoryError(errno.EISDIR, loc.key))
            if etag is not None and etag != _etag(st):
                raise ObjectChangedError(f"{loc.url} changed while it was being read", url=loc.url)
            if start > st.st_size:
                raise RangeError(
                    f"offset {start} is past the end of {loc.url} ({st.st_size} bytes)", url=loc.url)
        except BaseException:
            os.close(fd)
            raise
        stop = st.st_size if end is None else min(end, st.st_size)
        return _FileBody(fd, start, stop, st)

    async def put(self, loc: Location, data: memoryview) -> ObjectInfo:
        upload = await self.create_upload(loc)
        try:
            await upload.upload_part(1, 0, data)
            return await upload.complete()
        except BaseException:
            await upload.abort()
            raise

    async def create_upload(self, loc: Location) -> _FileUpload:
        if loc.is_prefix:
            raise InvalidURLError(f"cannot write to a folder URL: {loc.url}", url=loc.url)
        fd, tmp = await _run(loc.key, _open_temp, loc.key)
        return _FileUpload(loc.key, fd, tmp)

    async def delete(self, loc: Location) -> None:
        await _run(loc.key, os.unlink, loc.key)

    async def aclose(self) -> None:
        return None
