"""``AisioFileSystem``: one fsspec ``AsyncFileSystem`` over ``aisio.AsyncClient``.

Paths are fsspec's: ``bucket/key`` for ``s3://`` and ``ais://``, absolute paths for local
files. Directories are prefixes, as in s3fs: a directory exists while an object lies under
it, ``mkdir`` inside a bucket does nothing, and ``rm -r`` leaves no directory behind. Local
files follow the same rules (``mkdir`` makes the real folder, so tools that expect one find
it), which keeps every scheme on one code path.

The blocking API is fsspec's sync wrappers, run on aisio's per-process loop thread (made
anew after fork), so one filesystem object works in the parent, in forked DataLoader
workers and, pickled, in spawned or Dask workers. Listings are cached per directory
(``use_listings_cache``, as in s3fs) and dropped on every write through this filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from fsspec.asyn import AsyncFileSystem, _run_coros_in_chunks
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.utils import stringify_path, tokenize

from .. import _bridge
from .._bridge import Client
from .._client import AsyncClient
from .._config import ClientConfig
from .._engine import Statistics
from .._readers import AsyncReader, ReaderConstructor
from .._types import ObjectInfo
from .._url import Location, parse_url
from .._writer import AsyncWriter
from ..errors import InvalidURLError, RangeError
from ._files import AisioReadFile, AisioWriteFile
from ._options import build_config
from ._options import config_digest as digest_of

__all__ = ["AISFileSystem", "AisioFileSystem", "AisioLocalFileSystem"]

MiB = 2**20
_COPY_CHUNK_PARTS = 4  # a copy reads this many parts per step, fetched in parallel

_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _bridge_loop() -> asyncio.AbstractEventLoop:
    """aisio's loop thread of this process (started on first use, anew after fork)."""
    global _LOOP
    held = _LOOP
    if held is None or held[0] != os.getpid():
        held = _LOOP = (os.getpid(), _bridge.run(_running_loop))
    return held[1]


def _on_bridge_loop(loop: asyncio.AbstractEventLoop) -> bool:
    held = _LOOP
    return held is not None and held[0] == os.getpid() and held[1] is loop


_CachedMeta: Any = type(AsyncFileSystem)


