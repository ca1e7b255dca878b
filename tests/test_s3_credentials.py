"""S3 credentials from every source, every request signed by aisio itself.

The chain is the AWS SDKs' (keys given, environment, profiles, container and instance
endpoints, web identity); no S3 client of botocore is ever built. Temporary credentials
that expire in the middle of a long read are refreshed before any request is refused.
"""

from __future__ import annotations

import datetime
import http.server
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import aisio
from aisio import errors

from .hostile import Reply, Request, hostile_server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:botocore")

CHAIN_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
             "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def _no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in CHAIN_ENV.items():
        monkeypatch.setenv(name, value)


def _key_of(req: Request) -> str:
    return req.query.get("X-Amz-Credential", "").split("/")[0]


def test_keys_from_the_environment_only_never_import_botocore(s3_server: Any) -> None:
    """A DataLoader worker with AWS_* keys in its environment: reads, lists, writes, no SDK."""
    env = {**CHAIN_ENV, "PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key}
    script = textwrap.dedent(f"""
        import sys, aisio
        opts = aisio.S3Options(region="us-east-1", endpoint_url={s3_server.endpoint_url!r},
                               force_path_style=True)
        with aisio.Client(aisio.ClientConfig(s3=opts, part_size=5 * 2**20)) as c:
            c.put("s3://aisio-test/creds/env.bin", b"e" * 100)
            with c.writer("s3://aisio-test/creds/big.bin") as w:
                w.write(b"b" * (11 * 2**20))
            assert c.get("s3://aisio-test/creds/env.bin") == b"e" * 100
            assert c.head("s3://aisio-test/creds/big.bin").size == 11 * 2**20
            assert c.get("s3://aisio-test/creds/big.bin", 2**20, 2**20 + 5) == b"bbbbb"
            assert len(list(c.list("s3://aisio-test/creds/"))) == 2
            c.delete("s3://aisio-test/creds/env.bin")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "aiobotocore", "aiohttp")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_profile_in_a_shared_credentials_file_signs_every_request(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_aws_env(monkeypatch)
    creds = tmp_path / "credentials"
    creds.write_text("[train]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = profsecret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY-IGNORED")  # a named profile wins, as in botocore
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ignored")
    with hostile_server("s3") as srv:
        srv.put("k", b"profile data")
        opts = aisio.S3Options(region="us-east-1", endpoint_url=srv.url, force_path_style=True,
                               profile="train")
        with aisio.Client(srv.config(s3=opts)) as client:
            client.put(srv.url_of("p"), b"written")
            assert client.get(srv.url_of("k")) == b"profile data"
            assert [i.url for i in client.list(srv.url_of(""))] == [srv.url_of("k"), srv.url_of("p")]
        assert {_key_of(r) for r in srv.requests} == {"PROFILEKEY"}


def test_no_credentials_anywhere_is_access_denied_naming_the_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _no_aws_env(monkeypatch)
    with hostile_server("s3") as srv:
        opts = aisio.S3Options(region="us-east-1", endpoint_url=srv.url, force_path_style=True)
        with aisio.Client(srv.config(s3=opts)) as client, pytest.raises(errors.AccessDeniedError) as info:
            client.get(srv.url_of("k"))
        assert info.value.url == srv.url_of("k")
        assert srv.requests == []


def test_unsigned_requests_carry_no_signature() -> None:
    with hostile_server("s3") as srv:
        srv.put("k", b"public")
        opts = aisio.S3Options(region="us-east-1", endpoint_url=srv.url, force_path_style=True,
                               unsigned=True)
        with aisio.Client(srv.config(s3=opts)) as client:
            assert client.get(srv.url_of("k")) == b"public"
            assert client.head(srv.url_of("k")).size == 6
        assert all("X-Amz-Signature" not in r.query for r in srv.requests)


def test_requester_pays_is_signed_and_sent_on_every_request() -> None:
    with hostile_server("s3") as srv:
        srv.put("k", b"paid")
        opts = aisio.S3Options(region="us-east-1", endpoint_url=srv.url, force_path_style=True,
                               access_key_id="AK", secret_access_key="SK", requester_pays=True)
        with aisio.Client(srv.config(s3=opts)) as client:
            assert client.get(srv.url_of("k")) == b"paid"
            client.put(srv.url_of("q"), b"x")
            list(client.list(srv.url_of("")))
        for req in srv.requests:
            assert req.headers.get("x-amz-request-payer") == "requester", req
            assert "x-amz-request-payer" in req.query["X-Amz-SignedHeaders"].split(";")


class CredentialServer:
    """A container credential endpoint on loopback: new keys each time, each living ``lifetime`` s."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.issued: dict[str, float] = {}  # key id -> when it expires
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    key = f"ROTATING{len(outer.issued) + 1}"
                    expires = time.time() + outer.lifetime
                    outer.issued[key] = expires
                body = json.dumps({
                    "AccessKeyId": key, "SecretAccessKey": f"secret-{key}", "Token": f"token-{key}",
                    "Expiration": datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime(
                        "%Y-%m-%dT%H:%M:%SZ")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/creds"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def valid(self, key: str, token: str) -> bool:
        with self.lock:
            expires = self.issued.get(key)
        return expires is not None and token == f"token-{key}" and time.time() < expires


@pytest.fixture
def credential_server() -> Iterator[CredentialServer]:
    server = CredentialServer(lifetime=6.0)
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_temporary_credentials_that_expire_during_a_long_read_are_refreshed_in_time(
        credential_server: CredentialServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys from a container endpoint live 6 s; a read of 24 slow parts takes about 12 s."""
    _no_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", credential_server.url)
    refused = []
    data = bytes(range(256)) * 4096  # 1 MiB

    def script(req: Request) -> Reply | None:
        query = parse_qs(urlsplit(req.target).query)
        key = query.get("X-Amz-Credential", [""])[0].split("/")[0]
        token = query.get("X-Amz-Security-Token", [""])[0]
        if not credential_server.valid(key, token):
            refused.append(key)
            return Reply.of(403, {}, b"<Error><Code>ExpiredToken</Code><Message>expired</Message></Error>")
        time.sleep(0.5 if req.method == "GET" else 0)
        return None

    with hostile_server("s3", script) as srv:
        srv.put("k", data)
        opts = aisio.S3Options(region="us-east-1", endpoint_url=srv.url, force_path_style=True)
        config = srv.config(s3=opts, part_size=len(data) // 24, max_concurrency=1,
                            read_timeout=10.0)
        with aisio.Client(config) as client:
            assert client.head(srv.url_of("k")).size == len(data)
            assert client.get(srv.url_of("k")) == data
        used = {_key_of(r) for r in srv.requests}
    assert refused == []
    assert len(used) >= 2, used  # the keys were rotated mid-read
    assert len(credential_server.issued) <= 8  # refreshed ahead of expiry, not per request
