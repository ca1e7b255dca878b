"""The S3 wire format aisio speaks itself: XML bodies, and error codes mapped to aisio's errors.

Every text that comes from the server is scrubbed before it enters an exception: stores
echo the request target (signature and session token included) in their messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .._types import ObjectInfo
from .._url import Location, redact
from ..errors import (
    AccessDeniedError,
    IntegrityError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
    RequestError,
)

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

__all__ = ["complete_body", "listing", "parse", "server_text", "status_error", "upload_id"]

NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchUpload"}
DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
          "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
CHECKSUM_REFUSED = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch",
                    "XAmzContentSHA256Mismatch"}
"""What S3 (and its kin) answer when a body does not match the checksum sent with it."""
THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "TooManyRequests",
             "RequestLimitExceeded"}


def server_text(text: object, secrets: Iterable[str] = ()) -> str:
    """Text a server sent, safe for a message: no signature, token or key it echoed; short."""
    cleaned = redact(str(text))
    for secret in secrets:
        if secret:
            cleaned = cleaned.replace(secret, "REDACTED")
    return "".join(c if c.isprintable() else "?" for c in cleaned[:300])


def status_error(loc: Location, status: int, code: str, message: str, headers: Mapping[str, str],
                 secrets: Iterable[str] = ()) -> Exception:
    """The aisio error for an S3 error answer (status, ``<Code>``, ``<Message>``, headers)."""
    url = loc.url
    code = server_text(code, secrets)[:64]
    text = server_text(message or code or status, secrets)
    lower = {k.lower(): v for k, v in headers.items()}
    if status in (301, 307) or code in ("PermanentRedirect", "AuthorizationHeaderMalformed",
                                        "IllegalLocationConstraintException"):
        region = server_text(lower.get("x-amz-bucket-region", ""), secrets)[:32]
        if region:
            return RequestError(f"{url}: the bucket is in region {region}; set "
                                f"S3Options(region={region!r}) (HTTP {status}: {code})",
                                url=url, status=status)
    if code in NOT_FOUND or status == 404:
        return ObjectNotFoundError(f"not found: {url} ({code or status})", url=url)
    if code in DENIED or status == 403:
        return AccessDeniedError(f"access denied to {url} ({code or status}: {text})", url=url)
    if code == "InvalidRange" or status == 416:
        return RangeError(f"range not satisfiable for {url} ({text})", url=url)
    if code == "PreconditionFailed" or status == 412:
        return ObjectChangedError(f"{url} changed while it was being read", url=url)
    if code in CHECKSUM_REFUSED or (code == "InvalidRequest" and "checksum" in text.lower()):
        return IntegrityError(f"{url}: the store refused the upload's checksum ({code}: {text}); "
                              "the bytes were corrupted on their way to it", url=url)
    if code in ("InvalidBucketName", "KeyTooLongError"):
        return InvalidURLError(f"invalid URL {url} ({code}: {text})", url=url)
    retry_after = None
    with contextlib.suppress(TypeError, ValueError):
        retry_after = float(lower.get("retry-after", ""))
    if code in THROTTLED:
        status = status if status in (429, 503) else 503
    return RequestError(f"{url}: {code or 'error'} (HTTP {status}): {text}", url=url,
                        status=status, retry_after=retry_after)


def parse(loc: Location, body: bytes) -> ET.Element:
    """The XML document of an S3 answer, namespaces dropped; RequestError if it is none."""
    import xml.etree.ElementTree as ET  # on first use: a reading process may never need it

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise RequestError(f"{loc.url}: malformed XML from the S3 endpoint", url=loc.url) from None
    for node in root.iter():
        if "}" in node.tag:
            node.tag = node.tag.rsplit("}", 1)[1]
    return root


def error_fields(body: bytes) -> tuple[str, str]:
    """``<Code>`` and ``<Message>`` of an error body ('' where there is none)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    fields = {node.tag.rsplit("}", 1)[-1]: node.text or "" for node in root.iter()}
    return fields.get("Code", ""), fields.get("Message", "")


def listing(loc: Location, body: bytes) -> tuple[list[ObjectInfo], str | None]:
    """The objects of one ListObjectsV2 page and the next continuation token (None: last page)."""
    root = parse(loc, body)
    if root.tag == "Error":
        raise RequestError(f"{loc.url}: the S3 endpoint answered a listing with an error",
                           url=loc.url)
    if root.tag != "ListBucketResult":
        raise RequestError(f"{loc.url}: malformed listing from the S3 endpoint", url=loc.url)
    encoded = (root.findtext("EncodingType") or "") == "url"
    out = []
    for item in root.iterfind("Contents"):
        key, size = item.findtext("Key"), (item.findtext("Size") or "").strip()
        if key is None or not (size.isascii() and size.isdigit() and len(size) <= 19):
            raise RequestError(f"{loc.url}: malformed listing entry from the S3 endpoint",
                               url=loc.url)
        if encoded:
            key = unquote(key)
        modified = None
        with contextlib.suppress(TypeError, ValueError):
            modified = datetime.fromisoformat(item.findtext("LastModified") or "")
        out.append(ObjectInfo(loc.child(key).url, int(size), item.findtext("ETag"), modified))
    token = root.findtext("NextContinuationToken") or None
    if (root.findtext("IsTruncated") or "").strip().lower() != "true":
        token = None
    elif token is None:
        raise RequestError(f"{loc.url}: a truncated listing without a continuation token",
                           url=loc.url)
    return out, token


def upload_id(loc: Location, body: bytes) -> str:
    """The UploadId of an InitiateMultipartUpload answer."""
    found = (parse(loc, body).findtext("UploadId") or "").strip()
    if not found:
        raise RequestError(f"{loc.url}: the S3 endpoint returned no multipart upload ID",
                           url=loc.url)
    return found


def complete_body(parts: Mapping[int, str], checksums: Mapping[int, str] | None = None,
                  algorithm: str = "") -> bytes:
    """The CompleteMultipartUpload document for parts {number: ETag}.

    ``checksums``: {number: base64 value} of each part's ``algorithm`` checksum, which S3
    requires in the list once the upload declared an algorithm.
    """
    tag = f"Checksum{algorithm.upper()}"

    def extra(n: int) -> str:
        value = (checksums or {}).get(n)
        return f"<{tag}>{_escape(value)}</{tag}>" if value else ""

    items = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{_escape(e)}</ETag>{extra(n)}</Part>"
                    for n, e in sorted(parts.items()))
    return f"<CompleteMultipartUpload>{items}</CompleteMultipartUpload>".encode()


def _escape(text: str) -> str:
    """``text`` as XML character data."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
