"""Resuming the iterable datasets under torchdata's StatefulDataLoader, on every backend.

A run records the loader's state after every batch; a new dataset and loader restored
from the state after batch k must yield exactly batches k+1... of the run, across epoch
boundaries, with shuffling on. Elastic restores merge the states of every rank of a run
and resume with another world size and number of workers: each sample still comes once.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aisio
from aisio.torch import IterableDataset, Mix, MultiShardStream, ShardReader, elastic_state
from tests.conftest import Store, make_store

from .torch_helpers import lists, put_objects, put_shards, s3_requests  # noqa: F401

stateful = pytest.importorskip("torchdata.stateful_dataloader")
StatefulDataLoader = stateful.StatefulDataLoader

pytestmark = [
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),
    # torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
]

FEW = settings(max_examples=2, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- data ----------------------------------------------------------------------------------------


def first_byte(reader: Any) -> int:
    return int(reader.read()[0])


def sample_key(sample: Any) -> Any:
    key, members = sample
    return key, tuple(sorted((k, v) for k, v in members.items() if v))  # ZeroDict fillers aside


def loader(ds: Any, workers: int, batch_size: int = 2, **kw: Any) -> Any:
    return StatefulDataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=list,
                              multiprocessing_context="fork" if workers else None, **kw)


# --- resuming in place ---------------------------------------------------------------------------


def record(make: Callable[[], Any], workers: int, epochs: int, norm: Callable[[Any], Any]
           ) -> tuple[list[tuple[int, list[Any]]], list[dict[str, Any]]]:
    """An uninterrupted run: (epoch, batch) in order, and the loader's state after each."""
    ds = make()
    dl = loader(ds, workers)
    batches: list[tuple[int, list[Any]]] = []
    states = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in dl:
            batches.append((epoch, [norm(x) for x in batch]))
            states.append(dl.state_dict())
    return batches, states


def resumed(make: Callable[[], Any], workers: int, epochs: int, norm: Callable[[Any], Any],
            batches: list[tuple[int, list[Any]]], state: dict[str, Any], after: int
            ) -> list[tuple[int, list[Any]]]:
    """What a new loader restored from the state saved after batch ``after`` yields."""
    ds = make()
    dl = loader(ds, workers)
    dl.load_state_dict(state)
    out = []
    for epoch in range(batches[after - 1][0], epochs):
        ds.set_epoch(epoch)
        out += [(epoch, [norm(x) for x in batch]) for batch in dl]
    return out


def check_resume(make: Callable[[], Any], workers: int, norm: Callable[[Any], Any],
                 every: list[Any], epochs: int = 2) -> None:
    batches, states = record(make, workers, epochs, norm)
    per_epoch = collections.defaultdict(list)
    for epoch, batch in batches:
        per_epoch[epoch] += batch
    for epoch in range(epochs):  # every sample once per epoch, in another order each epoch
        assert sorted(per_epoch[epoch]) == sorted(every)
    assert per_epoch[0] != per_epoch[1]
    end_of_first = sum(1 for epoch, _ in batches if epoch == 0)

    @FEW
    @given(st.integers(1, len(batches)))
    def stop_anywhere(after: int) -> None:
        got = resumed(make, workers, epochs, norm, batches, states[after - 1], after)
        assert got == batches[after:]

    stop_anywhere()
    # and at the epoch boundary, from both sides
    for after in (end_of_first, end_of_first + 1):
        assert resumed(make, workers, epochs, norm, batches, states[after - 1], after) == \
            batches[after:]


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_iterable_dataset_resumes_exactly(store: Store, workers: int) -> None:
    put_objects(store, 11)

    def make() -> IterableDataset:
        return IterableDataset.from_prefix(store.url("o/"), first_byte, store.config,
                                           shuffle=True, seed=4, shuffle_buffer=3)

    check_resume(make, workers, lambda x: x, list(range(11)))


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_shard_reader_resumes_exactly(store: Store, workers: int) -> None:
    counts = [3, 1, 4, 2, 3]
    put_shards(store, counts)

    def make() -> ShardReader:
        return ShardReader(store.url("s/"), config=store.config, shuffle=True, seed=2,
                           shuffle_buffer=4)

    every = [sample_key((f"k{k}_{i:02d}", {"txt": f"{k}-{i}".encode(), "cls": b"c"}))
             for k, n in enumerate(counts) for i in range(n)]
    check_resume(make, workers, sample_key, every)


