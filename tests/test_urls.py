"""URL parsing: schemes, plain paths, AIS providers and aistore SDK objects."""

from __future__ import annotations

import os

import pytest

from aisio._url import Location, parse_url
from aisio.errors import InvalidURLError


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://bkt/a/b.bin", Location("s3", "bkt", "a/b.bin")),
    ("s3://bkt", Location("s3", "bkt", "")),
    ("ais://bkt/k", Location("ais", "bkt", "k")),
    ("ais://bkt/k?provider=aws", Location("ais", "bkt", "k", "aws")),
    ("ais://bkt/odd?key", Location("ais", "bkt", "odd?key")),
    ("gs://bkt/k", Location("ais", "bkt", "k", "gcp")),
    ("file:///tmp/x", Location("file", "", "/tmp/x")),
    ("file:///tmp/dir/", Location("file", "", "/tmp/dir/")),
    ("/abs/path", Location("file", "", "/abs/path")),
])
def test_urls_parse(url: str, expected: Location) -> None:
    assert parse_url(url) == expected


def test_relative_paths_become_absolute() -> None:
    assert parse_url("rel/x").key == os.path.join(os.getcwd(), "rel/x")


def test_prefixes_end_in_slash_or_are_bare_buckets() -> None:
    assert parse_url("s3://b/dir/").is_prefix and parse_url("s3://bkt").is_prefix
    assert not parse_url("s3://bkt/obj").is_prefix


def test_aistore_sdk_buckets_and_objects_are_accepted() -> None:
    from aistore.sdk import Client

    sdk = Client("http://127.0.0.1:1")
    assert parse_url(sdk.bucket("mybkt")).url == "ais://mybkt/"
    assert parse_url(sdk.bucket("x", provider="aws")) == Location("ais", "x", "", "aws")
    assert parse_url(sdk.bucket("b").object("d/o.bin")).url == "ais://b/d/o.bin"


@pytest.mark.parametrize("bad", ["", "s3://", "s3://UPPER_/x", "ftp://h/x", "file://host/x", 42])
def test_bad_urls_are_refused_with_a_typed_error(bad: object) -> None:
    with pytest.raises(InvalidURLError):
        parse_url(bad)
