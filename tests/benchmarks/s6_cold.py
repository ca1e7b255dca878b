"""Scenario 6: cold start, as a job or a script meets it.

Two figures per client, both against nginx on loopback (the fast server: what is measured
is the client's own start-up, not a network):

- **first byte**: a fresh ``python -c`` that imports the client, makes it (credentials
  from the environment chain, no keys in the code) and reads a 64 KiB range of one
  object. Timed from just before the process is spawned to the moment the parent
  reads the child's "got the bytes" line: interpreter start, imports, client, the first
  connection and request. The child also reports its own split (imports, client, GET).
- **first batch**: in the measured process (torch and the client library already
  imported, as in a training script), the dataset is made and ``DataLoader(num_workers=4,
  batch_size=32)`` iterated to its first batch: worker start-up (fork), each worker's
  client, the first 32 objects of 100 KB. The iterator is shut down inside the timed
  section so the workers' CPU counts.

The section holds both; its wall clock is their sum.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from ._common import BUCKET, REGION
from ._harness import ROOT, Section
from .s3_small import count_bytes, read_all

Params = dict[str, Any]
RANGE = 64 * 1024
WORKERS = 4
BATCH = 32

# The child's code per client: E (endpoint), B (bucket), K (key), R (region), N (range
# length) are set first; the code prints "T <import_s> <client_s> <get_s> <bytes>".
_PRELUDE = """import sys, time
E, B, K, R, N = *sys.argv[1:5], int(sys.argv[5])
t0 = time.perf_counter()
"""
_CHILD = {
    "aisio": """
import aisio
t1 = time.perf_counter()
client = aisio.Client(aisio.ClientConfig(s3=aisio.S3Options(region=R, endpoint_url=E, force_path_style=True)))
t2 = time.perf_counter()
data = client.get(f"s3://{B}/{K}", 0, N)
""",
    "boto3": """
import boto3
from botocore.config import Config
t1 = time.perf_counter()
s3 = boto3.client("s3", endpoint_url=E, region_name=R, config=Config(s3={"addressing_style": "path"}))
t2 = time.perf_counter()
data = s3.get_object(Bucket=B, Key=K, Range=f"bytes=0-{N - 1}")["Body"].read()
""",
    "obstore": """
import obstore
from obstore.store import S3Store
t1 = time.perf_counter()
store = S3Store(B, endpoint=E, region=R, virtual_hosted_style_request=False,
                client_options={"allow_http": True})
t2 = time.perf_counter()
data = obstore.get_range(store, K, start=0, end=N)
""",
    "s3torchconnector": """
