"""Scenario 4: webdataset tar shards (64 x 16 MiB) on the slow link through a DataLoader.

Every peer yields samples (a key and its files) in ``DataLoader(num_workers=2,
batch_size=32)`` with a collate function that counts samples and bytes. S3 peers read
nginx through the slow link; the AIS peers (the aistore SDK's AISShardReader, and aisio
on ``ais://`` for a like-for-like pair) read ``local_ais()`` whose gateway and targets
sit behind the same kind of slow link.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

import torch.utils.data

from ._common import BUCKET, REGION, aisio_config, boto3_client, set_credentials
from ._harness import Section

Params = dict[str, Any]
BATCH = 32
WORKERS = 2


def _keys(p: Params) -> list[str]:
    return [f"{p['prefix']}shard-{i:06d}.tar" for i in range(p["count"])]


def count_samples(batch: list[Any]) -> tuple[int, int]:
    """Collate: (samples, payload bytes) of a batch of (key, {ext: bytes}) or dicts."""
    total = 0
    for sample in batch:
        files = sample[1] if isinstance(sample, tuple) else sample
        total += sum(len(v) for k, v in files.items()
                     if isinstance(v, (bytes, bytearray, memoryview)) and not k.startswith("__"))
    return len(batch), total


def _drain(dataset: Any, p: Params, section: Section) -> dict[str, Any]:
    dl = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS,
                                     collate_fn=count_samples)
    samples = total = 0
    with section:
        for n, size in dl:
            samples += n
            total += size
    if samples != p["samples"] or total != p["payload"]:
        raise RuntimeError(f"got {samples} samples / {total} bytes, expected {p['samples']} / "
                           f"{p['payload']}")
    return {"bytes": p["count"] * p["shard_bytes"], "payload": total, "items": samples}


# --- aisio ---------------------------------------------------------------------------------------


def aisio_s3(p: Params, section: Section) -> dict[str, Any]:
    from aisio.torch import ShardReader

    urls = [f"s3://{BUCKET}/{k}" for k in _keys(p)]
    return _drain(ShardReader(urls, config=aisio_config(p["endpoint"])), p, section)


def aisio_ais(p: Params, section: Section) -> dict[str, Any]:
    import aisio
    from aisio.torch import ShardReader

    config = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=p["ais_endpoint"]))
    urls = [f"ais://{BUCKET}/{k}" for k in _keys(p)]
    return _drain(ShardReader(urls, config=config), p, section)


# --- webdataset through boto3 streams --------------------------------------------------------------


def _boto3_streams(endpoint: str) -> Any:
    def open_streams(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        s3 = boto3_client(endpoint)
        for sample in src:
            key = sample["url"].split(f"s3://{BUCKET}/", 1)[1]
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
            sample.update(stream=body)
            yield sample

    return open_streams


def webdataset_boto3(p: Params, section: Section) -> dict[str, Any]:
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    urls = [f"s3://{BUCKET}/{k}" for k in _keys(p)]
    ds = wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_worker,
                          _boto3_streams(p["endpoint"]), tar_file_expander, group_by_keys)
    return _drain(ds, p, section)


# --- s3torchconnector: an iterable dataset of shards, parsed with tarfile --------------------------


def tar_samples(reader: Any) -> list[tuple[str, dict[str, bytes]]]:
    """A whole shard's samples, read as a stream with the standard library's tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            f = tar.extractfile(member)
            assert f is not None
            samples.setdefault(key, {})[ext] = f.read()
    return list(samples.items())


class Flatten(torch.utils.data.IterableDataset[Any]):
    """Samples of each shard the inner dataset yields, one by one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Any]:
        for samples in self.inner:
            yield from samples


def s3torch_tarfile(p: Params, section: Section) -> dict[str, Any]:
    set_credentials()
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    urls = [f"s3://{BUCKET}/{k}" for k in _keys(p)]
    ds = S3IterableDataset.from_objects(urls, region=REGION, endpoint=p["endpoint"],
                                        transform=tar_samples, enable_sharding=True,
                                        s3client_config=S3ClientConfig(force_path_style=True))
    return _drain(Flatten(ds), p, section)


# --- the aistore SDK -------------------------------------------------------------------------------


def aistore_shard_reader(p: Params, section: Section) -> dict[str, Any]:
    from aistore.pytorch import AISShardReader
    from aistore.sdk import Client

    bucket = Client(p["ais_endpoint"]).bucket(BUCKET)
    ds = AISShardReader(bucket_list=[bucket], prefix_map={bucket: p["prefix"]})
    return _drain(ds, p, section)


PEERS: dict[str, tuple[str, str]] = {
    "aisio ShardReader (s3)": ("aisio_s3", "aisio"),
    "aisio ShardReader (ais)": ("aisio_ais", "aisio"),
    "webdataset + boto3 streams": ("webdataset_boto3", "peer"),
    "s3torchconnector + tarfile": ("s3torch_tarfile", "peer"),
    "aistore AISShardReader": ("aistore_shard_reader", "peer"),
}

QUICK = ["aisio ShardReader (s3)", "aisio ShardReader (ais)", "webdataset + boto3 streams",
         "s3torchconnector + tarfile", "aistore AISShardReader"]
