"""A scripted HTTP/1.1 server on loopback whose misbehaviour is chosen per request.

Real proxies, gateways and S3-compatible stores break HTTP in ways our honest test servers
never do. ``hostile_server()`` speaks just enough S3 (path-style GET, HEAD, PUT, DELETE,
ListObjectsV2) or AIS (object GET/HEAD/PUT, msgpack listings) to serve an in-memory
bucket honestly, and lets a test replace any answer with a script of its own:

    def script(req: Request) -> Reply | None:    # None: the honest answer
        if req.method == "GET" and req.count("GET") > 1:
            return Reply.raw(head(206, {"Content-Range": "bytes 0-9/*"}) + b"x" * 10)
        return None

    with hostile_server("s3", script) as srv:
        srv.objects["b/k"] = Object(b"...", etag='"v1"')
        cfg = srv.config()                            # aisio signs, srv ignores signatures

A ``Reply`` is a list of steps: bytes to send, pauses, and how the exchange ends (keep the
connection, close it, reset it, or hang until the client gives up). Every request is
recorded (``srv.requests``) so tests can count what the client asked for. Nothing here
waits forever: a hanging step ends when the client closes or after ``hang_limit`` seconds,
and ``stop()`` closes every socket.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import msgpack

import aisio

__all__ = ["Close", "Hang", "HostileServer", "Object", "Pause", "Reply", "Request", "Reset",
           "head", "hostile_server"]

_MAX_HEAD = 1 << 20


@dataclass
class Object:
    """One stored object: its bytes and the ETag (or AIS version) served with them."""

    data: bytes
    etag: str | None = None

    def __post_init__(self) -> None:
        if self.etag is None:
            self.etag = '"' + hashlib.md5(self.data).hexdigest() + '"'


@dataclass
class Request:
    """One request as the server read it; ``index`` counts requests since the start (from 1)."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    index: int
    listener: str
    """Which port took it: ``gateway`` (``srv.url``) or, for AIS, ``target`` (``srv.target_url``)."""
    server: HostileServer = field(repr=False)

    @property
    def range(self) -> tuple[int, int | None] | None:
        """``Range: bytes=a-b`` as (a, b + 1), ``bytes=a-`` as (a, None); None without one."""
        value = self.headers.get("range")
        if not value or not value.startswith("bytes="):
            return None
        first, _, last = value[6:].partition("-")
        return int(first), (int(last) + 1 if last else None)

    def count(self, method: str | None = None) -> int:
        """How many requests (of ``method``) came so far, this one included."""
        return sum(1 for r in self.server.requests if method in (None, r.method))


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Close:
    """End with a clean close (FIN)."""


@dataclass(frozen=True)
class Reset:
    """End with a TCP reset."""


@dataclass(frozen=True)
class Hang:
    """Send nothing more until the client closes (or the server's hang limit passes)."""


Step = bytes | Pause | Close | Reset | Hang


@dataclass
class Reply:
    """What the server does for one request: steps in order; keep-alive unless one ends it."""

    steps: Iterable[Step]
    """Any iterable: a generator makes an endless body (it ends when the client hangs up)."""

    @classmethod
    def raw(cls, *steps: Step) -> Reply:
        return cls(list(steps))

    @classmethod
    def of(cls, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"",
           *, then: Step | None = None) -> Reply:
        """A well-formed response with Content-Length (unless headers set framing)."""
        hdrs = dict(headers or {})
        if not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
            hdrs["Content-Length"] = str(len(body))
        steps: list[Step] = [head(status, hdrs) + body]
        if then is not None:
            steps.append(then)
        return cls(steps)


