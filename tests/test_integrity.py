"""End-to-end integrity: uploads carry a checksum the store verifies, whole reads check it.

The arithmetic (CRC combination, which store answers can check a read) is tested as pure
functions; everything else against real servers: every backend for the round trip, moto
behind the fault proxy for what goes on the wire and for bytes flipped on their way, the
hostile server where a store must verify or refuse (moto and RGW 16.2 never refuse a
checksum), and RGW for what Pacific keeps (nothing: its reads go unchecked).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import zlib
from collections.abc import Iterator
from typing import Any

import crc32c
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

import aisio
from aisio import _checksum
from aisio.errors import IntegrityError, TransientError

from .conftest import Store
from .faults import Exchange, Fault, FaultProxy, fault_proxy, proxied_ais
from .hostile import HostileServer, Reply, Request, hostile_server

KiB, MiB = 2**10, 2**20
BUCKET = "aisio-test"
PART = 5 * MiB


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def b64crc(data: bytes) -> str:
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


# -- the arithmetic --


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_combined_crcs_are_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    for name, fn in (("crc32", zlib.crc32), ("crc32c", crc32c.crc32c)):
        assert _checksum.combine(name, fn(a), fn(b), len(b)) == fn(a + b)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 2**40), st.integers(0, 2**40))
def test_combining_is_associative_for_any_length(x: int, y: int, z: int, n: int, m: int) -> None:
    """Lengths far beyond what a test can allocate (up to 1 TiB) combine consistently."""
    c = _checksum.combine
    assert c("crc32c", c("crc32c", x, y, n), z, m) == c("crc32c", x, c("crc32c", y, z, m), n + m)


def test_only_full_object_s3_checksums_can_check_a_whole_read() -> None:
    value = b64crc(b"abc")
    full = _checksum.from_s3({"x-amz-checksum-crc32c": value, "etag": '"e"'})
    assert full == _checksum.Checksum("crc32c", crc32c.crc32c(b"abc"))
    skipped = [
        {"x-amz-checksum-crc32c": value + "-3", "etag": '"e-3"'},  # composite, as a GET says it
        {"x-amz-checksum-crc32c": value, "x-amz-checksum-type": "COMPOSITE", "etag": '"e"'},
        {"x-amz-checksum-crc32c": value, "etag": '"e-3"'},  # a multipart object's whole range
        {"x-amz-checksum-crc32c": "not base64!", "etag": '"e"'},
        {"x-amz-checksum-crc32c": "AAAAAAAA", "etag": '"e"'},  # 6 bytes: not a CRC32C
        {"x-amz-checksum-sha256": base64.b64encode(bytes(32)).decode()},  # too slow to check
        {"etag": '"e"'},
    ]
    assert [_checksum.from_s3(h) for h in skipped] == [None] * len(skipped)
    multipart = {"x-amz-checksum-crc32c": value, "x-amz-checksum-type": "FULL_OBJECT",
                 "etag": '"e-3"'}
    assert _checksum.from_s3(multipart) == full


def test_ais_checksums_that_are_checked() -> None:
    data = b"0123456789\n"
    assert _checksum.from_ais({"ais-checksum-type": "crc32c", "ais-checksum-value": "0767345f"}
                              ) == _checksum.Checksum("crc32c", crc32c.crc32c(data))
    for kind in ("xxhash", "xxhash2"):
        got = _checksum.from_ais({"ais-checksum-type": kind,
                                  "ais-checksum-value": xxhash.xxh64(data).hexdigest()})
        assert got is not None and got.hasher() is not None
        hasher = got.hasher()
        assert hasher is not None
        hasher.update(data)
        assert hasher.value == got.value
    for headers in ({"ais-checksum-type": "md5", "ais-checksum-value": "0" * 32},
                    {"ais-checksum-type": "crc32c", "ais-checksum-value": "0767345"},
                    {"ais-checksum-type": "none", "ais-checksum-value": ""}, {}):
        assert _checksum.from_ais(headers) is None


# -- every backend: what is written reads back, checked wherever the store keeps a checksum --


async def test_uploads_and_whole_reads_round_trip(store: Store) -> None:
    small, large = payload(3000, 1), payload(2 * PART + 123, 2)
    async with aisio.AsyncClient(store.config) as c:
        await c.put(store.url("small"), small)
        async with c.writer(store.url("large")) as w:
            for i in range(0, len(large), MiB):
                await w.write(large[i:i + MiB])
        for key, data in (("small", small), ("large", large)):
            assert await c.get(store.url(key)) == data
            buf = bytearray(len(data))
            assert await c.get_into(store.url(key), buf) == len(data) and buf == data
            reader = await c.open(store.url(key), aisio.ReaderConstructor.sequential())
            assert await reader.read() == data
            await reader.aclose()
    if store.name == "s3":
        client = store.server.boto3_client()
        for key, data, kind in (("small", small, None), ("large", large, "FULL_OBJECT")):
            head = client.head_object(Bucket=BUCKET, Key=store.url(key).split("/", 3)[3],
                                      ChecksumMode="ENABLED")
            kept = {k: v for k, v in head.items() if k.startswith("Checksum")}
            if store.server_kind == "rgw" and store.server.version[:1] == (16,):
                assert kept == {}  # Pacific accepts the headers, keeps nothing: reads go unchecked
            else:
                assert kept.get("ChecksumCRC32C") == b64crc(data)
                assert kept.get("ChecksumType", kind) == kind


# -- what goes on the wire (moto behind a recording proxy) --


@pytest.fixture
def s3_proxy(s3_server: Any) -> Iterator[tuple[FaultProxy, aisio.ClientConfig]]:
    with fault_proxy() as proxy:
        endpoint = proxy.listen(s3_server.endpoint_url, "s3")
        opts = s3_server.s3_options()
        config = aisio.ClientConfig(
            s3=aisio.S3Options(region=opts.region, endpoint_url=endpoint, force_path_style=True,
                               access_key_id=opts.access_key_id,
                               secret_access_key=opts.secret_access_key),
            part_size=PART, max_attempts=3, backoff_base=0.01, backoff_max=0.02)
        yield proxy, config


_counter = iter(range(1_000_000))


def fresh(name: str) -> tuple[str, str]:
    """(s3:// URL, key) of a new object in the test bucket."""
    key = f"integrity-{os.getpid()}-{next(_counter)}/{name}"
    return f"s3://{BUCKET}/{key}", key


def of_key(proxy: FaultProxy, key: str) -> list[Exchange]:
    return [x for x in proxy.snapshot() if x.path.endswith(key)]


async def test_s3_uploads_send_crc32c_and_reads_ask_for_it(
        s3_proxy: tuple[FaultProxy, aisio.ClientConfig]) -> None:
    proxy, config = s3_proxy
    small_url, small_key = fresh("small")
    large_url, large_key = fresh("large")
    small, large = payload(1000, 3), payload(2 * PART + 7, 4)
    async with aisio.AsyncClient(config) as c:
        await c.put(small_url, small)
        await c.put(large_url, large)  # over part_size: a multipart upload
        assert await c.get(small_url) == small
    (put,) = [x for x in of_key(proxy, small_key) if x.method == "PUT"]
    assert put.headers["x-amz-checksum-crc32c"] == b64crc(small)
    assert put.headers["x-amz-sdk-checksum-algorithm"] == "CRC32C"
    assert "x-amz-checksum-crc32c" in put.query.lower()  # signed, as S3 needs x-amz-* to be
    (get,) = [x for x in of_key(proxy, small_key) if x.method == "GET"]
    assert get.headers["x-amz-checksum-mode"] == "ENABLED"
    assert "x-amz-checksum-mode" in get.query.lower()
    exchanges = of_key(proxy, large_key)
    (create,) = [x for x in exchanges if x.method == "POST" and "uploads" in x.query]
    assert create.headers["x-amz-checksum-algorithm"] == "CRC32C"
    assert create.headers["x-amz-checksum-type"] == "FULL_OBJECT"
    parts = {int(x.query.split("partNumber=")[1].split("&")[0]): x.headers["x-amz-checksum-crc32c"]
             for x in exchanges if x.method == "PUT"}
    assert parts == {n + 1: b64crc(large[n * PART:(n + 1) * PART]) for n in range(3)}
    (complete,) = [x for x in exchanges if x.method == "POST" and "uploadId" in x.query]
    assert complete.headers["x-amz-checksum-crc32c"] == b64crc(large)
    assert complete.headers["x-amz-checksum-type"] == "FULL_OBJECT"


# -- a byte flipped in transit --


@pytest.mark.parametrize("size", [1000, 2 * PART + 99], ids=["one-get", "parts"])
async def test_a_byte_flipped_in_transit_is_caught(
        s3_proxy: tuple[FaultProxy, aisio.ClientConfig], size: int) -> None:
    proxy, config = s3_proxy
    url, key = fresh("flipped")
    data = payload(size, 5)
    async with aisio.AsyncClient(config) as c:
        await c.put(url, data)
        # the last part of a multi-part read (or the only GET), one byte inverted
        tail = f"bytes={(size // PART) * PART}-" if size > PART else None
        rule = proxy.add(Fault("flip", fraction=0.5), path=key, range=tail, times=-1)
        with pytest.raises(IntegrityError) as info:
            await c.get(url)
        assert info.value.url == url and url in str(info.value)
        assert info.value.algorithm == "crc32c" and info.value.expected == f"{crc32c.crc32c(data):08x}"
        with pytest.raises(IntegrityError):
            await c.get_into(url, bytearray(size))
        if size <= PART:  # one streamed GET from byte 0 to the end: hashed as it arrives
            reader = await c.open(url, aisio.ReaderConstructor.sequential())
            with pytest.raises(IntegrityError):
                await reader.read()
            await reader.aclose()
        assert rule.applied >= 2
        rule.times = 0
        assert await c.get(url) == data  # nothing wrong with the object itself
        stats = c.statistics()
    assert stats.retries == 0  # a mismatch is not retried


async def test_ranged_reads_are_not_checked(s3_proxy: tuple[FaultProxy, aisio.ClientConfig]) -> None:
    """No checksum covers part of an object: a ranged read returns what came, as before."""
    proxy, config = s3_proxy
    url, key = fresh("ranged")
    data = payload(4000, 6)
    async with aisio.AsyncClient(config) as c:
        await c.put(url, data)
        proxy.add(Fault("flip", after=10), path=key, ranged=True, times=-1)
        got = await c.get(url, 0, 100)
        views = await c.get_ranges(url, [(0, 50), (200, 300)])
    assert got != data[:100] and got[:10] == data[:10] and got[11:] == data[11:100]
    assert bytes(views[0])[11:] == data[11:50]


@pytest.mark.parametrize("same_version", [True, False])
async def test_a_multi_part_read_takes_the_checksum_of_its_own_version(same_version: bool) -> None:
    """A multi-part read asks a HEAD for the checksum (ranged answers carry none); a HEAD
    that answers for another version (the object was replaced meanwhile) is not used."""
    data = payload(3 * MiB + 5, 7)

    def script(req: Request) -> Reply | None:
        if req.method != "HEAD":
            return None
        etag = req.server.objects["b/obj"].etag if same_version else '"other"'
        return Reply.raw(
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nETag: {etag}\r\n"
            f"x-amz-checksum-crc32c: {b64crc(b'not the data')}\r\n\r\n".encode())

    with hostile_server("s3", script) as srv:
        srv.put("obj", data)
        async with aisio.AsyncClient(srv.config(part_size=MiB)) as c:
            if same_version:
                with pytest.raises(IntegrityError):
                    await c.get(srv.url_of("obj"))
            else:
                assert await c.get(srv.url_of("obj")) == data
        heads = [r for r in srv.requests if r.method == "HEAD"]
        assert len(heads) == 1 and heads[0].headers["x-amz-checksum-mode"] == "ENABLED"


# -- a store that refuses the checksum: IntegrityError, one attempt, nothing stored --


def verifying(flavor: str) -> Any:
    """A script that verifies uploads' CRC32C as S3 and AIS do, and refuses a mismatch."""
    def script(req: Request) -> Reply | None:
        if req.method != "PUT" or not req.body:
            return None
        if flavor == "s3":
            sent = req.headers.get("x-amz-checksum-crc32c")
            if sent is not None and sent != b64crc(req.body):
                return Reply.of(400, {"Content-Type": "application/xml"},
                                b"<Error><Code>BadDigest</Code><Message>The CRC32C you "
                                b"specified did not match the calculated checksum.</Message></Error>")
        else:
            sent = req.headers.get("ais-checksum-value")
            if sent is not None and sent != f"{crc32c.crc32c(req.body):08x}":
                message = f"BAD DATA CHECKSUM: crc32c({sent} != {crc32c.crc32c(req.body):08x})"
                return Reply.of(500, {"Content-Type": "application/json"},
                                json.dumps({"message": message, "status": 500}).encode())
        return None
    return script


@pytest.mark.parametrize("flavor", ["s3", "ais"])
async def test_a_refused_checksum_is_integrity_error_not_a_retry_loop(flavor: str) -> None:
    with hostile_server(flavor, verifying(flavor)) as srv, fault_proxy() as proxy:
        endpoint = _proxied(proxy, srv, flavor)
        config = srv.config(max_attempts=5)
        if flavor == "s3":
            config = config.replace(s3=dataclasses.replace(config.s3, endpoint_url=endpoint))
        else:
            config = config.replace(ais=aisio.AISOptions(endpoint=endpoint))
        data = payload(20_000, 8)
        async with aisio.AsyncClient(config) as c:
            await c.put(srv.url_of("fine"), data)  # the honest path is accepted
            assert srv.objects["b/fine"].data == data
            proxy.add(Fault("flip_request", after=12_345), method="PUT", path="/b/bad", times=-1)
            with pytest.raises(IntegrityError) as info:
                await c.put(srv.url_of("bad"), data)
        assert info.value.url == srv.url_of("bad") and not isinstance(info.value, TransientError)
        bodied = [r for r in srv.requests if r.method == "PUT" and r.path.endswith("/bad") and r.body]
        assert len(bodied) == 1 and "b/bad" not in srv.objects
        if flavor == "ais":  # the gateway's bodyless probe carries no checksum to fail
            probes = [r for r in srv.requests if r.listener == "gateway" and r.method == "PUT"]
            assert probes and all("ais-checksum-type" not in r.headers for r in probes)
            assert bodied[0].headers["ais-checksum-type"] == "crc32c"


def _proxied(proxy: FaultProxy, srv: HostileServer, flavor: str) -> str:
    if flavor == "s3":
        return proxy.listen(srv.url, "s3")
    proxy.listen(srv.target_url, "t0", flavor="ais")
    return proxy.listen(srv.url, "gateway", flavor="ais")


async def test_a_refused_part_aborts_the_upload(s3_proxy: tuple[FaultProxy, aisio.ClientConfig],
                                                s3_server: Any) -> None:
    proxy, config = s3_proxy
    url, key = fresh("part")
    proxy.add(Fault("status", status=400, code="BadDigest"), method="PUT", path=key,
              query="partNumber=2")
    async with aisio.AsyncClient(config) as c:
        with pytest.raises(IntegrityError):
            await c.put(url, payload(3 * PART, 9))
    exchanges = of_key(proxy, key)
    assert [x.query.count("partNumber=2") for x in exchanges if x.method == "PUT"].count(1) == 1
    assert [x for x in exchanges if x.method == "DELETE" and "uploadId" in x.query]
    with pytest.raises(s3_server.boto3_client().exceptions.ClientError):
        s3_server.boto3_client().head_object(Bucket=BUCKET, Key=key)


# -- AIS: crc32c on PUT; GETs state the bucket's checksum, checked when cheap --


async def test_ais_put_sends_crc32c(ais_server: Any) -> None:
    with fault_proxy() as proxy:
        endpoint = proxied_ais(proxy, ais_server)
        data = payload(5000, 10)
        config = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=endpoint))
        async with aisio.AsyncClient(config) as c:
            await c.put(f"ais://{BUCKET}/crc-{os.getpid()}", data)
            assert await c.get(f"ais://{BUCKET}/crc-{os.getpid()}") == data  # md5: not checked
        (put,) = [x for x in proxy.snapshot() if x.method == "PUT" and x.upstream.startswith("t")]
        assert put.headers["ais-checksum-type"] == "crc32c"
        assert put.headers["ais-checksum-value"] == f"{crc32c.crc32c(data):08x}"


