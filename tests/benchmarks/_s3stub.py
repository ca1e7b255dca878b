"""A minimal S3 on loopback that keeps no data: an upload sink, and a throttled GET server.

Two scenarios need an S3 endpoint that nginx cannot be:

- **checkpoint save** (scenario 7): the writers PUT objects, run multipart uploads, HEAD
  what they wrote, copy and delete (s3torchconnector renames ``.metadata.tmp``). The stub
  answers each call with the XML and headers S3 gives and throws the bodies away, so what
  is measured is the client: bodies are read into one reused buffer (``BufferedProtocol``:
  no allocation, no parsing, one copy out of the kernel), sizes and ETags remembered, and
  bodies up to ``KEEP`` bytes (``.metadata``) kept so a GET of them works.
- **throttling** (scenario 8): ``--rate R`` lets each key prefix (the key's first path
  segment, as S3 partitions by prefix) have R requests per second, from a token bucket
  of ``--burst`` requests; a request beyond it is answered ``503 SlowDown`` at once.
  Objects that were not uploaded are synthesized: any key is an object of ``--size``
  bytes (Range and HEAD work), so no data folder is needed.

Requests are counted per prefix and per "client" (the key's second path segment) in
100 ms bins of ``time.monotonic()`` (the same clock in every process on Linux), so a
benchmark can measure goodput over exactly its window. ``GET /_stats`` answers them as
JSON (with the stub's own CPU seconds); ``POST /_reset`` clears them. Signatures and
query-string authentication are ignored, as nginx ignores them.

Why not moto: moto's server parses every request in Flask, keeps every body in memory and
hashes it; on the 2-core benchmark machine it takes more CPU per uploaded GB than the
clients under test do, so it would measure itself. This stub costs a kernel copy per byte.

    python -m tests.benchmarks._s3stub [--rate 200 --burst 20] [--size 16384]   # prints the port
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["S3Stub", "s3_stub"]

KEEP = 1 << 20  # bodies up to this size are kept (metadata); larger ones are counted only
_READ = 1 << 20  # the one buffer each connection reads bodies into
_HEAD_LIMIT = 64 << 10
_BIN = 0.1  # seconds per counting bin

_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate.</Message></Error>")
_NOT_FOUND = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
              b"<Message>The specified key does not exist.</Message></Error>")
_REASONS = {100: "Continue", 200: "OK", 204: "No Content", 206: "Partial Content",
            400: "Bad Request", 404: "Not Found", 416: "Requested Range Not Satisfiable",
            503: "Slow Down"}
_MODIFIED = "Sun, 22 Nov 2026 00:00:00 GMT"


class _Object:
    __slots__ = ("body", "etag", "size")

    def __init__(self, size: int, etag: str, body: bytes | None) -> None:
        self.size, self.etag, self.body = size, etag, body


class _Bucket:
    """A token bucket of one prefix: ``rate`` requests per second, ``burst`` at once."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Stub:
    """What every connection shares: objects, uploads, rate limits, counters."""

    def __init__(self, rate: float, burst: float, size: int) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self.objects: dict[str, _Object] = {}
        self.uploads: dict[str, tuple[str, int]] = {}  # upload id: (path, bytes so far)
        self.limits: dict[str, _Bucket] = {}
        self.synth = b"\x5a" * size
        self.next_id = 0
        self.reset()

    def reset(self) -> None:
        # counts[(prefix, client, outcome)][bin] = requests; outcome "ok" or "throttled"
        self.counts: dict[tuple[str, str, str], collections.Counter[int]] = (
            collections.defaultdict(collections.Counter))
        self.calls: collections.Counter[str] = collections.Counter()
        self.received = 0
        self.limits.clear()

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"bin_s": _BIN, "cpu": usage.ru_utime + usage.ru_stime, "received": self.received,
                "calls": dict(self.calls),
                "counts": [[p, c, o, sorted(bins.items())] for (p, c, o), bins in self.counts.items()]}

    def admit(self, key: str) -> bool:
        """Count the request; False when its prefix is over its rate (answer 503)."""
        parts = key.split("/", 2)
        prefix = parts[0]
        client = parts[1] if len(parts) > 2 else ""
        now = time.monotonic()
        ok = True
        if self.rate:
            limit = self.limits.get(prefix)
            if limit is None:
                limit = self.limits[prefix] = _Bucket(self.rate, self.burst)
            ok = limit.take(now)
        self.counts[(prefix, client, "ok" if ok else "throttled")][int(now / _BIN)] += 1
        return ok

    def etag(self) -> str:
        self.next_id += 1
        return '"' + hashlib.md5(str(self.next_id).encode()).hexdigest() + '"'


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection: request heads parsed, bodies read into a reused buffer."""

    def __init__(self, stub: _Stub) -> None:
        self.stub = stub
        self.buf = bytearray(_READ)
        self.view = memoryview(self.buf)
        self.head = bytearray()
        self.transport: asyncio.Transport | None = None
        self.req: dict[str, Any] | None = None  # the request whose body is being read
        self.left = 0  # body bytes still to read (content-length), or chunk bytes
        self.chunked = False
        self.chunk_line = bytearray()  # a chunk-size line being read (chunked bodies)
        self.kept: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        data = self.view[:nbytes]
        while data:
            data = self._feed_head(data) if self.req is None else self._feed_body(data)

    def _feed_head(self, data: memoryview) -> memoryview:
        start = max(0, len(self.head) - 3)
        self.head += data
        end = self.head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self.head) > _HEAD_LIMIT:
                self._close()
            return data[:0]
        rest = len(self.head) - (end + 4)
        text = bytes(self.head[:end]).decode("latin-1")
        self.head.clear()
        lines = text.split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.req = {"method": method, "target": target, "headers": headers}
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.left = 0 if self.chunked else int(headers.get("content-length") or 0)
        self.kept = bytearray() if self._keeps(method, target, headers) else None
        if headers.get("expect", "").lower() == "100-continue":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.chunked and self.left == 0:
            self._respond()
        return data[len(data) - rest:] if rest else data[:0]

    def _keeps(self, method: str, target: str, headers: dict[str, str]) -> bool:
        if method == "POST":
            return True  # CompleteMultipartUpload's part list (small)
        if method != "PUT" or "partNumber=" in target:
            return False
        return int(headers.get("content-length") or 0) <= KEEP and not self.chunked

    def _feed_body(self, data: memoryview) -> memoryview:
        if self.chunked:
            return self._feed_chunked(data)
        n = min(self.left, len(data))
        self._consume(data[:n])
        self.left -= n
        if self.left == 0:
            self._respond()
        return data[n:]

    def _feed_chunked(self, data: memoryview) -> memoryview:
        # states: left > 0: chunk data; left == 0: a size line; left == -1: the CRLF after
        # a chunk; left == -2: the trailer section after the last chunk
        if self.left > 0:
            n = min(self.left, len(data))
            self._consume(data[:n])
            self.left -= n
            if self.left == 0:
                self.left = -1
            return data[n:]
        raw = bytes(data[:1024])  # a size line is short; never copy a chunk's data
        self.chunk_line += raw
        end = self.chunk_line.find(b"\r\n")
        if end < 0:
            return data[len(raw):]
        line = bytes(self.chunk_line[:end])
        used = len(raw) - (len(self.chunk_line) - end - 2)
        self.chunk_line.clear()
        if self.left == -1:
            self.left = 0
        elif self.left == -2:
            if line == b"":
                self._respond()
        else:
            size = int(line.split(b";")[0], 16)
            self.left = size if size else -2
        return data[used:]

    def _consume(self, part: memoryview) -> None:
        self.stub.received += len(part)
        if self.kept is not None:
            self.kept += part
            if len(self.kept) > KEEP:
                self.kept = None

    # -- answers

    def _respond(self) -> None:
        req, self.req = self.req, None
        assert req is not None
        body = bytes(self.kept) if self.kept is not None else None
        self.kept = None
        try:
            status, headers, payload = self._answer(req, body)
        except Exception as exc:  # a malformed request: say so, keep serving
            status, headers, payload = 400, {}, str(exc).encode()
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}"]
        if "content-length" not in {k.lower() for k in headers}:
            headers["Content-Length"] = str(len(payload))
        headers.setdefault("x-amz-request-id", "stub")
        head += [f"{k}: {v}" for k, v in headers.items()]
        out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        assert self.transport is not None
        if req["method"] == "HEAD":
            self.transport.write(out)
        else:
            self.transport.write(out + payload)

    def _answer(self, req: dict[str, Any], body: bytes | None
                ) -> tuple[int, dict[str, str], bytes]:
        stub = self.stub
        method, headers = req["method"], req["headers"]
        parts = urlsplit(req["target"])
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if path == "/_stats":
            return 200, {"Content-Type": "application/json"}, json.dumps(stub.stats()).encode()
        if path == "/_reset":
            stub.reset()
            return 204, {}, b""
        bucket, _, key = path.lstrip("/").partition("/")
        names = sorted(q for q in query if not q.lower().startswith("x-amz-"))  # not the signature
        stub.calls[method + ("?" + "&".join(names) if names else "")] += 1
        if key and not stub.admit(key):
            return 503, {"Content-Type": "application/xml"}, _SLOW_DOWN  # S3 sends no Retry-After
        xml = {"Content-Type": "application/xml"}
        if method == "POST" and "uploads" in query:
            upload = f"up{stub.next_id}-{os.getpid()}"
            stub.next_id += 1
            stub.uploads[upload] = (path, 0)
            return 200, xml, (
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult>"
                f"<Bucket>{bucket}</Bucket><Key>{_esc(key)}</Key><UploadId>{upload}</UploadId>"
                "</InitiateMultipartUploadResult>").encode()
        if method == "PUT" and "uploadId" in query:
            upload = query["uploadId"][0]
            if upload not in stub.uploads:
                return 404, xml, _NOT_FOUND.replace(b"NoSuchKey", b"NoSuchUpload")
            where, size = stub.uploads[upload]
            stub.uploads[upload] = (where, size + _body_size(headers))
            return 200, {"ETag": stub.etag()}, b""
        if method == "POST" and "uploadId" in query:
            upload = query["uploadId"][0]
            if upload not in stub.uploads:
                return 404, xml, _NOT_FOUND.replace(b"NoSuchKey", b"NoSuchUpload")
            where, size = stub.uploads.pop(upload)
            etag = stub.etag()
            stub.objects[where] = _Object(size, etag, None)
            return 200, xml, (
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult>"
                f"<Location>http://stub{_esc(where)}</Location><Bucket>{bucket}</Bucket>"
                f"<Key>{_esc(key)}</Key><ETag>{_esc(etag)}</ETag>"
                "</CompleteMultipartUploadResult>").encode()
        if method == "DELETE" and "uploadId" in query:
            stub.uploads.pop(query["uploadId"][0], None)
            return 204, {}, b""
        if method == "PUT" and "x-amz-copy-source" in headers:
            source = "/" + unquote(headers["x-amz-copy-source"]).lstrip("/").split("?")[0]
            found = stub.objects.get(source)
            if found is None:
                return 404, xml, _NOT_FOUND
            etag = stub.etag()
            stub.objects[path] = _Object(found.size, etag, found.body)
            return 200, xml, (
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyObjectResult>"
                f"<LastModified>2026-11-22T00:00:00.000Z</LastModified><ETag>{_esc(etag)}</ETag>"
                "</CopyObjectResult>").encode()
        if method == "PUT":
            etag = stub.etag()
            stub.objects[path] = _Object(_body_size(headers), etag, body)
            return 200, {"ETag": etag}, b""
        if method == "DELETE":
            stub.objects.pop(path, None)
            return 204, {}, b""
        if method in ("GET", "HEAD") and key:
            return self._get(path, headers, method)
        if method == "GET" and "list-type" in query:
            return 200, xml, _listing(stub, bucket, query)
        return 400, xml, b"<Error><Code>NotImplemented</Code></Error>"

    def _get(self, path: str, headers: dict[str, str], method: str
             ) -> tuple[int, dict[str, str], bytes]:
        stub = self.stub
        found = stub.objects.get(path)
        if found is None and not stub.size:
            return 404, {"Content-Type": "application/xml"}, _NOT_FOUND
        size = found.size if found is not None else stub.size
        etag = found.etag if found is not None else '"synthetic"'
        data = found.body if found is not None else stub.synth
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
            return status, out, b""
        if data is None or len(data) < end:
            data = b"\0" * (end - start)  # an uploaded large object: its bytes were not kept
            return status, out, data
        return status, out, data[start:end]

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _body_size(headers: dict[str, str]) -> int:
    """The object's size: aws-chunked bodies say it in x-amz-decoded-content-length."""
    return int(headers.get("x-amz-decoded-content-length") or headers.get("content-length") or 0)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _listing(stub: _Stub, bucket: str, query: dict[str, list[str]]) -> bytes:
    prefix = query.get("prefix", [""])[0]
    base = f"/{bucket}/"
    items = sorted((p[len(base):], o) for p, o in stub.objects.items()
                   if p.startswith(base + prefix))
    rows = "".join(f"<Contents><Key>{_esc(k)}</Key><Size>{o.size}</Size><ETag>{_esc(o.etag)}"
                   f"</ETag><LastModified>2026-11-22T00:00:00.000Z</LastModified></Contents>"
                   for k, o in items)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>'
            f"<Name>{bucket}</Name><Prefix>{_esc(prefix)}</Prefix><KeyCount>{len(items)}"
            f"</KeyCount><IsTruncated>false</IsTruncated>{rows}</ListBucketResult>").encode()


