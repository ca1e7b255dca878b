"""S3 through aiobotocore, for the set-ups aisio does not address itself.

A custom endpoint with virtual-host buckets, an endpoint with a path of its own, AWS with
no region known, and the China partition follow botocore's endpoint rules, so their
control requests and the presigned URLs of their data GETs come from botocore. Every
other set-up (``s3.py``) never imports it. botocore's retries are off: aisio's policy
governs every request.
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
from ..errors import AccessDeniedError, AisioError, RequestError
from ._base import new_token, untrusted_certificate
from ._s3xml import status_error

__all__ = ["SDK"]

T = TypeVar("T")


def map_error(exc: Exception, loc: Location, secrets: tuple[str, ...] = ()) -> Exception:
    """Turn botocore and aiohttp failures into aisio errors or retryable OSErrors."""
    import botocore.exceptions as bx

    url = loc.url
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        return status_error(loc, int(meta.get("HTTPStatusCode") or 0), str(err.get("Code", "")),
                            str(err.get("Message") or ""), meta.get("HTTPHeaders", {}), secrets)
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
        mapped = map_error(exc, loc, secrets)
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


class _Upload:
    """A multipart upload through botocore; part ETags are collected for completion."""

    def __init__(self, sdk: SDK, loc: Location, upload_id: str) -> None:
        self._sdk, self._loc, self._id = sdk, loc, upload_id
        self._etags: dict[int, str] = {}
        self._done = False

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        resp = await self._sdk.call(self._loc, "upload_part", UploadId=self._id, PartNumber=number,
                                    Body=_payload(data))
        self._etags[number] = resp["ETag"]

    async def complete(self) -> ObjectInfo:
        parts = [{"ETag": e, "PartNumber": n} for n, e in sorted(self._etags.items())]
        await self._sdk.call(self._loc, "complete_multipart_upload", UploadId=self._id,
                             MultipartUpload={"Parts": parts})
        self._done = True
        return await self._sdk.head(self._loc)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with anyio.CancelScope(shield=True):
            await self._sdk.call(self._loc, "abort_multipart_upload", UploadId=self._id)


class SDK:
    """One aiobotocore S3 client, created on first use in the running event loop."""

    def __init__(self, config: ClientConfig, policy: RetryPolicy, secrets: tuple[str, ...]) -> None:
        self._config, self._policy, self._secrets = config, policy, secrets
        self._stack: contextlib.AsyncExitStack | None = None
        self._s3: Any = None
        self._lock = anyio.Lock()

    async def client(self) -> Any:
        if self._s3 is None:
            async with self._lock:
                if self._s3 is None:
                    self._s3 = await self._create()
        return self._s3

    async def _create(self) -> Any:
        import botocore
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession
        from botocore.handlers import add_expect_header

        from .._logging import guard_sdk_loggers

        cfg, opts = self._config, self._config.s3
        session = AioSession(profile=opts.profile)
        # SigV4 always: botocore's default for some regions presigns GETs with SigV2,
        # which SigV4-only stores refuse
        extra: dict[str, Any] = {"signature_version": botocore.UNSIGNED if opts.unsigned else "s3v4"}
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
        client.meta.events.unregister("before-call.s3", add_expect_header)
        self._stack = stack
        guard_sdk_loggers()
        return client

    def _params(self, loc: Location, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": loc.bucket, **kwargs}
        if loc.key:
            params["Key"] = loc.key
        if self._config.s3.requester_pays:
            params["RequestPayer"] = "requester"
        return params

    async def call(self, loc: Location, operation: str, **kwargs: Any) -> Any:
        """One S3 operation on ``loc``, retried by aisio's policy, its errors mapped."""
        client = await self.client()
        fn = getattr(client, operation)
        params = self._params(loc, **kwargs)
        return await retrying(lambda: _call(loc, fn, self._secrets, **params), self._policy,
                              loc.url, anyio.sleep)

    async def head(self, loc: Location) -> ObjectInfo:
        r = await self.call(loc, "head_object")
        return ObjectInfo(loc.url, int(r["ContentLength"]), r.get("ETag"), r.get("LastModified"),
                          r.get("VersionId"))

    async def list(self, loc: Location, recursive: bool) -> AsyncIterator[ObjectInfo]:
        params: dict[str, Any] = {"Prefix": loc.key}
        if not recursive:
            params["Delimiter"] = "/"
        seen: set[str] = set()
        whole = Location(loc.scheme, loc.bucket, "", loc.provider)
        while True:
            page = await self.call(whole, "list_objects_v2", **params)
            try:
                for item in page.get("Contents", ()):
                    key, size = item["Key"], item["Size"]
                    if not isinstance(key, str) or type(size) is not int or size < 0:
                        raise TypeError("bad entry")
                    yield ObjectInfo(loc.child(key).url, size, item.get("ETag"),
                                     item.get("LastModified"))
            except (KeyError, TypeError, AttributeError):
                raise RequestError(f"{loc.url}: malformed listing from the S3 endpoint",
                                   url=loc.url) from None
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = new_token(loc, seen, token)

    async def presign_get(self, loc: Location, expires: int) -> str:
        client = await self.client()
        params: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
        if self._config.s3.requester_pays:
            params["RequestPayer"] = "requester"
        return str(await client.generate_presigned_url("get_object", Params=params,
                                                       ExpiresIn=expires))

    async def put(self, loc: Location, data: memoryview) -> ObjectInfo:
        r = await self.call(loc, "put_object", Body=_payload(data))
        return ObjectInfo(loc.url, len(data), r.get("ETag"))

    async def create_upload(self, loc: Location) -> _Upload:
        r = await self.call(loc, "create_multipart_upload")
        return _Upload(self, loc, r["UploadId"])

    async def delete(self, loc: Location) -> None:
        await self.call(loc, "delete_object")

    async def aclose(self) -> None:
        stack, self._stack, self._s3 = self._stack, None, None
        if stack is not None:
            await stack.aclose()

