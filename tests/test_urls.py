"""URL parsing: schemes, plain paths, AIS providers and aistore SDK objects."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

import aisio
from aisio._url import Location, file_url, parse_url
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


@pytest.mark.parametrize("bad", [
    "s3:/bkt/key", "ais:/bkt/key", "S3:bkt/key", "s3:", "gs:/bkt/k", "aws:/bkt/k",
    "file:relative/path", "file:",
])
def test_a_known_scheme_without_its_slashes_is_not_a_local_path(bad: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(bad)
    assert "not a URL" in str(info.value) or "absolute" in str(info.value)


def test_file_colon_slash_is_the_short_form_of_a_file_url() -> None:
    assert parse_url("file:/tmp/x") == parse_url("file:///tmp/x") == Location("file", "", "/tmp/x")


@pytest.mark.parametrize("bad", [
    "s3://bucket\n/key", "s3://bucket\r/key", "ais://bkt\x1b[2J/key", "s3://bu\tcket/k",
    "s3://bucket\n", "ais://bucket\n",
])
def test_control_characters_in_bucket_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(bad)
    assert str(info.value).isprintable()  # escaped, so a message cannot rewrite a terminal


def test_a_provider_suffix_must_end_the_url() -> None:
    # '$' would match before the final newline and drop it from the key
    assert parse_url("ais://bkt/k?provider=aws\n") == Location("ais", "bkt", "k?provider=aws\n")
    assert parse_url("ais://bkt/k?provider=aws") == Location("ais", "bkt", "k", "aws")


@pytest.mark.parametrize("url", [
    "s3://AKIAEXAMPLE:s3cr3tValue@bkt/key",
    "s3://AKIAEXAMPLE:s3cr3t/Value@bkt/key",  # a secret with '/' ends the "bucket" early
    "ais://AKIAEXAMPLE:s3cr3tValue@bkt/",
    "s3:/AKIAEXAMPLE:s3cr3tValue@bkt/key",
    "s3://AKIAEXAMPLE@bkt/key",
])
def test_credentials_in_a_url_never_reach_the_error(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(url)
    exc = info.value
    for text in (str(exc), repr(exc), repr(exc.url), repr(pickle.dumps(exc)),
                 repr(pickle.loads(pickle.dumps(exc)).__dict__)):
        assert "s3cr3t" not in text and "AKIAEXAMPLE" not in text, text


@pytest.mark.parametrize("url", ["s3://bkt/a\udc80", "ais://bkt/\ud800x", "/tmp/a\ud800",
                                 "file:///tmp/\udfff"])
def test_keys_with_lone_surrogates_are_refused_early(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(url)
    assert "Unicode" in str(info.value)
    str(info.value).encode("utf-8")  # the message itself is printable anywhere


async def test_a_lone_surrogate_key_is_an_invalid_url_for_the_client() -> None:
    async with aisio.AsyncClient() as client:
        with pytest.raises(InvalidURLError):
            await client.get("s3://bkt/a\udc80")


def test_non_utf8_file_names_have_urls_that_parse_back(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9 \xff?#%.bin"
    path = os.fsdecode(raw)
    url = file_url(path)
    assert url.isascii() and "%FF" in url and "%3F" in url and "%23" in url
    assert parse_url(url) == Location("file", "", path)
    assert parse_url(path).key == path
    with open(raw, "wb") as f:
        f.write(b"bytes")
    with aisio.Client() as client:
        assert client.get(url) == b"bytes"


@pytest.mark.parametrize("text", ["s3://AKID:se/cr+et@bucket/key", "unsupported ftp://u:pa/ss@host/x",
                                  "http://user:p@ss/w@rd@h/x"])
def test_redact_strips_credentials_with_slashes_in_them(text: str) -> None:
    from aisio._url import redact

    cleaned = redact(text)
    assert "se/cr+et" not in cleaned and "pa/ss" not in cleaned and "p@ss" not in cleaned
