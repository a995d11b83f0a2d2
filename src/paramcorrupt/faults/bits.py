"""Random faults in the stored bits: flips at a bit error rate or of a fixed number, and
stuck-at-0/1 bits, in float32, float16, bfloat16 or int8 storage (see
:mod:`~paramcorrupt.formats.numbers`).

Faults are drawn sparsely: the number of faulty bits m among the N = k x |bits| candidate
(coordinate, bit) pairs is Binomial(N, ber) (or given), then m distinct pairs are drawn
uniformly. Memory is O(m), never a mask of N entries. The faulty weights are written as
values (``mode="set"``), so restores are bit-exact even where a flip made Inf or NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..corruption.base import Corruption
from ..errors import InputTypeError, ParamCorruptError
from ..formats import NumberFormat, bits_setting, get_format
from ..groups import ParameterGroup, as_group
from .base import FaultContext, FaultModel, key_text, register_fault
from .stored import row_fields as stored_row_fields
from .stored import stored_image
from .torchao import row_fields as torchao_row_fields
from .torchao import stored_layout

__all__ = ["BitFlip", "StuckAt", "random_bit_faults"]

OPS = ("flip", "stuck-0", "stuck-1")


def _distinct(m: int, total: int, generator: torch.Generator) -> Tensor:
    """m distinct integers drawn uniformly from [0, total), sorted; O(m) memory unless m is
    more than half of total."""
    if m == 0:
        return torch.empty(0, dtype=torch.long)
    if 2 * m > total:
        return torch.randperm(total, generator=generator)[:m].sort().values
    chosen = torch.randint(0, total, (m,), generator=generator).unique()
    while chosen.numel() < m:  # a repeat (rare while m << total): draw the missing ones
        draw = torch.randint(0, total, (m - chosen.numel(),), generator=generator)
        chosen = torch.cat([chosen, draw]).unique()
    return chosen


def random_bit_faults(
    model: nn.Module,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    format: str = "float32",
    bits: str | int = "any",
    ber: float | None = None,
    flips: int | None = None,
    op: str = "flip",
    generator: torch.Generator,
    stored: Mapping[str, Any] | None = None,
) -> Corruption:
    """Random faults in the stored bits of a group: each candidate bit faulty with
    probability ``ber`` independently, or exactly ``flips`` faulty bits.

    Args:
        model: the network (values are read to encode them).
        group: the parameters (default: every trainable one).
        format: the stored format: float32, float16, bfloat16, int8, int8-channel.
        bits: which bits may fail: any, sign, exponent, mantissa, msb, or a bit index.
        ber: the bit error rate, in [0, 1]; or
        flips: the number of faulty bits, >= 0 (give one of the two).
        op: "flip", "stuck-0" or "stuck-1" (a stuck bit changes a weight only where it
            held the other value).
        generator: the source of randomness.
        stored: name -> :class:`~paramcorrupt.formats.StoredTensor` of a model quantised by
            :func:`paramcorrupt.quantize`: the group's stored weights are faulted in their
            stored image (codes, scales, zero points, each bit in its field's own format;
            see :mod:`paramcorrupt.faults.stored`), its other parameters in ``format``.

    Returns:
        A set-values corruption of the weights whose stored code changed;
        ``info["bit_errors"]`` is m, ``info["changed"]`` the number of weights changed.

    Raises:
        ValueError: for ber outside [0, 1], a negative count or one above N, both or none of
            ber/flips, an unknown format, bit class or op, or a bit index out of range.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> fault = random_bit_faults(model, format="int8", flips=3, generator=torch.Generator().manual_seed(0))
        >>> fault.info["bit_errors"], fault.mode
        (3, 'set')
    """
    fmt = get_format(format)
    positions = fmt.select(bits)
    if op not in OPS:
        raise ParamCorruptError(f"unknown fault op {op!r}; expected one of {', '.join(OPS)}")
    _check_rate(ber, flips)
    if not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    group = group if isinstance(group, ParameterGroup) else as_group(model, group)
    params = group.tensors(model)  # validates the names
    for name, param in params.items():
        if not param.is_floating_point():
            raise InputTypeError(
                f"parameter {name!r} has dtype {param.dtype}; only floating-point parameters can be corrupted"
            )
    # a quantised model's stored image (faults/stored.py), else torchao weights: their stored fields (faults/torchao.py)
    if stored is not None:
        layout = stored_image(params, stored, bits)
    elif all(type(p) is nn.Parameter or type(p) is Tensor for p in params.values()):
        layout = None  # plain tensors: no torchao weight to look for (a walk of each one's classes)
    else:
        layout = stored_layout(params, bits)
    plain = params if layout is None else layout.plain
    sizes = [p.numel() for p in plain.values()]
    total = sum(sizes) * len(positions) + (0 if layout is None else layout.total)
    if flips is not None:
        if flips > total:
            raise ParamCorruptError(
                f"flips={flips} exceeds the {total:,} candidate bits of group {group.name!r}"
            )
        m = flips
    else:
        m = int(
            torch.binomial(
                torch.tensor([float(total)], dtype=torch.float64),
                torch.tensor([float(ber)], dtype=torch.float64),
                generator=generator,
            )
        )
    chosen = _distinct(m, total, generator)
    if layout is not None:  # the plain parameters' candidates first, then the stored fields'
        stored, chosen = (
            chosen[chosen >= total - layout.total] - (total - layout.total),
            chosen[chosen < total - layout.total],
        )
    coords, bit_of = _coordinates(chosen, positions)
    corruption = _write_bits(group, plain, fmt, coords, bit_of, op, bit_errors=m, sizes=sizes)
    return corruption if layout is None else layout.add_faults(corruption, stored, op)


def _coordinates(chosen: Tensor, positions: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Candidate numbers (coordinate x |positions| + bit slot) as (coordinate, bit)."""
    slots = len(positions)
    if positions[-1] - positions[0] == slots - 1:  # consecutive bits (a class): no table to look up
        if slots & (slots - 1) == 0:  # a power of two (all 32, 16 or 8 bits): a shift and a mask
            shift = slots.bit_length() - 1
            coords, bit_of = chosen >> shift, chosen & (slots - 1)
        else:
            coords, bit_of = chosen // slots, chosen % slots
        if positions[0]:
            bit_of = bit_of + positions[0]
    else:
        coords, bit_of = chosen // slots, torch.take(torch.tensor(positions), chosen % slots)
    return coords, bit_of


