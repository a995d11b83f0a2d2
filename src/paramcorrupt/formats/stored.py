"""A tensor as stored: its fields (codes, scales, zero points), each in its element format.

A :class:`Field` is one stored array: ``data`` (the tensor as it sits in memory: packed
4-bit codes in ``uint8``, FP8 codes in torch's float8 dtype, scales in float32 or E8M0
codes in ``uint8``), its element format, its width in bits and its number of entries.
:meth:`Field.codes` gives every entry as an integer code, :meth:`Field.integer_view` the
memory itself as integers (flip a bit there and exactly that stored bit changes), and
:meth:`Field.with_codes` builds the field holding other codes.

A :class:`StoredTensor` is the quantised form of one float tensor: the quantiser's name,
the float tensor's shape and dtype, its fields and its layout (group size, padding);
:meth:`StoredTensor.dequantize` gives back the float tensor the deployed model computes with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .elements import ElementFormat, get_element

__all__ = ["PACKINGS", "Field", "StoredTensor", "pack_nibbles", "unpack_nibbles"]

#: how two 4-bit codes share a byte: entry 2i in the low nibble (bits 0-3) and 2i + 1 in
#: the high one ("low-first"), or 2i in the high nibble ("high-first", bitsandbytes' NF4)
PACKINGS = ("low-first", "high-first")

_INT_VIEWS = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


def pack_nibbles(codes: Tensor, packing: str = "low-first") -> Tensor:
    """4-bit codes (an even number of them, in [0, 16)) packed two per ``uint8``."""
    pairs = codes.reshape(-1, 2).to(torch.uint8)
    first, second = pairs[:, 0], pairs[:, 1]
    return first | (second << 4) if packing == "low-first" else (first << 4) | second


def unpack_nibbles(data: Tensor, packing: str = "low-first") -> Tensor:
    """The 4-bit codes (int64) of packed bytes, in storage order."""
    low, high = (data & 0xF).long(), (data >> 4).long()
    pairs = (low, high) if packing == "low-first" else (high, low)
    return torch.stack(pairs, dim=1).reshape(-1)


@dataclass(frozen=True)
class Field:
    """One stored array: ``data`` as in memory, in ``format`` (an element format's name),
    ``bits`` wide, ``count`` entries (``packing`` set where two 4-bit entries share a byte)."""

    data: Tensor
    format: str
    bits: int
    count: int
    packing: str | None = None
    #: a field whose codes are not held: entries (int64) -> their codes, re-derived (``data``
    #: is then a ``meta`` tensor: the shape and dtype the codes would have in memory)
    derive: Callable[[Tensor], Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def element(self) -> ElementFormat:
        return get_element(self.format)

    @property
    def nbits(self) -> int:
        """The bits this field takes in the stored image (padding entries included), held or not."""
        return self.data.numel() * self.data.element_size() * 8

    @property
    def derived(self) -> bool:
        """Whether the codes are re-derived on demand instead of held (see :meth:`StoredTensor.derived`)."""
        return self.derive is not None

    @property
    def entries(self) -> int:
        """The entries the field holds in memory (a packed byte's unused nibble included)."""
        return self.data.numel() * (2 if self.packing is not None else 1)

    def held(self) -> Field:
        """This field with its codes held in memory (itself when they are)."""
        if self.derive is None:
            return self
        codes = self.derive(torch.arange(self.entries))
        data = encode_field(codes, self.data.dtype, self.bits, self.packing, self.data.shape)
        return Field(data, self.format, self.bits, self.count, self.packing)

    def integer_view(self) -> Tensor:
        """``data`` viewed (not copied) as unsigned bytes or signed 16/32-bit integers, one
        entry per element of ``data`` (a packed byte holds two 4-bit entries); of a derived
        field, a new tensor holding the re-derived codes (writing into it changes nothing)."""
        data = self.held().data
        return data.view(_INT_VIEWS[data.element_size() * 8])

    def at(self, entries: Tensor) -> Tensor:
        """The codes (int64) of ``entries`` (storage order), read from memory or re-derived:
        O(entries) work and memory."""
        entries = entries.long()
        if self.derive is not None:
            return self.derive(entries)
        view = self.data.view(_INT_VIEWS[self.data.element_size() * 8]).reshape(-1)
        index, shift = self.locate(entries, torch.zeros_like(entries))
        return (view[index.to(view.device)].long() >> shift.to(view.device)) & ((1 << self.bits) - 1)

    def locate(self, entries: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
        """Where bit ``bits[j]`` of entry ``entries[j]`` sits: (index into the flat
        :meth:`integer_view`, bit position in that integer)."""
        if self.packing is None:
            return entries, bits
        high = (entries % 2 == 1) if self.packing == "low-first" else (entries % 2 == 0)
        return entries // 2, bits + 4 * high.long()

    def codes(self) -> Tensor:
        """Every entry's code, int64 in [0, 2^bits), in storage order."""
        if self.derive is not None:
            return self.derive(torch.arange(self.entries))[: self.count]
        if self.packing is not None:
            return unpack_nibbles(self.integer_view(), self.packing)[: self.count]
        return self.integer_view().long() & ((1 << self.bits) - 1)

    def values(self) -> Tensor:
        """Every entry's value (its element format's decoding, float32 or the float dtype)."""
        return self.element.decode(self.codes())

    def with_codes(self, codes: Tensor) -> Field:
        """The same field holding ``codes`` (int64 in [0, 2^bits), ``count`` of them)."""
        return replace(self, data=encode_field(codes, self.data.dtype, self.bits, self.packing, self.data.shape), derive=None)


def encode_field(codes: Tensor, dtype: torch.dtype, bits: int, packing: str | None, shape: Any = None) -> Tensor:
    """The stored tensor of ``codes``: packed (``packing``), or one per element of ``dtype``."""
    if packing is not None:
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        data = pack_nibbles(codes, packing)
    else:
        width = torch.empty(0, dtype=dtype).element_size() * 8
        signed = torch.where(codes >= 1 << (width - 1), codes - (1 << width), codes) if width > 8 else codes
        data = signed.to(_INT_VIEWS[width]).view(dtype)
    return data if shape is None else data.reshape(shape)


def make_field(codes: Tensor, element: ElementFormat, packing: str | None = None, shape: Any = None) -> Field:
    """A field of ``codes`` in ``element``: packed two per byte (4-bit codes, ``packing``),
    in the element's torch dtype where it has one (FP8, float32, int8), else ``uint8``."""
    codes = codes.reshape(-1)
    dtype = element.dtype if element.dtype is not None else torch.uint8
    return Field(encode_field(codes, dtype, element.bits, packing, shape), element.name, element.bits, codes.numel(), packing)


@dataclass
class StoredTensor:
    """The stored form of one float tensor.

    Attributes:
        format: the quantiser's name (``int4``, ``mxfp4``, ...).
        shape, dtype: the float tensor's.
        fields: ``codes`` and, where the format has them, ``scales`` and ``zero_points``.
        layout: what the quantiser needs to decode (``group_size``, ``rows``, ``columns``,
            ``padded_columns``, ...): plain numbers and strings.

    A stored tensor of :func:`~paramcorrupt.quantize` does not hold its codes: its codes
    field is *derived* from the model's weights (which hold the decoded values) and the
    held scales and zero points (:func:`~paramcorrupt.formats.derive.derive_codes`).
    """

    format: str
    shape: torch.Size
    dtype: torch.dtype
    fields: dict[str, Field]
    layout: dict[str, Any] = field(default_factory=dict)
    decoder: Callable[[StoredTensor], Tensor] | None = field(default=None, repr=False, compare=False)
    #: the quantiser's inverse: (self, weight values, their scales, their zero points) -> codes
    inverter: Callable[..., Tensor] | None = field(default=None, repr=False, compare=False)
    #: where the codes field is derived: (entries, codes) of the entries whose code the
    #: weights do not determine, kept (see :func:`~paramcorrupt.formats.derive.derive_codes`)
    kept: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def codes(self) -> Field:
        return self.fields["codes"]

    @property
    def scales(self) -> Field | None:
        return self.fields.get("scales")

    @property
    def zero_points(self) -> Field | None:
        return self.fields.get("zero_points")

    @property
    def nbits(self) -> int:
        """The bits of the whole stored image (every field, padding included)."""
        return sum(f.nbits for f in self.fields.values())

    @property
    def held_bytes(self) -> int:
        """The bytes this stored tensor holds in memory: its held fields (a derived codes
        field holds none) and the codes kept beside a derived field (``layout["kept"]``)."""
        kept = sum(t.numel() * t.element_size() for t in self.kept or ())
        return kept + sum(f.data.numel() * f.data.element_size() for f in self.fields.values() if not f.derived)

    def held(self) -> StoredTensor:
        """A copy whose fields all hold their codes in memory (itself when they do)."""
        if not any(f.derived for f in self.fields.values()):
            return self
        return replace(self, fields={name: f.held() for name, f in self.fields.items()})

    def with_field(self, name: str, new: Field) -> StoredTensor:
        """A copy whose field ``name`` is ``new`` (the others shared)."""
        return replace(self, fields={**self.fields, name: new})

    def dequantize(self) -> Tensor:
        """The float tensor (``shape``, ``dtype``) the stored fields decode to."""
        assert self.decoder is not None, "a StoredTensor is made by a quantiser"
        return self.decoder(self)
