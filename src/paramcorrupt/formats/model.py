"""A model as it is stored: every chosen weight replaced by the value its stored code decodes to.

:func:`quantize` quantises the weights of a model in place (each tensor through
:func:`~paramcorrupt.formats.quantize_tensor`) and returns a :class:`Quantized`: what is
stored (name -> :class:`~paramcorrupt.formats.StoredTensor`) and the float weights, to put
them back bit for bit (:meth:`Quantized.restore`). :func:`quantized` is the same as a
context manager that restores on exit. The clean metric of the model inside is the deployed
(quantised) model's.

No second copy of the weights: the model's weights hold the decoded values, and the codes
are re-derived from them where a fault needs them (:mod:`~paramcorrupt.formats.derive`); the
stored tensors hold the scales and zero points (and the few codes the weights do not
determine). The float weights are kept for the restore in memory (``restorable=True``), in a
temporary file (``restorable="file"``: what a sweep does) or not at all (``False``).

The default weights are every parameter with two or more dimensions outside normalisation
modules: the weight matrices of linear layers (attention's projections included), conv
kernels, embeddings. Biases and normalisation parameters stay float, as deployed models keep
them: int8/int4/NF4/FP8/MX weight formats (torchao's weight-only configs, bitsandbytes,
the MX recipes) quantise the weights of the matrix products; a bias is added in the
accumulator's precision and a norm's few parameters are kept in float. A ``groups`` argument
chooses other parameters (a one-dimensional tensor is one row).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputTypeError, ParamCorruptError
from ..groups import ParameterGroup, as_group, parameter_types
from .derive import derive_codes
from .offload import FloatFile
from .quantizers import check_quantize, get_quantizer, quantize_tensor
from .stored import StoredTensor

#: where :func:`quantize` keeps the float weights: in memory, in a temporary file, nowhere
RESTORABLE = (True, "file", False)

__all__ = ["Quantized", "default_weights", "quantize", "quantized"]


@dataclass
class Quantized(Mapping):
    """What :func:`quantize` stored: name -> :class:`StoredTensor` (a mapping), the format
    and its options, and the float weights it replaced (``originals`` in memory, or
    ``offload``, a temporary file; both None when the call was made with ``restorable=False``)."""

    format: str
    options: dict[str, Any]
    stored: dict[str, StoredTensor]
    originals: dict[str, Tensor] | None = field(default=None, repr=False)
    offload: FloatFile | None = field(default=None, repr=False)

    def __getitem__(self, name: str) -> StoredTensor:
        return self.stored[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def nbits(self) -> int:
        """The bits of everything stored (codes, scales, zero points, padding)."""
        return sum(s.nbits for s in self.stored.values())

    @property
    def held_bytes(self) -> int:
        """The bytes held in memory beside the model: the float copy (``restorable=True``)
        and what each stored tensor holds (scales, zero points, kept codes)."""
        copy = sum(t.numel() * t.element_size() for t in (self.originals or {}).values())
        return copy + sum(s.held_bytes for s in self.stored.values())

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Write the float weights back into ``model``, bit for bit.

        Raises:
            ParamCorruptError: when the float weights were not kept (``restorable=False``).
        """
        if self.originals is None and self.offload is None:
            raise ParamCorruptError("this quantisation kept no float weights (restorable=False): it cannot be undone")
        names = tuple(self.originals if self.originals is not None else self.offload.where)  # those saved
        params = ParameterGroup("quantized", names).tensors(model)
        for name in names:
            if self.originals is not None:
                params[name].copy_(self.originals[name])
            else:
                self.offload.load_into(name, params[name])


def default_weights(model: nn.Module) -> ParameterGroup:
    """Every trainable parameter with two or more dimensions outside normalisation modules."""
    types = parameter_types(model)
    names = tuple(n for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and types.get(n) != "norm")
    return ParameterGroup("weights", names)


