"""ZeroDict: a sample's ``{extension: bytes}`` whose absent extensions read as ``b""``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ZeroDict"]

# torch's default collate takes the key set from the first sample of a batch and indexes
# every other sample with it. A batch therefore collates when the first sample carries every
# extension of the batch: ``keys`` (the extensions seen so far) puts them there as real
# entries, as the aistore SDK's ZeroDict does, and ``__missing__`` makes any other absent
# extension read as ``b""`` where the SDK would raise KeyError. ``get`` stays plain dict.
# No lambda and no extra state: it pickles and copies like a dict (DataLoader workers).


class ZeroDict(dict[str, bytes]):
    """Extension -> bytes; ``keys`` are present as ``b""``, any other missing key reads ``b""``."""

    __slots__ = ()

    def __init__(
        self,
        data: Mapping[str, bytes] | Iterable[tuple[str, bytes]] = (),
        keys: Iterable[str] = (),
    ) -> None:
        super().__init__(data)
        for key in keys:
            self.setdefault(key, b"")

    def __missing__(self, key: str) -> bytes:
        return b""
