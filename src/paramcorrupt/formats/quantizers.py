"""Quantisers: a float tensor turned into what is stored (codes, scales, zero points), and back.

A tensor is seen as rows: a tensor of two or more dimensions as (shape[0], the rest
flattened): the output channels of a linear or conv weight, each row its reduction
dimension; a one-dimensional tensor as one row. Groups and blocks run along a row.

| format | codes | scales | zero points | granularity |
|---|---|---|---|---|
| ``float32``, ``float16``, ``bfloat16`` | the cast | - | - | - |
| ``int8`` | int8, clamp(round(w / s), -127, 127) | float32, s = amax / 127 | - | tensor |
| ``int8-channel`` | as int8 | float32 | - | row |
| ``int8-group`` | as int8 | float32 | - | ``group_size`` along a row (128) |
| ``int4`` | int4, clamp(round(w / s), -8, 7), packed | float32, s = amax / 7 | - | ``group_size`` (128) |
| ``int4``, ``asymmetric=True`` | uint4, clamp(round(w / s) + z, 0, 15), packed | float32, s = (max - min) / 15 | uint4, z = clamp(round(-min / s), 0, 15) | ``group_size`` |
| ``nf4`` | nf4 (nearest of the 16 levels of w / absmax), packed | float32 absmax | - | ``block_size`` (64) over the flat tensor |
| ``fp8-e4m3``, ``fp8-e5m2`` | the cast (non-saturating) | - | - | - |
| ``fp8-*``, ``per_channel=True`` | cast of w / s, saturating | float32, s = amax / max_elem | - | row |
| ``mxfp8``, ``mxfp6``, ``mxfp4`` | fp8-e4m3, fp6-e2m3, fp4-e2m1 of w / 2^e, saturating | e8m0, 2^e | - | 32 along a row |

Every scale is computed in float32 from the float32 weights (amax, min, max of the group;
a group of zeros gets scale 1), the division w / s and the products of dequantisation too.
``min``/``max`` of the asymmetric int4 include 0 (so that 0 is exact). Packed 4-bit codes:
``int4`` and ``uint4`` low nibble first (entry 2i in bits 0-3 of byte i, as torch's
``uint4x2``-style layouts and GPTQ's int32 packing order), ``nf4`` high nibble first (as
bitsandbytes stores it); an odd count of codes leaves the last high (``nf4``: low) nibble 0.

OCP MX v1.0 (section 6.3): the shared exponent of a block of 32 is e = floor(log2(amax)) -
emax_elem (emax_elem: 8 for E4M3, 2 for E2M3 and E2M1), clamped to the scale's range
[-127, 127]; the elements are w / 2^e rounded to nearest even and clamped to +-max (a block
whose amax sits above max_elem * 2^e, up to (2 - 2^-m) * 2^(emax + 1) / max, saturates).
A block of zeros gets e = -127 (code 0) and zero elements (their sign bits kept); a block
holding a NaN or an Inf gets the scale NaN (code 255: the whole block decodes to NaN) and
its elements are those of e = 0.

``nf4`` follows bitsandbytes' blockwise quantisation: blocks of ``block_size`` over the
flattened tensor (the last one may be shorter), absmax per block in float32, each weight
multiplied by the float32 reciprocal 1 / absmax and given the nearest level (a tie to the
lower one; the level midpoints rounded to float32, as its kernels' constants are), decoded
as level * absmax.

Padding (``pad=True``, for the row formats with a group or block: ``int8-group``, ``int4``,
``mx*``): zeros appended to each row up to a multiple of the group size; they are stored
(codes, and part of the groups' amax: zeros change no amax) and dropped by dequantise; an
int4 tensor with an odd number of codes gets one zero code more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import InputTypeError, ParamCorruptError
from .elements import ElementFormat, get_element
from .stored import Field, StoredTensor, make_field

__all__ = ["QUANTIZERS", "Quantizer", "check_quantize", "get_quantizer", "quantize_tensor"]


@dataclass(frozen=True)
class Quantizer:
    """One quantiser: its name, options (with defaults) and its two verbs."""

    name: str
    defaults: dict[str, Any]
    encode: Callable[..., tuple[dict[str, Field], dict[str, Any]]] = field(repr=False)
    decode: Callable[[StoredTensor], Tensor] = field(repr=False)
    grouped: bool = False  # groups along rows: group_size / pad checked
    #: (stored, weight values, their scales or None, zero points or None) -> the codes that
    #: decode to them (see :mod:`~paramcorrupt.formats.derive`)
    invert: Callable[..., Tensor] | None = field(default=None, repr=False)


def _rows(w: Tensor) -> Tensor:
    return w.reshape(w.shape[0], -1) if w.dim() >= 2 else w.reshape(1, -1)


def _float32(w: Tensor) -> Tensor:
    return w.detach().to(torch.float32)


def _nonzero(s: Tensor) -> Tensor:
    return torch.where(s > 0, s, torch.ones_like(s))


def _grouped(w: Tensor, group: int, pad: bool) -> tuple[Tensor, dict[str, Any]]:
    """The rows of ``w`` (float32), padded, as (rows, groups, group)."""
    rows = _rows(_float32(w))
    columns = rows.shape[1]
    padded = -(-columns // group) * group if pad else columns
    if padded != columns:
        rows = torch.cat([rows, rows.new_zeros(rows.shape[0], padded - columns)], dim=1)
    layout = {"rows": rows.shape[0], "columns": columns, "padded_columns": padded, "group_size": group}
    return rows.reshape(rows.shape[0], padded // group, group), layout


def _ungroup(values: Tensor, stored: StoredTensor) -> Tensor:
    lay = stored.layout
    values = values[: lay["rows"] * lay["padded_columns"]].reshape(lay["rows"], lay["padded_columns"])
    return values[:, : lay["columns"]].reshape(stored.shape).to(stored.dtype)


# -- casts -------------------------------------------------------------------------------


def _cast_encode(element: str) -> Callable[..., Any]:
    def encode(w: Tensor, **_: Any) -> tuple[dict[str, Field], dict[str, Any]]:
        fmt = get_element(element)
        return {"codes": make_field(fmt.encode(_float32(w)), fmt)}, {}

    return encode


def _cast_decode(stored: StoredTensor) -> Tensor:
    return stored.codes.values().reshape(stored.shape).to(stored.dtype)


def _element_invert(stored: StoredTensor, values: Tensor, scales: Tensor | None, zero_points: Tensor | None) -> Tensor:
    """The inverse of a format whose codes are an element format's, times a scale where it
    has one (casts, fp8, nf4 with its absmax, MX with its 2^e): the element's rounding of
    w / s; saturating where scaled, except in a format with an Inf code (an Inf weight is
    then that code: a scaled max that overflowed decodes to Inf too, and is kept)."""
    element = stored.codes.element
    if scales is None and element.kind == "torch" and values.dtype in (element.dtype, torch.float32):
        # the bits themselves (NaN payloads kept, which a cast would not): bfloat16 is the
        # top half of a float32, float16 is exact in float32 but not a bit slice of it
        if values.dtype == element.dtype:
            return element.encode(values)
        if element.dtype == torch.bfloat16:
            return (values.contiguous().view(torch.int32).long() >> 16) & 0xFFFF
    if scales is None:
        return element.encode(values)
    scaled = values.double() / scales.double()
    scaled = torch.where(scales == 0, torch.zeros_like(scaled), scaled)
    return element.encode(scaled, saturate=element.special != "ieee")


# -- integers ----------------------------------------------------------------------------


def _int_encode(bits: int, per: str) -> Callable[..., Any]:
    def encode(w: Tensor, group_size: int = 128, pad: bool = False, asymmetric: bool = False) -> tuple[dict[str, Field], dict[str, Any]]:
        w = _float32(w)
        if per == "tensor":
            grouped, layout = w.reshape(1, 1, -1), {"rows": 1, "columns": w.numel(), "padded_columns": w.numel(), "group_size": w.numel()}
        elif per == "row":
            rows = _rows(w)
            grouped, layout = rows.unsqueeze(1), {"rows": rows.shape[0], "columns": rows.shape[1], "padded_columns": rows.shape[1], "group_size": rows.shape[1]}
        else:
            grouped, layout = _grouped(w, group_size, pad)
        qmax = (1 << (bits - 1)) - 1
        fields = {}
        if asymmetric:
            low = grouped.amin(dim=2, keepdim=True).clamp(max=0)
            high = grouped.amax(dim=2, keepdim=True).clamp(min=0)
            scale = _nonzero((high - low) / (2 * qmax + 1))
            zero = torch.round(-low / scale).clamp(0, 2 * qmax + 1)
            codes = (torch.round(grouped / scale) + zero).clamp(0, 2 * qmax + 1).long()
            element, fields["zero_points"] = get_element(f"uint{bits}"), make_field(zero.long(), get_element(f"uint{bits}"))
        else:
            scale = _nonzero(grouped.abs().amax(dim=2, keepdim=True) / qmax)
            codes = torch.round(grouped / scale).clamp(-qmax - (bits == 4), qmax).long()
            element = get_element(f"int{bits}")
        packing = "low-first" if bits == 4 else None
        fields["codes"] = make_field(codes & ((1 << bits) - 1), element, packing)
        fields["scales"] = make_field(get_element("float32").encode(scale), get_element("float32"))
        return fields, dict(layout, asymmetric=asymmetric)

    return encode


def _int_invert(stored: StoredTensor, values: Tensor, scales: Tensor, zero_points: Tensor | None) -> Tensor:
    """code = round(w / s) (+ z), clamped to the element's range: exact where the decoded
    value w = (code - z) s (float32) determines the code."""
    element = stored.codes.element
    # an Inf weight (a product that overflowed) is the code furthest out on its side
    q = torch.nan_to_num(torch.round(values.double() / scales.double()), nan=0.0, posinf=1e9, neginf=-1e9)
    if zero_points is not None:
        q = q + zero_points.double()
    return q.clamp(element.low, element.high).long() & ((1 << element.bits) - 1)


def _int_decode(stored: StoredTensor) -> Tensor:
    lay = stored.layout
    groups = lay["padded_columns"] // lay["group_size"]
    shape = (lay["rows"], groups, lay["group_size"])
    codes = stored.codes.values()[: lay["rows"] * lay["padded_columns"]].reshape(shape)
    scale = stored.scales.values().reshape(lay["rows"], groups, 1)
    if stored.zero_points is not None:
        codes = codes - stored.zero_points.values().reshape(lay["rows"], groups, 1)
    return _ungroup((codes * scale).reshape(-1), stored)


# -- nf4 ---------------------------------------------------------------------------------


def _nf4_encode(w: Tensor, block_size: int = 64) -> tuple[dict[str, Field], dict[str, Any]]:
    flat = _float32(w).reshape(-1)
    n = flat.numel()
    blocks = -(-n // block_size)
    padded = torch.cat([flat, flat.new_zeros(blocks * block_size - n)]).reshape(blocks, block_size)
    absmax = padded.abs().amax(dim=1, keepdim=True)
    scaled = padded * (1.0 / _nonzero(absmax))  # bitsandbytes multiplies by the reciprocal
    codes = get_element("nf4").encode(scaled).reshape(-1)[:n]
    return {
        "codes": make_field(codes, get_element("nf4"), "high-first"),
        "scales": make_field(get_element("float32").encode(absmax), get_element("float32")),
    }, {"block_size": block_size}


def _nf4_decode(stored: StoredTensor) -> Tensor:
    block = stored.layout["block_size"]
    values = stored.codes.values()
    absmax = stored.scales.values().repeat_interleave(block)[: values.numel()]
    return (values * absmax).reshape(stored.shape).to(stored.dtype)


# -- fp8 ---------------------------------------------------------------------------------


def _fp8_encode(element: str) -> Callable[..., Any]:
    def encode(w: Tensor, per_channel: bool = False) -> tuple[dict[str, Field], dict[str, Any]]:
        fmt = get_element(element)
        if not per_channel:
            return {"codes": make_field(fmt.encode(_float32(w)), fmt)}, {"per_channel": False}
        rows = _rows(_float32(w))
        scale = _nonzero(rows.abs().amax(dim=1, keepdim=True) / fmt.max)
        return {
            "codes": make_field(fmt.encode(rows / scale, saturate=True), fmt),
            "scales": make_field(get_element("float32").encode(scale), get_element("float32")),
        }, {"per_channel": True}

    return encode


def _fp8_decode(stored: StoredTensor) -> Tensor:
    values = stored.codes.values()
    if stored.scales is not None:
        values = (values.reshape(stored.scales.count, -1) * stored.scales.values().reshape(-1, 1)).reshape(-1)
    return values.reshape(stored.shape).to(stored.dtype)


# -- OCP MX ------------------------------------------------------------------------------

MX_BLOCK = 32
MX_ELEMENTS = {"mxfp8": "fp8-e4m3", "mxfp6": "fp6-e2m3", "mxfp4": "fp4-e2m1"}


def mx_scale_exponents(blocks: Tensor, element: ElementFormat) -> Tensor:
    """The shared exponent e of each block (the last dimension), int64; NaN blocks: 128."""
    amax = blocks.abs().amax(dim=-1)
    _, exp = torch.frexp(amax)  # amax = m 2^exp, m in [0.5, 1): floor(log2(amax)) = exp - 1
    e = (exp.long() - 1 - element.max_exponent).clamp(-127, 127)
    e = torch.where(amax == 0, torch.full_like(e, -127), e)
    return torch.where(torch.isfinite(amax), e, torch.full_like(e, 128))


def _mx_encode(name: str) -> Callable[..., Any]:
    def encode(w: Tensor, pad: bool = False) -> tuple[dict[str, Field], dict[str, Any]]:
        element = get_element(MX_ELEMENTS[name])
        grouped, layout = _grouped(w, MX_BLOCK, pad)
        e = mx_scale_exponents(grouped, element)
        power = torch.pow(2.0, torch.where(e == 128, torch.zeros_like(e), e).double()).unsqueeze(-1)
        codes = element.encode(grouped.double() / power, saturate=True)
        return {
            "codes": make_field(codes, element),
            "scales": make_field(e + 127, get_element("e8m0")),
        }, layout

    return encode


def _mx_decode(stored: StoredTensor) -> Tensor:
    values = stored.codes.values().reshape(-1, MX_BLOCK)
    return _ungroup((values * stored.scales.values().reshape(-1, 1)).reshape(-1), stored)


def _registry() -> dict[str, Quantizer]:
    out = [Quantizer(n, {}, _cast_encode(n), _cast_decode, invert=_element_invert) for n in ("float32", "float16", "bfloat16")]
    out += [
        Quantizer("int8", {}, _int_encode(8, "tensor"), _int_decode, invert=_int_invert),
        Quantizer("int8-channel", {}, _int_encode(8, "row"), _int_decode, invert=_int_invert),
        Quantizer("int8-group", {"group_size": 128, "pad": False}, _int_encode(8, "group"), _int_decode, True, _int_invert),
        Quantizer("int4", {"group_size": 128, "asymmetric": False, "pad": False}, _int_encode(4, "group"), _int_decode, True, _int_invert),
        Quantizer("nf4", {"block_size": 64}, _nf4_encode, _nf4_decode, invert=_element_invert),
    ]
    out += [Quantizer(n, {"per_channel": False}, _fp8_encode(n), _fp8_decode, invert=_element_invert) for n in ("fp8-e4m3", "fp8-e5m2")]
    out += [Quantizer(n, {"pad": False}, _mx_encode(n), _mx_decode, True, _element_invert) for n in MX_ELEMENTS]
    return {q.name: q for q in out}


#: name -> quantiser
QUANTIZERS: dict[str, Quantizer] = _registry()


def get_quantizer(name: str) -> Quantizer:
    """The quantiser called ``name``.

    Raises:
        ParamCorruptError: for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in QUANTIZERS:
        raise ParamCorruptError(f"unknown quantisation format {name!r}; expected one of {', '.join(QUANTIZERS)}")
    return QUANTIZERS[name]


