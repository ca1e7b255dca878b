"""S3 and S3-compatible stores (``s3://``): every request signed by aisio, sent by its pool.

aisio addresses the store itself whenever the set-up is plain: a path-style endpoint (or
one at an IP address) with no path of its own, or AWS in a known region. Then every
request, data GETs and control requests alike (HEAD, ListObjectsV2, PUT, multipart,
DELETE), is a presigned URL (``_sigv4``) sent through aisio's zero-copy HTTP/1.1 pool
(``aisio._http``), with credentials from any source (``_credentials``: keys given,
the environment, or botocore's credential chain, refreshed before they expire). A
reading or writing process then never builds a botocore client: no SDK start-up, no
service models, none of the 66,000 objects each full garbage collection would trace, and
no aiohttp between the socket and the data.

Other set-ups (a custom endpoint with virtual-host buckets, an endpoint with a path, AWS
with no region known, the China partition) keep botocore's endpoint rules: ``_s3sdk``.

Retries are aisio's (``aisio._retry``): one policy governs every request.

Integrity (``aisio._checksum``): every PUT and UploadPart carries its CRC32C
(``x-amz-checksum-crc32c``), which S3 verifies before it stores anything; a multipart
upload is declared CRC32C ``FULL_OBJECT`` and completed with the whole object's CRC
(combined from the parts'), so the object ends up with a checksum a read can check. Every
GET asks for the stored checksum (``x-amz-checksum-mode: ENABLED``, signed into the URL);
a response that covers the whole object hands it to the engine, which checks the bytes.
A store that refuses a checksum answers BadDigest (or InvalidRequest about a checksum):
IntegrityError, not retried. Stores that accept the headers but keep nothing (Ceph RGW
before Squid) just return no checksum, and reads go unchecked.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import ipaddress
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from .. import _checksum, _http
from .._checksum import Checksum
from .._config import ClientConfig
from .._retry import RetryPolicy, naming, retrying
from .._types import ObjectInfo
from .._url import Location
from ..errors import InvalidURLError, ObjectNotFoundError, RequestError
from . import _s3xml
from ._base import HTTPBody, Upload, checked_size, new_token
from ._credentials import Credentials, CredentialSource
from ._s3sdk import SDK
from ._sigv4 import Signer, plain_bucket, unsigned_url

__all__ = ["S3Backend"]

_PRESIGN_SECONDS = 3600
_PRESIGN_CACHE = 10_000
_BODY_LIMIT = 16 * 2**20  # a control answer longer than this is malformed (a list page: ~300 KiB)
_CHECKSUM_MODE = {"x-amz-checksum-mode": "ENABLED"}  # answers carry the stored checksum
_HASH_OFF_LOOP = 4 * 2**20  # bodies at least this large are hashed in a worker thread


def _addressing(config: ClientConfig) -> tuple[str | None, str] | None:
    """(path-style origin, or None for AWS virtual hosts; signing region) when aisio
    addresses the store itself, None when botocore's endpoint rules are needed."""
    opts = config.s3
    if opts.endpoint_url:
        parts = urlsplit(opts.endpoint_url)
        if parts.path not in ("", "/") or not (opts.force_path_style or _is_ip(parts.hostname)):
            return None
        return _origin(opts.endpoint_url), opts.region or "us-east-1"
    if not opts.region or opts.region.startswith("cn-"):
        return None
    if opts.force_path_style:
        return f"https://s3.{opts.region}.amazonaws.com", opts.region
    return None, opts.region


def _is_ip(host: str | None) -> bool:
    """An endpoint at an IP address takes path-style buckets, as botocore's rules have it."""
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def _origin(endpoint: str) -> str:
    """scheme://host[:port] as the Host header will carry it (default port dropped)."""
    scheme, _, _, authority, _, _ = _http._split_url(endpoint.rstrip("/") + "/")
    return f"{scheme}://{authority}"


def _plain_signer(config: ClientConfig) -> Signer | None:
    """A signer for the keys given in the config when aisio addresses the store itself."""
    opts, where = config.s3, _addressing(config)
    if where is None or opts.unsigned or not (opts.access_key_id and opts.secret_access_key):
        return None
    return Signer(opts.access_key_id, opts.secret_access_key, where[1], opts.session_token)


