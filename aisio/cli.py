"""The ``aisio`` command: ls, cat, cp, stat and bench over s3://, ais:// and local paths;
``cache ls|du|clear`` for the local cache; ``verify`` to check a DCP checkpoint.

Each command builds one ``AsyncClient`` and runs in one ``asyncio.run``; nothing here
goes through the sync bridge. Settings come from ``ClientConfig.from_env()`` (AWS_*,
AIS_*, AISIO_*), overridden by the flags every command accepts.

Exit status, as a shell user expects: 0 success; 1 an error (not found, access denied,
a bad URL, an unsafe key, a size that is not known, stdout closed), reported as one line
``aisio: <command>: <message>`` on stderr; 2 a usage error (from argparse); 130
interrupted by Ctrl-C; 141 (128 + SIGPIPE), quietly, when the reader of stdout went away
(``aisio cat ... | head -c1``), as a shell reports ``cat`` killed by SIGPIPE.

``ls -r`` and ``cp -r`` carry on past an object they cannot name, read or write: each one
is reported on stderr (``cp`` after the copy), the rest are listed or copied, and the exit
status is 1.

Names are printed so that no key can rewrite the terminal: control and other
non-printable characters in keys (in ``ls``, ``stat`` and error messages) are shown as
Python escapes (``\\n``, ``\\x1b``, ``\\u202e``), and bytes of a local file name that
are not UTF-8 as ``\\xNN``; everything else, backslashes included, is printed as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import anyio
import anyio.abc

from . import __version__
from ._client import AsyncClient
from ._config import ClientConfig
from ._readers import ReaderConstructor
from ._types import ObjectInfo
from ._url import Location, parse_url, redact
from .errors import AisioError, InvalidURLError, ObjectChangedError, ObjectNotFoundError

__all__ = [
    "CommandError",
    "UnsafeKeyError",
    "build_parser",
    "config_from_args",
    "human",
    "main",
    "parse_size",
    "printable",
    "safe_destination",
]

MiB = 2**20
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PIPE, EXIT_INTERRUPTED = 0, 1, 2, 141, 130

_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20,
          "mb": 10**6, "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40,
          "tb": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*$")


class CommandError(AisioError):
    """A failure the command reports in one line (exit status 1)."""


class UnsafeKeyError(CommandError):
    """An object key that would be written outside the destination folder."""


# --------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    """Bytes from ``8388608``, ``8M``/``8MiB`` (binary) or ``8MB`` (decimal)."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 8MiB, 8M, 8MB or 8388608)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _range_arg(text: str) -> tuple[int | None, int | None]:
    """``START:END`` as a Python slice: either side optional, negatives count from the end."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(start) if start.strip() else None, int(end) if end.strip() else None)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a byte range: {text!r} (START:END, end exclusive, e.g. 0:1024 or -100:)"
        ) from None


def _resolve_range(spec: tuple[int | None, int | None] | None, size: int, url: str) -> tuple[int, int]:
    if spec is None:
        return 0, size
    start, end = spec
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size if end is None else (end + size if end < 0 else end)
    start, end = max(0, start), min(max(0, end), size)
    if start > size:
        raise CommandError(f"range starts past the end of {url} ({size} bytes)", url=url)
    return start, max(start, end)


def human(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def safe_destination(root: str, rel: str) -> str:
    """The local path of key ``rel`` under folder ``root``, or UnsafeKeyError.

    Refused: empty keys, absolute keys, keys with a ``..`` component or a NUL, and keys
    whose path, once normalised and with symbolic links resolved, is not inside ``root``.
    """
    shown = ascii(rel)
    if not rel or "\x00" in rel:
        raise UnsafeKeyError(f"refusing key {shown}: empty or contains NUL")
    if rel.startswith(("/", "\\")) or os.path.isabs(rel):
        raise UnsafeKeyError(f"refusing absolute key {shown}")
    if ".." in re.split(r"[/\\]", rel):
        raise UnsafeKeyError(f"refusing key {shown}: it contains '..'")
    base = os.path.abspath(root)
    path = os.path.normpath(os.path.join(base, rel))
    real_base = os.path.realpath(base)
    for candidate, top in ((path, base), (os.path.realpath(path), real_base)):
        if os.path.commonpath([candidate, top]) != top or candidate == top:
            raise UnsafeKeyError(f"refusing key {shown}: it resolves outside {root}")
    return path


def _check_remote_key(rel: str) -> None:
    """Keys copied between stores: no absolute keys, no ``..`` components, valid Unicode."""
    if not rel or rel.startswith("/") or ".." in rel.split("/") or "\x00" in rel:
        raise UnsafeKeyError(f"refusing key {rel!a}: empty, absolute or contains '..'")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # a local file name that is not UTF-8
        raise UnsafeKeyError(
            f"refusing key '{printable(rel)}': a file name that is not UTF-8 is no object key"
        ) from None


def printable(text: str) -> str:
    """``text`` safe to print: non-printable characters as Python escapes, undecodable bytes as \\xNN."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif "\udc80" <= char <= "\udcff":  # a byte os.fsdecode could not decode
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(ascii(char)[1:-1])
    return "".join(out)