def check_quantize(format: str, shape: torch.Size | tuple[int, ...], options: dict[str, Any], name: str = "tensor") -> dict[str, Any]:
    """The options of ``format`` for a tensor of ``shape``, defaults filled in, checked.

    Raises:
        ParamCorruptError: an unknown format or option, a group or block size that is not a
            positive integer, a group size that does not divide the rows' length without
            ``pad=True``, int4 with an odd number of codes without ``pad=True``, an empty
            tensor.
    """
    quantizer = get_quantizer(format)
    unknown = sorted(set(options) - set(quantizer.defaults))
    if unknown:
        valid = ", ".join(quantizer.defaults) or "none"
        raise ParamCorruptError(f"unknown option {', '.join(unknown)} for format {format!r}; its options: {valid}")
    out = {**quantizer.defaults, **options}
    for key in ("group_size", "block_size"):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1):
            raise ParamCorruptError(f"{key} must be a positive integer, got {key}={out[key]!r}")
    for key in ("pad", "asymmetric", "per_channel"):
        if key in out and not isinstance(out[key], bool):
            raise InputTypeError(f"{key} must be True or False, got {key}={out[key]!r}")
    shape = tuple(shape)
    numel = int(torch.Size(shape).numel())
    if numel == 0:
        raise ParamCorruptError(f"{name} is empty (shape {list(shape)}); nothing to quantise")
    if quantizer.grouped:
        group = MX_BLOCK if format in MX_ELEMENTS else out["group_size"]
        rows, columns = (shape[0], numel // shape[0]) if len(shape) >= 2 else (1, numel)
        padded = -(-columns // group) * group
        if padded != columns and not out["pad"]:
            raise ParamCorruptError(
                f"group size {group} of {format} does not divide the {columns} columns of {name} (shape {list(shape)}, "
                f"rows of {columns}); give pad=True to append {padded - columns} zeros to each row ({padded} columns)"
            )
        if format == "int4" and rows * padded % 2 and not out["pad"]:
            raise ParamCorruptError(f"int4 packs two codes per byte: {name} has an odd number of codes ({rows * padded}); give pad=True to add one zero code")
    return out


def quantize_tensor(tensor: Tensor, format: str, name: str = "tensor", **options: Any) -> StoredTensor:
    """``tensor`` (floating point) as stored in ``format`` (see the module's table).

    Example:
        >>> stored = quantize_tensor(torch.tensor([[0.5, -1.0, 0.25, 2.0]]), "int8")
        >>> stored.codes.codes().tolist(), stored.scales.values().tolist()
        ([32, 192, 16, 127], [0.015748031437397003])
        >>> stored.dequantize()
        tensor([[ 0.5039, -1.0079,  0.2520,  2.0000]])

    Raises:
        InputTypeError: for a tensor that is not floating point.
        ParamCorruptError: as :func:`check_quantize`.
    """
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise InputTypeError(f"{name} must be a floating-point tensor, got {getattr(tensor, 'dtype', type(tensor).__name__)}")
    quantizer = get_quantizer(format)
    options = check_quantize(format, tensor.shape, options, name)
    fields, layout = quantizer.encode(tensor, **options)
    return StoredTensor(format, tensor.shape, tensor.dtype, fields, dict(layout, **options), quantizer.decode, quantizer.invert)