def _serve(rate: float, burst: float, size: int) -> None:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stub = _Stub(rate, burst, size)
    server = loop.run_until_complete(
        loop.create_server(lambda: _Conn(stub), "127.0.0.1", 0, backlog=1024))
    port = server.sockets[0].getsockname()[1]
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    print(json.dumps({"port": port}), flush=True)
    loop.run_until_complete(stop)
    print(json.dumps({"stats": {k: v for k, v in stub.stats().items() if k != "counts"}}),
          flush=True)
    server.close()


class S3Stub:
    """A running stub process: ``url``, ``stats()`` while it runs, ``stop()`` at the end."""

    def __init__(self, *, rate: float = 0.0, burst: float = 0.0, size: int = 0) -> None:
        cmd = [sys.executable, "-m", "tests.benchmarks._s3stub", "--rate", str(rate),
               "--burst", str(burst or max(1.0, rate / 10)), "--size", str(size)]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError("the S3 stub did not start")
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
        self.last_stats: dict[str, Any] = {}

    def stop(self) -> dict[str, Any]:
        """Stop the stub; returns its bytes received, calls and CPU seconds."""
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


@contextlib.contextmanager
def s3_stub(**options: Any) -> Iterator[str]:
    """A stub for the duration of the block; yields its base URL."""
    stub = S3Stub(**options)
    try:
        yield stub.url
    finally:
        stub.stop()


def control(url: str, path: str) -> dict[str, Any]:
    """``GET /_stats`` (or ``POST /_reset``) of a running stub, from any process."""
    import http.client

    host = urlsplit(url).netloc
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("POST" if path == "/_reset" else "GET", path)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return json.loads(data) if data else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests per second per key prefix; 0: no limit")
    parser.add_argument("--burst", type=float, default=1.0, help="token bucket size")
    parser.add_argument("--size", type=int, default=0,
                        help="GET of a key never uploaded: an object of this size (0: 404)")
    args = parser.parse_args(argv)
    _serve(args.rate, args.burst, args.size)


if __name__ == "__main__":
    main()
