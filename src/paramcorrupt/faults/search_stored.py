"""The bit search's candidates in a quantised model's stored image: codes, scales, zero points.

A model quantised by :func:`paramcorrupt.quantize` computes with the decoded values of its
stored tensors (:class:`~paramcorrupt.formats.StoredTensor`). Its search candidates are the
stored bits (each field's bits in its own element format, selected by the bit class as the
random stored faults select them: :func:`~paramcorrupt.faults.stored.field_bits`); a flip is
``(name, field, entry, bit)``, the fault tuple of :func:`~paramcorrupt.faults.stored_faults`.

Ranking (first order, g the gradient of the loss with respect to the decoded weights, Δw the
change of the decoded weights the flip causes, decoded with the quantisers' float32
arithmetic, :func:`~paramcorrupt.faults.stored.decode_at`):

- a code bit changes its one weight: score g_i Δw_i;
- a scale or zero-point bit changes its whole group or block: score Σ g_i Δw_i over it.

Each score vector is computed for one bit position of one field at a time, every entry at
once (a weight depends on its own code, scale and zero point only, so flipping bit b of every
entry together decodes each weight as its own entry's flip would): O(weights) per bit. A
score that is NaN (a flip that decodes to NaN, or Inf - Inf) ranks last, never first. Padding
entries (codes that decode no weight) are not candidates: their flips change nothing. With
``k_top`` only the code bits of the tensor's ``k_top`` weights of largest |g| are ranked;
the scale and zero-point bits are always candidates (a block has no single |g|).

The stored tensors are never changed: the search keeps the codes of the entries it flipped
(name -> field -> entry -> code) and decodes through them. Memory: the search holds the
codes of its group's stored weights as stored (1 byte per int8 weight, half a byte per
4-bit one: ``StoredTensor.held``), where a sweep's random faults re-derive them from the
weights (``paramcorrupt.formats.derive``): it ranks with its flips applied to the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..corruption.base import Corruption
from ..errors import ParamCorruptError
from ..formats import StoredTensor
from ..gradient import dataset_gradient
from .stored import (
    _check_stored,
    _entries_and_groups,
    _merge,
    codes_at,
    decode_at,
    field_bits,
    weights_of_codes,
    weights_of_groups,
)

__all__ = ["FIELDS", "StoredFlip", "StoredSearchImage"]

#: a flip of a stored bit: (parameter name, field, entry in the field's storage order, bit)
StoredFlip = tuple[str, str, int, int]

#: the stored fields, in the order the search ranks them
FIELDS = ("codes", "scales", "zero_points")


class StoredSearchImage:
    """The stored tensors of a search's group and the codes its flips wrote so far.

    Args:
        params: the group's parameters (name -> tensor), holding the decoded values.
        stored: name -> StoredTensor (what :func:`paramcorrupt.quantize` returns).
        bits: the bit class or index that may flip.
        fields: the stored fields whose bits are candidates (default: all; ``("codes",)``
            searches the codes alone, to see what the scales add).

    Raises:
        InputTypeError, ParamCorruptError: ``stored`` not name -> StoredTensor, a stored
            tensor of another shape or dtype, or a weight that does not hold the decoded
            values of its stored tensor (a model not quantised by ``quantize``).
    """

    def __init__(
        self, params: Mapping[str, Tensor], stored: Mapping[str, StoredTensor], bits: str | int, fields: Iterable[str] = FIELDS
    ) -> None:
        fields = tuple(fields) if isinstance(fields, (list, tuple, set, frozenset)) else (fields,)
        unknown = [f for f in fields if f not in FIELDS]
        if unknown or not fields:
            raise ParamCorruptError(f"fields must name stored fields among {', '.join(FIELDS)}, got fields={fields!r}")
        self.params = dict(params)
        self.tensors = _check_stored(params, stored)
        for name, st in self.tensors.items():
            decoded = st.dequantize().to(params[name].device)
            same = (decoded == params[name].detach()) | (torch.isnan(decoded) & torch.isnan(params[name].detach()))
            if not bool(same.all()):
                raise ParamCorruptError(
                    f"{name!r} does not hold the decoded values of its stored tensor ({st.format}): quantise the model "
                    "with paramcorrupt.quantize and search it with what quantize returned"
                )
        # the search ranks with its flips applied to the weights, where codes re-derived from
        # them would be those of the flipped weights: it holds the codes of its group instead
        self.tensors = {name: st.held() for name, st in self.tensors.items()}
        self.positions = {
            name: {f: field_bits(st.fields[f], bits) for f in FIELDS if f in st.fields and f in fields}
            for name, st in self.tensors.items()
        }
        self.now: dict[str, dict[str, dict[int, int]]] = {name: {} for name in self.tensors}
        self.done: set[StoredFlip] = set()

    # -- the codes written so far ------------------------------------------------------------

    def _changed(self, name: str, extra: tuple[str, int, int] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """The changed entries of each field of ``name`` as decode_at takes them (sorted
        entries, their codes), with ``extra`` = (field, entry, code) written on top."""
        fields = {f: dict(codes) for f, codes in self.now[name].items()}
        if extra is not None:
            fields.setdefault(extra[0], {})[extra[1]] = extra[2]
        out = {}
        for field_name, codes in fields.items():
            entries = sorted(codes)
            out[field_name] = (torch.tensor(entries, dtype=torch.long), torch.tensor([codes[e] for e in entries], dtype=torch.long))
        return out

    def code_now(self, flip: StoredFlip) -> int:
        """The code of the flip's entry as it is now (the flips so far written)."""
        name, field_name, entry, _ = flip
        written = self.now[name].get(field_name, {})
        if entry in written:
            return written[entry]
        return int(codes_at(self.tensors[name].fields[field_name], torch.tensor([entry]))[0])

    def apply(self, flip: StoredFlip) -> None:
        """Record ``flip`` as made (its bit is never flipped back)."""
        name, field_name, entry, bit = flip
        self.now[name].setdefault(field_name, {})[entry] = self.code_now(flip) ^ (1 << bit)
        self.done.add(flip)

    def values(self, flip: StoredFlip) -> tuple[Tensor, Tensor]:
        """(flat weight indices, their decoded values) of the weights ``flip`` changes, on
        top of the flips made so far."""
        name, field_name, entry, bit = flip
        st = self.tensors[name]
        at = torch.tensor([entry], dtype=torch.long)
        weights = weights_of_codes(st, at) if field_name == "codes" else weights_of_groups(st, at)
        changed = self._changed(name, (field_name, entry, self.code_now(flip) ^ (1 << bit)))
        return weights, decode_at(st, weights, changed)

    def candidate(self, model: Any, flip: StoredFlip, group: Any) -> Corruption:
        """The corruption of one more flip: the decoded values of the weights it changes."""
        at, value = self.values(flip)
        device = self.params[flip[0]].device
        return Corruption.from_values({flip[0]: value.to(device)}, {flip[0]: at.to(device)}, group=group)

    @staticmethod
    def gradient(model: Any, data: Any, loss_fn: Any, group: Any) -> dict[str, Tensor]:
        """The data set gradient (the weights hold the decoded values)."""
        return dataset_gradient(model, data, loss_fn, group)

    # -- ranking ------------------------------------------------------------------------------

    def ranked(self, name: str, g: Tensor, k_top: int | None, candidates: int) -> list[tuple[float, StoredFlip]]:
        """The tensor's top ``candidates`` flips by first-order gain (see the module's doc),
        best first: (score, flip)."""
        st, param = self.tensors[name], self.params[name]
        flat_g = g.reshape(-1).double().cpu()
        now = param.detach().reshape(-1).double().cpu()
        found: list[tuple[float, StoredFlip]] = []
        for field_name, positions in self.positions[name].items():
            for bit in positions:
                entries, score = self._scores(st, name, field_name, bit, flat_g, now, k_top if field_name == "codes" else None)
                score = torch.where(torch.isnan(score), torch.full_like(score, -math.inf), score)
                done = [e for (m, f, e, b) in self.done if (m, f, b) == (name, field_name, bit)]
                if done:  # never flip a bit back
                    score[torch.isin(entries, torch.tensor(done, dtype=torch.long))] = -math.inf
                top = torch.topk(score, min(candidates, score.numel()))
                found += [(float(s), (name, field_name, int(entries[i]), bit)) for s, i in zip(top.values, top.indices) if s > -math.inf]
        found.sort(key=lambda t: -t[0])
        return found[:candidates]

    def _scores(
        self, st: StoredTensor, name: str, field_name: str, bit: int, g: Tensor, now: Tensor, k_top: int | None
    ) -> tuple[Tensor, Tensor]:
        """(entries, first-order gain of flipping ``bit`` of each) for one field."""
        n = g.numel()
        changed = self._changed(name)
        if field_name == "codes":
            weights = torch.arange(n)
            if k_top is not None and k_top < n:
                weights = torch.topk(g.abs(), k_top).indices.sort().values
            entries, _ = _entries_and_groups(st, weights)  # increasing with the weights
            flipped = codes_at(st.codes, entries, changed.get("codes")) ^ (1 << bit)
            values = decode_at(st, weights, {**changed, "codes": (entries, flipped)}).double()
            return entries, g[weights] * (values - now[weights])
        field = st.fields[field_name]
        entries = torch.arange(field.count)
        flipped = codes_at(field, entries, changed.get(field_name)) ^ (1 << bit)
        weights = torch.arange(n)
        _, groups = _entries_and_groups(st, weights)
        values = decode_at(st, weights, {**changed, field_name: (entries, flipped)}).double()
        return entries, torch.zeros(field.count, dtype=torch.float64).index_add_(0, groups, g * (values - now))

    # -- the corruption of a list of flips ----------------------------------------------------

    def corruption(self, plain: Corruption, flips: Iterable[StoredFlip]) -> Corruption:
        """``plain`` (the flips of the group's parameters that are not stored) with the
        set-values entries of the stored ``flips`` added; ``info`` gains ``code_faults``,
        ``scale_faults``, ``zero_point_faults`` (flips in each kind of field), ``changed``."""
        by_name: dict[str, dict[str, tuple[list[int], list[int]]]] = {}
        for name, field_name, entry, bit in flips:
            entries, bits = by_name.setdefault(name, {}).setdefault(field_name, ([], []))
            entries.append(entry)
            bits.append(bit)
        faults = {
            name: {f: (torch.tensor(e, dtype=torch.long), torch.tensor(b, dtype=torch.long)) for f, (e, b) in fields.items()}
            for name, fields in by_name.items()
        }
        return _merge(plain, self.params, self.tensors, faults, "flip")
