"""The order of an epoch, positions in it, merging and dealing (pure: aisio.torch._order).

The simulation below plays a run the way the datasets do (each slot reads its share of
the remainder unit by unit, sample by sample, through a shuffle buffer, and stops
anywhere), merges the slots' progress and plays the next run from it with another
layout: over any number of such runs every sample comes exactly once.
"""

from __future__ import annotations

import collections
import itertools
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aisio.torch._order import (
    WHOLE,
    Deal,
    Position,
    ShuffleBuffer,
    SlotProgress,
    merge,
    order_of,
    permutation,
    remaining_samples,
    shuffled,
    slot_count,
    slot_index,
)

FAST = settings(max_examples=60, deadline=None)


def test_permutation_is_the_shuffle_of_earlier_releases() -> None:
    import random

    items = list(range(50))
    random.Random("aisio:7:3").shuffle(items)
    assert permutation(50, 7, 3) == items  # the order of seed 7, epoch 3 did not move


@FAST
@given(st.integers(0, 300), st.integers(0, 40), st.integers(0, 3), st.booleans())
def test_order_is_a_permutation_fixed_by_seed_and_epoch(count: int, buffer: int, epoch: int,
                                                        shuffle: bool) -> None:
    unit = order_of(count, 5, epoch, shuffle=shuffle, buffer=buffer)
    got = [unit(p) for p in range(count)]
    assert sorted(got) == list(range(count))
    again = order_of(count, 5, epoch, shuffle=shuffle, buffer=buffer)
    assert [again(p) for p in range(count)] == got


def test_shuffle_buffer_keeps_the_multiset_and_decorrelates_neighbours() -> None:
    n, size = 5000, 100
    out = list(shuffled(range(n), size, b"k" * 32))
    assert sorted(out) == list(range(n))
    steps = [abs(b - a) for a, b in itertools.pairwise(out)]
    # neighbours in the input are 1 apart; out of a buffer of 100 they are about a third
    # of it apart on average, and rarely still adjacent
    assert statistics.mean(steps) > size / 5
    assert sum(1 for s in steps if s == 1) < n * 0.05
    # memory is bounded: never more than `size` held
    buffer: ShuffleBuffer[int] = ShuffleBuffer(size, b"k" * 32)
    for i in range(n):
        buffer.push(i)
        assert len(buffer) <= size
    # the displacement stays within reach of the buffer (a sample-level, local shuffle)
    where = {v: i for i, v in enumerate(out)}
    assert statistics.median(abs(where[v] - v) for v in range(n)) < 3 * size


def test_shuffle_buffer_rebuilds_from_items_and_step() -> None:
    a: ShuffleBuffer[int] = ShuffleBuffer(8, b"s" * 32)
    outs = []
    for i in range(30):
        out, v = a.push(i)
        if out:
            outs.append(v)
    b: ShuffleBuffer[int] = ShuffleBuffer(8, b"s" * 32, list(a.items), a.step)
    for i in range(30, 60):
        assert a.push(i) == b.push(i)
    assert [a.pop() for _ in range(8)] == [b.pop() for _ in range(8)]


@FAST
@given(st.integers(0, 60), st.integers(1, 5), st.integers(1, 4))
def test_deal_gives_each_entry_to_one_slot(length: int, world: int, workers: int) -> None:
    deal = Deal(Position(), length, world, workers)
    seen = collections.Counter()
    for r in range(world):
        for w in range(workers):
            got = []
            j = 0
            while (entry := deal.entry(r, w, j)) is not None:
                got.append(entry[0])
                j += 1
            assert len(got) == deal.count(r, w) == slot_count(length, r, world, w, workers)
            seen.update(got)
    assert seen == collections.Counter(range(length))


