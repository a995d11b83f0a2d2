"""Codes re-derived from the decoded weights: a quantised model without a second copy (core).

A model quantised by :func:`~paramcorrupt.quantize` computes with the decoded values of its
codes; those values, with the (small) scales and zero points, determine the codes: each
quantiser has an inverse (``Quantizer.invert``: round(w / s) + z for the integers, the
element format's rounding of w / s for FP8, NF4 and MX, the cast for float16/bfloat16), and
an entry's decoded value w = decode(code, s, z) gives back its code wherever the decoding is
one to one there. So the codes field of such a model is not held: :func:`derive_codes`
replaces it by a *derived* field, whose codes are computed for the entries asked
(O(entries)) from the weights as they are.

Where the weights do not determine a code, the code is kept: at quantisation every code is
derived and compared with the quantiser's own; the entries that differ (``kept``: entries
and codes, int64) are read from there. They are the codes whose decoded value is shared with
another code (the NaN codes of FP8, a NaN or Inf in a weight, a block whose E8M0 scale is
NaN, the unused high nibble of an odd count when it is not the zero point's code, products
that underflow). ``tests/test_formats_derive.py`` derives every code of every format (NaN,
Inf and negative zero codes included) under several scales. When the kept codes would take
more than an eighth of the memory of the codes themselves (a bfloat16 model in int8: its
decoded values round), the codes stay held.

Every derivation checks its result: the derived code decoded with the quantiser's float32
arithmetic must give the weight's bits exactly; a weight that changed since quantisation
(trained, or corrupted by something else) is refused with a
:class:`~paramcorrupt.errors.ParamCorruptError` naming it, never derived to a wrong code.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..errors import ParamCorruptError
from .layout import code_positions, decode_entries
from .stored import Field, StoredTensor

__all__ = ["KEPT_SHARE", "codes_from_weights", "derive_codes"]

#: the most the kept codes may take, as a share of the held codes' memory, for a field to be derived
KEPT_SHARE = 1 / 8

_INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: Tensor, b: Tensor) -> Tensor:
    view = _INT_OF[a.element_size()]
    return a.contiguous().view(view) == b.contiguous().view(view)


def codes_from_weights(
    stored: StoredTensor,
    weights: Tensor,
    entries: Tensor,
    kept: tuple[Tensor, Tensor] | None = None,
    name: str = "tensor",
    check: bool = True,
) -> Tensor:
    """The codes (int64) of the code ``entries`` of ``stored`` derived from ``weights`` (the
    tensor holding the decoded values): the quantiser's inverse of each entry's weight with
    its scale and zero point, a padding entry's as a weight 0, ``kept`` codes read there.

    Raises:
        ParamCorruptError: with ``check``, where a derived code does not decode to its
            weight's bits (the weights are not the decoded values of ``stored``).
    """
    entries = entries.long().reshape(-1)
    at, groups = code_positions(stored, entries)
    has = at >= 0
    flat = weights.detach().reshape(-1)
    values = torch.zeros(entries.numel(), dtype=flat.dtype)
    values[has] = flat[at[has].to(flat.device)].cpu()
    scales = zero_points = None
    if groups is not None:
        g = groups.clamp(min=0)
        scales = stored.scales.element.decode(stored.scales.at(g))
        if stored.zero_points is not None:
            zero_points = stored.zero_points.element.decode(stored.zero_points.at(g))
    codes = stored.inverter(stored, values, scales, zero_points)
    if kept is not None and kept[0].numel() and entries.numel():
        pos = torch.searchsorted(kept[0], entries).clamp(max=kept[0].numel() - 1)
        hit = kept[0][pos] == entries
        codes = torch.where(hit, kept[1][pos], codes)
    if check and bool(has.any()):
        decoded = decode_entries(
            stored,
            codes[has],
            None if scales is None else scales[has],
            None if zero_points is None else zero_points[has],
        )
        bad = ~_same_bits(decoded, values[has])
        if bool(bad.any()):
            i = int(at[has][bad][0])
            raise ParamCorruptError(
                f"{name!r} holds {float(flat[i])!r} at flat index {i}, which is not the decoded value of its stored "
                f"{stored.format} code: the weights changed after quantize (the codes are re-derived from them)"
            )
    return codes


def derive_codes(stored: StoredTensor, weights: Tensor, name: str = "tensor") -> StoredTensor:
    """``stored`` (holding its codes) with its codes field derived from ``weights`` (which
    hold ``stored.dequantize()``), the codes the weights do not determine kept; ``stored``
    itself where those would take more than :data:`KEPT_SHARE` of the codes' memory or the
    quantiser has no inverse."""
    field = stored.codes
    if field.derived or stored.inverter is None:
        return stored
    entries = torch.arange(field.entries)
    true = field.at(entries)
    derived = codes_from_weights(stored, weights, entries, name=name, check=False)
    wrong = (derived != true).nonzero().reshape(-1)
    if wrong.numel() * 16 > KEPT_SHARE * field.data.numel() * field.data.element_size():
        return stored
    kept = (wrong, true[wrong])
    box: dict[str, Any] = {}

    def derive(entries: Tensor) -> Tensor:
        return codes_from_weights(box["stored"], weights, entries, kept, name)

    meta = torch.empty(field.data.shape, dtype=field.data.dtype, device="meta")
    new = Field(meta, field.format, field.bits, field.count, field.packing, derive)
    box["stored"] = replace(stored, fields={**stored.fields, "codes": new}, kept=kept)
    return box["stored"]
