"""A DCP checkpoint checked without loading it (``aisio.torch.dcp.verify``, ``aisio verify``),
and the items a load reads whole checked against the CRCs the writer recorded."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import crc32c
import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_loader import load
from torch.distributed.checkpoint.state_dict_saver import save

import aisio
from aisio import cli
from aisio.errors import IntegrityError
from aisio.torch.dcp import StorageReader, StorageWriter, verify
from tests.conftest import Store

from .test_dcp import assert_same, blank, rank_error, state

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled, unavailable or uninitialized")


def saved(store: Store, name: str = "ckpt", **options: Any) -> str:
    url = store.url(name)
    save(state(), storage_writer=StorageWriter(url, store.config, thread_count=2, **options))
    return url


def metadata_of(store: Store, url: str) -> Any:
    with aisio.Client(store.config) as client:
        return pickle.loads(client.get(f"{url}/.metadata"))


def damage(store: Store, url: str, offset_of: Any) -> str:
    """Invert one byte of a stored file, chosen by ``offset_of(metadata)`` -> (file, offset);
    the object is rewritten whole, so the store's own checksum is of the damaged bytes."""
    path, offset = offset_of(metadata_of(store, url))
    victim = f"{url}/{path}"
    with aisio.Client(store.config) as client:
        data = bytearray(client.get(victim))
        data[offset] ^= 0xFF
        client.put(victim, bytes(data))
    return victim


def payload_byte(md: Any) -> tuple[str, int]:
    """The middle byte of the largest tensor's item (its payload, landed in place on load)."""
    info = max(md.storage_data.values(), key=lambda i: i.length)
    return info.relative_path, info.offset + info.length // 2


def bytes_item_byte(md: Any) -> tuple[str, int]:
    """A byte of a BYTE_IO item's pickle (read whole on load)."""
    for index, info in md.storage_data.items():
        if index.fqn == "extra.names":
            return info.relative_path, info.offset + info.length // 2
    raise AssertionError("no BYTE_IO item")


def test_the_writer_records_each_items_crc32c(store: Store) -> None:
    url = saved(store)
    md = metadata_of(store, url)
    recorded = md.aisio_checksums
    assert recorded["algorithm"] == "crc32c" and set(recorded["items"]) == set(md.storage_data)
    with aisio.Client(store.config) as client:
        files = {info.relative_path: client.get(f"{url}/{info.relative_path}")
                 for info in md.storage_data.values()}
    for index, info in md.storage_data.items():
        item = files[info.relative_path][info.offset:info.offset + info.length]
        assert recorded["items"][index] == crc32c.crc32c(item), index
        assert not [k for k in vars(info) if k.startswith("_aisio")]  # torch's class, as torch has it


def test_an_intact_checkpoint_verifies(store: Store, tmp_path: Path) -> None:
    url = saved(store)
    report = verify(url, store.config)
    md = metadata_of(store, url)
    assert report.ok and report.files == 2 and report.items == len(md.storage_data)
    assert report.checksummed == report.items
    assert report.bytes_read == sum(max(i.offset + i.length for i in md.storage_data.values()
                                        if i.relative_path == p)
                                    for p in {i.relative_path for i in md.storage_data.values()})
    # torch's own reader ignores what aisio adds to the metadata
    if store.name == "file":
        out = blank()
        load(out, storage_reader=FileSystemReader(aisio._url.parse_url(url).key))
        assert_same(state(), out)


def test_a_flipped_byte_is_caught_by_verify(store: Store) -> None:
    url = saved(store)
    victim = damage(store, url, payload_byte)
    with pytest.raises(IntegrityError) as info:
        verify(url, store.config)
    message = str(info.value)
    assert victim in message and "f32" in message and "crc32c" in message
    report = info.value.report  # type: ignore[attr-defined]
    assert len(report.problems) == 1 and report.checksummed == report.items
    # a load lands that payload in place (checked by its zip header, not read whole): the
    # bytes come back wrong, which is what verify is for; damage to an item read whole...
    url2 = saved(store, "ckpt2")
    victim = damage(store, url2, bytes_item_byte)
    with pytest.raises(CheckpointException) as raised:
        load(blank(), storage_reader=StorageReader(url2, store.config))
    error = rank_error(raised.value)
    assert isinstance(error, IntegrityError) and victim in str(error)  # ...is caught on load


def test_truncated_and_missing_files_are_reported(store: Store) -> None:
    url = saved(store)
    with aisio.Client(store.config) as client:
        data = client.get(f"{url}/__0_0.distcp")
        client.put(f"{url}/__0_0.distcp", data[:-100])
        client.delete(f"{url}/__0_1.distcp")
    with pytest.raises(IntegrityError) as info:
        verify(url, store.config)
    problems = info.value.report.problems  # type: ignore[attr-defined]
    assert any("__0_1.distcp: missing" in p for p in problems)
    assert any("__0_0.distcp" in p and "truncated" in p for p in problems)


def test_a_torch_checkpoint_verifies_by_sizes(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "torch-ckpt"
    save(state(), storage_writer=FileSystemWriter(folder, thread_count=2))
    with aisio.Client(store.config) as client:
        for path in folder.iterdir():
            client.put(store.url(f"up/{path.name}"), path.read_bytes())
    report = verify(store.url("up"), store.config)
    assert report.ok and report.items > 0 and report.checksummed == 0


def test_aisio_verify_command(store: Store, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = saved(store)
    monkeypatch.setattr(cli, "config_from_args", lambda args: store.config)
    assert cli.main(["verify", url]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "2 files" in out
    damage(store, url, payload_byte)
    assert cli.main(["verify", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aisio: verify: checkpoint") and "crc32c" in err


def test_an_items_crc_survives_stream_transforms(store: Store) -> None:
    from torch.distributed.checkpoint._extension import ZStandard

    url = saved(store, _extensions=[ZStandard()])
    assert verify(url, store.config).checksummed > 0
    out = blank()
    load(out, storage_reader=StorageReader(url, store.config))
    assert_same(state(), out)
    assert torch.equal(out["f32"], state()["f32"])