@torch.no_grad()
def quantize(
    model: nn.Module,
    format: str,
    groups: ParameterGroup | str | Iterable[str] | None = None,
    *,
    restorable: bool | str = True,
    **options: Any,
) -> Quantized:
    """Replace the chosen weights of ``model`` by their stored values, in place.

    Args:
        model: the float model.
        format: a quantiser's name (:data:`~paramcorrupt.formats.QUANTIZERS`: float16,
            bfloat16, int8, int8-channel, int8-group, int4, nf4, fp8-e4m3, fp8-e5m2, mxfp8,
            mxfp6, mxfp4).
        groups: the parameters (a group, name patterns); default: :func:`default_weights`.
        restorable: where to keep the float weights that :meth:`Quantized.restore` puts
            back: True, a copy in memory (one float copy of them); ``"file"``, a temporary
            file (no memory; what a sweep does); False, nowhere (the call is one-way).
        **options: the format's options (``group_size``, ``asymmetric``, ``pad``,
            ``block_size``, ``per_channel``), as :func:`~paramcorrupt.formats.quantize_tensor`.

    Returns:
        A :class:`Quantized`: name -> StoredTensor, each weight now equal to its
        ``dequantize()``.

    Raises:
        ParamCorruptError: an unknown format or option, a group size that does not divide a
            weight's rows (without ``pad=True``), a ``restorable`` outside True, "file",
            False, ...; raised before any weight changes.
        InputTypeError: a chosen parameter that is not floating point.

    Example:
        >>> model = nn.Linear(64, 2)
        >>> stored = quantize(model, "int4", group_size=32)
        >>> torch.equal(model.weight, stored["weight"].dequantize()), stored["weight"].codes.bits
        (True, 4)
        >>> stored.restore(model)
    """
    get_quantizer(format)
    if not any(restorable is r or (isinstance(r, str) and restorable == r) for r in RESTORABLE):
        raise ParamCorruptError(f"restorable must be True, 'file' or False, got restorable={restorable!r}")
    group = default_weights(model) if groups is None else as_group(model, groups)
    params = group.tensors(model)  # validates the names
    for name, param in params.items():  # every check before anything changes
        if not param.is_floating_point():
            raise InputTypeError(f"parameter {name!r} has dtype {param.dtype}; only floating-point weights can be quantised")
        check_quantize(format, param.shape, dict(options), name)
    stored: dict[str, StoredTensor] = {}
    done = Quantized(format, dict(options), stored, {} if restorable is True else None, FloatFile() if restorable == "file" else None)
    try:
        for name, param in params.items():
            held = quantize_tensor(param.detach(), format, name, **options)
            if done.originals is not None:
                done.originals[name] = param.detach().clone()
            elif done.offload is not None:
                done.offload.save(name, param)
            param.copy_(held.dequantize())
            stored[name] = derive_codes(held, param, name)  # the codes: re-derived from the weights
            del held
    except BaseException:
        if restorable is not False:  # the weights quantised so far come back; one-way: as they are
            done.restore(model)
        raise
    return done


@contextmanager
def quantized(
    model: nn.Module,
    format: str,
    groups: ParameterGroup | str | Iterable[str] | None = None,
    *,
    restorable: bool | str = True,
    **options: Any,
) -> Iterator[Quantized]:
    """:func:`quantize` for the duration of a ``with`` block; the float weights come back bit
    for bit on exit (an exception included), from memory (``restorable=True``) or from a
    temporary file (``restorable="file"``).

    Example:
        >>> model = nn.Linear(32, 2)
        >>> before = model.weight.clone()
        >>> with quantized(model, "mxfp4") as stored:
        ...     torch.equal(model.weight, stored["weight"].dequantize())
        True
        >>> torch.equal(model.weight, before)
        True
    """
    if restorable is False:
        raise ParamCorruptError("quantized() restores the float weights on exit: restorable must be True or 'file'")
    done = quantize(model, format, groups, restorable=restorable, **options)
    try:
        yield done
    finally:
        done.restore(model)
        if done.offload is not None:
            done.offload.close()