class _Upload:
    """A multipart upload aisio drives itself: parts PUT by number, then completed."""

    def __init__(self, backend: S3Backend, loc: Location, upload_id: str, algorithm: str) -> None:
        self._backend, self._loc, self._id = backend, loc, upload_id
        self._algorithm = algorithm
        self._etags: dict[int, str] = {}
        self._crcs: dict[int, tuple[int, int]] = {}  # part number -> (CRC, length)
        self._done = False

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        query = {"partNumber": str(number), "uploadId": self._id}
        crc = await _crc(self._algorithm, data)
        response = await self._backend._control(self._loc, "PUT", query=query, body=data,
                                                headers=_checksum_headers(self._algorithm, crc))
        etag = response.headers.get("etag")
        if not etag:
            raise RequestError(f"{self._loc.url}: part {number} was answered without an ETag",
                               url=self._loc.url)
        self._etags[number] = etag
        self._crcs[number] = (crc, len(data))

    def _whole_crc(self) -> int:
        """The CRC of the whole object, combined from its parts' in order."""
        total = 0
        for number in sorted(self._crcs):
            crc, length = self._crcs[number]
            total = _checksum.combine(self._algorithm, total, crc, length)
        return total

    async def complete(self) -> ObjectInfo:
        algorithm = self._algorithm
        checksums = {n: _checksum.s3_value(algorithm, crc) for n, (crc, _) in self._crcs.items()}
        body = _s3xml.complete_body(self._etags, checksums, algorithm)
        headers = {**_checksum_headers(algorithm, self._whole_crc(), sdk=False),
                   "x-amz-checksum-type": "FULL_OBJECT"}
        tries = 0

        async def attempt() -> None:
            nonlocal tries
            tries += 1
            try:
                await self._backend._control(self._loc, "POST", query={"uploadId": self._id},
                                             body=body, once=True, complete=True, headers=headers)
            except ObjectNotFoundError:
                if tries == 1:  # NoSuchUpload on a retry: the first try did complete it
                    raise

        await retrying(attempt, self._backend._policy, self._loc.url, anyio.sleep)
        self._done = True
        return await self._backend.head(self._loc)  # RGW 16.2 answers an empty <ETag>

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with anyio.CancelScope(shield=True), contextlib.suppress(ObjectNotFoundError):
            await self._backend._control(self._loc, "DELETE", query={"uploadId": self._id})


