"""Keep secrets out of logs, including the debug logs of the SDKs aisio drives."""

from __future__ import annotations

import logging

from ._url import redact

__all__ = ["guard_sdk_loggers"]

_SDK_LOGGERS = ("aisio", "botocore", "aiobotocore", "urllib3", "httpx", "httpcore", "aiohttp")


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with tokens, signatures and signed URLs removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER = RedactingFilter()


def guard_sdk_loggers() -> None:
    """Attach the filter to every logger of the SDKs that exists now (idempotent).

    Filters on a logger do not reach its children, and the SDKs log from per-module
    loggers, so each one gets it; call again after importing more of an SDK.
    """
    manager = logging.root.manager
    names = [n for n in list(manager.loggerDict) if n.split(".")[0] in _SDK_LOGGERS]
    for name in (*_SDK_LOGGERS, *names):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
