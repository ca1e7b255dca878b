"""What checksumming costs: raw hash speed, and upload and read throughput with and without.

    .venv/bin/python -m tests.bench_integrity [--size-mib 1024] [--rounds 5]

- hashes: GB/s of one core over a 256 MiB buffer (best of 5), for every candidate;
- uploads: ``AsyncClient.put`` of one large object (multipart, 8 MiB parts) to a sink
  server in another process that speaks just enough S3 and discards the bodies, so the
  client's own cost shows;
- reads: ``AsyncClient.get`` of one large object from nginx on loopback (the nearest,
  fastest store we have), the object's CRC32C in ``x-amz-checksum-crc32c`` (declared
  ``FULL_OBJECT``: nginx's ETags have a dash, as multipart ones do) or not.

"off" runs patch the checksum out of the S3 backend in this process; on and off runs
alternate, so a busy machine slows both alike. Not a test (pytest does not collect it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aisio
from aisio import _checksum
from aisio._backends import s3 as s3_backend

MiB = 2**20

_SINK = r'''
import asyncio, sys
class Sink(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf, self.left = t, b"", 0
    def data_received(self, data):
        if self.left:
            take = min(self.left, len(data)); self.left -= take; data = data[take:]
            if self.left: return
            self.answer()
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.method, self.target = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length": length = int(v)
            take = min(length, len(rest)); self.left = length - take; self.buf = rest[take:]
            if self.left: return
            self.answer()
    def answer(self):
        body = b""
        if self.method == "POST" and "uploads" in self.target:
            body = b"<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>"
        elif self.method == "POST":
            body = b"<CompleteMultipartUploadResult><ETag>\"e-1\"</ETag></CompleteMultipartUploadResult>"
        length = len(body) if self.method != "HEAD" else 1
        self.t.write(b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: %d\r\n\r\n%s" % (length, body))
async def main():
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def process(args: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def nginx(root: str, crc: str) -> Iterator[int]:
    """nginx serving ``root`` at /b/, the object 'with' carrying its CRC32C, 'without' not."""
    port = free_port()
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""
            user root; daemon off; worker_processes 2; pid {root}/nginx.pid; error_log {root}/error.log;
            events {{ worker_connections 1024; }}
            http {{
              access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
              server {{
                listen 127.0.0.1:{port};
                location /b/ {{ alias {root}/data/; etag on; }}
                location = /b/with {{ alias {root}/data/obj; add_header x-amz-checksum-crc32c "{crc}";
                                             add_header x-amz-checksum-type FULL_OBJECT; }}
                location = /b/without {{ alias {root}/data/obj; }}
              }}
            }}"""))
    with process(["nginx", "-c", conf, "-p", root], port):
        yield port


def config(port: int) -> aisio.ClientConfig:
    return aisio.ClientConfig(s3=aisio.S3Options(
        region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", force_path_style=True,
        access_key_id="AKIDBENCH", secret_access_key="bench-secret"))


@contextmanager
def checksums(on: bool) -> Iterator[None]:
    """The S3 backend as it is (on), or with its checksums patched out (off)."""
    if on:
        yield
        return
    saved = (s3_backend._crc, s3_backend._checksum_headers, _checksum.from_s3,
             s3_backend.S3Backend.object_checksum)

    async def no_crc(algorithm: str, data: memoryview) -> int:
        return 0

    s3_backend._crc = no_crc  # type: ignore[assignment]
    s3_backend._checksum_headers = lambda *a, **k: {}  # type: ignore[assignment]
    _checksum.from_s3 = lambda headers: None  # type: ignore[assignment]
    s3_backend.S3Backend.object_checksum = None  # type: ignore[assignment]
    try:
        yield
    finally:
        (s3_backend._crc, s3_backend._checksum_headers, _checksum.from_s3,
         s3_backend.S3Backend.object_checksum) = saved  # type: ignore[assignment]


def hashes() -> None:
    data = os.urandom(256 * MiB)
    candidates: dict[str, Callable[[], Any]] = {
        "zlib.crc32": lambda: zlib.crc32(data),
        "hashlib.md5": lambda: hashlib.md5(data).digest(),
        "hashlib.sha256": lambda: hashlib.sha256(data).digest(),
    }
    try:
        import crc32c
        candidates["crc32c.crc32c (aisio's)"] = lambda: crc32c.crc32c(data)
    except ImportError:
        pass
    for name, module in (("google_crc32c.value", "google_crc32c"), ("awscrt crc32c", "awscrt"),
                         ("xxhash.xxh64", "xxhash")):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        if module == "google_crc32c":
            candidates[name] = lambda m=mod: m.value(data)
        elif module == "awscrt":
            from awscrt import checksums as ck
            candidates["awscrt crc32c"] = lambda: ck.crc32c(data)
            candidates["awscrt crc64nvme"] = lambda: ck.crc64nvme(data)
        else:
            candidates[name] = lambda m=mod: m.xxh64_intdigest(data)
    print("hash speed, one core, 256 MiB (best of 5):")
    for name, fn in candidates.items():
        best = min(_timed(fn) for _ in range(5))
        print(f"  {name:28s} {len(data) / best / 1e9:6.2f} GB/s")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def upload(cfg: aisio.ClientConfig, data: bytes) -> tuple[float, float]:
    async with aisio.AsyncClient(cfg) as c:
        wall, cpu = time.perf_counter(), time.process_time()
        await c.put("s3://b/obj", data)
        return time.perf_counter() - wall, time.process_time() - cpu


async def read(cfg: aisio.ClientConfig, key: str, size: int) -> tuple[float, float]:
    async with aisio.AsyncClient(cfg) as c:
        await c.get(f"s3://b/{key}", 0, MiB)  # the bucket's first probe: near, 16 parts at once
        wall, cpu = time.perf_counter(), time.process_time()
        got = await c.get_view(f"s3://b/{key}")
        assert len(got) == size
        return time.perf_counter() - wall, time.process_time() - cpu


def rounds(name: str, size: int, n: int, run: Callable[[bool], tuple[float, float]]) -> None:
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(n):
        for on in (False, True):
            with checksums(on):
                results[on].append(run(on))
    print(f"{name}, {size // MiB} MiB, {n} alternating rounds (median GB/s, CPU s):")
    for on in (False, True):
        walls = sorted(size / w / 1e9 for w, _ in results[on])
        cpus = sorted(c for _, c in results[on])
        print(f"  checksum {'on ' if on else 'off'}  {walls[len(walls) // 2]:5.2f} GB/s "
              f"(min {walls[0]:.2f}, max {walls[-1]:.2f}), CPU {cpus[len(cpus) // 2]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.size_mib * MiB
    hashes()
    data = os.urandom(size)
    port = free_port()
    with process([sys.executable, "-c", _SINK, str(port)], port):
        cfg = config(port).replace(part_size=8 * MiB)
        rounds("upload to a discarding sink (other process)", size, args.rounds,
               lambda on: asyncio.run(upload(cfg, data)))
    if shutil.which("nginx") is None:
        print("reads: nginx is not installed, skipped")
        return
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(f"{root}/data")
        with open(f"{root}/data/obj", "wb") as f:
            f.write(data)
        crc = _checksum.s3_value("crc32c", _checksum.crc32c(data))
        with nginx(root, crc) as nport:
            cfg = config(nport)
            rounds("whole-object read from nginx (loopback)", size, args.rounds,
                   lambda on: asyncio.run(read(cfg, "with" if on else "without", size)))


if __name__ == "__main__":
    main()
