"""Retry policy: which failures are transient, and how long to wait (pure; the loop sleeps).

The one place that decides retryability; error classes say what happened, not whether
to try again.
"""

from __future__ import annotations

import copy
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._url import redact
from .errors import AisioError, RequestError

__all__ = ["RETRYABLE_STATUS", "THROTTLE_STATUS", "RetryPolicy", "is_throttle", "is_transient", "naming",
           "retry_after_of", "retrying"]

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
THROTTLE_STATUS = frozenset({429, 503})


def is_throttle(exc: BaseException) -> bool:
    """True when the store refused a request for its rate (503 SlowDown, 429): slow down."""
    return isinstance(exc, RequestError) and exc.status in THROTTLE_STATUS


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry may cure: resets, timeouts, throttling, 5xx."""
    if isinstance(exc, RequestError):
        return exc.status in RETRYABLE_STATUS
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError))
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a dependency
        return False
    return isinstance(exc, httpx.TransportError)


def naming(exc: BaseException, url: str) -> BaseException:
    """``exc``, or a copy of it that names the object ``url`` if it named only an endpoint.

    The HTTP layer knows the request's http(s) URL, not which object it was for; the user
    needs the object.
    """
    if not isinstance(exc, AisioError) or not (exc.url is None or exc.url.startswith("http")):
        return exc
    renamed = copy.copy(exc)
    renamed.args = (f"{url}: {exc}", *exc.args[1:])
    renamed.url = url
    renamed.__cause__ = exc
    return renamed


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff, capped, and at least what Retry-After asks.

    Throttles do not use up ``max_attempts``: a request the store refused for its rate
    is retried, slowed down, until ``throttle_timeout`` seconds have passed since its first
    throttle. A throttled read slows down; it does not fail.
    """

    max_attempts: int = 5
    base: float = 0.1
    cap: float = 20.0
    throttle_timeout: float = 300.0

    @classmethod
    def of(cls, config: Any) -> RetryPolicy:
        """The policy a ClientConfig asks for."""
        return cls(config.max_attempts, config.backoff_base, config.backoff_max,
                   config.throttle_timeout)

    def delay(self, attempt: int, retry_after: float | None = None,
              rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before try number ``attempt + 1`` (``attempt`` >= 1 tries done)."""
        backoff: float = rand() * min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))  # no overflow
        if retry_after is not None:
            return max(backoff, min(retry_after, self.cap))
        return backoff


def retry_after_of(exc: BaseException) -> float | None:
    """The server's Retry-After, in seconds, if the error carries one."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


async def retrying(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    url: str,
    sleep: Callable[[float], Awaitable[None]],
) -> T:
    """Await ``fn()`` until it succeeds, fails for good, or ``policy.max_attempts`` run out."""
    from .errors import TransientError

    attempt = throttles = 0
    first_throttle = 0.0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if is_throttle(exc):
                now = time.monotonic()
                first_throttle = first_throttle or now
                if now - first_throttle < policy.throttle_timeout:
                    throttles += 1
                    await sleep(policy.delay(throttles, retry_after_of(exc)))
                    continue
            attempt += 1
            if not is_transient(exc):
                renamed = naming(exc, url)
                if renamed is exc:
                    raise
                raise renamed from exc
            if attempt >= policy.max_attempts:
                raise TransientError(
                    f"{url}: gave up after {attempt} attempts: {redact(str(exc)) or type(exc).__name__}",
                    url=url, attempts=attempt) from exc
            await sleep(policy.delay(attempt, retry_after_of(exc)))
