"""Bit faults in a quantised model's stored image: codes, scales and zero points.

A model quantised by :func:`paramcorrupt.quantize` computes with the decoded values of what
is stored (:class:`~paramcorrupt.formats.StoredTensor`: codes, scales, zero points, each a
:class:`~paramcorrupt.formats.Field` in its element format). A memory fault hits any stored
bit: a code bit changes one weight, a bit of a shared scale (or zero point) changes every
weight of its group or block.

The random bit faults (:func:`~paramcorrupt.faults.bits.random_bit_faults`, the ``bitflip``
and ``stuck-at`` fault models) given the stored tensors (``stored=``, the sweep's
``FaultContext.stored``) draw over every candidate bit of the group: the bits of its plain
parameters (those not quantised: biases, norms) in the ``format`` setting, and every stored
bit of its quantised weights in each field's own element format (int8/int4/uint4/NF4/FP8/
FP6/FP4 codes, float32 or E8M0 scales, uint4 zero points; padding entries included: they
are in memory too). One BER thus means each stored bit fails independently; the count of
faults is Binomial(candidate bits, BER), drawn sparsely (O(faults) memory). A bit class
selects in each field the bits of its own element format (``exponent`` selects no bit of an
int8 code field but the exponent bits of its float32 scales; a bit index past a field's
width selects none of it).

The stored tensors are never changed: the faulty codes are read, changed and decoded for
the affected weights only (a code: its weight; a scale or zero point: its group or block),
with the same float32 arithmetic as the quantiser's ``dequantize()``, and written into the
weights as values (``mode="set"``), so :func:`~paramcorrupt.corrupted` restores them bit for
bit, also through Inf/NaN. ``info`` (and the rows) report ``code_faults``, ``scale_faults``,
``zero_point_faults`` (faulty bits drawn in each kind of field) and ``changed`` (weights
whose value changed; a flipped scale changes up to its whole block).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..corruption.base import Corruption
from ..errors import InputTypeError, ParamCorruptError
from ..formats import Field, StoredTensor
from ..formats.layout import entries_and_groups, weights_of_codes, weights_of_groups
from ..groups import ParameterGroup, as_group
from .segments import BitSegments

__all__ = ["FIELD_COUNTS", "StoredImage", "decode_at", "field_bits", "row_fields", "stored_faults", "stored_image"]

#: a stored field's name -> the info/row field counting the faulty bits drawn in it
FIELD_COUNTS = {"codes": "code_faults", "scales": "scale_faults", "zero_points": "zero_point_faults"}

_OPS = ("flip", "stuck-0", "stuck-1")
_INT_OF = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}


def field_bits(field: Field, bits: str | int) -> tuple[int, ...]:
    """The bit positions of a bit class or index in ``field``'s element format (none where
    the format lacks the class or the index is past its width)."""
    element = field.element
    if isinstance(bits, int) and not isinstance(bits, bool):
        return (bits,) if 0 <= bits < element.bits else ()
    try:
        return element.select(bits)
    except ParamCorruptError:
        if bits not in ("sign", "exponent", "mantissa"):
            raise
        return ()


def entries_of(field: Field) -> int:
    """The entries the field holds in memory (a packed byte's unused nibble included; an
    entry narrower than its container, an unpacked FP4/FP6 code in a byte, counts its
    format's bits alone)."""
    return field.entries


def codes_at(field: Field, entries: Tensor, changed: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The codes (int64) of ``entries`` (held, or re-derived from the weights: ``Field.at``),
    with ``changed`` = (sorted entries, their new codes) read instead of what is stored."""
    entries = entries.cpu()
    if changed is None or not changed[0].numel():
        return field.at(entries)
    where, new = changed[0].cpu(), changed[1].cpu()
    pos = torch.searchsorted(where, entries).clamp(max=where.numel() - 1)
    hit = where[pos] == entries
    codes = new[pos].clone()
    if not bool(hit.all()):  # the others read (or re-derived) alone
        codes[~hit] = field.at(entries[~hit]).to(codes.device)
    return codes


# where each stored entry sits among the weights: formats/layout.py (the derived codes use it too)
_entries_and_groups = entries_and_groups


def decode_at(stored: StoredTensor, weights: Tensor, changed: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """The decoded values (``stored.dtype``) of the flat ``weights``, each field read with
    its ``changed`` entries; the arithmetic of the quantisers' ``dequantize()``: element
    values in float32, minus the zero point, times the scale, float32 products."""
    changed = changed or {}
    entries, groups = _entries_and_groups(stored, weights)
    codes = stored.codes
    values = codes.element.decode(codes_at(codes, entries, changed.get("codes")))
    if stored.zero_points is not None:
        zero = stored.zero_points
        values = values - zero.element.decode(codes_at(zero, groups, changed.get("zero_points")))
    if stored.scales is not None:
        scales = stored.scales
        values = values * scales.element.decode(codes_at(scales, groups, changed.get("scales")))
    return values.to(stored.dtype)


def _same_bits(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise: do two tensors of one float dtype hold the same bits (NaN payloads too)?"""
    view = _INT_OF[a.element_size() * 8]
    return a.contiguous().view(view) == b.contiguous().view(view)


# -- faults -------------------------------------------------------------------------------------


@torch.no_grad()
def _tensor_faults(
    param: Tensor, stored: StoredTensor, faults: Mapping[str, tuple[Tensor, Tensor]], op: str
) -> tuple[Tensor, Tensor, dict[str, int]]:
    """(changed flat indices, their new values, faulty bits drawn per count field) of one
    stored tensor whose fields get ``op`` at ``faults``: field -> (entries, bits)."""
    changed: dict[str, tuple[Tensor, Tensor]] = {}
    counts: dict[str, int] = {}
    touched = []
    for name, (entries, bits) in faults.items():
        field = stored.fields[name]
        counts[FIELD_COUNTS[name]] = counts.get(FIELD_COUNTS[name], 0) + entries.numel()
        unique, inverse = entries.unique(return_inverse=True)
        mask = torch.zeros_like(unique).scatter_add_(0, inverse, torch.ones_like(entries) << bits)
        old = codes_at(field, unique).cpu()
        new = old ^ mask if op == "flip" else (old | mask if op == "stuck-1" else old & ~mask)
        keep = new != old  # a stuck bit changes an entry only where it held the other value
        changed[name] = (unique[keep], new[keep])
        touched.append(weights_of_codes(stored, unique[keep]) if name == "codes" else weights_of_groups(stored, unique[keep]))
    weights = torch.cat(touched).unique() if touched else torch.zeros(0, dtype=torch.long)
    flat = param.detach().reshape(-1)
    values = decode_at(stored, weights, changed).to(param.device)
    differ = ~_same_bits(values, flat[weights.to(param.device)])
    return weights[differ.cpu()], values[differ], counts


def _merge(corruption: Corruption, params: Mapping[str, Tensor], tensors: Mapping[str, StoredTensor],
           faults: Mapping[str, dict[str, tuple[Tensor, Tensor]]], op: str) -> Corruption:
    """``corruption`` with the set-values entries of the stored faults added."""
    indices: dict[str, Tensor | None] = dict(corruption.indices)
    values: dict[str, Tensor] = dict(corruption.values)
    info = dict(corruption.info)
    totals = dict.fromkeys(FIELD_COUNTS.values(), 0)
    distinct = dict(info.get("distinct_indices_of", {}))
    changed = 0
    for name, by_field in faults.items():
        idx, value, counts = _tensor_faults(params[name], tensors[name], by_field, op)
        for key, count in counts.items():
            totals[key] += count
        if idx.numel():
            indices[name], values[name] = idx.to(params[name].device), value
            distinct[name] = params[name].numel()
            changed += idx.numel()
    info.update(totals)
    info["changed"] = info.get("changed", 0) + changed
    info["distinct_indices_of"] = distinct
    info["quantized"] = next(iter(tensors.values())).format if tensors else None
    return Corruption(corruption.group, None, corruption.method, indices, values, info, mode="set")


def _check_stored(params: Mapping[str, Tensor], stored: Mapping[str, StoredTensor]) -> dict[str, StoredTensor]:
    """The stored tensors of the group's parameters, each checked against its parameter."""
    if not isinstance(stored, Mapping):
        raise InputTypeError(f"stored must map parameter names to StoredTensors (what quantize returns), got {type(stored).__name__}")
    out = {}
    for name, param in params.items():
        if name in stored:
            st = stored[name]
            if not isinstance(st, StoredTensor):
                raise InputTypeError(f"stored[{name!r}] is a {type(st).__name__}, not a StoredTensor")
            if tuple(st.shape) != tuple(param.shape) or st.dtype != param.dtype:
                raise ParamCorruptError(
                    f"stored[{name!r}] holds a {st.dtype} tensor of shape {list(st.shape)}, but the parameter is "
                    f"{param.dtype} of shape {list(param.shape)}: quantised from another model"
                )
            out[name] = st
    return out


class StoredImage:
    """The candidate (entry, bit) pairs of the stored fields of a group's quantised weights,
    numbered field after field (weights in group order, fields codes, scales, zero points),
    entry-major inside a field.

    Attributes:
        plain: name -> the group's parameters that are not quantised (faulted in the
            ``format`` setting).
        tensors: name -> the stored tensor of each quantised parameter of the group.
        total: the number of candidate bits in the stored fields.
    """

    def __init__(self, params: Mapping[str, Tensor], stored: Mapping[str, StoredTensor], bits: str | int) -> None:
        self.params = dict(params)
        self.tensors = _check_stored(params, stored)
        self.plain = {n: p for n, p in params.items() if n not in self.tensors}
        self.numbering = BitSegments()  # (name, field) -> its candidate bits, in image order
        for name, st in self.tensors.items():
            for field_name in ("codes", "scales", "zero_points"):
                field = st.fields.get(field_name)
                if field is not None:
                    self.numbering.add((name, field_name), entries_of(field), field_bits(field, bits))
        self.total = self.numbering.total

    def faults(self, chosen: Tensor) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
        """Candidate numbers in [0, total) as name -> field -> (entries, bits)."""
        out: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
        for (name, field_name), found in self.numbering.locate(chosen).items():
            out.setdefault(name, {})[field_name] = found
        return out

    def add_faults(self, corruption: Corruption, chosen: Tensor, op: str) -> Corruption:
        """``corruption`` (the faults of the plain parameters) with the faults of the stored
        candidates ``chosen`` (numbers in [0, total)) added."""
        return _merge(corruption, self.params, self.tensors, self.faults(chosen), op)


def stored_image(params: Mapping[str, Tensor], stored: Mapping[str, StoredTensor] | None, bits: str | int) -> StoredImage | None:
    """The stored image of a group's quantised weights, or None when none of them is stored.

    Raises:
        InputTypeError, ParamCorruptError: for ``stored`` that is not name -> StoredTensor,
            or one whose shape or dtype is not its parameter's.
    """
    if stored is None:
        return None
    image = StoredImage(params, stored, bits)
    return image if image.tensors else None


def stored_faults(
    model: nn.Module,
    stored: Mapping[str, StoredTensor],
    faults: Iterable[tuple[str, str, int, int]],
    *,
    op: str = "flip",
    group: ParameterGroup | str | Iterable[str] | None = None,
) -> Corruption:
    """The corruption that applies ``op`` to given stored bits of a quantised model: each
    fault is (parameter name, field: ``codes``, ``scales`` or ``zero_points``, entry in the
    field's storage order, bit), bit 0 the least significant of the field's element format.

    Args:
        model: the quantised network (its weights the decoded values of ``stored``).
        stored: name -> StoredTensor (what :func:`paramcorrupt.quantize` returns).
        faults: the faulty bits, each (name, field, entry, bit), no pair twice.
        op: "flip", "stuck-0" or "stuck-1".
        group: the group the corruption belongs to (default: the names faulted).

    Returns:
        A set-values corruption for :func:`~paramcorrupt.corrupted`; ``info`` as that of a
        random draw (``bit_errors``, ``changed``, ``code_faults``, ``scale_faults``,
        ``zero_point_faults``).

    Raises:
        ParamCorruptError: a name that is not a stored weight, an unknown field, an entry or
            a bit out of range, a fault given twice, an unknown op.

    Example:
        >>> import paramcorrupt as pc
        >>> model = nn.Linear(64, 2)
        >>> q = pc.quantize(model, "int4", group_size=32)
        >>> fault = stored_faults(model, q, [("weight", "scales", 1, 30)])  # scale of row 0, columns 32..63
        >>> fault.info["scale_faults"], set(fault.indices["weight"].tolist()) <= set(range(32, 64))  # (a code 0 stays 0)
        (1, True)
        >>> q.restore(model)
    """
    if op not in _OPS:
        raise ParamCorruptError(f"unknown fault op {op!r}; expected one of {', '.join(_OPS)}")
    faults = list(faults)
    names = list(dict.fromkeys(f[0] for f in faults))
    group = group if isinstance(group, ParameterGroup) else as_group(model, names if group is None else group)
    params = group.tensors(model) if group.names else {}
    tensors = _check_stored(params, stored)
    seen: dict[str, dict[str, dict[tuple[int, int], None]]] = {}
    for name, field_name, entry, bit in faults:
        if name not in tensors:
            raise ParamCorruptError(f"{name!r} is not a stored weight of the group {group.name!r}; stored: {', '.join(tensors) or 'none'}")
        fields = tensors[name].fields
        if field_name not in fields:
            raise ParamCorruptError(f"{name!r} has no stored field {field_name!r}; it holds {', '.join(fields)}")
        field = fields[field_name]
        if not 0 <= entry < entries_of(field) or not 0 <= bit < field.bits:
            raise ParamCorruptError(
                f"fault ({name!r}, {field_name!r}, {entry}, {bit}) is outside the field: {entries_of(field)} entries of {field.bits} bits"
            )
        pairs = seen.setdefault(name, {}).setdefault(field_name, {})
        if (entry, bit) in pairs:
            raise ParamCorruptError(f"fault ({name!r}, {field_name!r}, {entry}, {bit}) is given twice")
        pairs[(entry, bit)] = None
    by_name = {
        name: {f: tuple(torch.tensor(x, dtype=torch.long) for x in zip(*pairs)) for f, pairs in fields.items()}
        for name, fields in seen.items()
    }
    empty = Corruption(group, None, f"bit-{op}", {}, {}, {"bit_errors": len(faults), "changed": 0}, mode="set")
    return _merge(empty, params, tensors, by_name, op)


def row_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """The row fields of a corruption that reached stored weights (none otherwise)."""
    if "code_faults" not in info:
        return {}
    return {key: info[key] for key in FIELD_COUNTS.values()}
