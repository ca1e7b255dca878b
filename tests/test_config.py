"""ClientConfig is a frozen, picklable value read from the usual environment variables."""

from __future__ import annotations

import dataclasses
import logging
import pickle

import pytest

import aisio

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-SECRET"
TOKEN = "ais-token-DO-NOT-LEAK-1234567890"


def test_from_env_reads_aws_and_ais_variables() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_PROFILE": "dev", "AIS_ENDPOINT": "http://ais:8080", "AIS_AUTHN_TOKEN": TOKEN,
        "AISIO_PART_SIZE": "1048576", "AISIO_MAX_CONCURRENCY": "7",
    }
    cfg = aisio.ClientConfig.from_env(env)
    assert cfg.s3.endpoint_url == "http://127.0.0.1:9000"
    assert (cfg.s3.region, cfg.s3.profile, cfg.s3.secret_access_key) == ("eu-west-1", "dev", SECRET)
    assert (cfg.ais.endpoint, cfg.ais.token) == ("http://ais:8080", TOKEN)
    assert (cfg.part_size, cfg.max_concurrency) == (1048576, 7)


def test_config_is_frozen_picklable_and_equal_after_a_round_trip() -> None:
    cfg = aisio.ClientConfig(part_size=123, s3=aisio.S3Options(region="x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.part_size = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg.replace(max_attempts=2).max_attempts == 2


@pytest.mark.parametrize("field", ["part_size", "max_concurrency", "max_attempts"])
def test_nonsense_settings_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        aisio.ClientConfig(**{field: 0})


def test_secrets_never_appear_in_reprs() -> None:
    cfg = aisio.ClientConfig(
        s3=aisio.S3Options(access_key_id="AKIA", secret_access_key=SECRET, session_token=TOKEN),
        ais=aisio.AISOptions(endpoint="http://x", token=TOKEN))
    text = repr(cfg) + str(cfg) + repr(aisio.Client(cfg)) + repr(aisio.AsyncClient(cfg))
    assert SECRET not in text and TOKEN not in text


async def test_secrets_never_appear_in_errors_or_logs(
    s3_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = s3_server.endpoint_url  # type: ignore[attr-defined]
    cfg = aisio.ClientConfig(max_attempts=1, s3=aisio.S3Options(
        endpoint_url=endpoint, region="us-east-1", force_path_style=True,
        access_key_id="AKIA", secret_access_key=SECRET, session_token=TOKEN))
    caplog.set_level(logging.DEBUG)
    async with aisio.AsyncClient(cfg) as c:

        async def listing() -> None:  # a control request: botocore signs and logs it
            [i async for i in c.list("s3://no-such-bucket/")]

        for call in (c.get("s3://no-such-bucket/k"), c.head("s3://aisio-test/missing"), listing()):
            with pytest.raises(aisio.AisioError) as info:
                await call
            assert SECRET not in f"{info.value!r} {info.value}"
            assert TOKEN not in f"{info.value!r} {info.value}"
    # aisio signs these requests itself, so botocore is not there to log; whatever did log
    # (any SDK at DEBUG) must not carry a secret
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in logged and TOKEN not in logged


def test_redact_strips_signatures_and_userinfo() -> None:
    from aisio._url import redact

    url = "https://user:pw@host/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA/x&partNumber=2"
    out = redact(url)
    assert "abc" not in out and "AKIA" not in out and "pw@" not in out and "partNumber=2" in out


@pytest.mark.parametrize("exc", [
    aisio.ObjectNotFoundError("not found: s3://b/k", url="s3://b/k"),
    aisio.TransientError("gave up", url="s3://b/k", attempts=5),
    aisio.RequestError("boom", url="s3://b/k", status=503, retry_after=1.5),
    aisio.ShardFormatError("bad tar", url="s3://b/s.tar", offset=1024),
])
def test_errors_survive_pickling_with_their_fields(exc: aisio.AisioError) -> None:
    # DataLoader workers and DCP ranks send exceptions to other processes by pickle
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc) and str(clone) == str(exc)
    assert clone.__dict__ == exc.__dict__
