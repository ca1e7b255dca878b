"""Manifests: a listing written once, read instead of listing (gzip-compressed JSON lines).

One object per line, ``{"url": ..., "size": ..., "etag": ...}``, in listing order, plus
``"samples"`` and ``"members"`` for tar shards when they were counted (webdataset samples
and member files). The file is gzip-compressed (``.jsonl.gz`` by convention); a plain
file of the same lines reads too. ``aisio manifest PREFIX OUT_URL`` writes one from the
command line, ``write_manifest`` from Python (it also counts shard samples).

A dataset built from a manifest never lists: ``len()`` is known at once, and every read
is pinned to the ETag the manifest gives, so an object changed since raises
``ObjectChangedError`` naming the object and the manifest.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from .._bridge import run
from .._client import AsyncClient
from .._config import ClientConfig
from .._types import ObjectInfo
from .._url import parse_url
from ..errors import first_error

__all__ = ["Manifest", "decode", "encode_line", "read_manifest", "write_manifest"]

_GZIP = b"\x1f\x8b"
_CANONICAL = ("s3://", "ais://", "file://")  # what listings give: URLs as aisio writes them


@dataclass(frozen=True)
class Manifest:
    """A manifest read back: its URL, the objects, and their sample counts if it has them."""

    url: str
    infos: list[ObjectInfo]
    samples: list[int] | None = None
    members: list[int] | None = None

    def __len__(self) -> int:
        return len(self.infos)


def encode_line(info: ObjectInfo, samples: int | None = None, members: int | None = None
                ) -> bytes:
    """One manifest line (with its newline)."""
    entry: dict[str, Any] = {"url": info.url, "size": info.size, "etag": info.etag}
    if samples is not None:
        entry["samples"] = samples
    if members is not None:
        entry["members"] = members
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(data: bytes, url: str) -> Manifest:
    """The manifest in ``data`` (gzip or plain JSON lines) read from ``url``."""
    if data[:2] == _GZIP:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{url} is not a readable gzip manifest: {exc}") from None
    lines = [line for line in data.splitlines() if line.strip()]
    try:  # one parse of the whole file is the fast path; line by line finds a bad line
        entries = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        entries = None
    infos: list[ObjectInfo] = []
    samples: list[int | None] = []
    members: list[int | None] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = entries[number - 1] if entries is not None else json.loads(line)
            etag = entry.get("etag")
            if etag is not None and not isinstance(etag, str):
                raise TypeError(f"etag {etag!r}")
            where = entry["url"]
            if not isinstance(where, str):
                raise TypeError(f"url {where!r}")
            if not where.startswith(_CANONICAL):  # a path, say: made a URL
                where = parse_url(where).url
            infos.append(ObjectInfo(where, int(entry["size"]), etag))
            samples.append(int(entry["samples"]) if "samples" in entry else None)
            members.append(int(entry["members"]) if "members" in entry else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{url}: line {number} is not a manifest entry "
                             f"({type(exc).__name__}: {exc})") from None
    return Manifest(url, infos, _every(samples), _every(members))


def _every(values: list[int | None]) -> list[int] | None:
    """The values if every entry has one (and there are entries), else None."""
    if not values or any(v is None for v in values):
        return None
    return [v for v in values if v is not None]


async def read_manifest(aclient: AsyncClient, url: str) -> Manifest:
    """Read a manifest with one GET."""
    return decode(await aclient.get(url), parse_url(url).url)


async def _counts(aclient: AsyncClient, info: ObjectInfo) -> tuple[int, int]:
    """(samples, members) of one tar shard, read once."""
    from ._datasets import open_stream
    from ._shards import _Buffered
    from ._tar import SampleGrouper, aiter_members

    grouper = SampleGrouper(info.url)
    samples = members = 0
    async with open_stream(aclient, info.url, etag=info.etag) as stream:
        async for name, data in aiter_members(_Buffered(stream), info.url):
            members += 1
            if grouper.add(name, data) is not None:
                samples += 1
    if grouper.finish() is not None:
        samples += 1
    return samples, members


async def count_shards(aclient: AsyncClient, infos: Sequence[ObjectInfo], limit: int = 8
                       ) -> tuple[list[int], list[int]]:
    """(samples, members) of every shard, ``limit`` read at once."""
    samples = [0] * len(infos)
    members = [0] * len(infos)
    gate = anyio.CapacityLimiter(limit)

    async def one(k: int) -> None:
        async with gate:
            samples[k], members[k] = await _counts(aclient, infos[k])

    try:
        async with anyio.create_task_group() as tg:
            for k in range(len(infos)):
                tg.start_soon(one, k)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return samples, members


async def _listed(aclient: AsyncClient, prefixes: Iterable[str]) -> AsyncIterator[ObjectInfo]:
    for prefix in prefixes:
        loc = parse_url(prefix)
        if not loc.is_prefix:
            yield await aclient.head(loc.url)
            continue
        async for info in aclient.list(loc.url):
            yield info


async def write_manifest_async(aclient: AsyncClient, prefixes: str | Iterable[str], out_url: str,
                               *, count_samples: bool = False) -> int:
    """List ``prefixes`` (or HEAD object URLs) and write the manifest; returns the count."""
    sources = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    infos = [info async for info in _listed(aclient, sources)]
    samples: list[int] | None = None
    members: list[int] | None = None
    if count_samples:
        samples, members = await count_shards(aclient, infos)
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip container
    async with aclient.writer(out_url) as w:
        chunk = bytearray()
        for k, info in enumerate(infos):
            chunk += encode_line(info, None if samples is None else samples[k],
                                 None if members is None else members[k])
            if len(chunk) >= 2**20:
                await w.write(packer.compress(bytes(chunk)))
                chunk.clear()
        await w.write(packer.compress(bytes(chunk)) + packer.flush())
    return len(infos)


def write_manifest(prefixes: str | Iterable[str], out_url: str, *,
                   config: ClientConfig | None = None, count_samples: bool = False) -> int:
    """Write a manifest of every object under ``prefixes`` to ``out_url``; returns the count.

    ``count_samples``: read every object once as a tar shard and record its webdataset
    samples and member files (``ShardReader`` then knows its length, and ``drop_last``
    needs no counting pass).
    """
    from ._datasets import client_for

    cfg = config if config is not None else ClientConfig.from_env()
    aclient = client_for(cfg).aclient
    return run(partial(write_manifest_async, aclient, prefixes, out_url,
                       count_samples=count_samples))


def load_manifest(url: str, config: ClientConfig) -> Manifest:
    """Read a manifest through this process's client for ``config``."""
    from ._datasets import client_for

    return run(read_manifest, client_for(config).aclient, url)
