"""An AIStore-protocol server on loopback: a gateway that redirects to N targets.

It speaks the part of AIS's native HTTP API that clients use (``/v1/objects``,
``/v1/buckets``, ``/v1/ml/moss``, ``/v1/daemon``), close enough that the official
``aistore`` SDK works against it, so tests need no cluster. As on a real cluster the
gateway answers object requests with ``307`` to the target that owns the object (a
stable hash of provider/bucket/object) and targets serve the data. All targets share one
store: files under ``root/<provider>/<bucket>/<key>``. GET bodies go out with
``sendfile`` over HTTP/1.1 keep-alive, fast enough for throughput comparisons.

Test hooks: :meth:`LocalAIS.fail_next` and :meth:`LocalAIS.cut_next` inject errors and
truncated bodies; :meth:`LocalAIS.count` tells how many requests each node served.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import hashlib
import http.server
import io
import json
import os
import secrets
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgpack

__all__ = ["LocalAIS", "local_ais"]

Etl = Callable[[bytes, "str | None"], bytes]
"""A built-in transform: (object bytes, ``etl_args``) -> bytes sent to the client."""

_MiB = 2**20
_MAX_PAGE = 10_000  # AIS's largest list-objects page for ais:// buckets
_LS_NO_RECURSION = 1 << 11
_LS_NO_DIRS = 1 << 13
_ENTRY_IS_CACHED = 1 << 6
_ENTRY_IS_DIR = 1 << 8
_DISPLAY = {"aws": "s3", "gcp": "gs", "azure": "az"}
_PROVIDERS = {"ais": "ais", "aws": "aws", "s3": "aws", "gcp": "gcp", "gs": "gcp",
              "azure": "azure", "az": "azure", "oci": "oci", "ht": "ht"}
_BUILTIN_ETLS: dict[str, Etl] = {
    "identity": lambda data, args: data,
    "upper": lambda data, args: data.upper(),
    "append-args": lambda data, args: data + (args or "").encode(),
}


class _Fail(Exception):
    """An AIS error reply: status and message, sent as AIS's JSON error body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _cname(provider: str, bucket: str, key: str | None = None) -> str:
    """AIS's display name of a bucket or object, e.g. ``ais://b/k`` (the SDK parses it)."""
    name = f"{_DISPLAY.get(provider, provider)}://{bucket}"
    return name if key is None else f"{name}/{key}"


def _no_bucket(provider: str, bucket: str) -> _Fail:
    return _Fail(404, f'bucket "{_cname(provider, bucket)}" does not exist')


def _no_object(provider: str, bucket: str, key: str) -> _Fail:
    return _Fail(404, f"{_cname(provider, bucket, key)} does not exist")


# --------------------------------------------------------------------------- store


@dataclass
class _Meta:
    """What AIS keeps per object: size, checksum, version, access time."""

    size: int
    mtime_ns: int
    cksum: str
    version: int
    atime_ns: int


@dataclass
class _Upload:
    """A multipart upload in progress: parts are files in ``folder`` until completion."""

    provider: str
    bucket: str
    key: str
    folder: str


