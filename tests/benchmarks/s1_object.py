"""Scenario 1: one large object (1 GiB; 256 MiB in quick mode) into a preallocated buffer.

Served by nginx on loopback (sendfile, Range support), so the client is what is measured.
The buffer is allocated and its pages touched before the timed section; each peer is
used as its documentation suggests for a large object (parallel ranged GETs where the
SDK has them), with its defaults otherwise.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from ._common import (
    BUCKET,
    BufferWriter,
    MiB,
    aiobotocore_client,
    aisio_config,
    boto3_client,
    obstore_store,
    s3fs_filesystem,
    s3torch_client,
    touched_buffer,
)
from ._harness import Section

Params = dict[str, Any]
_PART = 8 * MiB  # part size of the hand-written parallel peers (the SDKs' usual default)
_PARALLEL = 16  # ranged GETs in flight for the hand-written parallel peers


def _check(got: int, p: Params) -> dict[str, Any]:
    if got != p["size"]:
        raise RuntimeError(f"read {got} bytes, expected {p['size']}")
    return {"bytes": got}


def _url(p: Params) -> str:
    return f"s3://{BUCKET}/{p['key']}"


# --- aisio ----------------------------------------------------------------------------------


def aisio_async(p: Params, section: Section, **config: Any) -> dict[str, Any]:
    import aisio

    buf = touched_buffer(p["size"])

    async def main() -> int:
        async with aisio.AsyncClient(aisio_config(p["endpoint"], **config)) as client:
            await client.head(_url(p))  # makes the SDK client, as a service would at start
            with section:
                return await client.get_into(_url(p), buf)

    return _check(asyncio.run(main()), p)


def aisio_async_8(p: Params, section: Section) -> dict[str, Any]:
    """Tuned for a fast server: 8 GETs in flight instead of the default 64 (not a default)."""
    return aisio_async(p, section, max_concurrency=8)


def aisio_async_uvloop(p: Params, section: Section) -> dict[str, Any]:
    import uvloop

    uvloop.install()
    return aisio_async(p, section)


def aisio_sync(p: Params, section: Section) -> dict[str, Any]:
    import aisio

    buf = touched_buffer(p["size"])
    with aisio.Client(aisio_config(p["endpoint"])) as client:
        client.head(_url(p))
        with section:
            got = client.get_into(_url(p), buf)
    return _check(got, p)


# --- peers ----------------------------------------------------------------------------------


def boto3_download_fileobj(p: Params, section: Section) -> dict[str, Any]:
    """boto3's transfer manager: 8 MiB ranged GETs on 10 threads, written at their offsets."""
    buf = touched_buffer(p["size"])
    s3 = boto3_client(p["endpoint"])
    with section:
        s3.download_fileobj(BUCKET, p["key"], BufferWriter(buf))
    return _check(p["size"], p)


def boto3_get_object(p: Params, section: Section) -> dict[str, Any]:
    """One GET, the body read into the buffer (StreamingBody.readinto)."""
    buf = touched_buffer(p["size"])
    s3 = boto3_client(p["endpoint"])
    with section:
        body = s3.get_object(Bucket=BUCKET, Key=p["key"])["Body"]
        got = 0
        while n := body.readinto(buf[got:]):
            got += n
    return _check(got, p)


def aiobotocore_stream(p: Params, section: Section) -> dict[str, Any]:
    """One GET, the body read into the buffer (``readinto``: a copy of each chunk)."""
    buf = touched_buffer(p["size"])

    async def main() -> int:
        async with aiobotocore_client(p["endpoint"]) as s3:
            await s3.head_object(Bucket=BUCKET, Key=p["key"])
            with section:
                resp = await s3.get_object(Bucket=BUCKET, Key=p["key"])
                got = 0
                async with resp["Body"] as body:
                    while n := await body.readinto(buf[got:]):
                        got += n
                return got

    return _check(asyncio.run(main()), p)


def aiobotocore_ranges(p: Params, section: Section) -> dict[str, Any]:
    """8 MiB ranged GETs, 16 in flight, each body copied to its offset."""
    buf = touched_buffer(p["size"])
    size = p["size"]

    async def main() -> int:
        async with aiobotocore_client(p["endpoint"], max_pool=_PARALLEL) as s3:
            await s3.head_object(Bucket=BUCKET, Key=p["key"])
            limit = asyncio.Semaphore(_PARALLEL)

            async def part(start: int) -> int:
                end = min(start + _PART, size)
                async with limit:
                    resp = await s3.get_object(Bucket=BUCKET, Key=p["key"],
                                               Range=f"bytes={start}-{end - 1}")
                    pos = start
                    async with resp["Body"] as body:
                        while n := await body.readinto(buf[pos:end]):
                            pos += n
                    return pos - start

            with section:
                return sum(await asyncio.gather(*(part(s) for s in range(0, size, _PART))))

    return _check(asyncio.run(main()), p)


def s3fs_readinto(p: Params, section: Section) -> dict[str, Any]:
    """s3fs's file object: ``readinto`` of the whole object (one GET, then a copy)."""
    buf = touched_buffer(p["size"])
    fs = s3fs_filesystem(p["endpoint"])
    fs.info(f"{BUCKET}/{p['key']}")
    with section, fs.open(f"{BUCKET}/{p['key']}", "rb", cache_type="none") as f:
        got = f.readinto(buf)
    return _check(got, p)


