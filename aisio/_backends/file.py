"""The local file system (``file://`` URLs and plain paths): the embedded default.

Reads use ``os.preadv`` in worker threads straight into the caller's buffer.

Only regular files are objects. A directory, FIFO, device or socket is refused with
InvalidURLError before it is opened, and files are opened with ``O_NONBLOCK`` and
checked again by ``fstat``, so a FIFO swapped in meanwhile cannot hang the open (nor the
process at exit). A pseudo file whose ``stat`` size is not its length cannot be read as
an object either, because its size is unknown: an empty regular file is peeked at (one
byte), and one that has content anyway (``/proc/self/status``: 0 bytes by ``stat``) is
InvalidURLError; a file that ends before its size (``/sys`` files report 4096 bytes) is
ObjectChangedError. Neither is ever returned as short or empty bytes.

Writes go to a hidden temporary file, ``.<name>.aisio-<16 hex digits>.part`` in the
target's folder, renamed into place on completion; ``list`` hides exactly that pattern
(a user's own ``.x.part`` is listed). A failed, aborted or cancelled write removes it, and
its OSError becomes an error that names the URL, never the temporary file: a directory
in the way, a name too long or invalid for the file system is InvalidURLError, a refused
permission AccessDeniedError, anything else RequestError (which is not retried).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._types import ObjectInfo
from .._url import Location, file_url
from ..errors import (
    AccessDeniedError,
    AisioError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
    RequestError,
)

__all__ = ["FileBackend"]

T = TypeVar("T")
_LIST_BATCH = 1000
_O_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_O_TEMP = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
# the temporary file of a write in progress; list hides these names and no others
_TEMP_NAME = re.compile(r"\..*\.aisio-[0-9a-f]{16}\.part", re.DOTALL)
# a name the file system cannot hold (or resolve): the URL is at fault, not the store
_BAD_NAME = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.EILSEQ})
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"'


def _info(path: str, st: os.stat_result) -> ObjectInfo:
    modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
    return ObjectInfo(file_url(path), st.st_size, _etag(st), modified)


def _mapped(path: str, exc: OSError) -> Exception:
    """The aisio error for a failed read; other OSErrors stay, for the engine to retry."""
    url = file_url(path)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return ObjectNotFoundError(f"no such file: {url}", url=url)
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"permission denied: {url}", url=url)
    if isinstance(exc, IsADirectoryError):
        return InvalidURLError(f"is a directory, not an object: {url}", url=url)
    if exc.errno in _BAD_NAME:
        return InvalidURLError(f"not a usable file name ({exc.strerror}): {url}", url=url)
    return exc


def _write_error(path: str, exc: OSError) -> AisioError:
    """The aisio error for a failed write, naming the URL (an OSError names the temp file)."""
    url = file_url(path)
    why = exc.strerror or type(exc).__name__
    if isinstance(exc, IsADirectoryError):
        return InvalidURLError(f"cannot write {url}: it is a directory", url=url)
    if isinstance(exc, (NotADirectoryError, FileExistsError)):  # from makedirs
        return InvalidURLError(f"cannot write {url}: part of its path is not a folder", url=url)
    if exc.errno in _BAD_NAME:
        return InvalidURLError(f"cannot write {url}: not a usable file name ({why})", url=url)
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"cannot write {url}: permission denied", url=url)
    return RequestError(f"cannot write {url}: {why}", url=url)


async def _run(path: str, fn: Callable[..., T], *args: object) -> T:
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        raise _mapped(path, exc) from exc


async def _run_write(path: str, fn: Callable[..., T], *args: object) -> T:
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        raise _write_error(path, exc) from exc


async def _run_owned(
    run: Callable[..., Awaitable[T]], path: str, fn: Callable[[str], T], undo: Callable[[T], None]
) -> T:
    """``await run(path, fn, path)``, but what ``fn`` made is undone if nobody takes it.

    A task cancelled by ``Task.cancel()`` leaves its worker thread running, and the file or
    descriptor the thread then makes would be nobody's: ``undo`` releases it, in the thread
    if the task was gone by then, or here if the result came back too late.
    """
    lock = threading.Lock()
    made: list[T] = []
    gone = False

    def work(arg: str) -> T:
        result = fn(arg)
        with lock:
            if gone:
                undo(result)
            else:
                made.append(result)
        return result

    try:
        return await run(path, work, path)
    except BaseException:
        with lock:
            gone = True
            for result in made:
                undo(result)
        raise


def _refuse_irregular(path: str, st: os.stat_result) -> None:
    """InvalidURLError unless ``st`` is a regular file's (FIFOs would block, devices never end)."""
    if not stat.S_ISREG(st.st_mode):
        url = file_url(path)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise InvalidURLError(f"not a regular file ({kind}), so not an object: {url}", url=url)


