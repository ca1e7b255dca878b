"""aisio signs S3 data GETs and HEADs itself when it can, and those URLs are exactly botocore's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aisio
from aisio._backends._sigv4 import Signer
from aisio._backends.s3 import _addressing, _plain_signer

KEYS = ["plain.txt", "a b/c+d=e", "ünï/cödé~!*'()", "a//b/../x", "x?y#z&w", "sp ace%20", "-_.~/"]


def test_the_aws_documented_example_signs_the_same() -> None:
    # "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", S3 docs
    signer = Signer("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1")
    url = signer.presign("https://examplebucket.s3.amazonaws.com", "/test.txt", 86400,
                             datetime(2013, 5, 24, tzinfo=UTC))
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Signature"] == [
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"]
    assert query["X-Amz-Credential"] == ["AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"]


def botocore_url(key: str, *, endpoint: str | None, region: str, path_style: bool,
                 token: str | None, method: str = "GET") -> str:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id="AKID",
        aws_secret_access_key="se/cr+et", aws_session_token=token,
        config=Config(s3={"addressing_style": "path" if path_style else "virtual"},
                      signature_version="s3v4"))
    operation = {"GET": "get_object", "HEAD": "head_object"}[method]
    return str(client.generate_presigned_url(operation, Params={"Bucket": "bkt", "Key": key},
                                             ExpiresIn=3600))


def same_as_botocore(key: str, *, endpoint: str | None, region: str, path_style: bool,
                     token: str | None, method: str = "GET") -> tuple[str, str]:
    expected = botocore_url(key, endpoint=endpoint, region=region, path_style=path_style,
                            token=token, method=method)
    stamp = parse_qs(urlsplit(expected).query)["X-Amz-Date"][0]
    when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if endpoint:
        base, path = endpoint, f"/bkt/{key}"
    elif path_style:
        base, path = f"https://s3.{region}.amazonaws.com", f"/bkt/{key}"
    else:
        base, path = f"https://bkt.s3.{region}.amazonaws.com", f"/{key}"
    ours = Signer("AKID", "se/cr+et", region, token).presign(base, path, 3600, when, method=method)
    return expected, ours


def split(url: str) -> tuple[str, str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return parts.netloc, parts.path, parse_qs(parts.query)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [None, "to/ken+="])
@pytest.mark.parametrize("where", ["endpoint", "aws-path", "aws-virtual"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_urls_match_botocore(key: str, token: str | None, where: str, method: str) -> None:
    expected, ours = same_as_botocore(
        key, endpoint="http://127.0.0.1:9000" if where == "endpoint" else None,
        region="eu-west-3", path_style=where != "aws-virtual", token=token, method=method)
    assert split(ours) == split(expected)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda k: "\x00" not in k))
def test_any_key_signs_as_botocore_does(key: str) -> None:
    expected, ours = same_as_botocore(key, endpoint="http://127.0.0.1:9000", region="us-east-1",
                                      path_style=True, token=None)
    assert split(ours) == split(expected)


def options(**changes: Any) -> aisio.ClientConfig:
    s3 = aisio.S3Options(region="eu-west-3", endpoint_url="http://127.0.0.1:9000", force_path_style=True,
                         access_key_id="AKID", secret_access_key="secret")
    return aisio.ClientConfig(s3=dataclasses.replace(s3, **changes))


@pytest.mark.parametrize(("changes", "ours"), [
    ({}, True),
    ({"endpoint_url": None}, True),  # AWS, region known
    ({"access_key_id": None, "secret_access_key": None}, True),  # the credential chain, signed here
    ({"unsigned": True}, True),
    ({"requester_pays": True}, True),
    ({"force_path_style": False}, True),  # an endpoint at an IP address: path-style, as botocore's
    ({"force_path_style": False, "endpoint_url": "http://store.example:9000"}, False),  # virtual hosts
    ({"endpoint_url": "http://127.0.0.1:9000/s3"}, False),  # an endpoint with a path
    ({"endpoint_url": None, "region": None}, False),
    ({"endpoint_url": None, "region": "cn-north-1"}, False),
])
def test_aisio_addresses_every_plain_set_up_itself(changes: dict[str, Any], ours: bool) -> None:
    assert (_addressing(options(**changes)) is not None) is ours


def test_signer_repr_hides_the_keys() -> None:
    assert "secret" not in repr(_plain_signer(options())) and "AKID" not in repr(_plain_signer(options()))


def test_a_reading_process_never_imports_botocore(s3_server: Any) -> None:
    """Reads in a DataLoader worker pay no SDK start-up (about 0.45 CPU-s with botocore), nor
    its 66,000 objects in every full garbage collection."""
    s3_server.boto3_client().put_object(Bucket="aisio-test", Key="sign/obj.bin", Body=b"x" * 100_000)
    opts = s3_server.s3_options()
    script = textwrap.dedent(f"""
        import sys, aisio
        opts = aisio.S3Options(region={opts.region!r}, endpoint_url={opts.endpoint_url!r},
                               force_path_style=True, access_key_id={opts.access_key_id!r},
                               secret_access_key={opts.secret_access_key!r})
        with aisio.Client(aisio.ClientConfig(s3=opts)) as c:
            info = c.head("s3://aisio-test/sign/obj.bin")
            assert info.size == 100_000 and info.etag and info.last_modified.tzinfo
            assert c.get("s3://aisio-test/sign/obj.bin") == b"x" * 100_000
            assert c.get("s3://aisio-test/sign/obj.bin", 10, 20) == b"x" * 10
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "aiobotocore")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