@FAST
@given(st.integers(0, 80), st.integers(1, 6), st.integers(1, 4))
def test_drop_last_balances_ranks(length: int, world: int, workers: int) -> None:
    # by rank (IterableDataset): every rank the same count, and the same count per worker
    deal = Deal(Position(), length, world, workers, world)
    per_rank = [[deal.count(r, w) for w in range(workers)] for r in range(world)]
    assert all(row == per_rank[0] for row in per_rank)
    assert sum(per_rank[0]) == length // world
    # by slot (ShardReader): every slot the same
    deal = Deal(Position(), length, world, workers, world * workers)
    counts = {deal.count(r, w) for r in range(world) for w in range(workers)}
    assert counts == {length // (world * workers)}


def test_remaining_samples() -> None:
    assert remaining_samples(10, (0, ())) == 10
    assert remaining_samples(10, WHOLE) == 0
    assert remaining_samples(10, (None, (2, 5))) == 2
    assert remaining_samples(10, (4, (1,))) == 7
    assert remaining_samples(3, (9, ())) == 0


def test_position_state_round_trip() -> None:
    pos = Position.build([0, 1, 2, 5, 6, 9], {3: (2, (0,)), 12: (None, (4,))})
    assert pos.frontier == 3 and pos.done == [(5, 7), (9, 10)]
    again = Position.from_state(pos.to_state())
    assert again == pos
    assert [p for p, _ in pos.remaining(14)] == [3, 4, 7, 8, 10, 11, 12, 13]
    assert pos.delivered(6) == WHOLE and pos.delivered(4) == (0, ()) and pos.delivered(3) == (2, (0,))


# --- a simulated training job: runs, stops, merges, resumes with another layout ------------------


def simulate(counts: list[int], layouts: list[tuple[int, int]], stops: list[list[int]],
             buffers: list[int]) -> list[tuple[int, int]]:
    """Every (unit, sample) delivered over runs with ``layouts``; slot k of run r stops after
    ``stops[r][k]`` deliveries (the last run goes to the end), its buffer ``buffers[r]``."""
    base = Position()
    delivered: list[tuple[int, int]] = []
    for run, (world, workers) in enumerate(layouts):
        last = run == len(layouts) - 1
        buffer = buffers[run % len(buffers)]
        deal = Deal(base, len(counts), world, workers)
        progress = []
        for slot in range(world * workers):
            r, w = slot % world, slot // world
            budget = None if last else stops[run][slot % len(stops[run])]
            buf: ShuffleBuffer[tuple[int, int, int]] = ShuffleBuffer(buffer, bytes([slot]) * 32)
            out = 0
            cursor = (0, 0)
            j = 0
            done = False
            while not done and (entry := deal.entry(r, w, j)) is not None:
                pos, (upto, holes) = entry
                for i in range(counts[pos]):
                    if not (i in holes or (upto is not None and i >= upto)):
                        continue
                    if budget is not None and out >= budget:
                        done = True
                        break
                    cursor = (j, i + 1)
                    item = (j, pos, i)
                    if buffer > 1:
                        ok, item = buf.push(item)  # type: ignore[assignment]
                        if not ok:
                            continue
                    delivered.append((item[1], item[2]))
                    out += 1
                else:
                    cursor = (j + 1, 0)
                    j += 1
            while last and buf.items:
                item = buf.pop()
                delivered.append((item[1], item[2]))
            progress.append(SlotProgress(r, world, w, workers, cursor,
                                         [(j_, i_) for j_, _, i_ in buf.items], deal.kept))
        if not last:
            base = merge(base, progress, len(counts))
    return delivered


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=14),
       st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=4),
       st.lists(st.lists(st.integers(0, 12), min_size=1, max_size=9), min_size=4, max_size=4),
       st.lists(st.sampled_from([0, 3, 5]), min_size=1, max_size=4))
def test_runs_merged_and_resumed_deliver_every_sample_once(
        counts: list[int], layouts: list[tuple[int, int]], stops: list[list[int]],
        buffers: list[int]) -> None:
    got = simulate(counts, layouts, stops, buffers)
    want = [(u, i) for u, n in enumerate(counts) for i in range(n)]
    assert collections.Counter(got) == collections.Counter(want)


def test_merge_checks_the_states_cover_the_layout() -> None:
    base = Position()
    one = SlotProgress(0, 2, 0, 1, (1, 0))
    with pytest.raises(ValueError, match="missing"):
        merge(base, [one], 10)
    with pytest.raises(ValueError, match="some twice"):
        merge(base, [one, one, SlotProgress(1, 2, 0, 1, (0, 0))], 10)
    with pytest.raises(ValueError, match="layouts"):
        merge(base, [one, SlotProgress(1, 3, 0, 1, (0, 0))], 10)


def test_endless_orders_merge_too() -> None:
    base = Position()
    slots = [SlotProgress(r, 2, 0, 1, (5 + r, 0)) for r in range(2)]
    pos = merge(base, slots, None)
    # rank 0 took entries 0, 2, ..., 8; rank 1 took 1, 3, ..., 11
    assert pos.frontier == 10 and pos.done == [(11, 12)]
    assert slot_index(3, 1, 2, 0, 1) == 7
    rest: Any = pos.remaining(None)
    assert [next(rest)[0] for _ in range(3)] == [10, 12, 13]


def test_a_unit_resumed_again_keeps_its_untaken_holes() -> None:
    # samples 1, 3 and 4 of unit 0 waited in a buffer when the last run stopped; the next
    # run took sample 1 and stopped: 3 and 4 are still to come, and nothing else of it
    base = Position(partial={0: (5, (1, 3, 4))})
    slot = SlotProgress(0, 1, 0, 1, (0, 2))
    pos = merge(base, [slot], 3)
    assert pos.partial == {0: (5, (3, 4))}
    assert list(pos.remaining(3)) == [(0, (5, (3, 4))), (1, (0, ())), (2, (0, ()))]
    # and once the unit was read through, only what the buffer held is left of it
    done = merge(base, [SlotProgress(0, 1, 0, 1, (1, 0), [(0, 4)])], 3)
    assert done.partial == {0: (None, (4,))}
