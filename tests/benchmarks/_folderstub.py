"""The S3 stub serving a folder's files read-only, with paged listings and per-object counts.

Scenarios 9 and 10 need what nginx cannot give and ``_s3stub`` does not keep: listings of
a prefix (``from_prefix``, ``aisio manifest``) over real files, paged as S3 pages them,
and counts at the server of what each run fetched (GETs, HEADs, LISTs, body bytes, per
object), so a resumed loader can be shown not to fetch again what was consumed.

It is ``_s3stub``'s server (one process, uvloop, ``BufferedProtocol``) with the object
answers replaced:

- ``GET``/``HEAD /<bucket>/<key>`` serve ``<root>/<bucket>/<key>`` (Range included; the
  bytes are read with ``pread`` per request, so the page cache serves them). The ETag is
  made from the file's size and mtime, as nginx makes its own.
- ``--synthetic PREFIX:COUNT:SIZE`` adds ``COUNT`` objects ``PREFIX000000.bin``... of
  ``SIZE`` bytes that exist only in memory (100,000 small objects without 100,000 files).
- ``GET /<bucket>?list-type=2`` answers ListObjectsV2: keys in order, at most 1,000 per
  page (``max-keys``), ``continuation-token`` / ``start-after``, as S3 does. A
  ``delimiter`` is refused (nothing here lists by folder).
- ``GET /_stats`` (``?keys=1``: per object too) and ``POST /_reset`` read and clear the
  counts. Uploads go to ``_s3stub``'s own handling (kept in memory up to 1 MiB).

The file index is made once at start: files added later are not seen.

    python -m tests.benchmarks._folderstub --root DIR --bucket bench [--synthetic p/:100000:1024]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ._s3stub import _MODIFIED, _NOT_FOUND, _Conn, _esc, _Stub, control

__all__ = ["FolderStub"]

PAGE = 1000  # keys per listing page, S3's most


def _xml() -> dict[str, str]:
    return {"Content-Type": "application/xml"}  # a new dict: the answer adds its length


class _Folder(_Stub):
    """The objects (files and synthetic ones), in key order, and what was served."""

    def __init__(self, root: Path, bucket: str, synthetic: Sequence[tuple[str, int, int]]) -> None:
        super().__init__(rate=0.0, burst=0.0, size=0)
        self.root, self.bucket = root, bucket
        # key: (size, etag, path or None for a synthetic object)
        self.meta: dict[str, tuple[int, str, str | None]] = {}
        base = root / bucket
        for path in base.rglob("*") if base.is_dir() else ():
            if path.is_file():
                st = path.stat()
                key = path.relative_to(base).as_posix()
                self.meta[key] = (st.st_size, f'"{st.st_mtime_ns:x}-{st.st_size:x}"', str(path))
        self.bodies: dict[int, bytes] = {}
        for prefix, count, size in synthetic:
            self.bodies[size] = bytes(range(256)) * (size // 256) + bytes(size % 256)
            for i in range(count):
                self.meta[f"{prefix}{i:06d}.bin"] = (size, f'"synthetic-{size:x}"', None)
        self.keys = sorted(self.meta)
        self.clear()

    def clear(self) -> None:
        self.gets = self.heads = self.lists = self.sent = 0
        self.per_key: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])

    def served(self, keys: bool) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {"gets": self.gets, "heads": self.heads, "lists": self.lists,
                               "bytes": self.sent, "cpu": usage.ru_utime + usage.ru_stime}
        if keys:
            out["per_key"] = {k: {"gets": v[0], "bytes": v[1]} for k, v in self.per_key.items()}
        return out

    def listing(self, query: dict[str, list[str]]) -> bytes:
        prefix = query.get("prefix", [""])[0]
        limit = max(1, min(PAGE, int(query.get("max-keys", [str(PAGE)])[0])))
        token = query.get("continuation-token", [""])[0]
        after = unquote(token) if token else query.get("start-after", [""])[0]
        encode = query.get("encoding-type", [""])[0] == "url"
        i = bisect.bisect_right(self.keys, after) if after else 0
        i = max(i, bisect.bisect_left(self.keys, prefix))
        rows: list[str] = []
        last = ""
        while i < len(self.keys) and len(rows) < limit and self.keys[i].startswith(prefix):
            last = key = self.keys[i]
            size, etag, _ = self.meta[key]
            shown = quote(key, safe="/") if encode else _esc(key)
            rows.append(f"<Contents><Key>{shown}</Key><Size>{size}</Size><ETag>{_esc(etag)}"
                        f"</ETag><LastModified>2026-11-22T00:00:00.000Z</LastModified>"
                        "<StorageClass>STANDARD</StorageClass></Contents>")
            i += 1
        more = i < len(self.keys) and self.keys[i].startswith(prefix)
        nxt = f"<NextContinuationToken>{quote(last, safe='')}</NextContinuationToken>" if more else ""
        kind = "<EncodingType>url</EncodingType>" if encode else ""
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>'
                f"<Name>{self.bucket}</Name><Prefix>{_esc(prefix)}</Prefix>{kind}"
                f"<KeyCount>{len(rows)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{nxt}"
                f"{''.join(rows)}</ListBucketResult>").encode()


class _FolderConn(_Conn):
    stub: _Folder

    def _answer(self, req: dict[str, Any], body: bytes | None
                ) -> tuple[int, dict[str, str], bytes]:
        stub = self.stub
        method, headers = req["method"], req["headers"]
        parts = urlsplit(req["target"])
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if path == "/_stats":
            return 200, {"Content-Type": "application/json"}, json.dumps(
                stub.served("keys" in query)).encode()
        if path == "/_reset":
            stub.clear()
            return 204, {}, b""
        bucket, _, key = path.lstrip("/").partition("/")
        if method == "GET" and not key and "list-type" in query:
            if bucket != stub.bucket:
                return 404, _xml(), _NOT_FOUND.replace(b"NoSuchKey", b"NoSuchBucket")
            if query.get("delimiter", [""])[0]:
                return 501, _xml(), b"<Error><Code>NotImplemented</Code></Error>"
            stub.lists += 1
            return 200, _xml(), stub.listing(query)
        if method in ("GET", "HEAD") and key and bucket == stub.bucket and key in stub.meta:
            return self._object(key, headers, method)
        return super()._answer(req, body)

    def _object(self, key: str, headers: dict[str, str], method: str
                ) -> tuple[int, dict[str, str], bytes]:
        stub = self.stub
        size, etag, path = stub.meta[key]
        out = {"ETag": etag, "Last-Modified": _MODIFIED, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
        start, end, status = 0, size, 200
        wanted = headers.get("range", "")
        if wanted.startswith("bytes="):
            first, _, last = wanted[6:].split(",")[0].partition("-")
            if first:
                start, end = int(first), min(size, int(last) + 1 if last else size)
            else:
                start, end = max(0, size - int(last)), size
            if start >= size:
                out["Content-Range"] = f"bytes */{size}"
                return 416, out, b""
            status = 206
            out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        out["Content-Length"] = str(end - start)
        if method == "HEAD":
            stub.heads += 1
            return status, out, b""
        if path is None:
            data = stub.bodies[size][start:end]
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.pread(fd, end - start, start)
            finally:
                os.close(fd)
        stub.gets += 1
        stub.sent += len(data)
        counted = stub.per_key[key]
        counted[0] += 1
        counted[1] += len(data)
        return status, out, data


def _serve(root: Path, bucket: str, synthetic: Sequence[tuple[str, int, int]]) -> None:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    folder = _Folder(root, bucket, synthetic)
    server = loop.run_until_complete(
        loop.create_server(lambda: _FolderConn(folder), "127.0.0.1", 0, backlog=1024))
    port = server.sockets[0].getsockname()[1]
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    print(json.dumps({"port": port, "objects": len(folder.keys)}), flush=True)
    loop.run_until_complete(stop)
    print(json.dumps({"stats": folder.served(False)}), flush=True)
    server.close()


class FolderStub:
    """A running folder stub: ``url``, ``stats()``, ``reset()``, ``stop()``."""

    def __init__(self, root: str | os.PathLike[str], bucket: str, *,
                 synthetic: Sequence[tuple[str, int, int]] = ()) -> None:
        cmd = [sys.executable, "-m", "tests.benchmarks._folderstub", "--root", str(root),
               "--bucket", bucket, *[f"--synthetic={p}:{c}:{s}" for p, c, s in synthetic]]
        top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._proc = subprocess.Popen(cmd, cwd=top, stdout=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError("the folder stub did not start")
        hello = json.loads(line)
        self.url = f"http://127.0.0.1:{hello['port']}"
        self.objects = int(hello["objects"])
        self.last_stats: dict[str, Any] = {}

    def stats(self, keys: bool = False) -> dict[str, Any]:
        return stats(self.url, keys)

    def reset(self) -> None:
        control(self.url, "/_reset")

    def stop(self) -> dict[str, Any]:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self._proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                out, _ = self._proc.communicate()
            for line in out.splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    self.last_stats = json.loads(line)["stats"]
        return self.last_stats


def stats(url: str, keys: bool = False) -> dict[str, Any]:
    """The counts of a running folder stub at ``url`` (from any process)."""
    return control(url, "/_stats?keys=1" if keys else "/_stats")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the folder holding <bucket>/")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--synthetic", action="append", default=[],
                        help="PREFIX:COUNT:SIZE objects that exist only in memory")
    args = parser.parse_args(argv)
    synthetic = []
    for spec in args.synthetic:
        prefix, count, size = spec.rsplit(":", 2)
        synthetic.append((prefix, int(count), int(size)))
    _serve(Path(args.root), args.bucket, synthetic)


if __name__ == "__main__":
    main()
