"""Element formats: the number formats one stored entry (a code, a scale, a zero point) is in.

Every format maps values to integer *codes* (non-negative int64 in [0, 2^bits)) and codes back
to values (float32: every value of these formats is a float32):

- small floats (OCP names): ``fp8-e4m3`` (torch's ``float8_e4m3fn``: bias 7, no Inf, NaN at
  S.1111.111, max 448), ``fp8-e5m2`` (``float8_e5m2``: bias 15, IEEE Inf and NaN, max 57344),
  the OCP MX elements ``fp6-e2m3`` (bias 1, max 7.5), ``fp6-e3m2`` (bias 3, max 28),
  ``fp4-e2m1`` (bias 1, max 6) — no Inf, no NaN — and the MX scale format ``e8m0`` (unsigned,
  8 exponent bits, bias 127: 2^(code - 127), code 255 is NaN, no zero);
- integers: ``int8``, ``int4`` (two's complement), ``uint4``;
- ``nf4``: the 16 NormalFloat levels of QLoRA (Dettmers et al., 2023), as bitsandbytes
  defines them (:data:`NF4_LEVELS`);
- ``float32``, ``float16``, ``bfloat16``: IEEE bit patterns (the formats scales are kept in).

Rounding (:meth:`ElementFormat.encode`) is round to nearest, ties to even, exactly as
``ml_dtypes`` 0.7 casts float32 (the reference of ``tests/test_formats_elements.py``):

- overflow, without ``saturate``: ``fp8-e4m3`` gives NaN (it has no Inf), ``fp8-e5m2`` Inf,
  ``e8m0`` NaN (at or above 1.5 * 2^127); the FP6/FP4 formats, which have neither, saturate
  to +-max. With ``saturate=True`` (what the OCP MX quantisation and scaled FP8 do) every
  format clamps to +-max;
- NaN: ``fp8-e4m3`` -> S.1111.111, ``fp8-e5m2`` -> S.11111.10, ``e8m0`` -> 255; the FP6/FP4
  formats have no NaN and, as ``ml_dtypes`` does, write a zero whose sign bit is the NaN's
  inverted (the OCP spec leaves this to the implementation); Inf is an overflow;
- ``e8m0``: a tie between two powers of two goes to the larger (its implicit significand
  bit is odd); zero, negative values and NaN give NaN; a positive value below 2^-127 gives
  2^-127;
- integers: ``round`` (ties to even), clamped to the format's range; ``nf4``: the nearest
  level, a tie to the lower one (bitsandbytes' ``x > midpoint`` decision tree, its midpoints
  float32 constants).

Bit classes (bit 0 the least significant), as :class:`~paramcorrupt.formats.NumberFormat`:
``any``, ``sign`` (not in ``e8m0``, ``uint4`` and ``nf4``), ``exponent`` and ``mantissa``
(floats; ``e8m0`` has no mantissa), ``msb`` (a float's top exponent bit, else the top bit),
or a bit index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ParamCorruptError
from .numbers import select_bits

__all__ = ["ELEMENTS", "NF4_LEVELS", "ElementFormat", "get_element"]

#: the 16 NormalFloat levels, code 0 to 15: bitsandbytes ``functional.get_4bit_type("nf4")``
#: (and ``csrc/kernels.cu``'s ``nf4_data``), from QLoRA (Dettmers et al., 2023, appendix E)
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


@dataclass(frozen=True)
class ElementFormat:
    """One element format: its width, kind and the layout of its bits.

    ``kind`` is ``"float"`` (a small float: ``exponent_bits``, ``mantissa_bits``, ``bias``,
    ``special``: ``"fn"`` NaN at all ones, ``"ieee"`` Inf and NaN, ``"none"``, ``"e8m0"``),
    ``"int"`` (``low``..``high``), ``"table"`` (``levels``) or ``"torch"`` (an IEEE dtype).
    """

    name: str
    bits: int
    kind: str
    signed: bool = True
    exponent_bits: int = 0
    mantissa_bits: int = 0
    bias: int = 0
    special: str = "none"
    low: int = 0
    high: int = 0
    levels: tuple[float, ...] = ()
    dtype: torch.dtype | None = None  # the torch dtype holding it, where torch has one
    _tables: dict = field(default_factory=dict, compare=False, repr=False)

    # -- bits ----------------------------------------------------------------------------

    @property
    def sign_bit(self) -> int | None:
        return self.bits - 1 if self.signed and self.kind != "table" else None

    @property
    def exponent(self) -> tuple[int, ...]:
        m = self.mantissa_bits
        return tuple(range(m, m + self.exponent_bits))

    @property
    def mantissa(self) -> tuple[int, ...]:
        return tuple(range(self.mantissa_bits))

    def select(self, bits: str | int) -> tuple[int, ...]:
        """The bit positions of a bit class or index, in increasing order
        (:func:`~paramcorrupt.formats.numbers.select_bits`).

        Raises:
            ParamCorruptError: for an unknown class, a class the format lacks, or an index
                out of range.
        """
        sign = () if self.sign_bit is None else (self.sign_bit,)
        return select_bits(self.name, self.bits, sign, self.exponent, self.mantissa, bits)

    # -- values ----------------------------------------------------------------------------

    @property
    def max(self) -> float:
        """The largest finite value."""
        return float(self.values()[torch.isfinite(self.values())].max())

    def values(self) -> Tensor:
        """The value of every code 0 .. 2^bits - 1 (float32); not for ``float32``/``float16``/``bfloat16``."""
        if "values" not in self._tables:
            if self.kind == "torch":
                raise ParamCorruptError(f"{self.name} has too many codes for a table")
            self._tables["values"] = torch.tensor([self._value(c) for c in range(1 << self.bits)], dtype=torch.float32)
        return self._tables["values"]

    def _value(self, code: int) -> float:
        if self.kind == "table":
            return self.levels[code]
        if self.kind == "int":
            return float(code - (1 << self.bits) if self.signed and code >= 1 << (self.bits - 1) else code)
        if self.special == "e8m0":
            return float("nan") if code == 255 else 2.0 ** (code - self.bias)
        m, ebits = self.mantissa_bits, self.exponent_bits
        sign = -1.0 if self.signed and code >> (self.bits - 1) else 1.0
        e, frac = (code >> m) & ((1 << ebits) - 1), code & ((1 << m) - 1)
        top = e == (1 << ebits) - 1
        if self.special == "ieee" and top:
            return sign * float("inf") if frac == 0 else float("nan")
        if self.special == "fn" and top and frac == (1 << m) - 1:
            return float("nan")
        if e == 0:
            return sign * frac / (1 << m) * 2.0 ** (1 - self.bias)
        return sign * (1 + frac / (1 << m)) * 2.0 ** (e - self.bias)

    def decode(self, codes: Tensor) -> Tensor:
        """Values (float32; a ``"torch"`` format: its own dtype) of integer codes."""
        codes = codes.long()
        if self.kind == "torch":
            view = {32: torch.int32, 16: torch.int16}[self.bits]
            signed = torch.where(codes >= 1 << (self.bits - 1), codes - (1 << self.bits), codes)
            return signed.to(view).view(self.dtype)
        return self.values().to(codes.device)[codes]

    def encode(self, values: Tensor, saturate: bool = False) -> Tensor:
        """The codes (int64) of ``values`` rounded to the format (see the module's rules)."""
        mask = (1 << self.bits) - 1
        if self.kind == "torch":
            view = {32: torch.int32, 16: torch.int16}[self.bits]
            return values.detach().to(self.dtype).view(view).long() & mask
        x = values.detach().double()
        if self.kind == "int":
            return torch.round(torch.nan_to_num(x)).clamp(self.low, self.high).long() & mask
        if self.kind == "table":
            levels = torch.tensor(self.levels, dtype=torch.float64, device=x.device)
            mid = ((levels[1:] + levels[:-1]) / 2).float().double()  # float32 constants, as bitsandbytes'
            return torch.searchsorted(mid, x.clamp(-1.0, 1.0).contiguous(), side="left")
        return self._encode_float(x, saturate)

    def _magnitudes(self, saturate: bool) -> tuple[Tensor, Tensor]:
        """The non-negative finite values in increasing order and their codes (without
        ``saturate``, and where the format has one, one more: the next power step above max,
        whose code is the overflow code)."""
        key = ("magnitudes", saturate)
        if key not in self._tables:
            half = 1 << (self.bits - 1) if self.signed else 1 << self.bits
            values = self.values()[:half].double()
            codes = torch.arange(half)
            keep = torch.isfinite(values)
            values, codes = values[keep], codes[keep]
            if not saturate and self.special != "none":
                top = int(codes[-1])
                step = 2.0 ** (self.max_exponent - self.mantissa_bits)
                values = torch.cat([values, values[-1:] + step])
                codes = torch.cat([codes, torch.tensor([top + 1])])
            self._tables[key] = (values, codes)
        return self._tables[key]

    @property
    def max_exponent(self) -> int:
        """The exponent of the largest normal value (emax of the OCP spec)."""
        return int(torch.floor(torch.log2(torch.tensor(self.max, dtype=torch.float64))))

    def _encode_float(self, x: Tensor, saturate: bool) -> Tensor:
        values, codes = (t.to(x.device) for t in self._magnitudes(saturate))
        a = x.abs()
        i = torch.searchsorted(values, a.contiguous())
        hi, lo = i.clamp(max=len(values) - 1), (i - 1).clamp(min=0)
        mid = (values[lo] + values[hi]) / 2
        # a tie goes to the even significand: the even code, or up where the significand is
        # the implicit bit alone (e8m0)
        tie_up = (codes[hi] & 1) == 0 if self.mantissa_bits else torch.ones_like(hi, dtype=torch.bool)
        out = codes[torch.where((a > mid) | ((a == mid) & tie_up), hi, lo)]
        nan = torch.isnan(x)
        if self.special == "e8m0":
            return torch.where(nan | (x <= 0), torch.full_like(out, 255), out)
        sign = torch.signbit(x).long() << (self.bits - 1)
        if self.special == "fn":
            out = torch.where(nan, torch.full_like(out, (1 << (self.bits - 1)) - 1), out)
        elif self.special == "ieee":
            out = torch.where(nan, torch.full_like(out, (1 << (self.bits - 1)) - 2), out)
        else:  # no NaN in the format: a zero with the NaN's sign bit inverted (ml_dtypes)
            out = torch.where(nan, torch.full_like(out, 1 << (self.bits - 1)), out)
        return out | sign if self.special != "none" else torch.where(nan, out ^ sign, out | sign)


def _float(name: str, ebits: int, mbits: int, bias: int, special: str, dtype: torch.dtype | None = None) -> ElementFormat:
    bits = 1 + ebits + mbits
    return ElementFormat(name, bits, "float", True, ebits, mbits, bias, special, dtype=dtype)


#: name -> element format
ELEMENTS: dict[str, ElementFormat] = {
    f.name: f
    for f in (
        _float("fp8-e4m3", 4, 3, 7, "fn", torch.float8_e4m3fn),
        _float("fp8-e5m2", 5, 2, 15, "ieee", torch.float8_e5m2),
        _float("fp6-e2m3", 2, 3, 1, "none"),
        _float("fp6-e3m2", 3, 2, 3, "none"),
        _float("fp4-e2m1", 2, 1, 1, "none"),
        ElementFormat("e8m0", 8, "float", False, 8, 0, 127, "e8m0", dtype=getattr(torch, "float8_e8m0fnu", None)),
        ElementFormat("int8", 8, "int", True, low=-128, high=127, dtype=torch.int8),
        ElementFormat("int4", 4, "int", True, low=-8, high=7),
        ElementFormat("uint4", 4, "int", False, low=0, high=15),
        ElementFormat("nf4", 4, "table", False, levels=NF4_LEVELS),
        ElementFormat("float32", 32, "torch", True, 8, 23, 127, "ieee", dtype=torch.float32),
        ElementFormat("float16", 16, "torch", True, 5, 10, 15, "ieee", dtype=torch.float16),
        ElementFormat("bfloat16", 16, "torch", True, 8, 7, 127, "ieee", dtype=torch.bfloat16),
    )
}


def get_element(name: str) -> ElementFormat:
    """The element format called ``name``.

    Raises:
        ParamCorruptError: for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in ELEMENTS:
        raise ParamCorruptError(f"unknown element format {name!r}; expected one of {', '.join(ELEMENTS)}")
    return ELEMENTS[name]
