"""Storage options as s3fs and AIS users write them, mapped onto one ``aisio.ClientConfig``.

Every option either changes the config or raises: an option that aisio cannot honour is
refused (TypeError for an unknown name, ValueError for an unsupported value), never dropped,
so a switch from s3fs never silently loses a setting such as credentials or an endpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from .._config import ClientConfig

__all__ = ["AIS_OPTIONS", "S3_OPTIONS", "build_config", "config_digest"]

S3_OPTIONS = frozenset({
    "anon", "endpoint_url", "key", "secret", "token", "use_ssl", "client_kwargs", "config_kwargs",
    "requester_pays", "profile", "username", "password",
})
"""Options that configure ``s3://`` (s3fs's names)."""

AIS_OPTIONS = frozenset({"endpoint", "token", "provider"})
"""Options that configure ``ais://``."""

_CLIENT_KWARGS = frozenset({
    "endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "verify", "use_ssl",
})
_CONFIG_KWARGS = frozenset({
    "s3", "signature_version", "region_name", "connect_timeout", "read_timeout", "retries",
    "max_pool_connections",
})


def build_config(scheme: str, base: ClientConfig | None, options: Mapping[str, Any]) -> ClientConfig:
    """The ClientConfig that ``options`` (already free of unset ones) describe for ``scheme``."""
    cfg = base if base is not None else ClientConfig.from_env()
    mine = S3_OPTIONS if scheme == "s3" else AIS_OPTIONS if scheme == "ais" else frozenset()
    for name in options:
        if name not in mine:
            where = "s3://" if name in S3_OPTIONS else "ais://" if name in AIS_OPTIONS else None
            if where is None:
                raise TypeError(f"unknown storage option {name!r}")
            raise TypeError(f"storage option {name!r} configures {where}, not {scheme}://")
    if scheme == "s3":
        return _s3(cfg, dict(options))
    if scheme == "ais":
        changes = {k: options[k] for k in ("endpoint", "token") if k in options}
        return cfg.replace(ais=dataclasses.replace(cfg.ais, **changes)) if changes else cfg
    return cfg


def _s3(cfg: ClientConfig, opts: dict[str, Any]) -> ClientConfig:
    s3: dict[str, Any] = {}
    top: dict[str, Any] = {}
    client = dict(opts.pop("client_kwargs", None) or {})
    _refuse_unknown("client_kwargs", client, _CLIENT_KWARGS)
    use_ssl = _pick("use_ssl", opts.pop("use_ssl", None), client.pop("use_ssl", None))
    endpoint = _pick("endpoint_url", opts.pop("endpoint_url", None), client.pop("endpoint_url", None))
    if endpoint is not None:
        if "://" not in endpoint:  # botocore's rule: use_ssl only picks the scheme of a bare host
            endpoint = ("http://" if use_ssl is False else "https://") + endpoint
        s3["endpoint_url"] = endpoint
    key = _pick("key", opts.pop("key", None), opts.pop("username", None),
                client.pop("aws_access_key_id", None))
    secret = _pick("secret", opts.pop("secret", None), opts.pop("password", None),
                   client.pop("aws_secret_access_key", None))
    token = _pick("token", opts.pop("token", None), client.pop("aws_session_token", None))
    if (key is None) != (secret is None):
        raise ValueError("key and secret go together: give both or neither")
    if key is not None:
        s3.update(access_key_id=key, secret_access_key=secret, session_token=token)
    elif token is not None:
        raise ValueError("token (a session token) needs key and secret too")
    region = client.pop("region_name", None)
    if "verify" in client:
        verify = client.pop("verify")
        if isinstance(verify, str):
            top["ca_bundle"] = verify
        elif isinstance(verify, bool):
            top["verify_tls"] = verify
        else:
            raise ValueError(f"client_kwargs['verify'] must be a bool or a CA bundle path, got {verify!r}")
    botocore = dict(opts.pop("config_kwargs", None) or {})
    _refuse_unknown("config_kwargs", botocore, _CONFIG_KWARGS)
    region = _pick("region_name", region, botocore.pop("region_name", None))
    if region is not None:
        s3["region"] = region
    style = dict(botocore.pop("s3", None) or {})
    _refuse_unknown("config_kwargs['s3']", style, frozenset({"addressing_style"}))
    if "addressing_style" in style:
        addressing = style["addressing_style"]
        if addressing not in ("path", "virtual", "auto"):
            raise ValueError(f"unknown addressing_style {addressing!r}")
        s3["force_path_style"] = addressing == "path"
    if "signature_version" in botocore:
        version = botocore.pop("signature_version")
        if version == "UNSIGNED" or type(version).__name__ == "UNSIGNED":  # botocore.UNSIGNED
            s3["unsigned"] = True
        elif version not in ("s3v4", "v4"):
            raise ValueError(f"aisio signs with SigV4 only, not {version!r}")
    for name in ("connect_timeout", "read_timeout"):
        if name in botocore:
            top[name] = float(botocore.pop(name))
    if "max_pool_connections" in botocore:
        top["max_concurrency"] = int(botocore.pop("max_pool_connections"))
    retries = dict(botocore.pop("retries", None) or {})
    _refuse_unknown("config_kwargs['retries']", retries, frozenset({"max_attempts", "total_max_attempts"}))
    if retries:  # botocore: max_attempts counts retries, total_max_attempts every try
        top["max_attempts"] = (int(retries["total_max_attempts"]) if "total_max_attempts" in retries
                               else int(retries["max_attempts"]) + 1)
    if opts.pop("anon", None):
        if key is not None:
            raise ValueError("anon=True and key/secret contradict each other")
        s3["unsigned"] = True
    if "requester_pays" in opts:
        s3["requester_pays"] = bool(opts.pop("requester_pays"))
    if "profile" in opts:
        s3["profile"] = opts.pop("profile")
    assert not opts, opts  # every S3_OPTIONS name is handled above
    return cfg.replace(s3=dataclasses.replace(cfg.s3, **s3), **top)


def _pick(name: str, *values: Any) -> Any:
    """The one value given among the spellings of an option; two different ones are an error."""
    given = [v for v in values if v is not None]
    if any(v != given[0] for v in given[1:]):
        raise ValueError(f"{name} is given twice with different values")
    return given[0] if given else None


def _refuse_unknown(where: str, given: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"aisio does not support {where} {unknown} (supported: {sorted(known)})")


def config_digest(config: ClientConfig) -> str:
    """A digest of every field of ``config``, secrets included.

    fsspec caches filesystem instances by the repr of their options, and a ClientConfig's
    repr leaves its keys out: without this, two configs that differ only in credentials
    would share one cached filesystem.
    """
    return hashlib.sha256(repr(dataclasses.astuple(config)).encode()).hexdigest()[:32]
