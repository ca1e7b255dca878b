"""CacheOptions: where the cache lives, how big it may grow, how it is validated."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CacheOptions"]

MiB = 2**20
GiB = 2**30
_SIZE = re.compile(r"\s*([0-9]+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclass(frozen=True)
class CacheOptions:
    """A local cache of object bytes, shared by every process that uses the same ``dir``.

    Objects are cached in blocks of ``block_size`` bytes (a small object is one block), keyed
    by URL and ETag, so a changed object is never served from the cache. A block is served
    only after its length and CRC-32 check out. The files in ``dir`` never total more than
    ``max_bytes``; the least recently used blocks are evicted first, and an object larger
    than ``max_bytes`` is read straight from the store, uncached.
    """

    dir: str
    """The cache folder (created if missing); ``~`` is expanded, relative paths made absolute."""
    max_bytes: int = 10 * GiB
    """Most bytes the cache's block files may take together."""
    block_size: int = 8 * MiB
    """Bytes per cached block (4 KiB to 1 GiB). Equal to ``part_size`` (the default for
    both), every part of a read lands straight from a block in the caller's buffer."""
    validate_after: float = 0.0
    """Seconds a HEAD's answer stays trusted for reads that do not know the object's ETag
    (``get(url)``; readers opened with an ObjectInfo, and DCP, know it and never HEAD).
    0: such a read always asks a HEAD first; ``math.inf``: once seen, never asked again."""

    def __post_init__(self) -> None:
        path = self.dir
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"CacheOptions.dir must be a folder path, got {path!r}")
        object.__setattr__(self, "dir", os.path.abspath(os.path.expanduser(os.fspath(path))))
        for name in ("max_bytes", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"CacheOptions.{name} must be an int, got {value!r}")
        if self.max_bytes < 1:
            raise ValueError(f"CacheOptions.max_bytes must be positive, got {self.max_bytes}")
        if not 4096 <= self.block_size <= GiB:
            raise ValueError(f"CacheOptions.block_size must be 4 KiB to 1 GiB, got {self.block_size}")
        after = self.validate_after
        if isinstance(after, bool) or not isinstance(after, (int, float)):
            raise TypeError(f"CacheOptions.validate_after must be a number, got {after!r}")
        if math.isnan(after) or after < 0:
            raise ValueError(f"CacheOptions.validate_after must be >= 0 seconds, got {after}")
        object.__setattr__(self, "validate_after", float(after))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CacheOptions | None:
        """AISIO_CACHE_DIR (None if unset: no cache), AISIO_CACHE_MAX_BYTES (``500GiB`` or
        bytes), AISIO_CACHE_BLOCK_SIZE and AISIO_CACHE_VALIDATE_AFTER (seconds)."""
        env = os.environ if env is None else env
        folder = env.get("AISIO_CACHE_DIR") or None
        given = [name for name in ("MAX_BYTES", "BLOCK_SIZE", "VALIDATE_AFTER")
                 if env.get(f"AISIO_CACHE_{name}")]
        if folder is None:
            if given:
                raise ValueError(f"AISIO_CACHE_{given[0]} is set but AISIO_CACHE_DIR is not: "
                                 "set AISIO_CACHE_DIR to the cache folder")
            return None
        values: dict[str, object] = {}
        for name, field in (("MAX_BYTES", "max_bytes"), ("BLOCK_SIZE", "block_size")):
            raw = env.get(f"AISIO_CACHE_{name}")
            if raw:
                values[field] = parse_bytes(raw, f"AISIO_CACHE_{name}")
        raw = env.get("AISIO_CACHE_VALIDATE_AFTER")
        if raw:
            try:
                values["validate_after"] = float(raw)
            except ValueError:
                raise ValueError(f"AISIO_CACHE_VALIDATE_AFTER must be seconds, got {raw!r}") from None
        return cls(folder, **values)  # type: ignore[arg-type]


def parse_bytes(text: str, what: str) -> int:
    """``500GiB``, ``500G``, ``8M`` (binary units) or plain bytes."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{what} must be bytes such as 536870912000 or 500GiB, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]
