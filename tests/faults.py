"""A fault-injecting HTTP/1.1 proxy on loopback, in front of ``local_s3()`` or ``local_ais()``.

Real stores throttle, reset connections, stall and now and then answer with the wrong
bytes; the servers we test against never do. This proxy sits between aisio and such a
server and misbehaves on purpose, per explicit rules (``add``) or a seeded random
schedule (``chaos``), while it records every exchange so tests can tell exactly what the
client asked for and what it got:

- ``reset``: forward ``after`` body bytes, then a TCP RST (bytes in flight may be lost);
- ``short``: forward ``after`` body bytes, then a clean close: a body shorter than its
  Content-Length;
- ``stall``: forward ``after`` body bytes, then nothing until the client gives up;
- ``delay``: hold the response head for ``seconds`` (a stall before the head if longer
  than the client's read timeout);
- ``status``: answer 500 / 503 SlowDown / 429 (with ``Retry-After``) without forwarding;
- ``drop``: close the connection as soon as the request head arrived;
- ``shift_range``: ask the server for other bytes than the client did (an honest
  Content-Range, wrong bytes);
- ``lie_range``: rewrite the response's Content-Range start (right bytes, wrong label);
- ``ignore_range``: drop the request's Range header (the server answers 200, whole object).
- ``flip``: invert one byte of the response body (at ``after``, else ``fraction`` of it),
  framing and length intact: the silent corruption a checksum exists to catch;
- ``flip_request``: the same to one byte of the request's body (an upload), on its way to
  the server.

The flips apply to bodies framed by Content-Length (data GETs and uploads are).

It understands HTTP/1.1 framing (Content-Length, chunked, read-until-close, HEAD, 1xx
interim responses, ``Expect: 100-continue``), keeps connections alive as the peers do,
and runs its own event loop in a thread, so sync clients, async clients and DataLoader
workers in other processes all reach it. One proxy can front several upstreams (the AIS
gateway and each target): ``Location`` headers that point at one of them are rewritten
to its listener, so redirected traffic goes through the proxy too. A listener can speak
TLS to its clients (``listen(..., ssl=context)``) while its upstream stays plain HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "KINDS",
    "Chaos",
    "Exchange",
    "Fault",
    "FaultProxy",
    "Rule",
    "fault_proxy",
    "proxied_ais",
]

KINDS = ("reset", "short", "stall", "delay", "status", "drop", "shift_range", "lie_range",
         "ignore_range", "flip", "flip_request")
BODY_KINDS = frozenset({"reset", "short", "stall"})
_CHUNK = 256 * 1024
_LIMIT = 1 << 20  # longest head line the proxy reads


@dataclass(frozen=True)
class Fault:
    """One misbehaviour; which fields matter depends on ``kind``."""

    kind: str
    after: int | None = None
    """Body bytes forwarded before a reset, short close or stall (or the offset of the byte a
    flip inverts); None: ``fraction`` of the body."""
    fraction: float = 0.5
    status: int = 503
    code: str = "SlowDown"
    retry_after: str | None = None
    """The Retry-After header of a ``status`` answer, as sent (seconds)."""
    seconds: float = 30.0
    """How long a ``stall`` holds at most (it ends when the client hangs up) or a ``delay``."""
    shift: int = 1
    """Bytes by which ``shift_range`` and ``lie_range`` move the range."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")