class _ConfigKeyedMeta(_CachedMeta):  # type: ignore[misc]
    """fsspec's caching metaclass, told apart by a digest of ``config`` (see config_digest)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("config")
        if isinstance(config, ClientConfig):
            kwargs["config_digest"] = digest_of(config)
        return super().__call__(*args, **kwargs)


def _dir_entry(name: str) -> dict[str, Any]:
    return {"name": name, "size": 0, "type": "directory"}


class AisioFileSystem(AsyncFileSystem, metaclass=_ConfigKeyedMeta):  # type: ignore[misc]
    """fsspec filesystem for ``s3://`` through aisio, taking s3fs's storage options.

    ``AISFileSystem`` (``ais://``) and ``AisioLocalFileSystem`` (local paths) are the same
    class with another scheme. Options: ``endpoint_url``, ``key``/``secret``/``token``,
    ``anon``, ``requester_pays``, ``profile``, ``client_kwargs``, ``config_kwargs`` as in
    s3fs; ``config`` (an ``aisio.ClientConfig``, the base the others change; default
    ``ClientConfig.from_env()``), ``default_block_size``, ``default_cache_type``
    (``"readahead"`` or ``"none"``), ``max_concurrency``; and fsspec's own. Any other
    option raises TypeError. ``config_digest`` is set by the class itself (see
    ``_ConfigKeyedMeta``), never by callers.
    """

    protocol: Any = ("s3", "s3a")
    scheme = "s3"
    default_block_size = 8 * MiB

    def __init__(
        self,
        *,
        anon: bool | None = None,
        endpoint_url: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        token: str | None = None,
        use_ssl: bool | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        config_kwargs: Mapping[str, Any] | None = None,
        requester_pays: bool | None = None,
        profile: str | None = None,
        username: str | None = None,
        password: str | None = None,
        endpoint: str | None = None,
        provider: str | None = None,
        config: ClientConfig | None = None,
        config_digest: str | None = None,
        default_block_size: int | None = None,
        default_cache_type: str = "readahead",
        max_concurrency: int | None = None,
        asynchronous: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        batch_size: int | None = None,
        use_listings_cache: bool = True,
        listings_expiry_time: float | None = None,
        max_paths: int | None = None,
    ) -> None:
        given = {
            "anon": anon, "endpoint_url": endpoint_url, "key": key, "secret": secret, "token": token,
            "use_ssl": use_ssl, "client_kwargs": client_kwargs, "config_kwargs": config_kwargs,
            "requester_pays": requester_pays, "profile": profile, "username": username,
            "password": password, "endpoint": endpoint, "provider": provider,
        }
        options = {k: v for k, v in given.items() if v is not None}
        if config is not None and not isinstance(config, ClientConfig):
            raise TypeError(f"config must be an aisio.ClientConfig, not {type(config).__name__}")
        cfg = build_config(self.scheme, config, options)
        if max_concurrency is not None:
            cfg = cfg.replace(max_concurrency=max_concurrency)
        self.config = cfg
        self._provider = "ais"
        if provider is not None:
            probe = parse_url(f"ais://b/?provider={provider}")
            if probe.key:  # the suffix did not parse: no such provider
                raise ValueError(f"unknown AIS provider {provider!r} (ais, aws, gcp, azure, oci, ht)")
            self._provider = probe.provider
        if default_cache_type not in ("readahead", "none"):
            raise ValueError(f"default_cache_type must be 'readahead' or 'none', not {default_cache_type!r} "
                             "(aisio's range reader replaces fsspec's caches)")
        self.default_cache_type = default_cache_type
        if default_block_size is not None:
            if default_block_size < 0:
                raise ValueError(f"default_block_size must be >= 0, got {default_block_size}")
            self.default_block_size = default_block_size
        self._user_loop = loop if not asynchronous else None
        super().__init__(
            asynchronous=asynchronous, loop=loop or (None if asynchronous else _bridge_loop()),
            batch_size=batch_size, use_listings_cache=use_listings_cache,
            listings_expiry_time=listings_expiry_time, max_paths=max_paths)
        self._client = Client(cfg)  # the loop thread's client: made anew after fork
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary())
        self._loop_clients_pid = os.getpid()
        self._buckets: dict[str, Location] = {}
        self._known: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}  # parent -> entries seen

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.scheme}://>"

    # -- the loop and the client ------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """Where the sync wrappers run coroutines: aisio's loop thread of this process."""
        if self._user_loop is not None and self._pid == os.getpid():
            return self._user_loop
        if self.asynchronous:
            return None
        return _bridge_loop()

    def _aclient(self) -> AsyncClient:
        """The AsyncClient of the running loop (one per loop and process)."""
        loop = asyncio.get_running_loop()
        if _on_bridge_loop(loop):
            return self._client.aclient
        if self._loop_clients_pid != os.getpid():
            self._loop_clients = weakref.WeakKeyDictionary()
            self._loop_clients_pid = os.getpid()
        client = self._loop_clients.get(loop)
        if client is None:
            client = self._loop_clients[loop] = AsyncClient(self.config)
        return client

    def statistics(self) -> Statistics:
        """Requests, retries and bytes received by this filesystem's client (sync use) in this process."""
        return self._client.statistics()

    async def aclose(self) -> None:
        """Close the connections this filesystem opened in the running loop (async use)."""
        loop = asyncio.get_running_loop()
        if _on_bridge_loop(loop):
            return  # the loop thread's client lives as long as the process
        client = self._loop_clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    # -- paths ------------------------------------------------------------------------------

    def unstrip_protocol(self, name: str) -> str:
        """The URL of a path (fsspec's form, no AIS provider suffix)."""
        return name if "://" in name else f"{self.scheme}://{name}"

    @property
    def fsid(self) -> str:
        """Names the store, not the credentials: equal for filesystems that see the same objects."""
        where = self.config.s3.endpoint_url if self.scheme == "s3" else (
            self.config.ais.endpoint if self.scheme == "ais" else "")
        return f"aisio_{self.scheme}_{tokenize(where, self._provider)}"

    def _loc(self, path: str, *, prefix: bool = False) -> Location:
        """The aisio Location of a path (of ``path/`` if ``prefix``)."""
        bucket, _, key = path.partition("/")
        if not bucket:
            raise NotImplementedError(
                f"aisio does not list or name buckets: give a bucket ({self.scheme}://bucket/...)")
        if prefix and key and not key.endswith("/"):
            key += "/"
        base = self._buckets.get(bucket)
        if base is None:
            suffix = f"?provider={self._provider}" if self.scheme == "ais" else ""
            base = self._buckets[bucket] = parse_url(f"{self.scheme}://{bucket}/{suffix}")
        return base.child(key)

    def _path_of(self, url: str) -> str:
        """The fsspec path of a URL that aisio listed."""
        if self.scheme == "s3":
            return url[len("s3://"):]
        loc = parse_url(url)
        return f"{loc.bucket}/{loc.key}"

    def _base(self, path: str) -> str:
        """``path`` as the prefix of its children's paths."""
        return path if path.endswith("/") else path + "/"

    def _is_bucket(self, path: str) -> bool:
        return "/" not in path

    # -- entries ----------------------------------------------------------------------------

    def _file_entry(self, path: str, info: ObjectInfo) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": path, "size": info.size, "type": "file", "ETag": info.etag,
            "LastModified": info.last_modified, "mtime": info.last_modified,
        }
        if info.version:
            entry["VersionId"] = info.version
        return entry

    def _object_info(self, path: str, entry: Mapping[str, Any]) -> ObjectInfo:
        return ObjectInfo(self._loc(path).url, entry["size"], entry.get("ETag"),
                          entry.get("LastModified"), entry.get("VersionId"))

    async def _head(self, path: str) -> ObjectInfo:
        """HEAD of one object; FileNotFoundError for no object (a local folder is none)."""
        try:
            return await self._aclient().head(self._loc(path))
        except InvalidURLError:
            if self.scheme == "file" and os.path.isdir(path):
                raise FileNotFoundError(errno.ENOENT, "a directory, not a file", path) from None
            raise

    async def _first_under(self, path: str) -> ObjectInfo | None:
        """Any one object under ``path/``, or None; raises for a missing bucket."""
        agen = self._aclient().list(self._loc(path, prefix=True))
        try:
            async for info in agen:
                if self._path_of(info.url).startswith(self._base(path)):
                    return info
            return None
        finally:
            await agen.aclose()

    async def _tree(self, path: str, prefix: str = "") -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
        """Per-directory entries of everything under ``path/`` whose name starts with ``prefix``,
        from one recursive listing (aisio's listings are flat, as S3's are)."""
        base = self._base(path)
        # aisio lists a local prefix that names a folder as that folder, so local listings
        # take the prefix here instead (the file backend walks the same folders either way)
        loc = self._loc(base if self.scheme == "file" else base + prefix)
        out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        async for info in self._aclient().list(loc):
            name = self._path_of(info.url)
            if not name.startswith(base + prefix):
                continue
            parts = name[len(base):].split("/")
            parent = path
            for i in range(1, len(parts)):
                child = base + "/".join(parts[:i])
                siblings = out.setdefault(parent, {})
                if (child, "directory") not in siblings:
                    siblings[(child, "directory")] = _dir_entry(child)
                parent = child
            if parts[-1]:  # "dir/" itself is a folder marker, not a file
                out.setdefault(parent, {})[(name, "file")] = self._file_entry(name, info)
        return out

    def _remember(self, tree: Mapping[str, Mapping[tuple[str, str], dict[str, Any]]], *,
                  complete: bool) -> None:
        """Cache what a listing found: whole directory listings if ``complete`` (no prefix),
        else just the entries seen, which still spare a HEAD each."""
        for directory, entries in tree.items():
            if complete:
                self.dircache[directory] = sorted(entries.values(), key=lambda e: str(e["name"]))
            for entry in entries.values():
                self._know(entry)

    def _know(self, entry: dict[str, Any]) -> None:
        """Keep one entry a listing or HEAD gave (a file's wins over a directory's of its name)."""
        if not self.dircache.use_listings_cache:
            return
        name = entry["name"]
        siblings = self._known.setdefault(self._parent(name), {})
        held = siblings.get(name)
        if held is None or entry["type"] == "file" or held[1]["type"] != "file":
            siblings[name] = (time.monotonic(), entry)

    def _cached_entry(self, path: str) -> dict[str, Any] | None:
        """The entry of ``path`` from cached listings; FileNotFoundError if they rule it out."""
        parent = self._parent(path)
        if parent != path and parent in self.dircache:
            entries: list[dict[str, Any]] = [e for e in self.dircache[parent] if e["name"] == path]
            if not entries:
                raise FileNotFoundError(errno.ENOENT, "not found (cached listing)", path)
            files = [e for e in entries if e["type"] == "file"]
            return files[0] if files else entries[0]
        held = self._known.get(parent, {}).get(path)
        expiry = self.dircache.listings_expiry_time
        if held is not None and (expiry is None or time.monotonic() - held[0] < expiry):
            return held[1]
        if path in self.dircache:
            return _dir_entry(path)
        return None

    def _cached_subtree(self, path: str) -> list[dict[str, Any]] | None:
        """Every entry under ``path`` if the cache holds all its directories' listings."""
        out: list[dict[str, Any]] = []
        todo = [path]
        while todo:
            try:
                entries = self.dircache[todo.pop()]
            except KeyError:
                return None
            out.extend(entries)
            todo.extend(e["name"] for e in entries if e["type"] == "directory")
        return out

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget cached listings of ``path``, its parents and what lies under it (all if None)."""
        if path is None:
            self.dircache.clear()
            self._known.clear()
        else:
            path = self._strip_protocol(path)
            below = self._base(path)
            for cache in (self.dircache, self._known):
                for name in [k for k in list(cache) if k.startswith(below)]:
                    cache.pop(name, None)
            here = path
            while True:
                self.dircache.pop(here, None)
                self._known.pop(here, None)
                parent = self._parent(here)
                if parent == here or not here:
                    break
                here = parent
        super().invalidate_cache(path)

    def wrote(self, path: str, info: ObjectInfo | None) -> None:
        """Update the caches after this filesystem wrote ``path``: the object and the
        directories above it are known to exist, listings that lack it are dropped."""
        self.invalidate_cache(path)
        if info is None or not self.dircache.use_listings_cache:
            return
        self._know(self._file_entry(path, info))
        here = self._parent(path)
        while here != self.root_marker and (self.scheme == "file" or not self._is_bucket(here)):
            self._know(_dir_entry(here))
            here = self._parent(here)

    # -- metadata ---------------------------------------------------------------------------

    async def _info(self, path: str, refresh: bool = False, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path == self.root_marker:
            return _dir_entry(path)
        if refresh:
            self.invalidate_cache(path)
        cached = self._cached_entry(path)
        if cached is not None:
            return cached
        if self.scheme != "file" and self._is_bucket(path):
            await self._first_under(path)  # ObjectNotFoundError for a missing bucket
            return _dir_entry(path)
        try:
            entry = self._file_entry(path, await self._head(path))
        except FileNotFoundError:
            if await self._first_under(path) is None:
                raise
            entry = _dir_entry(path)
        self._know(entry)
        return entry

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        try:
            await self._info(path)
        except (FileNotFoundError, ValueError, NotImplementedError):
            return False
        return True

    async def _ls(self, path: str, detail: bool = True, refresh: bool = False,
                  **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        entries: list[dict[str, Any]] | None = None
        if not refresh:
            if path in self.dircache:
                entries = list(self.dircache[path])
            else:
                cached = self._cached_entry(path)  # a file in a cached listing is its own ls
                if cached is not None and cached["type"] == "file":
                    entries = [cached]
        if entries is None:
            tree = await self._tree(path)
            if tree:
                self._remember(tree, complete=True)
                entries = sorted(tree[path].values(), key=lambda e: str(e["name"]))
            elif self._is_bucket(path) or path == self.root_marker:
                entries = []  # an empty bucket (a missing one raised above)
                self.dircache[path] = entries
            else:
                entries = [self._file_entry(path, await self._head(path))]
        return entries if detail else [e["name"] for e in entries]

    async def _find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
                    detail: bool = False, prefix: str = "", refresh: bool = False,
                    **kwargs: Any) -> Any:
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        path = self._strip_protocol(path)
        base = self._base(path)
        entries = None if refresh else self._cached_subtree(path)
        if entries is None:
            tree = await self._tree(path, prefix)
            self._remember(tree, complete=not prefix)
            entries = [e for listing in tree.values() for e in listing.values()]
        out: dict[str, dict[str, Any]] = {}
        for entry in entries:
            name = entry["name"]
            if not name.startswith(base + prefix):
                continue
            if maxdepth is not None and name[len(base):].count("/") >= maxdepth:
                continue
            if entry["type"] == "directory" and not withdirs:
                continue
            if name not in out or entry["type"] == "file":
                out[name] = entry
        if entries and withdirs and path != self.root_marker:
            out.setdefault(path, _dir_entry(path))
        if not entries and not prefix and path != self.root_marker and not self._is_bucket(path):
            with contextlib.suppress(FileNotFoundError):  # find() of a file is the file
                out[path] = await self._info(path)
            if out.get(path, {}).get("type") != "file":
                out.pop(path, None)
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    async def _du(self, path: str, total: bool = True, maxdepth: int | None = None,
                  **kwargs: Any) -> Any:
        sizes = {n: e["size"] for n, e in (await self._find(path, maxdepth=maxdepth, detail=True)).items()}
        return sum(sizes.values()) if total else sizes

    async def _modified(self, path: str) -> datetime:
        info = await self._info(path)
        if info["type"] != "file":
            raise IsADirectoryError(errno.EISDIR, "directories have no modification time", path)
        modified = info.get("LastModified")
        if modified is None:  # AIS listings carry no times; a HEAD does
            modified = (await self._head(self._strip_protocol(path))).last_modified
        if modified is None:
            raise NotImplementedError(f"the store gave no modification time for {path}")
        return modified

    def modified(self, path: str) -> datetime:
        """When the object was last written (the store's Last-Modified)."""
        modified: datetime = _bridge_sync(self, self._modified, path)
        return modified

    def checksum(self, path: str) -> int:
        """An integer that changes when the object does, from its ETag (S3's MD5 for plain uploads)."""
        etag = str(self.info(path).get("ETag") or "").strip('"')
        if not etag:
            return int(tokenize(self.info(path)), 16)
        if len(etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in etag):
            return int(etag, 16)
        return int(hashlib.sha256(etag.encode()).hexdigest()[:32], 16)

    def ukey(self, path: str) -> str:
        """A key unique to this version of the object: its URL, size and ETag hashed."""
        info = self.info(path)
        text = f"{self.unstrip_protocol(self._strip_protocol(path))}\n{info['size']}\n{info.get('ETag')}"
        return hashlib.sha256(text.encode()).hexdigest()

    # -- reads ------------------------------------------------------------------------------

    async def _not_a_file(self, path: str) -> None:
        """Raise IsADirectoryError if ``path`` is a directory (after a read found no object)."""
        try:
            is_dir = (await self._info(path))["type"] == "directory"
        except (FileNotFoundError, ValueError):
            return
        if is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)

    async def _size(self, path: str) -> int:
        return int((await self._info(path))["size"])

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None,
                        **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        client, loc = self._aclient(), self._loc(path)
        try:
            if (start is not None and start < 0) or (end is not None and end < 0):
                start, end = _clip(start, end, await self._size(path))
            first = start or 0
            last = end if end is None or end >= first else first
            try:
                return await client.get(loc, first, last)
            except RangeError:  # fsspec clips ranges to the object; aisio refuses them
                first, last = _clip(first, last, (await self._head(path)).size)
                return await client.get(loc, first, last)
        except (FileNotFoundError, InvalidURLError):
            await self._not_a_file(path)
            raise

    async def _cat_ranges(self, paths: list[str], starts: Any, ends: Any, max_gap: int | None = None,
                          batch_size: int | None = None, on_error: str = "return",
                          **kwargs: Any) -> list[Any]:
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        starts = list(starts) if isinstance(starts, Iterable) else [starts] * len(paths)
        ends = list(ends) if isinstance(ends, Iterable) else [ends] * len(paths)
        if not len(starts) == len(ends) == len(paths):
            raise ValueError("paths, starts and ends differ in length")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            groups.setdefault(self._strip_protocol(p), []).append(i)
        out: list[Any] = [None] * len(paths)

        async def one(path: str, indices: list[int]) -> None:
            try:
                views = await self._ranges(path, [(starts[i], ends[i]) for i in indices], max_gap)
            except Exception as exc:
                for i in indices:
                    out[i] = exc
                return
            for i, data in zip(indices, views, strict=True):
                out[i] = data

        await _run_coros_in_chunks([one(p, ix) for p, ix in groups.items()],
                                   batch_size=batch_size or self.batch_size, nofiles=True)
        if on_error != "return":
            for item in out:
                if isinstance(item, Exception):
                    raise item
        return out

    async def _ranges(self, path: str, ranges: list[tuple[int | None, int | None]],
                      max_gap: int | None) -> list[bytes]:
        """The bytes of each range of one object, nearby ranges sharing one GET."""
        client, loc = self._aclient(), self._loc(path)
        gap = float(2**20 if max_gap is None else max_gap)
        spans: list[tuple[int, int]] = []
        if any(s is None or s < 0 or e is None or e < 0 for s, e in ranges):
            size = await self._size(path)
            spans = [_clip(s, e, size) for s, e in ranges]
        else:
            spans = [(s, max(s, e)) for s, e in ranges if s is not None and e is not None]
        try:
            try:
                views = await client.get_ranges(loc, spans, max_gap=gap)
            except RangeError:  # a range past the end: clip all to the object's size
                size = (await self._head(path)).size
                spans = [_clip(s, e, size) for s, e in spans]
                views = await client.get_ranges(loc, spans, max_gap=gap)
        except (FileNotFoundError, InvalidURLError):
            await self._not_a_file(path)
            raise
        return [bytes(v) for v in views]

    # -- writes -----------------------------------------------------------------------------

    async def _pipe_file(self, path: str, value: Any, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        await self._check_mode(path, mode)
        self.wrote(path, await self._aclient().put(self._loc(path), value))

    async def _check_mode(self, path: str, mode: str) -> None:
        if mode == "create":  # check, then write: aisio has no conditional PUT yet
            if await self._exists(path):
                raise FileExistsError(errno.EEXIST, "exists", path)
        elif mode != "overwrite":
            raise ValueError(f"mode must be 'overwrite' or 'create', not {mode!r}")

    async def _transfer(self, src: Location, dst: Location, info: ObjectInfo | None,
                        callback: Any) -> ObjectInfo:
        """Copy one object to another URL (any schemes): parts read in parallel while
        earlier ones upload."""
        client = self._aclient()
        if info is None:
            info = await client.head(src)
        callback.set_size(info.size)
        if info.size <= self.config.part_size:
            data = await client.get(src)  # whole: a cached size may be stale, the object is not
            written = await client.put(dst, data)
            callback.relative_update(len(data))
            return written
        reader = await client.open(src, ReaderConstructor.range_based(0), info=info)
        try:
            buf = memoryview(bytearray(self.config.part_size * _COPY_CHUNK_PARTS))
            async with client.writer(dst) as w:
                while n := await reader.readinto(buf):
                    await w.write(buf[:n])
                    callback.relative_update(n)
        finally:
            await reader.aclose()
        assert w.info is not None
        return w.info

    async def _put_file(self, lpath: str, rpath: str, callback: Any = DEFAULT_CALLBACK,
                        mode: str = "overwrite", **kwargs: Any) -> None:
        lpath = os.path.abspath(stringify_path(lpath))
        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            await self._makedirs(rpath, exist_ok=True)
            return
        await self._check_mode(rpath, mode)
        self.wrote(rpath, await self._transfer(Location("file", "", lpath), self._loc(rpath), None, callback))

    async def _get_file(self, rpath: str, lpath: str | None, callback: Any = DEFAULT_CALLBACK,
                        outfile: Any = None, **kwargs: Any) -> None:
        rpath = self._strip_protocol(rpath)
        if outfile is not None:  # fsspec's get_file into an open file object
            await self._get_into(rpath, outfile, callback)
            return
        assert lpath is not None
        lpath = os.path.abspath(stringify_path(lpath))
        if os.path.isdir(lpath):
            return  # a folder made for a directory of the source
        entry = await self._info(rpath)
        if entry["type"] == "directory":
            os.makedirs(lpath, exist_ok=True)
            return
        await self._transfer(self._loc(rpath), Location("file", "", lpath),
                             self._object_info(rpath, entry), callback)

    async def _get_into(self, path: str, outfile: Any, callback: Any) -> None:
        """Write an object into a writable file object, a part-sized step at a time."""
        client = self._aclient()
        reader = await client.open(self._loc(path), ReaderConstructor.range_based(0))
        try:
            callback.set_size(reader.size)
            buf = memoryview(bytearray(min(reader.size, self.config.part_size * _COPY_CHUNK_PARTS)))
            while n := await reader.readinto(buf):
                outfile.write(buf[:n])
                callback.relative_update(n)
        finally:
            await reader.aclose()

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        entry = await self._info(path1)
        if entry["type"] == "directory":
            await self._makedirs(path2, exist_ok=True)
            return
        self.wrote(path2, await self._transfer(self._loc(path1), self._loc(path2),
                                               self._object_info(path1, entry), DEFAULT_CALLBACK))

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        try:
            await self._aclient().delete(self._loc(path))
        finally:
            self.invalidate_cache(path)

    async def _rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None,
                  batch_size: int | None = None, **kwargs: Any) -> None:
        paths = await self._expand_path(path, recursive=recursive, maxdepth=maxdepth)
        kinds = await asyncio.gather(*(self._info(p) for p in paths), return_exceptions=True)
        for kind in kinds:
            if isinstance(kind, BaseException):  # a named path that is not there, as os.remove says
                raise kind
        files = [p for p, k in zip(paths, kinds, strict=True)
                 if not isinstance(k, BaseException) and k["type"] == "file"]
        dirs = [p for p, k in zip(paths, kinds, strict=True)
                if not isinstance(k, BaseException) and k["type"] == "directory"]
        try:
            await _run_coros_in_chunks([self._rm_file(p) for p in files],
                                       batch_size=batch_size or self.batch_size, nofiles=True)
        finally:
            for p in paths:
                self.invalidate_cache(p)
        if self.scheme == "file":  # the folders that held the files go too, as on a store
            for d in sorted(dirs, key=len, reverse=True):
                with contextlib.suppress(OSError):  # not empty (a file aisio does not list), or gone
                    os.rmdir(d)

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if self.scheme == "file":
            if create_parents:
                os.makedirs(path, exist_ok=True)
            else:
                os.mkdir(path)
        elif self._is_bucket(path):
            await self._need_bucket(path)
        # inside a bucket a directory is a prefix: it exists once an object is written under it,
        # so there is nothing to make (and no request to spend)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if self.scheme == "file":
            os.makedirs(path, exist_ok=exist_ok)
        elif self._is_bucket(path):
            await self._need_bucket(path)

    async def _need_bucket(self, bucket: str) -> None:
        try:
            await self._first_under(bucket)
        except FileNotFoundError:
            raise NotImplementedError(
                f"bucket {bucket!r} does not exist and aisio does not create buckets: create it "
                "with the store's tools") from None

    async def _rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        if self.scheme == "file":
            os.rmdir(path)
        elif self._is_bucket(path):
            raise NotImplementedError("aisio does not delete buckets")
        self.invalidate_cache(path)

    def rmdir(self, path: str) -> None:
        """Remove an empty local folder; inside a bucket a no-op (prefixes vanish by themselves)."""
        _bridge_sync(self, self._rmdir, path)

    # -- files ------------------------------------------------------------------------------

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: Mapping[str, Any] | None = None, *,
              cache_type: str | None = None, reader: ReaderConstructor | None = None,
              **kwargs: Any) -> AisioReadFile | AisioWriteFile:
        """A file over aisio's reader or writer; ``reader`` picks another aisio reader kind."""
        if kwargs:
            raise TypeError(f"unexpected arguments to open(): {sorted(kwargs)}")
        if cache_options:
            raise TypeError("cache_options is not supported: aisio's reader reads ahead block_size bytes")
        path = self._strip_protocol(path)
        _bridge_loop()  # known before the loop thread runs _aclient
        if mode == "rb":
            kind = cache_type or self.default_cache_type
            if kind not in ("readahead", "none"):
                raise ValueError(f"cache_type must be 'readahead' or 'none', not {kind!r}")
            size = self.default_block_size if block_size is None else block_size
            if kind == "none":
                size = 0
            # the file reads ahead itself (adaptively); the reader below reads exact ranges
            constructor = reader or ReaderConstructor.range_based(0)
            return _bridge.run(self._open_reader, path, constructor, size)
        if reader is not None or cache_type is not None:
            raise TypeError("reader and cache_type are for reading")
        if mode in ("wb", "xb"):
            if not autocommit:
                raise NotImplementedError("aisio's files commit on close; transactions are not supported")
            return _bridge.run(self._open_writer, path, mode)
        if mode == "ab":
            raise NotImplementedError("objects cannot be appended to")
        raise ValueError(f"invalid mode {mode!r}")

    async def _open_reader(self, path: str, constructor: ReaderConstructor,
                           block_size: int) -> AisioReadFile:
        cached = None
        with contextlib.suppress(FileNotFoundError):  # the cache may be stale: the HEAD decides
            cached = self._cached_entry(path)
        info = None
        if cached is not None and cached["type"] == "file":
            info = self._object_info(path, cached)
        try:
            if info is None:
                info = await self._head(path)
            areader: AsyncReader = await self._aclient().open(self._loc(path), constructor, info=info)
        except FileNotFoundError:
            await self._not_a_file(path)
            raise
        return AisioReadFile(areader, self, path, self._file_entry(path, info), block_size)

    async def _open_writer(self, path: str, mode: str) -> AisioWriteFile:
        await self._check_mode(path, "create" if mode == "xb" else "overwrite")
        awriter: AsyncWriter = self._aclient().writer(self._loc(path))
        return AisioWriteFile(awriter, self, path, mode)


