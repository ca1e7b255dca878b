"""Scenario 7: saving a checkpoint (1 GiB, 128 float32 tensors; 256 MiB in quick mode).

``dcp.save`` of the same state dict by aisio's ``StorageWriter`` and s3torchconnector's
``S3StorageWriter`` (both to the S3 stub on loopback, ``_s3stub``: it answers PUT,
multipart, HEAD, copy and DELETE as S3 does and discards the bytes), and by torch's
``FileSystemWriter`` to local disk (``sync_files=False``: the bytes go to the page cache,
as the stub's go nowhere; the fsync variant is a peer of its own in full mode). Every
writer gets ``thread_count=8``: eight files, as scenario 2's checkpoint has.

``dcp.async_save`` rows: the training thread calls ``async_save`` and waits only for the
staging (a CPU copy of the state dict); the upload runs in a thread behind it. ``stall``
is how long ``async_save`` held the caller; the row's speed counts until the upload is
done. For plain ``dcp.save`` rows the stall is the whole save.

Credentials come from the environment (AWS_ACCESS_KEY_ID...), never from the configs.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ._common import BUCKET, REGION, set_credentials
from ._harness import Section
from ._s3stub import control

Params = dict[str, Any]
TENSORS = 128
THREADS = 8


def _state_dict(p: Params) -> dict[str, Any]:
    import torch

    numel = p["size"] // TENSORS // 4
    return {f"layer{i:03d}.weight": torch.full((numel,), float(i)) for i in range(TENSORS)}


def _nbytes(sd: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def _save(p: Params, section: Section, writer: Any, *, use_async: bool,
          local: Path | None = None) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    sd = _state_dict(p)
    nbytes = _nbytes(sd)
    before = control(p["endpoint"], "/_stats") if local is None else {}
    with section:
        t0 = time.perf_counter()
        if use_async:
            future = dcp.async_save(sd, storage_writer=writer)
            stall = time.perf_counter() - t0
            future.result()
        else:
            dcp.save(sd, storage_writer=writer)
            stall = time.perf_counter() - t0
    out: dict[str, Any] = {"bytes": nbytes, "stall_s": stall}
    if local is None:
        after = control(p["endpoint"], "/_stats")
        got = after["received"] - before["received"]
        out["sink_cpu"] = after["cpu"] - before["cpu"]
    else:
        got = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
        shutil.rmtree(local, ignore_errors=True)
    if got < nbytes:
        raise RuntimeError(f"the writer delivered {got} bytes for a {nbytes}-byte state dict")
    out["delivered"] = got
    return out


def _prefix() -> str:
    return f"save-{uuid.uuid4().hex[:12]}"


# --- aisio ---------------------------------------------------------------------------------


def _aisio_writer(p: Params) -> Any:
    import aisio
    from aisio.torch.dcp import StorageWriter

    # no keys in the config: aisio finds them in the environment
    config = aisio.ClientConfig(s3=aisio.S3Options(region=REGION, endpoint_url=p["endpoint"],
                                                   force_path_style=True))
    return StorageWriter(f"s3://{BUCKET}/{_prefix()}", config=config, thread_count=THREADS)


def aisio_save(p: Params, section: Section) -> dict[str, Any]:
    return _save(p, section, _aisio_writer(p), use_async=False)


def aisio_async_save(p: Params, section: Section) -> dict[str, Any]:
    return _save(p, section, _aisio_writer(p), use_async=True)


# --- peers ---------------------------------------------------------------------------------


def _s3torch_writer(p: Params) -> Any:
    set_credentials()
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client
    from s3torchconnector.dcp import S3StorageWriter

    config = S3ClientConfig(force_path_style=True)
    writer = S3StorageWriter(REGION, f"s3://{BUCKET}/{_prefix()}", s3client_config=config,
                             thread_count=THREADS)
    # S3StorageWriter takes no endpoint: give its file system a client pointed at the stub
    writer.fs._client = S3Client(REGION, endpoint=p["endpoint"], s3client_config=config)
    return writer


def s3torch_save(p: Params, section: Section) -> dict[str, Any]:
    return _save(p, section, _s3torch_writer(p), use_async=False)


def s3torch_async_save(p: Params, section: Section) -> dict[str, Any]:
    return _save(p, section, _s3torch_writer(p), use_async=True)


def _local(p: Params, sync: bool) -> tuple[Any, Path]:
    import torch.distributed.checkpoint as dcp

    folder = Path(p["local_dir"]) / _prefix()
    return dcp.FileSystemWriter(str(folder), thread_count=THREADS, sync_files=sync), folder


def torch_filesystem(p: Params, section: Section) -> dict[str, Any]:
    writer, folder = _local(p, sync=False)
    return _save(p, section, writer, use_async=False, local=folder)


def torch_filesystem_fsync(p: Params, section: Section) -> dict[str, Any]:
    writer, folder = _local(p, sync=True)
    return _save(p, section, writer, use_async=False, local=folder)


def torch_filesystem_async(p: Params, section: Section) -> dict[str, Any]:
    writer, folder = _local(p, sync=False)
    return _save(p, section, writer, use_async=True, local=folder)


PEERS: dict[str, tuple[str, str]] = {
    "aisio StorageWriter": ("aisio_save", "aisio"),
    "aisio StorageWriter (async_save)": ("aisio_async_save", "aisio"),
    "s3torchconnector S3StorageWriter": ("s3torch_save", "peer"),
    "s3torchconnector S3StorageWriter (async_save)": ("s3torch_async_save", "peer"),
    "torch FileSystemWriter (local disk)": ("torch_filesystem", "reference"),
    "torch FileSystemWriter (local disk, async_save)": ("torch_filesystem_async", "reference"),
    "torch FileSystemWriter (local disk, fsync)": ("torch_filesystem_fsync", "reference"),
}

QUICK = ["aisio StorageWriter", "aisio StorageWriter (async_save)",
         "s3torchconnector S3StorageWriter", "torch FileSystemWriter (local disk)",
         "torch FileSystemWriter (local disk, async_save)"]
