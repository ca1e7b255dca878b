"""The order of an epoch and positions in it (pure: no I/O, no torch).

A dataset lists *units* (objects, or tar shards). An epoch's *order* is a sequence of
unit indices fixed by ``(seed, epoch)`` alone: the listing order, a permutation of it
(``shuffle``), that sequence passed through a seeded shuffle buffer, or, with
``resampled``, an endless sequence of independent draws. Nothing about ranks or workers
enters the order, so a point in it means the same thing under any layout.

What has been delivered of an epoch is a ``Position``: every order position before
``frontier`` whole, some ranges after it whole, and some units in part (a tar shard
whose first samples were delivered, or whose samples wait in a shuffle buffer). The
rest of the epoch, in order, is ``Position.remaining()``; a layout of ``world_size``
ranks of ``num_workers`` workers deals it out: entry ``q`` of the remainder goes to rank
``q % world_size``, then worker ``(q // world_size) % num_workers``.

``merge`` turns the states of every slot (rank, worker) of one run into the Position they
reached together, which a run with another layout starts from.

Seeded choices use ``draw(key, step)``, a keyed hash of a counter: the state of a
random stream is its step count, so it pickles as one integer.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "NOTHING",
    "WHOLE",
    "Deal",
    "Delivered",
    "Lazy",
    "Position",
    "ShuffleBuffer",
    "SlotProgress",
    "draw",
    "key",
    "merge",
    "order_of",
    "permutation",
    "remaining_samples",
    "shuffled",
    "slot_count",
    "slot_index",
]

T = TypeVar("T")

Delivered = tuple[int | None, tuple[int, ...]]
"""What of one unit was delivered: samples ``[0, upto)`` except ``holes``; ``upto=None``:
every sample to the end of the unit except ``holes``."""

WHOLE: Delivered = (None, ())
NOTHING: Delivered = (0, ())


def key(*parts: object) -> bytes:
    """A 32-byte key for ``draw``, from ``parts`` (seed, epoch, what it is for...)."""
    text = ":".join(str(p) for p in ("aisio", *parts))
    return hashlib.blake2b(text.encode(), digest_size=32).digest()


def draw(stream: bytes, step: int) -> int:
    """The ``step``-th 64-bit number of the random stream named by ``stream``."""
    digest = hashlib.blake2b(step.to_bytes(8, "little"), digest_size=8, key=stream).digest()
    return int.from_bytes(digest, "little")


def permutation(count: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of ``count`` units for ``(seed, epoch)``."""
    order = list(range(count))
    random.Random(f"aisio:{seed}:{epoch}").shuffle(order)
    return order


class ShuffleBuffer(Generic[T]):
    """A seeded sample-level shuffle holding at most ``size`` items.

    ``push`` takes an item; once ``size`` are held it returns a random held one in its
    place. ``pop`` hands out a random held one (to drain at the end). The choices depend
    only on the key and the step count, never on the items, so the buffer is rebuilt
    exactly from ``items`` (in order) and ``step``.
    """

    def __init__(self, size: int, stream: bytes, items: list[T] | None = None,
                 step: int = 0) -> None:
        self.size = size
        self.stream = stream
        self.items: list[T] = items if items is not None else []
        self.step = step

    def __len__(self) -> int:
        return len(self.items)

    def push(self, item: T) -> tuple[bool, T | None]:
        """Hold ``item``; returns ``(True, out)`` when a held item comes out for it."""
        if len(self.items) < self.size:
            self.items.append(item)
            return False, None
        k = draw(self.stream, self.step) % self.size
        self.step += 1
        out, self.items[k] = self.items[k], item
        return True, out

    def pop(self) -> T:
        items = self.items
        k = draw(self.stream, self.step) % len(items)
        self.step += 1
        items[k], items[-1] = items[-1], items[k]
        return items.pop()


def shuffled(items: Iterable[T], size: int, stream: bytes) -> Iterator[T]:
    """``items`` through a ``ShuffleBuffer`` of ``size``, drained at the end."""
    buffer: ShuffleBuffer[T] = ShuffleBuffer(size, stream)
    for item in items:
        out, value = buffer.push(item)
        if out:
            yield value  # type: ignore[misc]
    while buffer.items:
        yield buffer.pop()


# --- positions ---------------------------------------------------------------------------------