def _bridge_sync(fs: AisioFileSystem, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` the way fsspec's sync wrappers do, on the filesystem's loop."""
    from fsspec.asyn import sync

    return sync(fs.loop, fn, *args)


def _clip(start: int | None, end: int | None, size: int | None) -> tuple[int, int]:
    """fsspec's range rules: None is an end, negatives count from the end, all clipped to the size."""
    assert size is not None
    first = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
    last = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return first, max(first, last)


class AISFileSystem(AisioFileSystem):
    """fsspec filesystem for ``ais://`` (AIStore's native API) through aisio.

    Options: ``endpoint`` and ``token`` (else AIS_ENDPOINT, AIS_AUTHN_TOKEN), ``provider``
    for buckets AIS fronts for another provider (``"aws"``, ``"gcp"``, ...), and the options
    every aisio filesystem takes.
    """

    protocol: Any = ("ais",)
    scheme = "ais"


class AisioLocalFileSystem(AisioFileSystem):
    """Local files through aisio's file backend, with object-store directory rules.

    Not registered for ``file://`` unless asked (``aisio.fsspec.register("file")``):
    fsspec's own local filesystem keeps empty folders, this one does not list them.
    """

    protocol: Any = ("file", "local")
    scheme = "file"
    root_marker = "/"

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for proto in ("file://", "local://", "file:", "local:"):
            if path.startswith(proto):
                path = path[len(proto):]
                break
        return os.path.abspath(os.path.expanduser(path))

    def unstrip_protocol(self, name: str) -> str:
        return name if name.startswith("file://") else "file://" + name

    def _loc(self, path: str, *, prefix: bool = False) -> Location:
        if prefix and not path.endswith("/"):
            path += "/"
        return Location("file", "", path)

    def _path_of(self, url: str) -> str:
        return parse_url(url).key

    def _is_bucket(self, path: str) -> bool:
        return False
