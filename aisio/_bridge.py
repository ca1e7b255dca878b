"""The sync bridge: one event-loop thread per process drives the async core for sync callers.

The loop thread starts on first use and is made anew in a forked child (the parent's
thread does not exist there). ``Client``, its readers and writers are thin twins of the
async ones: each method runs the async method on the loop thread and waits. A caller
interrupted while waiting (KeyboardInterrupt, a closed reader) cancels the task, so
its GETs stop and their connections are closed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import inspect
import io
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any, TypeVar

import anyio
import anyio._backends._asyncio  # here, not in the loop thread: see below
from anyio.from_thread import BlockingPortal

# What the loop thread needs is imported with aisio, so a DataLoader's forked workers inherit
# it instead of each paying about 85 ms on its first read (4 workers on 2 cores: 0.60 to
# 0.16 s to the first batch); a fresh process pays it once either way.
with contextlib.suppress(ImportError):
    import uvloop  # noqa: F401

from ._client import AsyncClient
from ._config import ClientConfig
from ._engine import Statistics
from ._readers import AsyncReader, ReaderConstructor
from ._types import ObjectInfo
from ._writer import AsyncWriter
from .errors import ClosedError

__all__ = ["Client", "Reader", "Writer", "call_soon", "run", "submit"]

T = TypeVar("T")
_LIST_BATCH = 1000


class _LoopThread(threading.Thread):
    """A daemon thread running an asyncio loop with an anyio portal into it."""

    def __init__(self) -> None:
        super().__init__(name="aisio-loop", daemon=True)
        self.portal: BlockingPortal | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            anyio.run(self._main, backend="asyncio", backend_options={"use_uvloop": _use_uvloop()})
        except BaseException as exc:  # surfaced to the caller waiting in start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        async with BlockingPortal() as portal:
            self.loop = asyncio.get_running_loop()
            self.portal = portal
            self._ready.set()
            await portal.sleep_until_stopped()

    def start_portal(self) -> BlockingPortal:
        self.start()
        self._ready.wait()
        if self.portal is None:
            raise RuntimeError("aisio's event-loop thread failed to start") from self._error
        return self.portal


def _use_uvloop() -> bool:
    """uvloop when installed (about 1.1x the throughput, less CPU); AISIO_UVLOOP=0 turns it off."""
    if os.environ.get("AISIO_UVLOOP", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


_lock = threading.Lock()
_thread: _LoopThread | None = None
_thread_pid = -1


def _after_fork_in_child() -> None:
    global _thread, _thread_pid, _lock
    _lock = threading.Lock()
    _thread, _thread_pid = None, -1


os.register_at_fork(after_in_child=_after_fork_in_child)


def _portal() -> BlockingPortal:
    """This process's portal into the loop thread, started on first use."""
    global _thread, _thread_pid
    thread = _thread
    if thread is not None and thread.portal is not None and _thread_pid == os.getpid():
        return thread.portal
    with _lock:
        if _thread is None or _thread_pid != os.getpid():
            _thread, _thread_pid = _LoopThread(), os.getpid()
            return _thread.start_portal()
        assert _thread.portal is not None
        return _thread.portal


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` on the loop thread and wait; an interrupted wait cancels it."""
    return _wait(_portal().start_task_soon(fn, *args))


def submit(fn: Callable[..., Awaitable[T]], *args: Any) -> Future[T]:
    """Start ``fn(*args)`` on the loop thread; cancelling the future cancels the task.

    The building block of prefetching iterators: keep several futures in flight and
    wait on them in order.
    """
    return _portal().start_task_soon(fn, *args)


def _wait(future: Future[T]) -> T:
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def call_soon(fn: Callable[[], object], pid: int | None = None) -> None:
    """Call ``fn()`` on the loop thread, starting it as a task if it returns an awaitable.

    Never blocks (unlike a portal call, which waits for the loop to pick the task up), so
    it is safe from ``__del__``, atexit and cleanup paths; a no-op in a forked child
    (``pid`` of the creator differs), before the loop exists, or at interpreter shutdown.
    """
    thread = _thread
    if (pid is not None and pid != os.getpid()) or thread is None or thread.loop is None:
        return
    if sys.is_finalizing():
        return

    def start() -> None:
        result = fn()
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _BACKGROUND.add(task)
            task.add_done_callback(_settle)

    if threading.current_thread() is thread:
        start()
        return
    with contextlib.suppress(RuntimeError):  # the loop is closed
        thread.loop.call_soon_threadsafe(start)


_BACKGROUND: set[asyncio.Future[Any]] = set()


def _settle(task: asyncio.Future[Any]) -> None:
    """Forget a finished background task; its error is cleanup's, already moot."""
    _BACKGROUND.discard(task)
    if not task.cancelled():
        task.exception()


class Client:
    """The blocking twin of ``AsyncClient``: same methods, driven on the process's loop thread.

    Safe to share between threads and to pickle-free reuse after fork: in a child
    process it quietly opens its own connections.
    """

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config if config is not None else ClientConfig.from_env()
        self._aclient: AsyncClient | None = None
        self._pid = -1
        self._closed = False

    def __repr__(self) -> str:
        return f"<Client {'closed' if self._closed else 'open'}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}  # connections never cross processes

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aclient(self) -> AsyncClient:
        """The AsyncClient behind this client, in this process (made anew after fork)."""
        if self._closed:
            raise ClosedError("the client is closed")
        if self._aclient is None or self._pid != os.getpid():
            if self._aclient is not None:
                _ABANDONED.append(self._aclient)  # the parent's: never closed from here
            self._aclient, self._pid = AsyncClient(self.config), os.getpid()
        return self._aclient

    def statistics(self) -> Statistics:
        return self.aclient.statistics()

    def head(self, url: object) -> ObjectInfo:
        return run(self.aclient.head, url)

    def list(self, prefix_url: object, *, recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects under a prefix; pages are fetched as you iterate."""
        agen = self.aclient.list(prefix_url, recursive=recursive)

        async def batch() -> builtins.list[ObjectInfo]:
            out: builtins.list[ObjectInfo] = []
            async for info in agen:
                out.append(info)
                if len(out) >= _LIST_BATCH:
                    break
            return out

        try:
            while chunk := run(batch):
                yield from chunk
        finally:
            run(agen.aclose)

    def get(self, url: object, start: int = 0, end: int | None = None, *,
            etag: str | None = None) -> bytes:
        return run(functools.partial(self.aclient.get, etag=etag), url, start, end)

    def get_view(self, url: object, start: int = 0, end: int | None = None) -> memoryview:
        return run(self.aclient.get_view, url, start, end)

    def get_into(self, url: object, buffer: Any, start: int = 0) -> int:
        return run(self.aclient.get_into, url, buffer, start)

    def get_ranges(self, url: object, ranges: Sequence[tuple[int, int]],
                   max_gap: float = 2**20) -> builtins.list[memoryview]:
        return run(self.aclient.get_ranges, url, ranges, max_gap)

    def get_ranges_into(self, url: object, segments: Sequence[tuple[int, Any]],
                        max_gap: float = 2**20) -> None:
        run(self.aclient.get_ranges_into, url, segments, max_gap)

    def open(self, url: object, reader: ReaderConstructor | None = None, *,
             info: ObjectInfo | None = None,
             ranges: Sequence[tuple[int, int]] | None = None) -> Reader:
        """A blocking file object (``io.BufferedIOBase``) over one object."""
        aclient = self.aclient

        async def _open() -> AsyncReader:
            return await aclient.open(url, reader, info=info, ranges=ranges)

        return Reader(run(_open))

    def put(self, url: object, data: Any) -> ObjectInfo:
        return run(self.aclient.put, url, data)

    def writer(self, url: object, *, max_in_flight: int | None = None) -> Writer:
        """A blocking, writable file object; parts upload concurrently in the background."""
        return Writer(self.aclient.writer(url, max_in_flight=max_in_flight))

    def delete(self, url: object) -> None:
        run(self.aclient.delete, url)

    def close(self) -> None:
        """Close this process's connections; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        aclient, self._aclient = self._aclient, None
        if aclient is not None and self._pid == os.getpid():
            run(aclient.aclose)


_ABANDONED: list[AsyncClient] = []


class Reader(io.BufferedIOBase):
    """A blocking file object over an AsyncReader; reads of held bytes skip the loop thread."""

    def __init__(self, areader: AsyncReader) -> None:
        super().__init__()
        self._r = areader
        self._pid = os.getpid()
        self._pending: Future[Any] | None = None
        self.name = areader.url

    def __del__(self) -> None:
        if not self._r.closed:
            call_soon(self._r.aclose, self._pid)

    def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Like ``run``, but ``close()`` from another thread cancels the call."""
        self._pending = future = _portal().start_task_soon(fn, *args)
        try:
            return _wait(future)
        except CancelledError:
            raise ClosedError(f"{self._r.url} was closed during a read", url=self._r.url) from None
        finally:
            self._pending = None

    def __repr__(self) -> str:
        return f"<aisio.Reader {self._r.url} pos={self._r._pos}>"

    @property
    def size(self) -> int:
        return self._r.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._r.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._r.seek(offset, whence)

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            buf = bytearray(size)
            n = self.readinto(buf)
            # not del buf[n:]: a view of buf may outlive the read (in a retried error's
            # traceback, until the GC runs), and a bytearray with views cannot shrink
            return bytes(memoryview(buf)[:n])
        return self._run(self._r.read, size)

    read1 = read

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        got = self._r.read_nowait(view)
        if got is not None:
            return got
        return self._run(self._r.readinto, view)

    readinto1 = readinto

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if self._r.closed:
            return
        if self._pid != os.getpid():
            self._r.closed = True  # the parent's reader: its connection is not ours to use
            return
        pending = self._pending
        if pending is not None:
            pending.cancel()
        run(self._r.aclose)

    @property
    def closed(self) -> bool:
        return self._r.closed


class Writer(io.BufferedIOBase):
    """A blocking, writable file object over an AsyncWriter (usable with ``torch.save``)."""

    def __init__(self, awriter: AsyncWriter) -> None:
        super().__init__()
        self._w = awriter
        self._pid = os.getpid()
        self.name = awriter.url

    def __del__(self) -> None:
        if not self._w.closed:  # never completed: an abandoned upload must not appear
            call_soon(self._w.abort, self._pid)

    def __repr__(self) -> str:
        return f"<aisio.Writer {self._w.url}>"

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._w.tell()

    def write(self, data: Any) -> int:
        return run(self._w.write, data)

    def flush(self) -> None:
        return None

    def abort(self) -> None:
        """Discard the upload; nothing becomes visible."""
        run(self._w.abort)

    @property
    def info(self) -> ObjectInfo | None:
        return self._w.info

    def close(self) -> None:
        """Finish the upload and make the object visible."""
        if not self._w.closed:
            run(self._w.close)

    @property
    def closed(self) -> bool:
        return self._w.closed