class _Store:
    """Objects as files under ``root/<provider>/<bucket>/<key>``; metadata in memory."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.tmp = os.path.join(root, ".tmp")  # bucket names cannot start with '.'
        os.makedirs(self.tmp, exist_ok=True)
        self._lock = threading.Lock()
        self._meta: dict[str, _Meta] = {}
        self._tars: dict[str, tuple[tuple[int, int], dict[str, tuple[int, int]]]] = {}
        self.uploads: dict[str, _Upload] = {}

    # buckets
    def bucket_dir(self, provider: str, bucket: str) -> str:
        if not bucket or bucket.startswith(".") or "/" in bucket:
            raise _Fail(400, f"invalid bucket name {bucket!r}")
        return os.path.join(self.root, provider, bucket)

    def need_bucket(self, provider: str, bucket: str) -> str:
        folder = self.bucket_dir(provider, bucket)
        if not os.path.isdir(folder):
            raise _no_bucket(provider, bucket)
        return folder

    def create_bucket(self, provider: str, bucket: str) -> bool:
        folder = self.bucket_dir(provider, bucket)
        if os.path.isdir(folder):
            return False
        os.makedirs(folder)
        return True

    def destroy_bucket(self, provider: str, bucket: str) -> None:
        folder = self.need_bucket(provider, bucket)
        with self._lock:
            for path in [p for p in self._meta if p.startswith(folder + os.sep)]:
                del self._meta[path]
        shutil.rmtree(folder)

    def buckets(self, provider: str | None) -> list[tuple[str, str]]:
        out = []
        for prov in sorted(set(_PROVIDERS.values())):
            if provider and prov != provider:
                continue
            with contextlib.suppress(FileNotFoundError):
                out += [(prov, b) for b in sorted(os.listdir(os.path.join(self.root, prov)))]
        return out

    # objects
    def path(self, provider: str, bucket: str, key: str) -> str:
        """The file of an object; 400 for names AIS (or a file system) cannot hold."""
        folder = self.need_bucket(provider, bucket)
        parts = key.split("/")
        if not key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
            raise _Fail(400, f"invalid object name {key!r}")
        return os.path.join(folder, *parts)

    def meta(self, path: str, st: os.stat_result) -> _Meta:
        """Metadata of the file at ``path``; recomputed if the file changed behind our back."""
        with self._lock:
            m = self._meta.get(path)
        if m is not None and (m.size, m.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return m
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_MiB), b""):
                digest.update(chunk)
        fresh = _Meta(st.st_size, st.st_mtime_ns, digest.hexdigest(),
                      (m.version + 1) if m else 1, time.time_ns())
        with self._lock:
            self._meta[path] = fresh
        return fresh

    def touch(self, meta: _Meta) -> None:
        meta.atime_ns = time.time_ns()

    def write(self, provider: str, bucket: str, key: str,
              chunks: Iterable[bytes | memoryview]) -> _Meta:
        """Store an object from ``chunks``: a temp file renamed into place, version bumped."""
        path = self.path(provider, bucket, key)
        digest = hashlib.md5(usedforsecurity=False)
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if os.path.isdir(path):
                    raise IsADirectoryError(path)
                os.replace(tmp, path)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                name = _cname(provider, bucket, key)
                raise _Fail(409, f"{name}: the name clashes with another object's") from exc
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        st = os.stat(path)
        with self._lock:
            old = self._meta.get(path)
            m = _Meta(st.st_size, st.st_mtime_ns, digest.hexdigest(),
                      (old.version + 1) if old else 1, time.time_ns())
            self._meta[path] = m
        return m

    def delete(self, provider: str, bucket: str, key: str) -> None:
        path = self.path(provider, bucket, key)
        try:
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _no_object(provider, bucket, key) from None
        with self._lock:
            self._meta.pop(path, None)

    def names(self, provider: str, bucket: str, prefix: str) -> list[str]:
        """All object names in a bucket that start with ``prefix``, sorted."""
        folder = self.need_bucket(provider, bucket)
        out = []
        for dirpath, _dirs, files in os.walk(folder):
            rel = os.path.relpath(dirpath, folder)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                continue
            out += [base + f for f in files if (base + f).startswith(prefix)]
        return sorted(out)

    def tar_index(self, path: str, st: os.stat_result) -> dict[str, tuple[int, int]] | None:
        """Member name -> (data offset, size) of an uncompressed tar; None if not one."""
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._tars.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with tarfile.open(path, "r:") as tar:
                index = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
        except tarfile.TarError:
            return None
        with self._lock:
            self._tars[path] = (stamp, index)
        return index


# --------------------------------------------------------------------------- servers


@dataclass
class _Fault:
    kind: str  # "status" or "cut"
    status: int = 503
    after: int = 0
    method: str | None = None


@dataclass
class _Cluster:
    """State every node shares: the store, the token, the hooks and the counters."""

    store: _Store
    token: str | None
    etls: dict[str, Etl] = field(default_factory=lambda: dict(_BUILTIN_ETLS))
    faults: list[_Fault] = field(default_factory=list)
    counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    targets: list[_Node] = field(default_factory=list)
    proxy: _Node | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, method: str) -> _Fault | None:
        with self.lock:
            for i, fault in enumerate(self.faults):
                if fault.method in (None, method):
                    return self.faults.pop(i)
        return None

    def owner(self, provider: str, bucket: str, key: str) -> _Node:
        """The target that owns an object: highest random weight of (node, name)."""
        name = f"{provider}/{bucket}/{key}".encode()

        def weight(node: _Node) -> bytes:
            return hashlib.blake2b(node.node_id.encode() + b"\x00" + name, digest_size=8).digest()

        return max(self.targets, key=weight)


class _Node(http.server.ThreadingHTTPServer):
    """One AIS node (gateway or target) on its own loopback port, served by a thread."""

    daemon_threads = True
    block_on_close = True
    request_queue_size = 1024  # bursts of new connections must not overflow it

    def __init__(self, cluster: _Cluster, node_id: str, is_proxy: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cluster = cluster
        self.node_id = node_id
        self.is_proxy = is_proxy
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"local-ais-{node_id}", daemon=True)
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hang up; loud about anything else."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handle_error(request, client_address)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def stop(self) -> None:
        """Stop accepting, drop keep-alive connections, join every handler thread."""
        self.shutdown()
        self._thread.join()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()


@dataclass
class _Req:
    """A parsed request: path items after ``/v1``, query, provider."""

    method: str
    raw_path: str
    raw_query: str
    items: list[str]
    query: dict[str, str]

    @property
    def provider(self) -> str:
        value = self.query.get("provider") or "ais"
        if value not in _PROVIDERS:
            raise _Fail(400, f"invalid provider {value!r}")
        return _PROVIDERS[value]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes one connection's requests to the gateway or target logic."""

    protocol_version = "HTTP/1.1"
    server_version = "aisio-local-ais"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300
    server: _Node

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # plumbing
    @property
    def cluster(self) -> _Cluster:
        return self.server.cluster

    def _dispatch(self, method: str) -> None:
        raw_path, _, raw_query = self.path.partition("?")
        segments = [unquote(s) for s in raw_path.split("/")]
        req = _Req(method, raw_path, raw_query, segments[2:] if segments[1:2] == ["v1"] else [],
                   dict(parse_qsl(raw_query, keep_blank_values=True)))
        node = self.server
        with self.cluster.lock:
            self.cluster.counts[(node.node_id, method)] += 1
        self._body_read = self._responded = False
        try:
            if segments[1:2] != ["v1"] or not req.items:
                raise _Fail(400, f"invalid URL path {raw_path!r}")
            self._check_token(req)
            if node.is_proxy:
                self._proxy(req)
            else:
                fault = self.cluster.take_fault(method)
                if fault is not None and fault.kind == "status":
                    raise _Fail(fault.status, f"injected failure ({fault.status})")
                self._target(req, fault)
        except _Fail as exc:
            if self._responded:  # too late for an error reply: drop the connection
                self.close_connection = True
            else:
                self._error(req, exc)
        except OSError:
            self.close_connection = True  # the client went away, or the disk failed mid-reply
        except Exception as exc:
            if self._responded:
                self.close_connection = True
            else:
                self._error(req, _Fail(500, f"local_ais bug: {type(exc).__name__}: {exc}"))

    def _check_token(self, req: _Req) -> None:
        token = self.cluster.token
        if token is None or req.items[0] == "health":
            return
        if not self.server.is_proxy and "pid" in req.query:
            return  # redirected by the gateway, which checked it (clients drop it on redirect)
        auth = self.headers.get("Authorization", "")
        if not auth:
            raise _Fail(401, "missing authorization token (Bearer)")
        if not secrets.compare_digest(auth.encode(), f"Bearer {token}".encode()):
            raise _Fail(403, "invalid token")

    def _error(self, req: _Req, exc: _Fail) -> None:
        """AIS's error reply: a JSON body (or, for HEAD, the ``Hdr-Error`` header)."""
        body = json.dumps({
            "message": exc.message, "method": req.method, "url_path": req.raw_path,
            "remote_addr": self.client_address[0], "caller": "", "node": self.server.node_id,
            "status": exc.status,
        }).encode()
        headers = {"Content-Type": "application/json", **exc.headers}
        self._drain()
        if req.method == "HEAD":
            self._reply(exc.status, b"", {**headers, "Hdr-Error": body.decode()}, length=0)
        else:
            self._reply(exc.status, body, headers)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
               *, length: int | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _chunks(self) -> Iterator[bytes]:
        """The request body, chunk by chunk (Content-Length or chunked encoding)."""
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    chunk = self.rfile.read(min(left, _MiB))
                    if not chunk:
                        raise ConnectionResetError("request body ended early")
                    left -= len(chunk)
                    yield chunk
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            chunk = self.rfile.read(min(left, _MiB))
            if not chunk:
                raise ConnectionResetError("request body ended early")
            left -= len(chunk)
            yield chunk

    def _body(self) -> bytes:
        return b"".join(self._chunks())

    def _json(self) -> dict[str, Any]:
        raw = self._body()
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise _Fail(400, f"invalid JSON request body: {exc}") from None
        if not isinstance(value, dict):
            raise _Fail(400, "request body must be a JSON object")
        return value

    def _drain(self) -> None:
        """Discard an unread request body (or close the connection if it is large)."""
        if self._body_read:
            return
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked or int(self.headers.get("Content-Length") or 0) > _MiB:
            self.close_connection = True
            self._body_read = True
            return
        for _ in self._chunks():
            pass

    # gateway
    def _proxy(self, req: _Req) -> None:
        what, store = req.items[0], self.cluster.store
        if what == "health":
            self._reply(200, b"")
        elif what == "daemon" and req.query.get("what") == "smap":
            smap = json.dumps(self._smap()).encode()
            self._reply(200, smap, {"Content-Type": "application/json"})
        elif what == "buckets":
            self._buckets(req)
        elif what == "objects" and len(req.items) >= 3:
            store.need_bucket(req.provider, req.items[1])
            self._drain()
            target = self.cluster.owner(req.provider, req.items[1], "/".join(req.items[2:]))
            self._redirect(target, req.raw_path, req.raw_query)
        elif what == "ml" and req.items[1:2] == ["moss"] and req.method == "GET":
            if len(req.items) > 3:
                raise _Fail(400, f"invalid URL path {req.raw_path!r}")
            bucket = req.items[2] if len(req.items) == 3 else ""
            if bucket:
                store.need_bucket(req.provider, bucket)
            self._drain()
            target = self.cluster.targets[secrets.randbelow(len(self.cluster.targets))]
            xid, wid = secrets.token_hex(8), secrets.token_hex(6)
            path = "/".join(["/v1/ml/moss", bucket, xid, wid, str(len(self.cluster.targets))])
            query = "&".join(q for q in (req.raw_query, f"tid={target.node_id}") if q)
            self._redirect(target, path.replace("//", "/"), query)
        else:
            raise _Fail(400, f"unsupported request {req.method} {req.raw_path!r}")

    def _redirect(self, target: _Node, path: str, query: str) -> None:
        extra = f"pid={self.server.node_id}&utm={time.time_ns()}"
        location = f"{target.url}{path}?{query + '&' if query else ''}{extra}"
        self._reply(307, b"", {"Location": location})

    def _smap(self) -> dict[str, Any]:
        def snode(node: _Node, kind: str) -> dict[str, Any]:
            port = node.url.rsplit(":", 1)[1]
            net = {"node_hostname": "127.0.0.1", "daemon_port": port, "direct_url": node.url}
            raw = hashlib.blake2b(node.node_id.encode(), digest_size=8).digest()
            return {"daemon_id": node.node_id, "daemon_type": kind, "public_net": net,
                    "intra_control_net": net, "intra_data_net": net, "flags": 0,
                    "id_digest": int.from_bytes(raw, "big")}

        assert self.cluster.proxy is not None
        proxy = snode(self.cluster.proxy, "proxy")
        return {"tmap": {t.node_id: snode(t, "target") for t in self.cluster.targets},
                "pmap": {proxy["daemon_id"]: proxy}, "proxy_si": proxy, "version": 1,
                "uuid": "local-ais", "creation_time": ""}

    def _buckets(self, req: _Req) -> None:
        store, provider = self.cluster.store, req.provider
        if len(req.items) == 1:  # list buckets
            msg = self._json()
            if req.method != "GET" or msg.get("action") not in (None, "list"):
                raise _Fail(400, f"unsupported bucket request {req.method}")
            only = provider if "provider" in req.query else None
            out = [{"name": b, "provider": p, "namespace": {"uuid": "", "name": ""}}
                   for p, b in store.buckets(only)]
            self._reply(200, json.dumps(out).encode(), {"Content-Type": "application/json"})
            return
        bucket = req.items[1]
        if req.method == "HEAD":
            store.need_bucket(provider, bucket)
            props = {"provider": provider, "versioning": {"enabled": True},
                     "checksum": {"type": "md5"}}
            self._reply(200, b"", {"Ais-Bucket-Props": json.dumps(props)})
            return
        msg = self._json()
        action = msg.get("action")
        if req.method == "POST" and action == "create-bck":
            if not store.create_bucket(provider, bucket):
                raise _Fail(409, f'bucket "{_cname(provider, bucket)}" already exists')
            self._reply(200, b"")
        elif req.method == "DELETE" and action == "destroy-bck":
            store.destroy_bucket(provider, bucket)
            self._reply(200, b"")
        elif req.method == "GET" and action == "list":
            self._list_objects(req, provider, bucket, msg.get("value") or {})
        else:
            raise _Fail(400, f"unsupported bucket action {action!r} ({req.method})")

    def _list_objects(self, req: _Req, provider: str, bucket: str, value: dict[str, Any]) -> None:
        """One page of list-objects, msgpack or JSON as the Accept header asks."""
        store = self.cluster.store
        prefix = str(value.get("prefix") or "")
        flags = int(value.get("flags") or 0)
        size = min(int(value.get("pagesize") or 0) or _MAX_PAGE, _MAX_PAGE)
        after = max(str(value.get("continuation_token") or ""), str(value.get("start_after") or ""))
        props = {p.strip() for p in str(value.get("props") or "").split(",") if p.strip()}
        props = props or {"name", "size", "checksum", "atime"}
        names = store.names(provider, bucket, prefix)
        folder = store.bucket_dir(provider, bucket)
        listing: list[tuple[str, bool]] = [(n, False) for n in names]
        if flags & _LS_NO_RECURSION:
            dirs = {prefix + n[len(prefix):].split("/", 1)[0] + "/" for n in names
                    if "/" in n[len(prefix):]}
            listing = [(n, False) for n in names if "/" not in n[len(prefix):]]
            if not flags & _LS_NO_DIRS:
                listing = sorted(listing + [(d, True) for d in dirs])
        listing = [item for item in listing if item[0] > after]
        page, more = listing[:size], len(listing) > size
        entries = []
        for name, is_dir in page:
            if is_dir:
                entries.append({"n": name, "f": _ENTRY_IS_DIR})
                continue
            path = os.path.join(folder, *name.split("/"))
            try:
                st = os.stat(path)
            except OSError:
                continue  # deleted while listing
            m = store.meta(path, st)
            entry: dict[str, Any] = {"n": name, "f": _ENTRY_IS_CACHED}
            if "size" in props and m.size:
                entry["s"] = m.size
            if "checksum" in props:
                entry["cs"] = m.cksum
            if "version" in props:
                entry["v"] = str(m.version)
            if "atime" in props:
                entry["a"] = time.strftime("%d %b %y %H:%M UTC", time.gmtime(m.atime_ns / 1e9))
            if "location" in props:
                entry["t"] = f"{self.cluster.owner(provider, bucket, name).node_id}:/local"
            if "copies" in props:
                entry["c"] = 1
            entries.append(entry)
        uuid = str(value.get("uuid") or "") or secrets.token_hex(8)
        token = page[-1][0] if more else ""
        if "application/msgpack" in self.headers.get("Accept", ""):
            body = msgpack.packb({"UUID": uuid, "ContinuationToken": token,
                                  "Entries": entries or None, "Flags": 0})
            self._reply(200, body, {"Content-Type": "application/msgpack"})
            return
        keys = {"n": "name", "cs": "checksum", "a": "atime", "v": "version", "t": "location",
                "s": "size", "c": "copies", "f": "flags"}
        out = [{keys[k]: (str(v) if k == "s" else v) for k, v in e.items()} for e in entries]
        body = json.dumps({"uuid": uuid, "continuation_token": token, "entries": out,
                           "flags": 0}).encode()
        self._reply(200, body, {"Content-Type": "application/json"})

    # target
    def _target(self, req: _Req, fault: _Fault | None) -> None:
        if req.items[0] == "health":
            self._reply(200, b"")
        elif req.items[0] == "objects" and len(req.items) >= 3:
            provider, bucket, key = req.provider, req.items[1], "/".join(req.items[2:])
            self.cluster.store.need_bucket(provider, bucket)
            handler = {"GET": self._get, "HEAD": self._head, "PUT": self._put,
                       "DELETE": self._delete, "POST": self._post}[req.method]
            handler(req, provider, bucket, key, fault)
        elif req.items[:2] == ["ml", "moss"] and req.method == "GET" and len(req.items) >= 5:
            self._moss(req, req.items[2] if len(req.items) == 6 else "")
        else:
            raise _Fail(400, f"unsupported request {req.method} {req.raw_path!r}")

    def _open(self, provider: str, bucket: str, key: str) -> tuple[io.BufferedReader, _Meta]:
        store = self.cluster.store
        path = store.path(provider, bucket, key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _no_object(provider, bucket, key) from None
        try:
            st = os.fstat(f.fileno())
            return f, store.meta(path, st)
        except BaseException:
            f.close()
            raise

    def _attrs(self, m: _Meta, *, cksum: bool = True, atime: bool = True,
               version: bool = True) -> dict[str, str]:
        out = {}
        if cksum:
            out.update({"ais-checksum-type": "md5", "ais-checksum-value": m.cksum})
        if atime:
            out["ais-atime"] = str(m.atime_ns)
        if version:
            out["ais-version"] = str(m.version)
        return out

    def _head(self, req: _Req, provider: str, bucket: str, key: str, fault: _Fault | None) -> None:
        f, m = self._open(provider, bucket, key)
        f.close()
        props = {p.strip() for p in req.query.get("props", "").split(",") if p.strip()}
        if props:  # selective HEAD (v2): only what was asked, plus size and presence
            headers = self._attrs(m, cksum="checksum" in props, atime="atime" in props,
                                  version="version" in props)
            if "last-modified" in props:
                headers["Last-Modified"] = email.utils.formatdate(m.mtime_ns / 1e9, usegmt=True)
            if "etag" in props:
                headers["ETag"] = f'"{m.cksum}"'
        else:
            headers = self._attrs(m)
            headers.update({"ais-name": key, "ais-bucket-name": bucket,
                            "ais-bucket-provider": provider, "ais-mirror-copies": "1"})
        headers["ais-present"] = "true"
        self._reply(200, b"", headers, length=m.size)

    def _get(self, req: _Req, provider: str, bucket: str, key: str, fault: _Fault | None) -> None:
        archpath, etl_name = req.query.get("archpath", ""), req.query.get("etl_name", "")
        rng = self.headers.get("Range")
        etl = None
        if etl_name:
            etl = self.cluster.etls.get(etl_name)
            if etl is None:
                raise _Fail(404, f"etl job {etl_name!r} does not exist")
        if archpath and rng:
            raise _Fail(416, f"range-read archived file {archpath!r} is not supported")
        f, m = self._open(provider, bucket, key)
        with f:
            self.cluster.store.touch(m)
            headers = self._attrs(m, cksum=not (archpath or etl))
            offset, size = 0, m.size
            data: bytes | None = None
            if archpath:
                member = self._member(f, provider, bucket, key, archpath)
                if isinstance(member, bytes):
                    data = member
                else:
                    offset, size = member
            if etl is not None:
                if data is None:
                    f.seek(offset)
                    data = f.read(size)
                data = etl(data, req.query.get("etl_args"))
            if data is not None:
                offset, size = 0, len(data)
            status, start, count = 200, 0, size
            if rng:
                start, count = self._range(rng, size, headers)
                status = 206
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(count))
            self.end_headers()
            if fault is not None and fault.kind == "cut":
                count = min(count, fault.after)
                self.close_connection = True
            if data is not None:
                self.wfile.write(data[start:start + count])
            elif count:
                self.connection.sendfile(f, offset + start, count)
            if fault is not None and fault.kind == "cut":
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

    def _range(self, value: str, size: int, headers: dict[str, str]) -> tuple[int, int]:
        """Parse one ``bytes=`` range against ``size``: (start, count), 416 if unsatisfiable."""
        unit, _, spec = value.partition("=")
        if unit.strip() != "bytes" or "," in spec or "-" not in spec:
            raise _Fail(416, f"unsupported or multi-range {value!r}")
        first, _, last = (s.strip() for s in spec.partition("-"))
        try:
            if not first:
                start = max(0, size - int(last))
                end = size - 1
            else:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
        except ValueError:
            raise _Fail(416, f"invalid range {value!r}") from None
        if start >= size or end < start:
            raise _Fail(416, f"range {value!r} not satisfiable for object size {size}",
                        {"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return start, end - start + 1

    def _member(self, f: io.BufferedReader, provider: str, bucket: str, key: str,
                archpath: str) -> tuple[int, int] | bytes:
        """Where an archived file is: (offset, size) in a plain tar, else its bytes."""
        store = self.cluster.store
        name = _cname(provider, bucket, key)
        missing = _Fail(404, f"{name}: archived file {archpath!r} does not exist")
        index = store.tar_index(f.name, os.fstat(f.fileno()))
        if index is not None:
            for name in (archpath, archpath.lstrip("/"), "./" + archpath.lstrip("/")):
                if name in index:
                    return index[name]
            raise missing
        f.seek(0)
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as zf:
                try:
                    return zf.read(archpath.lstrip("/"))
                except KeyError:
                    raise missing from None
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r:*") as tar:
                member = tar.extractfile(archpath.lstrip("/"))
                if member is None:
                    raise missing
                return member.read()
        except KeyError:
            raise missing from None
        except tarfile.TarError:
            raise _Fail(400, f"{name} is not a supported archive") from None

    def _put(self, req: _Req, provider: str, bucket: str, key: str, fault: _Fault | None) -> None:
        store = self.cluster.store
        upload_id = req.query.get("uploadId")
        if upload_id:
            upload = self._upload(upload_id, provider, bucket, key)
            number = int(req.query.get("partNumber") or 0)
            if number < 1:
                raise _Fail(400, f"invalid part number {req.query.get('partNumber')!r}")
            digest = hashlib.md5(usedforsecurity=False)
            fd, tmp = tempfile.mkstemp(dir=store.tmp)
            with os.fdopen(fd, "wb") as out:
                for chunk in self._chunks():
                    digest.update(chunk)
                    out.write(chunk)
            os.replace(tmp, os.path.join(upload.folder, f"{number:06d}"))
            self._reply(200, b"", {"ETag": f'"{digest.hexdigest()}"'})
            return
        if req.query.get("append_type") or req.query.get("object_to"):
            raise _Fail(400, "append and copy are not supported by local_ais")
        m = store.write(provider, bucket, key, self._chunks())
        self._reply(200, b"", self._attrs(m, atime=False))

    def _delete(self, req: _Req, provider: str, bucket: str, key: str,
                fault: _Fault | None) -> None:
        upload_id = req.query.get("uploadId")
        self._drain()
        if upload_id:  # mpt-abort
            upload = self._upload(upload_id, provider, bucket, key)
            with self.cluster.lock:
                self.cluster.store.uploads.pop(upload_id, None)
            shutil.rmtree(upload.folder, ignore_errors=True)
        else:
            self.cluster.store.delete(provider, bucket, key)
        self._reply(200, b"")

    def _post(self, req: _Req, provider: str, bucket: str, key: str, fault: _Fault | None) -> None:
        store = self.cluster.store
        msg = self._json()
        action = msg.get("action")
        if action == "mpt-upload":
            store.path(provider, bucket, key)  # validates the name
            upload_id = secrets.token_hex(12)
            folder = os.path.join(store.tmp, "mpt-" + upload_id)
            os.makedirs(folder)
            with self.cluster.lock:
                store.uploads[upload_id] = _Upload(provider, bucket, key, folder)
            self._reply(200, upload_id.encode(), {"Content-Type": "text/plain"})
        elif action == "mpt-complete":
            upload_id = req.query.get("uploadId", "")
            upload = self._upload(upload_id, provider, bucket, key)
            wanted = sorted({int(p["part-number"]) for p in msg.get("value") or []})
            files = [os.path.join(upload.folder, f"{n:06d}") for n in wanted]
            if not files or not all(os.path.exists(p) for p in files):
                name = _cname(provider, bucket, key)
                raise _Fail(400, f"{name}: upload {upload_id}: missing parts")

            def chunks() -> Iterator[bytes]:
                for path in files:
                    with open(path, "rb") as part:
                        yield from iter(lambda: part.read(_MiB), b"")

            m = store.write(provider, bucket, key, chunks())
            with self.cluster.lock:
                store.uploads.pop(upload_id, None)
            shutil.rmtree(upload.folder, ignore_errors=True)
            self._reply(200, b"", self._attrs(m, atime=False))
        elif action == "mpt-abort":
            self._delete(req, provider, bucket, key, fault)
        else:
            raise _Fail(400, f"unsupported object action {action!r}")

    def _upload(self, upload_id: str, provider: str, bucket: str, key: str) -> _Upload:
        with self.cluster.lock:
            upload = self.cluster.store.uploads.get(upload_id)
        if upload is None or (upload.provider, upload.bucket, upload.key) != (
                provider, bucket, key):
            name = _cname(provider, bucket, key)
            raise _Fail(404, f"{name}: upload {upload_id!r} does not exist")
        return upload

    def _moss(self, req: _Req, bucket: str) -> None:
        """GetBatch: many objects (or archived files, or ranges) in one TAR."""
        msg = self._json()
        fmt = str(msg.get("mime") or ".tar")
        if fmt not in (".tar", "tar"):
            raise _Fail(400, f"local_ais supports only TAR output, not {fmt!r}")
        only_name, keep_going = bool(msg.get("onob")), bool(msg.get("coer"))
        buf = io.BytesIO()
        outs = []
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for item in msg.get("in") or []:
                out, name, data = self._moss_item(req, bucket, item, only_name, keep_going)
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
                outs.append(out)
        archive = buf.getvalue()
        if msg.get("strm"):
            self._reply(200, archive, {"Content-Type": "application/x-tar"})
            return
        boundary = secrets.token_hex(16)
        meta = json.dumps({"uuid": secrets.token_hex(8), "out": outs}).encode()
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n".encode(),
            meta, b"\r\n",
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; "
            f"filename=\"moss.tar\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            archive, f"\r\n--{boundary}--\r\n".encode(),
        ])
        self._reply(200, body, {"Content-Type": f"multipart/mixed; boundary={boundary}"})

    def _moss_item(self, req: _Req, bucket: str, item: dict[str, Any], only_name: bool,
                   keep_going: bool) -> tuple[dict[str, Any], str, bytes]:
        if item.get("uname"):
            raise _Fail(400, "local_ais does not support 'uname' in GetBatch")
        key = str(item.get("objname") or "")
        bck = str(item.get("bucket") or bucket)
        raw_provider = str(item.get("provider") or req.query.get("provider") or "ais")
        provider = _PROVIDERS.get(raw_provider, raw_provider)
        archpath = str(item.get("archpath") or "")
        start, length = int(item.get("start") or 0), int(item.get("length") or 0)
        name = key if only_name else f"{bck}/{key}"
        if archpath:
            name += archpath if archpath.startswith("/") else "/" + archpath
        out: dict[str, Any] = {"objname": key, "bucket": bck, "provider": raw_provider}
        if archpath:
            out["archpath"] = archpath
        if item.get("opaque"):
            out["opaque"] = item["opaque"]
        try:
            f, _m = self._open(provider, bck, key)
            with f:
                if archpath:
                    member = self._member(f, provider, bck, key, archpath)
                    if not isinstance(member, bytes):
                        f.seek(member[0])
                        member = f.read(member[1])
                    data = member
                else:
                    data = f.read()
            if start or length:
                if start > len(data) or (length > 0 and start + length > len(data)):
                    raise _Fail(416, f"{_cname(provider, bck, key)}: range past the end")
                data = data[start:] if length in (0, -1) else data[start:start + length]
        except _Fail as exc:
            if not keep_going:
                raise
            out.update({"err_msg": exc.message, "size": 0})
            return out, "__404__/" + name, b""
        out["size"] = len(data)
        return out, name, data


