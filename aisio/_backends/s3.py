"""S3 and S3-compatible stores (``s3://``) through aiobotocore.

aiobotocore brings signing, the credential chain, regions and endpoints, and does every
control request. Data GETs go through aisio's zero-copy pool (``aisio._http``) with a
presigned URL per object, because aiobotocore's body reads (aiohttp, then a copy) run
at about half the speed of the socket. With explicit keys and a plain endpoint, those
URLs, and HEADs, are signed here (``_sigv4``), so a reading process never imports
botocore: its start-up, and the 66,000 objects every full garbage collection traces.
Retries are ours (``aisio._retry``), so botocore's own are off and one policy governs
every request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio

from .. import _http
from .._config import ClientConfig
from .._retry import RetryPolicy, retrying
from .._types import ObjectInfo
from .._url import Location, redact
from ..errors import (
    AccessDeniedError,
    AisioError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
    RequestError,
)
from ._base import HTTPBody, checked_size, untrusted_certificate
from ._sigv4 import Signer, plain_bucket

__all__ = ["S3Backend"]

T = TypeVar("T")
_PRESIGN_SECONDS = 3600
_PRESIGN_CACHE = 10_000
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchUpload"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "ExpiredToken", "InvalidToken"}


def _server_text(text: object, secrets: tuple[str, ...] = ()) -> str:
    """Text a server sent, safe for a message: no signatures, tokens or keys it echoed, short."""
    cleaned = redact(str(text))
    for secret in secrets:
        if secret:
            cleaned = cleaned.replace(secret, "REDACTED")
    cleaned = "".join(c if c.isprintable() else "?" for c in cleaned[:300])
    return cleaned


def _map_error(exc: Exception, loc: Location, secrets: tuple[str, ...] = ()) -> Exception:
    """Turn botocore and aiohttp failures into aisio errors or retryable OSErrors.

    Whatever the server wrote (an error's Code and Message) is scrubbed of secrets first:
    stores echo the request target, signature and token included, in their messages.
    """
    import botocore.exceptions as bx

    url = loc.url
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = _server_text(err.get("Code", ""), secrets)[:64]
        status = int(meta.get("HTTPStatusCode") or 0)
        text = _server_text(err.get("Message") or code or status, secrets)
        headers = meta.get("HTTPHeaders", {})
        if status in (301, 307) or code in ("PermanentRedirect", "AuthorizationHeaderMalformed",
                                            "IllegalLocationConstraintException"):
            region = _server_text(headers.get("x-amz-bucket-region", ""), secrets)[:32]
            if region:
                return RequestError(f"{url}: the bucket is in region {region}; set "
                                    f"S3Options(region={region!r}) (HTTP {status}: {code})",
                                    url=url, status=status)
        if code in _NOT_FOUND or status == 404:
            return ObjectNotFoundError(f"not found: {url} ({code or status})", url=url)
        if code in _DENIED or status == 403:
            return AccessDeniedError(f"access denied to {url} ({code or status}: {text})", url=url)
        if code == "InvalidRange" or status == 416:
            return RangeError(f"range not satisfiable for {url} ({text})", url=url)
        if code == "PreconditionFailed" or status == 412:
            return ObjectChangedError(f"{url} changed while it was being read", url=url)
        if code in ("InvalidBucketName", "KeyTooLongError"):
            return InvalidURLError(f"invalid URL {url} ({code}: {text})", url=url)
        retry_after = None
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(headers.get("retry-after"))
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"):
            status = status or 503
        return RequestError(f"{url}: {code or 'error'} (HTTP {status}): {text}", url=url,
                            status=status, retry_after=retry_after)
    certificate = untrusted_certificate(exc)
    if certificate is not None:
        return RequestError(f"TLS certificate of the S3 endpoint not trusted "
                            f"({certificate.verify_message}) reading {url}; set "
                            f"ClientConfig(ca_bundle=...) to trust its CA", url=url)
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectTimeoutError, asyncio.TimeoutError)):
        return TimeoutError(f"timed out reading {url}")
    if isinstance(exc, (bx.HTTPClientError, bx.ConnectionError, bx.ResponseStreamingError,
                        bx.IncompleteReadError)):
        return ConnectionError(f"connection to the S3 endpoint failed while reading {url}: "
                               f"{type(exc).__name__}")
    if isinstance(exc, bx.NoCredentialsError):
        return AccessDeniedError(f"no AWS credentials found to access {url}", url=url)
    from botocore.parsers import ResponseParserError

    if isinstance(exc, (ResponseParserError, ValueError, TypeError, KeyError, AttributeError)):
        # botocore parses the store's XML: a body that is not S3's shape fails in there
        return RequestError(f"{url}: malformed response from the S3 endpoint "
                            f"({type(exc).__name__})", url=url)
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return exc
    if isinstance(exc, aiohttp.ClientError):
        return ConnectionError(f"connection failed while reading {url}: {type(exc).__name__}")
    return exc


async def _call(loc: Location, fn: Callable[..., Awaitable[T]], secrets: tuple[str, ...],
                **kwargs: Any) -> T:
    try:
        return await fn(**kwargs)
    except AisioError:
        raise
    except Exception as exc:
        mapped = _map_error(exc, loc, secrets)
        if mapped is exc:
            raise
    # raised out here, so the SDK's error (whose text may hold what the server echoed)
    # is neither the cause nor the context of ours
    raise mapped


def _payload(view: memoryview) -> bytes | bytearray:
    """What botocore accepts as a Body: the caller's own object when the view covers it."""
    obj = view.obj
    if isinstance(obj, (bytes, bytearray)) and len(obj) == view.nbytes and view.contiguous:
        return obj
    return view.tobytes()


def _http_error(loc: Location, status: int, body: bytes, headers: Mapping[str, str],
                secrets: tuple[str, ...] = ()) -> Exception:
    """An S3 XML error response as the aisio error botocore's would map to."""
    code = _xml_field(body, "Code") or str(status)
    message = _xml_field(body, "Message") or code
    response = {"Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)}}
    import botocore.exceptions as bx

    return _map_error(bx.ClientError(response, "GetObject"), loc, secrets)


def _xml_field(body: bytes, name: str) -> str | None:
    match = re.search(rb"<" + name.encode() + rb">([^<]{0,512})</", body)
    return match.group(1).decode("utf-8", "replace") if match else None


def _plain_signer(config: ClientConfig) -> Signer | None:
    """A signer of our own when the keys are given and the endpoint is plain; else None.

    Plain: a path-style endpoint_url with no path of its own, or AWS itself in a known
    region outside China. The credential chain, profiles, requester pays, unsigned
    access and custom virtual-host endpoints stay with botocore.
    """
    opts = config.s3
    if not (opts.access_key_id and opts.secret_access_key) or opts.unsigned or opts.requester_pays:
        return None
    if opts.endpoint_url:
        if not opts.force_path_style or urlsplit(opts.endpoint_url).path not in ("", "/"):
            return None
        region = opts.region or "us-east-1"
    elif not opts.region or opts.region.startswith("cn-"):
        return None
    else:
        region = opts.region
    return Signer(opts.access_key_id, opts.secret_access_key, region, opts.session_token)


def _origin(endpoint: str) -> str:
    """scheme://host[:port] as the Host header will carry it (default port dropped)."""
    scheme, _, _, authority, _, _ = _http._split_url(endpoint.rstrip("/") + "/")
    return f"{scheme}://{authority}"


def _listed(loc: Location, page: Mapping[str, Any]) -> list[ObjectInfo]:
    """The objects of one ListObjectsV2 page; a page that is not S3's shape is a RequestError."""
    out = []
    try:
        for item in page.get("Contents", ()):
            key, size = item["Key"], item["Size"]
            if not isinstance(key, str) or type(size) is not int or size < 0:
                raise TypeError("bad entry")
            out.append(ObjectInfo(loc.child(key).url, size, item.get("ETag"),
                                  item.get("LastModified")))
    except (KeyError, TypeError, AttributeError):
        raise RequestError(f"{loc.url}: malformed listing from the S3 endpoint", url=loc.url) from None
    return out


class _S3Upload:
    """An S3 multipart upload; part ETags are collected for completion."""

    def __init__(self, backend: S3Backend, loc: Location, upload_id: str) -> None:
        self._backend, self._loc, self._id = backend, loc, upload_id
        self._etags: dict[int, str] = {}
        self._done = False

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        client = await self._backend._client()
        resp = await self._backend._retry(self._loc, client.upload_part, **self._backend._params(
            self._loc, UploadId=self._id, PartNumber=number, Body=_payload(data)))
        self._etags[number] = resp["ETag"]

    async def complete(self) -> ObjectInfo:
        client = await self._backend._client()
        parts = [{"ETag": e, "PartNumber": n} for n, e in sorted(self._etags.items())]
        await self._backend._retry(self._loc, client.complete_multipart_upload, **self._backend._params(
            self._loc, UploadId=self._id, MultipartUpload={"Parts": parts}))
        self._done = True
        return await self._backend.head(self._loc)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        client = await self._backend._client()
        with anyio.CancelScope(shield=True):
            await self._backend._retry(self._loc, client.abort_multipart_upload, **self._backend._params(
                self._loc, UploadId=self._id))


class S3Backend:
    """One aiobotocore S3 client, created on first use in the running event loop."""

    min_part_size = 5 * 2**20

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._policy = RetryPolicy(config.max_attempts, config.backoff_base, config.backoff_max)
        self._stack: contextlib.AsyncExitStack | None = None
        self._s3: Any = None
        self._lock = anyio.Lock()
        self._pool = _http.HTTPPool(
            max_connections_per_host=config.max_concurrency,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            ssl_context=config.ssl_context(),
        )
        # presigned GET URLs by (bucket, key): signing once per object, not per range
        self._signed: collections.OrderedDict[tuple[str, str], tuple[str, float]] = (
            collections.OrderedDict())
        self._signer = _plain_signer(config)
        opts = config.s3
        self._secrets = tuple(s for s in (opts.secret_access_key, opts.session_token) if s)
        # path-style origin for our own signing (None: AWS virtual hosts, per bucket)
        self._origin: str | None = None
        if opts.endpoint_url:
            self._origin = _origin(opts.endpoint_url)
        elif opts.force_path_style:
            self._origin = f"https://s3.{opts.region}.amazonaws.com"

    def _plain_url(self, loc: Location) -> tuple[str, str] | None:
        """(scheme://host, path) of the object when aisio signs it itself, else None."""
        if self._signer is None:
            return None
        if self._origin is not None:
            return self._origin, f"/{loc.bucket}/{loc.key}"
        if plain_bucket(loc.bucket):
            return f"https://{loc.bucket}.s3.{self._config.s3.region}.amazonaws.com", f"/{loc.key}"
        return None

    async def _client(self) -> Any:
        if self._s3 is not None:
            return self._s3
        async with self._lock:
            if self._s3 is None:
                self._s3 = await self._create()
        return self._s3

    async def _create(self) -> Any:
        import botocore
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        from .._logging import guard_sdk_loggers

        cfg, opts = self._config, self._config.s3
        session = AioSession(profile=opts.profile)
        extra: dict[str, Any] = {}
        if opts.unsigned:
            extra["signature_version"] = botocore.UNSIGNED
        aio_config = AioConfig(
            region_name=opts.region,
            s3={"addressing_style": "path" if opts.force_path_style else "auto"},
            retries={"total_max_attempts": 1, "mode": "standard"},  # one try: ours retry
            max_pool_connections=cfg.max_concurrency,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **extra,
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(session.create_client(
            "s3",
            region_name=opts.region or "us-east-1" if opts.endpoint_url else opts.region,
            endpoint_url=opts.endpoint_url,
            aws_access_key_id=opts.access_key_id,
            aws_secret_access_key=opts.secret_access_key,
            aws_session_token=opts.session_token,
            verify=cfg.ca_bundle or cfg.verify_tls,
            config=aio_config,
        ))
        # botocore asks for "100 Continue" before every PUT body, and aiohttp waits for it
        # with no timeout: a server that never answers would hold the upload for ever. The
        # body goes at once instead, and read_timeout bounds the wait for the answer.
        from botocore.handlers import add_expect_header

        client.meta.events.unregister("before-call.s3", add_expect_header)
        self._stack = stack
        guard_sdk_loggers()
        return client

    def _params(self, loc: Location, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key, **kwargs}
        if self._config.s3.requester_pays:
            params["RequestPayer"] = "requester"
        return params

    async def _retry(self, loc: Location, fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
        return await retrying(lambda: _call(loc, fn, self._secrets, **kwargs), self._policy, loc.url,
                              anyio.sleep)

    def _need_key(self, loc: Location) -> None:
        if not loc.key or loc.key.endswith("/"):
            raise InvalidURLError(f"URL names a prefix, not an object: {loc.url}", url=loc.url)

    async def head(self, loc: Location) -> ObjectInfo:
        self._need_key(loc)
        plain = self._plain_url(loc)
        if plain is not None:  # signed here, sent by our pool: a reader never imports botocore
            return await retrying(lambda: self._signed_head(loc, *plain), self._policy, loc.url,
                                  anyio.sleep)
        client = await self._client()
        r = await self._retry(loc, client.head_object, **self._params(loc))
        return ObjectInfo(loc.url, int(r["ContentLength"]), r.get("ETag"), r.get("LastModified"),
                          r.get("VersionId"))

    async def _signed_head(self, loc: Location, base: str, path: str) -> ObjectInfo:
        assert self._signer is not None
        url = self._signer.presign(base, path, _PRESIGN_SECONDS, method="HEAD")
        response = await self._pool.request("HEAD", url)
        response.close()  # no body: the connection is back in the pool already
        headers = response.headers
        if response.status != 200:
            raise _http_error(loc, response.status, b"", headers, self._secrets)
        if response.content_length is None:  # the pool has parsed and checked it
            raise RequestError(f"{loc.url}: HEAD answered without a Content-Length", url=loc.url)
        modified = None
        with contextlib.suppress(TypeError, ValueError):
            modified = email.utils.parsedate_to_datetime(headers.get("last-modified"))
        return ObjectInfo(loc.url, response.content_length, headers.get("etag"), modified,
                          headers.get("x-amz-version-id"))

    async def list(self, loc: Location, *, recursive: bool = True) -> AsyncIterator[ObjectInfo]:
        client = await self._client()
        params: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": loc.key}
        if not recursive:
            params["Delimiter"] = "/"
        if self._config.s3.requester_pays:
            params["RequestPayer"] = "requester"
        seen: set[str] = set()
        while True:
            page = await self._retry(loc, client.list_objects_v2, **params)
            for item in _listed(loc, page):
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            if token in seen:  # a server that sends us round in circles: never ends otherwise
                raise RequestError(f"{loc.url}: the listing repeated a continuation token",
                                   url=loc.url)
            seen.add(token)
            params["ContinuationToken"] = token

    async def _signed_url(self, loc: Location) -> str:
        """A presigned GET URL for the object, reused until half its lifetime has passed."""
        key = (loc.bucket, loc.key)
        now = time.monotonic()
        hit = self._signed.get(key)
        if hit is not None and hit[1] > now:
            self._signed.move_to_end(key)
            return hit[0]
        plain = self._plain_url(loc)
        if plain is not None:
            assert self._signer is not None
            url = self._signer.presign(*plain, _PRESIGN_SECONDS)
        else:
            client = await self._client()
            params: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
            if self._config.s3.requester_pays:
                params["RequestPayer"] = "requester"
            url = str(await client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=_PRESIGN_SECONDS))
        self._signed[key] = (url, now + _PRESIGN_SECONDS / 2)
        while len(self._signed) > _PRESIGN_CACHE:
            self._signed.popitem(last=False)
        return url

    async def open_body(
        self, loc: Location, start: int, end: int | None, *, etag: str | None = None
    ) -> HTTPBody:
        self._need_key(loc)
        headers: dict[str, str] = {}
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
            return HTTPBody(response, size, response.headers.get("etag"))
        try:
            body = await response.read(limit=_http.ERROR_BODY_LIMIT)
        finally:
            await response.aclose()
        if response.status == 403:
            self._signed.pop((loc.bucket, loc.key), None)  # perhaps expired credentials
        raise _http_error(loc, response.status, body, response.headers, self._secrets)

    async def put(self, loc: Location, data: memoryview) -> ObjectInfo:
        self._need_key(loc)
        client = await self._client()
        r = await self._retry(loc, client.put_object, **self._params(loc, Body=_payload(data)))
        return ObjectInfo(loc.url, len(data), r.get("ETag"))

    async def create_upload(self, loc: Location) -> _S3Upload:
        self._need_key(loc)
        client = await self._client()
        r = await self._retry(loc, client.create_multipart_upload, **self._params(loc))
        return _S3Upload(self, loc, r["UploadId"])

    async def delete(self, loc: Location) -> None:
        await self.head(loc)  # S3 deletes are idempotent; say when nothing was there
        client = await self._client()
        await self._retry(loc, client.delete_object, **self._params(loc))

    async def aclose(self) -> None:
        stack, self._stack, self._s3 = self._stack, None, None
        await self._pool.aclose()
        if stack is not None:
            await stack.aclose()
