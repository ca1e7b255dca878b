"""Shard loading: webdataset-style tar shards streamed from a local AIS server by ShardReader,
batched by the default collate, and two aligned sources zipped by MultiShardStream.

Runs with no arguments: `python examples/shards.py` (starts an AIS-protocol server on loopback).
"""

from __future__ import annotations

import io
import tarfile
import time

import torch.utils.data as tud

import aisio
from aisio.testing import local_ais
from aisio.torch import MultiShardStream, ShardReader


def shard(members: list[tuple[str, bytes]]) -> bytes:
    """A tar shard: consecutive members with the same key are one sample."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    with local_ais() as ais:
        ais.create_bucket("data")
        config = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=ais.endpoint))
        with aisio.Client(config) as client:
            for s in range(8):
                members = []
                for i in range(50):
                    key = f"sample-{s:02d}-{i:03d}"
                    members += [(f"{key}.jpg", bytes(2000)), (f"{key}.cls", str(i % 10).encode())]
                    if i % 2 == 0:  # a caption on every other sample only
                        members.append((f"{key}.txt", f"caption {s}/{i}".encode()))
                client.put(f"ais://data/train/shard-{s:03d}.tar", shard(members))
                client.put(f"ais://data/labels/shard-{s:03d}.tar",
                           shard([(f"sample-{s:02d}-{i:03d}.cls", str(i % 10).encode())
                                  for i in range(50)]))
        print(f"wrote 8 image shards and 8 label shards to ais://data/ on {ais.endpoint}")

        reader = ShardReader("ais://data/train/", config=config, show_progress=False)
        loader = tud.DataLoader(reader, batch_size=32, num_workers=2)
        t0 = time.perf_counter()
        count = 0
        for keys, batch in loader:  # batch: {"jpg": [...], "cls": [...], "txt": [...]}
            count += len(keys)
            captions = sum(1 for text in batch["txt"] if text)
        print(f"ShardReader: {count} samples from 8 shards with 2 workers in "
              f"{time.perf_counter() - t0:.2f} s; batches have keys {sorted(batch)} "
              f"({captions} of the last {len(keys)} samples have a caption, the rest b'')")

        first = next(iter(ShardReader("ais://data/train/shard-000.tar", config=config)))
        print(f"first sample: key {first[0]!r}, extensions {sorted(first[1])}")

        pairs = MultiShardStream(["ais://data/train/", "ais://data/labels/"], config=config)
        head = next(iter(pairs))
        print(f"MultiShardStream: tuples of member bytes, one per source, e.g. "
              f"({len(head[0])} bytes, {head[1]!r})")


if __name__ == "__main__":
    main()