from s3torchconnector import S3ClientConfig, S3ReaderConstructor
from s3torchconnector._s3client import S3Client
t1 = time.perf_counter()
client = S3Client(R, endpoint=E, s3client_config=S3ClientConfig(force_path_style=True))
t2 = time.perf_counter()
data = client.get_object(B, K, reader_constructor=S3ReaderConstructor.range_based()).read(N)
""",
}
_EPILOGUE = "t3 = time.perf_counter()\nprint('T', t1 - t0, t2 - t1, t3 - t2, len(data), flush=True)\n"


def first_byte(kind: str, p: Params) -> dict[str, Any]:
    """Spawn a fresh interpreter that reads one range; seconds from spawn to its bytes."""
    code = _PRELUDE + _CHILD[kind] + _EPILOGUE
    argv = [sys.executable, "-c", code, p["endpoint"], BUCKET, p["key"], REGION, str(RANGE)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    _, err = proc.communicate(timeout=120)
    if not line.startswith("T ") or proc.returncode:
        raise RuntimeError(f"{kind} child failed (exit {proc.returncode}): {err.strip()[-800:]}")
    _, imp, client, get, got = line.split()
    if int(got) != RANGE:
        raise RuntimeError(f"{kind} child read {got} bytes, expected {RANGE}")
    return {"seconds": elapsed, "import_s": float(imp), "client_s": float(client),
            "get_s": float(get)}


# --- the datasets of the first-batch measure ------------------------------------------------


def _urls(p: Params) -> list[str]:
    return [f"s3://{BUCKET}/{p['prefix']}{i:06d}.bin" for i in range(p["count"])]


class Boto3Dataset:
    """A map-style dataset doing ``get_object(...)["Body"].read()``, one client per worker."""

    def __init__(self, endpoint: str, keys: list[str]) -> None:
        self.endpoint, self.keys = endpoint, keys
        self._s3: Any = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> bytes:
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            self._s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                    config=Config(s3={"addressing_style": "path"}))
        return bytes(self._s3.get_object(Bucket=BUCKET, Key=self.keys[i])["Body"].read())


class ObstoreDataset:
    """A map-style dataset doing ``obstore.get(store, key).bytes()``, one store per worker."""

    def __init__(self, endpoint: str, keys: list[str]) -> None:
        self.endpoint, self.keys = endpoint, keys
        self._store: Any = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> bytes:
        import obstore

        if self._store is None:
            from obstore.store import S3Store

            self._store = S3Store(BUCKET, endpoint=self.endpoint, region=REGION,
                                  virtual_hosted_style_request=False,
                                  client_options={"allow_http": True})
        return bytes(obstore.get(self._store, self.keys[i]).bytes())


def _dataset(kind: str, p: Params) -> Any:
    endpoint = p["endpoint"]
    if kind == "aisio":
        import aisio
        from aisio.torch import MapDataset

        config = aisio.ClientConfig(s3=aisio.S3Options(region=REGION, endpoint_url=endpoint,
                                                       force_path_style=True))
        return MapDataset.from_urls(_urls(p), config=config)
    if kind == "s3torchconnector":
        from s3torchconnector import S3ClientConfig, S3MapDataset

        return S3MapDataset.from_objects(_urls(p), region=REGION, endpoint=endpoint,
                                         transform=read_all,
                                         s3client_config=S3ClientConfig(force_path_style=True))
    keys = [u.split("/", 3)[3] for u in _urls(p)]
    return (Boto3Dataset if kind == "boto3" else ObstoreDataset)(endpoint, keys)


_IMPORTS = {"aisio": "aisio.torch", "boto3": "boto3", "obstore": "obstore",
            "s3torchconnector": "s3torchconnector"}


def first_batch(kind: str, p: Params) -> dict[str, Any]:
    import torch.utils.data

    t0 = time.perf_counter()
    dl = torch.utils.data.DataLoader(_dataset(kind, p), batch_size=BATCH, num_workers=WORKERS,
                                     collate_fn=count_bytes)
    it = iter(dl)
    items, size = next(it)
    elapsed = time.perf_counter() - t0
    del it  # the workers stop (and are waited for) here, inside the section
    if items != BATCH or size != BATCH * p["size"]:
        raise RuntimeError(f"first batch: {items} items / {size} bytes")
    return {"first_batch_s": elapsed}


def _cold(kind: str, p: Params, section: Section) -> dict[str, Any]:
    import importlib

    import torch.utils.data  # noqa: F401  (a training script has torch loaded)

    importlib.import_module(_IMPORTS[kind])
    with section:
        out = first_byte(kind, p)
        out.update(first_batch(kind, p))
    return out


def aisio_cold(p: Params, section: Section) -> dict[str, Any]:
    return _cold("aisio", p, section)


def boto3_cold(p: Params, section: Section) -> dict[str, Any]:
    return _cold("boto3", p, section)


def obstore_cold(p: Params, section: Section) -> dict[str, Any]:
    return _cold("obstore", p, section)


def s3torch_cold(p: Params, section: Section) -> dict[str, Any]:
    return _cold("s3torchconnector", p, section)


def python_baseline(p: Params, section: Section) -> dict[str, Any]:
    """``python -c pass``: the interpreter's own start, the floor of the first-byte figure."""
    with section:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        elapsed = time.perf_counter() - t0
    return {"seconds": elapsed}


PEERS: dict[str, tuple[str, str]] = {
    "aisio": ("aisio_cold", "aisio"),
    "boto3": ("boto3_cold", "peer"),
    "obstore": ("obstore_cold", "peer"),
    "s3torchconnector": ("s3torch_cold", "peer"),
    "python -c pass": ("python_baseline", "reference"),
}

QUICK = list(PEERS)


if __name__ == "__main__":  # one child by hand: python -m tests.benchmarks.s6_cold KIND URL KEY
    print(json.dumps(first_byte(sys.argv[1], {"endpoint": sys.argv[2], "key": sys.argv[3]})))
