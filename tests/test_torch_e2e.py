"""End to end: webdataset shards in the store, a ShardReader in a 2-worker DataLoader, training."""

from __future__ import annotations

import collections
import io
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud
import webdataset as wds

import aisio
from aisio.torch import ShardReader
from tests.conftest import Store

FEATURES, CLASSES = 8, 3
SHARDS, PER_SHARD = 6, 64


def make_shards(store: Store) -> None:
    """A separable toy problem written with webdataset's TarWriter: x.f32 features, cls label."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(FEATURES, CLASSES))
    with aisio.Client(store.config) as client:
        for s in range(SHARDS):
            buf = io.BytesIO()
            with wds.TarWriter(buf) as writer:
                for i in range(PER_SHARD):
                    x = rng.normal(size=FEATURES).astype(np.float32)
                    sample: dict[str, Any] = {"__key__": f"train/{s:02d}/{i:03d}",
                                              "x.f32": x.tobytes(),
                                              "cls": str(int(np.argmax(x @ weights))).encode()}
                    if i % 2:
                        sample["txt"] = b"odd"  # absent from half: ZeroDict keeps collate happy
                    writer.write(sample)
            client.put(store.url(f"shards/train-{s:03d}.tar"), buf.getvalue())


def test_train_a_tiny_model_from_shards(store: Store) -> None:
    make_shards(store)
    reader = ShardReader(store.url("shards/"), config=store.config, shuffle=True, seed=1)
    loader = tud.DataLoader(reader, batch_size=32, num_workers=2,
                            multiprocessing_context="fork", persistent_workers=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses: list[float] = []
    seen: collections.Counter[str] = collections.Counter()
    for _epoch in range(2):
        for keys, batch in loader:  # default collate: keys, {extension: [bytes, ...]}
            assert set(batch) == {"x.f32", "cls", "txt"}
            x = torch.stack([torch.frombuffer(bytearray(b), dtype=torch.float32)
                             for b in batch["x.f32"]])
            y = torch.tensor([int(c) for c in batch["cls"]])
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seen.update(keys)
    assert len(seen) == SHARDS * PER_SHARD and set(seen.values()) == {2}  # once per epoch
    assert len(losses) >= 2 * SHARDS * PER_SHARD // 32
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3  # it learned
