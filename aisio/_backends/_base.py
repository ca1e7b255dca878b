"""The seam between the engine and a store: a backend speaks one protocol for one scheme.

A backend does single requests only. Splitting, coalescing, concurrency limits and
retries live in the engine (``aisio._engine``), so every backend gets them for free.
A backend maps its store's failures to ``aisio.errors`` (or leaves transport errors,
``OSError`` and ``TimeoutError``, for the engine to classify as transient).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .._types import ObjectInfo
from .._url import Location

if TYPE_CHECKING:
    from .._checksum import Checksum
    from .._http import Response

__all__ = ["Backend", "Body", "HTTPBody", "Upload", "checked_size", "new_token", "unsatisfied_size",
           "untrusted_certificate"]


class Body(Protocol):
    """The body of one GET, read once, front to back.

    ``object_size`` and ``etag`` describe the whole object (from Content-Range or
    Content-Length, and ETag), so the first GET of a read also plans the rest of it.

    A body may also have ``checksum``: the whole object's checksum (an
    ``aisio._checksum.Checksum``) when the response states one for all of the object's
    bytes, which the engine checks a whole-object read against; bodies without the
    attribute (files, the cache) are not checked.
    """

    @property
    def object_size(self) -> int:
        """Size of the whole object; -1 if the response did not say (the engine asks a HEAD)."""

    @property
    def etag(self) -> str | None:
        """The object's ETag (or the store's version tag), pinned by resumed reads."""

    @property
    def latency(self) -> float:
        """Seconds from sending the request to its response head; 0 for local files."""

    async def readinto(self, view: memoryview) -> int:
        """Fill up to ``len(view)`` bytes; 0 means the body ended."""

    async def aclose(self) -> None:
        """Release the connection (closed, not reused, if the body was not read to the end)."""


class Upload(Protocol):
    """A multipart upload in progress; parts may be uploaded concurrently, in any order."""

    async def upload_part(self, number: int, offset: int, data: memoryview) -> None:
        """Upload part ``number`` (1-based) that starts at byte ``offset`` of the object."""

    async def complete(self) -> ObjectInfo:
        """Make the object visible, made of all parts in order."""

    async def abort(self) -> None:
        """Discard every part; no object becomes visible. Safe to call twice."""


class Backend(Protocol):
    """One store reached by one scheme (``s3``, ``ais``, ``file``)."""

    min_part_size: int
    """Smallest part a multipart upload accepts (but the last); 0 if any size goes."""

    async def head(self, loc: Location) -> ObjectInfo:
        """Size, etag and times of one object; ObjectNotFoundError if missing."""

    def list(self, loc: Location, *, recursive: bool = True) -> AsyncIterator[ObjectInfo]:
        """Objects under a prefix, page by page, sizes included, in key order."""

    async def open_body(
        self, loc: Location, start: int, end: int | None, *, etag: str | None = None
    ) -> Body:
        """Start a GET of bytes [start, end) (to the end if None).

        With ``etag`` the store must refuse (ObjectChangedError) if the object's etag
        differs, so a read that spans several requests never mixes two versions.
        """

    async def put(self, loc: Location, data: memoryview) -> ObjectInfo:
        """Write a whole object in one request."""

    async def create_upload(self, loc: Location) -> Upload:
        """Begin a multipart upload of ``loc``."""

    async def delete(self, loc: Location) -> None:
        """Remove one object; ObjectNotFoundError if it is missing."""

    async def aclose(self) -> None:
        """Close connections and sessions."""


class HTTPBody:
    """A data GET's body on the zero-copy pool, with what its headers say of the object."""

    __slots__ = ("_response", "checksum", "etag", "latency", "object_size")

    def __init__(self, response: Response, object_size: int, etag: str | None,
                 checksum: Checksum | None = None) -> None:
        self._response = response
        self.object_size = object_size
        self.etag = etag
        self.latency = response.waited
        self.checksum = checksum

    def readinto(self, view: memoryview) -> Coroutine[Any, Any, int]:
        return self._response.readinto(view)  # the response's own coroutine: one level less

    async def aclose(self) -> None:
        self._response.close()

    def close(self) -> None:
        """Release the connection now; HTTP bodies close without waiting."""
        self._response.close()


_TOTAL = re.compile(r"bytes \*/([0-9]{1,19})")
_LENGTH = re.compile(r"[0-9]{1,19}")


def new_token(loc: Location, seen: set[str], token: str) -> str:
    """``token``, remembered in ``seen``; a token a listing already gave is a RequestError.

    A server that sends a listing round in circles would otherwise never let it end.
    """
    if token in seen:
        from ..errors import RequestError

        raise RequestError(f"{loc.url}: the listing repeated a continuation token", url=loc.url)
    seen.add(token)
    return token


def unsatisfied_size(headers: Mapping[str, str]) -> int:
    """The object size a 416's ``Content-Range: bytes */size`` gives; -1 if none."""
    match = _TOTAL.fullmatch(headers.get("content-range", ""))
    return int(match.group(1)) if match else -1


def checked_size(url: str, status: int, headers: Mapping[str, str], start: int) -> int:
    """The object's size from a GET's 200 or 206 head, after checking the body starts at ``start``.

    A proxy or cache that dropped the Range (200 for a read from ``start > 0``) or moved it
    (a Content-Range starting elsewhere, or one that disagrees with Content-Length) would
    otherwise hand the engine other bytes than it asked for: that is a ConnectionError, which
    the engine retries like a broken body. -1 when the head does not say (``bytes a-b/*``, or a
    200 without Content-Length): the engine then asks a HEAD, never guesses.
    """
    length = headers.get("content-length")
    if length is not None and not _LENGTH.fullmatch(length):
        length = None  # the HTTP layer refuses malformed ones; here: not a size
    if status == 200:
        if start:
            raise ConnectionError(f"{url}: asked for bytes from {start}, the server sent the "
                                  "whole object (HTTP 200)")
        return int(length) if length is not None else -1
    from .._http import parse_content_range  # HTTP backends only: file reads never import it

    content_range = headers.get("content-range", "")
    parsed = parse_content_range(content_range)
    if parsed is not None:
        first, last, total = parsed
        if first == start and (length is None or int(length) == last - first + 1):
            return -1 if total is None else total
    raise ConnectionError(f"{url}: asked for bytes from {start}, the server sent Content-Range "
                          f"{content_range[:80]!r} with Content-Length {str(length)[:20]}")


def untrusted_certificate(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an SDK's error (httpx, aiohttp, botocore).

    The SDKs wrap it in their own connection errors, which look transient; a certificate
    nobody trusts is not, and the user needs to be told to configure ``ca_bundle``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for inner in (getattr(exc, "certificate_error", None),  # aiohttp's (also a subclass)
                      getattr(exc, "kwargs", {}).get("error")):  # botocore's SSLError
            if isinstance(inner, BaseException) and id(inner) not in seen:
                found = untrusted_certificate(inner)
                if found is not None:
                    return found
        if isinstance(exc, ssl.SSLCertVerificationError) and hasattr(exc, "verify_message"):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
