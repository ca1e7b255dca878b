"""Real servers on loopback for tests, examples and benchmarks: S3 (moto, Ceph RGW) and AIS."""

from ._rgw import LocalRGW, local_rgw
from ._s3 import LocalS3, local_s3

__all__ = ["LocalRGW", "LocalS3", "local_rgw", "local_s3"]


def __getattr__(name: str) -> object:
    if name in ("local_ais", "LocalAIS"):
        from . import _ais

        return getattr(_ais, name)
    raise AttributeError(name)
