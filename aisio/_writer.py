"""The multipart writer: parts uploaded concurrently while the caller keeps writing.

An object smaller than one part is a single PUT. Larger ones become a multipart upload
whose parts go up in the background, at most ``max_in_flight`` at once (``write`` waits
beyond that, so memory stays bounded). Any failure, or leaving the ``async with`` block
with an exception, aborts the upload: no partial object ever becomes visible.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio

from ._types import ObjectInfo
from ._url import Location
from .errors import ClosedError

if TYPE_CHECKING:
    from ._backends import Backend, Upload

__all__ = ["AsyncWriter"]

_MAX_PARTS = 10_000
_GROW_EVERY = 1_000  # parts; the part size grows so 10,000 parts reach past 400 GB


class AsyncWriter:
    """Write an object in chunks: ``await write(data)``, then ``await close()`` (or ``async with``)."""

    def __init__(self, backend: Backend, loc: Location, part_size: int, max_in_flight: int) -> None:
        self._backend, self._loc = backend, loc
        self.url = loc.url
        self._base_part = max(part_size, backend.min_part_size)
        self._max_in_flight = max(1, max_in_flight)
        self._buf = bytearray(self._base_part)
        self._fill = 0
        self._offset = 0  # object offset of the start of _buf
        self._upload: Upload | None = None
        self._number = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._spare: list[bytearray] = []
        self._state = "open"
        self.info: ObjectInfo | None = None

    def __repr__(self) -> str:
        return f"<AsyncWriter {self.url} {self._state}>"

    async def __aenter__(self) -> AsyncWriter:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def tell(self) -> int:
        return self._offset + self._fill

    async def write(self, data: Any) -> int:
        """Append ``data`` (bytes or any buffer); returns its length."""
        if self._state != "open":
            raise ClosedError(f"write to a {self._state} writer of {self.url}", url=self.url)
        view = memoryview(data).cast("B")
        total = len(view)
        try:
            while view:
                n = min(len(view), len(self._buf) - self._fill)
                self._buf[self._fill:self._fill + n] = view[:n]
                self._fill += n
                view = view[n:]
                if self._fill == len(self._buf):
                    await self._ship_part()
        except BaseException:
            await self.abort()
            raise
        return total

    async def _ship_part(self) -> None:
        """Start uploading the full buffer as the next part; wait if too many are in flight."""
        if self._upload is None:
            self._upload = await self._backend.create_upload(self._loc)
        self._number += 1
        if self._number > _MAX_PARTS:
            raise ValueError(f"{self.url}: more than {_MAX_PARTS} parts")
        buf, size, offset = self._buf, self._fill, self._offset
        task = asyncio.ensure_future(self._upload_part(self._number, offset, buf, size))
        self._tasks.add(task)
        self._offset += size
        next_size = self._base_part * (1 + self._number // _GROW_EVERY)
        self._buf = self._take_buffer(next_size)
        self._fill = 0
        while len(self._tasks) >= self._max_in_flight:
            await self._wait_one()
        self._raise_failed()

    def _take_buffer(self, size: int) -> bytearray:
        while self._spare:
            buf = self._spare.pop()
            if len(buf) == size:
                return buf
        return bytearray(size)

    async def _upload_part(self, number: int, offset: int, buf: bytearray, size: int) -> None:
        assert self._upload is not None
        await self._upload.upload_part(number, offset, memoryview(buf)[:size])
        self._spare.append(buf)

    async def _wait_one(self) -> None:
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        self._tasks -= done
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    def _raise_failed(self) -> None:
        for task in [t for t in self._tasks if t.done()]:
            self._tasks.discard(task)
            exc = task.exception()
            if exc is not None:
                raise exc

    async def close(self) -> ObjectInfo:
        """Upload what is left and make the object visible; idempotent."""
        if self._state == "closed" and self.info is not None:
            return self.info
        if self._state != "open":
            raise ClosedError(f"close of an {self._state} writer of {self.url}", url=self.url)
        try:
            if self._upload is None:
                self.info = await self._backend.put(self._loc, memoryview(self._buf)[:self._fill])
            else:
                if self._fill:
                    await self._ship_part()
                while self._tasks:
                    await self._wait_one()
                    self._raise_failed()
                self.info = await self._upload.complete()
        except BaseException:
            await self.abort()
            raise
        self._state = "closed"
        self._buf = bytearray()
        return self.info

    async def abort(self) -> None:
        """Discard everything written; no object becomes visible. Safe to call twice."""
        if self._state != "open":
            return
        self._state = "aborted"
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._upload is not None:
                await self._upload.abort()
        self._buf = bytearray()
