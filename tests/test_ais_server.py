"""local_ais() is faithful to AIS: the official ``aistore`` SDK is the referee here."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator

import httpx
import msgpack
import pytest

aistore = pytest.importorskip("aistore")

from aistore.sdk import Client  # noqa: E402
from aistore.sdk.archive_config import ArchiveConfig  # noqa: E402
from aistore.sdk.errors import (  # noqa: E402
    AISError,
    ErrBckAlreadyExists,
    ErrBckNotFound,
    ErrETLNotFound,
    ErrObjNotFound,
)
from aistore.sdk.etl.etl_config import ETLConfig  # noqa: E402
from aistore.sdk.retry_config import RetryConfig  # noqa: E402
from tenacity import Retrying, stop_after_attempt  # noqa: E402
from urllib3.util.retry import Retry  # noqa: E402

from aisio.testing._ais import LocalAIS, local_ais  # noqa: E402


def _no_retries() -> RetryConfig:
    # The SDK retries 404s on GET (ErrObjNotFound is "retryable") for a minute by default.
    return RetryConfig(http_retry=Retry(total=0, raise_on_status=False),
                       network_retry=Retrying(stop=stop_after_attempt(1), reraise=True))


def _sdk(ais: LocalAIS, token: str | None = None) -> Client:
    return Client(ais.endpoint, retry_config=_no_retries(), token=token, timeout=(5, 30))


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
        yield server


@pytest.fixture
def bucket(ais: LocalAIS, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "b-" + request.node.name.replace("_", "-").replace("[", "-").replace("]", "")[:60]
    ais.create_bucket(name)
    yield name
    ais.destroy_bucket(name)


def test_bucket_create_head_list_destroy(ais: LocalAIS) -> None:
    client = _sdk(ais)
    bck = client.bucket("made-by-sdk").create()
    with pytest.raises(ErrBckAlreadyExists):
        client.bucket("made-by-sdk").create()
    assert client.bucket("made-by-sdk").create(exist_ok=True)
    props = json.loads(bck.head()["Ais-Bucket-Props"])
    assert props["provider"] == "ais"
    assert "made-by-sdk" in [b.name for b in client.cluster().list_buckets()]
    bck.delete()
    with pytest.raises(ErrBckNotFound):
        client.bucket("made-by-sdk").delete()
    client.bucket("made-by-sdk").delete(missing_ok=True)
    with pytest.raises(AISError) as err:
        client.bucket("made-by-sdk").head()
    assert err.value.status_code == 404


def test_put_get_and_ranges(ais: LocalAIS, bucket: str) -> None:
    obj = _sdk(ais).bucket(bucket).object("dir/data.bin")
    payload = bytes(range(256)) * 40
    obj.get_writer().put_content(payload)
    assert obj.get_reader().read_all() == payload
    assert obj.get_reader(byte_range="bytes=10-19").read_all() == payload[10:20]
    assert obj.get_reader(byte_range="bytes=10200-").read_all() == payload[10200:]
    assert obj.get_reader(byte_range="bytes=-5").read_all() == payload[-5:]
    assert obj.get_reader(byte_range="bytes=10000-99999").read_all() == payload[10000:]
    with pytest.raises(AISError) as err:
        obj.get_reader(byte_range=f"bytes={len(payload)}-").read_all()
    assert err.value.status_code == 416


def test_range_response_headers(ais: LocalAIS, bucket: str) -> None:
    ais.put_object(bucket, "r", b"0123456789")
    with httpx.Client(follow_redirects=True) as http:
        url = f"{ais.endpoint}/v1/objects/{bucket}/r"
        got = http.get(url, headers={"Range": "bytes=2-4"})
        assert (got.status_code, got.content) == (206, b"234")
        assert got.headers["Content-Range"] == "bytes 2-4/10"
        past = http.get(url, headers={"Range": "bytes=10-"})
        assert past.status_code == 416
        assert past.headers["Content-Range"] == "bytes */10"
        assert past.json()["status"] == 416


def test_head_properties_and_versions(ais: LocalAIS, bucket: str) -> None:
    obj = _sdk(ais).bucket(bucket).object("versioned")
    obj.get_writer().put_content(b"one")
    first = obj.head("checksum,version,atime")
    assert first.size == 3
    assert first.checksum_type == "md5" and len(first.checksum_value) == 32
    assert first.obj_version == "1" and first.present and first.access_time.isdigit()
    obj.get_writer().put_content(b"second")
    again = obj.props  # the full (v1) property set
    assert again.obj_version == "2" and again.size == 6
    assert again.checksum_value != first.checksum_value
    assert obj.head("name,size").checksum_value == ""  # selective HEAD: only what was asked


def test_list_objects_pages(ais: LocalAIS, bucket: str) -> None:
    bck = _sdk(ais).bucket(bucket)
    names = [f"img/{i:03d}.jpg" for i in range(23)] + ["top.txt"]
    for name in names:
        ais.put_object(bucket, name, name.encode())
    page = bck.list_objects(page_size=5, props="name,size,version")
    assert [e.name for e in page.entries] == sorted(names)[:5]
    assert page.continuation_token and page.entries[0].size == len(names[0])
    pages, token, uuid = 1, page.continuation_token, page.uuid
    seen = [e.name for e in page.entries]
    while token:
        page = bck.list_objects(page_size=5, uuid=uuid, continuation_token=token)
        seen += [e.name for e in page.entries]
        token, pages = page.continuation_token, pages + 1
    assert seen == sorted(names) and pages == 5
    assert [e.name for e in bck.list_objects_iter(prefix="img/01", page_size=4)] == [
        f"img/{i:03d}.jpg" for i in range(10, 20)]
    assert len(bck.list_all_objects(page_size=7)) == len(names)


def test_list_objects_json_and_non_recursive(ais: LocalAIS, bucket: str) -> None:
    for name in ("a/1", "a/2", "b/c/3", "z"):
        ais.put_object(bucket, name, b"xy")
    msg = {"action": "list", "value": {"prefix": "", "pagesize": 2, "props": "name,size",
                                       "flags": "0"}}
    with httpx.Client() as http:
        url = f"{ais.endpoint}/v1/buckets/{bucket}"
        got = http.request("GET", url, content=json.dumps(msg)).json()
        assert [e["name"] for e in got["entries"]] == ["a/1", "a/2"]
        assert got["entries"][0]["size"] == "2"  # as AIS's JSON: size is a string
        assert got["continuation_token"] == "a/2"
        msg["value"].update(flags=str(1 << 11), pagesize=0)
        got = http.request("GET", url, content=json.dumps(msg),
                           headers={"Accept": "application/msgpack"})
        page = msgpack.unpackb(got.content)
        assert [(e["n"], bool(e["f"] & (1 << 8))) for e in page["Entries"]] == [
            ("a/", True), ("b/", True), ("z", False)]


def test_archpath(ais: LocalAIS, bucket: str) -> None:
    shard = _tar({"0001.jpg": b"JPEG1", "0001.cls": b"7", "sub/0002.jpg": b"JPEG2"})
    obj = _sdk(ais).bucket(bucket).object("shard-0.tar")
    obj.get_writer().put_content(shard)
    reader = obj.get_reader(archive_config=ArchiveConfig(archpath="sub/0002.jpg"))
    assert reader.read_all() == b"JPEG2"
    assert obj.get_reader(archive_config=ArchiveConfig(archpath="0001.cls")).read_all() == b"7"
    with pytest.raises(ErrObjNotFound):
        obj.get_reader(archive_config=ArchiveConfig(archpath="nope.jpg")).read_all()


def test_etl_on_get(ais: LocalAIS, bucket: str) -> None:
    obj = _sdk(ais).bucket(bucket).object("text")
    obj.get_writer().put_content(b"hello")
    assert obj.get_reader(etl=ETLConfig(name="upper")).read_all() == b"HELLO"
    assert obj.get_reader(etl=ETLConfig(name="append-args", args="!?")).read_all() == b"hello!?"
    ais.add_etl("reverse", lambda data, args: data[::-1])
    assert obj.get_reader(etl=ETLConfig(name="reverse")).read_all() == b"olleh"
    with pytest.raises(ErrETLNotFound):
        obj.get_reader(etl=ETLConfig(name="no-such-etl")).read_all()


def test_get_batch_streaming(ais: LocalAIS, bucket: str) -> None:
    client = _sdk(ais)
    bck = client.bucket(bucket)
    for i in range(5):
        ais.put_object(bucket, f"s{i}", f"sample-{i}".encode())
    ais.put_object(bucket, "shard.tar", _tar({"x.txt": b"inside"}))
    batch = client.batch(["s3", "s0", "missing", "s4"], bucket=bck)
    got = [(out.obj_name, out.err_msg, data) for out, data in batch.get()]
    assert got == [("s3", None, b"sample-3"), ("s0", None, b"sample-0"),
                   ("missing", "Batch entry failed on the server", b""),
                   ("s4", None, b"sample-4")]
    batch = client.batch(bucket=bck)
    batch.add("shard.tar", archpath="x.txt").add("s1", start=2, length=4)
    assert [data for _out, data in batch.get()] == [b"inside", b"mple"]


def test_get_batch_multipart_and_errors(ais: LocalAIS, bucket: str) -> None:
    client = _sdk(ais)
    bck = client.bucket(bucket)
    ais.put_object(bucket, "m0", b"abc")
    ais.put_object(bucket, "m1", b"defgh")
    batch = client.batch(bucket=bck, streaming_get=False)
    batch.add("m1", opaque=b"id-1").add("m0")
    got = [(out.obj_name, out.size, out.opaque, data) for out, data in batch.get()]
    assert got == [("m1", 5, b"id-1", b"defgh"), ("m0", 3, None, b"abc")]
    strict = client.batch(["m0", "missing"], bucket=bck, cont_on_err=False)
    with pytest.raises(AISError) as err:
        list(strict.get())
    assert err.value.status_code == 404


def test_not_found_errors(ais: LocalAIS, bucket: str) -> None:
    client = _sdk(ais)
    with pytest.raises(ErrObjNotFound):
        client.bucket(bucket).object("absent").get_reader().read_all()
    with pytest.raises(ErrBckNotFound):
        client.bucket("no-such-bucket").object("x").get_reader().read_all()
    with pytest.raises(AISError) as err:
        client.bucket(bucket).object("absent").head()
    assert err.value.status_code == 404
    with pytest.raises(AISError) as err:
        client.bucket(bucket).object("absent").delete()
    assert err.value.status_code == 404


def test_gateway_redirects_to_owning_target(ais: LocalAIS, bucket: str) -> None:
    ais.put_object(bucket, "owned", b"data")
    with httpx.Client() as http:
        url = f"{ais.endpoint}/v1/objects/{bucket}/owned?provider=ais"
        first = http.get(url)
        assert first.status_code == 307
        location = first.headers["Location"]
        assert location.split("/v1/")[0] in ais.target_urls and "pid=" in location
        assert http.get(url).headers["Location"].split("?")[0] == location.split("?")[0]
        assert http.get(location).content == b"data"


def test_direct_reads_through_the_cluster_map(ais: LocalAIS, bucket: str) -> None:
    ais.put_object(bucket, "direct", b"no gateway")
    before = ais.count("proxy", "GET")
    obj = _sdk(ais).bucket(bucket).object("direct")
    assert obj.get_reader(direct=True).read_all() == b"no gateway"
    assert ais.count("proxy", "GET") == before + 1  # the cluster map only


def test_multipart_upload_and_abort(ais: LocalAIS, bucket: str) -> None:
    obj = _sdk(ais).bucket(bucket).object("big")
    upload = obj.multipart_upload().create()
    upload.add_part(2).put_content(b"-two")
    upload.add_part(1).put_content(b"one")
    with pytest.raises(ErrObjNotFound):  # nothing visible before completion
        obj.get_reader().read_all()
    upload.complete()
    assert obj.get_reader().read_all() == b"one-two"
    other = _sdk(ais).bucket(bucket).object("aborted")
    upload = other.multipart_upload().create()
    upload.add_part(1).put_content(b"x")
    upload.abort()
    with pytest.raises(ErrObjNotFound):
        other.get_reader().read_all()


def test_delete(ais: LocalAIS, bucket: str) -> None:
    obj = _sdk(ais).bucket(bucket).object("gone")
    obj.get_writer().put_content(b"x")
    obj.delete()
    with pytest.raises(ErrObjNotFound):
        obj.get_reader().read_all()


def test_token_required() -> None:
    with local_ais(targets=2, token="s3cr3t") as ais:
        ais.create_bucket("tb")
        good = _sdk(ais, token="s3cr3t").bucket("tb").object("o")
        good.get_writer().put_content(b"authorized")
        assert good.get_reader().read_all() == b"authorized"
        with pytest.raises(AISError) as err:
            _sdk(ais).bucket("tb").object("o").get_reader().read_all()
        assert err.value.status_code == 401
        with pytest.raises(AISError) as err:
            _sdk(ais, token="wrong").bucket("tb").object("o").get_reader().read_all()
        assert err.value.status_code == 403


def test_injected_faults(ais: LocalAIS, bucket: str) -> None:
    obj = _sdk(ais).bucket(bucket).object("flaky")
    obj.get_writer().put_content(b"0123456789")
    ais.fail_next(1, 503, method="GET")
    with pytest.raises(AISError) as err:
        obj.get_reader().read_all()
    assert err.value.status_code == 503
    assert obj.get_reader().read_all() == b"0123456789"
    ais.cut_next(1, after=4)
    with httpx.Client(follow_redirects=True) as http, pytest.raises(httpx.RemoteProtocolError):
        http.get(f"{ais.endpoint}/v1/objects/{bucket}/flaky")


def test_stops_cleanly() -> None:
    before = set(threading.enumerate())
    with local_ais(targets=2) as ais:
        ais.create_bucket("s")
        ais.put_object("s", "o", b"x" * 1000)
        http = httpx.Client(follow_redirects=True)  # leaves keep-alive connections open
        assert http.get(f"{ais.endpoint}/v1/objects/s/o").content == b"x" * 1000
        ports = [int(u.rsplit(":", 1)[1]) for u in [ais.endpoint, *ais.target_urls]]
    http.close()
    assert set(threading.enumerate()) <= before  # acceptors and handlers all joined
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
