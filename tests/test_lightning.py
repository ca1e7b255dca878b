"""aisio.torch.lightning: Lightning's CheckpointIO on every backend, under a real Trainer, and
the S3 connector's S3LightningCheckpoint against the same loopback S3 server."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import aisio
from tests.conftest import Store, make_store

lightning = pytest.importorskip("lightning")

from aisio.torch.lightning import CheckpointIO, S3LightningCheckpoint  # noqa: E402


def checkpoint() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"state_dict": {"w": torch.randn(64, 32, generator=g),
                           "b": torch.randn(32, generator=g).to(torch.bfloat16)},
            "epoch": 2, "global_step": 10, "names": ["a", "b"]}


def same(expected: dict[str, Any], got: dict[str, Any]) -> bool:
    return (expected.keys() == got.keys()
            and all(torch.equal(got["state_dict"][k], v) for k, v in expected["state_dict"].items())
            and all(got[k] == expected[k] for k in ("epoch", "global_step", "names")))


class Note:
    def __init__(self, text: str) -> None:
        self.text = text


def test_save_load_remove(store: Store) -> None:
    io = CheckpointIO(store.config)
    url = store.url("ckpts/epoch=2.ckpt")
    io.save_checkpoint(checkpoint(), url)
    for weights_only in (True, False, None):
        assert same(checkpoint(), io.load_checkpoint(url, weights_only=weights_only))
    assert io.load_checkpoint(url, map_location="cpu")["state_dict"]["w"].device.type == "cpu"
    io.save_checkpoint({**checkpoint(), "hparams": Note("x"), "c": collections.Counter("aab")},
                       url)
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(url, weights_only=True)
    loaded = io.load_checkpoint(url, weights_only=False)
    assert loaded["hparams"].text == "x" and loaded["c"] == {"a": 2, "b": 1}
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint(checkpoint(), url, storage_options={"x": 1})
    io.remove_checkpoint(url)
    with pytest.raises(FileNotFoundError):  # aisio.ObjectNotFoundError, as Lightning raises
        io.load_checkpoint(url)
    io.remove_checkpoint(url)  # already gone: fine, as in Lightning
    assert pickle.loads(pickle.dumps(io)).config == store.config


class Tiny(lightning.pytorch.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> Any:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g),
                                          torch.randn(16, 1, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def trainer(io: CheckpointIO, root: Path, steps: int) -> Any:
    return lightning.pytorch.Trainer(
        plugins=[io], max_steps=steps, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on workers and the like
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")
def test_trainer_saves_and_resumes_through_the_plugin(store: Store, tmp_path: Path) -> None:
    io = CheckpointIO(store.config)
    url = store.url("run/last.ckpt")
    first = trainer(io, tmp_path, 2)
    model = Tiny()
    first.fit(model, loader())
    first.save_checkpoint(url)
    saved = io.load_checkpoint(url)
    assert saved["global_step"] == 2
    second, resumed = trainer(io, tmp_path, 4), Tiny()
    second.fit(resumed, loader(), ckpt_path=url)  # restores the model, optimizer and step
    assert second.global_step == 4
    assert not torch.equal(resumed.layer.weight, Tiny().layer.weight)


def test_s3_lightning_checkpoint_matches_the_seed(request: pytest.FixtureRequest,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seed = pytest.importorskip("s3torchconnector")
    from s3torchconnector.lightning import S3LightningCheckpoint as Theirs

    from aisio.torch.compat import S3ClientConfig

    store = make_store("s3", request)
    s3 = store.server
    for name, value in s3.env().items():  # the connector's credentials
        monkeypatch.setenv(name, value)
    theirs = Theirs(s3.region, seed.S3ClientConfig(force_path_style=True), s3.endpoint_url)
    ours = S3LightningCheckpoint(s3.region, S3ClientConfig(force_path_style=True),
                                 s3.endpoint_url, config=store.config)
    assert (ours.region, ours.endpoint) == (theirs.region, s3.endpoint_url)
    a, b = store.url("theirs.ckpt"), store.url("ours.ckpt")
    theirs.save_checkpoint(checkpoint(), a)
    ours.save_checkpoint(checkpoint(), b)
    for reader in (ours, theirs):  # each reads what the other wrote
        for url in (a, b):
            assert same(checkpoint(), reader.load_checkpoint(url, weights_only=True))
    ours.remove_checkpoint(a)
    theirs.remove_checkpoint(b)
    with aisio.Client(store.config) as client:
        assert list(client.list(store.url(""))) == []
    for io in (ours, theirs):
        with pytest.raises(TypeError):
            io.save_checkpoint(checkpoint(), Path("/tmp/x.ckpt"))  # type: ignore[arg-type]
    from aisio.torch import compat

    assert compat.S3LightningCheckpoint is S3LightningCheckpoint
