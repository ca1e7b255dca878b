"""aisio.fsspec under the libraries that use fsspec: pandas, pyarrow datasets, Hugging Face
datasets and torch's DCP FsspecReader/FsspecWriter, over ``ais://`` and (opted in) ``s3://``
URLs on loopback servers. Every dataset is one the test writes: nothing comes from a hub.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

import aisio.fsspec
from aisio.fsspec import AISFileSystem, AisioFileSystem

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")


@pytest.fixture
def registry() -> Iterator[None]:
    """Put fsspec's registry back as it was: a test's opt-in must not leak to others."""
    held = importlib.import_module("fsspec.registry")._registry
    saved = dict(held)
    yield
    held.clear()
    held.update(saved)


@pytest.fixture(params=["ais", "s3"])
def where(request: pytest.FixtureRequest, registry: None) -> tuple[str, dict[str, Any]]:
    """A fresh URL prefix and the storage options that reach it, as users would write them."""
    base = f"fsspec-stack-{os.getpid()}-{request.node.name.replace('[', '-').rstrip(']')}"
    if request.param == "ais":
        ais = request.getfixturevalue("ais_server")
        return f"ais://aisio-test/{base}", {"endpoint": ais.endpoint}
    s3 = request.getfixturevalue("s3_server")
    aisio.fsspec.register("s3")  # opt in: s3:// is s3fs's otherwise
    return f"s3://aisio-test/{base}", {
        "key": s3.access_key_id, "secret": s3.secret_access_key,
        "client_kwargs": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}


def frame(rows: int = 1000) -> Any:
    return pd.DataFrame({"id": range(rows), "name": [f"row-{i}" for i in range(rows)],
                         "group": [i % 3 for i in range(rows)], "value": [i * 0.5 for i in range(rows)]})


def test_pandas_parquet_round_trip(where: tuple[str, dict[str, Any]]) -> None:
    url, options = where
    df = frame()
    df.to_parquet(f"{url}/one.parquet", storage_options=options)
    back = pd.read_parquet(f"{url}/one.parquet", storage_options=options, columns=["id", "value"])
    pd.testing.assert_frame_equal(back, df[["id", "value"]])
    df.to_parquet(f"{url}/parts", partition_cols=["group"], storage_options=options)
    parts = pd.read_parquet(f"{url}/parts", storage_options=options, filters=[("group", "=", 1)])
    assert sorted(parts["id"]) == list(range(1, 1000, 3))
    fs, _ = fsspec.core.url_to_fs(url, **options)
    assert isinstance(fs, AisioFileSystem)
    assert fs.ls(f"{url}/parts", detail=False) == [
        f"{fs._strip_protocol(url)}/parts/group={g}" for g in range(3)]
    df.to_csv(f"{url}/table.csv.gz", index=False, storage_options=options)  # fsspec's compression
    pd.testing.assert_frame_equal(pd.read_csv(f"{url}/table.csv.gz", storage_options=options), df)


def test_pyarrow_dataset(where: tuple[str, dict[str, Any]]) -> None:
    import pyarrow.dataset as ds

    url, options = where
    fs, path = fsspec.core.url_to_fs(url, **options)
    table = pa.Table.from_pandas(frame(3000), preserve_index=False)
    pq.write_to_dataset(table, f"{path}/ds", partition_cols=["group"], filesystem=fs)
    dataset = ds.dataset(f"{path}/ds", filesystem=fs, format="parquet", partitioning="hive")
    assert dataset.count_rows() == 3000 and len(dataset.files) == 3
    got = dataset.to_table(columns=["id", "name"], filter=ds.field("group") == 2)
    assert got.num_rows == 1000 and sorted(got.column("id").to_pylist()) == list(range(2, 3000, 3))


def test_parquet_columns_take_few_gets(ais_server: Any) -> None:
    fs = AISFileSystem(endpoint=ais_server.endpoint, skip_instance_cache=True)
    path = f"aisio-test/few-gets-{os.getpid()}.parquet"
    rows = 400_000
    table = pa.table({f"c{i}": pa.array(range(i * rows, (i + 1) * rows)) for i in range(8)})
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=100_000, compression="none")  # 4 row groups
    size = fs.size(path)
    assert size > 20 * 2**20  # 8 columns x 4 row groups of 800 KB chunks
    for pre_buffer in (True, False):
        before = fs.statistics()
        got = pq.read_table(path, filesystem=fs, columns=["c2", "c5"], pre_buffer=pre_buffer)
        after = fs.statistics()
        assert got.column("c5").to_pylist()[-1] == 6 * rows - 1 and got.num_rows == rows
        # the footer, then each of the 8 column chunks (two per row group) in one exact GET:
        # a quarter of the bytes, and no request per small read
        assert after.requests - before.requests <= 10
        assert after.bytes_received - before.bytes_received < size * 0.3
    # fsspec's own Parquet helper: the footer, then the chunks in one cat_ranges
    import fsspec.parquet

    before = fs.statistics()
    with fsspec.parquet.open_parquet_file(path, fs=fs, columns=["c2", "c5"]) as f:
        got = pq.read_table(f, columns=["c2", "c5"])
    after = fs.statistics()
    assert got.column("c2").to_pylist()[:2] == [2 * rows, 2 * rows + 1]
    assert after.requests - before.requests <= 10
    fs.rm(path)
    fs._client.close()


def test_huggingface_datasets_load_parquet(where: tuple[str, dict[str, Any]], tmp_path: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0",
                        "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
                        "HF_HOME": str(tmp_path / "hf-home")}.items():
        monkeypatch.setenv(name, value)  # the hub stays out of it
    datasets = pytest.importorskip("datasets")
    # datasets' copy of the offline switch also refuses every fsspec URL; the data files
    # here are on loopback, so only the hub is offline
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    url, options = where
    df = frame(500)
    df.iloc[:250].to_parquet(f"{url}/hf/part-0.parquet", storage_options=options)
    df.iloc[250:].to_parquet(f"{url}/hf/part-1.parquet", storage_options=options)
    fs = fsspec.core.url_to_fs(url, **options)[0]  # fsspec's cached instance: the one datasets gets
    before = fs.statistics().requests
    loaded = datasets.load_dataset("parquet", data_files={"train": f"{url}/hf/*.parquet"},
                                   storage_options=options, cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(fs, AisioFileSystem) and fs.statistics().requests > before
    train = loaded["train"]
    assert train.num_rows == 500 and sorted(train["id"]) == list(range(500))
    assert set(train.column_names) == {"id", "name", "group", "value"}


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled, unavailable or uninitialized")
def test_torch_dcp_through_fsspec_reader(ais_server: Any, registry: None) -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    from aisio.torch.dcp import StorageWriter

    options = {"endpoint": ais_server.endpoint}
    state = {"w": torch.arange(1000, dtype=torch.float32).reshape(10, 100), "b": torch.ones(7),
             "step": torch.tensor(12)}
    base = f"ais://aisio-test/dcp-{os.getpid()}"
    # torch's writer and reader, both through the adapter
    dcp.save(state, storage_writer=FsspecWriter(f"{base}/torch", sync_files=False, **options))
    out = {k: torch.zeros_like(v) for k, v in state.items()}
    reader = FsspecReader(f"{base}/torch", **options)
    assert isinstance(reader.fs.fs, AISFileSystem)
    dcp.load(out, storage_reader=reader)
    assert all(torch.equal(out[k], state[k]) for k in state)
    # a checkpoint aisio's own StorageWriter saved, read by torch's FsspecReader
    config = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=ais_server.endpoint))
    dcp.save(state, storage_writer=StorageWriter(f"{base}/aisio", config=config))
    out = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(out, storage_reader=FsspecReader(f"{base}/aisio", **options))
    assert all(torch.equal(out[k], state[k]) for k in state)
