"""S3 and S3-compatible stores (``s3://``) through aiobotocore.

aiobotocore brings signing, the credential chain, regions and endpoints. Retries are
ours (``aisio._retry``), so botocore's own are off and one policy governs every request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .._config import ClientConfig
from .._retry import RetryPolicy, retrying
from .._types import ObjectInfo
from .._url import Location
from ..errors import (
    AccessDeniedError,
    AisioError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
    RequestError,
)

__all__ = ["S3Backend"]

T = TypeVar("T")
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchUpload"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "ExpiredToken", "InvalidToken"}


def _map_error(exc: Exception, loc: Location) -> Exception:
    """Turn botocore and aiohttp failures into aisio errors or retryable OSErrors."""
    import botocore.exceptions as bx

    url = loc.url
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(err.get("Code", ""))
        status = int(meta.get("HTTPStatusCode") or 0)
        text = str(err.get("Message") or code or status)
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
        headers = meta.get("HTTPHeaders", {})
        retry_after = None
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(headers.get("retry-after"))
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"):
            status = status or 503
        return RequestError(f"{url}: {code or 'error'} (HTTP {status}): {text}", url=url,
                            status=status, retry_after=retry_after)
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectTimeoutError, asyncio.TimeoutError)):
        return TimeoutError(f"timed out reading {url}")
    if isinstance(exc, (bx.HTTPClientError, bx.ConnectionError, bx.ResponseStreamingError,
                        bx.IncompleteReadError)):
        return ConnectionError(f"connection to the S3 endpoint failed while reading {url}: "
                               f"{type(exc).__name__}")
    if isinstance(exc, bx.NoCredentialsError):
        return AccessDeniedError(f"no AWS credentials found to access {url}", url=url)
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return exc
    if isinstance(exc, aiohttp.ClientError):
        return ConnectionError(f"connection failed while reading {url}: {type(exc).__name__}")
    return exc


async def _call(loc: Location, fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
    try:
        return await fn(**kwargs)
    except AisioError:
        raise
    except Exception as exc:
        mapped = _map_error(exc, loc)
        if mapped is exc:
            raise
        raise mapped from None


def _payload(view: memoryview) -> bytes | bytearray:
    """What botocore accepts as a Body: the caller's own object when the view covers it."""
    obj = view.obj
    if isinstance(obj, (bytes, bytearray)) and len(obj) == view.nbytes and view.contiguous:
        return obj
    return view.tobytes()


def _total_size(response: dict[str, Any]) -> int:
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total != "*":
            return int(total)
    return int(response["ContentLength"])


class _S3Body:
    """A GetObject body; reads copy from aiohttp's buffer into the caller's view."""

    def __init__(self, loc: Location, response: dict[str, Any]) -> None:
        self._loc = loc
        self._stream = response["Body"]
        self.object_size = _total_size(response)
        self.etag: str | None = response.get("ETag")

    async def readinto(self, view: memoryview) -> int:
        try:
            return int(await self._stream.readinto(view))
        except Exception as exc:
            raise _map_error(exc, self._loc) from None

    async def aclose(self) -> None:
        self._stream.close()


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
            retries={"max_attempts": 1, "mode": "standard"},
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
        self._stack = stack
        guard_sdk_loggers()
        return client

    def _params(self, loc: Location, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key, **kwargs}
        if self._config.s3.requester_pays:
            params["RequestPayer"] = "requester"
        return params

    async def _retry(self, loc: Location, fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
        return await retrying(lambda: _call(loc, fn, **kwargs), self._policy, loc.url, anyio.sleep)

    def _need_key(self, loc: Location) -> None:
        if not loc.key or loc.key.endswith("/"):
            raise InvalidURLError(f"URL names a prefix, not an object: {loc.url}", url=loc.url)

    async def head(self, loc: Location) -> ObjectInfo:
        self._need_key(loc)
        client = await self._client()
        r = await self._retry(loc, client.head_object, **self._params(loc))
        return ObjectInfo(loc.url, int(r["ContentLength"]), r.get("ETag"), r.get("LastModified"),
                          r.get("VersionId"))

    async def list(self, loc: Location, *, recursive: bool = True) -> AsyncIterator[ObjectInfo]:
        client = await self._client()
        params: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": loc.key}
        if not recursive:
            params["Delimiter"] = "/"
        if self._config.s3.requester_pays:
            params["RequestPayer"] = "requester"
        while True:
            page = await self._retry(loc, client.list_objects_v2, **params)
            for item in page.get("Contents", ()):
                yield ObjectInfo(loc.child(item["Key"]).url, int(item["Size"]), item.get("ETag"),
                                 item.get("LastModified"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    async def open_body(
        self, loc: Location, start: int, end: int | None, *, etag: str | None = None
    ) -> _S3Body:
        self._need_key(loc)
        client = await self._client()
        kwargs: dict[str, Any] = {}
        if end is not None:
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            kwargs["Range"] = f"bytes={start}-"
        if etag:
            kwargs["IfMatch"] = etag
        response = await _call(loc, client.get_object, **self._params(loc, **kwargs))
        return _S3Body(loc, response)

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
        if stack is not None:
            await stack.aclose()