def _refuse_pseudo(path: str, fd: int, st: os.stat_result) -> None:
    """InvalidURLError for a file of size 0 that has content (/proc): its size is unknown."""
    if st.st_size:
        return
    try:
        empty = not os.pread(fd, 1, 0)
    except OSError as exc:
        if exc.errno != errno.ESPIPE:
            raise
        empty = False  # not seekable: no regular file
    if not empty:
        url = file_url(path)
        raise InvalidURLError(
            f"size unknown: {url} reports 0 bytes but is not empty (a pseudo file, as under "
            f"/proc); copy it to a regular file to read it as an object", url=url)


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """A blocking descriptor of the regular file at ``path`` and its stat; refuse any other."""
    _refuse_irregular(path, os.stat(path))  # nothing else is opened at all
    fd = os.open(path, _O_READ)  # never blocks, should a FIFO have been swapped in
    try:
        st = os.fstat(fd)
        _refuse_irregular(path, st)
        _refuse_pseudo(path, fd, st)
        os.set_blocking(fd, True)
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def _head(path: str) -> os.stat_result:
    """The stat of the regular file at ``path``, opened only to peek when it looks empty."""
    st = os.stat(path)
    _refuse_irregular(path, st)
    if st.st_size == 0:
        fd, st = _open_regular(path)
        os.close(fd)
    return st


class _FileBody:
    """An open file positioned at ``start``; reads block in a worker thread."""

    def __init__(self, path: str, fd: int, start: int, end: int, st: os.stat_result) -> None:
        self._path, self._fd, self._pos, self._end = path, fd, start, end
        self.object_size, self.etag = st.st_size, _etag(st)
        self.latency = 0.0

    async def readinto(self, view: memoryview) -> int:
        if self._fd < 0:
            raise ValueError("body is closed")
        view = view[: max(0, self._end - self._pos)]
        if not view:
            return 0
        n = await _run(self._path, os.preadv, self._fd, [view], self._pos)
        if n == 0:
            url = file_url(self._path)
            raise ObjectChangedError(
                f"{url} ended at byte {self._pos}, before its size of {self.object_size} bytes: "
                f"it was truncated while being read, or is a pseudo file whose size is not "
                f"its length", url=url)
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
        self._done = False

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        if self._fd < 0:
            raise ValueError("upload is closed")
        # the thread writes to a descriptor of its own: after a Task.cancel() it runs on,
        # and an abort that closes ours must not let it write into a file opened later
        try:
            own = [os.dup(self._fd)]  # taken by the thread, or closed here if it never runs
        except OSError as exc:
            raise _write_error(self._path, exc) from exc

        def write() -> None:
            try:
                fd = own.pop()  # list.pop is atomic: the thread or the task gets it, not both
            except IndexError:
                return  # the task was cancelled before this thread started, and closed it
            _pwrite_all(fd, data, offset)

        try:
            await _run_write(self._path, write)
        except BaseException:
            with contextlib.suppress(IndexError):
                os.close(own.pop())  # cancelled before the thread started
            raise

    async def complete(self) -> ObjectInfo:
        fd, self._fd = self._fd, -1
        if fd < 0:
            raise ValueError("upload is closed")
        return _info(self._path, await _run_write(self._path, self._finish, fd))

    def _finish(self, fd: int) -> os.stat_result:
        """Close and rename the temp file into place (in a worker thread); remove it on failure."""
        try:
            os.close(fd)
            os.replace(self._tmp, self._path)
        except BaseException:
            self._remove()
            raise
        self._done = True
        return os.stat(self._path)

    async def abort(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self._done:
            self._remove()

    def _remove(self) -> None:
        self._done = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, then close ``fd`` (the caller's duplicate)."""
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    finally:
        os.close(fd)


def _close_opened(opened: tuple[int, os.stat_result]) -> None:
    """Release a descriptor that ``_open_regular`` opened for a cancelled read."""
    os.close(opened[0])


def _remove_temp(made: tuple[int, str]) -> None:
    """Close and remove a temp file that ``_open_temp`` made for a cancelled write."""
    os.close(made[0])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(made[1])


def _open_temp(path: str) -> tuple[int, str]:
    """Create the hidden temp file a write to ``path`` fills: (descriptor, its path)."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    while True:
        tmp = os.path.join(folder, f".{name[:64]}.aisio-{secrets.token_hex(8)}.part")
        try:
            fd = os.open(tmp, _O_TEMP, 0o600)
        except FileExistsError:
            continue
        break
    try:
        os.fchmod(fd, 0o644)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
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
            if _TEMP_NAME.fullmatch(entry.name):
                continue  # a write in progress
            try:
                out.append((path, entry.stat()))
            except FileNotFoundError:
                continue  # removed since the folder was read
    return out


class FileBackend:
    """Objects are files; a prefix is a path prefix (a folder when it ends in '/')."""

    min_part_size = 0

    async def head(self, loc: Location) -> ObjectInfo:
        return _info(loc.key, await _run(loc.key, _head, loc.key))

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
        fd, st = await _run_owned(_run, loc.key, _open_regular, _close_opened)
        try:
            if etag is not None and etag != _etag(st):
                raise ObjectChangedError(f"{loc.url} changed while it was being read", url=loc.url)
            if start > st.st_size:
                raise RangeError(
                    f"offset {start} is past the end of {loc.url} ({st.st_size} bytes)", url=loc.url)
        except BaseException:
            os.close(fd)
            raise
        stop = st.st_size if end is None else min(end, st.st_size)
        return _FileBody(loc.key, fd, start, stop, st)

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
        fd, tmp = await _run_owned(_run_write, loc.key, _open_temp, _remove_temp)
        return _FileUpload(loc.key, fd, tmp)

    async def delete(self, loc: Location) -> None:
        await _run(loc.key, os.unlink, loc.key)

    async def aclose(self) -> None:
        return None
