"""Where each stored entry of a :class:`~paramcorrupt.formats.StoredTensor` sits among the
weights (core): the weight a code decodes, the weights a scale (or zero point) decodes, and
the decoding of single entries with the quantisers' float32 arithmetic.

Two kinds of layout: *rows* (the layout has ``padded_columns``: int8 per tensor, per channel
and in groups, int4, MX; codes row-major over rows padded to a multiple of ``group_size``,
one scale per group of a row) and *flat* (nf4 blocks of ``block_size`` over the flattened
tensor, fp8 per channel as runs of one row, the casts: no scale). A code entry that decodes
no weight (a padding column, the unused high nibble of an odd count) is padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .stored import StoredTensor

__all__ = [
    "code_positions",
    "decode_entries",
    "entries_and_groups",
    "weights_of_codes",
    "weights_of_groups",
]


def _numel(stored: StoredTensor) -> int:
    return int(torch.Size(stored.shape).numel())


def _group_length(stored: StoredTensor) -> int | None:
    """The flat run of weights one scale covers, for the layouts without rows (nf4 blocks,
    fp8 per channel); None for the row layouts and the formats without scales."""
    lay = stored.layout
    if "padded_columns" in lay or stored.scales is None:
        return None
    if "block_size" in lay:
        return int(lay["block_size"])
    return _numel(stored) // stored.scales.count


def weights_of_codes(stored: StoredTensor, entries: Tensor) -> Tensor:
    """The flat weight index of each code entry (padding entries dropped)."""
    lay = stored.layout
    if "padded_columns" in lay:
        rows, columns, padded = lay["rows"], lay["columns"], lay["padded_columns"]
        r, c = entries // padded, entries % padded
        keep = (c < columns) & (r < rows)
        return r[keep] * columns + c[keep]
    return entries[entries < _numel(stored)]


def weights_of_groups(stored: StoredTensor, groups: Tensor) -> Tensor:
    """The flat indices of the weights each scale (or zero point) entry decodes."""
    lay = stored.layout
    if "padded_columns" in lay:
        size, columns, padded = lay["group_size"], lay["columns"], lay["padded_columns"]
        per_row = padded // size
        groups = groups[groups < lay["rows"] * per_row]
        cols = (groups % per_row).unsqueeze(1) * size + torch.arange(size)
        flat = (groups // per_row).unsqueeze(1) * columns + cols
        return flat[cols < columns]
    length = _group_length(stored)
    if length is None:
        return groups.new_zeros(0)
    flat = (groups.unsqueeze(1) * length + torch.arange(length)).reshape(-1)
    return flat[flat < _numel(stored)]


def entries_and_groups(stored: StoredTensor, weights: Tensor) -> tuple[Tensor, Tensor | None]:
    """(code entry, scale entry or None) of each flat weight index."""
    lay = stored.layout
    if "padded_columns" in lay:
        columns, padded, size = lay["columns"], lay["padded_columns"], lay["group_size"]
        r, c = weights // columns, weights % columns
        return r * padded + c, r * (padded // size) + c // size
    length = _group_length(stored)
    return weights, None if length is None else weights // length


def code_positions(stored: StoredTensor, entries: Tensor) -> tuple[Tensor, Tensor | None]:
    """For each code entry (storage order, padding included): (the flat weight it decodes,
    -1 for padding; its scale entry, -1 where it has none, None for a format without scales)."""
    lay = stored.layout
    if "padded_columns" in lay:
        rows, columns, padded, size = (
            lay["rows"],
            lay["columns"],
            lay["padded_columns"],
            lay["group_size"],
        )
        r, c = entries // padded, entries % padded
        inside = r < rows
        weights = torch.where(inside & (c < columns), r * columns + c, torch.full_like(entries, -1))
        groups = torch.where(inside, r * (padded // size) + c // size, torch.full_like(entries, -1))
        return weights, groups if stored.scales is not None else None
    inside = entries < _numel(stored)
    weights = torch.where(inside, entries, torch.full_like(entries, -1))
    length = _group_length(stored)
    if length is None:
        return weights, None
    return weights, torch.where(inside, entries // length, torch.full_like(entries, -1))


def decode_entries(
    stored: StoredTensor, codes: Tensor, scales: Tensor | None, zero_points: Tensor | None
) -> Tensor:
    """The decoded values (``stored.dtype``) of codes with their own scale and zero-point
    values: the arithmetic of the quantisers' ``dequantize()`` (element values in float32,
    minus the zero point, times the scale, float32 products)."""
    values = stored.codes.element.decode(codes)
    if zero_points is not None:
        values = values - zero_points
    if scales is not None:
        values = values * scales
    return values.to(stored.dtype)
