"""Resumable passes: the state a dataset hands torchdata's ``StatefulDataLoader``, and merging.

A *pass* is one iteration of a dataset in one process (the main one, or a DataLoader
worker): a slot (rank, worker) of a layout (world size, workers), reading its share of
what remained of the epoch's order when the run began (``base``). Its state says how far
the slot got (``cursor``), what its shuffle buffer holds (``held``), what was taken out of
the buffer but not yet yielded (``ready``), and how many items it yielded. All of it is
plain ints, lists and strings, so it pickles, and ``torch.save`` and DCP store it.

``elastic_state(states)`` merges the states of every slot of a run (every rank's
``StatefulDataLoader.state_dict()``) into one position in the epoch's order, which a
dataset restores under any layout: the rest of the epoch is then dealt out afresh and
every sample is still delivered exactly once.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._order import Position, SlotProgress, merge

if TYPE_CHECKING:
    from ._datasets import Shard

__all__ = ["FORMAT", "Pass", "Settings", "elastic_state", "fingerprint"]

FORMAT = 1
Ident = tuple[tuple[int, int], ...]
"""One item of a pass: (share entry, sample index) in each source."""


def fingerprint(urls: Iterable[str]) -> int:
    """A checksum of a listing, so a state is not restored over another listing."""
    crc = 0
    for url in urls:
        crc = zlib.crc32(url.encode("utf-8", "surrogateescape") + b"\n", crc)
    return crc


@dataclass(frozen=True)
class Settings:
    """What fixes an epoch's order and its deal; a state restores only with the same."""

    seed: int
    shuffle: bool
    shuffle_buffer: int
    resampled: bool
    drop_last: bool

    def to_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "shuffle": self.shuffle, "shuffle_buffer": self.shuffle_buffer,
                "resampled": self.resampled, "drop_last": self.drop_last}

    def check(self, state: dict[str, Any], owner: str) -> None:
        theirs = state.get("settings", {})
        for name, mine in self.to_state().items():
            if theirs.get(name) != mine:
                raise ValueError(
                    f"the state was saved with {name}={theirs.get(name)!r}; this {owner} has "
                    f"{name}={mine!r} (the order of an epoch depends on it)")


@dataclass
class Pass:
    """One pass of a dataset in this process: where it started and how far it got."""

    kind: str
    settings: Settings
    epoch: int
    shard: Shard
    base: list[Position]
    sources: int = 1
    kept: int | None = None
    cursor: list[list[int]] = field(default_factory=list)
    held: list[Ident] = field(default_factory=list)  # restored buffer, until it is rebuilt
    ready: collections.deque[Ident] = field(default_factory=collections.deque)
    step: int = 0
    yielded: int = 0
    units: list[int] | None = None
    fingerprints: list[int] | None = None
    keys: set[str] = field(default_factory=set)  # extensions seen (ShardReader)
    buffer: Any = None  # the live ShuffleBuffer of (Ident, item), once running

    def __post_init__(self) -> None:
        if not self.cursor:
            self.cursor = [[0, 0] for _ in range(self.sources)]

    # --- saving ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        held = ([ident for ident, _ in self.buffer.items] if self.buffer is not None
                else list(self.held))
        step = self.buffer.step if self.buffer is not None else self.step
        s = self.shard
        return {
            "aisio": FORMAT, "kind": self.kind, "settings": self.settings.to_state(),
            "epoch": self.epoch, "base": [p.to_state() for p in self.base],
            "layout": [s.world_size, s.num_workers], "slot": [s.rank, s.worker],
            "kept": self.kept, "cursor": [list(c) for c in self.cursor],
            "held": [_ident_state(i) for i in held],
            "ready": [_ident_state(i) for i in self.ready],
            "step": step, "yielded": self.yielded, "units": self.units,
            "fingerprint": self.fingerprints, "keys": sorted(self.keys),
        }

    # --- restoring ------------------------------------------------------------------------

    @classmethod
    def restore(cls, state: dict[str, Any], kind: str, settings: Settings, shard: Shard,
                sources: int) -> Pass:
        """The pass a state resumes in this slot: the slot's own state, or a merged position."""
        check_state(state, kind)
        settings.check(state, kind)
        epoch = int(state["epoch"])
        keys = {str(k) for k in state.get("keys", [])}
        units, prints = state.get("units"), state.get("fingerprint")
        if "position" in state:  # merged: any layout starts from it
            base = [Position.from_state(p) for p in state["position"]]
            if len(base) != sources:
                raise ValueError(f"the state has {len(base)} sources, this {kind} {sources}")
            return cls(kind, settings, epoch, shard, base, sources, units=units,
                       fingerprints=prints, keys=keys)
        world, workers = state["layout"]
        rank, worker = state["slot"]
        if (world, workers, rank, worker) != (shard.world_size, shard.num_workers, shard.rank,
                                              shard.worker):
            raise ValueError(
                f"the state was saved by worker {worker} of {workers} on rank {rank} of {world}, "
                f"so it cannot resume worker {shard.worker} of {shard.num_workers} on rank "
                f"{shard.rank} of {shard.world_size}; restore it through the StatefulDataLoader "
                "that saved it, or merge the states of every rank with "
                "aisio.torch.elastic_state() to restore with another layout")
        base = [Position.from_state(p) for p in state["base"]]
        if len(base) != sources:
            raise ValueError(f"the state has {len(base)} sources, this {kind} {sources}")
        return cls(kind, settings, epoch, shard, base, sources, kept=state.get("kept"),
                   cursor=[[int(j), int(a)] for j, a in state["cursor"]],
                   held=[_ident(i) for i in state["held"]],
                   ready=collections.deque(_ident(i) for i in state["ready"]),
                   step=int(state["step"]), yielded=int(state["yielded"]), units=units,
                   fingerprints=prints, keys=keys)

    def check_listing(self, units: list[int], prints: list[int], what: str) -> None:
        """Refuse to resume over a listing other than the one the state was saved over."""
        if self.units is not None and list(self.units) != units:
            raise ValueError(f"{what} changed since the state was saved: {self.units} "
                             f"units then, {units} now (a manifest pins a listing)")
        if self.fingerprints is not None and list(self.fingerprints) != prints:
            raise ValueError(f"{what} changed since the state was saved (same count, other "
                             "objects); a manifest pins a listing")
        self.units, self.fingerprints = units, prints

    @property
    def restoring(self) -> set[tuple[int, int, int]]:
        """(source, share entry, sample) of every item the restored state holds or has ready."""
        out: set[tuple[int, int, int]] = set()
        for ident in [*self.held, *self.ready]:
            for s, (j, i) in enumerate(ident):
                out.add((s, j, i))
        return out