def _known_size(info: ObjectInfo) -> int:
    """The object's size; CommandError if the store did not say (never read as empty)."""
    if info.size < 0:
        raise CommandError(f"size of {info.url} is unknown: not read", url=info.url)
    return info.size


def _is_local_dir(loc: Location) -> bool:
    return loc.scheme == "file" and os.path.isdir(loc.key.rstrip("/") or "/")


def _as_prefix(loc: Location) -> Location:
    if loc.is_prefix:
        return loc
    return loc.child(loc.key + "/")


def _key_of(info: ObjectInfo) -> str:
    """The key (or file path) of a listed object."""
    return parse_url(info.url).key


class _Names:
    """Display names under a prefix, spelled as the user spelled the prefix."""

    def __init__(self, text: str, prefix: Location) -> None:
        self.prefix = prefix
        self._plain = prefix.scheme == "file" and not text.lower().startswith("file:")
        self._base = text if text.endswith("/") else text + "/"

    def __call__(self, rel: str) -> str:
        if self._plain:
            return self._base + rel
        return self.prefix.child(self.prefix.key + rel).url


async def _listed(
    client: AsyncClient, prefix: Location, failed: Callable[[str], None],
) -> AsyncIterator[tuple[str, ObjectInfo]]:
    """(key relative to ``prefix``, info) for every object under it; ``failed`` hears of the
    ones that cannot be named, and the listing goes on."""
    async for info in client.list(prefix, recursive=True):
        try:
            key = _key_of(info)
        except InvalidURLError as exc:
            failed(f"skipped {info.url!a}: {_message(exc)}")
            continue
        if key.startswith(prefix.key):
            yield key[len(prefix.key):], info


def _source(prefix: Location, rel: str) -> Location:
    return prefix.child(prefix.key + rel)


class _Progress:
    """A tqdm bar on stderr when asked for (or stderr is a terminal); nothing if tqdm is missing."""

    def __init__(self, enabled: bool | None, desc: str) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total = self.done = self.count = 0
        self._bar: Any = None
        self._t0 = time.monotonic()
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024,
                                 desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)

    def grow(self, size: int) -> None:
        self.total += size
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            took = time.monotonic() - self._t0
            print(f"copied {self.count} object(s), {human(self.done)} in {took:.1f} s",
                  file=sys.stderr)


# --------------------------------------------------------------------------- commands


async def cmd_ls(client: AsyncClient, args: argparse.Namespace) -> int:
    loc, _ = client.backend(args.url)
    if not loc.is_prefix and not _is_local_dir(loc):
        try:
            info = await client.head(loc)
        except ObjectNotFoundError:
            pass  # a folder named without its trailing slash
        else:
            _print_entry(args, args.url, info)
            return EXIT_OK
    prefix = _as_prefix(loc)
    names = _Names(args.url, prefix)
    shown = 0
    folders: set[str] = set()
    failures = 0

    def failed(message: str) -> None:
        nonlocal failures
        failures += 1
        _report("ls", message)

    async for rel, info in _listed(client, prefix, failed):
        if not rel:
            continue  # the folder's own marker object
        if not args.recursive and "/" in rel:
            folder = rel.split("/", 1)[0] + "/"
            if folder not in folders:
                folders.add(folder)
                _print_entry(args, names(folder), None)
                shown += 1
            continue
        _print_entry(args, names(rel), info)
        shown += 1
    if failures:
        return EXIT_ERROR
    if shown == 0 and prefix.key and not _is_local_dir(prefix):
        raise ObjectNotFoundError(f"no objects under {prefix.url}", url=prefix.url)
    return EXIT_OK


