"""The bit search on torchao weights in place: candidates over the bits of their stored
fields (``qdata``, ``scale``, ``zero_point``), flips written into torchao's own storage.

A weight quantised by torchao (``Int8Tensor``, ``Float8Tensor``,
``IntxUnpackedToInt8Tensor``: :data:`~paramcorrupt.formats.torchao.SUPPORTED`) computes with
its dequantised value; the search ranks the flips of its stored bits as on a model quantised
by :func:`paramcorrupt.quantize` (:mod:`~paramcorrupt.faults.search_stored`):

- the gradient g is taken with respect to the *decoded* weights: for the gradient pass each
  torchao weight of the group is replaced by a float parameter holding its ``dequantize()``
  (one float copy of the group's torchao weights, for that pass alone; put back in a
  ``finally``), so the forward is the float one of the same decoded weights;
- a flip of bit b of the codes (``qdata``) changes its one weight: score g_i Δw_i; a flip of
  a scale or zero-point bit changes its block (torchao's ``block_size``): score Σ g_i Δw_i.
  Δw is computed by torchao itself: the tensor rebuilt with the flipped field
  (``__tensor_unflatten__``) and dequantised, bit b of every entry at once (a weight depends
  on its own code, scale and zero point only); O(weights) per bit;
- ``k_top`` restricts the code bits to the tensor's ``k_top`` weights of largest |g|, as on
  stored weights; scale and zero-point bits are always candidates.

The exact evaluation of a candidate and the search's corruptions write the flipped integers
into the stored fields (:func:`~paramcorrupt.faults.torchao.stored_bit_faults`); the flips
so far are applied when the search ranks and evaluates, and everything comes back bit for
bit. A flip is ``(name, field, element, bit)``, the fault tuple of ``stored_bit_faults``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..corruption.base import Corruption
from ..errors import ParamCorruptError
from ..formats import StoredTensor
from ..formats.torchao import (
    StoredField,
    as_signed,
    field_positions,
    is_torchao_tensor,
    stored_fields,
)
from ..gradient import dataset_gradient
from ..groups import ParameterGroup
from .search_stored import FIELDS, StoredSearchImage
from .torchao import _with_stored, stored_bit_faults

__all__ = ["TorchaoSearchImage", "search_image"]

#: the stored fields of the search's ``fields`` option -> torchao's names
_TORCHAO_FIELDS = {"codes": "qdata", "scales": "scale", "zero_points": "zero_point"}


def search_image(
    params: Mapping[str, Tensor],
    stored: Mapping[str, StoredTensor] | None,
    bits: str | int,
    fields: Iterable[str],
) -> StoredSearchImage | TorchaoSearchImage | None:
    """The search's image of its group: the stored tensors of a model quantised by
    :func:`paramcorrupt.quantize` (``stored``), else its torchao weights; None for neither."""
    if stored is not None:
        image = StoredSearchImage(params, stored, bits, fields)
        return image if image.tensors else None
    if any(is_torchao_tensor(p) for p in params.values()):
        return TorchaoSearchImage(params, bits, fields)
    return None


def _rebuilt(tensor: Tensor, field: str, value: Tensor) -> Tensor:
    """The torchao tensor with its stored field ``field`` replaced by ``value`` (a new tensor)."""
    names, ctx = tensor.__tensor_flatten__()
    inner = {n: value if n == field else getattr(tensor, n) for n in names}
    return type(tensor).__tensor_unflatten__(inner, ctx, tensor.shape, tensor.stride())


def _with_bit(field: StoredField, bit: int) -> Tensor:
    """The field's tensor with bit ``bit`` of every element flipped (a copy)."""
    mask = int(as_signed(torch.tensor(1 << bit), field.format.bits))
    flipped = field.view.clone() ^ torch.tensor(mask, dtype=field.view.dtype)
    return flipped.view(field.tensor.dtype)