@dataclass
class Rule:
    """Apply ``fault`` to the next ``times`` requests that match (-1: every one)."""

    fault: Fault
    method: str | None = "GET"
    path: str | None = None
    """A substring of the request's (unquoted) path, or None for any path."""
    query: str | None = None
    """A substring of the raw query string, or None."""
    ranged: bool | None = None
    """Only requests with (True) or without (False) a Range header; None: either."""
    upstream: str | None = None
    """Only requests to listeners whose name starts with this (``"t"``: every AIS target)."""
    range: str | None = None
    """A substring of the request's Range header (``"bytes=1048576-"``), or None."""
    times: int = 1
    hook: Callable[[], object] | None = None
    """Called (in a worker thread, awaited) as the fault strikes: for a reset, short
    close or stall once the bytes before the cut went out, else before anything is sent."""
    applied: int = 0

    def matches(self, listener: str, method: str, path: str, query: str,
                range_header: str | None) -> bool:
        return (
            self.times != 0
            and (self.method is None or self.method == method)
            and (self.path is None or self.path in path)
            and (self.query is None or self.query in query)
            and (self.ranged is None or self.ranged == (range_header is not None))
            and (self.range is None or self.range in (range_header or ""))
            and (self.upstream is None or listener.startswith(self.upstream))
        )


@dataclass(frozen=True)
class Chaos:
    """A seeded random schedule: each matching request is faulted with probability ``rate``."""

    rate: float = 0.2
    weights: Mapping[str, float] = field(default_factory=lambda: {
        "reset": 3, "short": 3, "stall": 1, "status": 4, "drop": 1, "shift_range": 1,
        "lie_range": 1, "ignore_range": 1,
    })
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    stall_seconds: float = 30.0
    retry_after: Sequence[str | None] = (None, None, "0", "1")
    statuses: Sequence[tuple[int, str]] = ((503, "SlowDown"), (500, "InternalError"),
                                           (429, "TooManyRequests"), (502, "BadGateway"))

    def pick(self, rng: random.Random) -> Fault:
        kinds = list(self.weights)
        kind = rng.choices(kinds, [self.weights[k] for k in kinds])[0]
        status, code = rng.choice(list(self.statuses))
        return Fault(kind, fraction=rng.random(), status=status, code=code,
                     retry_after=rng.choice(list(self.retry_after)),
                     seconds=self.stall_seconds, shift=rng.randint(1, 4096))


@dataclass
class Exchange:
    """One request the proxy received and what it did with it."""

    upstream: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    """The request's headers (lower-case names), as the client sent them."""
    range: str | None
    forwarded_range: str | None
    fault: str | None = None
    status: int = 0
    """Status sent to the client (0: none, the connection was cut before the head)."""
    body_bytes: int = 0
    """Response body bytes written to the client (a reset may lose some in flight)."""
    started: float = 0.0
    answered: float = 0.0
    finished: float = 0.0
    """When the exchange ended (0: still going); set however it ended."""
    stage: str = "received"
    """How far it got: received, forwarded, answered (by the server), body, cut."""


@dataclass
class _Listener:
    name: str
    flavor: str  # "s3" or "ais": shape of synthetic error bodies
    upstream: tuple[str, int]
    url: str
    server: asyncio.Server | None = None
    open: int = 0
    max_open: int = 0
    accepted: int = 0


class _Cut(Exception):
    """The body reached the byte where a fault is due."""


class _Drop(Exception):
    """Close both sides now, without a clean end."""


class _Closed(Exception):
    """The client connection was closed cleanly already; end without a reset."""


