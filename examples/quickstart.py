"""Quickstart on the embedded default (local files, no server): shards, training, checkpoints.

1. writes a small dataset of webdataset-style tar shards,
2. streams it through a DataLoader with 2 workers while a tiny model trains a few steps,
3. saves a DCP checkpoint of the model and restores it into a fresh one,
4. and shows the async and sync client on the same files.

Run: `python examples/quickstart.py [folder]` (a temp folder by default).
"""

from __future__ import annotations

import asyncio
import io
import sys
import tarfile
import tempfile
import time
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch.utils.data import DataLoader

import aisio
from aisio.torch import ShardReader
from aisio.torch.dcp import StorageReader, StorageWriter

SHARDS, SAMPLES, FEATURES = 8, 256, 32


def write_shards(client: aisio.Client, root: str) -> int:
    """Samples of (features, label): the label is 1 when the features sum above zero."""
    gen = torch.Generator().manual_seed(0)
    total = 0
    for s in range(SHARDS):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(SAMPLES):
                x = torch.randn(FEATURES, generator=gen)
                for ext, data in (("x.bin", x.numpy().tobytes()), ("y.txt", str(int(x.sum() > 0)).encode())):
                    info = tarfile.TarInfo(f"s{s:02d}-{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        client.put(f"{root}/shards/train-{s:03d}.tar", buf.getvalue())
        total += len(buf.getvalue())
    return total


def decode(batch: dict[str, list[bytes]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([torch.frombuffer(bytearray(b), dtype=torch.float32) for b in batch["x.bin"]])
    y = torch.tensor([float(b) for b in batch["y.txt"]])
    return x, y


def train(root: str) -> torch.nn.Module:
    model = torch.nn.Linear(FEATURES, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(ShardReader(f"{root}/shards/", show_progress=True), batch_size=64, num_workers=2)
    t0, seen, losses = time.perf_counter(), 0, []
    for _keys, batch in loader:
        x, y = decode(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        losses.append(loss.item())
    took = time.perf_counter() - t0
    print(f"trained on {seen} samples from {SHARDS} shards with 2 workers in {took:.2f} s "
          f"({seen / took:.0f} samples/s); loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return model


def checkpoint(model: torch.nn.Module, root: str) -> None:
    t0 = time.perf_counter()
    dcp.save(model.state_dict(), storage_writer=StorageWriter(f"{root}/ckpt/"))
    saved = time.perf_counter() - t0
    fresh = torch.nn.Linear(FEATURES, 1)
    state = fresh.state_dict()
    t0 = time.perf_counter()
    dcp.load(state, storage_reader=StorageReader(f"{root}/ckpt/"))
    fresh.load_state_dict(state)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values(), strict=True))
    print(f"DCP checkpoint saved in {saved * 1000:.0f} ms, restored in "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms; weights identical: {same}")


async def async_tour(root: str) -> None:
    async with aisio.AsyncClient() as client:
        infos = [info async for info in client.list(f"{root}/shards/")]
        t0 = time.perf_counter()
        blobs = await asyncio.gather(*(client.get(info.url) for info in infos))
        print(f"async: listed {len(infos)} shards and read {sum(map(len, blobs))} bytes "
              f"concurrently in {(time.perf_counter() - t0) * 1000:.1f} ms")
        views = await client.get_ranges(infos[0].url, [(0, 512), (1024, 1536)])
        print(f"async: two tar headers of {infos[0].url.rsplit('/', 1)[-1]} in one GET: "
              f"{[len(v) for v in views]} bytes")


def main() -> None:
    # one process, no process group: DCP says so on every call
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="aisio-quickstart-")
    with aisio.Client() as client:
        size = write_shards(client, root)
    print(f"wrote {SHARDS} webdataset shards ({size / 2**20:.1f} MiB) under {root}/shards/")
    model = train(root)
    checkpoint(model, root)
    asyncio.run(async_tour(root))
    print(f"done: objects are under {root}")


if __name__ == "__main__":
    main()
