"""Scenario 2f: scenario 2 (DCP restore) as a fresh process meets it.

The checkpoint of scenario 2 (128 float32 tensors in 8 files, on nginx and on local disk),
but the timed section starts before any reader exists: it makes the reader (credentials
from the environment chain, no keys in any config), allocates the state dict with
``torch.empty`` (pages not touched, as a job that restores into new tensors) and runs
``dcp.load``. Imports are done before the section.
"""

from __future__ import annotations

from typing import Any

from ._common import BUCKET, REGION, MiB
from ._harness import Section
from .s2_dcp import TENSORS

Params = dict[str, Any]


def _empty_state_dict(p: Params) -> dict[str, Any]:
    import torch

    return {f"layer{i:03d}.weight": torch.empty(p["numel"]) for i in range(TENSORS)}


def _load(p: Params, section: Section, make_reader: Any) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    with section:
        reader = make_reader()
        sd = _empty_state_dict(p)
        dcp.load(sd, storage_reader=reader)
    for k, v in sd.items():
        if abs(float(v.double().sum()) - p["sums"][k]) > 1e-6 * max(1.0, abs(p["sums"][k])):
            raise RuntimeError(f"{k} does not hold the saved values")
    nbytes = TENSORS * p["numel"] * 4
    above = max(0.0, section.peak_mib - section.base_mib - nbytes / MiB)
    return {"bytes": nbytes, "mem_above_mib": above, "mem_above_share": above * MiB / nbytes}


def aisio_default(p: Params, section: Section) -> dict[str, Any]:
    import aisio
    from aisio.torch.dcp import StorageReader

    def make() -> Any:
        config = aisio.ClientConfig(s3=aisio.S3Options(region=REGION, endpoint_url=p["endpoint"],
                                                       force_path_style=True))
        return StorageReader(f"s3://{BUCKET}/{p['prefix']}", config=config)

    return _load(p, section, make)


def s3torch_dcp_optimized(p: Params, section: Section) -> dict[str, Any]:
    from s3torchconnector import S3ClientConfig, S3ReaderConstructor
    from s3torchconnector._s3client import S3Client
    from s3torchconnector.dcp import S3StorageReader

    def make() -> Any:
        config = S3ClientConfig(force_path_style=True)
        reader = S3StorageReader(REGION, f"s3://{BUCKET}/{p['prefix']}", s3client_config=config,
                                 reader_constructor=S3ReaderConstructor.dcp_optimized())
        # S3StorageReader takes no endpoint: give its file system a client pointed at nginx
        reader.fs._client = S3Client(REGION, endpoint=p["endpoint"], s3client_config=config)
        return reader

    return _load(p, section, make)


def torch_filesystem(p: Params, section: Section) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    return _load(p, section, lambda: dcp.FileSystemReader(p["local_path"]))


PEERS: dict[str, tuple[str, str]] = {
    "aisio StorageReader (default)": ("aisio_default", "aisio"),
    "s3torchconnector dcp_optimized": ("s3torch_dcp_optimized", "peer"),
    "torch FileSystemReader (local disk)": ("torch_filesystem", "reference"),
}

QUICK = list(PEERS)
