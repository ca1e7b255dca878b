"""aisio: an asyncio-native object storage client (S3, AIStore, local files) that feeds PyTorch.

``AsyncClient`` is the core; ``Client`` is its blocking twin. Torch integration lives in
``aisio.torch`` (imported on demand, so ``import aisio`` stays light).
"""

from . import errors
from ._bridge import Client, Reader, Writer
from ._cache import CacheOptions
from ._client import AsyncClient
from ._config import AISOptions, ClientConfig, S3Options
from ._engine import Statistics
from ._readers import AsyncReader, ReaderConstructor
from ._types import ObjectInfo
from ._writer import AsyncWriter
from .errors import (
    AccessDeniedError,
    AisioError,
    ClosedError,
    InvalidURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    RangeError,
    RequestError,
    ShardFormatError,
    TransientError,
)

__version__ = "0.1.0"

__all__ = [
    "AISOptions",
    "AccessDeniedError",
    "AisioError",
    "AsyncClient",
    "AsyncReader",
    "AsyncWriter",
    "CacheOptions",
    "Client",
    "ClientConfig",
    "ClosedError",
    "InvalidURLError",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "RangeError",
    "Reader",
    "ReaderConstructor",
    "RequestError",
    "S3Options",
    "ShardFormatError",
    "Statistics",
    "TransientError",
    "Writer",
    "__version__",
    "errors",
]
