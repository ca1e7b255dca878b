"""``ais://bucket/key`` through an AIStore cluster's native HTTP API.

Control requests (HEAD, list, PUT, multipart, delete, GetBatch) use httpx; data GETs use
aisio's zero-copy HTTP/1.1 pool (``aisio._http``), which reads bodies straight into the
caller's buffer.

Object requests go to the gateway (``AISOptions.endpoint``), which answers with a 307 to
the target that stores the object. We follow that redirect ourselves, so every host keeps
its own keep-alive pool, and remember the target per object: later requests for the same
object (the range GETs of one read) go straight to it, as the SDK's ``direct`` mode does.
A target that fails, refuses or no longer has the object is forgotten and the request goes
through the gateway again. Redirects signed by the cluster are never cached.

The bearer token (``AISOptions.token``) is sent to the gateway, and to a host the gateway
itself redirects a request to (a cluster's targets are other hosts), unless that redirect
goes from https to plain http: a token never travels unencrypted once the gateway is TLS.
A redirect from anyone but the gateway (a target that sends us on) is followed without
it. Trust in a target lasts while it is cached as the object's target, not for the
client's lifetime. The token never appears in a message, repr or log.

AIS has no ``If-Match``: an ETag check compares the object's version (or checksum) in the
response headers with the expected one and raises ObjectChangedError on a difference.

Integrity: a PUT carries its CRC32C (``ais-checksum-type: crc32c``, ``ais-checksum-value``),
which the target always verifies before it stores the object; a refusal ("BAD DATA
CHECKSUM", HTTP 500) is an IntegrityError, never retried. The native multipart API has no
per-part checksum but SHA-256, which would cost more than the upload, so parts go without.
GETs carry the object's checksum (``ais-checksum-*``, the bucket's type, on ranged answers
too): the engine checks whole-object reads against it when the type is cheap to compute
(crc32c, xxhash, xxhash2; md5 and sha* are not checked). GETs of a shard's member or of
an ETL's output carry the object's checksum, not that of the bytes sent: never checked.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import io
import json
import ssl
import tarfile
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

import anyio
import anyio.to_thread
import httpx
import msgpack

from .. import _checksum, _http
from .._config import ClientConfig
from .._logging import guard_sdk_loggers
from .._retry import RetryPolicy, retrying
from .._types import ObjectInfo
from .._url import Location, redact
from ..errors import (
    AccessDeniedError,
    AisioError,
    IntegrityError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
    RequestError,
)
from ._base import HTTPBody, checked_size, new_token, unsatisfied_size, untrusted_certificate

__all__ = ["AISBackend"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEAD_PROPS = "name,size,checksum,version"
_LIST_PROPS = "name,size,checksum,version"
_LS_NO_RECURSION = 1 << 11
_LS_NO_DIRS = 1 << 13
_ENTRY_IS_DIR = 1 << 8
_MAX_CACHED_TARGETS = 65536
_MSGPACK = "application/msgpack"
_JSON_KEYS = {"name": "n", "checksum": "cs", "version": "v", "size": "s", "flags": "f"}
_BAD_CHECKSUM = "BAD DATA CHECKSUM"  # how a target says the bytes do not match their checksum


def _etag(headers: Mapping[str, str]) -> str | None:
    """What identifies one version of an object: AIS version, else checksum, else ETag."""
    version = headers.get("ais-version")
    if version:
        return version
    checksum = headers.get("ais-checksum-value")
    if checksum:
        return checksum
    etag = headers.get("etag")
    return etag.strip('"') if etag else None


def _quote_key(key: str) -> str:
    """Percent-encode a key for the URL path; '.' and '..' segments too, so no client or
    proxy folds them away (``a/../b`` is a key of its own, not ``b``)."""
    return "/".join(
        "%2E" * len(seg) if seg in (".", "..") else quote(seg, safe="") for seg in key.split("/"))


def _byte_view(view: memoryview) -> memoryview:
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


_PAGE_LIMIT = 64 * 2**20  # a list page of 10,000 entries is about 1 MiB
_HASH_OFF_LOOP = 4 * 2**20  # upload bodies at least this large are hashed in a worker thread


@dataclass
class _Resp:
    """A response of either transport (httpx or ``_http``), its body not yet read."""

    status: int
    headers: Mapping[str, str]
    stream: httpx.Response | _http.Response

    async def read(self, limit: int | None = None) -> bytes:
        """The body, or its first ``limit`` bytes (the rest is not read: the connection closes)."""
        if not isinstance(self.stream, httpx.Response):
            return await self.stream.read(limit=limit)
        if limit is None:
            return await self.stream.aread()
        pieces, got = [], 0
        async for piece in self.stream.aiter_bytes():
            pieces.append(piece)
            got += len(piece)
            if got >= limit:
                break
        return b"".join(pieces)[:limit]

    async def aclose(self) -> None:
        await self.stream.aclose()


class _EmptyBody:
    """A body with no bytes: a GET that starts exactly at the end of the object."""

    def __init__(self, object_size: int, etag: str | None) -> None:
        self.object_size = object_size
        self.etag = etag
        self.latency = 0.0

    async def readinto(self, view: memoryview) -> int:
        return 0

    async def aclose(self) -> None:
        return None


class _AISUpload:
    """An AIS multipart upload (``mpt-upload``): parts PUT by number, then completed."""

    def __init__(self, backend: AISBackend, loc: Location, upload_id: str) -> None:
        self._backend = backend
        self._loc = loc
        self._id = upload_id
        self._parts: set[int] = set()
        self._state = "open"

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        params = {"uploadId": self._id, "partNumber": str(number)}
        await self._backend._call(self._loc, "PUT", params=params, body=data)
        self._parts.add(number)

    async def complete(self) -> ObjectInfo:
        parts = [{"part-number": n, "etag": ""} for n in sorted(self._parts)]
        msg = {"action": "mpt-complete", "name": "", "value": parts}
        await self._backend._call(self._loc, "POST", params={"uploadId": self._id}, json_body=msg)
        self._state = "done"
        return await self._backend.head(self._loc)

    async def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        msg = {"action": "mpt-abort", "name": "", "value": None}
        with contextlib.suppress(ObjectNotFoundError):  # nothing left to discard
            await self._backend._call(self._loc, "DELETE", params={"uploadId": self._id},
                                      json_body=msg)


class AISBackend:
    """httpx for control requests, ``_http`` for data GETs; a keep-alive pool per host."""

    min_part_size = 5 * 2**20  # what AIS asks of parts for buckets backed by S3

    def __init__(self, config: ClientConfig, *, page_size: int = 0,
                 cache_targets: bool = True) -> None:
        self._config = config
        self._token = config.ais.token
        self._page_size = page_size
        self._cache_targets = cache_targets
        self._policy = RetryPolicy.of(config)
        endpoint = (config.ais.endpoint or "").strip().rstrip("/")
        if endpoint and "://" not in endpoint:
            endpoint = "http://" + endpoint
        self._gateway = endpoint
        # (provider, bucket, key) -> (target origin, whether it may get the token)
        self._targets: collections.OrderedDict[tuple[str, str, str], tuple[str, bool]] = (
            collections.OrderedDict())
        context = ssl.create_default_context(cafile=config.ca_bundle)
        if not config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            limits=httpx.Limits(max_connections=None,
                                max_keepalive_connections=2 * config.max_concurrency),
            verify=context,
            follow_redirects=False,
        )
        # Bounds control requests here: httpcore's own queue is slow when long.
        self._slots = anyio.Semaphore(config.max_concurrency)
        self._pool = _http.HTTPPool(
            max_connections_per_host=config.max_concurrency,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            ssl_context=context,
        )
        guard_sdk_loggers()  # httpx and httpcore log URLs (a redirect's may be signed)

    def __repr__(self) -> str:
        return f"AISBackend(endpoint={redact(self._gateway)!r})"

    # -- plumbing --

    @staticmethod
    def _origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def _scrub(self, text: str) -> str:
        text = redact(text)
        return text.replace(self._token, "***") if self._token else text

    def _need_gateway(self, loc: Location) -> str:
        if not self._gateway:
            raise InvalidURLError(
                f"no AIS endpoint for {loc.url}: set AIS_ENDPOINT or AISOptions(endpoint=...)",
                url=loc.url)
        return self._gateway

    @staticmethod
    def _need_key(loc: Location) -> None:
        if loc.is_prefix:
            raise InvalidURLError(f"URL names a prefix, not an object: {loc.url}", url=loc.url)

    @staticmethod
    def _object_path(loc: Location) -> str:
        return f"/v1/objects/{quote(loc.bucket, safe='')}/{_quote_key(loc.key)}"

    def _may_get_token(self, target: str) -> bool:
        """Whether a host the gateway redirected us to may receive the token: no https -> http."""
        return not (self._gateway.startswith("https:") and not target.startswith("https:"))

    async def _send(
        self, method: str, url: str, *, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None, body: bytes | memoryview | None = None,
        fast: bool = False, expected: int | None = None, auth: bool | None = None,
    ) -> _Resp:
        """One request, body unread; the token goes to the gateway, else only where ``auth`` says.

        ``fast``: on the zero-copy pool, whose ``expected`` is the body size the Range asks.
        """
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        hdrs = dict(headers or {})
        if auth is None:
            auth = self._origin(url) == self._origin(self._gateway)
        if self._token and auth:
            hdrs["Authorization"] = f"Bearer {self._token}"
        if fast:
            data = await self._pool.request(method, url, headers=hdrs, body=body, expected=expected)
            return _Resp(data.status, data.headers, data)
        content: Any = body
        if isinstance(body, memoryview):
            view = _byte_view(body)
            hdrs["Content-Length"] = str(len(view))

            async def once() -> AsyncIterator[memoryview]:
                yield view

            content = once() if len(view) else b""
        request = self._client.build_request(method, url, headers=hdrs, content=content)
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.ConnectError as exc:
            certificate = untrusted_certificate(exc)
            if certificate is None:
                raise
            origin = redact(self._origin(url))
            raise RequestError(f"TLS certificate of {origin} not trusted "
                               f"({certificate.verify_message}); set ClientConfig(ca_bundle=...) "
                               f"to trust its CA", url=origin) from exc
        return _Resp(resp.status_code, resp.headers, resp)

    async def _object_request(
        self, method: str, loc: Location, *, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None, body: bytes | memoryview | None = None,
        fast: bool = False, expected: int | None = None,
    ) -> _Resp:
        """An object request: to the cached target, else via the gateway's redirect."""
        gateway = self._need_gateway(loc)
        path = self._object_path(loc)
        query = {"provider": loc.provider, **(params or {})}
        key = (loc.provider, loc.bucket, loc.key)
        cached = self._targets.get(key)
        if cached is not None:
            origin, auth = cached
            try:
                resp = await self._send(method, origin + path, params=query, headers=headers,
                                        body=body, fast=fast, expected=expected, auth=auth)
            except (httpx.TransportError, OSError):
                self._targets.pop(key, None)
                raise
            if resp.status not in (401, 403, 404) and resp.status not in _REDIRECTS:
                if resp.status >= 500:
                    self._targets.pop(key, None)  # the next try asks the gateway
                return resp
            await resp.aclose()
            self._targets.pop(key, None)
        # The gateway needs no body to redirect: do not upload it twice.
        probe = b"" if method == "PUT" else body
        resp = await self._send(method, gateway + path, params=query,
                                headers=headers if probe is body else _unchecked(headers),
                                body=probe, fast=fast, expected=expected)
        target = await self._redirect_target(resp, gateway)
        if target is None:
            if probe is not body and body and resp.status < 300:
                # the gateway stored the bodyless probe itself: send it the object after all
                await resp.aclose()
                return await self._send(method, gateway + path, params=query, headers=headers,
                                        body=body, fast=fast, expected=expected)
            return resp
        auth = self._may_get_token(target)
        if self._cache_targets and "u" not in parse_qs(urlsplit(target).query):
            self._targets[key] = (self._origin(target), auth)
            if len(self._targets) > _MAX_CACHED_TARGETS:
                self._targets.popitem(last=False)
        return await self._send(method, target, headers=headers, body=body, fast=fast, auth=auth)

    async def _redirect_target(self, resp: _Resp, gateway: str) -> str | None:
        """The URL a gateway's redirect points to, or None."""
        if resp.status not in _REDIRECTS or "location" not in resp.headers:
            return None
        try:
            # a short note at most; read, the connection stays reusable (unless it is long)
            await resp.read(limit=_http.ERROR_BODY_LIMIT)
        finally:
            await resp.aclose()
        target = urljoin(gateway + "/", resp.headers["location"])
        if urlsplit(target).scheme not in ("http", "https"):
            raise RequestError("the AIS gateway redirected to a non-HTTP URL", status=resp.status)
        return target

    async def _gateway_request(
        self, method: str, loc: Location, path: str, *, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None, body: bytes | None = None,
    ) -> _Resp:
        """A request the gateway answers itself or redirects once (buckets, moss)."""
        gateway = self._need_gateway(loc)
        resp = await self._send(method, gateway + path, params=params, headers=headers, body=body)
        target = await self._redirect_target(resp, gateway)
        if target is None:
            return resp
        return await self._send(method, target, headers=headers, body=body,
                                auth=self._may_get_token(target))

    async def _error(self, resp: _Resp, loc: Location) -> AisioError:
        """The aisio error for an AIS error reply (JSON body, or Hdr-Error for HEAD)."""
        try:
            raw = resp.headers.get("hdr-error", "")
            if not raw:
                raw = (await resp.read(limit=_http.ERROR_BODY_LIMIT)).decode("utf-8", "replace")
        finally:
            await resp.aclose()
        message = raw
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            if isinstance(parsed, dict) and parsed.get("message"):
                message = str(parsed["message"])
        status = resp.status
        text = self._scrub(f"{loc.url}: {message.strip()[:500] or 'error'} (HTTP {status})")
        url = loc.url
        if _BAD_CHECKSUM in message:
            return IntegrityError(f"{text}: the bytes do not match their checksum", url=url)
        if status == 404:
            return ObjectNotFoundError(text, url=url)
        if status in (401, 403):
            return AccessDeniedError(text, url=url)
        if status == 416:
            return RangeError(text, url=url)
        if status == 412:
            return ObjectChangedError(text, url=url)
        retry_after = None
        with contextlib.suppress(ValueError):
            retry_after = float(resp.headers.get("retry-after", ""))
        return RequestError(text, url=url, status=status, retry_after=retry_after)

    async def _read(self, resp: _Resp, loc: Location, limit: int | None = None
                    ) -> tuple[Mapping[str, str], bytes]:
        """Headers and whole body of a successful reply; the mapped error otherwise.

        ``limit``: a body longer than that is a malformed reply, not read on.
        """
        if resp.status >= 300:
            raise await self._error(resp, loc)
        try:
            body = await resp.read(limit=None if limit is None else limit + 1)
        finally:
            await resp.aclose()
        if limit is not None and len(body) > limit:
            raise RequestError(f"{loc.url}: reply of the AIS cluster over {limit} bytes", url=loc.url)
        return resp.headers, body

    async def _call(
        self, loc: Location, method: str, *, params: Mapping[str, str] | None = None,
        body: bytes | memoryview | None = None, json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Mapping[str, str], bytes]:
        """A whole (unstreamed) object request, retried on transient failures."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {**(headers or {}), "Content-Type": "application/json"}

        async def attempt() -> tuple[Mapping[str, str], bytes]:
            async with self._slots:
                resp = await self._object_request(method, loc, params=params, headers=headers,
                                                  body=body)
                return await self._read(resp, loc)

        return await retrying(attempt, self._policy, loc.url, anyio.sleep)

    def _info(self, loc: Location, headers: Mapping[str, str], size: int) -> ObjectInfo:
        modified: datetime | None = None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            modified = parsedate_to_datetime(headers["last-modified"])
        return ObjectInfo(loc.url, size, _etag(headers), modified,
                          headers.get("ais-version") or None)

    # -- the Backend protocol --

    async def head(self, loc: Location) -> ObjectInfo:
        self._need_key(loc)
        headers, _ = await self._call(loc, "HEAD", params={"props": _HEAD_PROPS})
        size = headers.get("content-length", "")
        if not (size.isascii() and size.isdigit() and len(size) <= 19):
            # legal for a HEAD (say, chunked), but then nobody knows the size: never guess 0
            raise RequestError(f"{loc.url}: HEAD answered without a valid Content-Length",
                               url=loc.url)
        return self._info(loc, headers, int(size))

    async def list(self, loc: Location, *, recursive: bool = True) -> AsyncIterator[ObjectInfo]:
        flags = 0 if recursive else _LS_NO_RECURSION | _LS_NO_DIRS
        path = f"/v1/buckets/{quote(loc.bucket, safe='')}"
        headers = {"Accept": _MSGPACK, "Content-Type": "application/json"}
        uuid = token = ""
        seen: set[str] = set()
        while True:
            value = {"prefix": loc.key, "pagesize": self._page_size, "uuid": uuid,
                     "props": _LIST_PROPS, "continuation_token": token, "flags": str(flags),
                     "target": ""}
            body = json.dumps({"action": "list", "name": "", "value": value}).encode()

            async def page(body: bytes = body) -> dict[str, Any]:
                async with self._slots:
                    resp = await self._gateway_request("GET", loc, path, headers=headers,
                                                       body=body, params={"provider": loc.provider})
                    return _decode_page(loc, *await self._read(resp, loc, _PAGE_LIMIT))

            data = await retrying(page, self._policy, loc.url, anyio.sleep)
            for name, size, flag, version, checksum in data["entries"]:
                if flag & _ENTRY_IS_DIR or name.endswith("/"):
                    continue
                if not recursive and "/" in name[len(loc.key):]:
                    continue
                yield ObjectInfo(loc.child(name).url, size, version or checksum, None, version)
            uuid, token = data["uuid"], data["token"]
            if not token:
                return
            new_token(loc, seen, token)

    async def open_body(
        self, loc: Location, start: int, end: int | None, *, etag: str | None = None,
        archpath: str | None = None, etl_name: str | None = None, etl_args: str | None = None,
    ) -> HTTPBody | _EmptyBody:
        """GET bytes [start, end); ``archpath``: a file in a shard; ``etl_name``: a transform."""
        self._need_key(loc)
        if start < 0 or (end is not None and end < start):
            raise RangeError(f"invalid byte range [{start}, {end}) of {loc.url}", url=loc.url)
        if end is not None and end == start:
            info = await self.head(loc)
            self._check_etag(loc, etag, info.etag)
            if start > info.size:
                raise RangeError(f"offset {start} is past the end of {loc.url} "
                                 f"({info.size} bytes)", url=loc.url)
            return _EmptyBody(info.size, info.etag)
        headers = {}
        if end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            headers["Range"] = f"bytes={start}-"
        params = {}
        if archpath:
            params["archpath"] = archpath
        if etl_name:
            params["etl_name"] = etl_name
            if etl_args:
                params["etl_args"] = etl_args
        resp = await self._object_request("GET", loc, params=params, headers=headers, fast=True,
                                          expected=None if end is None else end - start)
        if resp.status == 416 and unsatisfied_size(resp.headers) == start:
            await resp.aclose()
            return _EmptyBody(start, None)
        if resp.status >= 300:
            raise await self._error(resp, loc)
        got = _etag(resp.headers)
        try:
            self._check_etag(loc, etag, got)
            size = checked_size(loc.url, resp.status, resp.headers, start)
        except BaseException:
            await resp.aclose()
            raise
        assert isinstance(resp.stream, _http.Response)
        checksum = None if archpath or etl_name else _checksum.from_ais(resp.headers)
        return HTTPBody(resp.stream, size, got, checksum)

    def variant(self, *, etl_name: str | None = None, archpath: str | None = None) -> _Variant:
        """This backend with every GET asking for an ETL's output or a file inside a shard."""
        return _Variant(self, etl_name, archpath)

    @staticmethod
    def _check_etag(loc: Location, expected: str | None, got: str | None) -> None:
        if expected is not None and got is not None and expected != got:
            raise ObjectChangedError(f"{loc.url} changed while it was being read", url=loc.url)

    async def put(self, loc: Location, data: memoryview) -> ObjectInfo:
        self._need_key(loc)
        data = _byte_view(data)
        algorithm = _checksum.upload_algorithm()
        if len(data) < _HASH_OFF_LOOP:
            crc = _checksum.crc32c(data) if algorithm == "crc32c" else zlib.crc32(data)
        else:
            fn = _checksum.crc32c if algorithm == "crc32c" else zlib.crc32
            crc = await anyio.to_thread.run_sync(fn, data, 0)
        sent = {} if algorithm != "crc32c" else {  # AIS checks crc32c, not zlib's CRC32
            "ais-checksum-type": "crc32c", "ais-checksum-value": _checksum.ais_value(algorithm, crc)}
        headers, _ = await self._call(loc, "PUT", body=data, headers=sent or None)
        if _etag(headers) is None:
            return await self.head(loc)
        return self._info(loc, headers, len(_byte_view(data)))

    async def create_upload(self, loc: Location) -> _AISUpload:
        self._need_key(loc)
        msg = {"action": "mpt-upload", "name": "", "value": None}
        _, reply = await self._call(loc, "POST", json_body=msg)
        upload_id = reply.decode("utf-8", "replace").strip().strip('"')
        if not upload_id:
            raise RequestError(f"{loc.url}: the cluster returned no multipart upload ID",
                               url=loc.url)
        return _AISUpload(self, loc, upload_id)

    async def delete(self, loc: Location) -> None:
        self._need_key(loc)
        await self._call(loc, "DELETE")

    async def aclose(self) -> None:
        try:
            await self._pool.aclose()
        finally:
            await self._client.aclose()

    # -- AIS-only --

    async def get_batch(self, locs: Sequence[Location],
                        archpaths: Sequence[str | None] | None = None) -> builtins.list[bytes]:
        """Many objects (or files inside shards) in one GetBatch (``/v1/ml/moss``) request.

        Results are in the order asked; a missing object or file raises ObjectNotFoundError.
        """
        if not locs:
            return []
        paths = builtins.list(archpaths) if archpaths is not None else [None] * len(locs)
        if len(paths) != len(locs):
            raise ValueError("archpaths must have one entry per location")
        items = []
        for loc, archpath in zip(locs, paths, strict=True):
            self._need_key(loc)
            item = {"objname": loc.key, "bucket": loc.bucket, "provider": loc.provider}
            if archpath:
                item["archpath"] = archpath
            items.append(item)
        body = json.dumps({"in": items, "mime": ".tar", "coer": False, "onob": False,
                           "strm": True}).encode()
        first = locs[0]

        async def attempt() -> bytes:
            async with self._slots:
                resp = await self._gateway_request(
                    "GET", first, "/v1/ml/moss", body=body,
                    headers={"Content-Type": "application/json"})
                return (await self._read(resp, first))[1]

        archive = await retrying(attempt, self._policy, first.url, anyio.sleep)
        out: builtins.list[bytes] = []
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.name.startswith("__404__/"):
                    loc = locs[len(out)] if len(out) < len(locs) else first
                    raise ObjectNotFoundError(f"{loc.url}: missing from the batch", url=loc.url)
                data = tar.extractfile(member)
                out.append(data.read() if data is not None else b"")
        if len(out) != len(locs):
            raise RequestError(f"{first.url}: the batch returned {len(out)} of {len(locs)} items",
                               url=first.url)
        return out


