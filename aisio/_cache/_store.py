"""The cache's files, shared by every process on a node: blocking code, no event loop.

Layout, under ``<dir>/v1/``::

    ledger                              bytes the block files take, read and written under flock
    blocks/<u:2>/<u>-<e>-<n>.blk        block n of one version of one object
    blocks/<u:2>/<u>-<e>-<n>.blk.tmp    block n being written: never served
    blocks/<u:2>/<u>-<e>-<n>.blk.lock   block n's lock (flock): one fetch per block
    blocks/<u:2>/<u>.seen               symlink to "<size> <etag>", what a HEAD said; mtime: when

``u`` hashes the URL; ``e`` hashes the ETag (quotes and ``W/`` aside) and the block size.

A block file is a header (magic, lengths, object size, index, the data's CRC-32, URL and
ETag, and the header's own CRC-32), then the data. It is written as ``.tmp`` and renamed
into place once complete, so a reader sees a whole block or none; a block whose header,
length or CRC does not check out is deleted and fetched again.

Locks. A block's lock is an flock on its ``.lock`` file: the kernel drops it when its holder
dies, so a killed process blocks no one. The holder deletes the file just before it lets go,
and a taker checks that the file it locked is still the one at the path, so lock files do not
pile up. The ledger's flock is held only for a few file operations (and an eviction scan),
never while waiting for a block's lock, so the two cannot deadlock.

Size. Every file of ``.blk`` or ``.blk.tmp`` is counted in the ledger, and every creation,
rename and deletion of one happens under the ledger's lock: a ``.tmp`` is created at its full
size (``posix_fallocate``) after the ledger made room for it. So the files never total more
than ``max_bytes``, and a scan under the lock sees exactly what the ledger should say; the
eviction scan writes that number back, which undoes any count a killed process left wrong.
Eviction removes the least recently used blocks (reads refresh a block's mtime) down to 90%
of the limit, so one scan makes room for many blocks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Block", "Entry", "EntrySummary", "Store", "norm_etag", "try_lock", "unlock"]

_MAGIC = b"AISIOBK1"
# magic, header length, header crc, block size, object size, index, data length, data crc,
# url length, etag length; then the url and the etag (UTF-8)
_HEAD = struct.Struct("<8sIIQQQQIII")
_LEDGER = struct.Struct("<8sQ")
_LEDGER_MAGIC = b"AISIOLG1"
_LOW_WATER = 0.9  # eviction frees down to this share of max_bytes
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_READ = os.O_RDONLY | _CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
_O_LOCK = os.O_RDWR | os.O_CREAT | _CLOEXEC
# Held around every ledger session of this process, and by fork() while it copies the
# process: a child never inherits a descriptor that holds the ledger's flock (flocks belong
# to the descriptor, so such a child would hold it, for every process, as long as it lives).
_SESSION = threading.Lock()
os.register_at_fork(before=_SESSION.acquire, after_in_parent=_SESSION.release,
                    after_in_child=_SESSION.release)


def norm_etag(etag: str) -> str:
    """The version an ETag names, as the engine compares them: quotes and ``W/`` aside."""
    return etag.removeprefix("W/").strip('"')


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One version of one object: where its blocks are."""

    url: str
    etag: str
    """As the store sent it (the file backend compares it verbatim)."""
    folder: str
    stem: str


@dataclass
class Block:
    """A cached block, opened and its header checked; its data not read yet."""

    path: str
    fd: int
    ino: int
    offset: int
    length: int
    crc: int
    object_size: int
    etag: str


@dataclass(frozen=True)
class _Header:
    length: int
    block_size: int
    object_size: int
    index: int
    data_length: int
    data_crc: int
    url: str
    etag: str


@dataclass(frozen=True)
class EntrySummary:
    """What ``aisio cache ls`` shows of one cached object version."""

    url: str
    etag: str
    object_size: int
    blocks: int
    bytes: int
    last_used: float


def _encode(entry: Entry, block_size: int, object_size: int, index: int, data: memoryview) -> bytes:
    url = entry.url.encode("utf-8", "surrogateescape")
    etag = entry.etag.encode("utf-8", "surrogateescape")
    length = _HEAD.size + len(url) + len(etag)
    fields = (length, block_size, object_size, index, len(data), zlib.crc32(data), len(url), len(etag))
    blank = _HEAD.pack(_MAGIC, fields[0], 0, *fields[1:]) + url + etag
    return _HEAD.pack(_MAGIC, fields[0], zlib.crc32(blank), *fields[1:]) + url + etag


