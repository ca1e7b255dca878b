"""Checkpoints on object storage: torch.distributed.checkpoint through aisio, and torch.save/load.

Runs with no arguments: `python examples/dcp_checkpoint.py` (starts moto's S3 server on
loopback, and also writes to a temporary folder to show that torch's own reader reads it).
"""

from __future__ import annotations

import tempfile
import time
import warnings

import torch
import torch.distributed.checkpoint as dcp

import aisio
from aisio.testing import local_s3
from aisio.torch import Checkpoint
from aisio.torch.dcp import StorageReader, StorageWriter

# dcp.save/load without torch.distributed set up say they assume a single process: they do
warnings.filterwarnings("ignore", "torch.distributed is disabled")


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    trained = make_model(seed=0)
    state = {"model": trained.state_dict(), "step": 100, "notes": {"lr": 3e-4}}

    with local_s3() as s3:
        s3.create_bucket("ckpt")
        config = s3.config()
        url = "s3://ckpt/run-1/step-100"

        start = time.perf_counter()
        dcp.save(state, storage_writer=StorageWriter(url, config, thread_count=2))
        with aisio.Client(config) as client:
            names = sorted(info.url.rsplit("/", 1)[-1] for info in client.list(url + "/"))
        print(f"dcp.save to {url}: {names} in {time.perf_counter() - start:.2f} s")

        fresh = make_model(seed=1)
        target = {"model": fresh.state_dict(), "step": 0, "notes": {}}
        reader = StorageReader(url, config)  # dcp_optimized: coalesced GETs into the tensors
        dcp.load(target, storage_reader=reader)
        stats = reader.statistics()
        print(f"dcp.load: model restored ({same(target['model'], trained.state_dict())}), "
              f"step {target['step']}, {stats.in_place} tensors landed in place, "
              f"{stats.requests} GETs for {stats.files} files")

        ckpt = Checkpoint(config)
        torch.save(trained.state_dict(), ckpt.writer("s3://ckpt/run-1/model.pt"))
        loaded = torch.load(ckpt.reader("s3://ckpt/run-1/model.pt"), weights_only=True)
        print(f"Checkpoint: torch.save/torch.load through s3://ckpt/run-1/model.pt "
              f"({same(loaded, trained.state_dict())})")

    with tempfile.TemporaryDirectory() as folder:
        dcp.save(state, storage_writer=StorageWriter(folder))
        target = {"model": make_model(seed=2).state_dict(), "step": 0, "notes": {}}
        dcp.load(target, storage_reader=dcp.FileSystemReader(folder))
        print(f"folder: saved by aisio, loaded by torch's FileSystemReader "
              f"({same(target['model'], trained.state_dict())})")


if __name__ == "__main__":
    main()
