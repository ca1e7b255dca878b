"""Exact bytes or a typed error against servers that misbehave (tests/hostile.py).

Each test scripts one way real proxies, gateways and S3-compatible stores break HTTP, and
checks that every read either returns the object's exact bytes or raises an
``aisio.errors`` type that names the object, within a bounded time and number of requests,
and that no secret reaches an exception.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import pickle
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

import aisio
from aisio import errors
from aisio._url import Location, parse_url

from .hostile import (
    Close,
    Hang,
    HostileServer,
    Pause,
    Reply,
    Request,
    ais_list_reply,
    chunked,
    head,
    hostile_server,
)

FLAVORS = ["s3", "ais"]
SECRETS = ("hostile-secret-key", "hostile-session-token", "deadbeefdeadbeefdeadbeef")


@pytest.fixture(params=["async", "sync"])
def flavor_of_client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Client:
    """The async client awaited, or the blocking one called from a worker thread."""

    def __init__(self, config: aisio.ClientConfig, sync: bool) -> None:
        self.sync = sync
        self.inner: aisio.AsyncClient | aisio.Client = (
            aisio.Client(config) if sync else aisio.AsyncClient(config))

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.inner, name)
        if self.sync:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        return await fn(*args, **kwargs)

    async def read_with(self, how: str, url: str, size: int) -> bytes:
        """The whole object, read one of the ways users read."""
        if how == "get":
            return bytes(await self.call("get", url))
        if how == "get_into":
            buf = bytearray(size)
            n = await self.call("get_into", url, buf)
            return bytes(buf[:n])
        if how == "get_ranges":
            views = await self.call("get_ranges", url, [(0, size // 2), (size // 2, size)])
            return b"".join(bytes(v) for v in views)
        reader = aisio.ReaderConstructor.sequential() if how == "sequential" else (
            aisio.ReaderConstructor.range_based(buffer_size=0))
        if self.sync:
            def blocking() -> bytes:
                assert isinstance(self.inner, aisio.Client)
                with self.inner.open(url, reader) as f:
                    return bytes(f.read())
            return await anyio.to_thread.run_sync(blocking)
        assert isinstance(self.inner, aisio.AsyncClient)
        async with await self.inner.open(url, reader) as r:
            return await r.read()

    async def list(self, url: str) -> list[aisio.ObjectInfo]:
        if self.sync:
            assert isinstance(self.inner, aisio.Client)
            inner = self.inner
            return await anyio.to_thread.run_sync(lambda: list(inner.list(url)))
        assert isinstance(self.inner, aisio.AsyncClient)
        return [i async for i in self.inner.list(url)]

    async def close(self) -> None:
        if isinstance(self.inner, aisio.Client):
            await anyio.to_thread.run_sync(self.inner.close)
        else:
            await self.inner.aclose()


@pytest.fixture
async def connect(flavor_of_client: str) -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(server: HostileServer, **config: Any) -> Client:
        client = Client(server.config(**config), flavor_of_client == "sync")
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


READS = ["get", "get_into", "get_ranges", "sequential", "range_based"]


def payload(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def ranged_reply(req: Request, data: bytes, etag: str, *, total: str | None = None,
                 cut: int | None = None) -> Reply:
    """A 206 for the request's range of ``data``; ``cut``: send that many body bytes, then close."""
    first, end = req.range or (0, None)
    end = len(data) if end is None else min(end, len(data))
    body = data[first:end]
    headers = {"Content-Length": str(len(body)), "ETag": etag, "Ais-Version": etag.strip('"'),
               "Content-Range": f"bytes {first}-{end - 1}/{total or len(data)}"}
    if cut is None:
        return Reply.raw(head(206, headers) + body)
    return Reply.raw(head(206, headers) + body[:cut], Close())


def assert_names_object(exc: BaseException, url: str) -> None:
    assert isinstance(exc, errors.AisioError), repr(exc)
    assert exc.url == url or url in str(exc), (exc.url, str(exc))


