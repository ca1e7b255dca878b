"""Map-style loading from a local S3 server: MapDataset, a size-packing batch sampler, and the
S3 connector's S3MapDataset under its own name.

Runs with no arguments: `python examples/map_dataset.py` (starts moto's S3 server on loopback).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch.utils.data as tud

import aisio
from aisio.testing import local_s3
from aisio.torch import DynamicBatchSampler, MapDataset
from aisio.torch.compat import S3MapDataset


def as_list(batch: list[Any]) -> list[Any]:
    """Keep a batch as a list of (url, bytes) items (the default collate would split them)."""
    return batch


def header(reader: Any) -> tuple[str, bytes]:
    """A transform: the key and the first 4 bytes of the object (seed-style reader API)."""
    return reader.key, reader.read(4)


def main() -> None:
    with local_s3() as s3:
        s3.create_bucket("images")
        config = s3.config()
        with aisio.Client(config) as client:
            for i in range(64):
                client.put(f"s3://images/train/img-{i:03d}.raw", os.urandom(4096 + 512 * (i % 8)))
        print(f"wrote 64 objects to s3://images/train/ on {s3.endpoint_url}")

        dataset = MapDataset.from_prefix("s3://images/train/", config=config)
        loader = tud.DataLoader(dataset, batch_size=16, shuffle=True, num_workers=2,
                                collate_fn=as_list)
        t0 = time.perf_counter()
        batches = list(loader)
        nbytes = sum(len(data) for batch in batches for _, data in batch)
        print(f"MapDataset: {len(dataset)} objects in {len(batches)} batches of 16 "
              f"({nbytes} bytes) with 2 workers in {time.perf_counter() - t0:.2f} s; "
              "each batch was one concurrent gather")

        sampler = DynamicBatchSampler(dataset, max_batch_size=32 * 1024)
        sizes = [len(batch) for batch in sampler]
        print(f"DynamicBatchSampler: batches of at most 32 KiB hold {sizes} objects "
              "(sizes from the listing, no HEAD requests)")

        seed_style = S3MapDataset.from_prefix("s3://images/train/img-00", region=s3.region,
                                              endpoint=s3.endpoint_url, transform=header,
                                              config=config)
        print(f"S3MapDataset (the S3 connector's name): {len(seed_style)} objects match the "
              f"raw prefix 'img-00'; first item {seed_style[0][0]!r} starts with "
              f"{seed_style[0][1].hex()}")


if __name__ == "__main__":
    main()
