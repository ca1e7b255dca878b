"""DynamicBatchSampler: batches packed by object size, from the dataset's listing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils.data

__all__ = ["DynamicBatchSampler"]

logger = logging.getLogger("aisio.torch")

SATURATION_FACTOR = 0.8


def _sizes(data_source: Any) -> tuple[list[int], list[str]]:
    """Object sizes and names: ``sizes()`` of aisio map datasets, else ``get_obj_list()``."""
    if hasattr(data_source, "sizes") and hasattr(data_source, "object_infos"):
        sizes = list(data_source.sizes())
        return sizes, [info.url for info in data_source.object_infos()]
    if hasattr(data_source, "get_obj_list"):  # the aistore SDK's map datasets
        objects = data_source.get_obj_list()
        return ([int(obj.props_cached.size) for obj in objects],
                [str(obj.name) for obj in objects])
    raise TypeError(f"{type(data_source).__name__} does not tell its object sizes "
                    "(need an aisio MapDataset or an object with get_obj_list())")


class DynamicBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler: lists of indices whose objects add up to at most ``max_batch_size`` bytes.

    Use it as ``DataLoader(dataset, batch_sampler=...)``. Sizes come from the dataset's
    listing (no extra requests for listed objects). Indices are taken in order, or in a
    ``torch.randperm`` order with ``shuffle``. An empty object is skipped; one larger than
    ``max_batch_size`` is skipped, or batched alone with ``allow_oversized_samples``. A
    sample that would overflow the batch closes it and starts the next. The last batch is
    kept unless ``drop_last``, and then only if it is fuller than ``saturation_factor``.
    As in the AIS seed, ``len()`` is the number of samples, not of batches.
    """

    def __init__(self, data_source: Any, max_batch_size: float, drop_last: bool = False,
                 allow_oversized_samples: bool = False,
                 saturation_factor: float = SATURATION_FACTOR, shuffle: bool = False, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0 <= saturation_factor <= 1:
            raise ValueError("`saturation_factor` must be between 0 and 1")
        if max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        self._data_source = data_source
        self._max_batch_size = max_batch_size
        self._sizes, self._names = _sizes(data_source)
        self._drop_last = drop_last
        self._allow_oversized_samples = allow_oversized_samples
        self._saturation_factor = saturation_factor
        self._shuffle = shuffle
        self.generator = generator

    def _order(self) -> list[int]:
        count = len(self._sizes)
        if not self._shuffle:
            return list(range(count))
        # the seed pops indices off the end of a permutation
        return torch.randperm(count, generator=self.generator).tolist()[::-1]

    def __iter__(self) -> Iterator[list[int]]:
        limit = self._max_batch_size
        batch: list[int] = []
        total = 0
        order = self._order()
        k = 0
        while k < len(order):
            index = order[k]
            size = self._sizes[index]
            if size == 0:
                logger.warning("Sample %s cannot be processed as it has a size of 0 bytes",
                               self._names[index])
                k += 1
                continue
            if size > limit:
                if self._allow_oversized_samples:
                    yield [index]
                else:
                    logger.warning("Sample %s cannot be processed as it is larger than the max "
                                   "batch size: %d bytes > %d bytes", self._names[index], size,
                                   limit)
                k += 1
                continue
            if total + size < limit:
                batch.append(index)
                total += size
                k += 1
                continue
            if total + size == limit:
                batch.append(index)
                k += 1
            yield batch
            batch, total = [], 0
        if (batch and not self._drop_last) or (
                self._drop_last and total / limit > self._saturation_factor):
            yield batch

    def __len__(self) -> int:
        """The number of samples (as the AIS seed), not of batches."""
        return len(self._sizes)