async def expect(coro: Awaitable[Any], kind: type[BaseException] | tuple[type[BaseException], ...],
                 url: str,
                 seconds: float = 20.0) -> BaseException:
    """The error ``coro`` must raise, of type ``kind``, naming ``url``, within ``seconds``."""
    started = time.monotonic()
    with pytest.raises(kind) as info:
        await coro
    assert time.monotonic() - started < seconds
    assert_names_object(info.value, url)
    return info.value


# -- wrong or missing bytes --


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", READS)
async def test_a_resumed_get_answered_by_another_version_raises_object_changed(
        flavor: str, how: str, connect: Callable[..., Client]) -> None:
    """The first GET is cut short; the server ignores If-Match and resumes with other bytes."""
    v1, v2 = payload(200_000, 1), payload(200_000, 2)

    def script(req: Request) -> Reply | None:
        if req.method != "GET" or (req.listener == "gateway" and flavor == "ais"):
            return None
        if req.count("GET") <= 2:  # AIS: one gateway redirect, then the target
            return ranged_reply(req, v1, '"v1"', cut=30_000)
        return ranged_reply(req, v2, '"v2"')

    with hostile_server(flavor, script) as srv:
        srv.put("k", v1, '"v1"')
        client = connect(srv, max_attempts=5)
        await expect(client.read_with(how, srv.url_of("k"), len(v1)), errors.ObjectChangedError,
                     srv.url_of("k"))


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", READS)
async def test_an_unknown_total_in_content_range_never_truncates(
        flavor: str, how: str, connect: Callable[..., Client]) -> None:
    """``Content-Range: bytes a-b/*`` on every GET of an object larger than one part."""
    data = payload(50_000)

    def script(req: Request) -> Reply | None:
        if req.method == "GET" and (flavor == "s3" or req.listener == "target"):
            return ranged_reply(req, data, '"v1"', total="*")
        return None

    with hostile_server(flavor, script) as srv:
        srv.put("k", data, '"v1"')
        client = connect(srv, part_size=8192)
        assert await client.read_with(how, srv.url_of("k"), len(data)) == data


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_an_unknown_total_with_another_version_behind_it_is_refused(
        flavor: str, connect: Callable[..., Client]) -> None:
    """The size comes from a HEAD; a HEAD that names another version is not trusted."""
    data = payload(50_000)

    def script(req: Request) -> Reply | None:
        if req.method == "GET" and (flavor == "s3" or req.listener == "target"):
            return ranged_reply(req, data, '"v1"', total="*")
        return None

    with hostile_server(flavor, script) as srv:
        srv.put("k", data + b"more", '"v2"')
        client = connect(srv, part_size=8192)
        await expect(client.call("get", srv.url_of("k")), errors.ObjectChangedError, srv.url_of("k"))


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_head_without_a_size_is_refused(flavor: str, connect: Callable[..., Client]) -> None:
    """HEAD answered chunked (legal): no Content-Length, so no size. Never an empty object."""
    def script(req: Request) -> Reply | None:
        if req.method == "HEAD" and (flavor == "s3" or req.listener == "target"):
            return Reply.raw(head(200, {"Transfer-Encoding": "chunked", "ETag": '"v1"',
                                        "Ais-Version": "v1"}))
        return None

    with hostile_server(flavor, script) as srv:
        srv.put("k", b"data" * 100, '"v1"')
        client = connect(srv)
        url = srv.url_of("k")
        await expect(client.call("head", url), errors.RequestError, url)
        await expect(client.read_with("sequential", url, 400), errors.RequestError, url)


def test_the_cli_fails_on_a_head_without_a_size() -> None:
    def script(req: Request) -> Reply | None:
        if req.method == "HEAD" and req.listener == "target":
            return Reply.raw(head(200, {"Transfer-Encoding": "chunked", "Ais-Version": "v1"}))
        return None

    with hostile_server("ais", script) as srv:
        srv.put("k", b"data" * 100, '"v1"')
        env = {"AIS_ENDPOINT": srv.url, "AISIO_MAX_ATTEMPTS": "1", "PATH": "/usr/bin:/bin"}
        for argv in (["cat", srv.url_of("k")], ["stat", srv.url_of("k")]):
            run = subprocess.run([sys.executable, "-m", "aisio", *argv], capture_output=True,
                                 env=env, timeout=60)
            assert run.returncode != 0, argv
            assert run.stdout == b"", argv
            assert srv.url_of("k").encode() in run.stderr, run.stderr