def test_multishard_stream_and_mix_resume_exactly(request: pytest.FixtureRequest) -> None:
    store = make_store("s3", request)
    put_shards(store, [2, 3, 1, 2], "a/", "a")
    put_shards(store, [2, 3, 1, 2], "b/", "b")
    put_objects(store, 7)

    def stream() -> MultiShardStream:
        return MultiShardStream([store.url("a/"), store.url("b/")], config=store.config,
                                shuffle=True, seed=1, shuffle_buffer=3)

    members = [m for k, n in enumerate([2, 3, 1, 2]) for i in range(n) for m in (f"{k}-{i}", "c")]
    check_resume(stream, 2, lambda t: tuple(bytes(x) for x in t),
                 [(f"a{m}".encode() if m != "c" else b"c", f"b{m}".encode() if m != "c" else b"c")
                  for m in members])

    def mix() -> Mix:
        objects = IterableDataset.from_prefix(store.url("o/"), first_byte, store.config,
                                              shuffle=True)
        shards = ShardReader(store.url("a/"), config=store.config, shuffle=True)
        return Mix([objects, shards], weights=[2, 1], seed=3)

    every = [str(i) for i in range(7)] + [
        f"k{k}_{i:02d}" for k, n in enumerate([2, 3, 1, 2]) for i in range(n)]
    check_resume(mix, 2, lambda x: str(x) if isinstance(x, int) else x[0], every)


def test_a_state_only_resumes_what_saved_it(request: pytest.FixtureRequest) -> None:
    store = make_store("file", request)
    put_objects(store, 6)
    ds = IterableDataset.from_prefix(store.url("o/"), config=store.config, shuffle=True, seed=1,
                                     rank=0, world_size=2)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    assert state["yielded"] == 1 and state["slot"] == [0, 0] and state["layout"] == [2, 1]
    with pytest.raises(ValueError, match="shuffle_buffer=0"):
        IterableDataset.from_prefix(store.url("o/"), config=store.config, shuffle=True, seed=1,
                                    shuffle_buffer=4).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=1"):
        IterableDataset.from_prefix(store.url("o/"), config=store.config, shuffle=True, seed=2,
                                    rank=0, world_size=2).load_state_dict(state)
    other = IterableDataset.from_prefix(store.url("o/"), config=store.config, shuffle=True, seed=1,
                                        rank=1, world_size=2)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="elastic_state"):
        list(other)
    with pytest.raises(ValueError, match="not of a ShardReader"):
        ShardReader(store.url("o/"), config=store.config, shuffle=True, seed=1).load_state_dict(state)
    put_objects(store, 7)  # the listing grew: a new dataset's listing differs
    moved = IterableDataset.from_prefix(store.url("o/"), config=store.config, shuffle=True,
                                        seed=1, rank=0, world_size=2)
    moved.load_state_dict(state)
    with pytest.raises(ValueError, match="changed since the state was saved"):
        list(moved)
    ds.load_state_dict(state)  # the same listing: resumes
    assert len(list(ds)) == 2


# --- elastic: other world sizes and worker counts --------------------------------------------------


def elastic_run(make: Callable[[int, int], Any], norm: Callable[[Any], Any],
                before: tuple[int, int], after: tuple[int, int], steps: int) -> list[Any]:
    """Run ``steps`` batches on each rank of ``before`` (world, workers), merge, finish the
    epoch with ``after``; every item delivered, in order of delivery."""
    got = []
    states = []
    world, workers = before
    for rank in range(world):
        dl = loader(make(rank, world), workers)
        it = iter(dl)
        for batch in itertools.islice(it, steps):
            got += [norm(x) for x in batch]
        states.append(dl.state_dict())
        del it, dl
    merged = elastic_state(states)
    world, workers = after
    for rank in range(world):
        ds = make(rank, world)
        ds.load_state_dict(merged)
        got += [norm(x) for batch in loader(ds, workers) for x in batch]
    return got


LAYOUTS = [((1, 0), (2, 2)), ((2, 2), (3, 0)), ((3, 1), (1, 4)), ((2, 4), (4, 1))]


@pytest.mark.parametrize(("before", "after"), LAYOUTS)
def test_elastic_resume_delivers_every_object_once(request: pytest.FixtureRequest,
                                                   before: tuple[int, int],
                                                   after: tuple[int, int]) -> None:
    store = make_store("file", request)
    put_objects(store, 29)

    def make(rank: int, world: int) -> IterableDataset:
        return IterableDataset.from_prefix(store.url("o/"), first_byte, store.config,
                                           shuffle=True, seed=9, shuffle_buffer=4, rank=rank,
                                           world_size=world)

    got = elastic_run(make, lambda x: x, before, after, steps=3)
    assert sorted(got) == list(range(29))


