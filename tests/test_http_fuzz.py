"""Fuzzed responses over loopback: the pool returns the exact body bytes or a typed error, promptly.

Hypothesis makes the responses (random heads, valid ones cut short or mutated, odd but
valid chunk streams); a scripted server writes them in random pieces over a real socket.
Typed: an ``AisioError``, or an ``OSError`` (``TimeoutError``, ``ConnectionError``) for a
transport failure. Each example must end within ``EXAMPLE_LIMIT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aisio._http import HTTPPool, Response
from aisio.errors import AisioError

READ_TIMEOUT = 0.2  # short, so a stalled example costs little; the head is due within it too
EXAMPLE_LIMIT = 2.0  # seconds an example may take, from connect to the last byte or error
BUDGET = 5.0  # seconds of examples per test: once spent, the remaining examples pass untried
FUZZ = settings(
    max_examples=100,
    deadline=None,  # timed here instead, against EXAMPLE_LIMIT
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"  # the answer to a second request


@dataclass
class Reply:
    """Bytes the server writes for one request, in pieces ending at ``cuts``; then ``end``.

    ``end``: "close" hangs up, "hang" waits for the client to go, "keep" serves the next reply.
    """

    data: bytes
    cuts: list[int] = field(default_factory=list)
    pause: bool = False  # a short sleep between pieces, so each is a socket read of its own
    end: str = "close"


class ScriptedServer:
    """A loopback server that answers the requests on each connection with ``replies`` in turn."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        replies = self.replies  # this example's: bound when the client connects
        try:
            for reply in replies:
                await reader.readuntil(b"\r\n\r\n")
                for a, b in itertools.pairwise([0, *reply.cuts, len(reply.data)]):
                    writer.write(reply.data[a:b])
                    await writer.drain()
                    await asyncio.sleep(0.001 if reply.pause else 0)
                if reply.end == "close":
                    return
                if reply.end == "hang":
                    break
            await reader.read()  # until the client goes
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)


@dataclass
class Outcome:
    """What a client got: the body bytes it was handed, the error that ended it, the response."""

    got: bytes
    error: BaseException | None
    response: Response | None
    second: bytes | None = None  # the body of a second request on the same pool, if made
    reused: int = 0


class Fuzz:
    """One event loop and one scripted server for all the examples of a test."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.server = ScriptedServer()
        self.runner.run(self.server.start())
        self.spent = 0.0
        self.failed = False

    def close(self) -> None:
        self.runner.run(self.server.stop())
        self.runner.close()


    def fetch(self, replies: list[Reply], views: list[int], second: bool = False) -> Outcome:
        """GET the scripted ``replies``, reading the body in views of these sizes, within the limit."""
        self.server.replies = replies
        started = time.monotonic()
        outcome = self.runner.run(self._fetch(views, second))
        took = time.monotonic() - started
        self.spent += took
        assert took < EXAMPLE_LIMIT, f"the example took {took:.2f} s"
        error = outcome.error
        assert error is None or isinstance(error, (AisioError, OSError)), repr(error)
        return outcome

    async def _fetch(self, views: list[int], second: bool) -> Outcome:
        async with HTTPPool(max_connections_per_host=1, connect_timeout=2, read_timeout=READ_TIMEOUT) as pool:
            task = asyncio.ensure_future(self._get(pool, views, second))
            done, _ = await asyncio.wait({task}, timeout=EXAMPLE_LIMIT)
            if not done:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                pytest.fail(f"no outcome within {EXAMPLE_LIMIT} s: the client hangs")
            return task.result()

    async def _get(self, pool: HTTPPool, views: list[int], second: bool) -> Outcome:
        url = f"http://127.0.0.1:{self.server.port}/object?X-Amz-Signature=sekrit"
        got = bytearray()
        try:
            resp = await pool.request("GET", url)
        except Exception as exc:
            return Outcome(bytes(got), exc, None)
        try:
            for size in itertools.cycle(views):
                buf = memoryview(bytearray(size))
                n = await resp.readinto(buf)
                if not n:
                    break
                got += buf[:n]
        except Exception as exc:
            assert "sekrit" not in str(exc)
            return Outcome(bytes(got), exc, resp)
        outcome = Outcome(bytes(got), None, resp)
        if second:
            again = await pool.request("GET", url)
            outcome.second = await again.read()
            outcome.reused = pool.stats().reused
        return outcome


def budgeted(test: Callable[..., None]) -> Callable[..., None]:
    """Skip the examples left once BUDGET is spent (a loaded machine); never while shrinking a failure."""

    @functools.wraps(test)
    def run(fuzz: Fuzz, **kwargs: Any) -> None:
        if fuzz.spent > BUDGET and not fuzz.failed:
            return
        try:
            test(fuzz, **kwargs)
        except BaseException:
            fuzz.failed = True
            raise

    return run


@pytest.fixture
def fuzz() -> Iterator[Fuzz]:
    f = Fuzz()
    yield f
    f.close()


# -- strategies --

views_st = st.lists(st.sampled_from([1, 2, 3, 7, 100, 4096, 65536, 1 << 20]), min_size=1, max_size=4)
end_st = st.sampled_from(["close", "close", "keep", "hang"])  # a stall costs READ_TIMEOUT: rarer


@st.composite
def pieces(draw: st.DrawFn, data: bytes) -> Reply:
    """``data`` written in random pieces, paused or not, then closed."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(data) - 1, 1)), max_size=5))))
    return Reply(data, [c for c in cuts if c < len(data)], draw(st.booleans()))


