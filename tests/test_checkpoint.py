"""Checkpoint and S3Checkpoint: torch.save into a writer, torch.load from a reader, on every backend."""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import pytest
import torch

import aisio
from aisio.torch import Checkpoint
from aisio.torch._checkpoint import S3Checkpoint
from tests.conftest import Store, make_store


def model_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(256, 128, generator=g),
        "bf16": torch.randn(33, 7, generator=g).to(torch.bfloat16),
        "i8": torch.randint(-128, 127, (999,), dtype=torch.int8, generator=g),
        "view": torch.randn(40, 40, generator=g)[::2, 3:],
        "epoch": 3,
        "names": ["a", "b"],
    }


def assert_same(expected: dict[str, Any], got: dict[str, Any]) -> None:
    assert set(expected) == set(got)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("weights_only", [True, False])
def test_save_and_load(store: Store, weights_only: bool) -> None:
    ckpt = Checkpoint(store.config)
    url = store.url("model.pt")
    torch.save(model_state(), ckpt.writer(url))  # the writer completes when it is dropped
    assert_same(model_state(), torch.load(ckpt.reader(url), weights_only=weights_only))


class Note:
    """An arbitrary class: only ``weights_only=False`` may unpickle it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Note) and other.text == self.text

    __hash__ = None  # type: ignore[assignment]


def test_arbitrary_objects_need_weights_only_false(store: Store) -> None:
    ckpt = Checkpoint(store.config)
    url = store.url("obj.pt")
    obj = {"counts": collections.Counter("hello"), "note": Note("hi"), "t": torch.ones(3)}
    with ckpt.writer(url) as writer:
        torch.save(obj, writer)
    loaded = torch.load(ckpt.reader(url), weights_only=False, map_location="cpu")
    assert loaded["counts"] == obj["counts"] and loaded["note"] == obj["note"]
    assert torch.equal(loaded["t"], obj["t"])
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt.reader(url), weights_only=True)


def test_large_objects_are_read_by_ranges(store: Store) -> None:
    ckpt = Checkpoint(store.config, whole_object_size=1 << 20, buffer_size=64 << 10)
    url = store.url("big.pt")
    state = {f"t{i}": torch.full((512, 256), float(i)) for i in range(6)}  # 3 MiB
    with ckpt.writer(url) as writer:
        torch.save(state, writer)
    reader = ckpt.reader(url)
    assert isinstance(reader, aisio.Reader)
    loaded = torch.load(reader, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_failed_save_inside_with_leaves_nothing(store: Store) -> None:
    ckpt = Checkpoint(store.config)
    url = store.url("partial.pt")
    with pytest.raises(RuntimeError, match="boom"), ckpt.writer(url) as writer:
        writer.write(b"x" * 1000)
        raise RuntimeError("boom")
    with pytest.raises(aisio.ObjectNotFoundError):
        ckpt.reader(url)


def test_reader_is_a_seekable_file(store: Store) -> None:
    ckpt = Checkpoint(store.config)
    url = store.url("raw")
    with ckpt.writer(url) as writer:
        writer.write(b"0123456789")
    reader = ckpt.reader(url)
    assert reader.seekable() and reader.readable()
    assert reader.read(3) == b"012"
    assert reader.seek(-2, io.SEEK_END) == 8 and reader.read() == b"89"
    buf = bytearray(4)
    reader.seek(1)
    assert reader.readinto(buf) == 4 and buf == b"1234" and reader.tell() == 5


def test_reader_seek_refuses_non_integers_as_io_does(store: Store) -> None:
    ckpt = Checkpoint(store.config)  # a small object: read whole, served from memory
    url = store.url("raw")
    with ckpt.writer(url) as writer:
        writer.write(b"0123456789")
    reader = ckpt.reader(url)
    assert not isinstance(reader, aisio.Reader)
    for offset, whence in ((1.5, 0), (2.0, 0), ("1", 0), (1, 1.0)):
        with pytest.raises(TypeError):
            reader.seek(offset, whence)  # type: ignore[arg-type]
    assert reader.tell() == 0 and reader.seek(True) == 1 and reader.read(2) == b"12"


def test_checkpoint_pickles(store: Store) -> None:
    ckpt = pickle.loads(pickle.dumps(Checkpoint(store.config)))
    torch.save({"x": torch.arange(5)}, ckpt.writer(store.url("p.pt")))
    assert torch.equal(torch.load(ckpt.reader(store.url("p.pt")))["x"], torch.arange(5))


def test_s3_checkpoint(request: pytest.FixtureRequest) -> None:
    store = make_store("s3", request)
    s3 = store.server
    ckpt = S3Checkpoint(s3.region, s3.endpoint_url, config=store.config)
    assert (ckpt.region, ckpt.endpoint) == (s3.region, s3.endpoint_url)
    url = store.url("seed.pt")
    torch.save(model_state(), ckpt.writer(url))
    assert_same(model_state(), torch.load(ckpt.reader(url), weights_only=True))
