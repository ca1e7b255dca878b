"""AISBackend against local_ais(), and (marked ais_cluster) against a real cluster.

With ``AIS_ENDPOINT`` set (and ``AIS_AUTHN_TOKEN`` if the cluster wants one), the tests
marked ``ais_cluster`` run against that cluster in a throwaway bucket; otherwise they skip.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import secrets
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

import aisio
from aisio._backends.ais import AISBackend
from aisio._url import Location, parse_url
from aisio.errors import (
    AccessDeniedError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
    RequestError,
    TransientError,
)
from aisio.testing._ais import LocalAIS, local_ais

TOKEN = "tok-" + "9" * 24


def _config(endpoint: str, token: str | None = None, **kw: object) -> aisio.ClientConfig:
    return aisio.ClientConfig(ais=aisio.AISOptions(endpoint=endpoint, token=token),
                              backoff_base=0.001, **kw)  # type: ignore[arg-type]


async def _read(backend: AISBackend, loc: Location, start: int = 0, end: int | None = None,
                **kw: object) -> bytes:
    body = await backend.open_body(loc, start, end, **kw)  # type: ignore[arg-type]
    out = bytearray()
    buf = memoryview(bytearray(7))  # small on purpose: many readinto calls
    try:
        while n := await body.readinto(buf):
            out += buf[:n]
    finally:
        await body.aclose()
    return bytes(out)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def ais() -> Iterator[LocalAIS]:
    with local_ais(targets=3) as server:
        server.create_bucket("bk")
        server.create_bucket("remote", provider="aws")
        yield server


@pytest.fixture
async def backend(ais: LocalAIS) -> AsyncIterator[AISBackend]:
    be = AISBackend(_config(ais.endpoint), page_size=3)
    try:
        yield be
    finally:
        await be.aclose()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"ais://bk/{request.node.name}/"


# -- behaviour any store must have: also run against a real cluster below --


async def _roundtrip(backend: AISBackend, prefix: str) -> None:
    loc = parse_url(prefix + "obj.bin")
    payload = bytes(range(256)) * 50
    info = await backend.put(loc, memoryview(payload))
    assert (info.url, info.size) == (loc.url, len(payload)) and info.etag
    head = await backend.head(loc)
    assert (head.size, head.etag) == (len(payload), info.etag)
    assert await _read(backend, loc) == payload
    assert await _read(backend, loc, 100, 1100) == payload[100:1100]
    assert await _read(backend, loc, 12000) == payload[12000:]
    assert await _read(backend, loc, 12000, 99999) == payload[12000:]
    assert await _read(backend, loc, len(payload)) == b""
    with pytest.raises(RangeError):
        await _read(backend, loc, len(payload) + 1)
    names = [f"{prefix}page/{i:02d}" for i in range(8)]
    for name in names:
        await backend.put(parse_url(name), memoryview(name.encode()))
    listed = [i async for i in backend.list(parse_url(prefix + "page/"))]
    assert [i.url for i in listed] == names
    assert [i.size for i in listed] == [len(n) for n in names]
    await backend.delete(loc)
    with pytest.raises(ObjectNotFoundError):
        await backend.head(loc)
    with pytest.raises(ObjectNotFoundError):
        await backend.delete(loc)
    for name in names:
        await backend.delete(parse_url(name))


async def test_roundtrip(backend: AISBackend, prefix: str) -> None:
    await _roundtrip(backend, prefix)


# -- reads --


async def test_body_reports_object_size_and_etag(ais: LocalAIS, backend: AISBackend,
                                                 prefix: str) -> None:
    loc = parse_url(prefix + "o")
    info = await backend.put(loc, memoryview(b"0123456789"))
    body = await backend.open_body(loc, 3, 5)
    try:
        assert (body.object_size, body.etag) == (10, info.etag)
        view = memoryview(bytearray(16))
        assert await body.readinto(view) == 2 and view[:2] == b"34"
        assert await body.readinto(view) == 0
    finally:
        await body.aclose()
    empty = await backend.open_body(loc, 4, 4)
    assert (empty.object_size, await empty.readinto(view)) == (10, 0)
    with pytest.raises(RangeError):
        await backend.open_body(loc, 5, 4)
    with pytest.raises(RangeError):
        await backend.open_body(loc, -1, None)


async def test_readinto_any_buffer_format(backend: AISBackend, prefix: str) -> None:
    loc = parse_url(prefix + "o")
    await backend.put(loc, memoryview(bytes(range(16))))
    words = memoryview(bytearray(16)).cast("I")  # 4-byte items, as numpy/torch memory may be
    body = await backend.open_body(loc, 0, None)
    try:
        assert await body.readinto(words) == 16
    finally:
        await body.aclose()
    assert words.tobytes() == bytes(range(16))


async def test_etag_mismatch_raises_object_changed(backend: AISBackend, prefix: str) -> None:
    loc = parse_url(prefix + "o")
    first = await backend.put(loc, memoryview(b"version one"))
    second = await backend.put(loc, memoryview(b"version two"))
    assert first.etag != second.etag and second.version == "2"
    assert await _read(backend, loc, 0, 7, etag=second.etag) == b"version"
    with pytest.raises(ObjectChangedError):
        await backend.open_body(loc, 0, 7, etag=first.etag)


async def test_archpath_etl_and_provider_buckets(ais: LocalAIS, backend: AISBackend,
                                                 prefix: str) -> None:
    shard = parse_url(prefix + "shard.tar")
    await backend.put(shard, memoryview(_tar({"a.cls": b"3", "img/a.jpg": b"JPEG"})))
    assert await _read(backend, shard, archpath="img/a.jpg") == b"JPEG"
    with pytest.raises(ObjectNotFoundError):
        await backend.open_body(shard, 0, None, archpath="missing.jpg")
    text = parse_url(prefix + "text")
    await backend.put(text, memoryview(b"hello"))
    assert await _read(backend, text, etl_name="upper") == b"HELLO"
    assert await _read(backend, text, etl_name="append-args", etl_args="!") == b"hello!"
    remote = parse_url("ais://remote/k?provider=aws")
    assert remote.provider == "aws"
    await backend.put(remote, memoryview(b"in a bucket AIS fronts for S3"))
    assert await _read(backend, remote, 3, 9) == b"a buck"
    assert os.path.exists(ais.object_path("remote", "k", provider="aws"))
    with pytest.raises(ObjectNotFoundError):
        await backend.head(parse_url("ais://remote/k?provider=gcp"))


async def test_sdk_object_urls(ais: LocalAIS, backend: AISBackend) -> None:
    from aistore.sdk import Client

    ais.put_object("bk", "sdk/obj", b"via the SDK's name")
    sdk_bucket = Client(ais.endpoint).bucket("bk")
    assert await _read(backend, parse_url(sdk_bucket.object("sdk/obj"))) == b"via the SDK's name"
    listed = [i.url async for i in backend.list(parse_url(sdk_bucket).child("sdk/"))]
    assert listed == ["ais://bk/sdk/obj"]


async def test_get_batch(ais: LocalAIS, backend: AISBackend, prefix: str) -> None:
    locs = [parse_url(f"{prefix}{i}") for i in range(4)]
    for i, loc in enumerate(locs):
        await backend.put(loc, memoryview(f"item-{i}".encode()))
    shard = parse_url(prefix + "s.tar")
    await backend.put(shard, memoryview(_tar({"x/y.txt": b"member"})))
    got = await backend.get_batch([locs[2], shard, locs[0]], archpaths=[None, "x/y.txt", None])
    assert got == [b"item-2", b"member", b"item-0"]
    assert await backend.get_batch([]) == []
    with pytest.raises(ObjectNotFoundError):
        await backend.get_batch([locs[1], parse_url(prefix + "absent")])


# -- the gateway, its redirect and the target cache --


async def test_later_requests_skip_the_gateway(ais: LocalAIS, backend: AISBackend,
                                               prefix: str) -> None:
    loc = parse_url(prefix + "o")
    await backend.put(loc, memoryview(b"x" * 1000))
    gateway = ais.count("proxy")
    for start in range(0, 1000, 100):
        assert await _read(backend, loc, start, start + 100) == b"x" * 100
    await backend.head(loc)
    assert ais.count("proxy") == gateway  # every request went straight to the owner
    uncached = AISBackend(_config(ais.endpoint), cache_targets=False)
    try:
        await _read(uncached, loc, 0, 10)
        await _read(uncached, loc, 10, 20)
    finally:
        await uncached.aclose()
    assert ais.count("proxy") == gateway + 2


async def test_failed_target_is_forgotten(ais: LocalAIS, backend: AISBackend,
                                          prefix: str) -> None:
    loc = parse_url(prefix + "o")
    await backend.put(loc, memoryview(b"abc"))
    ais.fail_next(1, 503, method="GET")
    with pytest.raises(RequestError) as err:
        await backend.open_body(loc, 0, None)
    assert err.value.status == 503
    gateway = ais.count("proxy")
    assert await _read(backend, loc) == b"abc"
    assert ais.count("proxy") == gateway + 1  # asked the gateway again


async def test_deleted_object_through_cached_target(backend: AISBackend, prefix: str) -> None:
    loc = parse_url(prefix + "o")
    await backend.put(loc, memoryview(b"abc"))
    await backend.delete(loc)
    with pytest.raises(ObjectNotFoundError):
        await backend.open_body(loc, 0, None)


async def test_cut_body_fails_after_the_bytes_it_had(ais: LocalAIS, backend: AISBackend,
                                                     prefix: str) -> None:
    loc = parse_url(prefix + "o")
    await backend.put(loc, memoryview(b"0123456789"))
    ais.cut_next(1, after=4)
    body = await backend.open_body(loc, 0, None)
    try:
        view = memoryview(bytearray(10))
        assert await body.readinto(view) == 4 and view[:4] == b"0123"
        with pytest.raises(OSError):
            await body.readinto(view)
    finally:
        await body.aclose()


# -- control plane: listing, writes, retries --


async def test_list_pages_lazily(ais: LocalAIS, backend: AISBackend, prefix: str) -> None:
    for i in range(10):
        ais.put_object("bk", f"{prefix[len('ais://bk/'):]}{i:02d}", b"x" * i)
    ais.put_object("bk", f"{prefix[len('ais://bk/'):]}sub/deep", b"deep")
    before = ais.count("proxy", "GET")
    listing = backend.list(parse_url(prefix))
    first = await listing.__anext__()
    assert (first.url, first.size) == (prefix + "00", 0)
    assert ais.count("proxy", "GET") == before + 1  # one page so far
    rest = [i.url async for i in listing]
    assert len(rest) == 10 and rest[-1] == prefix + "sub/deep"
    assert ais.count("proxy", "GET") == before + 4  # 11 entries, 3 per page
    flat = [i.url async for i in backend.list(parse_url(prefix), recursive=False)]
    assert flat == [f"{prefix}{i:02d}" for i in range(10)]
    assert [i async for i in backend.list(parse_url(prefix + "nothing-here/"))] == []
    with pytest.raises(ObjectNotFoundError):
        async for _ in backend.list(parse_url("ais://no-such-bucket/")):
            pass


async def test_multipart_upload(ais: LocalAIS, backend: AISBackend, prefix: str) -> None:
    loc = parse_url(prefix + "big")
    upload = await backend.create_upload(loc)
    await upload.upload_part(2, 5, memoryview(b"world"))
    await upload.upload_part(1, 0, memoryview(b"hello"))
    with pytest.raises(ObjectNotFoundError):
        await backend.head(loc)  # invisible until complete()
    info = await upload.complete()
    assert (info.size, await _read(backend, loc)) == (10, b"helloworld")
    aborted = parse_url(prefix + "aborted")
    upload = await backend.create_upload(aborted)
    await upload.upload_part(1, 0, memoryview(b"partial"))
    await upload.abort()
    await upload.abort()  # twice is fine
    with pytest.raises(ObjectNotFoundError):
        await backend.head(aborted)
    assert not [p for p in os.listdir(os.path.join(ais.root, ".tmp")) if p.startswith("mpt-")]


async def test_control_requests_retry_transient_errors(ais: LocalAIS, prefix: str) -> None:
    backend = AISBackend(_config(ais.endpoint, max_attempts=3))
    try:
        loc = parse_url(prefix + "o")
        ais.fail_next(2, 503, method="PUT")
        await backend.put(loc, memoryview(b"third time"))
        ais.fail_next(3, 500, method="HEAD")
        with pytest.raises(TransientError) as err:
            await backend.head(loc)
        assert isinstance(err.value.__cause__, RequestError) and err.value.attempts == 3
        ais.fail_next(1, 429, method="HEAD")
        assert (await backend.head(loc)).size == 10
    finally:
        await backend.aclose()


async def test_invalid_urls(backend: AISBackend) -> None:
    for bad in ("ais://bk/", "ais://bk"):
        with pytest.raises(InvalidURLError):
            await backend.head(parse_url(bad))
    no_endpoint = AISBackend(aisio.ClientConfig())
    try:
        with pytest.raises(InvalidURLError, match="AIS_ENDPOINT"):
            await no_endpoint.head(parse_url("ais://bk/x"))
    finally:
        await no_endpoint.aclose()


# -- the token --


class _Recorder(http.server.ThreadingHTTPServer):
    """A host outside the cluster that records the Authorization headers it receives."""

    def __init__(self) -> None:
        seen: list[str | None] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)
        self.seen = seen
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.thread.join()
        self.server_close()


async def test_token_reaches_only_the_cluster(prefix: str) -> None:
    with local_ais(targets=2, token=TOKEN) as ais:
        ais.create_bucket("bk")
        backend = AISBackend(_config(ais.endpoint, TOKEN))
        outsider = _Recorder()
        try:
            loc = parse_url(prefix + "o")
            await backend.put(loc, memoryview(b"secret data"))
            gateway = ais.count("proxy")
            # cached targets see no gateway redirect (no pid): they want the token too
            assert await _read(backend, loc, 0, 6) == b"secret"
            assert (await backend.head(loc)).size == 11
            assert ais.count("proxy") == gateway
            resp = await backend._send("GET", outsider.url + "/x")
            await resp.aclose()
            assert outsider.seen == [None]
            assert TOKEN not in repr(backend) and TOKEN not in repr(backend._config)
        finally:
            await backend.aclose()
            outsider.close()


async def test_token_never_in_errors(prefix: str) -> None:
    with local_ais(targets=1, token=TOKEN) as ais:
        ais.create_bucket("bk")
        loc = parse_url(prefix + "o")
        for token, status in ((None, 401), ("wrong-" + TOKEN, 403)):
            backend = AISBackend(_config(ais.endpoint, token))
            try:
                with pytest.raises(AccessDeniedError) as err:
                    await backend.put(loc, memoryview(b"x"))
                assert f"HTTP {status}" in str(err.value)
                assert TOKEN not in str(err.value) and TOKEN not in repr(err.value)
            finally:
                await backend.aclose()
        backend = AISBackend(_config(ais.endpoint, TOKEN))
        try:
            await backend.put(loc, memoryview(b"x"))
            with pytest.raises(ObjectNotFoundError) as err:  # the server echoes the ETL name
                await backend.open_body(loc, 0, None, etl_name=TOKEN)
            assert TOKEN not in str(err.value) and "***" in str(err.value)
        finally:
            await backend.aclose()


# -- through the public client --


async def test_async_client_reads_ais(ais: LocalAIS, prefix: str) -> None:
    payload = secrets.token_bytes(3 * 2**20 + 17)
    async with aisio.AsyncClient(_config(ais.endpoint, part_size=2**20)) as client:
        await client.put(prefix + "data", payload)
        assert await client.get(prefix + "data") == payload
        assert await client.get(prefix + "data", start=5, end=2**20 + 9) == payload[5:2**20 + 9]
        ranges = [(0, 4), (100, 200), (3 * 2**20, 3 * 2**20 + 17)]
        views = await client.get_ranges(prefix + "data", ranges)
        assert [bytes(v) for v in views] == [payload[:4], payload[100:200], payload[-17:]]
        assert [i.url async for i in client.list(prefix)] == [prefix + "data"]


@pytest.mark.slow
async def test_large_object_parallel_read(ais: LocalAIS) -> None:
    chunk = secrets.token_bytes(2**20)
    ais.put_object("bk", "large", (chunk for _ in range(256)))
    expected = hashlib.sha256(chunk * 256).hexdigest()
    async with aisio.AsyncClient(_config(ais.endpoint)) as client:
        buf = bytearray(256 * 2**20)
        assert await client.get_into("ais://bk/large", buf) == len(buf)
    assert hashlib.sha256(buf).hexdigest() == expected


# -- a real cluster: AIS_ENDPOINT set --


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[AISBackend, str]]:
    endpoint = os.environ.get("AIS_ENDPOINT")
    if not endpoint:
        pytest.skip("AIS_ENDPOINT is not set")
    from aistore.sdk import Client

    token = os.environ.get("AIS_AUTHN_TOKEN") or None
    name = "aisio-test-" + secrets.token_hex(4)
    bucket = Client(endpoint, token=token).bucket(name).create()
    backend = AISBackend(aisio.ClientConfig.from_env(), page_size=3)
    try:
        yield backend, f"ais://{name}/"
    finally:
        await backend.aclose()
        bucket.delete(missing_ok=True)


@pytest.mark.ais_cluster
async def test_cluster_roundtrip(cluster: tuple[AISBackend, str]) -> None:
    await _roundtrip(*cluster)


@pytest.mark.ais_cluster
async def test_cluster_multipart_and_batch(cluster: tuple[AISBackend, str]) -> None:
    backend, prefix = cluster
    loc = parse_url(prefix + "mpt")
    upload = await backend.create_upload(loc)
    part = secrets.token_bytes(5 * 2**20)
    await upload.upload_part(1, 0, memoryview(part))
    await upload.upload_part(2, len(part), memoryview(b"tail"))
    assert (await upload.complete()).size == len(part) + 4
    small = parse_url(prefix + "small")
    await backend.put(small, memoryview(b"small"))
    assert await backend.get_batch([small, small]) == [b"small", b"small"]
    for victim in (loc, small):
        await backend.delete(victim)
