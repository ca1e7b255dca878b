"""Backends, one per URL scheme, loaded lazily so unused SDKs are never imported."""

from __future__ import annotations

from .._config import ClientConfig
from ._base import Backend, Body, Upload

__all__ = ["Backend", "Body", "Upload", "create_backend"]


def create_backend(scheme: str, config: ClientConfig) -> Backend:
    """A new backend for ``scheme`` (``s3``, ``ais`` or ``file``), behind the cache if one is set."""
    backend = _create_backend(scheme, config)
    if config.cache is None:
        return backend
    from .._cache._backend import CachingBackend

    return CachingBackend(backend, config.cache, patience=config.read_timeout)


def _create_backend(scheme: str, config: ClientConfig) -> Backend:
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
