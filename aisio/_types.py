"""Small value types shared by the client, the backends and the readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["ObjectInfo"]


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD or a listing says about one object."""

    url: str
    size: int
    etag: str | None = None
    last_modified: datetime | None = None
    version: str | None = None
