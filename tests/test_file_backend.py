"""The file backend against hostile local files: FIFOs, pseudo files, failed and cancelled writes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import os
import re
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

import aisio
from aisio import ObjectInfo
from aisio._retry import is_transient
from aisio._url import file_url, parse_url
from aisio.errors import (
    AccessDeniedError,
    AisioError,
    InvalidURLError,
    ObjectChangedError,
    RequestError,
)

from .conftest import API

KiB = 2**10
PART = 64 * KiB  # writes larger than this go up as multipart uploads
TEMP = re.compile(r"\..*\.aisio-[0-9a-f]{16}\.part", re.DOTALL)  # the file backend's temp names
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and /sys")


@pytest.fixture(params=["async", "sync"])
async def fapi(request: pytest.FixtureRequest) -> AsyncIterator[API]:
    config = aisio.ClientConfig(part_size=PART)
    if request.param == "async":
        async with aisio.AsyncClient(config) as ac:
            yield API(ac)
    else:
        client = aisio.Client(config)
        try:
            yield API(client)
        finally:
            await anyio.to_thread.run_sync(client.close)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def read_through_a_reader(api: API, url: str, info: ObjectInfo | None = None) -> bytes:
    reader = await api.open(url, info=info)
    try:
        return await reader.read()
    finally:
        await reader.close()


READS: dict[str, Callable[[API, str], Awaitable[Any]]] = {
    "head": lambda api, url: api.head(url),
    "get": lambda api, url: api.get(url),
    "get_into": lambda api, url: api.get_into(url, bytearray(100)),
    "get_ranges": lambda api, url: api.get_ranges(url, [(0, 1), (5, 8)]),
    "open": lambda api, url: read_through_a_reader(api, url),
    # a listing's info skips the HEAD: the reader's own GET must refuse
    "open_with_info": lambda api, url: read_through_a_reader(api, url, ObjectInfo(file_url(url), 10)),
}


# --------------------------------------------------------------------------- reads


@contextlib.contextmanager
def released_after(fifo: str, seconds: float) -> Iterator[None]:
    """Should a read block opening ``fifo``, a writer appears after ``seconds``: the test fails, not hangs."""
    stop = threading.Event()

    def release() -> None:
        if not stop.wait(seconds):
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("how", list(READS))
async def test_a_fifo_is_refused_without_blocking(fapi: API, tmp_path: Path, how: str) -> None:
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with released_after(fifo, 3.0), pytest.raises(InvalidURLError) as info:
        await READS[how](fapi, fifo)
    assert time.monotonic() - t0 < 2.0
    assert "FIFO" in str(info.value) and file_url(fifo) in str(info.value)
    assert info.value.url == file_url(fifo)


@pytest.mark.parametrize("how", list(READS))
async def test_devices_and_directories_are_refused(fapi: API, tmp_path: Path, how: str) -> None:
    for path, kind in (("/dev/zero", "character device"), (str(tmp_path), "directory")):
        with pytest.raises(InvalidURLError) as info:
            await READS[how](fapi, path)
        assert kind in str(info.value) or "directory" in str(info.value), info.value


@linux_only
@pytest.mark.parametrize("how", list(READS))
async def test_a_proc_file_is_an_error_not_empty_bytes(fapi: API, how: str) -> None:
    path = "/proc/self/status"  # stat says 0 bytes; reading gives text
    assert os.stat(path).st_size == 0
    with pytest.raises(InvalidURLError) as info:
        await READS[how](fapi, path)
    assert "size unknown" in str(info.value) and file_url(path) in str(info.value)


async def test_an_empty_regular_file_is_still_empty(fapi: API, tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert (await fapi.head(str(path))).size == 0
    assert await fapi.get(str(path)) == b""
    assert await read_through_a_reader(fapi, str(path)) == b""


@linux_only
async def test_a_file_shorter_than_its_size_is_an_error_at_once(fapi: API) -> None:
    # /sys attributes say 4096 bytes and hold a few: ObjectChangedError, not short bytes
    # and not a TransientError after retries
    candidates = [p for p in glob.glob("/sys/kernel/*") + glob.glob("/sys/devices/system/cpu/*")
                  if os.path.isfile(p) and os.access(p, os.R_OK)]
    for path in candidates:
        try:
            with open(path, "rb") as f:
                length = len(f.read())
        except OSError:
            continue
        if 0 < length < os.stat(path).st_size:
            break
    else:
        pytest.skip("no /sys file whose size is more than its length")
    before = fapi.statistics().retries
    with pytest.raises(ObjectChangedError) as info:
        await fapi.get(path)
    assert file_url(path) in str(info.value)
    assert fapi.statistics().retries == before


# --------------------------------------------------------------------------- writes


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """A folder no one can create files in: immutable (chattr +i) for root, mode 555 otherwise."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            old = fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0))
            flags = struct.unpack("i", old)[0] | FS_IMMUTABLE_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))
        except OSError as exc:
            pytest.skip(f"cannot make a folder immutable here: {exc}")
        try:
            yield
        finally:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, old)
    finally:
        os.close(fd)