async def test_an_ais_gateway_that_answers_a_put_itself_does_not_get_an_empty_object(
        connect: Callable[..., Client]) -> None:
    """aisio first sends a PUT without its body, for the redirect; a 200 to that is no success."""
    def script(req: Request) -> Reply | None:
        if req.method == "PUT" and req.listener == "gateway":
            srv.put("k", req.body)
            return Reply.of(200, {"Ais-Version": "1"})
        return None

    with hostile_server("ais", script) as srv:
        client = connect(srv)
        await client.call("put", srv.url_of("k"), b"hello world")
        assert srv.objects["b/k"].data == b"hello world"


async def test_every_url_an_ais_listing_yields_names_the_listed_object(
        connect: Callable[..., Client]) -> None:
    names = ["plain", "x?provider=aws", "y?provider=gcp?provider=ais", "dir/z?provider=s3"]
    with hostile_server("ais") as srv:
        for i, name in enumerate(names):
            srv.put(name, f"data-{i}".encode())
        client = connect(srv)
        listed = await client.list(srv.url_of(""))
        assert sorted(parse_url(i.url).key for i in listed) == sorted(names)
        for info in listed:
            loc = parse_url(info.url)
            assert (loc.scheme, loc.bucket, loc.provider) == ("ais", "b", "ais")
            assert await client.call("get", info.url) == srv.objects[f"b/{loc.key}"].data
    assert parse_url(Location("ais", "b", "k?provider=aws", "gcp").url) == Location(
        "ais", "b", "k?provider=aws", "gcp")


# -- hangs and unbounded work --


@pytest.mark.parametrize("expect_continue", [True, False])
@pytest.mark.parametrize("size", [100, 6 * 2**20])
async def test_a_put_to_a_server_that_never_answers_times_out(
        expect_continue: bool, size: int, connect: Callable[..., Client]) -> None:
    """The server reads the request (or only its head) and then says nothing."""
    def script(req: Request) -> Reply | None:
        return Reply.raw(Hang()) if req.method in ("PUT", "POST") else None

    with hostile_server("s3", script, expect_continue=expect_continue, hang_limit=30) as srv:
        client = connect(srv, read_timeout=1.0, max_attempts=2, part_size=5 * 2**20)
        url = srv.url_of("k")
        error = await expect(client.call("put", url, b"x" * size), errors.TransientError, url,
                             seconds=25)
        assert isinstance(error.__cause__, (TimeoutError, OSError, errors.AisioError))


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_listing_that_repeats_its_continuation_token_ends(
        flavor: str, connect: Callable[..., Client]) -> None:
    def script(req: Request) -> Reply | None:
        if flavor == "ais" and "/v1/buckets/" in req.path:
            return ais_list_reply([{"n": f"k{req.index}", "s": 1}], "same-token")
        if flavor == "s3" and req.method == "GET" and req.query.get("list-type") == "2":
            body = ("<ListBucketResult><IsTruncated>true</IsTruncated>"
                    "<NextContinuationToken>same-token</NextContinuationToken>"
                    f"<Contents><Key>k{req.index}</Key><Size>1</Size></Contents>"
                    "</ListBucketResult>").encode()
            return Reply.of(200, {"Content-Type": "application/xml"}, body)
        return None

    with hostile_server(flavor, script) as srv:
        client = connect(srv)
        await expect(client.list(srv.url_of("")), errors.RequestError, srv.url_of(""))
        assert len(srv.requests) <= 3


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_fault_on_every_response_ends_after_a_bounded_number_of_requests(
        flavor: str, connect: Callable[..., Client]) -> None:
    """Each ranged response brings one byte, then the connection closes."""
    data = payload(2000)

    def script(req: Request) -> Reply | None:
        if req.method == "GET" and (flavor == "s3" or req.listener == "target"):
            return ranged_reply(req, data, '"v1"', cut=1)
        return None

    with hostile_server(flavor, script) as srv:
        srv.put("k", data, '"v1"')
        client = connect(srv, max_attempts=3)
        await expect(client.call("get", srv.url_of("k")), errors.TransientError, srv.url_of("k"))
        gets = [r for r in srv.requests if r.method == "GET"]
        assert len(gets) <= 2 * 3 + 2, len(gets)  # AIS: a gateway hop or two besides


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("status", [404, 403, 500, 307])
@pytest.mark.parametrize("framing", ["huge-length", "endless-chunked"])
async def test_error_and_redirect_bodies_are_read_only_up_to_a_cap(
        flavor: str, status: int, framing: str, connect: Callable[..., Client]) -> None:
    """A 1 GB error body, or an endless chunked one: the error comes at once, memory stays flat."""
    piece = b"<Error><Message>no</Message></Error>" + b" " * 65000

    def endless() -> Any:
        yield head(status, {"Transfer-Encoding": "chunked", "Location": "/elsewhere"})
        for _ in range(200_000):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)

    def script(req: Request) -> Reply | None:
        if req.method != "GET" or (flavor == "ais" and req.listener == "gateway"):
            return None
        if framing == "huge-length":
            return Reply.raw(head(status, {"Content-Length": "1000000000", "Location": "/x"}),
                             *itertools.repeat(piece, 20_000))
        return Reply(endless())

    with hostile_server(flavor, script) as srv:
        srv.put("k", b"data", '"v1"')
        client = connect(srv, max_attempts=2, read_timeout=5)
        gc.collect()
        before = _rss()
        kind: type[BaseException] = {404: errors.ObjectNotFoundError, 403: errors.AccessDeniedError,
                                     500: errors.TransientError, 307: errors.AisioError}[status]
        await expect(client.call("get", srv.url_of("k")), kind, srv.url_of("k"), seconds=15)
        assert _rss() - before < 64 * 2**20