def _ident_state(ident: Ident) -> list[list[int]]:
    return [list(p) for p in ident]


def _ident(state: Sequence[Sequence[int]]) -> Ident:
    return tuple((int(j), int(i)) for j, i in state)


def check_state(state: Any, kind: str) -> None:
    if not isinstance(state, dict) or state.get("aisio") != FORMAT:
        raise ValueError(f"not a state of an aisio {kind} (format {FORMAT})")
    if state.get("kind") != kind:
        raise ValueError(f"the state is of a {state.get('kind')}, not of a {kind}")


# --- merging the states of a run -----------------------------------------------------------------


def _collect(obj: Any, out: list[dict[str, Any]]) -> None:
    """Every aisio state inside ``obj`` (StatefulDataLoader states, lists of them, ...)."""
    if isinstance(obj, dict):
        if obj.get("aisio") == FORMAT:
            out.append(obj)
            return
        steps = obj.get("_steps_since_snapshot")
        if isinstance(steps, int) and steps:
            raise ValueError(
                "a StatefulDataLoader state taken between snapshots (snapshot_every_n_steps "
                "> 1) lags behind what was delivered; merge states taken with "
                "snapshot_every_n_steps=1")
        for value in obj.values():
            _collect(value, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect(value, out)


def elastic_state(states: Any) -> dict[str, Any]:
    """One state that resumes a run under any world size and number of workers.

    ``states``: the states of every rank and worker of one run, as they come: each rank's
    ``StatefulDataLoader.state_dict()`` (in a list), or datasets' ``state_dict()``. The
    result is the position the run reached in the epoch's order; ``load_state_dict`` it
    into the dataset (before a fresh DataLoader is made) on every rank of the new run.
    """
    found: list[dict[str, Any]] = []
    _collect(states, found)
    if not found:
        raise ValueError("no aisio dataset states found")
    return _merge_states(found)


def _merge_states(found: list[dict[str, Any]]) -> dict[str, Any]:
    kind = found[0].get("kind")
    if kind == "Mix":
        return _merge_mix(found)
    merged = [s for s in found if "position" in s]
    slots = [s for s in found if "position" not in s]
    if merged:
        if len(found) == 1:
            return found[0]
        raise ValueError("a merged state cannot be merged again with others")
    first = slots[0]
    for s in slots:
        for name in ("kind", "settings", "epoch", "base", "units", "fingerprint"):
            if s.get(name) != first.get(name) and not (
                    name in ("units", "fingerprint") and None in (s.get(name), first.get(name))):
                raise ValueError(f"the states disagree on {name!r}: they are not of one run "
                                 f"(epoch {first.get('epoch')} vs {s.get('epoch')})")
    sources = len(first["base"])
    positions = []
    total = None  # the remainder is indexed below each slot's 'kept' only
    for src in range(sources):
        progress = []
        for s in slots:
            world, workers = s["layout"]
            rank, worker = s["slot"]
            waiting = [(int(ident[src][0]), int(ident[src][1]))
                       for ident in [*s["held"], *s["ready"]]]
            j, a = s["cursor"][src]
            progress.append(SlotProgress(rank, world, worker, workers, (int(j), int(a)),
                                         waiting, s.get("kept")))
        base = Position.from_state(first["base"][src])
        positions.append(merge(base, progress, total).to_state())
    units = next((s["units"] for s in slots if s.get("units") is not None), None)
    prints = next((s["fingerprint"] for s in slots if s.get("fingerprint") is not None), None)
    keys = sorted({k for s in slots for k in s.get("keys", [])})
    return {"aisio": FORMAT, "kind": kind, "settings": first["settings"],
            "epoch": first["epoch"], "position": positions, "units": units,
            "fingerprint": prints, "keys": keys}


def _merge_mix(found: list[dict[str, Any]]) -> dict[str, Any]:
    if any(s.get("kind") != "Mix" for s in found):
        raise ValueError("the states mix a Mix with other datasets")
    counts = {len(s["children"]) for s in found}
    if len(counts) != 1:
        raise ValueError("the Mix states have different numbers of datasets")
    children = [_merge_states([s["children"][k] for s in found]) for k in range(counts.pop())]
    first = found[0]
    return {"aisio": FORMAT, "kind": "Mix", "settings": first["settings"],
            "epoch": first["epoch"], "merged": True, "children": children}
