"""One listing per dataset, shared by the DataLoader workers of a process.

A dataset lists its sources once and keeps the result (a state is a position in an
order made from it, so the listing must not move under it). The process that built the
dataset lists in memory, when something there first needs it (``len()``, or iterating
with ``num_workers=0``); its workers then receive the listing with the dataset. When
only the workers need it, the first worker to get there lists and writes the result to
a local file, in the manifest format, under a lock; the others wait and read that file.
So a rank lists once, whatever its number of workers. The file belongs to the dataset
(named by a random token made with it) and is removed with it, or when the process that
built it exits.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import secrets
import tempfile
import weakref
from collections.abc import Callable

from ._manifest import Manifest, decode, encode_line

__all__ = ["Listings"]


def _folder() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"aisio-{uid}-listings")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _remove(token: str, pid: int) -> None:
    if os.getpid() != pid:  # a forked worker's copy of the dataset: not its files
        return
    with contextlib.suppress(OSError):
        folder = _folder()
        for name in os.listdir(folder):
            if name.startswith(token):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


class Listings:
    """The listings a dataset made (per sources), in memory and shared with its workers."""

    def __init__(self, owner: object) -> None:
        self.token = secrets.token_hex(12)
        self.pid = os.getpid()
        self.made: dict[str, Manifest] = {}
        weakref.finalize(owner, _remove, self.token, self.pid)

    def get(self, what: str, make: Callable[[], Manifest]) -> Manifest:
        """The listing named ``what`` (its sources), made by ``make`` once per dataset."""
        name = hashlib.blake2b(what.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
        got = self.made.get(name)
        if got is None:
            got = self.made[name] = self._shared(name, make) if os.getpid() != self.pid else make()
        return got

    def _shared(self, name: str, make: Callable[[], Manifest]) -> Manifest:
        try:
            import fcntl
        except ImportError:  # not POSIX: each worker lists
            return make()
        path = os.path.join(_folder(), f"{self.token}-{name}.jsonl.gz")
        fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                return decode(f.read(), path)
            listing = make()
            data = b"".join(encode_line(info, None if listing.samples is None else listing.samples[k],
                                        None if listing.members is None else listing.members[k])
                            for k, info in enumerate(listing.infos))
            part = f"{path}.{os.getpid()}.part"
            with open(part, "wb") as f:
                f.write(gzip.compress(data, 1))
            os.replace(part, path)
            return listing
        finally:
            os.close(fd)
