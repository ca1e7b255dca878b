"""``local_s3()``: moto's S3 server on a free loopback port, for tests and examples."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .._config import ClientConfig, S3Options
from ..errors import MissingDependencyError

__all__ = ["LocalS3", "local_s3"]

# moto accepts any credentials; these exist only on this loopback server
_KEY_ID = "aisio-test-key"
_SECRET = "aisio-test-secret"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalS3:
    """A running S3 server on loopback: its endpoint, credentials and a boto3 client."""

    endpoint_url: str
    access_key_id: str = _KEY_ID
    secret_access_key: str = _SECRET
    region: str = "us-east-1"

    def s3_options(self) -> S3Options:
        return S3Options(region=self.region, endpoint_url=self.endpoint_url, force_path_style=True,
                         access_key_id=self.access_key_id, secret_access_key=self.secret_access_key)

    def config(self, **changes: Any) -> ClientConfig:
        """A ClientConfig that reaches this server."""
        return ClientConfig(s3=self.s3_options(), **changes)

    def boto3_client(self) -> Any:
        """A plain boto3 client for this server (setting up test data, checking results)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key)

    def create_bucket(self, name: str) -> None:
        self.boto3_client().create_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """AWS_* variables that point the default credential chain at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key, "AWS_REGION": self.region,
                "AWS_S3_FORCE_PATH_STYLE": "1"}


@contextlib.contextmanager
def local_s3(port: int | None = None) -> Iterator[LocalS3]:
    """Run moto's S3 server on 127.0.0.1 for the duration of the block."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise MissingDependencyError("local_s3() needs moto: pip install 'moto[server]'") from exc
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield LocalS3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
