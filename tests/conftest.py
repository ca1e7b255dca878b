"""Shared fixtures: real servers on loopback, one store per backend, async and sync clients.

Tests that take the ``store`` fixture run once per backend (file, s3 on moto, s3 on
Ceph's RADOS Gateway, ais); those that take ``api`` run once per backend and per flavour
(the AsyncClient awaited directly, or the blocking Client called from a worker thread, as
a DataLoader worker would).

The ``rgw`` backend needs Debian's radosgw, ceph-mon and ceph-osd; without them its
tests skip and say what to install, unless ``AISIO_REQUIRE_RGW=1`` (CI) makes that an
error. aisio signs its own requests on ``rgw`` (explicit keys, path-style endpoint);
``rgw-sdk`` takes the keys from the environment and names the endpoint by host name, a
set-up aisio leaves to botocore, which signs every request; it runs the tests of
``SDK_SIGNED_MODULES``.
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import pytest

import aisio
from aisio.errors import MissingDependencyError
from aisio.testing import local_rgw, local_s3

_counter = itertools.count()


@dataclass
class Store:
    """One backend under test: a config that reaches it and a fresh prefix URL per test.

    ``name`` is the protocol the tests check for ("file", "s3", "ais"); ``server_kind``
    says which server speaks it ("moto" or "rgw" for s3).
    """

    name: str
    config: aisio.ClientConfig
    prefix: str
    server: Any = None
    server_kind: str = ""

    def url(self, key: str) -> str:
        return self.prefix + key


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    with local_s3() as s3:
        s3.create_bucket("aisio-test")
        yield s3


@pytest.fixture(scope="session")
def ais_server() -> Iterator[Any]:
    from aisio.testing import local_ais

    with local_ais() as ais:
        ais.create_bucket("aisio-test")
        yield ais


def skip_without_ceph() -> None:
    """Skip (fail, with AISIO_REQUIRE_RGW=1) unless local_rgw()'s programs are installed."""
    from aisio.testing import _rgw

    try:
        _rgw.check_installed()
    except MissingDependencyError as exc:
        if os.environ.get("AISIO_REQUIRE_RGW") == "1":
            pytest.fail(f"AISIO_REQUIRE_RGW=1, but {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[Any]:
    skip_without_ceph()
    with local_rgw() as rgw:
        rgw.create_bucket("aisio-test")
        rgw.create_bucket(SDK_BUCKET)
        yield rgw


BACKENDS = ["file", "s3", "rgw", "ais"]
SDK_SIGNED_MODULES = {"test_client", "test_rgw"}
"""Test modules whose ``store`` also runs as ``rgw-sdk``: RGW with botocore's signatures."""
SDK_BUCKET = "AisioTest"
"""rgw-sdk's bucket: capitals make botocore address it path-style from a host name."""


def _backend_available(name: str) -> bool:
    if name != "ais":
        return True
    try:
        from aisio._backends import ais  # noqa: F401
        from aisio.testing import _ais  # noqa: F401
    except ImportError:
        return False
    return True


def make_store(name: str, request: pytest.FixtureRequest, **config: Any) -> Store:
    unique = f"t{os.getpid()}-{next(_counter)}/"
    if name == "file":
        root = request.getfixturevalue("tmp_path")
        return Store(name, aisio.ClientConfig(**config), f"{root}/{unique}")
    if name == "s3":
        s3 = request.getfixturevalue("s3_server")
        cfg = s3.config(**config)
        return Store(name, cfg, f"s3://aisio-test/{unique}", s3, "moto")
    if name == "rgw":
        rgw = request.getfixturevalue("rgw_server")
        return Store("s3", rgw.config(**config), f"s3://aisio-test/{unique}", rgw, "rgw")
    if name == "rgw-sdk":
        # keys from the environment, the endpoint by host name and not forced path-style:
        # a set-up aisio leaves to botocore, which signs every request
        rgw = request.getfixturevalue("rgw_server")
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw.secret_access_key)
        opts = aisio.S3Options(region=rgw.region, endpoint_url=rgw.endpoint_url.replace(
            "//127.0.0.1:", "//localhost:"))
        return Store("s3", aisio.ClientConfig(s3=opts, **config),
                     f"s3://{SDK_BUCKET}/{unique}", rgw, "rgw")
    ais = request.getfixturevalue("ais_server")
    cfg = aisio.ClientConfig(ais=aisio.AISOptions(endpoint=ais.endpoint), **config)
    return Store(name, cfg, f"ais://aisio-test/{unique}", ais)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" in metafunc.fixturenames:
        names = [b for b in BACKENDS if _backend_available(b)]
        if metafunc.module.__name__.rsplit(".", 1)[-1] in SDK_SIGNED_MODULES:
            names.append("rgw-sdk")
        metafunc.parametrize("store", names, indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Store:
    # 5 MiB parts (S3's minimum) keep multipart tests small
    return make_store(request.param, request, part_size=5 * 2**20)


class API:
    """A uniform async facade over AsyncClient or over the blocking Client in a thread."""

    def __init__(self, client: aisio.AsyncClient | aisio.Client) -> None:
        self.client = client
        self.sync = isinstance(client, aisio.Client)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.client, name)
        if self.sync:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        return await fn(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("head", "get", "get_view", "get_into", "get_ranges", "get_ranges_into", "put",
                    "delete"):
            return functools.partial(self.call, name)
        raise AttributeError(name)

    async def list(self, prefix: str, recursive: bool = True) -> list[aisio.ObjectInfo]:
        if self.sync:
            return await anyio.to_thread.run_sync(
                lambda: list(self.client.list(prefix, recursive=recursive)))
        assert isinstance(self.client, aisio.AsyncClient)
        return [i async for i in self.client.list(prefix, recursive=recursive)]

    async def open(self, url: str, reader: aisio.ReaderConstructor | None = None, **kw: Any) -> ReaderAPI:
        return ReaderAPI(await self.call("open", url, reader, **kw), self.sync)

    async def write(self, url: str, chunks: list[bytes]) -> aisio.ObjectInfo:
        if self.sync:
            def blocking() -> aisio.ObjectInfo:
                assert isinstance(self.client, aisio.Client)
                with self.client.writer(url) as w:
                    for c in chunks:
                        w.write(c)
                assert w.info is not None
                return w.info
            return await anyio.to_thread.run_sync(blocking)
        assert isinstance(self.client, aisio.AsyncClient)
        async with self.client.writer(url) as aw:
            for c in chunks:
                await aw.write(c)
        assert aw.info is not None
        return aw.info

    def statistics(self) -> aisio.Statistics:
        return self.client.statistics()


class ReaderAPI:
    """The same facade for readers: every call awaited, sync ones run in a thread."""

    def __init__(self, reader: Any, sync: bool) -> None:
        self.reader, self.sync = reader, sync

    async def _call(self, name: str, *args: Any) -> Any:
        fn = getattr(self.reader, name)
        if self.sync:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args))
        result = fn(*args)
        return await result if hasattr(result, "__await__") else result

    async def read(self, n: int = -1) -> bytes:
        return bytes(await self._call("read", n))

    async def readinto(self, buf: Any) -> int:
        return int(await self._call("readinto", buf))

    async def seek(self, offset: int, whence: int = 0) -> int:
        return int(await self._call("seek", offset, whence))

    async def tell(self) -> int:
        return int(await self._call("tell"))

    async def close(self) -> None:
        await self._call("close" if self.sync else "aclose")


@pytest.fixture(params=["async", "sync"])
async def api(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[API]:
    if request.param == "async":
        async with aisio.AsyncClient(store.config) as ac:
            yield API(ac)
    else:
        client = aisio.Client(store.config)
        try:
            yield API(client)
        finally:
            await anyio.to_thread.run_sync(client.close)


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        yield d
