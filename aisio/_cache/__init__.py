"""A local cache of object bytes, shared by every process on a node (``ClientConfig(cache=...)``).

Two ideas, two modules:

- ``_store``: the files (blocks with a checked header, one lock per block, a size ledger,
  LRU eviction). Blocking code, safe between processes, no event loop.
- ``_backend``: ``CachingBackend``, a Backend that wraps another one (same protocol), so the
  engine, the readers and every dataset read through the cache unchanged.

This package's ``__init__`` imports only the options: ``aisio._config`` imports it.
"""

from ._options import CacheOptions

__all__ = ["CacheOptions"]