def _decode(raw: bytes) -> _Header | int | None:
    """The header at the start of ``raw``; its length if ``raw`` is too short; None if bad."""
    if len(raw) < _HEAD.size:
        return None
    magic, length, crc, bsize, osize, index, dlen, dcrc, ulen, elen = _HEAD.unpack_from(raw)
    if magic != _MAGIC or length != _HEAD.size + ulen + elen:
        return None
    if len(raw) < length:
        return int(length)
    blank = _HEAD.pack(magic, length, 0, bsize, osize, index, dlen, dcrc, ulen, elen)
    if zlib.crc32(raw[_HEAD.size:length], zlib.crc32(blank)) != crc:
        return None
    text = raw[_HEAD.size:length]
    try:
        url, etag = (part.decode("utf-8", "surrogateescape") for part in (text[:ulen], text[ulen:]))
    except UnicodeDecodeError:  # bytes no encoder makes (a lone surrogate escape)
        return None
    return _Header(length, bsize, osize, index, dlen, dcrc, url, etag)


def _read_header(fd: int) -> _Header | None:
    found = _decode(os.pread(fd, 4096, 0))
    if isinstance(found, int):
        found = _decode(os.pread(fd, found, 0))
    return found if isinstance(found, _Header) else None


def try_lock(path: str) -> int | None:
    """Take the lock at ``path`` without waiting: its descriptor, or None if another holds it."""
    while True:
        try:
            fd = os.open(path, _O_LOCK, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            now = os.stat(path)
        except FileNotFoundError:  # its holder let go and deleted it: try the new one
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            return fd
        os.close(fd)


def unlock(path: str, fd: int) -> None:
    """Delete the lock file, then let go (a waiter that locked the deleted file tries again)."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


def _allocate(fd: int, size: int) -> None:
    """Give the file its full size now, so a full disk shows here and not halfway through."""
    allocate = getattr(os, "posix_fallocate", None)  # not on macOS
    try:
        if allocate is None:
            raise OSError(errno.EOPNOTSUPP, "no posix_fallocate")
        allocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _Ledger:
    """The ledger while its lock is held: the bytes the block files take."""

    def __init__(self, fd: int, total: int) -> None:
        self.fd, self.total = fd, total

    def set(self, total: int) -> None:
        self.total = max(0, total)
        os.pwrite(self.fd, _LEDGER.pack(_LEDGER_MAGIC, self.total), 0)

    def add(self, delta: int) -> None:
        self.set(self.total + delta)


class Store:
    """The cache folder of one ``CacheOptions``; every method blocks (run it in a thread)."""

    def __init__(self, folder: str, max_bytes: int, block_size: int) -> None:
        self.folder = folder
        self.root = os.path.join(folder, "v1")
        self.blocks = os.path.join(self.root, "blocks")
        self.max_bytes, self.block_size = max_bytes, block_size
        self._ledger_path = os.path.join(self.root, "ledger")

    def ensure(self) -> None:
        """Create the folder; an OSError (a file in the way, no permission) names it."""
        os.makedirs(self.blocks, exist_ok=True)
        if not os.access(self.blocks, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "cache folder is not writable", self.folder)

    # -- names --

    def entry(self, url: str, etag: str) -> Entry:
        u = _hash(url)[:32]
        e = _hash(f"{norm_etag(etag)}\0{self.block_size}")[:16]
        return Entry(url, etag, os.path.join(self.blocks, u[:2]), f"{u}-{e}")

    def block_path(self, entry: Entry, index: int) -> str:
        return os.path.join(entry.folder, f"{entry.stem}-{index}.blk")

    def lock_path(self, entry: Entry, index: int) -> str:
        return self.block_path(entry, index) + ".lock"

    def _seen_path(self, url: str) -> str:
        u = _hash(url)[:32]
        return os.path.join(self.blocks, u[:2], f"{u}.seen")

    def block_length(self, object_size: int, index: int) -> int:
        return max(0, min(self.block_size, object_size - index * self.block_size))

    # -- reading --

    def open_block(self, entry: Entry, index: int, object_size: int = -1) -> Block | None:
        """Block ``index`` of ``entry`` with a sound header (of an object of ``object_size``
        bytes, if given), opened; None if it is not cached. A broken one is deleted."""
        path = self.block_path(entry, index)
        try:
            fd = os.open(path, _O_READ)
        except FileNotFoundError:
            return None
        try:
            header = _read_header(fd)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if header is not None and self._sound(header, entry, index, object_size, st.st_size):
            return Block(path, fd, st.st_ino, header.length, header.data_length, header.data_crc,
                         header.object_size, header.etag)
        os.close(fd)
        self.discard(path, st.st_ino)
        return None

    def _sound(self, h: _Header, entry: Entry, index: int, object_size: int, file_size: int) -> bool:
        size = h.object_size
        return (h.url == entry.url and norm_etag(h.etag) == norm_etag(entry.etag)
                and h.index == index and h.block_size == self.block_size
                and object_size in (-1, size)
                and (index * self.block_size < size or index == size == 0)
                and h.data_length == self.block_length(size, index)
                and file_size == h.length + h.data_length)

    def read_block(self, block: Block, into: memoryview) -> bool:
        """Fill ``into`` (the block's length) with its data and close it; False (and the
        block deleted) if its length or CRC is wrong. A good read makes it most recently used."""
        good = False
        try:
            got = 0
            while got < len(into):
                n = os.preadv(block.fd, [into[got:]], block.offset + got)
                if n == 0:
                    break
                got += n
            good = got == block.length == len(into) and zlib.crc32(into) == block.crc
            if good:
                with contextlib.suppress(OSError):
                    os.utime(block.fd)  # LRU order: eviction takes the oldest mtime first
        finally:
            os.close(block.fd)
        if not good:
            self.discard(block.path, block.ino)
        return good

    def close_block(self, block: Block) -> None:
        os.close(block.fd)

    # -- writing --

    def commit(self, entry: Entry, index: int, object_size: int, data: memoryview) -> bool:
        """Store block ``index`` (the caller holds its lock); False if there is no room for it.

        OSErrors (a full disk, a read-only folder) are raised after undoing what was done.
        """
        header = _encode(entry, self.block_size, object_size, index, data)
        need = len(header) + len(data)
        if need > self.max_bytes:
            return False
        path = self.block_path(entry, index)
        tmp = path + ".tmp"
        with self._ledger() as led:
            self._remove(led, tmp)  # a killed writer's: the block's lock is ours now
            if led.total + need > self.max_bytes:
                self._evict(led, need)
                if led.total + need > self.max_bytes:
                    return False  # the rest is being written by others
            led.add(need)  # counted before it exists: a crash in between over-counts, never under
            try:
                fd = self._create(tmp)
            except BaseException:
                led.add(-need)
                raise
            try:
                _allocate(fd, need)
            except BaseException:
                os.close(fd)
                self._remove(led, tmp)
                raise
        try:
            try:
                _write_all(fd, header, 0)
                _write_all(fd, data, len(header))
            finally:
                os.close(fd)
            with self._ledger() as led:
                self._remove(led, path)  # a broken one not yet dropped: its bytes leave the count
                os.rename(tmp, path)
        except BaseException:
            with self._ledger() as led:
                self._remove(led, tmp)
            raise
        return True

    def _create(self, path: str) -> int:
        try:
            return os.open(path, _O_NEW, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return os.open(path, _O_NEW, 0o644)

    def discard(self, path: str, ino: int | None = None) -> None:
        """Delete a block file (only if it is still inode ``ino``, when given)."""
        with self._ledger() as led:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            if ino is None or st.st_ino == ino:
                self._remove(led, path)

    def invalidate(self, url: str) -> None:
        """Forget every cached version of ``url`` (it was written or deleted)."""
        seen = self._seen_path(url)
        folder, prefix = os.path.dirname(seen), os.path.basename(seen)[:-len(".seen")] + "-"
        with self._ledger() as led:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seen)
            try:
                names = [e.name for e in os.scandir(folder)]
            except FileNotFoundError:
                return
            for name in names:
                if name.startswith(prefix) and name.endswith(".blk"):
                    self._remove(led, os.path.join(folder, name))

    # -- what a HEAD said --

    def remember(self, url: str, etag: str, size: int, *, create: bool = True) -> None:
        """Record that the store just said ``url`` is ``etag`` of ``size`` bytes (without
        ``create``, only if there is a record already)."""
        path = self._seen_path(url)
        if not create and not os.path.lexists(path):
            return
        tmp = f"{path}.{secrets.token_hex(6)}.new"
        try:
            os.symlink(f"{size} {etag}", tmp)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(f"{size} {etag}", tmp)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def recall(self, url: str, max_age: float) -> tuple[str, int] | None:
        """(etag, size) if a HEAD said so less than ``max_age`` seconds ago."""
        path = self._seen_path(url)
        try:
            target, st = os.readlink(path), os.lstat(path)
        except OSError:
            return None
        if not time.time() - st.st_mtime < max_age:
            return None
        size, _, etag = target.partition(" ")
        return (etag, int(size)) if size.isdigit() and etag else None

    def forget(self, url: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._seen_path(url))

    # -- the ledger and eviction --

    @contextlib.contextmanager
    def _ledger(self) -> Iterator[_Ledger]:
        with _SESSION:
            yield from self._locked_ledger()

    def _locked_ledger(self) -> Iterator[_Ledger]:
        try:
            fd = os.open(self._ledger_path, _O_LOCK, 0o644)
        except FileNotFoundError:  # the folder was removed under us: start afresh
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(self._ledger_path, _O_LOCK, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, _LEDGER.size, 0)
            if len(raw) == _LEDGER.size and raw.startswith(_LEDGER_MAGIC):
                led = _Ledger(fd, _LEDGER.unpack(raw)[1])
            else:  # new, or damaged: count the files
                led = _Ledger(fd, 0)
                led.set(self._scan()[0])
            yield led
        finally:
            os.close(fd)  # lets go of the flock

    def _remove(self, led: _Ledger, path: str) -> int:
        """Delete a counted file (ledger held); the bytes it took, 0 if it was not there."""
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        led.add(-size)  # after the unlink: a crash in between over-counts, never under
        return size

    def _scan(self) -> tuple[int, list[tuple[int, int, str]], list[str]]:
        """(bytes of every block and temp file, blocks as (mtime, size, path), temp paths)."""
        total, blocks, temps = 0, [], []
        for sub in _entries(self.blocks):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for e in _entries(sub.path):
                is_block = e.name.endswith(".blk")
                if not (is_block or e.name.endswith(".blk.tmp")):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                total += st.st_size
                if is_block:
                    blocks.append((st.st_mtime_ns, st.st_size, e.path))
                else:
                    temps.append(e.path)
        return total, blocks, temps

    def _evict(self, led: _Ledger, need: int) -> None:
        """Make room for ``need`` more bytes: oldest blocks first, down to 90% of the limit."""
        total, blocks, temps = self._scan()
        led.set(total)  # the true count, whatever a killed process left in the ledger
        for tmp in temps:
            self._drop_orphan(led, tmp)
        target = max(0, int(self.max_bytes * _LOW_WATER) - need)
        blocks.sort()
        for _, _, path in blocks:
            if led.total <= target:
                break
            self._remove(led, path)

    def _drop_orphan(self, led: _Ledger, tmp: str) -> int:
        """Delete a ``.tmp`` whose writer is gone (nobody holds the block's lock)."""
        lock = tmp[: -len(".tmp")] + ".lock"
        fd = try_lock(lock)
        if fd is None:
            return 0  # being written
        try:
            return self._remove(led, tmp)
        finally:
            unlock(lock, fd)

    # -- for ``aisio cache`` --

    def summaries(self) -> list[EntrySummary]:
        """One summary per cached object version, by URL."""
        groups: dict[str, list[tuple[str, os.stat_result]]] = {}
        for sub in _entries(self.blocks):
            for e in _entries(sub.path):
                if e.name.endswith(".blk"):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    groups.setdefault(sub.name + "/" + e.name.rsplit("-", 1)[0], []).append((e.path, st))
        out = []
        for files in groups.values():
            header = None
            for path, _ in files:
                with contextlib.suppress(OSError):
                    fd = os.open(path, _O_READ)
                    try:
                        header = _read_header(fd)
                    finally:
                        os.close(fd)
                if header is not None:
                    break
            if header is None:
                continue
            out.append(EntrySummary(header.url, header.etag, header.object_size, len(files),
                                    sum(st.st_size for _, st in files),
                                    max(st.st_mtime for _, st in files)))
        return sorted(out, key=lambda s: (s.url, s.etag))

    def usage(self) -> tuple[int, int]:
        """(bytes, block files) on disk now."""
        total, blocks, _ = self._scan()
        return total, len(blocks)

    def clear(self) -> int:
        """Delete every block and record (blocks being written stay); the bytes freed."""
        freed = 0
        with self._ledger() as led:
            total, blocks, temps = self._scan()
            led.set(total)
            for _, _, path in blocks:
                freed += self._remove(led, path)
            for tmp in temps:
                freed += self._drop_orphan(led, tmp)
            for sub in _entries(self.blocks):
                for e in _entries(sub.path):
                    if e.name.endswith(".seen") or e.name.endswith(".new"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e.path)
                    elif e.name.endswith(".lock"):  # left by killed processes
                        fd = try_lock(e.path)
                        if fd is not None:
                            unlock(e.path, fd)
        return freed


def _entries(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
