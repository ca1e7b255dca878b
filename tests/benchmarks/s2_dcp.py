"""Scenario 2: DCP restore of a checkpoint (1 GiB, 128 tensors in 8 files).

The checkpoint is written once with torch's FileSystemWriter into the folder nginx
serves, so S3 readers (pointed at nginx, path-style) and torch's FileSystemReader (local
disk, page cache warm as nginx's is) read the very same files. Each run allocates the
state dict (pages touched) before the timed section; the section is ``dcp.load``.
Memory: the section's peak RSS above the RSS with the state dict allocated, as a share
of the checkpoint's size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._common import BUCKET, REGION, MiB, aisio_config, set_credentials
from ._harness import Section

Params = dict[str, Any]
TENSORS = 128
FILES = 8


def write_checkpoint(folder: str, size: int) -> dict[str, Any]:
    """Save ``TENSORS`` float32 tensors totalling ``size`` bytes in ``FILES`` files (once)."""
    import torch
    import torch.distributed.checkpoint as dcp

    path = Path(folder)
    stamp = path / "bench-checksums.json"
    if stamp.exists():
        info = dict(json.loads(stamp.read_text()))
        if len(info["files"]) == FILES:
            return info
        for old in path.glob("*.distcp"):  # an older layout (one file per tensor)
            old.unlink()
        (path / ".metadata").unlink(missing_ok=True)
    gen = torch.Generator().manual_seed(0)
    numel = size // TENSORS // 4
    sd = {f"layer{i:03d}.weight": torch.rand(numel, generator=gen) for i in range(TENSORS)}
    # one file per writer thread: FILES files, as the checkpoint has
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(path), single_file_per_rank=True,
                                                      thread_count=FILES))
    files = sorted(p.name for p in path.glob("*.distcp"))
    if len(files) != FILES:
        raise RuntimeError(f"expected {FILES} checkpoint files, got {len(files)}")
    info = {"numel": numel, "files": files,
            "sums": {k: float(v.double().sum()) for k, v in sd.items()}}
    stamp.write_text(json.dumps(info))
    return info


def _state_dict(p: Params) -> dict[str, Any]:
    import torch

    return {f"layer{i:03d}.weight": torch.ones(p["numel"]) for i in range(TENSORS)}


def _load(p: Params, section: Section, reader: Any) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    sd = _state_dict(p)
    with section:
        dcp.load(sd, storage_reader=reader)
    for k, v in sd.items():
        if abs(float(v.double().sum()) - p["sums"][k]) > 1e-6 * max(1.0, abs(p["sums"][k])):
            raise RuntimeError(f"{k} does not hold the saved values")
    nbytes = TENSORS * p["numel"] * 4
    above = max(0.0, section.peak_mib - section.base_mib)
    return {"bytes": nbytes, "mem_above_mib": above, "mem_above_share": above * MiB / nbytes}


def aisio_default(p: Params, section: Section) -> dict[str, Any]:
    from aisio.torch.dcp import StorageReader

    reader = StorageReader(f"s3://{BUCKET}/{p['prefix']}", config=aisio_config(p["endpoint"]))
    return _load(p, section, reader)


def aisio_sequential(p: Params, section: Section) -> dict[str, Any]:
    import aisio
    from aisio.torch.dcp import StorageReader

    reader = StorageReader(f"s3://{BUCKET}/{p['prefix']}", config=aisio_config(p["endpoint"]),
                           reader_constructor=aisio.ReaderConstructor.sequential())
    return _load(p, section, reader)


def _s3torch(p: Params, section: Section, kind: str) -> dict[str, Any]:
    set_credentials()
    from s3torchconnector import S3ClientConfig, S3ReaderConstructor
    from s3torchconnector._s3client import S3Client
    from s3torchconnector.dcp import S3StorageReader

    config = S3ClientConfig(force_path_style=True)
    reader = S3StorageReader(REGION, f"s3://{BUCKET}/{p['prefix']}", s3client_config=config,
                             reader_constructor=getattr(S3ReaderConstructor, kind)())
    # S3StorageReader takes no endpoint: give its file system a client pointed at ours
    reader.fs._client = S3Client(REGION, endpoint=p["endpoint"], s3client_config=config)
    return _load(p, section, reader)


def s3torch_dcp_optimized(p: Params, section: Section) -> dict[str, Any]:
    return _s3torch(p, section, "dcp_optimized")


def s3torch_sequential(p: Params, section: Section) -> dict[str, Any]:
    return _s3torch(p, section, "sequential")


def torch_filesystem(p: Params, section: Section) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    return _load(p, section, dcp.FileSystemReader(p["local_path"]))


PEERS: dict[str, tuple[str, str]] = {
    "aisio StorageReader (default)": ("aisio_default", "aisio"),
    "aisio StorageReader (sequential)": ("aisio_sequential", "aisio"),
    "s3torchconnector dcp_optimized": ("s3torch_dcp_optimized", "peer"),
    "s3torchconnector sequential": ("s3torch_sequential", "peer"),
    "torch FileSystemReader (local disk)": ("torch_filesystem", "reference"),
}

QUICK = ["aisio StorageReader (default)", "s3torchconnector dcp_optimized",
         "torch FileSystemReader (local disk)"]


def prepare(p: Params, section: Section) -> dict[str, Any]:
    """Set-up, run once in a subprocess of its own: write the checkpoint if it is missing."""
    with section:
        return write_checkpoint(p["folder"], p["size"])