def _check_rate(ber: Any, flips: Any) -> None:
    if (ber is None) == (flips is None):
        raise ParamCorruptError(f"give one of ber and flips, got ber={ber!r}, flips={flips!r}")
    if ber is not None and (
        isinstance(ber, bool) or not isinstance(ber, (int, float)) or not 0.0 <= ber <= 1.0
    ):
        raise ParamCorruptError(f"ber must be a number in [0, 1], got ber={ber!r}")
    if flips is not None and (isinstance(flips, bool) or not isinstance(flips, int) or flips < 0):
        raise ParamCorruptError(f"flips must be an integer >= 0, got flips={flips!r}")


def _by_tensor(coords: Tensor, sizes: list[int]) -> list[tuple[int, Tensor]]:
    """Sorted flat coordinates over tensors of ``sizes`` elements (in order) as (tensor
    number, flat indices inside it), for the tensors that hold any: one search, one
    subtraction and one split for all the tensors."""
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    offsets = torch.tensor(bounds)
    owner = torch.searchsorted(offsets[1:], coords, right=True)  # the tensor of each coordinate
    local = (coords - torch.take(offsets, owner)).split(
        torch.bincount(owner, minlength=len(sizes)).tolist()
    )
    return [(t, piece) for t, piece in enumerate(local) if piece.numel()]


@torch.no_grad()
def _write_bits(
    group: ParameterGroup,
    params: dict[str, Tensor],
    fmt: NumberFormat,
    coords: Tensor,
    bit_of: Tensor,
    op: str,
    sizes: list[int] | None = None,
    **info: Any,
) -> Corruption:
    """The corruption that applies ``op`` to bit ``bit_of[j]`` of flat coordinate
    ``coords[j]`` of the group (coordinates over the group's tensors in order, sorted)."""
    if not coords.numel():  # nothing faulty: no tensor is read
        info = {"format": fmt.name, "changed": 0, "distinct_indices_of": {}, **info}
        return Corruption(group, None, f"bit-{op}", {}, {}, info, mode="set")
    names = list(params)
    sizes = [p.numel() for p in params.values()] if sizes is None else sizes
    # one mask per faulty coordinate (its distinct bits summed = or-ed), coordinates sorted
    unique = coords.unique_consecutive()
    if unique.numel() == coords.numel():  # one faulty bit per coordinate (the common case)
        mask = torch.bitwise_left_shift(1, bit_of)
    else:
        inverse = torch.searchsorted(unique, coords)
        mask = torch.zeros_like(unique).scatter_add_(
            0, inverse, torch.bitwise_left_shift(1, bit_of)
        )
    pieces = []  # (name, local indices, values there, int8 scales there)
    for t, local in _by_tensor(unique, sizes):  # the tensors holding a fault
        name = names[t]
        param = params[name]
        if local.device != param.device:
            local = local.to(param.device)
        values = torch.take(param, local)  # flat (logical) indices, any layout
        scale = None if fmt.is_float else fmt.scale_at(param, local, fmt.scales(param))
        pieces.append((name, local, values, scale))
    indices: dict[str, Tensor | None] = {}
    values: dict[str, Tensor] = {}
    changed = 0
    if pieces:
        # encode, apply the op and decode every faulty coordinate at once
        dtype = fmt.dtype if fmt.is_float else torch.float64
        flat = torch.cat([v for _, _, v, _ in pieces]).to(dtype)
        scale = None if fmt.is_float else torch.cat([s for *_, s in pieces])
        codes = fmt.encode_values(flat, scale)
        mask = mask.to(codes.device)
        new = codes ^ mask if op == "flip" else (codes | mask if op == "stuck-1" else codes & ~mask)
        decoded = fmt.decode_values(new, scale)
        keep = None if op == "flip" else new != codes  # a flip always changes its code
        if keep is not None and bool(keep.all()):
            keep = None
        counts = [local.numel() for _, local, _, _ in pieces]
        parts = decoded.split(counts)
        kept = [None] * len(pieces) if keep is None else keep.split(counts)
        for (name, local, _, _), value, here in zip(pieces, parts, kept):
            idx = local if here is None else local[here]
            if here is not None:
                value = value[here]
            if idx.numel():
                dtype = params[name].dtype
                indices[name] = idx
                values[name] = value if value.dtype == dtype else value.to(dtype)
                changed += idx.numel()
    info = {
        "format": fmt.name,
        "changed": changed,
        "distinct_indices_of": {n: params[n].numel() for n in indices},
        **info,
    }
    return Corruption(group, None, f"bit-{op}", indices, values, info, mode="set")