def _block_sums(values: Tensor, shape: torch.Size) -> Tensor:
    """Sums of ``values`` (a weight's shape) over the blocks of a field of ``shape`` (a
    scale per block: each dimension of the weight divided into shape[d] equal blocks)."""
    if values.dim() != len(shape):
        raise ParamCorruptError(
            f"a torchao field of shape {list(shape)} does not tile a weight of shape {list(values.shape)}"
        )
    split = []
    for size, blocks in zip(values.shape, shape):
        split += [blocks, size // blocks]
    return values.reshape(split).sum(dim=tuple(range(1, 2 * len(shape), 2)))


class TorchaoSearchImage:
    """The torchao weights of a search's group, their stored fields and the flips made.

    Args:
        params: the group's parameters (name -> tensor).
        bits: the bit class or index that may flip (in each field's own format).
        fields: the stored fields whose bits are candidates, by the search's names
            (``codes`` = ``qdata``, ``scales`` = ``scale``, ``zero_points`` = ``zero_point``).

    Raises:
        ParamCorruptError: a torchao type outside the supported ones, a ``fields`` value
            outside codes, scales, zero_points.
    """

    def __init__(
        self, params: Mapping[str, Tensor], bits: str | int, fields: Iterable[str] = FIELDS
    ) -> None:
        fields = tuple(fields) if isinstance(fields, (list, tuple, set, frozenset)) else (fields,)
        if not fields or any(f not in FIELDS for f in fields):
            raise ParamCorruptError(
                f"fields must name stored fields among {', '.join(FIELDS)}, got fields={fields!r}"
            )
        wanted = {_TORCHAO_FIELDS[f] for f in fields}
        self.params = dict(params)
        self.tensors = {n: p for n, p in params.items() if is_torchao_tensor(p)}
        self.positions: dict[str, dict[str, tuple[int, ...]]] = {}
        for name, tensor in self.tensors.items():
            found = {
                f.name: field_positions(f.format, bits)
                for f in stored_fields(tensor, name)
                if f.name in wanted
            }
            self.positions[name] = found
            if "qdata" in found and tuple(tensor.qdata.shape) != tuple(tensor.shape):
                raise ParamCorruptError(
                    f"{name!r}: torchao's qdata of shape {list(tensor.qdata.shape)} is not one code per weight"
                )
        self.done: set[tuple[str, str, int, int]] = set()

    # -- the gradient with respect to the decoded weights ---------------------------------------

    def gradient(
        self, model: nn.Module, data: list[Any], loss_fn: Any, group: ParameterGroup
    ) -> dict[str, Tensor]:
        """The data set gradient of the group, each torchao weight taken as its decoded values
        (a float parameter of ``dequantize()`` in its place for this pass, put back after)."""
        swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        try:
            for name in self.tensors:
                prefix, _, attr = name.rpartition(".")
                module = model.get_submodule(prefix)
                original = module._parameters[attr]
                swapped.append((module, attr, original))
                module._parameters[attr] = nn.Parameter(original.dequantize(), requires_grad=False)
            return dataset_gradient(model, data, loss_fn, group)
        finally:
            for module, attr, original in reversed(swapped):
                module._parameters[attr] = original

    # -- ranking --------------------------------------------------------------------------------

    def ranked(
        self, name: str, g: Tensor, k_top: int | None, candidates: int
    ) -> list[tuple[float, tuple[str, str, int, int]]]:
        """The tensor's top ``candidates`` flips by first-order gain, best first; the flips
        made so far must be applied to the weight (the search ranks inside them)."""
        tensor = self.params[name]
        g = g.detach().double().cpu()
        now = tensor.dequantize().double().cpu()
        found: list[tuple[float, tuple[str, str, int, int]]] = []
        for field in stored_fields(tensor, name):
            for bit in self.positions[name].get(field.name, ()):
                delta = (
                    _rebuilt(tensor, field.name, _with_bit(field, bit)).dequantize().double().cpu()
                    - now
                )
                if field.name == "qdata":
                    entries = torch.arange(g.numel())
                    if k_top is not None and k_top < g.numel():
                        entries = torch.topk(g.reshape(-1).abs(), k_top).indices.sort().values
                    score = (g * delta).reshape(-1)[entries]
                else:
                    score = _block_sums(g * delta, field.tensor.shape).reshape(-1)
                    entries = torch.arange(score.numel())
                score = torch.where(torch.isnan(score), torch.full_like(score, -math.inf), score)
                done = [e for (m, f, e, b) in self.done if (m, f, b) == (name, field.name, bit)]
                if done:  # never flip a bit back
                    score[torch.isin(entries, torch.tensor(done, dtype=torch.long))] = -math.inf
                top = torch.topk(score, min(candidates, score.numel()))
                found += [
                    (float(s), (name, field.name, int(entries[i]), bit))
                    for s, i in zip(top.values, top.indices)
                    if s > -math.inf
                ]
        found.sort(key=lambda t: -t[0])
        return found[:candidates]

    # -- flips ----------------------------------------------------------------------------------

    def candidate(
        self, model: nn.Module, flip: tuple[str, str, int, int], group: ParameterGroup
    ) -> Corruption:
        """The corruption of one more flip, on top of the stored integers as they are now."""
        return stored_bit_faults(model, [flip], group=group)

    def apply(self, flip: tuple[str, str, int, int]) -> None:
        """Record ``flip`` as made (its bit is never flipped back)."""
        self.done.add(flip)

    def corruption(
        self, plain: Corruption, flips: Iterable[tuple[str, str, int, int]]
    ) -> Corruption:
        """``plain`` (the flips of the group's other parameters) with the stored-bit writes of
        ``flips`` added (read from the clean stored fields); ``info`` gains ``scale_faults``,
        ``zero_point_faults``, ``changed``."""
        fields = {name: stored_fields(t, name) for name, t in self.tensors.items()}
        by_field: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for name, field_name, element, bit in flips:
            number = [f.name for f in fields[name]].index(field_name)
            elements, bits = by_field.setdefault((name, number), ([], []))
            elements.append(element)
            bits.append(bit)
        faults = {
            key: (torch.tensor(e, dtype=torch.long), torch.tensor(b, dtype=torch.long))
            for key, (e, b) in by_field.items()
        }
        return _with_stored(
            plain,
            {n: f for n, f in fields.items() if any(k[0] == n for k in faults)},
            faults,
            "flip",
        )