class _Variant:
    """An AISBackend whose GETs carry ``etl_name`` or ``archpath``; the rest is the backend's."""

    def __init__(self, inner: AISBackend, etl_name: str | None, archpath: str | None) -> None:
        self._inner, self._etl_name, self._archpath = inner, etl_name, archpath
        self.min_part_size = inner.min_part_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def open_body(self, loc: Location, start: int, end: int | None, *,
                        etag: str | None = None) -> HTTPBody | _EmptyBody:
        return await self._inner.open_body(loc, start, end, etag=etag, archpath=self._archpath,
                                           etl_name=self._etl_name)


def _unchecked(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """``headers`` without the checksum of a body that is not sent (the gateway's probe)."""
    if not headers or "ais-checksum-type" not in headers:
        return headers
    return {k: v for k, v in headers.items() if not k.startswith("ais-checksum-")}


def _decode_page(loc: Location, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """A list-objects page, msgpack or JSON: uuid, token, and (name, size, flags, version,
    checksum) per entry. A page that is not of that shape is a RequestError naming the bucket."""
    try:
        if _MSGPACK in headers.get("content-type", ""):
            raw = msgpack.unpackb(body, raw=False)
            uuid, token, items = raw.get("UUID"), raw.get("ContinuationToken"), raw.get("Entries")
        else:
            raw = json.loads(body)
            uuid, token = raw.get("uuid"), raw.get("continuation_token")
            items = [{_JSON_KEYS.get(k, k): v for k, v in e.items()} for e in raw.get("entries") or []]
        entries = [_entry(e) for e in items or ()]
        if not isinstance(uuid or "", str) or not isinstance(token or "", str):
            raise TypeError("uuid or token is not a string")
    except Exception as exc:  # msgpack's and json's errors, and every wrong shape
        kind = type(exc).__name__
        raise RequestError(f"{loc.url}: malformed listing page from the AIS cluster ({kind})",
                           url=loc.url) from None
    return {"uuid": uuid or "", "token": token or "", "entries": entries}


def _entry(e: Mapping[str, Any]) -> tuple[str, int, int, str | None, str | None]:
    """One listing entry, checked: a name, a size and flags that are what they claim."""
    name, size, flags = e.get("n", ""), e.get("s") or 0, e.get("f") or 0
    if not isinstance(name, str) or type(size) is not int or type(flags) is not int or size < 0:
        raise TypeError("entry of the wrong shape")
    return name, size, flags, str(e.get("v") or "") or None, str(e.get("cs") or "") or None