def stuck_value(value: Any) -> int:
    """A stuck-at setting's value: 0 or 1 (the strings "0" and "1" too; never a bool)."""
    if isinstance(value, str) and value in ("0", "1"):
        value = int(value)
    if value not in (0, 1) or isinstance(value, bool):
        raise ParamCorruptError(f"a stuck-at value must be 0 or 1, got value={value!r}")
    return value


class _BitFault(FaultModel):
    """Settings shared by the random bit faults; exactly one of ber and flips is set."""

    defaults = {"format": "float32", "bits": "any", "ber": None, "flips": None}
    stochastic = True
    axes = ("ber", "flips")
    op = "flip"

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        bits = bits_setting(setting["format"], setting["bits"])
        _check_rate(setting["ber"], setting["flips"])
        out = dict(setting, bits=bits)
        if out["ber"] is not None:
            out["ber"] = float(out["ber"])
        return out

    @classmethod
    def grid(cls, values: Any) -> list[FaultModel]:
        """As :meth:`FaultModel.grid`; ber and flips exclude each other, so values for both
        give the grid over the rates, then the grid over the counts."""
        values = dict(values)
        if values.get("ber") is not None and values.get("flips") is not None:
            rates = {k: v for k, v in values.items() if k != "flips"}
            counts = {k: v for k, v in values.items() if k != "ber"}
            return super().grid(rates) + super().grid(counts)
        return super().grid(values)

    def key(self) -> str:
        # unset (None) settings are left out: "format=int8|bits=any|ber=1e-06"
        return "|".join(
            f"{n}={key_text(self.setting[n])}"
            for n in self.parameters
            if self.setting[n] is not None
        )

    def corrupt(self, ctx: FaultContext) -> Corruption:
        s = self.setting
        return random_bit_faults(
            ctx.model,
            ctx.group,
            format=s["format"],
            bits=s["bits"],
            ber=s["ber"],
            flips=s["flips"],
            op=self._op(),
            generator=ctx.generator,
            stored=ctx.stored,
        )

    def _op(self) -> str:
        return self.op

    def row_fields(self, ctx: FaultContext, corruption: Corruption | None = None) -> dict[str, Any]:
        out = dict(self.setting)
        if corruption is not None:
            out["bit_errors"] = corruption.info.get("bit_errors")
            out["changed"] = corruption.info.get("changed")
            out.update(stored_row_fields(corruption.info))
            out.update(torchao_row_fields(corruption.info))
        return out


@register_fault
class BitFlip(_BitFault):
    """Bits of the stored weights flip: at a bit error rate (``ber``) or a fixed number
    (``flips``), among the chosen ``bits`` of the ``format``."""

    name = "bitflip"
    parameters = ("format", "bits", "ber", "flips")


@register_fault
class StuckAt(_BitFault):
    """Bits of the stored weights stuck at ``value`` (0 or 1), at a rate or a number."""

    name = "stuck-at"
    parameters = ("format", "bits", "value", "ber", "flips")
    defaults = {**_BitFault.defaults, "value": 0}

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        return super().check(dict(setting, value=stuck_value(setting["value"])))

    def _op(self) -> str:
        return f"stuck-{self.setting['value']}"
