"""Object URLs: parsing ``s3://``, ``ais://``, ``file://`` and plain paths, and redaction.

What is refused (InvalidURLError), so that a mistyped URL never names some other object:
a known scheme without ``//`` (``s3:/x``, ``ais:x``: they are not local paths), ``file:``
without an absolute path (``file:/abs/path`` is RFC 8089's short form and accepted), bucket
names with characters outside ``[A-Za-z0-9._-]`` (control characters included), and keys
or paths that are not valid Unicode (a lone surrogate; for local paths, only those that
stand for undecodable bytes of a file name are kept). An error never shows credentials:
a bucket part with ``:`` or ``@`` (``s3://key:secret@bucket``) is not echoed at all.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit

from .errors import InvalidURLError

__all__ = ["Location", "file_url", "parse_url", "redact"]

SCHEMES = ("s3", "ais", "file")
# S3 bucket names and AIS bucket names share this shape closely enough; AIS allows '_'.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")  # fullmatch: '$' allows a final \n
# AIS buckets that front other providers: ais://@remote#ns/bucket or the provider prefix
_AIS_PROVIDERS = {
    "ais": "ais", "aws": "aws", "s3": "aws", "gcp": "gcp", "gs": "gcp",
    "azure": "azure", "az": "azure", "oci": "oci", "ht": "ht",
}


# ais://bucket/key?provider=aws: the one query a URL may carry (keys may hold '?' too)
_PROVIDER_SUFFIX = re.compile(r"\?provider=(" + "|".join(_AIS_PROVIDERS) + r")\Z")
# "s3:/x" or "ais:x": a known scheme that lost its "//", not a local path
_SCHEME_ONLY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class Location:
    """A parsed object URL: ``scheme://bucket/key``; for files, bucket is '' and key the path.

    ``provider`` is the AIS backend provider (``ais``, ``aws``, ``gcp``, ...); it is
    ``ais`` for native AIS buckets and unused by the other schemes.
    """

    scheme: str
    bucket: str
    key: str
    provider: str = "ais"

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return file_url(self.key)
        if self.scheme == "ais" and (self.provider != "ais" or _PROVIDER_SUFFIX.search(self.key)):
            # a key that itself ends in ?provider=... keeps its own provider explicit, so the
            # URL parses back to this object, not to one of another bucket
            return f"ais://{self.bucket}/{self.key}?provider={self.provider}"
        return f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        """A prefix ends in '/' or is a bare bucket."""
        return self.key == "" or self.key.endswith("/")

    def child(self, key: str) -> Location:
        """The location of ``key`` in the same bucket (key is absolute within the bucket)."""
        return Location(self.scheme, self.bucket, key, self.provider)

    def __str__(self) -> str:
        return self.url


def file_url(path: str) -> str:
    """The ``file://`` URL of an absolute path, percent-encoded so it parses back to the path.

    The path's bytes are encoded (``os.fsencode``), so a file name that is not UTF-8 (its
    bytes decoded as lone surrogates) has a URL too.
    """
    return "file://" + quote(os.fsencode(path), safe="/")


def parse_url(url: object) -> Location:
    """Parse an object URL or a local path; raise InvalidURLError naming it if it is not one."""
    if isinstance(url, Location):
        return url
    if type(url) is str:
        hit = _PARSED.get(url)
        if hit is not None:
            return hit
        loc = _parse(url)
        if "://" in url:  # a relative path's meaning changes with the working directory
            if len(_PARSED) >= 4096:
                _PARSED.clear()
            _PARSED[url] = loc
        return loc
    return _parse(url)


_PARSED: dict[str, Location] = {}  # object URLs seen lately; a Location is immutable


def _parse(url: object) -> Location:
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        url = _from_aistore_sdk(url)
    assert isinstance(url, str)
    if not url or "\x00" in url:
        raise InvalidURLError(f"empty or NUL-containing URL: {redact(url)!r}", url=redact(url))
    if "://" not in url:
        scheme_only = _SCHEME_ONLY.match(url)
        if scheme_only is not None:
            scheme = scheme_only.group(1).lower()
            if scheme == "file":
                return _file_location(url)
            if scheme in SCHEMES or scheme in _AIS_PROVIDERS:
                rest = url[scheme_only.end():]
                shown = _shown(url) if _no_userinfo(rest) else f"{scheme}:... (not shown: it has ':' or '@')"
                raise InvalidURLError(f"not a URL: {shown} (write {scheme}://bucket/key)", url=None)
        path = os.path.abspath(os.path.expanduser(url))
        _check_path(path, url)
        return Location("file", "", path + ("/" if url.endswith("/") else ""))
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        return _file_location(url)
    if scheme == "gs":
        scheme = "gcp"
    if scheme not in SCHEMES and scheme not in _AIS_PROVIDERS:
        raise InvalidURLError(
            f"unsupported URL scheme {scheme!r} in {redact(url)} (use s3://, ais:// or file://)",
            url=redact(url))
    provider = "ais"
    suffix = _PROVIDER_SUFFIX.search(rest) if scheme == "ais" else None
    if suffix is not None:
        rest, provider = rest[: suffix.start()], _AIS_PROVIDERS[suffix.group(1)]
    elif scheme not in SCHEMES:
        # aistore SDK style paths: aws://bucket/obj, gcp://... are AIS buckets of that provider
        provider, scheme = _AIS_PROVIDERS[scheme], "ais"
    bucket, _, key = rest.partition("/")
    if not _no_userinfo(bucket):  # user:secret@bucket: echo none of it
        raise InvalidURLError(
            f"invalid {scheme}:// URL: its bucket part contains ':' or '@' (credentials do "
            f"not belong in a URL; use the environment or a profile)", url=None)
    if not bucket or not _BUCKET.fullmatch(bucket) or (scheme == "s3" and "_" in bucket):
        raise InvalidURLError(
            f"invalid bucket name {bucket!a} in {_shown(url)}", url=redact(url))
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidURLError(
            f"key is not valid Unicode (a lone surrogate at index {exc.start}): {_shown(url)}",
            url=None) from None
    return Location(scheme, bucket, key, provider)


def _file_location(url: str) -> Location:
    """The Location of a ``file:///abs/path`` (or ``file:/abs/path``) URL."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidURLError(
            f"file URL must be absolute (file:///path): {redact(url)}", url=redact(url))
    try:
        raw = unquote_to_bytes(parts.path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise InvalidURLError(f"file URL is not valid Unicode: {_shown(url)}", url=None) from None
    path = os.fsdecode(raw)
    if not path.startswith("/"):
        raise InvalidURLError(f"file URL must be absolute: {redact(url)}", url=redact(url))
    if "\x00" in path:
        raise InvalidURLError(f"file URL names a path with NUL: {_shown(url)}", url=None)
    slash = "/" if path.endswith("/") and path != "/" else ""
    return Location("file", "", os.path.normpath(path) + slash)


def _check_path(path: str, url: str) -> None:
    """InvalidURLError unless ``path`` can be a file name (a lone surrogate cannot, but
    the ones ``os.fsdecode`` makes of undecodable bytes can)."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise InvalidURLError(f"path is not valid Unicode: {_shown(url)}", url=None) from None


def _no_userinfo(rest: str) -> bool:
    """False if the bucket part of ``rest`` has ':' or '@', as ``key:secret@bucket`` would."""
    authority = rest.lstrip("/").partition("/")[0]
    return ":" not in authority and "@" not in authority


def _shown(text: str) -> str:
    """``text`` for a message: redacted, with control characters and surrogates escaped."""
    text = redact(text)
    return text if text.isprintable() else ascii(text)[1:-1]


_SDK_PATH = re.compile(r"^([a-z]+)/@([^#/]*)#([^/]*)/([^/]+)/(.*)$")


def _from_aistore_sdk(obj: object) -> str:
    """The ais:// URL of an aistore SDK Bucket (``get_path()``) or Object (``uname``)."""
    get_path = getattr(obj, "get_path", None)
    path = get_path() if callable(get_path) else getattr(obj, "uname", None)
    match = _SDK_PATH.match(path) if isinstance(path, str) else None
    if match is None:
        raise InvalidURLError(f"not an object URL: {type(obj).__name__} object", url=None)
    provider, uuid, namespace, bucket, key = match.groups()
    if uuid or namespace:
        raise InvalidURLError(
            f"AIS namespaces are not supported yet: bucket {bucket!r} in @{uuid}#{namespace}",
            url=None)
    suffix = "" if _AIS_PROVIDERS.get(provider, provider) == "ais" else f"?provider={provider}"
    return f"ais://{bucket}/{key}{suffix}"


_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:X-Amz-[A-Za-z-]+|Signature|AWSAccessKeyId|Expires|token|sig|se|sp|sv)=)[^&#\s]*"
)
_USERINFO = re.compile(r"(://)(?:[^/@\s]*|[^/@:\s]*:[^@\s]*)@")  # user:secret@, '/' in it too
# header values in logged requests: X-Amz-Security-Token: b'...', 'Authorization': '...'
_SECRET_HEADER = re.compile(
    r"(?i)((?:x-amz-security-token|authorization|x-amz-server-side-encryption-customer-key)"
    r"['\"]?\s*[:=]\s*b?['\"]?)[^'\",}\r\n]+"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SIGNATURE = re.compile(r"(Signature[=:]\s*)[0-9a-fA-F]{16,}")  # also botocore's "Signature:\n<hex>" log


def redact(text: str) -> str:
    """Strip signatures, credentials and tokens from a URL, message or logged request."""
    text = _USERINFO.sub(r"\1", text)
    text = _SECRET_QUERY.sub(r"\1REDACTED", text)
    text = _SECRET_HEADER.sub(r"\1REDACTED", text)
    text = _BEARER.sub(r"\1REDACTED", text)
    return _SIGNATURE.sub(r"\1REDACTED", text)