def _print_entry(args: argparse.Namespace, name: str, info: ObjectInfo | None) -> None:
    name = printable(name)
    if not args.long:
        print(name)
        return
    if info is None:
        print(f"{'DIR':>12}  {'':19}  {name}")
        return
    size = human(info.size) if args.human_readable else str(info.size)
    modified = info.last_modified.strftime("%Y-%m-%d %H:%M:%S") if info.last_modified else "-"
    print(f"{size:>12}  {modified:19}  {name}")


async def cmd_stat(client: AsyncClient, args: argparse.Namespace) -> int:
    records = []
    for url in args.urls:
        info = await client.head(url)
        records.append({
            "url": info.url,
            "size": _known_size(info),
            "etag": info.etag,
            "last_modified": info.last_modified.isoformat() if info.last_modified else None,
            "version": info.version,
        })
    if args.json:
        print(json.dumps(records if len(records) > 1 else records[0], indent=2))
        return EXIT_OK
    for i, rec in enumerate(records):
        if i:
            print()
        print(f"url:           {printable(str(rec['url']))}")
        print(f"size:          {rec['size']} ({human(rec['size'])})")  # type: ignore[arg-type]
        print(f"etag:          {printable(str(rec['etag'] or '-'))}")
        print(f"last modified: {rec['last_modified'] or '-'}")
        if rec["version"]:
            print(f"version:       {printable(str(rec['version']))}")
    return EXIT_OK


async def cmd_cat(client: AsyncClient, args: argparse.Namespace) -> int:
    info = await client.head(args.url)
    start, end = _resolve_range(args.range, _known_size(info), info.url)
    out = sys.stdout.buffer
    window = client.config.part_size * min(client.config.max_concurrency, 8)
    loop = asyncio.get_running_loop()
    reader = await client.open(args.url, ReaderConstructor.range_based(0), info=info)
    async with reader:
        reader.seek(start)
        left = end - start
        buffers = [memoryview(bytearray(min(window, left))) for _ in range(2 if left > window else 1)]
        pending: asyncio.Future[Any] | None = None
        i = 0
        try:
            while left:
                view = buffers[i % len(buffers)][: min(window, left)]
                n = await reader.readinto(view)
                if n == 0:
                    raise ObjectChangedError(f"{info.url} ended early", url=info.url)
                if pending is not None:
                    await pending
                # the write of this window overlaps the GETs of the next one
                pending = loop.run_in_executor(None, _write_all, out, view[:n])
                left -= n
                i += 1
            if pending is not None:
                await pending
                pending = None
        finally:
            if pending is not None:
                await asyncio.wait([pending])
    await loop.run_in_executor(None, out.flush)
    return EXIT_OK


def _write_all(out: Any, view: memoryview) -> None:
    """Write every byte: a pipe whose reader left mid-write takes only part of the data."""
    while view:
        n = out.write(view)
        if n is None or n <= 0:
            raise BrokenPipeError("stdout took no bytes")
        view = view[n:]


@dataclasses.dataclass
class _CopyJob:
    source: Location
    info: ObjectInfo
    target: Location
    shown: str


async def cmd_cp(client: AsyncClient, args: argparse.Namespace) -> int:
    src, _ = client.backend(args.src)
    dst, _ = client.backend(args.dst)
    progress = _Progress(args.progress, desc="cp")
    failures: list[str] = []
    try:
        if args.recursive:
            await _copy_tree(client, args, src, dst, progress, failures)
        else:
            job = await _single_job(client, args, src, dst)
            progress.grow(job.info.size)
            await _copy_object(client, job, progress)
            progress.count += 1
    finally:
        progress.close()
    for message in failures:
        _report("cp", message)
    return EXIT_ERROR if failures else EXIT_OK


