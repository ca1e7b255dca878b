"""Backends, one per URL scheme, loaded lazily so unused SDKs are never imported."""

from __future__ import annotations

from .._config import ClientConfig
from ._base import Backend, Body, Upload

__all__ = ["Backend", "Body", "Upload", "create_backend"]


def create_backend(scheme: str, config: ClientConfig) -> Backend:
    """A new backend for ``scheme`` (``s3``, ``ais`` or ``file``)."""
    if scheme == "file":
        from .file import FileBackend

        return FileBackend()
    if scheme == "s3":
        from .s3 import S3Backend

        return S3Backend(config)
    if scheme == "ais":
        from .ais import AISBackend

        return AISBackend(config)
    raise ValueError(f"no backend for scheme {scheme!r}")