def hex_size(draw: st.DrawFn, n: int) -> bytes:
    """``n`` in hex as a server may write it: either case, leading zeros (16 digits at most)."""
    digits = f"{n:x}"
    digits = "0" * draw(st.integers(0, 16 - len(digits))) + digits
    return (digits.upper() if draw(st.booleans()) else digits).encode()


EXTENSIONS = [b"", b";a", b";a=1", b' ;name="quoted ; value"', b";a=1;b", b"\t;x=y"]
TRAILERS = [b"", b"X-Trailer: yes\r\n", b"A: 1\r\nB: 2\r\n", b"Checksum: \r\n"]


@dataclass
class Valid:
    """A valid response and what a client must make of it."""

    data: bytes
    body: bytes
    framing: str  # "length", "chunked" or "close" (ends when the server hangs up)
    head_end: int  # where the body starts in ``data``


@st.composite
def valid_responses(draw: st.DrawFn) -> Valid:
    """A valid response: interim heads, odd but legal fields, and one of the three framings."""
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    body = draw(st.binary(max_size=2000) | st.just(bytes(range(256)) * 40))
    interim = b"".join(draw(st.lists(st.sampled_from([
        b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
    ]), max_size=3)))
    lines = [draw(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 206 Partial Content", b"HTTP/1.1 200 "]))]
    lines += draw(st.lists(st.sampled_from([
        b"ETag: \"abc\"", b"X-Empty:", b"X-Tab:\tv\t", b"X-Fold: a", b"X-Fold: b", b" folded on",
        b"Content-Type: application/octet-stream", b"x-MiXeD-cAsE: \xe9\xff", b"Connection: keep-alive",
    ]), max_size=5))
    while len(lines) > 1 and lines[1].startswith(b" "):
        del lines[1]  # a fold needs a field before it
    payload = body
    if framing == "length":
        name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
        value = b"%0*d" % (draw(st.integers(1, 19)), len(body))
        if len(value) > 19:
            value = b"%d" % len(body)
        lines.append(name + b": " + (value + b", " + value if draw(st.booleans()) else value))
    elif framing == "chunked":
        lines.append(draw(st.sampled_from([b"Transfer-Encoding: chunked", b"transfer-encoding:CHUNKED"])))
        cuts = sorted(set(draw(st.lists(st.integers(1, max(len(body) - 1, 1)), max_size=6))))
        edges = [0, *[c for c in cuts if c < len(body)], len(body)] if body else [0]
        chunks = []
        for a, b in itertools.pairwise(edges):
            line = hex_size(draw, b - a) + draw(st.sampled_from(EXTENSIONS))
            chunks.append(line + b"\r\n" + body[a:b] + b"\r\n")
        last = b"0" * draw(st.integers(1, 16)) + draw(st.sampled_from(EXTENSIONS)) + b"\r\n"
        payload = b"".join(chunks) + last + draw(st.sampled_from(TRAILERS)) + b"\r\n"
    else:
        lines.append(draw(st.sampled_from([b"Connection: close", b"X-No-Length: 1"])))
    head = interim + b"\r\n".join(lines) + b"\r\n\r\n"
    return Valid(head + payload, body, framing, len(head))


def assert_prefix(got: bytes, body: bytes) -> None:
    """What came before an error is the start of the body: no framing byte, nothing made up."""
    assert got == body[: len(got)], (len(got), len(body))


# -- the properties --


@FUZZ
@given(valid=valid_responses(), data=st.data(), views=views_st, end=end_st)
@budgeted
def test_a_valid_response_in_any_pieces_gives_exactly_its_body(
    fuzz: Fuzz, valid: Valid, data: st.DataObject, views: list[int], end: str
) -> None:
    reply = data.draw(pieces(valid.data))
    reply.end = end
    framed = valid.framing != "close"
    out = fuzz.fetch([reply, Reply(OK, end="keep")], views, second=framed and end == "keep")
    if framed or end == "close":
        assert out.error is None, repr(out.error)
        assert out.got == valid.body
    else:  # the body ends only when the server hangs up, and it does not
        assert isinstance(out.error, TimeoutError), repr(out.error)
        assert_prefix(out.got, valid.body)
    if out.second is not None:  # the framing ended the body where it ends: the next one is whole
        assert (out.second, out.reused) == (b"ok", 1)


@FUZZ
@given(valid=valid_responses(), data=st.data(), views=views_st, end=end_st)
@budgeted
def test_a_response_cut_short_gives_a_typed_error_or_the_bytes_up_to_the_close(
    fuzz: Fuzz, valid: Valid, data: st.DataObject, views: list[int], end: str
) -> None:
    cut = data.draw(st.integers(0, len(valid.data) - 1))
    reply = data.draw(pieces(valid.data[:cut]))
    reply.end = end
    out = fuzz.fetch([reply], views)
    if valid.framing == "close" and end == "close" and cut >= valid.head_end:
        assert out.error is None, repr(out.error)  # the close is the end of such a body
        assert out.got == valid.body[: cut - valid.head_end]
    else:
        assert out.error is not None, "a response cut short was taken as whole"
        assert_prefix(out.got, valid.body)


MUTATIONS = st.sampled_from(["field", "size"] * 2 + ["flip", "insert", "delete", "repeat", "digits"])
SEPARATORS = [b"\r\n", b"\n", b"\r", b":", b";", b" "]
FRAMING_VALUE = re.compile(rb"(?i)(?:content-length|transfer-encoding): ?([^\r\n]*)")
CHUNK_SIZE = re.compile(rb"(?<=\n)[0-9A-Fa-f]+(?=[;\r \t])")
BAD_SIZES = [b"1" * 5000, b"1" + b"0" * 16, b"f" * 20, b"F" * 16, b" 5", b"+5", b"-1", b"0x5", b"\xb3",
             b"\xd9\xa3", b""]
NAMES = [b"Content-Length", b"Transfer-Encoding", b"Connection", b"content-length", b"X-A", b"", b"Bad Name",
         b"X\x00", b"\xff"]
NUMBERS = [b"9" * 5000, b"9" * 20, b"9" * 19, b"\xb3", b"1\xb2", b"\xd9\xa3", b"-1", b"+5", b"0x5", b"5, 6",
           b"5, 5", b"5", b"0"]  # the nastiest first: hypothesis tries early entries more often
CODINGS = [b"gzip, chunked", b"gzip", b"chunked, chunked", b"identity", b"chunked", b"CHUNKED"]
OTHERS = [b"close", b"keep-alive", b"", b" \t", b"a\rb", b"a\nb", b"5\x00", b"5\r", b"\xff\xfe"]
BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n", b"1" + b"0" * 40 + b"\r\n",
          b"\xb3\r\n", b"5\r\nhello\r\n0\r\n" + b"T: x\r\n" * 50]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to three random edits."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(MUTATIONS)
        at = draw(st.integers(0, len(out)))
        n = draw(st.integers(1, 12))
        spots = list((FRAMING_VALUE if kind == "field" else CHUNK_SIZE).finditer(out))
        if kind in ("field", "size") and spots:  # a framing number or coding, replaced
            spot = draw(st.sampled_from(spots))
            a, b = spot.span(1) if kind == "field" else spot.span()
            out[a:b] = draw(st.sampled_from(NUMBERS + CODINGS if kind == "field" else BAD_SIZES))
        elif kind == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=n) | st.sampled_from(SEPARATORS))
        elif kind == "delete":
            del out[at : at + n]
        elif kind == "repeat":
            out[at:at] = out[at : at + n]
        elif kind == "digits":
            out[at : at + n] = draw(st.sampled_from([b"9" * 30, b"ffffffffffffffffff", b"\xb3", b"-1", b"0"]))
    return bytes(out)


