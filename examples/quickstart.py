"""Quickstart on the embedded default (local files): write objects, read them back three ways.

Runs with no server: `python examples/quickstart.py [folder]`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

import aisio


async def async_part(root: str) -> None:
    async with aisio.AsyncClient() as client:
        for i in range(8):
            await client.put(f"{root}/data/sample-{i:02d}.bin", os.urandom(256 * 1024))
        infos = [info async for info in client.list(f"{root}/data/")]
        t0 = time.perf_counter()
        blobs = await asyncio.gather(*(client.get(info.url) for info in infos))
        took = time.perf_counter() - t0
        print(f"async: listed {len(infos)} objects, read {sum(map(len, blobs))} bytes "
              f"concurrently in {took * 1000:.1f} ms")
        views = await client.get_ranges(infos[0].url, [(0, 16), (1000, 1016), (5000, 5016)])
        print(f"async: 3 ranges of {infos[0].url.rsplit('/', 1)[-1]} -> {[len(v) for v in views]} bytes")


def sync_part(root: str) -> None:
    with aisio.Client() as client:
        with client.writer(f"{root}/big.bin") as w:  # multipart above part size
            for _ in range(4):
                w.write(os.urandom(4 * 2**20))
        buf = bytearray(client.head(f"{root}/big.bin").size)
        n = client.get_into(f"{root}/big.bin", buf)
        print(f"sync: wrote and read back {n} bytes into a preallocated buffer")
        with client.open(f"{root}/big.bin", aisio.ReaderConstructor.range_based()) as f:
            f.seek(-10, os.SEEK_END)
            print(f"sync: last 10 bytes via a range-based reader: {f.read().hex()}")


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="aisio-quickstart-")
    asyncio.run(async_part(root))
    sync_part(root)
    print(f"done: objects are under {root}")


if __name__ == "__main__":
    main()
