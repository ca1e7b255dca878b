"""Ceph's RADOS Gateway: ``local_rgw()`` itself, and what a production S3 does unlike moto.

The store-based suites run on RGW through the ``rgw`` store (conftest); the tests here pin
the behaviours that differ from moto and that aisio depends on or works around, each
through aisio (both signers: aisio's own on a plain path-style endpoint, botocore's for
everything on the rgw-sdk set-up) and, where the raw answer is the point, through
boto3 or a plain HTTP request. docs/reference/testing.md lists them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.client
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import boto3
import botocore.config
import botocore.exceptions
import pytest

import aisio
from aisio import ReaderConstructor
from aisio._backends._sigv4 import Signer
from aisio.errors import MissingDependencyError
from aisio.testing import _rgw, local_rgw

from .conftest import Store, make_store, skip_without_ceph

MiB = 2**20
BUCKET = "aisio-test"


@pytest.fixture
def ceph() -> None:
    """For tests that start gateways of their own: skips where Ceph is not installed."""
    skip_without_ceph()


@pytest.fixture(params=["aisio", "botocore"])
def rgw(request: pytest.FixtureRequest) -> Store:
    """The rgw store, its requests signed by aisio, or (rgw-sdk) every one by botocore."""
    return make_store("rgw" if request.param == "aisio" else "rgw-sdk", request,
                      part_size=5 * MiB)


def where(url: str) -> dict[str, str]:
    """boto3's Bucket and Key of an s3:// URL."""
    bucket, key = url.removeprefix("s3://").split("/", 1)
    return {"Bucket": bucket, "Key": key}


@contextlib.contextmanager
def own_boto3(rgw: Any, key_id: str | None = None, secret: str | None = None,
              **config: Any) -> Iterator[Any]:
    """A boto3 client of its own (other keys or settings), closed after: RGW keeps
    connections open, so an unclosed client leaves sockets (ResourceWarnings) behind."""
    client = boto3.client("s3", endpoint_url=rgw.endpoint_url, region_name=rgw.region,
                          aws_access_key_id=key_id or rgw.access_key_id,
                          aws_secret_access_key=secret or rgw.secret_access_key,
                          verify=rgw.ca_bundle if rgw.ca_bundle else True,
                          config=botocore.config.Config(**config))
    try:
        yield client
    finally:
        client.close()


def error_of(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str]:
    response: Any = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


# -- local_rgw() itself --


def test_missing_programs_name_the_packages_and_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    made: list[str] = []
    monkeypatch.setattr(_rgw.tempfile, "mkdtemp", lambda **kw: made.append("dir") or "")
    with pytest.raises(MissingDependencyError) as info, local_rgw():
        pass  # pragma: no cover
    message = str(info.value)
    assert "radosgw, ceph-mon, ceph-osd" in message
    assert "apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd" in message
    assert isinstance(info.value, ImportError) and not made


def _processes_mentioning(root: str) -> list[int]:
    """Live processes whose command line names ``root`` (every daemon gets its ceph.conf)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if root.encode() in f.read():
                    found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Boom(Exception):
    pass


@pytest.mark.usefixtures("ceph")
@pytest.mark.parametrize("how", ["returns", "raises"])
def test_nothing_is_left_behind(how: str) -> None:
    with contextlib.suppress(Boom), local_rgw() as rgw:
        pids, root = rgw.pids, rgw.root
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        assert sorted(_processes_mentioning(root)) == sorted(pids)
        assert os.path.isfile(f"{root}/ceph.conf") and rgw.version >= (16,)
        rgw.create_bucket("still-here")
        if how == "raises":
            raise Boom
    assert not [p for p in pids if _alive(p)]  # killed and reaped, not left as zombies
    assert not _processes_mentioning(root)
    assert not os.path.exists(root)


@pytest.mark.usefixtures("ceph")
def test_nothing_is_left_behind_when_the_start_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway never answers: every daemon started by then is killed, the folder goes."""
    seen: list[tuple[str, list[int]]] = []

    def never_up(cluster: Any, url: str, deadline: float) -> None:
        seen.append((cluster.root, [p.pid for _, p in cluster.procs]))
        raise TimeoutError("no answer (simulated)")

    monkeypatch.setattr(_rgw, "_wait_for_http", never_up)
    with pytest.raises(TimeoutError, match="simulated"), local_rgw():
        pass  # pragma: no cover
    ((root, pids),) = seen
    assert len(pids) == 3 and not [p for p in pids if _alive(p)]
    assert not _processes_mentioning(root) and not os.path.exists(root)