@dataclass
class Position:
    """What of an epoch's order was delivered (see the module docstring).

    ``done`` holds sorted, disjoint ``[start, end)`` ranges after ``frontier``; a unit in
    ``partial`` is neither before ``frontier`` nor in ``done``.
    """

    frontier: int = 0
    done: list[tuple[int, int]] = field(default_factory=list)
    partial: dict[int, Delivered] = field(default_factory=dict)

    def delivered(self, pos: int) -> Delivered:
        """What of the unit at order position ``pos`` was delivered."""
        if pos < self.frontier:
            return WHOLE
        got = self.partial.get(pos)
        if got is not None:
            return got
        k = bisect.bisect_right(self.done, (pos, float("inf"))) - 1
        if k >= 0 and self.done[k][0] <= pos < self.done[k][1]:
            return WHOLE
        return NOTHING

    def remaining(self, total: int | None) -> Iterator[tuple[int, Delivered]]:
        """The order positions not wholly delivered, with what of each was, in order.

        ``total``: the order's length; None for an endless order.
        """
        pos = self.frontier
        ranges = iter(self.done)
        nxt = next(ranges, None)
        while total is None or pos < total:
            if nxt is not None and pos >= nxt[0]:
                pos = max(pos, nxt[1])
                nxt = next(ranges, None)
                continue
            yield pos, self.partial.get(pos, NOTHING)
            pos += 1

    def to_state(self) -> dict[str, Any]:
        return {"frontier": self.frontier, "done": [list(r) for r in self.done],
                "partial": [[pos, upto, list(holes)]
                            for pos, (upto, holes) in sorted(self.partial.items())]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Position:
        return cls(int(state["frontier"]), [(int(a), int(b)) for a, b in state["done"]],
                   {int(pos): (None if upto is None else int(upto), tuple(int(h) for h in holes))
                    for pos, upto, holes in state["partial"]})

    @classmethod
    def build(cls, whole: Iterable[int], partial: dict[int, Delivered]) -> Position:
        """The Position where the units at ``whole`` were delivered whole, ``partial`` in part."""
        ordered = sorted(set(whole))
        frontier = 0
        k = 0
        while k < len(ordered) and ordered[k] == frontier:
            frontier += 1
            k += 1
        done: list[tuple[int, int]] = []
        for pos in ordered[k:]:
            if done and done[-1][1] == pos:
                done[-1] = (done[-1][0], pos + 1)
            else:
                done.append((pos, pos + 1))
        return cls(frontier, done, {p: d for p, d in partial.items() if p >= frontier})


class Lazy(Generic[T]):
    """A list made from an iterator as far as it is indexed (the remainder of an endless order)."""

    def __init__(self, items: Iterable[T]) -> None:
        self._items = iter(items)
        self._got: list[T] = []

    def __getitem__(self, index: int) -> T:
        while len(self._got) <= index:
            try:
                self._got.append(next(self._items))
            except StopIteration:
                raise IndexError(index) from None
        return self._got[index]

    def get(self, index: int) -> T | None:
        try:
            return self[index]
        except IndexError:
            return None


def slot_index(j: int, rank: int, world_size: int, worker: int, num_workers: int) -> int:
    """The index in the remainder of entry ``j`` of slot (rank, worker)'s share."""
    return (j * num_workers + worker) * world_size + rank


def slot_count(kept: int, rank: int, world_size: int, worker: int, num_workers: int) -> int:
    """How many of the first ``kept`` entries of the remainder slot (rank, worker) gets."""
    first = worker * world_size + rank
    if kept <= first:
        return 0
    return (kept - first - 1) // (num_workers * world_size) + 1


# --- merging the slots of a run ----------------------------------------------------------------


@dataclass(frozen=True)
class SlotProgress:
    """How far one slot of a run got: what ``merge`` needs from its state, per source.

    ``cursor`` (j, a): every entry of the slot's share before ``j`` was taken whole, and of
    entry ``j`` the samples before sample index ``a``. ``waiting``: samples taken but not
    delivered (a shuffle buffer's), as (j, sample index).
    """

    rank: int
    world_size: int
    worker: int
    num_workers: int
    cursor: tuple[int, int]
    waiting: Sequence[tuple[int, int]] = ()
    kept: int | None = None


def _advance(before: Delivered, upto: int | None, waiting: Iterable[int]) -> Delivered:
    """What of a unit is delivered once a slot took its samples before ``upto`` (None: all).

    ``before``: what was delivered when the run began (its samples were skipped);
    ``waiting``: samples the slot took but did not deliver.
    """
    up0, holes0 = before
    if upto is None:
        new_upto = None
        left = set()
    else:
        new_upto = None if up0 is None else max(up0, upto)
        left = {h for h in holes0 if h >= upto}
    holes = tuple(sorted(left | set(waiting)))
    return new_upto, holes


def merge(base: Position, slots: Sequence[SlotProgress], total: int | None) -> Position:
    """The Position a run that started at ``base`` reached, from the progress of every slot.

    ``slots`` must cover the run's layout, each (rank, worker) once.
    """
    if not slots:
        raise ValueError("no states to merge")
    world, workers = slots[0].world_size, slots[0].num_workers
    seen = {(s.rank, s.worker) for s in slots}
    if any((s.world_size, s.num_workers) != (world, workers) for s in slots):
        raise ValueError("the states come from runs of different layouts")
    wanted = {(r, w) for r in range(world) for w in range(workers)}
    if seen != wanted or len(slots) != len(wanted):
        missing = sorted(wanted - seen)
        raise ValueError(
            f"a run of {world} rank(s) x {workers} worker(s) has {len(wanted)} states; got "
            f"{len(slots)}" + (f", missing (rank, worker) {missing[:8]}" if missing else
                               ", some twice"))
    rest = Lazy(base.remaining(total))
    got: dict[int, Delivered] = dict(base.partial)  # what was delivered before the run began
    for slot in slots:
        jc, a = slot.cursor
        waiting: dict[int, list[int]] = {}
        for j, i in slot.waiting:
            waiting.setdefault(j, []).append(i)
        touched = sorted(set(range(jc)) | set(waiting) | ({jc} if a > 0 else set()))
        for j in touched:
            q = slot_index(j, slot.rank, world, slot.worker, workers)
            if slot.kept is not None and q >= slot.kept:
                continue
            entry = rest.get(q)
            if entry is None:
                continue
            pos, before = entry
            got[pos] = _advance(before, None if j < jc else a, waiting.get(j, ()))
    whole = [pos for pos, d in got.items() if d == WHOLE]
    whole.extend(range(base.frontier))
    for start, end in base.done:
        whole.extend(range(start, end))
    return Position.build(whole, {pos: d for pos, d in got.items() if d != WHOLE})


# --- an epoch's order and its deal ---------------------------------------------------------------


def order_of(count: int, seed: int, epoch: int, *, shuffle: bool, buffer: int = 0,
             resampled: bool = False) -> Callable[[int], int]:
    """Order position -> unit index for epoch ``epoch`` of ``count`` units."""
    if resampled:
        stream = key(seed, epoch, "resampled")
        return lambda pos: draw(stream, pos) % count
    order: list[int] | None = permutation(count, seed, epoch) if shuffle else None
    if buffer > 1:
        base: Iterable[int] = order if order is not None else range(count)
        order = list(shuffled(base, buffer, key(seed, epoch, "buffer")))
    if order is None:
        return _identity
    return order.__getitem__


def _identity(pos: int) -> int:
    return pos


class Deal:
    """The remainder of an epoch dealt out to the slots of a layout.

    ``group``: with ``drop_last``, the remainder is cut to a multiple of it (the world size,
    or every slot); ``kept`` is how many entries are dealt (None: endless).
    """

    def __init__(self, base: Position, total: int | None, world_size: int, num_workers: int,
                 group: int = 0) -> None:
        self.world_size, self.num_workers = world_size, num_workers
        fresh = base.frontier == 0 and not base.done and not base.partial
        self._rest: list[tuple[int, Delivered]] | Lazy[tuple[int, Delivered]] | None
        length: int | None
        if fresh:
            self._rest, length = None, total
        elif total is None:
            self._rest, length = Lazy(base.remaining(None)), None
        else:
            self._rest = list(base.remaining(total))
            length = len(self._rest)
        self.length = length
        self.kept = length - length % group if (group > 1 and length is not None) else length

    def entry(self, rank: int, worker: int, j: int) -> tuple[int, Delivered] | None:
        """Entry ``j`` of slot (rank, worker)'s share: (order position, what was delivered)."""
        q = slot_index(j, rank, self.world_size, worker, self.num_workers)
        if self.kept is not None and q >= self.kept:
            return None
        if self._rest is None:
            return q, NOTHING
        if isinstance(self._rest, Lazy):
            return self._rest.get(q)
        return self._rest[q]

    def count(self, rank: int, worker: int) -> int:
        """Entries in slot (rank, worker)'s share (the deal must not be endless)."""
        assert self.kept is not None
        return slot_count(self.kept, rank, self.world_size, worker, self.num_workers)


def remaining_samples(count: int, delivered: Delivered) -> int:
    """Samples of a unit of ``count`` samples not yet delivered."""
    upto, holes = delivered
    if upto is None:
        return len([h for h in holes if h < count])
    top = min(upto, count)
    return count - (top - len([h for h in holes if h < top]))
