"""Candidate bits numbered across the fields of a stored image.

A fault drawn at a bit error rate picks candidate numbers in [0, total); :class:`BitSegments`
says which (field, entry, bit) each number is. A *segment* is one field with the bit
positions that may fail in each of its entries; numbers run segment after segment, entry-
major inside a segment. Used by the stored images of quantised models
(:mod:`~paramcorrupt.faults.stored`) and of torchao tensors (:mod:`~paramcorrupt.faults.torchao`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

__all__ = ["BitSegments"]


class BitSegments:
    """Segments (key, entries, bit positions), numbered in the order they are added.

    Example:
        >>> s = BitSegments()
        >>> s.add("a", 2, (0, 7))   # numbers 0..3: entry 0 bits 0, 7; entry 1 bits 0, 7
        >>> s.add("b", 1, (3,))     # number 4
        >>> s.total
        5
        >>> s.locate(torch.tensor([1, 4]))
        {'a': (tensor([0]), tensor([7])), 'b': (tensor([0]), tensor([3]))}
    """

    def __init__(self) -> None:
        self._segments: list[tuple[Hashable, Tensor]] = []
        self._counts: list[int] = []
        self.offsets = torch.zeros(1, dtype=torch.long)
        self.total = 0

    def add(self, key: Hashable, entries: int, positions: Sequence[int]) -> None:
        """A segment of ``entries`` entries whose bits ``positions`` may fail (none: skipped)."""
        if not positions:
            return
        self._segments.append((key, torch.tensor(positions, dtype=torch.long)))
        self._counts.append(entries * len(positions))
        self.offsets = torch.tensor([0, *self._counts], dtype=torch.long).cumsum(0)
        self.total = int(self.offsets[-1])

    def locate(self, chosen: Tensor) -> dict[Hashable, tuple[Tensor, Tensor]]:
        """Candidate numbers in [0, total) as key -> (entries, bits), keys in segment order."""
        out: dict[Hashable, tuple[Tensor, Tensor]] = {}
        if not chosen.numel():
            return out
        segment = torch.searchsorted(self.offsets, chosen, right=True) - 1
        local = chosen - self.offsets[segment]
        for s in segment.unique().tolist():
            key, positions = self._segments[s]
            here = local[segment == s]
            out[key] = (here // len(positions), positions[here % len(positions)])
        return out