# -- secrets --


def _texts(exc: BaseException) -> list[str]:
    """Everything a user may see of an exception: messages, reprs, the chain, its pickle."""
    out = []
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        out += [str(node), repr(node), repr(getattr(node, "__dict__", {}))]
        with contextlib.suppress(Exception):  # an SDK's error may not pickle; its text is above
            out.append(repr(pickle.dumps(node)))
        for inner in (node.__cause__, node.__context__):
            if inner is not None and id(inner) not in seen:
                out.append("".join(traceback.format_exception(inner)))
        node = node.__cause__ or node.__context__
    out.append("".join(traceback.format_exception(exc)))
    return out


@pytest.mark.parametrize("status,kind", [(403, errors.AccessDeniedError), (400, errors.RequestError),
                                         (416, errors.RangeError), (503, errors.TransientError)])
@pytest.mark.parametrize("op", ["get", "list"])
async def test_server_error_text_that_echoes_the_request_never_reaches_an_exception(
        status: int, kind: type[BaseException], op: str, connect: Callable[..., Client]) -> None:
    def script(req: Request) -> Reply | None:
        echoed = (f"Request {req.target} was refused; X-Amz-Security-Token: hostile-session-token "
                  "secret hostile-secret-key signature deadbeefdeadbeefdeadbeef")
        body = (f"<Error><Code>Refused</Code><Message>{echoed.replace('&', '&amp;')}</Message>"
                f"<RequestId>1</RequestId></Error>").encode()
        if req.method == "GET":
            return Reply.of(status, {"Content-Type": "application/xml"}, body)
        return None

    with hostile_server("s3", script) as srv:
        srv.put("k", b"data")
        client = connect(srv, max_attempts=2)
        url = srv.url_of("k") if op == "get" else srv.url_of("")
        coro = client.call("get", url) if op == "get" else client.list(url)
        error = await expect(coro, kind, url)
        for text in _texts(error):
            for secret in SECRETS:
                assert secret not in text, (secret, text[:2000])
            assert "X-Amz-Signature=" not in text or "X-Amz-Signature=REDACTED" in text


