"""fsspec's own conformance suite (copy, get, put, open, pipe) against aisio's filesystem.

The same classes s3fs and gcsfs run, here on local files, on S3 (moto) and on the
AIS-protocol server, all on loopback. Directories are prefixes, so the suite runs with
``supports_empty_directories`` off, as it does for s3fs. Every case runs on every store
(about 80 s in all; the glob edge cases are most of it).
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
