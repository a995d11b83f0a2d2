"""A model as it is stored: every chosen weight replaced by the value its stored code decodes to.

:func:`quantize` quantises the weights of a model in place (each tensor through
:func:`~paramcorrupt.formats.quantize_tensor`) and returns a :class:`Quantized`: what is
stored (name -> :class:`~paramcorrupt.formats.StoredTensor`) and the float weights, to put
them back bit for bit (:meth:`Quantized.restore`). :func:`quantized` is the same as a
context manager that restores on exit. The clean metric of the model inside is the deployed
(quantised) model's.

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
from .quantizers import check_quantize, get_quantizer, quantize_tensor
from .stored import StoredTensor

__all__ = ["Quantized", "default_weights", "quantize", "quantized"]


@dataclass
class Quantized(Mapping):
    """What :func:`quantize` stored: name -> :class:`StoredTensor` (a mapping), the format
    and its options, and the float weights it replaced (``originals``; None when the call
    was made with ``restorable=False``)."""

    format: str
    options: dict[str, Any]
    stored: dict[str, StoredTensor]
    originals: dict[str, Tensor] | None = field(default=None, repr=False)

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

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Write the float weights back into ``model``, bit for bit.

        Raises:
            ParamCorruptError: when the float weights were not kept (``restorable=False``).
        """
        if self.originals is None:
            raise ParamCorruptError("this quantisation kept no float weights (restorable=False): it cannot be undone")
        params = ParameterGroup("quantized", tuple(self.originals)).tensors(model)
        for name, value in self.originals.items():
            params[name].copy_(value)


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
    restorable: bool = True,
    **options: Any,
) -> Quantized:
    """Replace the chosen weights of ``model`` by their stored values, in place.

    Args:
        model: the float model.
        format: a quantiser's name (:data:`~paramcorrupt.formats.QUANTIZERS`: float16,
            bfloat16, int8, int8-channel, int8-group, int4, nf4, fp8-e4m3, fp8-e5m2, mxfp8,
            mxfp6, mxfp4).
        groups: the parameters (a group, name patterns); default: :func:`default_weights`.
        restorable: keep a copy of the float weights (memory: one float copy of them) so
            that :meth:`Quantized.restore` puts them back; False makes the call one-way.
        **options: the format's options (``group_size``, ``asymmetric``, ``pad``,
            ``block_size``, ``per_channel``), as :func:`~paramcorrupt.formats.quantize_tensor`.

    Returns:
        A :class:`Quantized`: name -> StoredTensor, each weight now equal to its
        ``dequantize()``.

    Raises:
        ParamCorruptError: an unknown format or option, a group size that does not divide a
            weight's rows (without ``pad=True``), ...; raised before any weight changes.
        InputTypeError: a chosen parameter that is not floating point.

    Example:
        >>> model = nn.Linear(64, 2)
        >>> stored = quantize(model, "int4", group_size=32)
        >>> torch.equal(model.weight, stored["weight"].dequantize()), stored["weight"].codes.bits
        (True, 4)
        >>> stored.restore(model)
    """
    get_quantizer(format)
    group = default_weights(model) if groups is None else as_group(model, groups)
    params = group.tensors(model)  # validates the names
    for name, param in params.items():  # every check before anything changes
        if not param.is_floating_point():
            raise InputTypeError(f"parameter {name!r} has dtype {param.dtype}; only floating-point weights can be quantised")
        check_quantize(format, param.shape, dict(options), name)
    stored, originals = {}, {} if restorable else None
    for name, param in params.items():
        stored[name] = quantize_tensor(param.detach(), format, name, **options)
        if originals is not None:
            originals[name] = param.detach().clone()
        param.copy_(stored[name].dequantize())
    return Quantized(format, dict(options), stored, originals)


@contextmanager
def quantized(
    model: nn.Module,
    format: str,
    groups: ParameterGroup | str | Iterable[str] | None = None,
    **options: Any,
) -> Iterator[Quantized]:
    """:func:`quantize` for the duration of a ``with`` block; the float weights come back bit
    for bit on exit (an exception included).

    Example:
        >>> model = nn.Linear(32, 2)
        >>> before = model.weight.clone()
        >>> with quantized(model, "mxfp4") as stored:
        ...     torch.equal(model.weight, stored["weight"].dequantize())
        True
        >>> torch.equal(model.weight, before)
        True
    """
    done = quantize(model, format, groups, restorable=True, **options)
    try:
        yield done
    finally:
        done.restore(model)
