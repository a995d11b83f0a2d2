"""Bit faults in the stored fields of torchao weights: the codes (``qdata``), the scales and
the zero points, as the quantised model holds them (see :mod:`paramcorrupt.formats.torchao`).

The random bit faults (:func:`~paramcorrupt.faults.bits.random_bit_faults`, the ``bitflip``
and ``stuck-at`` fault models) draw over every candidate bit of a group: the bits of its
plain parameters in the ``format`` setting, as before, and every stored bit of its torchao
weights in the fields' own formats (int8 or float8 codes, float32 scales, int8 zero points),
so one BER means each stored bit fails independently with that probability. A bit class
selects in each field the bits of its own format (``exponent`` selects no bit of an int8
field; a bit index past a field's width selects none of it).

The faulty elements are read and written through an integer view of torchao's own
storage, O(faults) memory: the weight is never dequantised and nothing of the size of a
weight is allocated. :func:`~paramcorrupt.corrupted` writes them and restores them bit for
bit; rows report ``scale_faults`` and ``zero_point_faults`` (faulty bits drawn in the scale
and zero-point fields).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..corruption.base import Corruption
from ..errors import ParamCorruptError
from ..formats.torchao import (
    StoredField,
    as_signed,
    field_positions,
    is_torchao_tensor,
    stored_fields,
)
from ..groups import ParameterGroup, as_group
from .segments import BitSegments

__all__ = ["StoredLayout", "row_fields", "stored_bit_faults", "stored_layout"]


class StoredLayout:
    """The candidate (element, bit) pairs of the stored fields of a group's torchao weights,
    numbered field after field (weights in group order), element-major inside a field.

    Attributes:
        plain: name -> the group's other parameters (faulted in the ``format`` setting).
        fields: name -> the stored fields of each torchao weight, in image order.
        total: the number of candidate bits in the stored fields.
    """

    def __init__(self, params: Mapping[str, Tensor], bits: str | int) -> None:
        self.plain = {n: p for n, p in params.items() if not is_torchao_tensor(p)}
        self.fields = {n: stored_fields(p, n) for n, p in params.items() if is_torchao_tensor(p)}
        self.numbering = BitSegments()  # (name, field number) -> its candidate bits, in image order
        for name, fields in self.fields.items():
            for number, field in enumerate(fields):
                self.numbering.add((name, number), field.numel, field_positions(field.format, bits))
        self.total = self.numbering.total

    def faults(self, chosen: Tensor) -> dict[tuple[str, int], tuple[Tensor, Tensor]]:
        """Candidate numbers in [0, total) as (name, field number) -> (elements, bits)."""
        return self.numbering.locate(chosen)

    def add_faults(self, corruption: Corruption, chosen: Tensor, op: str) -> Corruption:
        """``corruption`` (the faults of the plain parameters) with the faults of the stored
        candidates ``chosen`` (numbers in [0, total)) added."""
        return _with_stored(corruption, self.fields, self.faults(chosen), op)


def stored_layout(params: Mapping[str, Tensor], bits: str | int) -> StoredLayout | None:
    """The stored layout of a group's torchao weights, or None when it holds none.

    Raises:
        ParamCorruptError: for a torchao tensor type that is not supported (naming it and the
            supported ones).
    """
    if not any(is_torchao_tensor(p) for p in params.values()):
        return None
    return StoredLayout(params, bits)


@torch.no_grad()
def _with_stored(
    corruption: Corruption,
    fields: Mapping[str, list[StoredField]],
    faults: Mapping[tuple[str, int], tuple[Tensor, Tensor]],
    op: str,
) -> Corruption:
    """Add to ``corruption`` the set-values entries of the stored faults: per torchao weight,
    its stored image indices and their new integer-view values."""
    indices: dict[str, Tensor | None] = dict(corruption.indices)
    values: dict[str, Tensor] = dict(corruption.values)
    counts: dict[str, int] = {}
    changed = 0
    for name, stored in fields.items():
        idx_parts, value_parts, start = [], [], 0
        for number, field in enumerate(stored):
            if (name, number) in faults:
                elements, bits = faults[(name, number)]
                counts[field.name] = counts.get(field.name, 0) + elements.numel()
                unique, inverse = elements.unique(return_inverse=True)
                mask = torch.zeros_like(unique).scatter_add_(0, inverse, torch.ones_like(elements) << bits)
                codes = field.codes(unique.to(field.view.device)).cpu()
                new = codes ^ mask if op == "flip" else (codes | mask if op == "stuck-1" else codes & ~mask)
                keep = new != codes  # a stuck bit changes an element only where it held the other value
                idx_parts.append(start + unique[keep])
                value_parts.append(as_signed(new[keep], field.format.bits))
            start += field.numel
        if idx_parts and sum(p.numel() for p in idx_parts):
            indices[name] = torch.cat(idx_parts)
            values[name] = torch.cat(value_parts)
            changed += indices[name].numel()
    info = dict(corruption.info)
    info["changed"] = info.get("changed", 0) + changed
    info["stored_fields"] = {name: tuple(f.name for f in fields[name]) for name in fields if name in values}
    info["stored_bit_errors"] = counts
    info["scale_faults"] = sum(c for f, c in counts.items() if "scale" in f)
    info["zero_point_faults"] = sum(c for f, c in counts.items() if "zero_point" in f)
    return Corruption(corruption.group, None, corruption.method, indices, values, info, mode="set")


def stored_bit_faults(
    model: nn.Module,
    faults: Iterable[tuple[str, str, int, int]],
    *,
    op: str = "flip",
    group: ParameterGroup | str | Iterable[str] | None = None,
) -> Corruption:
    """The corruption that applies ``op`` to given bits of the stored fields of torchao
    weights: each fault is (parameter name, field name, flat element, bit), bit 0 the least
    significant of the field's own format.

    Args:
        model: the torchao-quantised network.
        faults: the faulty bits, each (name, field, element, bit), no pair twice.
        op: "flip", "stuck-0" or "stuck-1".
        group: the group the corruption belongs to (default: the names faulted).

    Returns:
        A set-values corruption for :func:`~paramcorrupt.corrupted`; ``info`` as that of a
        random draw (``bit_errors``, ``changed``, ``scale_faults``, ``zero_point_faults``).

    Raises:
        ParamCorruptError: for a name that is not a torchao weight of the model, an
            unsupported type, an unknown field, an element or a bit out of range, a fault
            given twice, or an unknown op.
    """
    if op not in ("flip", "stuck-0", "stuck-1"):
        raise ParamCorruptError(f"unknown fault op {op!r}; expected one of flip, stuck-0, stuck-1")
    faults = list(faults)
    names = list(dict.fromkeys(f[0] for f in faults))
    group = as_group(model, names if group is None else group) if not isinstance(group, ParameterGroup) else group
    params = group.tensors(model) if names else {}
    by_field: dict[tuple[str, int], dict[tuple[int, int], None]] = {}
    fields: dict[str, list[StoredField]] = {}
    for name, field_name, element, bit in faults:
        if name not in params:
            raise ParamCorruptError(f"{name!r} is not a parameter of the group {group.name!r}")
        if not is_torchao_tensor(params[name]):
            raise ParamCorruptError(f"parameter {name!r} is a {type(params[name]).__name__}, not a torchao tensor")
        fields.setdefault(name, stored_fields(params[name], name))
        numbers = {f.name: i for i, f in enumerate(fields[name])}
        if field_name not in numbers:
            raise ParamCorruptError(f"{name!r} has no stored field {field_name!r}; it holds {', '.join(numbers)}")
        field = fields[name][numbers[field_name]]
        if not 0 <= element < field.numel or not 0 <= bit < field.format.bits:
            raise ParamCorruptError(
                f"fault ({name!r}, {field_name!r}, {element}, {bit}) is outside the field: "
                f"{field.numel} elements of {field.format.bits} bits"
            )
        pairs = by_field.setdefault((name, numbers[field_name]), {})
        if (element, bit) in pairs:
            raise ParamCorruptError(f"fault ({name!r}, {field_name!r}, {element}, {bit}) is given twice")
        pairs[(element, bit)] = None
    tensors = {key: tuple(torch.tensor(x, dtype=torch.long) for x in zip(*pairs)) for key, pairs in by_field.items()}
    empty = Corruption(group, None, f"bit-{op}", {}, {}, {"bit_errors": len(faults), "changed": 0}, mode="set")
    return _with_stored(empty, fields, tensors, op)


def row_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """The row fields of a corruption that reached torchao weights (none otherwise)."""
    if "scale_faults" not in info:
        return {}
    return {"scale_faults": info["scale_faults"], "zero_point_faults": info["zero_point_faults"]}
