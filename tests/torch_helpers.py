"""Helpers of the aisio.torch tests: objects and shards put in a store, LISTs counted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import aisio
from tests.conftest import Store, make_store

from .shards import tar_bytes


def put_objects(store: Store, count: int, folder: str = "o/", start: int = 0) -> None:
    """Objects {folder}{i:03d} holding the one byte i, for i in [start, count)."""
    with aisio.Client(store.config) as client:
        for i in range(start, count):
            client.put(store.url(f"{folder}{i:03d}"), bytes([i]))


def put_shards(store: Store, counts: list[int], folder: str = "s/", tag: str = "") -> None:
    """Shard k holds counts[k] samples k{k}_{i}, each a .txt and a .cls member."""
    with aisio.Client(store.config) as client:
        for k, n in enumerate(counts):
            members = []
            for i in range(n):
                members += [(f"k{k}_{i:02d}.txt", f"{tag}{k}-{i}".encode()), (f"k{k}_{i:02d}.cls", b"c")]
            client.put(store.url(f"{folder}{k:02d}.tar"), tar_bytes(members))


@pytest.fixture
def s3_requests(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[tuple[Store, Any]]:
    """A store on the loopback S3 server and a function that returns the requests it served
    since the last call (moto's request recorder)."""
    import httpx
    from moto.moto_api import recorder

    store = make_store("s3", request)
    monkeypatch.setattr(recorder, "_location", str(tmp_path / "requests.jsonl"))
    base = store.server.endpoint_url + "/moto-api/recorder/"
    httpx.post(base + "reset-recording")
    httpx.post(base + "start-recording")

    def served() -> list[tuple[str, str, str]]:
        text = httpx.get(base + "download-recording").text
        httpx.post(base + "reset-recording")
        out = []
        for line in text.splitlines():
            entry = json.loads(line)
            parts = urlsplit(entry["url"])
            out.append((entry["method"], parts.path, parts.query))
        return out

    yield store, served
    httpx.post(base + "stop-recording")


def lists(requests: list[tuple[str, str, str]]) -> int:
    """LIST requests: GETs of a bucket, not of a key."""
    return sum(1 for method, path, _ in requests
               if method == "GET" and path.strip("/").count("/") == 0)