@pytest.mark.parametrize(("before", "after"), LAYOUTS)
def test_elastic_resume_delivers_every_sample_once(request: pytest.FixtureRequest,
                                                   before: tuple[int, int],
                                                   after: tuple[int, int]) -> None:
    store = make_store("ais" if before == (2, 2) else "file", request)
    counts = [4, 1, 6, 3, 5, 2, 4, 3, 2]
    put_shards(store, counts)

    def make(rank: int, world: int) -> ShardReader:
        return ShardReader(store.url("s/"), config=store.config, shuffle=True, seed=9,
                           shuffle_buffer=5, rank=rank, world_size=world)

    got = elastic_run(make, lambda s: s[0], before, after, steps=2)
    assert collections.Counter(got) == collections.Counter(
        f"k{k}_{i:02d}" for k, n in enumerate(counts) for i in range(n))


def test_elastic_resume_twice_and_of_a_mix(request: pytest.FixtureRequest) -> None:
    store = make_store("file", request)
    put_objects(store, 17)
    put_shards(store, [3, 2, 4, 1])

    def make(rank: int, world: int) -> Mix:
        return Mix([IterableDataset.from_prefix(store.url("o/"), first_byte, store.config,
                                                shuffle=True, rank=rank, world_size=world),
                     ShardReader(store.url("s/"), config=store.config, shuffle_buffer=3,
                                 rank=rank, world_size=world)], weights=[1, 1], seed=5)

    got: list[Any] = []
    states = []
    for rank in range(2):  # run 1: two ranks, one worker each
        dl = loader(make(rank, 2), 1)
        it = iter(dl)
        got += [x for batch in itertools.islice(it, 2) for x in batch]
        states.append(dl.state_dict())
        del it, dl
    merged = elastic_state(states)
    states = []
    for rank in range(3):  # run 2: three ranks, in the main process
        ds = make(rank, 3)
        ds.load_state_dict(merged)
        it2 = iter(ds)
        got += list(itertools.islice(it2, 2))
        states.append(ds.state_dict())
    merged = elastic_state(states)
    ds = make(0, 1)  # run 3: one rank, two workers, to the end
    ds.load_state_dict(merged)
    got += [x for batch in loader(ds, 2) for x in batch]
    norm = [x if isinstance(x, int) else x[0] for x in got]
    assert collections.Counter(norm) == collections.Counter(
        list(range(17)) + [f"k{k}_{i:02d}" for k, n in enumerate([3, 2, 4, 1]) for i in range(n)])


def test_elastic_state_refuses_incomplete_runs(request: pytest.FixtureRequest) -> None:
    store = make_store("file", request)
    put_objects(store, 5)
    ds = IterableDataset.from_prefix(store.url("o/"), config=store.config, rank=0, world_size=2)
    next(iter(ds))
    with pytest.raises(ValueError, match=r"missing \(rank, worker\) \[\(1, 0\)\]"):
        elastic_state([ds.state_dict()])
    with pytest.raises(ValueError, match="no aisio dataset states"):
        elastic_state([{"x": 1}])
    dl = loader(IterableDataset.from_prefix(store.url("o/"), config=store.config), 1,
                snapshot_every_n_steps=2)
    it = iter(dl)
    next(it)
    with pytest.raises(ValueError, match="snapshot_every_n_steps=1"):
        elastic_state([dl.state_dict()])


# --- shuffling -------------------------------------------------------------------------------------


def test_resampled_is_endless_seeded_and_resumable(request: pytest.FixtureRequest) -> None:
    store = make_store("file", request)
    put_objects(store, 5)
    put_shards(store, [2, 3])

    def objects() -> IterableDataset:
        return IterableDataset.from_prefix(store.url("o/"), first_byte, store.config,
                                           resampled=True, seed=1)

    ds = objects()
    first = list(itertools.islice(ds, 40))
    assert set(first) == set(range(5)) and len(first) == 40  # drawn with replacement
    assert list(itertools.islice(objects(), 40)) == first
    again = objects()
    it = iter(again)
    list(itertools.islice(it, 13))
    state = again.state_dict()
    resumed_ds = objects()
    resumed_ds.load_state_dict(state)
    assert list(itertools.islice(resumed_ds, 27)) == first[13:]
    with pytest.raises(TypeError, match="endless"):
        len(ds)

    shards = ShardReader(store.url("s/"), config=store.config, resampled=True, seed=3)
    keys = [key for key, _ in itertools.islice(shards, 30)]
    assert {k.split("_")[0] for k in keys} == {"k0", "k1"} and len(keys) == 30


