"""Tar shards built in memory, for tests that need webdataset-style data."""

from __future__ import annotations

import io
import tarfile


def tar_bytes(members: list[tuple[str, bytes]], format: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar archive of (name, data) members in order: consecutive keys form one sample."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
