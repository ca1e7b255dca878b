"""Range planning: which GETs serve a set of byte ranges (pure, no I/O).

Ranges closer than ``max_gap`` share one span (one GET, or a few if the span is larger
than ``part_size``); each caller gets its own bytes back as a view into the span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Span", "coalesce", "split", "validate_range"]


@dataclass(frozen=True)
class Span:
    """One contiguous stretch of an object fetched together; ``members`` index the ranges."""

    start: int
    end: int
    members: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.end - self.start


def validate_range(start: int, end: int | None, size: int | None = None) -> None:
    """Raise ValueError for negative or reversed ranges (the caller adds the URL)."""
    if start < 0:
        raise ValueError(f"negative range start {start}")
    if end is not None and end < start:
        raise ValueError(f"reversed range [{start}, {end})")
    if size is not None and end is not None and end > size:
        raise ValueError(f"range [{start}, {end}) past the end of a {size}-byte object")


def coalesce(ranges: Sequence[tuple[int, int]], max_gap: float) -> list[Span]:
    """Group ranges whose gaps are smaller than ``max_gap`` into spans, in offset order.

    Overlapping and duplicate ranges are allowed; empty ranges get an empty span of their
    own position. ``max_gap=0`` merges only touching or overlapping ranges; ``inf``
    merges everything into one span.
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    spans: list[Span] = []
    cur_start = cur_end = 0
    members: list[int] = []
    for i in order:
        start, end = ranges[i]
        if members and (start <= cur_end or start - cur_end < max_gap):
            cur_end = max(cur_end, end)
            members.append(i)
            continue
        if members:
            spans.append(Span(cur_start, cur_end, tuple(members)))
        cur_start, cur_end, members = start, end, [i]
    if members:
        spans.append(Span(cur_start, cur_end, tuple(members)))
    return spans


def split(start: int, end: int, part_size: int) -> list[tuple[int, int]]:
    """Cut [start, end) into consecutive parts of at most ``part_size`` bytes."""
    return [(s, min(s + part_size, end)) for s in range(start, end, part_size)]
