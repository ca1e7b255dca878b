"""Iterable loading from a local AIS server: IterableDataset with prefetch, sharding over
DataLoader workers and a shuffle that changes each epoch; AISIterDataset under its own name.

Runs with no arguments: `python examples/iterable_dataset.py` (starts an AIS-protocol server
on loopback).
"""

from __future__ import annotations

import collections
import time

import torch
import torch.utils.data as tud

import aisio
from aisio.testing import local_ais
from aisio.torch import IterableDataset
from aisio.torch.compat import AISIterDataset


def decode(reader: aisio.torch.ObjectReader) -> torch.Tensor:
    """A transform: the object holds float32 values; the reader is a seekable file object."""
    return torch.frombuffer(bytearray(reader.read()), dtype=torch.float32)


def main() -> None:
    with local_ais() as ais:
        ais.create_bucket("vectors")
        config = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=ais.endpoint))
        with aisio.Client(config) as client:
            for i in range(200):
                client.put(f"ais://vectors/part-{i % 4}/v-{i:04d}.f32",
                           torch.full((256,), float(i)).numpy().tobytes())
        print(f"wrote 200 objects to ais://vectors/ on {ais.endpoint}")

        dataset = IterableDataset.from_prefix("ais://vectors/", decode, config, shuffle=True,
                                              seed=42, prefetch=16)
        loader = tud.DataLoader(dataset, batch_size=25, num_workers=2, persistent_workers=True)
        for epoch in range(2):
            t0 = time.perf_counter()
            firsts, seen = [], collections.Counter[int]()
            for batch in loader:
                values = batch[:, 0].int().tolist()
                firsts.append(values[0])
                seen.update(values)
            print(f"epoch {epoch}: {sum(seen.values())} objects, each once "
                  f"({set(seen.values()) == {1}}), in {time.perf_counter() - t0:.2f} s; "
                  f"batches start with {firsts[:4]}...")

        seed_style = AISIterDataset("ais://vectors/", prefix_map={"ais://vectors/": "part-3/"},
                                    config=config)
        names = [name for name, _ in seed_style]
        print(f"AISIterDataset (AIStore's name): {len(names)} objects under part-3/, "
              f"items are (name, bytes) like {names[0]!r}")


if __name__ == "__main__":
    main()