def s3fs_cat_ranges(p: Params, section: Section) -> dict[str, Any]:
    """s3fs's concurrent ``cat_ranges`` over 8 MiB parts, each copied to its offset."""
    buf = touched_buffer(p["size"])
    fs = s3fs_filesystem(p["endpoint"])
    path = f"{BUCKET}/{p['key']}"
    fs.info(path)
    starts = list(range(0, p["size"], _PART))
    ends = [min(s + _PART, p["size"]) for s in starts]
    with section:
        parts = fs.cat_ranges([path] * len(starts), starts, ends, batch_size=_PARALLEL)
        for s, data in zip(starts, parts, strict=True):
            buf[s : s + len(data)] = data
    return _check(sum(len(d) for d in parts), p)


def obstore_stream(p: Params, section: Section) -> dict[str, Any]:
    """obstore's async GET streamed in 8 MiB chunks, copied into the buffer."""
    import obstore

    buf = touched_buffer(p["size"])
    store = obstore_store(p["endpoint"])

    async def main() -> int:
        await obstore.head_async(store, p["key"])
        with section:
            resp = await obstore.get_async(store, p["key"])
            got = 0
            async for chunk in resp.stream(min_chunk_size=_PART):
                view = memoryview(chunk)
                buf[got : got + len(view)] = view
                got += len(view)
            return got

    return _check(asyncio.run(main()), p)


def obstore_ranges(p: Params, section: Section) -> dict[str, Any]:
    """obstore's async range GETs of 8 MiB, 16 in flight, each copied to its offset."""
    import obstore

    buf = touched_buffer(p["size"])
    store = obstore_store(p["endpoint"])
    size = p["size"]

    async def main() -> int:
        await obstore.head_async(store, p["key"])
        limit = asyncio.Semaphore(_PARALLEL)

        async def part(start: int) -> int:
            end = min(start + _PART, size)
            async with limit:
                data = await obstore.get_range_async(store, p["key"], start=start, end=end)
            view = memoryview(data)
            buf[start : start + len(view)] = view
            return len(view)

        with section:
            return sum(await asyncio.gather(*(part(s) for s in range(0, size, _PART))))

    return _check(asyncio.run(main()), p)


def _s3torch(p: Params, section: Section, constructor: str) -> dict[str, Any]:
    from s3torchconnector import S3ReaderConstructor

    buf = touched_buffer(p["size"])
    client = s3torch_client(p["endpoint"])
    reader_constructor = getattr(S3ReaderConstructor, constructor)()
    client.head_object(BUCKET, p["key"])
    with section:
        reader = client.get_object(BUCKET, p["key"], reader_constructor=reader_constructor)
        got = 0
        while n := reader.readinto(buf[got:]):
            got += n
    return _check(got, p)


def s3torch_sequential(p: Params, section: Section) -> dict[str, Any]:
    return _s3torch(p, section, "sequential")


def s3torch_range_based(p: Params, section: Section) -> dict[str, Any]:
    return _s3torch(p, section, "range_based")


# --- references -----------------------------------------------------------------------------


def http_client_readinto(p: Params, section: Section) -> dict[str, Any]:
    """The standard library, one GET, ``readinto`` straight into the buffer."""
    import http.client

    buf = touched_buffer(p["size"])
    host = p["endpoint"].split("/")[2]
    conn = http.client.HTTPConnection(host)
    with section:
        conn.request("GET", f"/{BUCKET}/{p['key']}")
        resp = conn.getresponse()
        got = 0
        while got < len(buf) and (n := resp.readinto(buf[got:])):
            got += n
    conn.close()
    return _check(got, p)


def curl_devnull(p: Params, section: Section) -> dict[str, Any]:
    """``curl -o /dev/null``: the bytes are not even kept (the buffer is not filled)."""
    url = f"{p['endpoint']}/{BUCKET}/{p['key']}"
    with section:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url],
                             check=True, capture_output=True, text=True)
    return _check(int(float(out.stdout)), p)


PEERS: dict[str, tuple[str, str]] = {
    # label: (function, kind) -- kind: "aisio", "peer" or "reference"
    "aisio async": ("aisio_async", "aisio"),
    "aisio async (uvloop)": ("aisio_async_uvloop", "aisio"),
    "aisio async (max_concurrency=8)": ("aisio_async_8", "aisio"),
    "aisio sync": ("aisio_sync", "aisio"),
    "boto3 download_fileobj": ("boto3_download_fileobj", "peer"),
    "boto3 get_object": ("boto3_get_object", "peer"),
    "aiobotocore stream": ("aiobotocore_stream", "peer"),
    "aiobotocore 16 ranges": ("aiobotocore_ranges", "peer"),
    "s3fs readinto": ("s3fs_readinto", "peer"),
    "s3fs cat_ranges": ("s3fs_cat_ranges", "peer"),
    "obstore stream": ("obstore_stream", "peer"),
    "obstore 16 ranges": ("obstore_ranges", "peer"),
    "s3torchconnector sequential": ("s3torch_sequential", "peer"),
    "s3torchconnector range_based": ("s3torch_range_based", "peer"),
    "http.client readinto": ("http_client_readinto", "reference"),
    "curl -o /dev/null": ("curl_devnull", "reference"),
}

# the peers of --quick: one run of each tool that matters for the targets
QUICK = ["aisio async", "aisio sync", "boto3 download_fileobj", "obstore stream",
         "s3torchconnector range_based", "http.client readinto"]
