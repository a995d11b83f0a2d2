"""Stored number formats: the bits a weight is kept in, and back.

A format turns the values of a parameter into integer *codes* (its bit patterns, as
non-negative int64) and codes back into values of the parameter's dtype:

- ``float32``, ``float16``, ``bfloat16``: IEEE-754 (bfloat16: 8 exponent bits) bit
  patterns of the value cast to that format. On a parameter of the same dtype the round trip
  is exact; on a wider one (a float32 model stored as bfloat16) the flipped weight is the
  flipped bfloat16 value, the others keep their own values.
- ``int8``, ``int8-channel``: symmetric quantisation to two's-complement int8, code =
  clamp(round(w / s), -127, 127), with s = max |w| / 127 per tensor, or per output channel
  (dim 0; one-dimensional tensors, biases and norms, per tensor). A flip acts on the code's
  8 bits and the result is dequantised (code * s; a flipped sign bit can give -128 s).
  The scale is that of the clean weights (a fault corrupts the stored codes, not the scale).

Bit classes (bit 0 is the least significant): ``any``; ``sign``; ``exponent`` and
``mantissa`` (float formats); ``msb``, the most significant bit: the top exponent bit of a
float format (the one whose flip turns 1.0 into 2^128 in float32), bit 7 (the sign bit,
weight -128) of int8; or an explicit bit index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputTypeError, ParamCorruptError

__all__ = ["BIT_CLASSES", "FORMATS", "NumberFormat", "bits_setting", "get_format", "select_bits"]

BIT_CLASSES = ("any", "sign", "exponent", "mantissa", "msb")


def select_bits(
    name: str, width: int, sign: tuple[int, ...], exponent: tuple[int, ...], mantissa: tuple[int, ...], bits: str | int
) -> tuple[int, ...]:
    """The bit positions of a bit class or index in a ``width``-bit format with these sign,
    exponent and mantissa bits, in increasing order: ``any``; ``sign``, ``exponent``,
    ``mantissa``; ``msb`` (the top exponent bit of a float format, the top bit otherwise);
    or an explicit index. One rule for the stored number formats and the element formats.

    Example:
        >>> select_bits("fp8-e4m3", 8, (7,), (3, 4, 5, 6), (0, 1, 2), "msb")
        (6,)

    Raises:
        ParamCorruptError: for an unknown class, a class the format lacks, or an index out of
            range (:class:`~paramcorrupt.errors.InputTypeError` for neither a str nor an int).
    """
    if isinstance(bits, bool) or not isinstance(bits, int | str):
        raise InputTypeError(f"bits must be a bit class ({', '.join(BIT_CLASSES)}) or an index, got {bits!r}")
    if isinstance(bits, int):
        if not 0 <= bits < width:
            raise ParamCorruptError(f"bit index {bits} is out of range for {name} (0 to {width - 1})")
        return (bits,)
    if bits == "any":
        return tuple(range(width))
    if bits == "msb":
        return (max(exponent),) if exponent else (width - 1,)
    found = {"sign": sign, "exponent": exponent, "mantissa": mantissa}
    if bits not in found:
        raise ParamCorruptError(f"unknown bit class {bits!r}; expected one of {', '.join(BIT_CLASSES)} or a bit index")
    if not found[bits]:
        present = ", ".join(c for c in BIT_CLASSES if c not in found or found[c])
        raise ParamCorruptError(f"{name} has no {bits} bits; choose one of {present} or a bit index")
    return found[bits]


#: bits -> the masks of :attr:`NumberFormat.signed_masks` (made once)
_SIGNED_MASKS: dict[int, Tensor] = {}


@dataclass(frozen=True)
class NumberFormat:
    """One stored format: its width, where its sign, exponent and mantissa bits are."""

    name: str
    bits: int
    sign: int
    exponent: tuple[int, ...] = ()
    mantissa: tuple[int, ...] = ()
    dtype: torch.dtype | None = None  # the float dtype (None: int8 quantisation)
    per_channel: bool = False

    @property
    def is_float(self) -> bool:
        return self.dtype is not None

    @property
    def int_view(self) -> torch.dtype:
        """The signed integer dtype of the format's width (a float's bits viewed in place)."""
        return {32: torch.int32, 16: torch.int16, 8: torch.int8}[self.bits]

    @property
    def signed_masks(self) -> Tensor:
        """``signed_masks[b]``: the value of ``1 << b`` in :attr:`int_view` (the top bit
        negative), for b in [0, bits): a bit's mask to xor into the integer view."""
        masks = _SIGNED_MASKS.get(self.bits)
        if masks is None:
            values = [(1 << b) - (1 << self.bits if b == self.bits - 1 else 0) for b in range(self.bits)]
            masks = _SIGNED_MASKS[self.bits] = torch.tensor(values, dtype=self.int_view)
        return masks

    def select(self, bits: str | int) -> tuple[int, ...]:
        """The bit positions of a bit class or index, in increasing order (:func:`select_bits`).

        Raises:
            ParamCorruptError: for an unknown class, a class the format lacks, or an index
                out of range.
        """
        return select_bits(self.name, self.bits, (self.sign,), self.exponent, self.mantissa, bits)

    # -- codes ---------------------------------------------------------------------------

    def scales(self, param: Tensor) -> Tensor:
        """int8: the quantisation scale of every row (per channel) or of the tensor (a
        1-element tensor), float64, from the clean weights; zero weights get scale 1."""
        w = param.detach().double()
        if self.per_channel and w.dim() >= 2:
            top = w.reshape(w.shape[0], -1).abs().amax(dim=1)
        else:
            top = w.abs().max().reshape(1)
        return torch.where(top > 0, top / 127.0, torch.ones_like(top))

    def scale_at(self, param: Tensor, idx: Tensor, scales: Tensor) -> Tensor:
        """int8: the scale of each of ``param``'s flat ``idx`` (``scales`` from :meth:`scales`)."""
        if scales.numel() == 1:
            return scales.expand(idx.shape)
        return scales[idx // (param.numel() // param.shape[0])]

    def encode(self, param: Tensor, idx: Tensor, scales: Tensor | None = None) -> Tensor:
        """The codes (bit patterns as int64 in [0, 2^bits)) of ``param``'s flat ``idx``."""
        values = param.detach().reshape(-1)[idx]
        if self.is_float:
            return self.encode_values(values)
        scales = self.scales(param) if scales is None else scales
        return self.encode_values(values, self.scale_at(param, idx, scales))

    def decode(self, param: Tensor, idx: Tensor, codes: Tensor, scales: Tensor | None = None) -> Tensor:
        """Values (in ``param``'s dtype) of codes at ``param``'s flat ``idx``."""
        if self.is_float:
            return self.decode_values(codes).to(param.dtype)
        scales = self.scales(param) if scales is None else scales
        return self.decode_values(codes, self.scale_at(param, idx, scales)).to(param.dtype)

    def encode_values(self, values: Tensor, scale: Tensor | None = None) -> Tensor:
        """Codes of the values themselves (int8: with each value's scale)."""
        mask = (1 << self.bits) - 1
        if self.is_float:
            view = {32: torch.int32, 16: torch.int16}[self.bits]
            return values.to(self.dtype).view(view).long() & mask
        return torch.round(values.double() / scale).clamp(-127, 127).long() & mask

    def decode_values(self, codes: Tensor, scale: Tensor | None = None) -> Tensor:
        """Values of codes: in the format's dtype (floats) or float64 (int8, times the scale)."""
        if self.is_float:
            view = {32: torch.int32, 16: torch.int16}[self.bits]
            signed = torch.where(codes >= 1 << (self.bits - 1), codes - (1 << self.bits), codes)
            return signed.to(view).view(self.dtype)
        signed = torch.where(codes >= 128, codes - 256, codes)
        return signed.double() * scale


_F32 = NumberFormat("float32", 32, 31, tuple(range(23, 31)), tuple(range(23)), torch.float32)
_F16 = NumberFormat("float16", 16, 15, tuple(range(10, 15)), tuple(range(10)), torch.float16)
_BF16 = NumberFormat("bfloat16", 16, 15, tuple(range(7, 15)), tuple(range(7)), torch.bfloat16)
_INT8 = NumberFormat("int8", 8, 7)
_INT8C = NumberFormat("int8-channel", 8, 7, per_channel=True)

#: name -> format
FORMATS: dict[str, NumberFormat] = {f.name: f for f in (_F32, _F16, _BF16, _INT8, _INT8C)}


def bits_setting(format: str, bits: str | int) -> str | int:
    """A fault model's (format, bits) setting checked: the bits as a class or an index (a
    string of digits, as a command line gives it, is an index).

    Raises:
        ValueError: for an unknown format or bit class, or an index out of range.
    """
    if isinstance(bits, str) and bits.lstrip("-").isdigit():
        bits = int(bits)
    get_format(format).select(bits)
    return bits


def get_format(name: str) -> NumberFormat:
    """The format called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in FORMATS:
        raise ParamCorruptError(f"unknown number format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]