async def test_the_two_rgw_stores_exercise_both_signers(
    rgw: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rgw: aisio signs GETs and HEADs; rgw-sdk: botocore does, keys from the environment."""
    import botocore.auth

    url = rgw.url("signer.bin")
    async with aisio.AsyncClient(rgw.server.config()) as c:
        await c.put(url, b"who signs")
    signed: list[str] = []
    v4, v2 = botocore.auth.SigV4Auth.signature, botocore.auth.HmacV1Auth.get_signature

    def sigv4(self: Any, string_to_sign: str, request: Any) -> str:
        signed.append(f"{request.method} v4")
        return str(v4(self, string_to_sign, request))

    def sigv2(self: Any, method: str, *args: Any, **kwargs: Any) -> str:
        signed.append(f"{method} v2")
        return str(v2(self, method, *args, **kwargs))

    monkeypatch.setattr(botocore.auth.SigV4Auth, "signature", sigv4)
    monkeypatch.setattr(botocore.auth.HmacV1Auth, "get_signature", sigv2)
    async with aisio.AsyncClient(rgw.config) as c:
        assert await c.get(url) == b"who signs"
        assert (await c.head(url)).size == len(b"who signs")
    if rgw.config.s3.access_key_id:
        assert signed == []
    else:
        assert not rgw.config.s3.secret_access_key
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == rgw.server.secret_access_key
        # botocore presigns S3 GETs with SigV2 where the region allows it (us-east-1 here)
        # unless told signature_version="s3v4"; RGW accepts both
        assert sorted(x.split()[0] for x in signed) == ["GET", "HEAD"], signed


# -- multipart uploads --


def test_complete_multipart_upload_answers_an_empty_etag(rgw_server: Any) -> None:
    """RGW 16.2's CompleteMultipartUpload has an empty <ETag>; the object's HEAD is right."""
    s3, key = rgw_server.boto3_client(), f"mp-{os.getpid()}.bin"
    parts = [bytes([i]) * (5 * MiB) for i in (1, 2)]
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags = [s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=n, Body=p)["ETag"]
             for n, p in enumerate(parts, 1)]
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]})
    expected = '"' + hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + '-2"'
    if rgw_server.version[:1] == (16,):
        assert done.get("ETag", "") == ""
    assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == expected


async def test_the_writer_reports_the_multipart_etag_of_the_object(rgw: Store) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(123)]
    url = rgw.url("w.bin")
    async with aisio.AsyncClient(rgw.config) as c:
        async with c.writer(url) as w:
            for p in parts:
                await w.write(p)
        assert w.info is not None
        md5s = b"".join(hashlib.md5(p).digest() for p in parts)
        assert w.info.etag == f'"{hashlib.md5(md5s).hexdigest()}-3"'  # from a HEAD, not complete
        assert w.info.etag == (await c.head(url)).etag
        assert [i.etag async for i in c.list(url)] == [w.info.etag]


async def test_parts_under_five_mib_are_refused_and_the_writer_never_sends_them(
    rgw_server: Any,
) -> None:
    s3, key = rgw_server.boto3_client(), f"small-parts-{os.getpid()}.bin"
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags = [s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=n,
                            Body=b"x" * MiB)["ETag"] for n in (1, 2)]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
            "Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]})
    assert error_of(info) == (400, "EntityTooSmall")
    s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
    data = os.urandom(11 * MiB)
    url = f"s3://{BUCKET}/{key}"
    async with aisio.AsyncClient(rgw_server.config(part_size=MiB)) as c:
        async with c.writer(url) as w:
            await w.write(data)
        assert w.info is not None and w.info.etag and w.info.etag.endswith('-3"')  # 5 + 5 + 1
        assert await c.get(url) == data


# -- conditional reads: an object replaced under a reader --


async def test_a_stale_if_match_on_a_ranged_get_is_412(rgw_server: Any) -> None:
    s3, key = rgw_server.boto3_client(), f"ifmatch-{os.getpid()}.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"a" * 100)
    old = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key=key, IfMatch=old, Range="bytes=0-9")[
        "Body"].read() == b"a" * 10
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"b" * 100)
    for extra in ({"Range": "bytes=0-9"}, {}):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.get_object(Bucket=BUCKET, Key=key, IfMatch=old, **extra)
        assert error_of(info) == (412, "PreconditionFailed")


@pytest.mark.parametrize("buffer_size", [0, 64 * 1024])
async def test_a_range_based_reader_sees_the_overwrite_as_object_changed(
    rgw: Store, buffer_size: int
) -> None:
    old = os.urandom(3 * MiB)
    url = rgw.url("swap.bin")
    async with aisio.AsyncClient(rgw.config) as c:
        await c.put(url, old)
        reader = await c.open(url, ReaderConstructor.range_based(buffer_size=buffer_size))
        assert await reader.read(10) == old[:10]
        await anyio.to_thread.run_sync(lambda: rgw.server.boto3_client().put_object(
            **where(url), Body=os.urandom(3 * MiB)))
        reader.seek(2 * MiB)
        with pytest.raises(aisio.ObjectChangedError, match=r"swap\.bin"):
            await reader.read(10)
        await reader.aclose()


# -- error answers and how aisio maps them --


async def test_missing_objects_buckets_and_ranges(rgw: Store) -> None:
    s3 = rgw.server.boto3_client()
    for bucket, code in ((BUCKET, "NoSuchKey"), ("no-such-bucket", "NoSuchBucket")):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.get_object(Bucket=bucket, Key="nope")
        assert error_of(info) == (404, code)
    async with aisio.AsyncClient(rgw.config) as c:
        for url in (rgw.url("nope"), "s3://no-such-bucket/nope"):
            for call in (c.get(url), c.head(url)):
                with pytest.raises(aisio.ObjectNotFoundError):
                    await call
        url = rgw.url("short")
        await c.put(url, b"x" * 100)
        with pytest.raises(aisio.RangeError):  # RGW: 416 InvalidRange
            await c.get(url, 200, 300)
        with pytest.raises(aisio.RangeError):  # RGW would cut it short (206 of 50 bytes)
            await c.get(url, 50, 300)
    partial = s3.get_object(**where(url), Range="bytes=50-299")
    assert (partial["ContentRange"], partial["Body"].read()) == ("bytes 50-99/100", b"x" * 50)


@pytest.mark.parametrize("wrong", ["secret", "key_id"])
async def test_wrong_credentials_are_access_denied(
    rgw: Store, wrong: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RGW checks every signature (moto accepts any): 403, AccessDeniedError, no secret shown."""
    good = rgw.server.s3_options()
    url = rgw.url("guarded.bin")
    async with aisio.AsyncClient(rgw.server.config()) as c:
        await c.put(url, b"guarded")
    bad_secret, bad_key = "wrong-secret-x9", "nobody-y7"
    if rgw.config.s3.access_key_id:  # aisio signs
        opts = (dataclasses.replace(good, secret_access_key=bad_secret) if wrong == "secret"
                else dataclasses.replace(good, access_key_id=bad_key))
        config = dataclasses.replace(rgw.config, s3=opts)
    else:  # botocore signs, with keys from the environment
        var = "AWS_SECRET_ACCESS_KEY" if wrong == "secret" else "AWS_ACCESS_KEY_ID"
        monkeypatch.setenv(var, bad_secret if wrong == "secret" else bad_key)
        config = rgw.config
    with own_boto3(rgw.server, bad_key if wrong == "key_id" else None,
                   bad_secret if wrong == "secret" else None) as s3, pytest.raises(
                       botocore.exceptions.ClientError) as raw:
        s3.get_object(**where(url))
    assert error_of(raw) == (403, "SignatureDoesNotMatch" if wrong == "secret" else "InvalidAccessKeyId")
    async with aisio.AsyncClient(config) as c:
        calls = {"head": lambda: c.head(url), "get": lambda: c.get(url),
                 "put": lambda: c.put(rgw.url("new"), b"x"), "delete": lambda: c.delete(url)}
        for name, call in calls.items():
            with pytest.raises(aisio.AccessDeniedError) as info:
                await call()
            assert isinstance(info.value, PermissionError), name
            assert bad_secret not in repr(info.value) and good.secret_access_key not in str(info.value)
        with pytest.raises(aisio.AccessDeniedError):
            [i async for i in c.list(rgw.prefix)]


async def test_anonymous_requests_are_access_denied(rgw_server: Any) -> None:
    url = f"s3://{BUCKET}/anon-{os.getpid()}.bin"
    async with aisio.AsyncClient(rgw_server.config()) as c:
        await c.put(url, b"private")
    opts = dataclasses.replace(rgw_server.s3_options(), unsigned=True, access_key_id=None,
                               secret_access_key=None)
    async with aisio.AsyncClient(aisio.ClientConfig(s3=opts)) as c:
        for call in (c.get(url), c.head(url)):
            with pytest.raises(aisio.AccessDeniedError):
                await call


# -- listings --


async def test_listings_page_at_1000_keys_whatever_is_asked(rgw_server: Any) -> None:
    prefix = f"s3://{BUCKET}/pages-{os.getpid()}/"
    keys = [f"k{i:04d}" for i in range(1003)] + ["sub/a", "sub/deeper/b"]
    async with aisio.AsyncClient(rgw_server.config(max_concurrency=32)) as c:
        limit = anyio.CapacityLimiter(32)

        async def put(key: str) -> None:
            async with limit:
                await c.put(prefix + key, key.encode())

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(put, key)
        listed = [i async for i in c.list(prefix)]
        assert [i.url for i in listed] == [prefix + k for k in sorted(keys)]  # every page
        assert [i.size for i in listed] == [len(k) for k in sorted(keys)]
        shallow = [i.url async for i in c.list(prefix + "sub/", recursive=False)]
        assert shallow == [prefix + "sub/a"]
    page = rgw_server.boto3_client().list_objects_v2(Bucket=BUCKET, Prefix=where(prefix)["Key"],
                                                     MaxKeys=5000)
    assert (page["MaxKeys"], page["KeyCount"], page["IsTruncated"]) == (1000, 1000, True)


async def test_listed_times_have_milliseconds_and_heads_whole_seconds(rgw: Store) -> None:
    url = rgw.url("times.bin")
    async with aisio.AsyncClient(rgw.config) as c:
        await c.put(url, b"t")
        head = await c.head(url)
        (listed,) = [i async for i in c.list(url)]
    assert head.last_modified is not None and listed.last_modified is not None
    assert head.last_modified.microsecond == 0
    assert listed.last_modified.replace(microsecond=0) == head.last_modified
    assert (listed.size, listed.etag) == (head.size, head.etag)


ODD_KEYS = ["with space.bin", "plus+sign.bin", "percent%25.bin", "q?x#y.bin", "a=b&c.bin",
            "ünï/κλειδί.bin", "tilde~!'()*.bin", "semi;colon,comma.bin", "dollar$@.bin",
            "back\\slash.bin", "caret^`{}|<>.bin", "  leading.bin", "dots/../x.bin",
            "dir//double.bin"]


async def test_odd_keys_round_trip(rgw: Store) -> None:
    async with aisio.AsyncClient(rgw.config) as c:
        for key in ODD_KEYS:
            url = rgw.url("odd/" + key)
            await c.put(url, key.encode())
            assert await c.get(url) == key.encode(), key
            assert (await c.head(url)).size == len(key.encode()), key
            assert await c.get(url, 1, 4) == key.encode()[1:4], key
        listed = [i.url async for i in c.list(rgw.url("odd/"))]
    assert listed == sorted(rgw.url("odd/" + k) for k in ODD_KEYS)


# -- signatures, presigned URLs, connections --


def _status(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("version", ["s3", "s3v4"])
def test_presigned_urls_sigv2_and_sigv4_are_accepted(rgw_server: Any, version: str) -> None:
    s3, key = rgw_server.boto3_client(), f"presigned-{os.getpid()}.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"signed")
    with own_boto3(rgw_server, signature_version=version,
                   s3={"addressing_style": "path"}) as presigner:
        url = presigner.generate_presigned_url("get_object",
                                               Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=60)
    assert ("X-Amz-Signature=" in url) == (version == "s3v4")
    assert _status(url) == (200, b"signed")
    tampered = url.replace(urllib.parse.quote(key), urllib.parse.quote("other-" + key))
    assert _status(tampered)[0] == 403


def test_an_expired_presigned_url_is_403_access_denied(rgw_server: Any) -> None:
    key = f"expired-{os.getpid()}.bin"
    rgw_server.boto3_client().put_object(Bucket=BUCKET, Key=key, Body=b"old")
    signer = Signer(rgw_server.access_key_id, rgw_server.secret_access_key, rgw_server.region)
    fresh = signer.presign(rgw_server.endpoint_url, f"/{BUCKET}/{key}", 60)
    stale = signer.presign(rgw_server.endpoint_url, f"/{BUCKET}/{key}", 60,
                           datetime.now(UTC) - timedelta(hours=1))
    assert _status(fresh) == (200, b"old")
    status, body = _status(stale)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body


def test_connections_are_kept_alive(rgw_server: Any) -> None:
    """RGW answers many requests on one connection (moto closes each one)."""
    key = f"alive-{os.getpid()}.bin"
    rgw_server.boto3_client().put_object(Bucket=BUCKET, Key=key, Body=b"k" * 1000)
    signer = Signer(rgw_server.access_key_id, rgw_server.secret_access_key, rgw_server.region)
    url = urllib.parse.urlsplit(signer.presign(rgw_server.endpoint_url, f"/{BUCKET}/{key}", 60))
    conn = http.client.HTTPConnection(url.netloc, timeout=10)
    try:
        sockets = set()
        for i in range(5):
            conn.request("GET", f"{url.path}?{url.query}", headers={"Range": f"bytes={i}-{i + 9}"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (206, b"k" * 10)
            assert not response.will_close
            sockets.add(id(conn.sock))
        assert len(sockets) == 1
    finally:
        conn.close()


# -- checksums --


def test_a_wrong_content_md5_is_bad_digest(rgw_server: Any) -> None:
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    # one attempt: botocore's default policy retries BadDigest 4 times, about 6 s
    with own_boto3(rgw_server, retries={"total_max_attempts": 1}) as s3, pytest.raises(
            botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=BUCKET, Key=f"md5-{os.getpid()}", Body=b"body", ContentMD5=wrong)
    assert error_of(info) == (400, "BadDigest")


def test_flexible_checksums_are_accepted_but_not_kept_by_pacific(rgw_server: Any) -> None:
    s3, key = rgw_server.boto3_client(), f"crc-{os.getpid()}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"body", ChecksumAlgorithm="CRC32")
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    if rgw_server.version[:1] == (16,):  # x-amz-checksum-* came in Reef (18)
        assert not [k for k in head if k.startswith("Checksum")]


@pytest.fixture(scope="module")
def rgw_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second gateway that speaks only HTTPS, with a throwaway CA."""
    from .test_http import make_certs

    skip_without_ceph()
    ca, cert, key = (str(p) for p in make_certs(tmp_path_factory.mktemp("rgw-tls")))
    with local_rgw(certificate=(cert, key), ca_bundle=ca) as rgw:
        rgw.create_bucket(BUCKET)
        yield rgw


async def test_over_https_aisio_reads_and_writes(rgw_tls: Any) -> None:
    assert rgw_tls.endpoint_url.startswith("https://")
    data = os.urandom(11 * MiB)
    url = f"s3://{BUCKET}/tls.bin"
    async with aisio.AsyncClient(rgw_tls.config(part_size=5 * MiB)) as c:
        await c.put(f"s3://{BUCKET}/small", b"small")
        async with c.writer(url) as w:
            await w.write(data)
        assert await c.get(url) == data
        assert await c.get(f"s3://{BUCKET}/small") == b"small"
        assert [i.size async for i in c.list(f"s3://{BUCKET}/")] == [len(b"small"), len(data)]


def test_over_https_aws_chunked_trailing_checksums_are_411(rgw_tls: Any) -> None:
    """What aisio avoids by computing checksums only where an operation requires one."""
    with own_boto3(rgw_tls, request_checksum_calculation="when_supported") as s3:
        try:
            s3.put_object(Bucket=BUCKET, Key="chunked", Body=b"x" * 1000)
        except botocore.exceptions.ClientError as exc:
            assert (exc.response["ResponseMetadata"]["HTTPStatusCode"],
                    exc.response["Error"]["Code"]) == (411, "MissingContentLength")
        else:
            assert rgw_tls.version[:1] != (16,), "Pacific refused aws-chunked uploads over https"