def write_case(
    tmp_path: Path, case: str
) -> tuple[str, type[AisioError], contextlib.AbstractContextManager[None]]:
    """(target path, the error expected, a context to write in) for one way a write fails."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_bytes(b"untouched")
    if case == "directory":
        (folder / "d").mkdir()
        (folder / "d" / "inner").write_bytes(b"inner")
        return str(folder / "d"), InvalidURLError, contextlib.nullcontext()
    if case == "name_too_long":
        return str(folder / ("n" * 300)), InvalidURLError, contextlib.nullcontext()
    if case == "parent_is_a_file":
        return str(folder / "keep.txt" / "x"), InvalidURLError, contextlib.nullcontext()
    if case == "permission":
        return str(folder / "x"), AccessDeniedError, read_only_folder(folder)
    raise AssertionError(case)


async def write_by(api: API, how: str, url: str, data: bytes) -> ObjectInfo:
    if how == "put":
        info: ObjectInfo = await api.put(url, data)
        return info
    return await api.write(url, [data[i:i + 10_000] for i in range(0, len(data), 10_000)])


@pytest.mark.parametrize("case", ["directory", "name_too_long", "parent_is_a_file", "permission"])
@pytest.mark.parametrize("size", [100, 5 * PART + 7])  # one write, or a multipart upload
@pytest.mark.parametrize("how", ["put", "writer"])
async def test_a_failed_write_leaves_nothing_and_names_the_url(
    fapi: API, tmp_path: Path, case: str, size: int, how: str
) -> None:
    target, expected, context = write_case(tmp_path, case)
    before = tree(tmp_path)
    with context, pytest.raises(AisioError) as info:
        await write_by(fapi, how, target, os.urandom(size))
    exc = info.value
    assert type(exc) is expected, repr(exc)
    assert exc.url == file_url(target) and file_url(target) in str(exc)
    assert ".part" not in str(exc) and "aisio-" not in str(exc)
    assert not is_transient(exc)
    assert tree(tmp_path) == before  # no temp file, nothing changed


@linux_only
@pytest.mark.parametrize("how", ["put", "writer"])
async def test_any_other_write_failure_is_a_request_error(fapi: API, how: str) -> None:
    target = f"/proc/self/aisio-test-{os.getpid()}"  # no file can be created in /proc
    with pytest.raises(RequestError) as info:
        await write_by(fapi, how, target, b"x" * 100)
    assert type(info.value) is RequestError and info.value.status is None
    assert file_url(target) in str(info.value) and not is_transient(info.value)


class Boom(Exception):
    """Raised inside a writer's block."""


async def test_an_aborted_writer_leaves_nothing(fapi: API, tmp_path: Path) -> None:
    target = str(tmp_path / "obj.bin")

    async def write_then_fail() -> None:
        if fapi.sync:
            def blocking() -> None:
                assert isinstance(fapi.client, aisio.Client)
                with fapi.client.writer(target) as w:
                    w.write(b"x" * (3 * PART + 5))
                    raise Boom
            await anyio.to_thread.run_sync(blocking)
            return
        assert isinstance(fapi.client, aisio.AsyncClient)
        async with fapi.client.writer(target) as aw:
            await aw.write(b"x" * (3 * PART + 5))
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()
    assert tree(tmp_path) == {}


