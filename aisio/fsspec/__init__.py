"""aisio under the Python data stack: an fsspec filesystem for ``s3://``, ``ais://`` and local paths.

``ais://`` is registered for aisio on import and through the ``fsspec.specs`` entry point,
so ``fsspec.filesystem("ais")``, ``pandas.read_parquet("ais://...")`` and the like need no
import. ``s3://`` stays s3fs's unless you opt in, because taking over another package's
protocol behind its back is not ours to do: call ``register("s3")``, or set
``AISIO_FSSPEC_S3=1`` before ``aisio.fsspec`` is imported.

    fs = fsspec.filesystem("ais", endpoint="http://ais-gateway:51080")
    fs = aisio.fsspec.AisioFileSystem(endpoint_url=..., key=..., secret=...)   # s3://
"""

from __future__ import annotations

import contextlib
import os

from ..errors import MissingDependencyError

try:
    import fsspec
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise MissingDependencyError("aisio.fsspec needs fsspec: pip install 'aisio[fsspec]'") from exc

from ._filesystem import AISFileSystem, AisioFileSystem, AisioLocalFileSystem

__all__ = ["AISFileSystem", "AisioFileSystem", "AisioLocalFileSystem", "register"]

_CLASSES: dict[str, type[AisioFileSystem]] = {
    "ais": AISFileSystem,
    "s3": AisioFileSystem,
    "s3a": AisioFileSystem,
    "file": AisioLocalFileSystem,
    "local": AisioLocalFileSystem,
}


def register(protocol: str = "ais") -> None:
    """Serve ``protocol`` (``ais``, ``s3``, ``s3a``, ``file`` or ``local``) through aisio in this process.

    It replaces whatever fsspec had for that protocol (s3fs for ``s3``, fsspec's own for
    ``file``) for every later ``fsspec.filesystem``, ``fsspec.open`` and ``url_to_fs``.
    """
    cls = _CLASSES.get(protocol)
    if cls is None:
        raise ValueError(f"aisio serves {sorted(_CLASSES)}, not {protocol!r}")
    fsspec.register_implementation(protocol, cls, clobber=True)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


with contextlib.suppress(ValueError):  # ais:// is aisio's; a class registered for it first stays
    fsspec.register_implementation("ais", AISFileSystem, clobber=False)
if _flag("AISIO_FSSPEC_S3"):
    register("s3")
    register("s3a")
