"""PyTorch integration: datasets, shard readers, a size-packing batch sampler, checkpoints.

Every class takes ``config=`` (``None`` means ``aisio.ClientConfig.from_env()``, read when
the object is built, so DataLoader workers get the same settings) and holds only picklable
values; each process opens its own connections on first use. Seed-compatible names (the
S3 connector's and AIStore's) live in ``aisio.torch.compat``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._datasets import IterableDataset, MapDataset, ObjectReader
from ._sampler import DynamicBatchSampler
from ._shards import MultiShardStream, ShardReader
from ._zerodict import ZeroDict

__all__ = [
    "Checkpoint",
    "DynamicBatchSampler",
    "IterableDataset",
    "MapDataset",
    "MultiShardStream",
    "ObjectReader",
    "ShardReader",
    "ZeroDict",
]


def __getattr__(name: str) -> Any:
    if name == "Checkpoint":  # loaded on first use
        return importlib.import_module("aisio.torch._checkpoint").Checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