@dataclass
class _Head:
    first: str
    fields: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.fields:
            if key.lower() == name:
                return value
        return None

    def set(self, name: str, value: str | None) -> None:
        low = name.lower()
        self.fields = [(k, v) for k, v in self.fields if k.lower() != low]
        if value is not None:
            self.fields.append((name, value))

    def encode(self) -> bytes:
        lines = [self.first, *(f"{k}: {v}" for k, v in self.fields)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @classmethod
    def parse(cls, block: bytes) -> _Head:
        first, *rest = block.decode("latin-1").rstrip("\r\n").split("\r\n")
        fields = []
        for line in rest:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
        return cls(first, fields)


class _Out:
    """The client side of one response; raises _Cut once ``limit`` body bytes went out."""

    def __init__(self, writer: asyncio.StreamWriter, limit: int | None, record: Exchange,
                 flip: int | None = None) -> None:
        self.writer = writer
        self.limit = limit
        self.record = record  # its body_bytes grows as bytes go out, before the client has them
        self.flip = flip  # offset of the body byte to invert on its way, if any

    async def body(self, data: bytes) -> None:
        sent = self.record.body_bytes
        if self.flip is not None and sent <= self.flip < sent + len(data):
            data = _flipped(data, self.flip - sent)
        if self.limit is not None and sent + len(data) > self.limit:
            part = data[: self.limit - sent]
            if part:
                self.record.body_bytes += len(part)
                self.writer.write(part)
                await self.writer.drain()
            raise _Cut
        self.record.body_bytes += len(data)
        self.writer.write(data)
        await self.writer.drain()


class FaultProxy:
    """The proxy: listeners, rules, a random schedule, and the record of every exchange."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.rules: list[Rule] = []
        self.chaos: Chaos | None = None
        self.exchanges: list[Exchange] = []
        self.injected: collections.Counter[str] = collections.Counter()
        self.listeners: dict[str, _Listener] = {}
        self._rewrite: dict[str, str] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)
        self._thread.start()

    # -- set-up, from the test's thread --

    def listen(self, upstream: str, name: str | None = None, *, flavor: str = "s3",
               ssl: ssl.SSLContext | None = None) -> str:
        """Forward a new loopback port to ``upstream`` (http://host:port); returns its URL."""
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        name = name or f"u{len(self.listeners)}"
        scheme = "https" if ssl is not None else "http"
        listener = _Listener(name, flavor, (parts.hostname, parts.port), "")

        async def start() -> asyncio.Server:
            return await asyncio.start_server(
                lambda r, w: self._spawn(listener, r, w), "127.0.0.1", 0, ssl=ssl, limit=_LIMIT)

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        listener.server = server
        listener.url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with self._lock:
            self.listeners[name] = listener
            self._rewrite[f"{parts.scheme}://{parts.netloc}"] = listener.url
        return listener.url

    def add(self, fault: Fault | str, **match: Any) -> Rule:
        """Add a rule (see ``Rule`` for the match fields); returns it, to read ``applied``."""
        rule = Rule(Fault(fault) if isinstance(fault, str) else fault, **match)
        with self._lock:
            self.rules.append(rule)
        return rule

    def set_chaos(self, chaos: Chaos | None) -> None:
        with self._lock:
            self.chaos = chaos

    def clear(self) -> None:
        """Forget rules, the schedule and the record (listeners stay)."""
        with self._lock:
            self.rules.clear()
            self.chaos = None
            self.exchanges.clear()
            self.injected.clear()
            for listener in self.listeners.values():
                listener.max_open = listener.open

    def reset_peaks(self) -> None:
        """Start ``max_open`` over from the connections open now (rules stay)."""
        with self._lock:
            for listener in self.listeners.values():
                listener.max_open = listener.open

    def url(self, name: str) -> str:
        return self.listeners[name].url

    def open_connections(self, name: str | None = None) -> int:
        """Client connections open now (to one listener, or all)."""
        with self._lock:
            return sum(lis.open for n, lis in self.listeners.items() if name in (None, n))

    def max_open(self, name: str | None = None) -> int:
        """Most client connections open at once since the last ``clear`` (per listener, summed)."""
        with self._lock:
            return sum(lis.max_open for n, lis in self.listeners.items() if name in (None, n))

    def accepted(self, name: str | None = None) -> int:
        with self._lock:
            return sum(lis.accepted for n, lis in self.listeners.items() if name in (None, n))

    def counts(self) -> dict[str, int]:
        """Faults injected so far, by kind."""
        with self._lock:
            return {kind: n for kind, n in sorted(self.injected.items()) if n}

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no client connection is open; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_connections() == 0:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        async def stop() -> None:
            for listener in self.listeners.values():
                if listener.server is not None:
                    listener.server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- the proxy, on its own loop --

    def _spawn(self, listener: _Listener, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
        task = self._loop.create_task(self._serve(listener, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _choose(self, listener: str, method: str, path: str, query: str,
                range_header: str | None) -> tuple[Fault | None, Rule | None]:
        with self._lock:
            for rule in self.rules:
                if rule.matches(listener, method, path, query, range_header):
                    if rule.times > 0:
                        rule.times -= 1
                    rule.applied += 1
                    return rule.fault, rule
            chaos = self.chaos
            if chaos is not None and method in chaos.methods and self.rng.random() < chaos.rate:
                return chaos.pick(self.rng), None
        return None, None

    async def _serve(self, listener: _Listener, creader: asyncio.StreamReader,
                     cwriter: asyncio.StreamWriter) -> None:
        with self._lock:
            listener.open += 1
            listener.accepted += 1
            listener.max_open = max(listener.max_open, listener.open)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    block = await creader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                records: list[Exchange] = []
                try:
                    keep, upstream = await self._exchange(listener, block, creader, cwriter,
                                                          upstream, records)
                finally:
                    for record in records:  # the exchange is over, however it ended
                        record.finished = time.monotonic()
                if not keep:
                    return
        except _Closed:
            return
        except (_Drop, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            _abort(cwriter)
            return
        except asyncio.CancelledError:
            _abort(cwriter)
            raise
        finally:
            if upstream is not None:
                upstream[1].close()
            with contextlib.suppress(Exception):
                cwriter.close()
            with self._lock:
                listener.open -= 1

    async def _exchange(
        self, listener: _Listener, block: bytes, creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
        records: list[Exchange],
    ) -> tuple[bool, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        """Serve one request; returns (keep the client connection, upstream connection)."""
        req = _Head.parse(block)
        method, target, _ = [*req.first.split(" "), "", ""][:3]
        raw_path, _, query = target.partition("?")
        path = unquote(raw_path)
        rng_header = req.get("range")
        fault, rule = self._choose(listener.name, method, path, query, rng_header)
        record = Exchange(listener.name, method, path, query,
                          {k.lower(): v for k, v in req.fields}, rng_header, rng_header,
                          started=time.monotonic())
        records.append(record)
        with self._lock:
            self.exchanges.append(record)
        hook = rule.hook if rule is not None else None
        if fault is not None and hook is not None and fault.kind not in BODY_KINDS:
            await asyncio.to_thread(hook)
            hook = None
        if fault is not None and not self._applies(fault, req, rng_header):
            fault = None
        if fault is not None:
            record.fault = fault.kind
            with self._lock:
                self.injected[fault.kind] += 1

        req_length, req_chunked = _request_framing(req)
        if fault is not None and fault.kind == "drop":
            raise _Drop
        if fault is not None and fault.kind == "status":
            return await self._synthetic(listener, fault, req, method, creader, cwriter,
                                         req_length, req_chunked, record), upstream
        if fault is not None and fault.kind == "shift_range":
            record.forwarded_range = _shift(rng_header or "", fault.shift)
            req.set("Range", record.forwarded_range)
        if fault is not None and fault.kind == "ignore_range":
            record.forwarded_range = None
            req.set("Range", None)

        if upstream is None or upstream[1].is_closing() or upstream[0].at_eof():
            if upstream is not None:
                upstream[1].close()
            upstream = await asyncio.open_connection(*listener.upstream, limit=_LIMIT)
        ureader, uwriter = upstream
        record.stage = "forwarded"
        uwriter.write(req.encode())
        flip = None
        if fault is not None and fault.kind == "flip_request":
            flip = _flip_offset(fault, req_length if not req_chunked else 0)
            if flip is None:
                self._unapplied(record, fault)
        sending: asyncio.Future[None] | None = asyncio.ensure_future(
            _copy_request_body(creader, uwriter, req_length, req_chunked, flip))
        expect = (req.get("expect") or "").lower() == "100-continue"
        continued = False
        try:
            while True:
                resp = _Head.parse(await ureader.readuntil(b"\r\n\r\n"))
                record.stage = "answered"
                status = int(resp.first.split(" ")[1])
                if status >= 200 or status == 101:
                    break
                continued = True
                cwriter.write(resp.encode())  # 100 Continue and friends
                await cwriter.drain()
            if expect and not continued and (req_length or req_chunked):
                resp.set("Connection", "close")  # the client will not send its body now
            else:
                assert sending is not None
                await self._finish_request(sending)
                sending = None
            return await self._respond(listener, fault, method, resp, status, ureader, uwriter,
                                       creader, cwriter, record, req, hook), upstream
        except BaseException:
            uwriter.close()
            raise
        finally:
            if sending is not None:
                sending.cancel()
                with contextlib.suppress(BaseException):
                    await sending

    def _unapplied(self, record: Exchange, fault: Fault) -> None:
        """The fault found nothing to act on (no body): not counted as injected."""
        record.fault = None
        with self._lock:
            self.injected[fault.kind] -= 1

    @staticmethod
    async def _cut(fault: Fault, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter,
                   uwriter: asyncio.StreamWriter, record: Exchange,
                   hook: Callable[[], object] | None) -> None:
        """End the exchange as ``fault`` says: clean close, reset, or stall then reset."""
        if hook is not None:
            await cwriter.drain()
            await asyncio.to_thread(hook)
        record.stage = "cut"
        uwriter.close()  # mid-response: the server sees a reset when it writes on
        if fault.kind == "short":
            cwriter.close()  # FIN: the client gets every byte we sent
            raise _Closed
        if fault.kind == "stall":
            await _hold(creader, fault.seconds)
        _abort(cwriter)
        raise _Drop

    @staticmethod
    async def _finish_request(sending: asyncio.Future[None]) -> None:
        """Wait for the request body to be forwarded (the server answered already)."""
        try:
            await asyncio.wait_for(asyncio.shield(sending), 30)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise _Drop from exc

    @staticmethod
    def _applies(fault: Fault, req: _Head, rng_header: str | None) -> bool:
        """Range faults need a Range to distort; shifts need room to move."""
        if fault.kind in ("shift_range", "ignore_range"):
            if rng_header is None or _parse_range(rng_header) is None:
                return False
            if fault.kind == "shift_range":
                return _shift(rng_header, fault.shift) != rng_header
            start, _ = _parse_range(rng_header) or (0, None)
            return start > 0 or fault.kind == "ignore_range"
        return True

    async def _synthetic(
        self, listener: _Listener, fault: Fault, req: _Head, method: str,
        creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, req_length: int,
        req_chunked: bool, record: Exchange,
    ) -> bool:
        """Answer an error ourselves; the request never reaches the server."""
        keep = True
        expect = (req.get("expect") or "").lower() == "100-continue"
        if (req_length or req_chunked) and expect:
            keep = False  # the client waits for 100 Continue before its body: never send it
        elif req_length or req_chunked:
            await _read_request_body(creader, req_length, req_chunked)
        if listener.flavor == "ais":
            body = json.dumps({"message": f"injected {fault.code}", "status": fault.status})
            ctype = "application/json"
        else:
            body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>"
                    f"{fault.code}</Code><Message>injected fault</Message></Error>")
            ctype = "application/xml"
        reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                  429: "Too Many Requests"}.get(fault.status, "Error")
        head = _Head(f"HTTP/1.1 {fault.status} {reason}", [("Content-Type", ctype)])
        if fault.retry_after is not None:
            head.set("Retry-After", fault.retry_after)
        payload = b"" if method == "HEAD" else body.encode()
        head.set("Content-Length", str(len(payload)))
        if not keep:
            head.set("Connection", "close")
        record.status = fault.status
        record.answered = time.monotonic()
        record.body_bytes = len(payload)
        cwriter.write(head.encode() + payload)
        await cwriter.drain()
        return keep

    async def _respond(
        self, listener: _Listener, fault: Fault | None, method: str, resp: _Head, status: int,
        ureader: asyncio.StreamReader, uwriter: asyncio.StreamWriter,
        creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, record: Exchange,
        req: _Head, hook: Callable[[], object] | None,
    ) -> bool:
        """Forward the response head and body, distorted as the fault says."""
        kind = fault.kind if fault is not None else None
        location = resp.get("location")
        if location:
            for origin, proxied in self._rewrite.items():
                if location.startswith(origin):
                    resp.set("Location", proxied + location[len(origin):])
                    break
        if kind == "lie_range":
            content_range = resp.get("content-range")
            moved = _shift_content_range(content_range, fault.shift) if content_range else None
            if moved is None:
                record.fault = None
                with self._lock:
                    self.injected["lie_range"] -= 1
            else:
                resp.set("Content-Range", moved)
        length = resp.get("content-length")
        chunked = "chunked" in (resp.get("transfer-encoding") or "").lower()
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        size = None if (chunked or length is None) else int(length)
        if fault is not None and kind in BODY_KINDS and no_body:
            await self._cut(fault, creader, cwriter, uwriter, record, hook)  # no head even
        limit = None
        if fault is not None and kind in BODY_KINDS and not no_body:
            if fault.after is not None:
                limit = fault.after
            elif size is not None:
                limit = int(fault.fraction * size) if size else 0
            else:
                limit = self.rng.randrange(1 << 16)
        flip = None
        if kind == "flip" and fault is not None:
            flip = None if no_body or chunked else _flip_offset(fault, size or 0)
            if flip is None:
                self._unapplied(record, fault)
        if kind == "delay" and await _hold(creader, fault.seconds):  # type: ignore[union-attr]
            raise _Drop  # the client gave up waiting
        keep_up = "close" not in (resp.get("connection") or "").lower()
        keep_client = keep_up and "close" not in (req.get("connection") or "").lower()
        if not no_body and not chunked and length is None:
            keep_up = keep_client = False  # read until close
            resp.set("Connection", "close")
        record.status = status
        record.answered = time.monotonic()
        record.stage = "body"
        cwriter.write(resp.encode())
        await cwriter.drain()
        out = _Out(cwriter, limit, record, flip)
        try:
            if not no_body:
                await _copy_response_body(ureader, out, size, chunked)
        except _Cut:
            assert fault is not None
            await self._cut(fault, creader, cwriter, uwriter, record, hook)
        if limit is not None and fault is not None:  # the body ended before the fault was due
            record.fault = None
            with self._lock:
                self.injected[fault.kind] -= 1
        if not keep_up:
            uwriter.close()
        return keep_client and keep_up


# -- framing helpers --


def _request_framing(req: _Head) -> tuple[int, bool]:
    chunked = "chunked" in (req.get("transfer-encoding") or "").lower()
    length = int(req.get("content-length") or 0) if not chunked else 0
    return length, chunked


async def _read_request_body(reader: asyncio.StreamReader, length: int, chunked: bool) -> None:
    sink = _Sink()
    await _copy_body(reader, sink.write, length, chunked)


class _Sink:
    async def write(self, data: bytes) -> None:
        return None


async def _copy_request_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             length: int, chunked: bool, flip: int | None = None) -> None:
    sent = 0

    async def write(data: bytes) -> None:
        nonlocal sent
        if flip is not None and sent <= flip < sent + len(data):
            data = _flipped(data, flip - sent)
        sent += len(data)
        writer.write(data)
        await writer.drain()

    await _copy_body(reader, write, length, chunked)


def _flip_offset(fault: Fault, size: int) -> int | None:
    """Which byte of a ``size``-byte body a flip inverts; None for an empty body."""
    if size <= 0:
        return None
    offset = fault.after if fault.after is not None else int(fault.fraction * size)
    return min(max(offset, 0), size - 1)


def _flipped(data: bytes, index: int) -> bytes:
    """``data`` with the byte at ``index`` inverted."""
    out = bytearray(data)
    out[index] ^= 0xFF
    return bytes(out)


async def _copy_response_body(reader: asyncio.StreamReader, out: _Out, size: int | None,
                              chunked: bool) -> None:
    if size is None and not chunked:
        while data := await reader.read(_CHUNK):
            await out.body(data)
        return
    await _copy_body(reader, out.body, size or 0, chunked)


async def _copy_body(reader: asyncio.StreamReader, write: Callable[[bytes], Any], length: int,
                     chunked: bool) -> None:
    """Forward one body, Content-Length or chunked (raw framing bytes included)."""
    if not chunked:
        await _copy_exactly(reader, write, length)
        return
    while True:
        line = await reader.readuntil(b"\r\n")
        await write(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then the empty line
                trailer = await reader.readuntil(b"\r\n")
                await write(trailer)
                if trailer == b"\r\n":
                    return
        await _copy_exactly(reader, write, size + 2)  # the chunk and its CRLF


async def _copy_exactly(reader: asyncio.StreamReader, write: Callable[[bytes], Any], n: int) -> None:
    """Forward exactly ``n`` bytes; IncompleteReadError if the sender stops short."""
    while n:
        data = await reader.read(min(n, _CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        await write(data)


async def _hold(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Send nothing until the client hangs up (True) or ``seconds`` pass (False)."""

    async def drain() -> None:
        while await reader.read(65536):
            pass

    try:
        await asyncio.wait_for(drain(), seconds)
    except TimeoutError:
        return False
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    return True


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), dropping whatever is still unsent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_range(value: str) -> tuple[int, int | None] | None:
    unit, _, spec = value.partition("=")
    first, sep, last = spec.partition("-")
    if unit.strip() != "bytes" or not sep or "," in spec or not first.strip().isdigit():
        return None
    return int(first), int(last) if last.strip().isdigit() else None


def _shift(value: str, shift: int) -> str:
    """``bytes=a-b`` moved down by ``shift`` if there is room, else its start moved up."""
    parsed = _parse_range(value)
    if parsed is None:
        return value
    start, end = parsed
    if start >= shift:
        new_end = "" if end is None else str(end - shift)
        return f"bytes={start - shift}-{new_end}"
    if end is not None and start + shift <= end:
        return f"bytes={start + shift}-{end}"
    return value


def _shift_content_range(value: str, shift: int) -> str | None:
    """``bytes s-e/t`` labelled as starting ``shift`` bytes later (or earlier)."""
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not first.isdigit() or not last.isdigit():
        return None
    s, e = int(first), int(last)
    if s >= shift:
        return f"bytes {s - shift}-{e - shift}/{total}"
    return f"bytes {s + shift}-{e + shift}/{total}"


# -- set-ups --


@contextlib.contextmanager
def fault_proxy(seed: int = 0) -> Iterator[FaultProxy]:
    """A FaultProxy with no listeners yet; closed at the end of the block."""
    proxy = FaultProxy(seed)
    try:
        yield proxy
    finally:
        proxy.close()


def proxied_ais(proxy: FaultProxy, ais: Any, *, ssl: ssl.SSLContext | None = None) -> str:
    """Put the gateway and every target of a LocalAIS behind ``proxy``; the gateway's URL.

    Listeners are named ``gateway``, ``t0``, ``t1``, ...; the gateway's redirects are
    rewritten to the targets' listeners.
    """
    for i, target in enumerate(ais.target_urls):
        proxy.listen(target, f"t{i}", flavor="ais", ssl=ssl)
    return proxy.listen(ais.endpoint, "gateway", flavor="ais", ssl=ssl)