async def _single_job(
    client: AsyncClient, args: argparse.Namespace, src: Location, dst: Location,
) -> _CopyJob:
    if src.is_prefix or _is_local_dir(src):
        raise CommandError(f"{args.src} is a folder or prefix (use -r to copy what is under it)",
                           url=src.url)
    info = await client.head(src)
    _known_size(info)
    if dst.is_prefix or _is_local_dir(dst):
        name = src.key.rsplit("/", 1)[-1]
        if dst.scheme == "file":
            root = dst.key.rstrip("/") or "/"
            target = Location("file", "", safe_destination(root, name))
        else:
            _check_remote_key(name)
            target = dst.child(dst.key + name)
    else:
        target = dst
    return _CopyJob(src, info, target, args.src)


async def _copy_tree(
    client: AsyncClient, args: argparse.Namespace, src: Location, dst: Location,
    progress: _Progress, failures: list[str],
) -> None:
    prefix = _as_prefix(src)
    local_root = (dst.key.rstrip("/") or "/") if dst.scheme == "file" else None
    dst_prefix = dst if dst.is_prefix or dst.scheme == "file" else _as_prefix(dst)
    names = _Names(args.src, prefix)
    inside = (dst_prefix.key.rstrip("/") + "/") if dst.scheme == "file" else dst_prefix.key
    if ((dst.scheme, dst.bucket, dst.provider) == (prefix.scheme, prefix.bucket, prefix.provider)
            and inside.startswith(prefix.key)):
        raise CommandError(f"cannot copy {prefix.url} into itself ({dst.url})", url=prefix.url)
    send, receive = anyio.create_memory_object_stream[_CopyJob](args.jobs * 2)
    listed = 0

    async def produce() -> None:
        nonlocal listed
        async with send:
            async for rel, info in _listed(client, prefix, failures.append):
                if not rel or rel.endswith("/"):
                    continue  # folder marker objects
                listed += 1
                try:
                    _known_size(info)
                    if local_root is not None:
                        target = Location("file", "", safe_destination(local_root, rel))
                    else:
                        _check_remote_key(rel)
                        target = dst_prefix.child(dst_prefix.key + rel)
                except AisioError as exc:
                    failures.append(f"{prefix.url}: {_message(exc)}")
                    continue
                progress.grow(info.size)
                await send.send(_CopyJob(_source(prefix, rel), info, target, names(rel)))

    async def consume(jobs: anyio.abc.ObjectReceiveStream[_CopyJob]) -> None:
        async with jobs:
            async for job in jobs:
                try:
                    await _copy_object(client, job, progress)
                    progress.count += 1
                except Exception as exc:  # one object's failure: report it, copy the rest
                    message = _message(exc)
                    if job.shown not in message:
                        message = f"{job.shown}: {message}"
                    failures.append(message)

    async with anyio.create_task_group() as tg:
        with receive:
            for _ in range(args.jobs):
                tg.start_soon(consume, receive.clone())
        await produce()
    if listed == 0:
        raise ObjectNotFoundError(f"no objects under {prefix.url}", url=prefix.url)


async def _copy_object(client: AsyncClient, job: _CopyJob, progress: _Progress) -> None:
    """Stream one object: windows of parallel range GETs feed a concurrent multipart writer."""
    part = client.config.part_size
    window = part * 2
    if job.info.size <= window:
        # read even when listed as empty: a source whose size is not its length (/proc)
        # must fail here, not become an empty object
        data = await client.get_view(job.source)
        await client.put(job.target, data)
        progress.update(len(data))
        return
    reader = await client.open(job.source, ReaderConstructor.range_based(0), info=job.info)
    async with reader, client.writer(job.target, max_in_flight=4) as writer:
        buf = memoryview(bytearray(window))
        copied = 0
        while True:
            n = await reader.readinto(buf)
            if n == 0:
                break
            await writer.write(buf[:n])
            copied += n
            progress.update(n)
        if copied != job.info.size:  # raised inside the block: the writer aborts
            raise ObjectChangedError(f"{job.shown} changed size while it was copied", url=job.info.url)