class S3Backend:
    """Requests signed here and sent by aisio's pool, or botocore's client where it must."""

    min_part_size = 5 * 2**20

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        opts = config.s3
        self._policy = RetryPolicy.of(config)
        self._pool = _http.HTTPPool(
            max_connections_per_host=config.max_concurrency,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            ssl_context=config.ssl_context,  # made at the first https connection (20 ms of CAs)
        )
        # presigned GET URLs by (bucket, key): signing once per object, not per range
        self._signed: collections.OrderedDict[tuple[str, str], tuple[str, float]] = (
            collections.OrderedDict())
        self._secrets = tuple(s for s in (opts.secret_access_key, opts.session_token) if s)
        self._where = _addressing(config)
        self._sdk = SDK(config, self._policy, self._secrets) if self._where is None else None
        self._creds = None if opts.unsigned or self._sdk is not None else CredentialSource(opts)
        self._signer: tuple[Credentials, Signer] | None = None
        self._payer = {"x-amz-request-payer": "requester"} if opts.requester_pays else {}

    def __repr__(self) -> str:
        return f"S3Backend(region={self._config.s3.region!r}, own={self._sdk is None})"

    # -- addressing and signing --

    def _target(self, bucket: str, key: str | None) -> tuple[str, str]:
        """(scheme://host, path) of an object (or of the bucket, key None)."""
        assert self._where is not None
        origin, region = self._where
        if origin is None:
            if plain_bucket(bucket):
                return f"https://{bucket}.s3.{region}.amazonaws.com", f"/{key or ''}"
            origin = f"https://s3.{region}.amazonaws.com"  # dotted names: path-style, as botocore
        return origin, f"/{bucket}" + ("" if key is None else f"/{key}")

    async def _url(self, loc: Location, method: str, key: str | None,
                   query: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> tuple[str, float]:
        """A presigned URL for one request, and until when (monotonic) it may be reused.

        ``headers``: x-amz-* headers the request carries besides the payer's, signed with it.
        """
        base, path = self._target(loc.bucket, key)
        now = time.monotonic()
        if self._creds is None:
            return unsigned_url(base, path, query), now + _PRESIGN_SECONDS
        try:
            creds = await self._creds.get()
        except Exception as exc:  # AccessDeniedError without a URL: say which object
            raise naming(exc, loc.url) from None
        if self._signer is None or self._signer[0] is not creds:
            assert self._where is not None
            self._signer = (creds, Signer(creds.key_id, creds.secret, self._where[1], creds.token))
            opts = self._config.s3  # the secrets to scrub from server text: given and current
            known = {opts.secret_access_key, opts.session_token, creds.secret, creds.token}
            self._secrets = tuple(s for s in known if s)
        lifetime = _PRESIGN_SECONDS
        if creds.expires is not None:  # a URL signed by temporary keys dies with them
            lifetime = max(1, min(lifetime, int(creds.expires - time.time())))
        signed = {**self._payer, **headers} if headers else self._payer
        url = self._signer[1].presign(base, path, lifetime, method=method, query=query,
                                      headers=signed)
        return url, now + lifetime / 2

    async def _signed_url(self, loc: Location) -> str:
        """A presigned GET URL for the object, reused until half its lifetime has passed."""
        key = (loc.bucket, loc.key)
        hit = self._signed.get(key)
        if hit is not None and hit[1] > time.monotonic():
            self._signed.move_to_end(key)
            return hit[0]
        if self._sdk is not None:
            url = await self._sdk.presign_get(loc, _PRESIGN_SECONDS)
            until = time.monotonic() + _PRESIGN_SECONDS / 2
        else:
            url, until = await self._url(loc, "GET", loc.key, headers=_CHECKSUM_MODE)
        self._signed[key] = (url, until)
        while len(self._signed) > _PRESIGN_CACHE:
            self._signed.popitem(last=False)
        return url

    # -- requests --

    async def _control(
        self, loc: Location, method: str, *, key: str | None = "", query: Mapping[str, str] | None = None,
        body: bytes | memoryview | None = None, once: bool = False, complete: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """One control request, retried unless ``once``; errors mapped, the body read (capped).

        ``key=""`` means the object of ``loc``; None, its bucket. ``complete``: a 200 may
        carry an error document (CompleteMultipartUpload does), read it as an error.
        ``headers``: x-amz-* headers to send (and sign) besides the payer's.
        """
        sent = {**self._payer, **headers} if headers else self._payer

        async def attempt() -> _Answer:
            url, _ = await self._url(loc, method, loc.key if key == "" else key, query, headers)
            response = await self._pool.request(method, url, sent or None, body)
            try:
                data = await response.read(limit=_BODY_LIMIT + 1) if method != "HEAD" else b""
            finally:
                response.close()
            status = response.status
            if len(data) > _BODY_LIMIT:
                raise RequestError(f"{loc.url}: answer of the S3 endpoint over {_BODY_LIMIT} bytes",
                                   url=loc.url)
            if complete and status == 200 and b"<Error" in data[:512]:
                status = 500  # S3 says to retry a CompleteMultipartUpload that failed this way
            if status >= 300:
                code, message = _s3xml.error_fields(data)
                raise _s3xml.status_error(loc, status, code or str(status), message,
                                          response.headers, self._secrets)
            return _Answer(status, response.headers, data, response.content_length)

        if once:
            return await attempt()
        return await retrying(attempt, self._policy, loc.url, anyio.sleep)

    def _need_key(self, loc: Location) -> None:
        if not loc.key or loc.key.endswith("/"):
            raise InvalidURLError(f"URL names a prefix, not an object: {loc.url}", url=loc.url)

    # -- the Backend protocol --

    async def head(self, loc: Location) -> ObjectInfo:
        self._need_key(loc)
        if self._sdk is not None:
            return await self._sdk.head(loc)
        answer = await self._control(loc, "HEAD")
        headers = answer.headers
        if answer.length is None:  # the pool has parsed and checked it
            raise RequestError(f"{loc.url}: HEAD answered without a Content-Length", url=loc.url)
        modified = None
        with contextlib.suppress(TypeError, ValueError):
            modified = email.utils.parsedate_to_datetime(headers.get("last-modified", ""))
        return ObjectInfo(loc.url, answer.length, headers.get("etag"), modified,
                          headers.get("x-amz-version-id"))

    async def list(self, loc: Location, *, recursive: bool = True) -> AsyncIterator[ObjectInfo]:
        if self._sdk is not None:
            async for info in self._sdk.list(loc, recursive):
                yield info
            return
        query = {"list-type": "2", "prefix": loc.key, "encoding-type": "url"}
        if not recursive:
            query["delimiter"] = "/"
        seen: set[str] = set()
        while True:
            answer = await self._control(loc, "GET", key=None, query=query)
            items, token = _s3xml.listing(loc, answer.body)
            for item in items:
                yield item
            if token is None:
                return
            query["continuation-token"] = new_token(loc, seen, token)

    async def object_checksum(self, loc: Location, etag: str | None) -> Checksum | None:
        """The stored full-object checksum of ``loc`` (a HEAD that asks for it), for a read made
        of several ranged GETs, whose answers carry none; None if there is none to check or
        the object is no longer the version ``etag`` names."""
        if self._sdk is not None:
            return None  # botocore's presigned requests do not ask for checksums
        answer = await self._control(loc, "HEAD", headers=_CHECKSUM_MODE)
        if etag is not None and _bare(answer.headers.get("etag")) != _bare(etag):
            return None
        return _checksum.from_s3(answer.headers)

    async def open_body(
        self, loc: Location, start: int, end: int | None, *, etag: str | None = None
    ) -> HTTPBody:
        self._need_key(loc)
        headers: dict[str, str] = dict(self._payer)
        if self._sdk is None:
            headers.update(_CHECKSUM_MODE)  # signed into the URL
        if end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            headers["Range"] = f"bytes={start}-"
        if etag:
            headers["If-Match"] = etag
        response = await self._pool.request("GET", await self._signed_url(loc), headers,
                                            expected=None if end is None else end - start)
        if response.status in (200, 206):
            try:
                size = checked_size(loc.url, response.status, response.headers, start)
            except BaseException:
                await response.aclose()
                raise
            checksum = None
            if start == 0 and size >= 0 and response.content_length == size:
                checksum = _checksum.from_s3(response.headers)  # ranged answers: none, or a part's
            return HTTPBody(response, size, response.headers.get("etag"), checksum)
        try:
            body = await response.read(limit=_http.ERROR_BODY_LIMIT)
        finally:
            await response.aclose()
        if response.status == 403:
            self._signed.pop((loc.bucket, loc.key), None)  # perhaps expired credentials
        code, message = _s3xml.error_fields(body)
        raise _s3xml.status_error(loc, response.status, code or str(response.status), message,
                                  response.headers, self._secrets)

    async def put(self, loc: Location, data: memoryview) -> ObjectInfo:
        self._need_key(loc)
        if self._sdk is not None:
            return await self._sdk.put(loc, data)
        if data.format != "B" or data.ndim != 1:
            data = data.cast("B")
        algorithm = _checksum.upload_algorithm()
        headers = _checksum_headers(algorithm, await _crc(algorithm, data))
        answer = await self._control(loc, "PUT", body=data, headers=headers)
        self._signed.pop((loc.bucket, loc.key), None)
        return ObjectInfo(loc.url, len(data), answer.headers.get("etag"))

    async def create_upload(self, loc: Location) -> Upload:
        self._need_key(loc)
        if self._sdk is not None:
            return await self._sdk.create_upload(loc)
        algorithm = _checksum.upload_algorithm()
        headers = {"x-amz-checksum-algorithm": algorithm.upper(), "x-amz-checksum-type": "FULL_OBJECT"}
        answer = await self._control(loc, "POST", query={"uploads": ""}, headers=headers)
        return _Upload(self, loc, _s3xml.upload_id(loc, answer.body), algorithm)

    async def delete(self, loc: Location) -> None:
        await self.head(loc)  # S3 deletes are idempotent; say when nothing was there
        if self._sdk is not None:
            await self._sdk.delete(loc)
        else:
            await self._control(loc, "DELETE")
        self._signed.pop((loc.bucket, loc.key), None)

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._sdk is not None:
            await self._sdk.aclose()


def _bare(etag: str | None) -> str:
    """An ETag without quotes or the weak marker, for comparing two answers'."""
    return (etag or "").removeprefix("W/").strip('"')


def _checksum_headers(algorithm: str, crc: int, *, sdk: bool = True) -> dict[str, str]:
    """The headers that send ``crc`` for S3 to verify (and the SDKs' algorithm header with it)."""
    headers = {f"x-amz-checksum-{algorithm}": _checksum.s3_value(algorithm, crc)}
    if sdk:
        headers["x-amz-sdk-checksum-algorithm"] = algorithm.upper()
    return headers


async def _crc(algorithm: str, data: memoryview) -> int:
    """The CRC of an upload's body; large bodies in a worker thread, off the event loop."""
    fn = _checksum.crc32c if algorithm == "crc32c" else zlib.crc32
    if len(data) < _HASH_OFF_LOOP:
        return fn(data, 0)
    return await anyio.to_thread.run_sync(fn, data, 0)


class _Answer:
    """A control request's answer: status, headers, body (read whole, capped), Content-Length."""

    __slots__ = ("body", "headers", "length", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, length: int | None) -> None:
        self.status, self.headers, self.body, self.length = status, headers, body, length