@pytest.mark.parametrize("kind", ["crc32c", "xxhash2", "md5"])
@pytest.mark.parametrize("size", [3000, 3 * MiB], ids=["one-get", "parts"])
async def test_ais_whole_reads_check_the_stated_checksum(kind: str, size: int) -> None:
    data = payload(size, 11)
    good = {"crc32c": f"{crc32c.crc32c(data):08x}", "xxhash2": xxhash.xxh64(data).hexdigest(),
            "md5": "0" * 32}[kind]
    stated = {"value": good}

    def script(req: Request) -> Reply | None:
        if req.listener != "target" or req.method != "GET":
            return None
        reply = req.server._honest(req)
        first = next(iter(reply.steps))
        assert isinstance(first, bytes)
        extra = f"ais-checksum-type: {kind}\r\nais-checksum-value: {stated['value']}\r\n"
        return Reply.raw(first.replace(b"\r\n\r\n", b"\r\n" + extra.encode() + b"\r\n", 1))

    with hostile_server("ais", script) as srv:
        srv.put("obj", data)
        async with aisio.AsyncClient(srv.config(part_size=MiB)) as c:
            assert await c.get(srv.url_of("obj")) == data
            stated["value"] = "1" * len(good)  # the store's checksum no longer matches
            if kind == "md5":  # too slow to check on a read: not checked
                assert await c.get(srv.url_of("obj")) == data
            else:
                with pytest.raises(IntegrityError):
                    await c.get(srv.url_of("obj"))
            assert await c.get(srv.url_of("obj"), 10, 20) == data[10:20]  # ranged: unchecked