async def cmd_bench(client: AsyncClient, args: argparse.Namespace) -> int:
    loc, _ = client.backend(args.url)
    objects: list[tuple[Location, int]] = []
    if loc.is_prefix or _is_local_dir(loc):
        prefix = _as_prefix(loc)
        async for rel, info in _listed(client, prefix, lambda message: _report("bench", message)):
            if info.size > 0:
                objects.append((_source(prefix, rel), info.size))
                if len(objects) >= args.max_objects:
                    break
        if not objects:
            raise ObjectNotFoundError(f"no non-empty objects under {prefix.url}", url=prefix.url)
    else:
        info = await client.head(loc)
        if info.size == 0:
            raise CommandError(f"{info.url} is empty: nothing to read", url=info.url)
        objects.append((loc, info.size))

    part = client.config.part_size
    read_size = min(max(size for _, size in objects), args.read_size or 8 * part)
    parts_per_read = math.ceil(read_size / part)
    workers = max(1, math.ceil(client.config.max_concurrency / parts_per_read))
    reads = [(obj, offset, min(read_size, size - offset))
             for obj, size in objects for offset in range(0, size, read_size)]
    total = sum(size for _, size in objects)
    if not args.json:
        print(f"bench: {args.url}: {len(objects)} object(s), {human(total)}; "
              f"{args.seconds:g} s, {workers} reader(s) of up to {human(read_size)}, "
              f"{client.config.max_concurrency} GETs in flight, parts of {human(part)}",
              flush=True)

    latencies: list[float] = []
    done = 0
    cursor = 0
    before = client.statistics()
    t0 = time.perf_counter()
    deadline = t0 + args.seconds

    async def worker() -> None:
        nonlocal done, cursor
        buffer = memoryview(bytearray(read_size))  # reused for every read
        while time.perf_counter() < deadline:
            obj, offset, length = reads[cursor % len(reads)]
            cursor += 1
            started = time.perf_counter()
            n = await client.get_into(obj, buffer[:length], start=offset)
            latencies.append(time.perf_counter() - started)
            done += n

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - t0
    after = client.statistics()
    latencies.sort()

    def quantile(q: float) -> float:
        if not latencies:
            return math.nan
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    result = {
        "url": args.url, "seconds": round(elapsed, 3), "bytes": done,
        "gb_per_s": round(done / elapsed / 1e9, 4), "reads": len(latencies),
        "requests": after.requests - before.requests, "retries": after.retries - before.retries,
        "p50_ms": round(quantile(0.50), 3), "p99_ms": round(quantile(0.99), 3),
        "read_size": read_size, "part_size": part, "concurrency": client.config.max_concurrency,
        "readers": workers,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"throughput: {result['gb_per_s']:.3f} GB/s ({human(done)} in {elapsed:.2f} s)")
    print(f"requests:   {result['requests']} GETs for {result['reads']} reads, "
          f"{result['retries']} retries")
    print(f"latency:    p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms per read")
    return EXIT_OK


async def cmd_cache(client: AsyncClient, args: argparse.Namespace) -> int:
    """``cache ls``: cached objects; ``du``: bytes on disk; ``clear``: delete every block."""
    from ._cache._store import Store

    options = client.config.cache
    folder = args.dir or (options.dir if options is not None else None)
    if not folder:
        raise CommandError("no cache folder: set AISIO_CACHE_DIR or pass --dir")
    folder = os.path.abspath(os.path.expanduser(folder))
    store = Store(folder, options.max_bytes if options is not None else 1, 4096)
    size = human if args.human_readable else str
    exists = os.path.isdir(store.root)  # if not: nothing cached there, and nothing to create
    if args.action == "clear":
        print(f"cleared {size(store.clear() if exists else 0)} from {folder}")
        return EXIT_OK
    entries = store.summaries() if exists else []
    total, blocks = store.usage() if exists else (0, 0)
    if args.json and args.action == "ls":
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
    elif args.action == "ls":
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            print(f"{size(e.bytes):>12} {size(e.object_size):>12}  {when}  {printable(e.url)}")
    elif args.json:
        limit = options.max_bytes if options is not None and options.dir == folder else None
        print(json.dumps({"dir": folder, "bytes": total, "blocks": blocks, "objects": len(entries),
                          "max_bytes": limit}))
    else:
        print(f"{size(total)}\t{folder} ({blocks} blocks of {len(entries)} objects)")
    return EXIT_OK