def check_any(out: Outcome, data: bytes) -> None:
    """Bytes or a typed error (fetch checked that); a length or close body is a slice of ``data``."""
    resp = out.response
    if out.error is None and resp is not None and "transfer-encoding" in resp.headers:
        assert resp.headers["transfer-encoding"].lower() == "chunked"  # the one coding we decode
    elif out.error is None and resp is not None:
        assert out.got in data
        if resp.content_length is not None and resp.status not in (204, 304):
            assert len(out.got) == resp.content_length


@FUZZ
@given(valid=valid_responses(), data=st.data(), views=views_st,
       end=st.sampled_from(["close", "close", "close", "hang"]))
@budgeted
def test_a_mutated_response_gives_bytes_or_a_typed_error(
    fuzz: Fuzz, valid: Valid, data: st.DataObject, views: list[int], end: str
) -> None:
    bad = data.draw(mutated(valid.data))
    reply = data.draw(pieces(bad))
    reply.end = end
    out = fuzz.fetch([reply], views)
    if bad == valid.data and (valid.framing != "close" or end == "close"):
        assert (out.error, out.got) == (None, valid.body)
    check_any(out, bad)


def often(common: list[bytes], rare: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``common`` 7 times in 10, else one of ``rare``, or (1 in 10) a few random bytes."""

    def pick(i: int) -> st.SearchStrategy[bytes]:
        return st.sampled_from(common) if i < 7 else st.sampled_from(rare) if i < 9 else st.binary(max_size=8)

    return st.integers(0, 9).flatmap(pick)


@st.composite
def random_heads(draw: st.DrawFn) -> bytes:
    """A head built from parts that are mostly right, now and then plain random bytes; a body."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    version = draw(often([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.x"]))
    code = draw(often([b"200", b"206", b"404", b"500"],
                      [b"204", b"304", b"100", b"101", b"103", b"2000", b"2x0", b"\xd9\xa3\xd9\xa3", b""]))
    reason = draw(st.sampled_from([b"OK", b"", b"Not \xe9 Found"]))
    lines = [version + b" " + code + b" " + reason]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(often([b"Content-Length", b"Transfer-Encoding", b"Connection"], NAMES))
        value = draw(often(NUMBERS + CODINGS, OTHERS))
        sep = draw(st.sampled_from([b": "] * 6 + [b":", b" : ", b"", b":\t"]))
        lines.append(name + sep + value)
    tail = draw(st.sampled_from([b"\r\n\r\n"] * 6 + [b"\r\n", b"\n\n", b"\r\n\n", b""]))
    body = draw(often(BODIES, [bytes(range(256))]))
    return b"\r\n".join(lines) + tail + body


@FUZZ
@given(raw=random_heads(), data=st.data(), views=views_st,
       end=st.sampled_from(["close", "close", "close", "hang"]))
@budgeted
def test_a_random_head_gives_bytes_or_a_typed_error(
    fuzz: Fuzz, raw: bytes, data: st.DataObject, views: list[int], end: str
) -> None:
    reply = data.draw(pieces(raw))
    reply.end = end
    check_any(fuzz.fetch([reply], views), raw)
