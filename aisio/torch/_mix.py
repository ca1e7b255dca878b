"""Mix: a weighted, seeded, resumable interleave of iterable datasets.

At each step the next item comes from one of the datasets still running, chosen with
probability proportional to its weight by ``draw(key(seed, epoch, rank, worker), step)``,
so the choices depend on the seed, the epoch, the slot and the step alone. The state is
the step, which datasets ran out, and each dataset's own state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch.utils.data

from ._datasets import rank_and_world_size
from ._order import draw, key
from ._resume import FORMAT, check_state

__all__ = ["Mix"]

_STOPS = ("all", "first")


class Mix(torch.utils.data.IterableDataset[Any]):
    """Items of ``datasets`` interleaved at random, in proportion to ``weights``.

    ``weights``: one positive number per dataset (default: equal). ``seed``: with the
    epoch (``set_epoch``, passed on to the datasets) and the DataLoader worker, it fixes
    the choices. ``stop``: ``"all"`` (default) runs until every dataset is exhausted, the
    weights of those left renormalised, so every item of every dataset comes once per
    epoch; ``"first"`` stops when the first one is, which keeps the proportions exact.

    Each dataset shards itself over ranks and workers as it would alone (so use the
    aisio datasets, or others that do). ``state_dict()`` / ``load_state_dict()`` follow
    torchdata's ``Stateful`` protocol and hold the state of every dataset.
    """

    _kind = "Mix"

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float] | None = None,
                 seed: int = 0, *, stop: str = "all") -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("Mix needs at least one dataset")
        given = [1.0] * len(self.datasets) if weights is None else [float(w) for w in weights]
        if len(given) != len(self.datasets):
            raise ValueError(f"{len(given)} weights for {len(self.datasets)} datasets")
        if not all(math.isfinite(w) and w > 0 for w in given):
            raise ValueError(f"weights must be positive and finite, got {given}")
        if stop not in _STOPS:
            raise ValueError(f"stop must be one of {_STOPS}, got {stop!r}")
        self.weights, self.seed, self.stop = given, int(seed), stop
        self._epoch = 0
        self._passes = 0
        self._pending: dict[str, Any] | None = None
        self._live: dict[str, Any] | None = None  # the current pass: step and exhausted

    def __repr__(self) -> str:
        return f"<Mix of {len(self.datasets)} datasets, weights {self.weights}>"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_live"] = None  # a pass belongs to the process that runs it
        return state

    def __len__(self) -> int:
        """With ``stop="all"``, the sum of the datasets' lengths."""
        if self.stop != "all":
            raise TypeError('a Mix with stop="first" does not know its length in advance')
        return sum(len(ds) for ds in self.datasets)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``, here and in every dataset."""
        if self._pending is not None and int(self._pending["epoch"]) != int(epoch):
            self._pending = None
        self._epoch, self._passes = int(epoch), 0
        for ds in self.datasets:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def _settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "weights": list(self.weights), "stop": self.stop}

    def _stream(self, epoch: int) -> bytes:
        rank, world = rank_and_world_size()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return key(self.seed, epoch, "mix", rank, world, worker, workers)

    def __iter__(self) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        if pending is None:
            epoch = self._epoch + self._passes
            self._passes += 1
            step, exhausted = 0, set()
        else:
            epoch = int(pending["epoch"])
            self._epoch, self._passes = epoch, 1
            step = int(pending.get("step", 0))
            exhausted = {int(k) for k in pending.get("exhausted", [])}
        live = self._live = {"epoch": epoch, "step": step, "exhausted": exhausted}
        iterators = [iter(ds) for ds in self.datasets]
        return self._run(live, iterators)

    def _run(self, live: dict[str, Any], iterators: list[Iterator[Any]]) -> Iterator[Any]:
        stream = self._stream(live["epoch"])
        exhausted: set[int] = live["exhausted"]
        while True:
            active = [k for k in range(len(iterators)) if k not in exhausted]
            if not active:
                return
            total = sum(self.weights[k] for k in active)
            point = draw(stream, live["step"]) / 2**64 * total
            chosen = active[-1]
            for k in active:
                point -= self.weights[k]
                if point < 0:
                    chosen = k
                    break
            try:
                item = next(iterators[chosen])
            except StopIteration:
                exhausted.add(chosen)
                if self.stop == "first":
                    return
                continue  # the same step draws again among the rest
            live["step"] += 1
            yield item

    def state_dict(self) -> dict[str, Any]:
        """The step, the datasets that ran out, and every dataset's state."""
        if self._live is not None:
            live = self._live
            epoch, step, exhausted = live["epoch"], live["step"], sorted(live["exhausted"])
        elif self._pending is not None:
            return dict(self._pending)
        else:
            epoch, step, exhausted = self._epoch + self._passes, 0, []
        return {"aisio": FORMAT, "kind": self._kind, "settings": self._settings(),
                "epoch": epoch, "step": step, "exhausted": exhausted,
                "children": [ds.state_dict() for ds in self.datasets]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` was saved (or, merged by ``elastic_state``, under any layout)."""
        check_state(state, self._kind)
        theirs = state.get("settings", {})
        for name, mine in self._settings().items():
            if theirs.get(name) != mine:
                raise ValueError(f"the state was saved with {name}={theirs.get(name)!r}; this "
                                 f"Mix has {name}={mine!r}")
        children = state["children"]
        if len(children) != len(self.datasets):
            raise ValueError(f"the state has {len(children)} datasets, this Mix "
                             f"{len(self.datasets)}")
        for ds, child in zip(self.datasets, children, strict=True):
            ds.load_state_dict(child)
        self._pending = dict(state)
        if state.get("merged"):  # a new layout draws afresh
            self._pending["step"], self._pending["exhausted"] = 0, []
        self._live = None
        self._epoch, self._passes = int(state["epoch"]), 0
