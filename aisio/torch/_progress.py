"""Console progress for datasets and shard readers: objects and bytes, with their rates.

One tqdm bar per iteration, on stderr. In a DataLoader worker the bar is titled with the
worker id, sits on its own line (``position``) and is cleared when the worker's pass ends,
so the bars of several workers do not overwrite each other.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from torch.utils.data import get_worker_info

__all__ = ["Progress"]


class Progress:
    """Counts objects (or samples) and bytes; a tqdm bar when enabled, a no-op otherwise."""

    def __init__(self, desc: str, *, enabled: bool, unit: str = "obj",
                 total: int | None = None, file: Any = None) -> None:
        self.count = 0
        self.bytes = 0
        self._start = time.monotonic()
        self._bar: Any = None
        if not enabled:
            return
        from tqdm import tqdm

        worker = get_worker_info()
        if worker is not None:
            desc = f"{desc} [worker {worker.id}/{worker.num_workers}]"
        self._bar = tqdm(
            desc=desc, total=total, unit=unit, unit_scale=True, file=file or sys.stderr,
            position=0 if worker is None else worker.id, leave=worker is None,
            mininterval=0.2, dynamic_ncols=True,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, nbytes: int, count: int = 1) -> None:
        """Record ``count`` more objects holding ``nbytes`` bytes."""
        self.count += count
        self.bytes += nbytes
        bar = self._bar
        if bar is None:
            return
        rate = self.bytes / max(time.monotonic() - self._start, 1e-9)
        size = bar.format_sizeof
        bar.set_postfix_str(f"{size(self.bytes, 'B', 1024)}, {size(rate, 'B', 1024)}/s",
                            refresh=False)
        bar.update(count)

    def close(self) -> None:
        """Finish the bar (it stays on screen in the main process); safe to call twice."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()
