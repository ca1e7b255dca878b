"""Scenario 1f: scenario 1 as a fresh process meets it: no warm client, no warm buffer.

The same object on nginx (and on local disk, the reference) as scenario 1, but the timed
section starts before the client exists: it makes the client with credentials from the
environment chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, no keys in any config),
allocates the destination with ``torch.empty`` (pages not touched: the reader's writes
fault them in, as in a job that reads into a new tensor) and reads the object into it.
No HEAD or other request warms the client first. Imports are done before the section
(scenario 6 measures them).
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch  # before any timed section: imports are scenario 6's business

from ._common import BUCKET, REGION, BufferWriter, MiB
from ._harness import Section

Params = dict[str, Any]
_PART = 8 * MiB


def _url(p: Params) -> str:
    return f"s3://{BUCKET}/{p['key']}"


def fresh_buffer(size: int) -> tuple[Any, memoryview]:
    """A new uint8 tensor (untouched pages) and a writable byte view of it."""
    tensor = torch.empty(size, dtype=torch.uint8)
    return tensor, memoryview(tensor.numpy()).cast("B")


def check(view: memoryview, got: int, p: Params) -> dict[str, Any]:
    """The byte count, and 4 KiB at 8 places compared with the file on disk."""
    if got != p["size"]:
        raise RuntimeError(f"read {got} bytes, expected {p['size']}")
    with open(p["local_path"], "rb") as f:
        for i in range(8):
            pos = (p["size"] - 4096) * i // 7
            f.seek(pos)
            if f.read(4096) != view[pos : pos + 4096]:
                raise RuntimeError(f"bytes at {pos} differ from the file")
    return {"bytes": got}


def aisio_config(endpoint: str) -> Any:
    import aisio

    return aisio.ClientConfig(s3=aisio.S3Options(region=REGION, endpoint_url=endpoint,
                                                 force_path_style=True))


# --- aisio ------------------------------------------------------------------------------------


def aisio_async(p: Params, section: Section) -> dict[str, Any]:
    import aisio

    async def main() -> tuple[memoryview, int]:
        with section:
            client = aisio.AsyncClient(aisio_config(p["endpoint"]))
            tensor, view = fresh_buffer(p["size"])
            got = await client.get_into(_url(p), tensor)
        await client.aclose()
        return view, got

    view, got = asyncio.run(main())
    return check(view, got, p)


def aisio_sync(p: Params, section: Section) -> dict[str, Any]:
    import aisio

    with section:
        client = aisio.Client(aisio_config(p["endpoint"]))
        tensor, view = fresh_buffer(p["size"])
        got = client.get_into(_url(p), tensor)
    client.close()
    return check(view, got, p)


# --- peers ------------------------------------------------------------------------------------


def boto3_download_fileobj(p: Params, section: Section) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    with section:
        s3 = boto3.client("s3", endpoint_url=p["endpoint"], region_name=REGION,
                          config=Config(s3={"addressing_style": "path"}))
        _, view = fresh_buffer(p["size"])
        s3.download_fileobj(BUCKET, p["key"], BufferWriter(view))
    return check(view, p["size"], p)


def obstore_stream(p: Params, section: Section) -> dict[str, Any]:
    import obstore
    from obstore.store import S3Store

    async def main() -> tuple[memoryview, int]:
        with section:
            store = S3Store(BUCKET, endpoint=p["endpoint"], region=REGION,
                            virtual_hosted_style_request=False,
                            client_options={"allow_http": True, "timeout": "600s"})
            _, view = fresh_buffer(p["size"])
            resp = await obstore.get_async(store, p["key"])
            got = 0
            async for chunk in resp.stream(min_chunk_size=_PART):
                part = memoryview(chunk)
                view[got : got + len(part)] = part
                got += len(part)
        return view, got

    view, got = asyncio.run(main())
    return check(view, got, p)


def s3torch_range_based(p: Params, section: Section) -> dict[str, Any]:
    from s3torchconnector import S3ClientConfig, S3ReaderConstructor
    from s3torchconnector._s3client import S3Client

    with section:
        client = S3Client(REGION, endpoint=p["endpoint"],
                          s3client_config=S3ClientConfig(force_path_style=True))
        _, view = fresh_buffer(p["size"])
        reader = client.get_object(BUCKET, p["key"],
                                   reader_constructor=S3ReaderConstructor.range_based())
        got = 0
        while n := reader.readinto(view[got:]):
            got += n
    return check(view, got, p)


# --- references -------------------------------------------------------------------------------


def local_readinto(p: Params, section: Section) -> dict[str, Any]:
    """The same file from local disk (page cache warm), ``readinto`` the new tensor."""
    with section:
        _, view = fresh_buffer(p["size"])
        got = 0
        with open(p["local_path"], "rb", buffering=0) as f:
            while got < len(view) and (n := f.readinto(view[got:])):
                got += n
    return check(view, got, p)


PEERS: dict[str, tuple[str, str]] = {
    "aisio async": ("aisio_async", "aisio"),
    "aisio sync": ("aisio_sync", "aisio"),
    "boto3 download_fileobj": ("boto3_download_fileobj", "peer"),
    "obstore stream": ("obstore_stream", "peer"),
    "s3torchconnector range_based": ("s3torch_range_based", "peer"),
    "local disk readinto (page cache)": ("local_readinto", "reference"),
}

QUICK = list(PEERS)
