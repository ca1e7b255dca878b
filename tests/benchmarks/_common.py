"""What the scenario modules share: endpoints and clients of every peer, data set-up, buffers.

Every S3 peer talks to the same endpoint (nginx serving a folder, directly or through the
slow link) with path-style URLs and dummy credentials: nginx ignores signatures and
query strings, so ``GET /<bucket>/<key>`` with or without a presigned query hits the file.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

MiB = 2**20
GiB = 2**30
REGION = "us-east-1"
KEY_ID = "bench-key"
SECRET = "bench-secret"
BUCKET = "bench"

CREDENTIALS_ENV = {
    "AWS_ACCESS_KEY_ID": KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


# --- data ------------------------------------------------------------------------------------


def write_file(path: Path, size: int, seed: int = 0) -> None:
    """A file of ``size`` bytes of 1 MiB random blocks (kept if it exists with that size)."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = __import__("random").Random(seed)
    block = rnd.randbytes(MiB)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(block[:n])
            left -= n
    os.replace(tmp, path)


def write_small_objects(folder: Path, count: int, size: int) -> list[str]:
    """``count`` files of ``size`` bytes named 000000.bin...; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.bin" for i in range(count)]
    payload = os.urandom(size)
    for i, name in enumerate(names):
        path = folder / name
        if path.exists() and path.stat().st_size == size:
            continue
        path.write_bytes(i.to_bytes(8, "little") + payload[8:])
    return names


def write_shards(folder: Path, count: int, shard_size: int, sample_size: int) -> list[str]:
    """``count`` webdataset tar shards of about ``shard_size`` bytes; returns their names.

    Each sample is a ``.jpg`` of ``sample_size`` random bytes and a ``.cls`` label.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"shard-{i:06d}.tar" for i in range(count)]
    per_shard = max(1, shard_size // (sample_size + 2048))
    payload = os.urandom(sample_size)
    for s, name in enumerate(names):
        path = folder / name
        # outside the bucket's folder: an AIS listing would take it for an object
        stamp = folder.parent.parent / ".stamps" / f"{folder.name}-{name}-{shard_size}-{sample_size}"
        if path.exists() and stamp.exists():
            continue
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(per_shard):
                key = f"s{s:06d}_{i:06d}"
                for ext, data in ((".jpg", payload), (".cls", str(i % 1000).encode())):
                    info = tarfile.TarInfo(key + ext)
                    info.size = len(data)
                    info.mtime = 0
                    tar.addfile(info, __import__("io").BytesIO(data))
        os.replace(tmp, path)
        stamp.parent.mkdir(exist_ok=True)
        stamp.touch()
    return names


def touched_buffer(size: int) -> memoryview:
    """A bytearray whose pages are already mapped: no reader pays page faults for it."""
    buf = bytearray(size)
    view = memoryview(buf)
    ones = b"\1" * min(size, 64 * MiB)
    for pos in range(0, size, len(ones)):
        view[pos : pos + len(ones)] = ones[: size - pos]
    return view


def set_credentials() -> None:
    os.environ.update(CREDENTIALS_ENV)


# --- clients -----------------------------------------------------------------------------------


def aisio_config(endpoint: str, **changes: Any) -> Any:
    import aisio

    s3 = aisio.S3Options(region=REGION, endpoint_url=endpoint, force_path_style=True,
                         access_key_id=KEY_ID, secret_access_key=SECRET)
    return aisio.ClientConfig(s3=s3, **changes)


def boto3_client(endpoint: str, max_pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, max_pool_connections=max_pool,
                    retries={"max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET, config=config)


def aiobotocore_client(endpoint: str, max_pool: int = 10) -> Any:
    """An async context manager giving an aiobotocore S3 client."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=max_pool,
                       retries={"max_attempts": 1, "mode": "standard"})
    return get_session().create_client("s3", endpoint_url=endpoint, region_name=REGION,
                                       aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                                       config=config)


def obstore_store(endpoint: str, bucket: str = BUCKET) -> Any:
    from obstore.store import S3Store

    return S3Store(bucket, endpoint=endpoint, region=REGION, access_key_id=KEY_ID,
                   secret_access_key=SECRET, virtual_hosted_style_request=False,
                   client_options={"allow_http": True, "timeout": "600s"})


def s3fs_filesystem(endpoint: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, use_listings_cache=False,
                             client_kwargs={"endpoint_url": endpoint, "region_name": REGION},
                             config_kwargs={"s3": {"addressing_style": "path"}})


def s3torch_client(endpoint: str, **config: Any) -> Any:
    set_credentials()
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client

    return S3Client(REGION, endpoint=endpoint,
                    s3client_config=S3ClientConfig(force_path_style=True, **config))


class BufferWriter:
    """A seekable, writable file object over a preallocated buffer (for download_fileobj)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        self._view[self._pos : self._pos + n] = data
        self._pos += n
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else len(self._view) + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True