def _add_cache_command(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("cache", "inspect or empty the local cache",
                "Show what the local cache holds (ls: cached bytes, object size, last use, URL), "
                "the room it takes (du), or empty it (clear: blocks that running processes are "
                "writing stay). The folder is AISIO_CACHE_DIR unless --dir names one.",
                "  aisio cache ls\n  aisio cache du --human-readable\n"
                "  aisio cache clear --dir /local/nvme/aisio")
    p.add_argument("action", choices=("ls", "du", "clear"), metavar="{ls,du,clear}")
    p.add_argument("--dir", metavar="DIR", help="the cache folder (default: AISIO_CACHE_DIR)")
    p.add_argument("--json", action="store_true", help="print JSON (ls, du)")
    p.add_argument("--human-readable", action="store_true", help="sizes as KiB, MiB, ...")


async def cmd_manifest(client: AsyncClient, args: argparse.Namespace) -> int:
    """``manifest PREFIX OUT_URL``: one gzip-compressed JSON line per object under PREFIX
    (``{"url", "size", "etag"}``, listing order), which ``from_manifest`` reads instead of
    listing. The manifest itself is left out when it lies under PREFIX."""
    import zlib

    out = parse_url(args.out_url)
    if out.is_prefix:
        raise CommandError(f"OUT_URL names a prefix, not an object: {out.url}")
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip container
    count = 0
    async with client.writer(out.url) as w:
        chunk = bytearray()
        async for info in client.list(args.prefix, recursive=True):
            if info.url == out.url:
                continue
            entry = {"url": info.url, "size": info.size, "etag": info.etag}
            chunk += json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            count += 1
            if len(chunk) >= MiB:
                await w.write(packer.compress(bytes(chunk)))
                chunk.clear()
        await w.write(packer.compress(bytes(chunk)) + packer.flush())
    print(f"{count} objects -> {printable(out.url)}")
    return EXIT_OK


async def cmd_verify(client: AsyncClient, args: argparse.Namespace) -> int:
    """``verify URL``: check a DCP checkpoint without loading it (``aisio.torch.dcp.verify``):
    every file read front to back, each item against its size and recorded CRC. A damaged
    checkpoint is an IntegrityError listing what is wrong: exit status 1."""
    from .torch import dcp  # torch only for this command

    report = await dcp.averify(client, args.url, args.rank)
    print(f"{printable(report.url)}: ok: {report.files} files, {report.items} items "
          f"({report.checksummed} checked by CRC, {report.items - report.checksummed} by size), "
          f"{human(report.bytes_read)} read")
    return EXIT_OK


def _add_verify_command(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("verify", "check a DCP checkpoint without loading it",
                "Read every .distcp file of the torch.distributed.checkpoint at URL and check "
                "each stored item against the metadata: its place in the file, and the CRC32C "
                "aisio's StorageWriter recorded for it (checkpoints from torch's own writer "
                "have none: sizes only). Whole files are also checked against the store's own "
                "checksum where it keeps one. Exit status 1 if anything is wrong. Needs torch.",
                "  aisio verify s3://bucket/checkpoints/step-1000\n"
                "  aisio verify --rank 3 ./ckpt    # saved without collectives: __3.metadata")
    p.add_argument("url", metavar="URL", help="the checkpoint's folder")
    p.add_argument("--rank", type=int, default=None, metavar="N",
                   help="read __N.metadata (a checkpoint saved without collectives)")


def _add_manifest_command(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("manifest", "write a listing that datasets read instead of listing",
                "List every object under PREFIX (recursively) and write OUT_URL: one line per "
                "object, {\"url\", \"size\", \"etag\"} as JSON, gzip-compressed. "
                "aisio.torch's from_manifest(OUT_URL) builds a dataset from it without listing, "
                "and reports objects whose ETag changed since.",
                "  aisio manifest s3://bucket/train/ s3://bucket/manifests/train.jsonl.gz\n"
                "  aisio manifest ais://shards/ ./shards.jsonl.gz")
    p.add_argument("prefix", metavar="PREFIX")
    p.add_argument("out_url", metavar="OUT_URL")


# --------------------------------------------------------------------------- parser


_COMMANDS: dict[str, Callable[[AsyncClient, argparse.Namespace], Any]] = {
    "ls": cmd_ls, "cat": cmd_cat, "cp": cmd_cp, "stat": cmd_stat, "bench": cmd_bench,
    "cache": cmd_cache, "manifest": cmd_manifest, "verify": cmd_verify,
}
_WRITES_STDOUT = frozenset({"ls", "cat", "stat", "bench", "cache", "verify"})

_EPILOG = """\
URLs: s3://bucket/key, ais://bucket/object (ais://bucket/key?provider=aws for a bucket
AIS fronts), file:///abs/path or a plain path. A prefix ends in '/' or is a bare bucket.

Settings come from the environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, AWS_*
credentials, AIS_ENDPOINT, AIS_AUTHN_TOKEN, AISIO_PART_SIZE, AISIO_MAX_CONCURRENCY, ...);
the flags above override them. Exit status: 0 ok, 1 error, 2 usage, 130 interrupted,
141 stdout closed by its reader (aisio cat URL | head)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _config_options() -> _Parser:
    """The settings every command takes (before or after the command name)."""
    p = _Parser(add_help=False)
    g = p.add_argument_group("settings (override the environment)")
    s = argparse.SUPPRESS
    g.add_argument("--endpoint-url", metavar="URL", default=s,
                   help="S3 endpoint, for S3-compatible stores (AWS_ENDPOINT_URL)")
    g.add_argument("--region", default=s, help="S3 region (AWS_REGION)")
    g.add_argument("--profile", default=s, help="AWS credentials profile (AWS_PROFILE)")
    g.add_argument("--no-sign-request", action="store_true", default=s,
                   help="anonymous S3 requests, for public buckets")
    g.add_argument("--ais-endpoint", metavar="URL", default=s,
                   help="AIStore gateway, e.g. http://ais-proxy:51080 (AIS_ENDPOINT)")
    g.add_argument("--part-size", type=_size_arg, metavar="SIZE", default=s,
                   help="bytes per range GET / upload part, e.g. 8MiB (AISIO_PART_SIZE)")
    g.add_argument("--max-concurrency", type=_positive_int, metavar="N", default=s,
                   help="range GETs in flight (AISIO_MAX_CONCURRENCY)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _config_options()
    parser = _Parser(
        prog="aisio", parents=[common], epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="List, read, copy and benchmark objects in S3, AIStore and local files.")
    parser.add_argument("--version", action="version", version=f"aisio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    def command(name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=help, description=description,
            epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("ls", "list objects under a prefix",
                "List the objects and sub-folders directly under a prefix (or everything below it "
                "with -r). A URL naming one object lists that object.",
                "  aisio ls s3://bucket/images/\n  aisio ls -lr ais://bucket/shards/\n"
                "  aisio ls -l --human-readable ./data/")
    p.add_argument("url", metavar="URL")
    p.add_argument("-l", "--long", action="store_true", help="show size and last-modified time")
    p.add_argument("-r", "--recursive", action="store_true", help="list every object below")
    p.add_argument("--human-readable", action="store_true", help="sizes as KiB, MiB, ... (with -l)")

    p = command("cat", "write an object's bytes to stdout",
                "Write an object's raw bytes (or a byte range of it) to stdout.",
                "  aisio cat s3://bucket/a.json\n  aisio cat --range 0:512 ais://b/shard.tar | xxd\n"
                "  aisio cat --range -100: ./log.txt    # the last 100 bytes")
    p.add_argument("url", metavar="URL")
    p.add_argument("--range", type=_range_arg, metavar="START:END",
                   help="bytes [START, END), a Python slice: either side optional, negative "
                        "numbers count from the end")

    p = command("cp", "copy objects between local paths and stores",
                "Copy one object, or with -r every object under a prefix, between local paths, "
                "s3:// and ais:// (either way, or store to store). With -r, keys relative to SRC "
                "are placed under DST; keys that would land outside DST (absolute, with '..', or "
                "through a symbolic link) are refused. Several objects are copied at once; large "
                "ones stream through concurrent range GETs and multipart uploads.",
                "  aisio cp ./model.pt s3://bucket/models/\n"
                "  aisio cp -r s3://bucket/dataset/ ./dataset/\n"
                "  aisio cp -r --jobs 32 s3://src/shards/ ais://dst/shards/")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST",
                   help="an object URL or path, or a folder/prefix (ending in '/') to copy into")
    p.add_argument("-r", "--recursive", action="store_true", help="copy everything under SRC")
    p.add_argument("-j", "--jobs", type=_positive_int, default=8, metavar="N",
                   help="objects copied at once (default: 8)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal; needs tqdm)")

    p = command("stat", "show size, etag and last-modified time",
                "Show an object's size, etag and last-modified time.",
                "  aisio stat s3://bucket/a.bin\n  aisio stat --json ais://b/x ais://b/y")
    p.add_argument("urls", metavar="URL", nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("bench", "measure read throughput",
                "Read one object, or the objects under a prefix, over and over into reused "
                "buffers with get_into for a fixed time, and report throughput (decimal GB/s), "
                "requests and per-read latency. Memory: about concurrency x part size.",
                "  aisio bench s3://bucket/big.bin --seconds 20\n"
                "  aisio bench ais://bucket/shards/ --concurrency 128 --part-size 16MiB")
    p.add_argument("url", metavar="URL")
    p.add_argument("--seconds", type=_positive_float, default=10.0, metavar="N",
                   help="how long to read (default: 10)")
    p.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help="range GETs in flight (default: --max-concurrency)")
    p.add_argument("--read-size", type=_size_arg, metavar="SIZE",
                   help="bytes per get_into (default: the object, at most 8 parts)")
    p.add_argument("--max-objects", type=_positive_int, default=10_000, metavar="N",
                   help="objects taken from a prefix (default: 10000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_cache_command(command)
    _add_manifest_command(command)
    _add_verify_command(command)
    return parser


def config_from_args(args: argparse.Namespace) -> ClientConfig:
    """ClientConfig.from_env() with the command-line settings applied."""
    config = ClientConfig.from_env()
    s3 = config.s3
    for flag, field in (("endpoint_url", "endpoint_url"), ("region", "region"),
                        ("profile", "profile"), ("no_sign_request", "unsigned")):
        if hasattr(args, flag):
            s3 = dataclasses.replace(s3, **{field: getattr(args, flag)})
    ais = config.ais
    if hasattr(args, "ais_endpoint"):
        ais = dataclasses.replace(ais, endpoint=args.ais_endpoint)
    changes: dict[str, object] = {"s3": s3, "ais": ais}
    if hasattr(args, "part_size"):
        changes["part_size"] = args.part_size
    if hasattr(args, "max_concurrency"):
        changes["max_concurrency"] = args.max_concurrency
    if getattr(args, "command", None) == "bench" and args.concurrency:
        changes["max_concurrency"] = args.concurrency
    return config.replace(**changes)


def _message(exc: BaseException) -> str:
    """One line, no secrets."""
    if isinstance(exc, AisioError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    elif isinstance(exc, ValueError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return redact(" ".join(text.split()))


def _report(command: str, message: str) -> None:
    if sys.stderr is not None:
        print(f"aisio: {command}: {printable(message)}", file=sys.stderr)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _run(args: argparse.Namespace, config: ClientConfig) -> int:
    async with AsyncClient(config) as client:
        result: int = await _COMMANDS[args.command](client, args)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aisio`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    argv = _join_negative_ranges(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if sys.stdout is None and args.command in _WRITES_STDOUT:  # started with stdout closed (>&-)
        _report(args.command, "stdout is closed")
        return EXIT_ERROR
    try:
        config = config_from_args(args)
        code = asyncio.run(_run(args, config))
        if sys.stdout is not None:
            sys.stdout.flush()  # here, so a reader gone away is 141, not an error at exit
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except BaseException as exc:  # reported in one line: no traceback
        inner = _unwrap(exc)
        if isinstance(inner, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if isinstance(inner, BrokenPipeError):
            _silence_stdout()
            return EXIT_PIPE
        if isinstance(inner, SystemExit):
            raise
        if not isinstance(inner, Exception):
            raise
        _report(args.command, _message(inner))
        return EXIT_ERROR


def _join_negative_ranges(argv: list[str]) -> list[str]:
    """``--range -100:`` reads as ``--range=-100:`` (argparse would take -100: for an option)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--range" and i + 1 < len(argv) and re.match(r"^-\d+:-?\d*$", argv[i + 1]):
            out.append(f"--range={argv[i + 1]}")
            i += 2
            continue
        if argv[i] == "--":
            out.extend(argv[i:])
            break
        out.append(argv[i])
        i += 1
    return out


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)