def head(status: int, headers: Mapping[str, str] | None = None, reason: str = "X") -> bytes:
    """A response head, exactly as given (no header is added)."""
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(*pieces: bytes) -> bytes:
    """``pieces`` in chunked framing, with the final empty chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


Script = Callable[[Request], "Reply | None"]


class HostileServer:
    """The server: honest S3 or AIS by default, a test's script wherever it says so."""

    def __init__(self, flavor: str, script: Script | None = None, *, hang_limit: float = 20.0,
                 expect_continue: bool = True, tls: ssl.SSLContext | None = None) -> None:
        if flavor not in ("s3", "ais"):
            raise ValueError(f"unknown flavor {flavor!r}")
        self.flavor = flavor
        self.script = script
        self.hang_limit = hang_limit
        self.expect_continue = expect_continue
        """Answer ``Expect: 100-continue`` with 100 before reading the body (else stay silent)."""
        self.objects: dict[str, Object] = {}
        self.requests: list[Request] = []
        self.list_page = 1000
        """Entries per listing page of the honest answer."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._listeners = {name: socket.create_server(("127.0.0.1", 0))
                           for name in ("gateway", "target")}
        self._tls = tls
        self.url = self._url("gateway")
        self.target_url = self._url("target")
        """AIS: where the gateway redirects object requests, as a cluster's proxy does."""
        self._threads = [threading.Thread(target=self._accept, args=(name,), name="hostile",
                                          daemon=True) for name in self._listeners]
        for thread in self._threads:
            thread.start()

    def _url(self, name: str) -> str:
        scheme = "https" if self._tls is not None and name == "gateway" else "http"
        return f"{scheme}://127.0.0.1:{self._listeners[name].getsockname()[1]}"

    # -- for tests --

    def config(self, **overrides: Any) -> aisio.ClientConfig:
        """A config that reaches this server (keys given, so aisio signs S3 requests itself)."""
        # throttle_timeout=1: a scripted 503 that never ends gives TransientError in seconds
        values: dict[str, Any] = {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.05,
                                  "read_timeout": 2.0, "connect_timeout": 2.0,
                                  "throttle_timeout": 1.0}
        if self.flavor == "s3":
            values["s3"] = aisio.S3Options(
                region="us-east-1", endpoint_url=self.url, force_path_style=True,
                access_key_id="AKIDHOSTILE", secret_access_key="hostile-secret-key",
                session_token="hostile-session-token")
        else:
            values["ais"] = aisio.AISOptions(endpoint=self.url)
        values.update(overrides)
        return aisio.ClientConfig(**values)

    def url_of(self, key: str, bucket: str = "b") -> str:
        return f"{self.flavor}://{bucket}/{key}"

    def put(self, key: str, data: bytes, etag: str | None = None, bucket: str = "b") -> Object:
        obj = self.objects[f"{bucket}/{key}"] = Object(data, etag)
        return obj

    def methods(self) -> list[str]:
        with self._lock:
            return [r.method for r in self.requests]

    def stop(self) -> None:
        self._stop.set()
        for listener in self._listeners.values():
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()
        for thread in self._threads:
            thread.join(5)

    # -- serving --

    def _accept(self, name: str) -> None:
        listener = self._listeners[name]
        listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, name), daemon=True).start()

    def _serve(self, conn: socket.socket, name: str) -> None:
        buf = b""
        try:
            if self._tls is not None and name == "gateway":
                conn.settimeout(5)
                conn = self._tls.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._conns.add(conn)
            conn.settimeout(0.2)
            while not self._stop.is_set():
                request, buf = self._read_request(conn, buf, name)
                if request is None:
                    return
                reply = self.script(request) if self.script is not None else None
                if reply is None:
                    reply = self._honest(request)
                if not self._play(conn, reply):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _recv(self, conn: socket.socket) -> bytes | None:
        """Some bytes, b"" at EOF, None when stopped."""
        while not self._stop.is_set():
            try:
                return conn.recv(1 << 16)
            except TimeoutError:
                continue
        return None

    def _read_request(self, conn: socket.socket, buf: bytes, listener: str
                      ) -> tuple[Request | None, bytes]:
        while b"\r\n\r\n" not in buf:
            data = self._recv(conn)
            if not data or len(buf) > _MAX_HEAD:
                return None, b""
            buf += data
        block, _, buf = buf.partition(b"\r\n\r\n")
        first, *lines = block.decode("latin-1").split("\r\n")
        method, target, _ = first.split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue" and self.expect_continue:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b""
        if "content-length" in headers:
            need = int(headers["content-length"])
            while len(buf) < need:
                data = self._recv(conn)
                if not data:
                    return None, b""
                buf += data
            body, buf = buf[:need], buf[need:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body, buf = self._read_chunked(conn, buf)
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self._lock:
            request = Request(method, target, unquote(parts.path), query, headers, body,
                              len(self.requests) + 1, listener, self)
            self.requests.append(request)
        return request, buf

    def _read_chunked(self, conn: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += self._recv(conn) or b""
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += self._recv(conn) or b""
            if size == 0:
                while not buf.startswith(b"\r\n"):  # trailers
                    line, _, buf = buf.partition(b"\r\n")
                    while b"\r\n" not in buf:
                        buf += self._recv(conn) or b""
                return body, buf[2:]
            body, buf = body + buf[:size], buf[size + 2:]

    def _play(self, conn: socket.socket, reply: Reply) -> bool:
        """Carry out a reply; False when the connection is done."""
        for step in reply.steps:
            if isinstance(step, bytes):
                conn.sendall(step)
            elif isinstance(step, Pause):
                if self._stop.wait(step.seconds):
                    return False
            elif isinstance(step, Close):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
                return False
            elif isinstance(step, Reset):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            elif isinstance(step, Hang):
                deadline = time.monotonic() + self.hang_limit
                while time.monotonic() < deadline:
                    data = self._recv(conn)
                    if not data:
                        return False
                return False
        return True

    # -- the honest answers --

    def _honest(self, req: Request) -> Reply:
        if self.flavor == "s3":
            return self._s3(req)
        return self._ais(req)

    def _object_reply(self, req: Request, name: str, extra: Mapping[str, str]) -> Reply:
        obj = self.objects.get(name)
        if obj is None:
            return Reply.of(404, {"Content-Type": "application/xml"},
                            b"<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>")
        headers = {"ETag": obj.etag or "", "Last-Modified": email.utils.formatdate(usegmt=True),
                   **extra}
        if req.method == "HEAD":
            return Reply.raw(head(200, {**headers, "Content-Length": str(len(obj.data))}))
        wanted = req.range
        if wanted is None:
            return Reply.of(200, headers, obj.data)
        first, end = wanted
        end = len(obj.data) if end is None else min(end, len(obj.data))
        if first >= len(obj.data) and len(obj.data):
            return Reply.of(416, {"Content-Range": f"bytes */{len(obj.data)}"})
        headers["Content-Range"] = f"bytes {first}-{end - 1}/{len(obj.data)}"
        return Reply.of(206, headers, obj.data[first:end])

    def _s3(self, req: Request) -> Reply:
        bucket, _, key = req.path.lstrip("/").partition("/")
        if not key:
            if req.method == "GET":
                return self._s3_list(bucket, req.query)
            return Reply.of(200)
        name = f"{bucket}/{key}"
        if req.method == "PUT":
            obj = self.objects[name] = Object(req.body)
            return Reply.of(200, {"ETag": obj.etag or ""})
        if req.method == "DELETE":
            self.objects.pop(name, None)
            return Reply.of(204)
        return self._object_reply(req, name, {})

    def _s3_list(self, bucket: str, query: Mapping[str, str]) -> Reply:
        prefix = query.get("prefix", "")
        names = sorted(k.partition("/")[2] for k in self.objects if k.startswith(bucket + "/"))
        names = [n for n in names if n.startswith(prefix)]
        start = int(query.get("continuation-token") or 0)
        page = names[start:start + self.list_page]
        more = start + len(page) < len(names)
        items = "".join(
            f"<Contents><Key>{escape(n)}</Key><Size>{len(self.objects[f'{bucket}/{n}'].data)}</Size>"
            f"<ETag>{escape(self.objects[f'{bucket}/{n}'].etag or '')}</ETag>"
            "<LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>" for n in page)
        token = f"<NextContinuationToken>{start + len(page)}</NextContinuationToken>" if more else ""
        body = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>{bucket}</Name>'
                f"<Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>"
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{token}{items}"
                "</ListBucketResult>").encode()
        return Reply.of(200, {"Content-Type": "application/xml"}, body)

    def _ais(self, req: Request) -> Reply:
        parts = req.path.split("/", 4)  # '', 'v1', 'objects'|'buckets', bucket, key
        if len(parts) >= 4 and parts[2] == "buckets":
            return self._ais_list(parts[3], req)
        if len(parts) < 5 or parts[2] != "objects":
            return Reply.of(400, {}, b'{"message":"bad request"}')
        name = f"{parts[3]}/{parts[4]}"
        if req.listener == "gateway":  # as a cluster's proxy: the target has the object
            return Reply.of(307, {"Location": self.target_url + req.target})
        if req.method == "PUT":
            obj = self.objects[name] = Object(req.body)
            return Reply.of(200, {"Ais-Version": (obj.etag or "").strip('"')})
        if req.method == "DELETE":
            self.objects.pop(name, None)
            return Reply.of(200)
        obj = self.objects.get(name)
        if obj is None:
            return Reply.of(404, {"Content-Type": "application/json"},
                            b'{"message":"object does not exist","status":404}')
        return self._object_reply(req, name, {"Ais-Version": (obj.etag or "").strip('"')})

    def ais_page(self, bucket: str, prefix: str, token: str) -> tuple[list[dict[str, Any]], str]:
        """The honest listing page at ``token``: its entries and the next token ('' at the end)."""
        names = sorted(k.partition("/")[2] for k in self.objects if k.startswith(bucket + "/"))
        names = [n for n in names if n.startswith(prefix)]
        start = int(token or 0)
        page = names[start:start + self.list_page]
        entries = [{"n": n, "s": len(self.objects[f"{bucket}/{n}"].data),
                    "v": (self.objects[f"{bucket}/{n}"].etag or "").strip('"')} for n in page]
        more = start + len(page) < len(names)
        return entries, str(start + len(page)) if more else ""

    def _ais_list(self, bucket: str, req: Request) -> Reply:
        import json

        value = json.loads(req.body or b"{}").get("value", {})
        entries, token = self.ais_page(bucket, value.get("prefix", ""),
                                       value.get("continuation_token", ""))
        return ais_list_reply(entries, token)


def ais_list_reply(entries: list[dict[str, Any]], token: str, uuid: str = "u1") -> Reply:
    """An AIS list-objects page in msgpack, as a gateway sends it."""
    body = msgpack.packb({"UUID": uuid, "ContinuationToken": token, "Entries": entries})
    return Reply.of(200, {"Content-Type": "application/msgpack"}, body)


def s3_key_url(server: HostileServer, key: str, bucket: str = "b") -> str:
    """The plain path-style URL of an S3 object on ``server``."""
    return f"{server.url}/{bucket}/{quote(key)}"


@contextlib.contextmanager
def hostile_server(flavor: str, script: Script | None = None, **kwargs: Any) -> Iterator[HostileServer]:
    server = HostileServer(flavor, script, **kwargs)
    try:
        yield server
    finally:
        server.stop()
