"""S3 credentials from wherever the process has them, refreshed before they expire.

The order is the AWS SDKs': keys given in ``S3Options``; ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` (with ``AWS_SESSION_TOKEN``) in the environment, unless a profile
is named; then botocore's credential chain (shared files and profiles, ``credential_process``,
web identity, container and instance metadata endpoints). The chain is botocore's own,
but no S3 client is built and no service model loaded: only its credential providers run,
in a worker thread, and aisio signs every request itself (``_sigv4``).

Temporary credentials are refreshed ``REFRESH_AHEAD`` seconds before they expire (or half
their lifetime, if that is shorter) by a background thread, while requests go on signing
with the current ones; only a request that finds them within ``MUST_REFRESH`` seconds of
expiry (or a tenth of their lifetime) waits for new ones.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from .._config import S3Options
from .._url import redact
from ..errors import AccessDeniedError

__all__ = ["MUST_REFRESH", "REFRESH_AHEAD", "CredentialSource", "Credentials"]

REFRESH_AHEAD = 300.0  # seconds before expiry a background refresh starts
MUST_REFRESH = 30.0  # closer to expiry than this, a request waits for fresh credentials


@dataclass(frozen=True)
class Credentials:
    """One set of keys; ``expires`` is a ``time.time()`` value, None for keys that do not."""

    key_id: str
    secret: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires: float | None = None
    issued: float = field(default_factory=time.time)

    def stale(self, ahead: float, share: float, now: float | None = None) -> bool:
        """True within ``ahead`` seconds of expiry, or ``share`` of a lifetime too short for that."""
        if self.expires is None:
            return False
        now = time.time() if now is None else now
        return self.expires - now < min(ahead, (self.expires - self.issued) * share)


class CredentialSource:
    """Where one backend's credentials come from; ``await get()`` before signing."""

    def __init__(self, opts: S3Options, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._profile = opts.profile
        self._current: Credentials | None = None
        self._chain: Any = None  # botocore's Credentials object, once the chain ran
        self._refreshing = False
        self._pid = os.getpid()
        self._lock: anyio.Lock | None = None
        self.source = "chain"
        if opts.access_key_id and opts.secret_access_key:
            self._current = Credentials(opts.access_key_id, opts.secret_access_key,
                                        opts.session_token)
            self.source = "config"
        elif not opts.profile and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            self._current = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                                        env.get("AWS_SESSION_TOKEN") or None)
            self.source = "env"

    def __repr__(self) -> str:
        return f"CredentialSource(source={self.source!r})"  # never the keys

    @property
    def current(self) -> Credentials | None:
        """The credentials in use now, if any have been resolved."""
        return self._current

    async def get(self) -> Credentials:
        """Credentials good for at least ``MUST_REFRESH`` seconds; waits only when none are."""
        current = self._current
        if current is not None:
            if not current.stale(REFRESH_AHEAD, 0.5):
                return current
            if not current.stale(MUST_REFRESH, 0.1):
                self._refresh_in_background()
                return current
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            current = self._current
            if current is not None and not current.stale(MUST_REFRESH, 0.1):
                return current  # another request refreshed them meanwhile
            fresh = await anyio.to_thread.run_sync(self._resolve)
            self._current = fresh
            return fresh

    def _refresh_in_background(self) -> None:
        if self._pid != os.getpid():  # a forked child has none of its parent's threads
            self._pid, self._refreshing = os.getpid(), False
        if self._refreshing:
            return
        self._refreshing = True

        def run() -> None:
            try:
                self._current = self._resolve()
            except Exception:  # the next request that must wait will raise it
                pass
            finally:
                self._refreshing = False

        threading.Thread(target=run, name="aisio-credentials", daemon=True).start()

    def _resolve(self) -> Credentials:
        """Run botocore's chain (in a worker thread: it may read files or call endpoints)."""
        try:
            if self._chain is None:
                import botocore.session

                self._chain = botocore.session.Session(profile=self._profile).get_credentials()
                if self._chain is None:
                    raise AccessDeniedError(
                        "no AWS credentials found (keys, environment, profile, web identity, "
                        "container or instance metadata); set S3Options(unsigned=True) for "
                        "public buckets")
            frozen = self._chain.get_frozen_credentials()
        except AccessDeniedError:
            raise
        except Exception as exc:  # botocore's provider errors: a file, a process, an endpoint
            message = redact(str(exc))[:300]
            raise AccessDeniedError(f"AWS credentials could not be loaded: "
                                    f"{type(exc).__name__}: {message}") from None
        expiry = getattr(self._chain, "_expiry_time", None)
        expires = expiry.timestamp() if expiry is not None else None
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None, expires)
