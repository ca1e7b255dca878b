"""PyTorch integration: datasets, shard readers, a size-packing batch sampler, checkpoints.

The iterable datasets (``IterableDataset``, ``ShardReader``, ``MultiShardStream``, ``Mix``)
resume under torchdata's ``StatefulDataLoader`` (``state_dict`` / ``load_state_dict``);
``elastic_state`` merges a run's states to resume with another layout; ``write_manifest``
(or ``aisio manifest``) writes a listing that ``from_manifest`` reads instead of listing.

Every class takes ``config=`` (``None`` means ``aisio.ClientConfig.from_env()``, read when
the object is built, so DataLoader workers get the same settings) and holds only picklable
values; each process opens its own connections on first use. Seed-compatible names (the
S3 connector's and AIStore's) live in ``aisio.torch.compat``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._datasets import IterableDataset, MapDataset, ObjectReader
from ._manifest import write_manifest
from ._mix import Mix
from ._resume import elastic_state
from ._sampler import DynamicBatchSampler
from ._shards import MultiShardStream, ShardReader
from ._zerodict import ZeroDict

__all__ = [
    "Checkpoint",
    "DynamicBatchSampler",
    "IterableDataset",
    "MapDataset",
    "Mix",
    "MultiShardStream",
    "ObjectReader",
    "ShardReader",
    "ZeroDict",
    "elastic_state",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    if name == "Checkpoint":  # loaded on first use
        return importlib.import_module("aisio.torch._checkpoint").Checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
