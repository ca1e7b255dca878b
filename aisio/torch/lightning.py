"""Lightning checkpoints at any aisio URL: ``Trainer(plugins=[CheckpointIO(config)])``.

``CheckpointIO`` is Lightning's checkpoint plugin over ``aisio.torch.Checkpoint``:
``save_checkpoint`` is ``torch.save`` into a multipart upload (the object appears whole
or not at all), ``load_checkpoint`` is ``torch.load`` from a reader (small objects
fetched in one go, large ones by ranges), ``remove_checkpoint`` deletes the object.
``S3LightningCheckpoint`` is the S3 connector's name for it, with its arguments.

Needs Lightning (``pip install 'aisio[lightning]'``).
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Any, cast

import torch

from .._config import ClientConfig
from ..errors import MissingDependencyError, ObjectNotFoundError
from ._checkpoint import Checkpoint, compat_config

try:
    from lightning.pytorch.plugins.io import CheckpointIO as _CheckpointIO
except ImportError as exc:  # pragma: no cover - the extra is part of the test install
    raise MissingDependencyError(
        "aisio.torch.lightning needs Lightning: pip install 'aisio[lightning]'") from exc

__all__ = ["CheckpointIO", "S3LightningCheckpoint"]

MiB = 2**20


class CheckpointIO(_CheckpointIO):
    """Lightning's ``CheckpointIO`` for ``s3://``, ``ais://``, ``file://`` URLs and local paths.

    ``whole_object_size`` and ``buffer_size`` are ``aisio.torch.Checkpoint``'s: checkpoints
    up to that size are fetched whole before ``torch.load``, larger ones by ranges.
    """

    def __init__(self, config: ClientConfig | None = None, *, whole_object_size: int = 256 * MiB,
                 buffer_size: int = 1 * MiB) -> None:
        self._checkpoint = Checkpoint(config, whole_object_size=whole_object_size,
                                      buffer_size=buffer_size)

    @property
    def config(self) -> ClientConfig:
        return self._checkpoint.config

    def __repr__(self) -> str:
        return f"<aisio {type(self).__name__}>"

    def _url(self, path: Any) -> str:
        return str(os.fspath(path))

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        """``torch.save(checkpoint)`` to ``path``; the object appears once the upload completes."""
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}; "
                            "set how objects are written with its config")
        with self._checkpoint.writer(self._url(path)) as writer:
            torch.save(checkpoint, cast("IO[bytes]", writer))

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """``torch.load`` of the object at ``path``; ``weights_only=None`` leaves torch's default.

        A missing object raises ``aisio.ObjectNotFoundError`` (a ``FileNotFoundError``, as
        Lightning's own plugin raises).
        """
        reader = self._checkpoint.reader(self._url(path))
        try:
            loaded: dict[str, Any] = torch.load(cast("IO[bytes]", reader),
                                                map_location=map_location,
                                                weights_only=weights_only)
        finally:
            reader.close()
        return loaded

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the object at ``path``; one that is already gone is fine, as in Lightning."""
        with contextlib.suppress(ObjectNotFoundError):
            self._checkpoint._client.delete(self._url(path))


class S3LightningCheckpoint(CheckpointIO):
    """The S3 connector's ``S3LightningCheckpoint(region, s3client_config=None, endpoint=None)``.

    As in the connector, paths must be strings (any aisio URL works, not only ``s3://``).
    """

    def __init__(self, region: str, s3client_config: Any = None, endpoint: str | None = None,
                 *, config: ClientConfig | None = None) -> None:
        super().__init__(compat_config(region, endpoint, s3client_config, config))
        self.region, self.endpoint = region, endpoint

    def _url(self, path: Any) -> str:
        if not isinstance(path, str):
            raise TypeError(f"{type(path).__name__!r} is not a supported type for 'path': "
                            "pass the checkpoint's URL as a string")
        return path
