"""The stored fields of torchao's quantised tensors, read and written as integers (core).

A model quantised by torchao (``torchao.quantization.quantize_``) keeps each quantised
weight as a tensor subclass whose memory is a few plain tensors: the codes (``qdata``), the
scales (``scale``) and, where the type has them, the zero points (``zero_point``) and the
static activation parameters. A bit fault of such a model is a fault of those stored
tensors, written into them through an integer view of the same storage: the weight is never
dequantised, no float copy of it is made, and the original integers come back bit for bit.

The *stored image* of a torchao weight is its stored fields one after the other (in the
order of the type's ``tensor_data_names`` then ``optional_tensor_data_names``, the absent
ones left out), each flattened row-major. A fault of the image is given as image indices and
the new *integer-view values* there (the field's bits read as a signed integer of its
width: int8, int16 or int32), as int64.

torchao is never imported here: a tensor is recognised as torchao's by its class's module.
The supported types are :data:`SUPPORTED` (each tested on the installed torchao; see
``docs/torchao.md``); any other torchao tensor is refused with one
:class:`~paramcorrupt.errors.ParamCorruptError` naming it and the supported ones, before
anything changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InputTypeError, ParamCorruptError
from .numbers import NumberFormat

__all__ = [
    "SUPPORTED",
    "TORCHAO_METHODS",
    "check_methods",
    "refuse_torchao",
    "StoredField",
    "as_signed",
    "field_positions",
    "is_torchao_tensor",
    "stored_fields",
    "stored_writes",
    "torchao_type",
]

#: the torchao tensor types whose stored fields can be corrupted (class name -> what it holds)
SUPPORTED: dict[str, str] = {
    "Int8Tensor": "int8 codes (qdata), float32 scales, int8 zero points",
    "Float8Tensor": "float8 codes (qdata, e4m3fn or e5m2), float32 scales",
    "IntxUnpackedToInt8Tensor": "int1..int8 codes unpacked into int8 (qdata), scales, zero points",
}

#: the formats of the stored fields, by dtype (bit 0 least significant)
_FORMATS: dict[torch.dtype, NumberFormat] = {
    torch.int8: NumberFormat("int8", 8, 7),
    torch.float8_e4m3fn: NumberFormat("float8_e4m3fn", 8, 7, (3, 4, 5, 6), (0, 1, 2), torch.float8_e4m3fn),
    torch.float8_e5m2: NumberFormat("float8_e5m2", 8, 7, (2, 3, 4, 5, 6), (0, 1), torch.float8_e5m2),
    torch.float16: NumberFormat("float16", 16, 15, tuple(range(10, 15)), tuple(range(10)), torch.float16),
    torch.bfloat16: NumberFormat("bfloat16", 16, 15, tuple(range(7, 15)), tuple(range(7)), torch.bfloat16),
    torch.float32: NumberFormat("float32", 32, 31, tuple(range(23, 31)), tuple(range(23)), torch.float32),
}
#: the signed integer dtype a field of each width is viewed as
_VIEWS = {8: torch.int8, 16: torch.int16, 32: torch.int32}


class StoredField:
    """One stored tensor of a torchao weight: its name, the tensor, its format, and the
    integer view of its storage (the same memory: a write through it is a write into
    torchao's tensor)."""

    __slots__ = ("name", "tensor", "format", "view")

    def __init__(self, name: str, tensor: Tensor, fmt: NumberFormat) -> None:
        self.name = name
        self.tensor = tensor
        self.format = fmt
        self.view = tensor.view(_VIEWS[fmt.bits])

    @property
    def numel(self) -> int:
        return self.tensor.numel()

    def codes(self, idx: Tensor) -> Tensor:
        """The bit patterns (int64 in [0, 2^bits)) of the flat elements ``idx``."""
        flat = self.view.reshape(-1) if not self.view.is_contiguous() else self.view.view(-1)
        return flat[idx].long() & ((1 << self.format.bits) - 1)

    def __repr__(self) -> str:
        return f"StoredField({self.name!r}, {tuple(self.tensor.shape)}, {self.tensor.dtype})"


def torchao_type(tensor: Any) -> str | None:
    """The class name of a torchao tensor (``"Int8Tensor"``), or None for any other object."""
    for cls in type(tensor).__mro__:
        if cls.__module__ == "torchao" or cls.__module__.startswith("torchao."):
            return type(tensor).__name__
    return None


def is_torchao_tensor(tensor: Any) -> bool:
    """Whether ``tensor`` is one of torchao's tensor subclasses (torchao is not imported)."""
    return torchao_type(tensor) is not None


def _unsupported(name: str, kind: str, why: str = "") -> ParamCorruptError:
    return ParamCorruptError(
        f"parameter {name!r} is a torchao {kind}{why}, which cannot be corrupted; "
        f"supported torchao tensor types: {', '.join(SUPPORTED)}"
    )


#: the fault models that reach torchao weights (their stored fields); activation faults
#: (``activation-*``) leave the weights alone and run too
TORCHAO_METHODS = ("bitflip", "stuck-at", "bit-search")


def refuse_torchao(params: Mapping[str, Any], what: str) -> None:
    """Refuse ``what`` (an L_p corruption, the data set gradient) on a group holding a
    torchao weight: one :class:`~paramcorrupt.errors.ParamCorruptError` naming the first such
    parameter and what works, raised before anything changes.

    Example:
        >>> refuse_torchao({"weight": torch.zeros(2)}, "the 'random' corruption")  # no torchao weight: nothing
    """
    for name, tensor in params.items():
        kind = torchao_type(tensor)
        if kind is not None:
            raise ParamCorruptError(
                f"parameter {name!r} is a torchao {kind}: {what} needs float weights, and a torchao weight holds "
                f"codes and scales; what works on it: bit faults in place ({', '.join(TORCHAO_METHODS)}), "
                "or leave it out of the group"
            )


def check_methods(params: Mapping[str, Any], methods: Sequence[str]) -> None:
    """Refuse, before anything changes, a fault model other than :data:`TORCHAO_METHODS` (and
    the activation faults) on a group holding a torchao weight (:func:`refuse_torchao`)."""
    for method in methods:
        if method not in TORCHAO_METHODS and not method.startswith("activation-"):
            refuse_torchao(params, f"the {method!r} corruption")


def stored_fields(tensor: Tensor, name: str = "") -> list[StoredField]:
    """The stored fields of a torchao weight, in image order (absent optional ones left out).

    Raises:
        ParamCorruptError: for a torchao type outside :data:`SUPPORTED`, or a field of a dtype
            that has no stored format here; the message names the type and the supported ones.
    """
    kind = torchao_type(tensor)
    if kind is None:
        raise InputTypeError(f"parameter {name!r} is a {type(tensor).__name__}, not a torchao tensor")
    if kind not in SUPPORTED:
        raise _unsupported(name, kind)
    names = [*getattr(type(tensor), "tensor_data_names", ()), *getattr(type(tensor), "optional_tensor_data_names", ())]
    fields = []
    for field in names:
        value = getattr(tensor, field, None)
        if value is None:
            continue
        if type(value) is not Tensor and not isinstance(value, torch.nn.Parameter):
            raise _unsupported(name, kind, f" whose {field} is a {type(value).__name__}")
        if value.dtype not in _FORMATS:
            raise _unsupported(name, kind, f" whose {field} is stored as {value.dtype}")
        fields.append(StoredField(field, value, _FORMATS[value.dtype]))
    if not fields:
        raise _unsupported(name, kind, " holding no stored tensor")
    return fields


def field_positions(fmt: NumberFormat, bits: str | int) -> tuple[int, ...]:
    """The bit positions of a bit class (or index) in one stored field: those of the field's
    own format; none where the format lacks the class (an int8 field has no exponent bits)
    or the index is past its width. The class itself is checked by the fault model."""
    if isinstance(bits, int) and not isinstance(bits, bool):
        return (bits,) if 0 <= bits < fmt.bits else ()
    try:
        return fmt.select(bits)
    except ParamCorruptError:
        return ()


def as_signed(codes: Tensor, width: int) -> Tensor:
    """Bit patterns in [0, 2^width) as the signed integers of that width (int64)."""
    return torch.where(codes >= 1 << (width - 1), codes - (1 << width), codes)


def stored_writes(
    name: str,
    param: Tensor,
    idx: Tensor | None,
    value: Tensor,
    *,
    mode: str,
    method: str,
    layout: Sequence[str] | None,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Check one entry of a corruption aimed at a torchao weight and turn it into writes of
    integers: (integer view of a stored field, flat indices in it, values in its dtype).

    ``layout`` is the field names the entry's image indices were drawn over (the
    corruption's ``info["stored_fields"][name]``; None: the entry was not drawn over the
    stored image, as a corruption that adds a delta or sets float values is not).

    Raises:
        ParamCorruptError: an unsupported type; an entry not drawn over the stored image (an
            L_p corruption or float values: the weight is never materialised as float); a
            layout that is not the tensor's; indices out of the image or repeated; a value
            that does not fit its field's width.
    """
    fields = stored_fields(param, name)
    if mode != "set" or layout is None:
        raise ParamCorruptError(
            f"parameter {name!r} is a torchao {torchao_type(param)}: only faults of its stored bits (the bitflip "
            f"and stuck-at fault models) can be written into it, not a {method!r} corruption"
        )
    if tuple(layout) != tuple(f.name for f in fields):
        raise ParamCorruptError(
            f"the fault for {name!r} was drawn over the stored fields {tuple(layout)}, but the tensor holds "
            f"{tuple(f.name for f in fields)}"
        )
    if not isinstance(value, Tensor) or not isinstance(idx, Tensor) or idx.dim() != 1 or value.shape != idx.shape or value.is_floating_point() or value.is_complex():
        raise ParamCorruptError(f"the stored-bit fault for {name!r} needs 1-D image indices and integer values of one length")
    size = sum(f.numel for f in fields)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise ParamCorruptError(f"an index of the stored-bit fault for {name!r} is outside its stored image [0, {size})")
    if idx.unique().numel() != idx.numel():
        raise ParamCorruptError(f"the stored-bit fault for {name!r} writes one index twice; which value wins would be undefined")
    writes, start = [], 0
    for field in fields:
        here = (idx >= start) & (idx < start + field.numel)
        local, values = idx[here] - start, value[here].long()
        start += field.numel
        if not local.numel():
            continue
        low, high = -(1 << (field.format.bits - 1)), (1 << (field.format.bits - 1)) - 1
        if int(values.min()) < low or int(values.max()) > high:
            raise ParamCorruptError(f"a value written into {name}.{field.name} does not fit its {field.format.bits} bits")
        writes.append((field.view, local.to(field.view.device), values.to(field.view.dtype).to(field.view.device)))
    return writes
