"""Client settings: frozen, picklable values so DataLoader workers get the user's settings."""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._cache import CacheOptions

__all__ = ["AISOptions", "ClientConfig", "S3Options"]

MiB = 2**20
NEAR = 0.01  # seconds from a request to its response head: a store this near is on the LAN


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 or an S3-compatible store; credentials come from the usual AWS chain."""

    region: str | None = None
    endpoint_url: str | None = None
    force_path_style: bool = False
    unsigned: bool = False
    profile: str | None = None
    requester_pays: bool = False
    # Explicit credentials, for stores outside the AWS chain; never shown in a repr.
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Options:
        """Read AWS_ENDPOINT_URL(_S3), AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE and keys."""
        env = os.environ if env is None else env
        return cls(
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            force_path_style=_flag(env.get("AWS_S3_FORCE_PATH_STYLE")),
            unsigned=_flag(env.get("AWS_NO_SIGN_REQUEST")),
            profile=env.get("AWS_PROFILE") or None,
            requester_pays=_flag(env.get("AWS_REQUESTER_PAYS")),
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )


@dataclass(frozen=True)
class AISOptions:
    """How to reach an AIStore cluster: its gateway endpoint and an optional bearer token."""

    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AISOptions:
        """Read AIS_ENDPOINT and AIS_AUTHN_TOKEN."""
        env = os.environ if env is None else env
        return cls(
            endpoint=env.get("AIS_ENDPOINT") or None,
            token=env.get("AIS_AUTHN_TOKEN") or None,
        )


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs; equal configs behave the same in every process."""

    part_size: int = 8 * MiB
    """Bytes per range GET when a large read is split."""
    max_concurrency: int = 64
    """Range GETs in flight per client."""
    max_attempts: int = 5
    """Tries per request; only transient errors are retried."""
    s3: S3Options = field(default_factory=S3Options)
    ais: AISOptions = field(default_factory=AISOptions)
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    read_timeout: float = 60.0
    """Seconds without a byte from the server before a request counts as stalled."""
    backoff_base: float = 0.1
    """First retry delay in seconds; doubles each attempt, with full jitter."""
    backoff_max: float = 20.0
    """Cap on one retry delay."""
    throttle_timeout: float = 300.0
    """Seconds a request the store throttles (503 SlowDown, 429) keeps retrying, paced down,
    before TransientError; throttles do not use up ``max_attempts``."""
    ca_bundle: str | None = None
    """PEM file of CA certificates to trust instead of the system's, for HTTPS endpoints."""
    verify_tls: bool = True
    """Verify TLS certificates; turn off only for throwaway test servers."""
    cache: CacheOptions | None = None
    """A local cache of object bytes shared by the node's processes; None: no cache."""

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise ValueError(f"part_size must be positive, got {self.part_size}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be positive, got {self.max_concurrency}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.cache is not None and not isinstance(self.cache, CacheOptions):
            raise TypeError(f"cache must be a CacheOptions or None, got {type(self.cache).__name__}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ClientConfig:
        """Settings from AWS_* and AIS_* variables (and AISIO_* for the engine's knobs and the
        cache: AISIO_CACHE_DIR, AISIO_CACHE_MAX_BYTES)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {"s3": S3Options.from_env(env), "ais": AISOptions.from_env(env),
                                     "cache": CacheOptions.from_env(env)}
        for f in dataclasses.fields(cls):
            raw = env.get(f"AISIO_{f.name.upper()}")
            if raw is not None and f.name not in ("s3", "ais", "cache"):
                values[f.name] = _parse(f.type, raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings as an SSLContext: system CAs or ``ca_bundle``, verified by default."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def replace(self, **changes: object) -> ClientConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _parse(kind: object, raw: str) -> object:
    text = str(kind)
    if "bool" in text:
        return _flag(raw)
    if text.startswith("int"):
        return int(raw)
    if text.startswith("float"):
        return float(raw)
    return raw or None
