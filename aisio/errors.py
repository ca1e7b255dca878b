"""The one error hierarchy of aisio.

    AisioError
    ├── InvalidURLError        (also ValueError)       the URL cannot name an object
    ├── ObjectNotFoundError    (also FileNotFoundError) no object (or bucket) at the URL
    ├── AccessDeniedError      (also PermissionError)  credentials or policy refused it
    ├── RangeError             (also ValueError)       a byte range outside the object
    ├── ObjectChangedError                             the object changed while being read
    ├── IntegrityError                                 bytes do not match their checksum
    ├── TransientError                                 retries exhausted; ``__cause__`` is the last
    ├── RequestError                                   any other refusal by the store
    ├── ClosedError            (also ValueError)       the reader, writer or client is closed
    ├── ShardFormatError       (also ValueError)       a malformed tar shard, with the offset
    └── MissingDependencyError (also ImportError)      an optional extra is not installed

Every error names the object it is about (``url``); no message contains a secret.
Whether an error is worth retrying is decided in one place (``aisio._retry``), never by
the class hierarchy.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AisioError",
    "ClosedError",
    "IntegrityError",
    "InvalidURLError",
    "MissingDependencyError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "RangeError",
    "RequestError",
    "ShardFormatError",
    "TransientError",
    "first_error",
]


class AisioError(Exception):
    """Root of every error aisio raises; ``url`` names the object (redacted)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default pickling; DataLoader
        # workers send exceptions to the parent by pickle.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[AisioError], args: tuple[object, ...], state: dict[str, object]) -> AisioError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class InvalidURLError(AisioError, ValueError):
    """The URL is malformed or names no object where one is needed."""


class ObjectNotFoundError(AisioError, FileNotFoundError):
    """No object, bucket or file at the URL."""


class AccessDeniedError(AisioError, PermissionError):
    """The store refused the request (credentials, policy, or token)."""


class RangeError(AisioError, ValueError):
    """A byte range is negative, reversed, or starts past the end of the object."""


class ObjectChangedError(AisioError):
    """The object was replaced while it was being read; no mixed bytes are returned."""


class IntegrityError(AisioError):
    """Bytes do not match the checksum stored or sent with them: a whole-object read whose
    checksum differs from the store's, a store that refused an upload's checksum, or a
    checkpoint item that differs from its metadata. Never retried: the caller decides.

    ``algorithm`` names the checksum (``"crc32c"``, ...); ``expected`` and ``actual`` are
    its values as the store (or metadata) and aisio have them, when known.
    """

    def __init__(self, message: str, *, url: str | None = None, algorithm: str | None = None,
                 expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message, url=url)
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class TransientError(AisioError):
    """A request kept failing with retryable errors until ``max_attempts`` ran out."""

    def __init__(self, message: str, *, url: str | None = None, attempts: int = 0) -> None:
        super().__init__(message, url=url)
        self.attempts = attempts


class RequestError(AisioError):
    """The store answered with an error that has no more specific class here."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.retry_after = retry_after


class ClosedError(AisioError, ValueError):
    """An operation on a reader, writer or client that was already closed."""


class ShardFormatError(AisioError, ValueError):
    """A tar shard is truncated or corrupt; ``offset`` is where parsing failed."""

    def __init__(self, message: str, *, url: str | None = None, offset: int | None = None) -> None:
        super().__init__(message, url=url)
        self.offset = offset

    def __str__(self) -> str:
        # DataLoader workers re-raise errors from their text alone (attributes are lost):
        # the text names the shard and the offset
        text = super().__str__()
        where = []
        if self.url and self.url not in text:
            where.append(self.url)
        if self.offset is not None and f"byte {self.offset}" not in text:
            where.append(f"at byte {self.offset}")
        return f"{text} ({', '.join(where)})" if where else text


class MissingDependencyError(AisioError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed a task group, unwrapped from any nesting: aisio reads run many
    GETs in task groups, and callers want the aisio error, not a group of cancellations."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, Exception):  # cancellations (asyncio's, trio's) are BaseExceptions
            return exc
    return leaves[0] if leaves else group