def open_descriptors() -> int:
    """Descriptors this process holds (Linux), to catch one a cancelled write leaked."""
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


async def left_behind(folder: Path, descriptors: int, seconds: float = 5.0) -> tuple[list[str], int]:
    """(files in ``folder``, descriptors over ``descriptors``) once abandoned worker threads
    are done, or when time is up."""
    deadline = time.monotonic() + seconds
    while (os.listdir(folder) or open_descriptors() > descriptors) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a thread that made a file late has had time to
    return os.listdir(folder), open_descriptors() - descriptors


@pytest.mark.parametrize("steps", range(0, 40, 3))
async def test_a_cancelled_write_leaves_nothing(tmp_path: Path, steps: int) -> None:
    # Task.cancel() leaves worker threads running: whatever they make must still go away
    before = open_descriptors()
    async with aisio.AsyncClient(aisio.ClientConfig(part_size=PART)) as client:
        task = asyncio.ensure_future(client.put(str(tmp_path / "obj.bin"), b"y" * (40 * PART)))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await left_behind(tmp_path, before) == ([], 0)


async def test_a_write_cancelled_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    before = open_descriptors()
    async with aisio.AsyncClient(aisio.ClientConfig(part_size=PART)) as client:
        task = asyncio.ensure_future(client.put(str(tmp_path / "obj.bin"), b"z" * (400 * PART)))
        deadline = time.monotonic() + 10
        while not any(TEMP.fullmatch(n) for n in os.listdir(tmp_path)):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await left_behind(tmp_path, before) == ([], 0)


# --------------------------------------------------------------------------- listing


async def test_list_hides_exactly_the_temp_files_of_writes_in_progress(fapi: API, tmp_path: Path) -> None:
    user_files = [".x.part", "x.part", ".x.aisio-.part", ".x.aisio-0123456789abcdeg.part",
                  ".x.aisio-0123456789abcdef.part.bak", "x.aisio-0123456789abcdef.part", "y"]
    for name in user_files:
        (tmp_path / name).write_bytes(b"mine")
    started, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with aisio.Client(aisio.ClientConfig(part_size=PART)) as client, \
                client.writer(str(tmp_path / "big.bin")) as w:
            w.write(b"w" * (2 * PART))  # the first part is on disk, in a temp file
            started.set()
            release.wait(10)

    thread = threading.Thread(target=slow_writer)
    thread.start()
    try:
        assert started.wait(10)
        temps = [n for n in os.listdir(tmp_path) if n not in user_files]
        assert len(temps) == 1 and TEMP.fullmatch(temps[0]) and temps[0].startswith(".big.bin.")
        listed = [os.path.basename(i.url) for i in await fapi.list(str(tmp_path) + "/")]
        assert listed == sorted(user_files)
    finally:
        release.set()
        thread.join()
    listed = [os.path.basename(i.url) for i in await fapi.list(str(tmp_path) + "/")]
    assert listed == sorted([*user_files, "big.bin"])


async def test_names_that_are_not_utf8_or_hold_control_characters_are_listed_and_read(
    fapi: API, tmp_path: Path
) -> None:
    raw_names = [b"caf\xe9.bin", b"esc\x1b[2J.txt", b"new\nline", b"ok.txt"]
    for raw in raw_names:
        with open(os.fsencode(str(tmp_path)) + b"/" + raw, "wb") as f:
            f.write(raw)
    infos = await fapi.list(str(tmp_path) + "/")
    assert sorted(os.fsencode(parse_url(i.url).key).rsplit(b"/", 1)[1]
                  for i in infos) == sorted(raw_names)
    for i in infos:
        assert i.url.isascii()
        assert await fapi.get(i.url) == os.fsencode(os.path.basename(parse_url(i.url).key))