def test_shuffle_buffer_in_the_datasets(request: pytest.FixtureRequest) -> None:
    store = make_store("s3", request)
    put_objects(store, 40)
    plain = [x for x in IterableDataset.from_prefix(store.url("o/"), first_byte, store.config)]
    assert plain == list(range(40))
    ds = IterableDataset.from_prefix(store.url("o/"), first_byte, store.config,
                                     shuffle_buffer=8, seed=1)
    first, second = list(ds), list(ds)
    assert sorted(first) == sorted(second) == plain
    assert first != plain and second != first
    assert sum(abs(b - a) for a, b in itertools.pairwise(first)) / 39 > 2  # neighbours mixed

    put_shards(store, [10, 10, 10])
    reader = ShardReader(store.url("s/"), config=store.config, shuffle_buffer=12, seed=1)
    keys = [key for key, _ in reader]
    tar_order = [f"k{k}_{i:02d}" for k in range(3) for i in range(10)]
    assert sorted(keys) == tar_order and keys != tar_order
    assert len({k[:2] for k in keys[:12]}) >= 2  # samples of different shards side by side


# --- balanced ranks ----------------------------------------------------------------------------------


class _Worker:
    def __init__(self, worker: int, workers: int) -> None:
        self.id, self.num_workers, self.seed, self.dataset = worker, workers, 0, None


def per_slot(make: Callable[[int, int], Any], world: int, workers: int,
             monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Samples per (rank, worker), each slot iterated here as a DataLoader worker would."""
    import torch.utils.data

    counts = []
    for rank in range(world):
        row = []
        for worker in range(workers):
            monkeypatch.setattr(torch.utils.data, "get_worker_info",
                                lambda w=worker: _Worker(w, workers))
            row.append(sum(1 for _ in make(rank, world)))
        counts.append(row)
    monkeypatch.undo()
    return counts


@pytest.mark.parametrize("count", [0, 1, 7, 12])
def test_drop_last_gives_every_rank_the_same_count(request: pytest.FixtureRequest,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    count: int) -> None:
    store = make_store("file", request)
    put_objects(store, count)
    for world, workers in itertools.product([1, 2, 3], [1, 2, 3]):
        def make(rank: int, world_: int) -> IterableDataset:
            return IterableDataset.from_prefix(store.url("o/"), config=store.config, shuffle=True,
                                               drop_last=True, rank=rank, world_size=world_)

        counts = per_slot(make, world, workers, monkeypatch)
        assert all(row == counts[0] for row in counts), (world, workers, counts)
        assert sum(counts[0]) == count // world
        assert len(make(1 % world, world)) == count // world
        plain = per_slot(lambda r, w: IterableDataset.from_prefix(
            store.url("o/"), config=store.config, rank=r, world_size=w), world, workers, monkeypatch)
        assert sum(map(sum, plain)) == count  # the default keeps every object


def test_drop_last_balances_shards_of_uneven_sizes(request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store("ais", request)
    counts = [5, 3, 7, 2, 6, 4, 4, 1, 3]
    put_shards(store, counts)
    for world, workers in [(2, 2), (3, 1), (1, 3), (4, 2)]:
        def make(rank: int, world_: int) -> ShardReader:
            return ShardReader(store.url("s/"), config=store.config, shuffle=True, seed=1,
                               drop_last=True, rank=rank, world_size=world_)

        got = per_slot(make, world, workers, monkeypatch)
        flat = {n for row in got for n in row}
        assert len(flat) == 1 and flat.pop() > 0, (world, workers, got)
    # in real workers, batches too: every rank the same number of batches
    batches = []
    for rank in range(2):
        reader = ShardReader(store.url("s/"), config=store.config, shuffle=True, drop_last=True,
                             rank=rank, world_size=2)
        batches.append(sum(1 for _ in loader(reader, 2, batch_size=3)))
        assert len(reader) == sum(1 for _ in reader)  # counted once, then known
    assert batches[0] == batches[1] > 0


# --- listing once --------------------------------------------------------------------------------------


def test_workers_share_one_listing(s3_requests: Any) -> None:  # noqa: F811
    store, served = s3_requests
    put_objects(store, 12)
    put_shards(store, [2, 2, 2, 2])
    served()
    ds = IterableDataset.from_prefix(store.url("o/"), config=store.config, shuffle=True)
    assert sorted(x[0] for x in loader(ds, 4, batch_size=None, persistent_workers=False)) == \
        sorted(aisio._url.parse_url(store.url(f"o/{i:03d}")).url for i in range(12))
    assert lists(served()) == 1  # one listing, not one per worker
    reader = ShardReader(store.url("s/"), config=store.config)
    assert len(list(loader(reader, 3, batch_size=None))) == 8
    assert lists(served()) == 1
    ds = IterableDataset.from_prefix(store.url("o/"), config=store.config)
    assert len(ds) == 12  # listed here: the workers get the listing with the dataset
    assert lists(served()) == 1
    assert len(list(loader(ds, 2, batch_size=None))) == 12
    assert lists(served()) == 0
