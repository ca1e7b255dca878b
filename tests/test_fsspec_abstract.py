"""fsspec's own conformance suite (copy, get, put, open, pipe) against aisio's filesystem.

The same classes s3fs and gcsfs run, here on local files, on S3 (moto) and on the
AIS-protocol server, all on loopback. Directories are prefixes, so the suite runs with
``supports_empty_directories`` off, as it does for s3fs. To keep this file near 40 s,
``AISIO_FSSPEC_FULL=1`` alone runs the glob edge cases on AIS (fsspec's glob over the
listing code that S3 and local files run them on) and the put glob edge cases on S3 (there
the glob runs on fsspec's local filesystem; the put side is what the other put tests check).
"""

from __future__ import annotations

import itertools
import os
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

import aisio.fsspec

_counter = itertools.count()


class _Fixtures(AbstractFixtures):  # type: ignore[misc]
    """What every backend shares: posix joins, prefixes as directories."""

    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return posixpath.join

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False


class _File(_Fixtures):
    @pytest.fixture
    def fs(self) -> aisio.fsspec.AisioLocalFileSystem:
        return aisio.fsspec.AisioLocalFileSystem()

    @pytest.fixture
    def fs_path(self, tmp_path: Any) -> str:
        path = str(tmp_path / "remote")
        os.makedirs(path)
        return path


class _S3(_Fixtures):
    @pytest.fixture(autouse=True)
    def _put_glob_edge_cases_on_request(self, request: pytest.FixtureRequest) -> None:
        if "put_glob_edge_cases" in request.node.name and os.environ.get("AISIO_FSSPEC_FULL") != "1":
            pytest.skip("put glob edge cases glob the local side; AISIO_FSSPEC_FULL=1 runs them on s3")

    @pytest.fixture
    def fs(self, s3_server: Any) -> Iterator[aisio.fsspec.AisioFileSystem]:
        # s3fs's options, as its users write them
        fs = aisio.fsspec.AisioFileSystem(
            key=s3_server.access_key_id, secret=s3_server.secret_access_key,
            client_kwargs={"endpoint_url": s3_server.endpoint_url, "region_name": s3_server.region})
        yield fs
        fs.invalidate_cache()

    @pytest.fixture
    def fs_path(self) -> str:
        return f"aisio-test/fsspec-{os.getpid()}-{next(_counter)}"


class _AIS(_Fixtures):
    @pytest.fixture(autouse=True)
    def _glob_edge_cases_on_request(self, request: pytest.FixtureRequest) -> None:
        if "glob_edge_cases" in request.node.name and os.environ.get("AISIO_FSSPEC_FULL") != "1":
            pytest.skip("glob edge cases run on file and s3; AISIO_FSSPEC_FULL=1 runs them on ais too")

    @pytest.fixture
    def fs(self, ais_server: Any) -> Iterator[aisio.fsspec.AISFileSystem]:
        fs = aisio.fsspec.AISFileSystem(endpoint=ais_server.endpoint)
        yield fs
        fs.invalidate_cache()

    @pytest.fixture
    def fs_path(self) -> str:
        return f"aisio-test/fsspec-{os.getpid()}-{next(_counter)}"


class TestFileCopy(AbstractCopyTests, _File):  # type: ignore[misc]
    pass


class TestFileGet(AbstractGetTests, _File):  # type: ignore[misc]
    pass


class TestFilePut(AbstractPutTests, _File):  # type: ignore[misc]
    pass


class TestFileOpenPipe(AbstractOpenTests, AbstractPipeTests, _File):  # type: ignore[misc]
    pass


class TestS3Copy(AbstractCopyTests, _S3):  # type: ignore[misc]
    pass


class TestS3Get(AbstractGetTests, _S3):  # type: ignore[misc]
    pass


class TestS3Put(AbstractPutTests, _S3):  # type: ignore[misc]
    pass


class TestS3OpenPipe(AbstractOpenTests, AbstractPipeTests, _S3):  # type: ignore[misc]
    pass


class TestAISCopy(AbstractCopyTests, _AIS):  # type: ignore[misc]
    pass


class TestAISGet(AbstractGetTests, _AIS):  # type: ignore[misc]
    pass


class TestAISPut(AbstractPutTests, _AIS):  # type: ignore[misc]
    pass


class TestAISOpenPipe(AbstractOpenTests, AbstractPipeTests, _AIS):  # type: ignore[misc]
    pass