# --------------------------------------------------------------------------- public


class LocalAIS:
    """A running gateway and targets; ``endpoint`` is what clients connect to.

    ``token`` makes the gateway demand ``Authorization: Bearer <token>`` (401 without,
    403 when wrong). Targets accept requests the gateway redirected (they carry its
    ``pid``), as AIS targets do, and otherwise want the token as well.
    """

    def __init__(self, targets: int = 2, root: str | None = None, *,
                 token: str | None = None) -> None:
        if targets < 1:
            raise ValueError(f"need at least one target, got {targets}")
        self._own_root = root is None
        self.root = tempfile.mkdtemp(prefix="local-ais-") if root is None else os.path.abspath(root)
        self.token = token
        self._cluster = _Cluster(_Store(self.root), token)
        nodes: list[_Node] = []
        try:
            for i in range(targets):
                nodes.append(_Node(self._cluster, f"t{i}", is_proxy=False))
            self._cluster.targets = list(nodes)
            self._cluster.proxy = _Node(self._cluster, "p0", is_proxy=True)
        except BaseException:
            for node in nodes:
                node.stop()
            raise
        self.endpoint = self._cluster.proxy.url
        self.target_urls = [t.url for t in self._cluster.targets]
        self._closed = False

    def __repr__(self) -> str:
        return f"LocalAIS(endpoint={self.endpoint!r}, targets={len(self.target_urls)})"

    def __enter__(self) -> LocalAIS:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop every node and delete the store if it was a temporary directory."""
        if self._closed:
            return
        self._closed = True
        assert self._cluster.proxy is not None
        for node in [self._cluster.proxy, *self._cluster.targets]:
            node.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_bucket(self, name: str, provider: str = "ais") -> None:
        """Create a bucket (any provider: remote buckets are just folders here)."""
        self._cluster.store.create_bucket(_PROVIDERS[provider], name)

    def destroy_bucket(self, name: str, provider: str = "ais") -> None:
        """Remove a bucket and everything in it."""
        self._cluster.store.destroy_bucket(_PROVIDERS[provider], name)

    def put_object(self, bucket: str, key: str, data: bytes | Iterable[bytes],
                   provider: str = "ais") -> None:
        """Store an object without going through HTTP (fast set-up of large test data)."""
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        self._cluster.store.write(_PROVIDERS[provider], bucket, key, chunks)

    def object_path(self, bucket: str, key: str, provider: str = "ais") -> str:
        """The file that holds an object."""
        return self._cluster.store.path(_PROVIDERS[provider], bucket, key)

    def add_etl(self, name: str, transform: Etl) -> None:
        """Register an inline ETL usable as ``?etl_name=name`` on GET."""
        self._cluster.etls[name] = transform

    def fail_next(self, count: int = 1, status: int = 503, *, method: str | None = None) -> None:
        """The next ``count`` target requests (of ``method``, if given) fail with ``status``."""
        with self._cluster.lock:
            self._cluster.faults += [_Fault("status", status=status, method=method)] * count

    def cut_next(self, count: int = 1, after: int = 0) -> None:
        """The next ``count`` target GETs send ``after`` body bytes, then drop the connection."""
        with self._cluster.lock:
            self._cluster.faults += [_Fault("cut", after=after, method="GET")] * count

    def count(self, node: str | None = None, method: str | None = None) -> int:
        """Requests served so far by ``node`` ("proxy", "targets", "t0", ...) and ``method``."""
        with self._cluster.lock:
            items = list(self._cluster.counts.items())
        total = 0
        for (node_id, meth), n in items:
            if method is not None and meth != method:
                continue
            if node is None or node == node_id or (node == "proxy" and node_id == "p0") or (
                    node == "targets" and node_id.startswith("t")):
                total += n
        return total


@contextlib.contextmanager
def local_ais(targets: int = 2, root: str | None = None, *,
              token: str | None = None) -> Iterator[LocalAIS]:
    """Run an AIS-protocol gateway and ``targets`` targets on loopback for the block."""
    server = LocalAIS(targets, root, token=token)
    try:
        yield server
    finally:
        server.close()
