"""Scenario 3: many small objects (10,000 x 100 KB) on the slow link through a DataLoader.

Every peer runs in ``torch.utils.data.DataLoader(num_workers=2, batch_size=32)`` with a
collate function that only counts bytes, so what is measured is getting the objects'
bytes into the training process. Objects are named by URL (no listing: nginx cannot
list), which every peer supports.
"""

from __future__ import annotations

from typing import Any

from ._common import BUCKET, REGION, aisio_config, boto3_client, set_credentials
from ._harness import Section

Params = dict[str, Any]
BATCH = 32
WORKERS = 2


def _urls(p: Params) -> list[str]:
    return [f"s3://{BUCKET}/{p['prefix']}{i:06d}.bin" for i in range(p["count"])]


def count_bytes(batch: list[Any]) -> tuple[int, int]:
    """Collate: (items, bytes) of a batch; items are (url, bytes) or bytes."""
    total = 0
    for item in batch:
        data = item[1] if isinstance(item, tuple) else item
        total += len(data)
    return len(batch), total


def read_all(reader: Any) -> bytes:
    return bytes(reader.read())


def _drain(dataset: Any, p: Params, section: Section, **loader: Any) -> dict[str, Any]:
    import torch.utils.data

    dl = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS,
                                     collate_fn=count_bytes, **loader)
    items = total = 0
    with section:
        for n, size in dl:
            items += n
            total += size
    if items != p["count"] or total != p["count"] * p["size"]:
        raise RuntimeError(f"got {items} items / {total} bytes, expected {p['count']} / "
                           f"{p['count'] * p['size']}")
    return {"bytes": total, "items": items}


def aisio_map(p: Params, section: Section) -> dict[str, Any]:
    from aisio.torch import MapDataset

    ds = MapDataset.from_urls(_urls(p), config=aisio_config(p["endpoint"]))
    len(ds)  # the (URL) listing is made before the workers fork, as a sampler would
    return _drain(ds, p, section)


def aisio_iterable(p: Params, section: Section) -> dict[str, Any]:
    from aisio.torch import IterableDataset

    ds = IterableDataset.from_urls(_urls(p), config=aisio_config(p["endpoint"]))
    return _drain(ds, p, section)


def s3torch_map(p: Params, section: Section) -> dict[str, Any]:
    set_credentials()
    from s3torchconnector import S3ClientConfig, S3MapDataset

    ds = S3MapDataset.from_objects(_urls(p), region=REGION, endpoint=p["endpoint"],
                                   transform=read_all,
                                   s3client_config=S3ClientConfig(force_path_style=True))
    return _drain(ds, p, section)


def s3torch_iterable(p: Params, section: Section) -> dict[str, Any]:
    set_credentials()
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    ds = S3IterableDataset.from_objects(_urls(p), region=REGION, endpoint=p["endpoint"],
                                        transform=read_all, enable_sharding=True,
                                        s3client_config=S3ClientConfig(force_path_style=True))
    return _drain(ds, p, section)


class Boto3Dataset:
    """A map-style dataset doing what users write by hand: get_object(...)["Body"].read()."""

    def __init__(self, endpoint: str, keys: list[str]) -> None:
        self.endpoint, self.keys = endpoint, keys
        self._s3: Any = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> bytes:
        if self._s3 is None:  # one client per worker process
            self._s3 = boto3_client(self.endpoint)
        return bytes(self._s3.get_object(Bucket=BUCKET, Key=self.keys[i])["Body"].read())


def boto3_loop(p: Params, section: Section) -> dict[str, Any]:
    keys = [f"{p['prefix']}{i:06d}.bin" for i in range(p["count"])]
    return _drain(Boto3Dataset(p["endpoint"], keys), p, section)


PEERS: dict[str, tuple[str, str]] = {
    "aisio MapDataset": ("aisio_map", "aisio"),
    "aisio IterableDataset": ("aisio_iterable", "aisio"),
    "s3torchconnector S3MapDataset": ("s3torch_map", "peer"),
    "s3torchconnector S3IterableDataset": ("s3torch_iterable", "peer"),
    "boto3 loop (map-style)": ("boto3_loop", "peer"),
}

QUICK = ["aisio MapDataset", "aisio IterableDataset", "s3torchconnector S3IterableDataset",
         "boto3 loop (map-style)"]