def test_the_ais_token_never_goes_over_plain_http_after_https(tmp_path: Any) -> None:
    """An https gateway that redirects to plain http (or a target that redirects onwards)."""
    import ssl

    from .test_http import make_certs

    ca, cert, key = make_certs(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with hostile_server("ais", tls=context) as srv:
        srv.put("k", b"secret data")
        config = srv.config(ais=aisio.AISOptions(endpoint=srv.url, token="tok-123-secret"),
                            ca_bundle=str(ca))
        with aisio.Client(config) as client:
            for _ in range(2):
                assert client.get(srv.url_of("k")) == b"secret data"
                assert client.head(srv.url_of("k")).size == 11
        for req in srv.requests:
            sent = req.headers.get("authorization")
            if req.listener == "target":  # plain http: never the token
                assert sent is None, req
            else:
                assert sent == "Bearer tok-123-secret", req


def test_the_ais_token_goes_to_the_gateway_and_its_redirect_targets_only() -> None:
    with hostile_server("ais") as other, hostile_server("ais") as srv:
        other.put("k", b"other")

        def script(req: Request) -> Reply | None:
            if req.listener == "target" and req.method == "GET":  # a target sends us onwards
                return Reply.of(307, {"Location": other.target_url + req.target})
            return None

        srv.script = script
        srv.put("k", b"mine")
        config = srv.config(ais=aisio.AISOptions(endpoint=srv.url, token="tok-456-secret"))
        with aisio.Client(config) as client:
            with pytest.raises(errors.AisioError):
                client.get(srv.url_of("k"))
            assert client.head(srv.url_of("k")).size == 4
        assert all("authorization" not in r.headers for r in other.requests)
        assert any(r.headers.get("authorization") for r in srv.requests if r.listener == "target")


def test_sdk_loggers_are_redacted_in_an_ais_only_process() -> None:
    """No botocore in the process: httpx's and httpcore's debug lines are filtered all the same."""
    with hostile_server("ais") as srv:
        def script(req: Request) -> Reply | None:
            if req.listener == "gateway" and req.method == "HEAD":
                return Reply.of(307, {"Location": srv.target_url + req.target
                                      + "&sig=SIGNEDSECRET123&token=TOKENSECRET456"})
            return None

        srv.script = script
        srv.put("k", b"data")
        code = textwrap.dedent(f"""
            import io, logging, sys
            stream = io.StringIO()
            logging.basicConfig(level=logging.DEBUG, stream=stream)
            import aisio
            cfg = aisio.ClientConfig(ais=aisio.AISOptions(endpoint={srv.url!r}, token="BEARERSECRET"))
            with aisio.Client(cfg) as c:
                c.head("ais://b/k")
            assert "botocore" not in sys.modules
            log = stream.getvalue()
            assert "HTTP Request" in log, log
            print(log)
        """)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        for secret in ("SIGNEDSECRET123", "TOKENSECRET456", "BEARERSECRET"):
            assert secret not in run.stdout + run.stderr


# -- malformed answers --


@pytest.mark.parametrize("body", [
    b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a</Key>"
    b"<Size>huge</Size></Contents></ListBucketResult>",
    b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a</Key>"
    b"<Size>" + b"9" * 5000 + b"</Size></Contents></ListBucketResult>",
    b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a</Key>"
    b"<Size>-5</Size></Contents></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>a",
    b"\x00\xff not xml",
])
async def test_a_malformed_s3_listing_is_a_request_error(body: bytes,
                                                        connect: Callable[..., Client]) -> None:
    def script(req: Request) -> Reply | None:
        if req.method == "GET" and req.query.get("list-type") == "2":
            return Reply.of(200, {"Content-Type": "application/xml"}, body)
        return None

    with hostile_server("s3", script) as srv:
        client = connect(srv)
        # botocore takes an S3 200 whose body is no XML for a 500 (it is retried, then transient)
        await expect(client.list(srv.url_of("")), (errors.RequestError, errors.TransientError),
                     srv.url_of(""))


MSGPACK, JSON = "application/msgpack", "application/json"


@pytest.mark.parametrize(("kind", "page"), [
    (MSGPACK, b"\xc1\xc1garbage"),
    (MSGPACK, b"\x93\x01\x02\x03"),  # a msgpack list, not a map
    (MSGPACK, b"\x81\xa7Entries\x01"),  # Entries not a list
    (MSGPACK, b"\x81\xa7Entries\x91\x01"),  # an entry not a map
    (MSGPACK, b"\x81\xa7Entries\x91\x81\xa1s\xa4huge"),  # a size that is no number
    (MSGPACK, b"\x81\xa7Entries\x91\x82\xa1n\x01\xa1s\x01"),  # a name that is no string
    (MSGPACK, b"\x81\xa7Entries\x91\x81\xa1n\xa1a\x81\xa1s\xcf" + b"\xff" * 8),  # extra data
    (JSON, b"{not json"),
    (JSON, b"[1, 2]"),
    (JSON, b'{"entries": 5}'),
    (JSON, b'{"entries": [{"name": "a", "size": "huge"}]}'),
])
async def test_a_malformed_ais_listing_page_is_a_request_error(
        kind: str, page: bytes, connect: Callable[..., Client]) -> None:
    def script(req: Request) -> Reply | None:
        if "/v1/buckets/" in req.path:
            return Reply.of(200, {"Content-Type": kind}, page)
        return None

    with hostile_server("ais", script) as srv:
        client = connect(srv)
        await expect(client.list(srv.url_of("")), errors.RequestError, srv.url_of(""))


@pytest.mark.parametrize("op", ["get", "head", "list"])
async def test_a_wrong_region_says_which_region_the_bucket_is_in(
        op: str, connect: Callable[..., Client]) -> None:
    def script(req: Request) -> Reply | None:
        body = (b"<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to "
                b"access must be addressed using the specified endpoint.</Message></Error>")
        return Reply.of(301, {"x-amz-bucket-region": "eu-north-1",
                              "Content-Type": "application/xml"}, b"" if req.method == "HEAD" else body)

    with hostile_server("s3", script) as srv:
        client = connect(srv)
        url = srv.url_of("") if op == "list" else srv.url_of("k")
        coro = client.list(url) if op == "list" else client.call(op, url)
        error = await expect(coro, errors.RequestError, url)
        assert "eu-north-1" in str(error)


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("coding", ["gzip, chunked", "gzip", "chunked, gzip"])
async def test_an_unsupported_transfer_coding_is_an_error_not_the_object(
        flavor: str, coding: str, connect: Callable[..., Client]) -> None:
    import gzip

    data = payload(3000)
    packed = gzip.compress(data)

    def script(req: Request) -> Reply | None:
        if req.method == "GET" and (flavor == "s3" or req.listener == "target"):
            body = chunked(packed) if coding.endswith("chunked") else packed
            then = [] if coding.endswith("chunked") else [Close()]
            return Reply.raw(head(200, {"Transfer-Encoding": coding, "ETag": '"v1"'}) + body, *then)
        return None

    with hostile_server(flavor, script) as srv:
        srv.put("k", data, '"v1"')
        client = connect(srv, max_attempts=2)
        await expect(client.call("get", srv.url_of("k")), errors.AisioError, srv.url_of("k"))


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("misbehaviour", ["endless-1xx", "trickled-head"])
async def test_a_head_that_never_completes_is_bounded(
        flavor: str, misbehaviour: str, connect: Callable[..., Client]) -> None:
    def trickle() -> Any:
        for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 10_000:
            yield bytes([byte])
            yield Pause(0.05)

    def script(req: Request) -> Reply | None:
        if req.method == "GET" and (flavor == "s3" or req.listener == "target"):
            if misbehaviour == "endless-1xx":
                return Reply(itertools.chain.from_iterable(
                    (b"HTTP/1.1 102 Processing\r\n\r\n", Pause(0.1)) for _ in range(10_000)))
            return Reply(trickle())
        return None

    with hostile_server(flavor, script, hang_limit=60) as srv:
        srv.put("k", b"data", '"v1"')
        client = connect(srv, max_attempts=2, read_timeout=1.0)
        await expect(client.call("get", srv.url_of("k")), errors.AisioError, srv.url_of("k"),
                     seconds=15)
