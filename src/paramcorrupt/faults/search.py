"""The gradient-guided progressive bit search (Rakin et al., ICCV 2019, "Bit-Flip Attack").

Per iteration, with the flips found so far applied:

1. the gradient g of the loss on the attack data (the first ``batches`` batches);
2. in each tensor of the group, the candidate single-bit flips are ranked by their
   first-order loss increase g_i * (w'_i - w_i), w'_i the weight after the flip (decoded
   from the flipped stored code). The candidates are every bit of every weight by default
   (``k_top=None``), or every bit of the ``k_top`` weights of largest |g_i| in the tensor
   (``k_top=k``, as the Bit-Flip Attack authors' code ranks: elliothe/BFA's ``flip_bit``,
   whose class default is ``k_top=10``);
3. the top ``candidates`` flips of each tensor are evaluated exactly (the loss on the attack
   data with that flip added);
4. the flip with the largest loss is kept, for good.

With ``candidates=1``, one flip per tensor is evaluated and the best of them kept, the
paper's in-layer search and cross-layer selection with one flip per iteration. Which flips
the in-layer step ranks differs: ours ranks every bit of every weight by default, theirs the
top-``k_top`` weights by |g| (``k_top=10`` here gives their ranking; ties in |g| go by
``torch.topk``'s order). Flipped (coordinate, bit) pairs are not flipped back.

On a model quantised by :func:`paramcorrupt.quantize` (``stored``, or a sweep with
``quantize``), the stored weights' candidates are their stored bits: codes, scales and zero
points, ranked by g times the change of the decoded weights (one weight for a code bit, the
sum over the group or block for a scale or zero-point bit; ``k_top`` restricts the code bits
only), see :mod:`~paramcorrupt.faults.search_stored`. A search whose attack loss becomes Inf
or NaN has :attr:`BitSearch.ended`: it has no gradient left and stops. Memory: the
stored codes of the group (int64 per weight) and one score vector of the largest tensor
(of ``k_top`` entries with ``k_top``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._progress import progress_bar
from ..corruption.apply import corrupted
from ..corruption.base import Corruption
from ..errors import InputTypeError, ParamCorruptError
from ..evaluate import evaluate
from ..formats import StoredTensor, bits_setting, get_format
from ..gradient import dataset_gradient
from ..groups import ParameterGroup, as_group
from .base import FaultContext, FaultModel, register_fault
from .search_stored import FIELDS
from .search_torchao import search_image
from .stored import row_fields as stored_row_fields
from .torchao import row_fields as torchao_row_fields

__all__ = ["BitSearch", "BitSearchFault", "Flip", "bit_search", "k_top_setting"]

#: a flip the search made: (name, flat index, bit) in ``format``, or (name, field, entry, bit)
#: of a stored weight (a quantised model's codes, scales, zero points)
Flip = tuple[str, int, int] | tuple[str, str, int, int]


@dataclass
class BitSearch:
    """A progressive bit search on one group; :meth:`extend` finds more flips.

    Attributes:
        flips: the flips found, in order: (parameter name, flat index, bit) of a weight
            faulted in ``format``; (parameter name, field, entry, bit) of a stored weight of a
            quantised model (``stored``), the fault tuple of
            :func:`~paramcorrupt.faults.stored_faults`.
        losses: the loss on the attack data after each flip (``losses[0]``: none).
    """

    model: nn.Module
    group: ParameterGroup
    data: list[Any]
    loss_fn: Any
    format: str = "int8"
    bits: str | int = "any"
    candidates: int = 1
    progress: bool = False
    k_top: int | None = None
    stored: Mapping[str, StoredTensor] | None = None
    fields: Iterable[str] = FIELDS
    flips: list[Flip] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._fmt = get_format(self.format)
        self._positions = self._fmt.select(self.bits)
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise ParamCorruptError(f"candidates must be an integer >= 1, got candidates={self.candidates!r}")
        self.k_top = k_top_setting(self.k_top)
        if not self.data:
            raise ParamCorruptError("the bit search needs at least one batch of attack data")
        params = self.group.tensors(self.model)
        # a quantised model: its stored weights' candidates are their stored bits (search_stored.py)
        self._image = search_image(params, self.stored, self.bits, self.fields)  # or torchao weights: search_torchao.py
        params = {n: p for n, p in params.items() if self._image is None or n not in self._image.tensors}
        self._scales = {n: self._fmt.scales(p) for n, p in params.items()}
        self._clean = {n: self._fmt.encode(p, torch.arange(p.numel(), device=p.device), self._scales[n]) for n, p in params.items()}
        self._codes = {n: c.clone() for n, c in self._clean.items()}
        self._done: dict[str, set[tuple[int, int]]] = {n: set() for n in params}
        self.losses = [evaluate(self.model, self.data, self.loss_fn)["loss"]]

    def corruption(self, m: int | None = None) -> Corruption:
        """The set-values corruption of the first ``m`` flips (default: all found; all of them
        where the search has :attr:`ended` before ``m``); on a
        quantised model its ``info`` counts them by field (``code_faults``, ``scale_faults``,
        ``zero_point_faults``)."""
        m = len(self.flips) if m is None else m
        if m > len(self.flips) and not self.ended:
            raise ParamCorruptError(f"only {len(self.flips)} flips have been found, asked for {m}")
        m = min(m, len(self.flips))  # a search that ended holds all it found
        params = self.group.tensors(self.model)
        codes = {n: c.clone() for n, c in self._clean.items()}
        for flip in self.flips[:m]:
            if len(flip) == 3:
                name, idx, bit = flip
                codes[name][idx] ^= 1 << bit
        indices: dict[str, Tensor | None] = {}
        values: dict[str, Tensor] = {}
        for name in self._clean:
            param = params[name]
            changed = (codes[name] != self._clean[name]).nonzero().flatten()
            if changed.numel():
                indices[name] = changed
                values[name] = self._fmt.decode(param, changed, codes[name][changed], self._scales[name])
        info = {"format": self.format, "bit_errors": m, "search_loss": self.losses[m]}
        plain = Corruption(self.group, None, "bit-search", indices, values, info, mode="set")
        if self._image is None:
            return plain
        return self._image.corruption(plain, [f for f in self.flips[:m] if len(f) == 4])

    @property
    def ended(self) -> bool:
        """Whether the loss on the attack data is Inf or NaN after the flips found: the model
        is destroyed, the loss has no gradient and cannot rise, so the search stops there."""
        return not math.isfinite(self.losses[-1])

    def extend(self, m: int) -> None:
        """Search until ``m`` flips are found, or until the search has :attr:`ended` (fewer)."""
        steps = range(len(self.flips), m)
        for _ in progress_bar(steps, enabled=self.progress, desc="bit search"):
            if self.ended:
                break
            self._step()

    def _step(self) -> None:
        params = self.group.tensors(self.model)
        image = self._image
        with corrupted(self.model, self.corruption()):
            grad_of = dataset_gradient if image is None else image.gradient  # w.r.t. the decoded weights
            gradient = grad_of(self.model, self.data, self.loss_fn, self.group)
            best: tuple[float, Flip] | None = None
            for name, param in params.items():
                if image is not None and name in image.tensors:  # its stored bits: codes, scales, zero points
                    ranked = [flip for _, flip in image.ranked(name, gradient[name], self.k_top, self.candidates)]
                else:
                    ranked = [(name, idx, bit) for idx, bit in self._ranked(name, param, gradient[name])]
                for flip in ranked:
                    if len(flip) == 4:  # a stored bit: the image's own write (decoded values, or torchao's integers)
                        candidate = image.candidate(self.model, flip, self.group)
                    else:
                        at = torch.tensor([flip[1]], device=param.device)
                        code = self._codes[name][flip[1]] ^ (1 << flip[2])
                        value = self._fmt.decode(param, at, code.reshape(1), self._scales[name]).to(param.device)
                        candidate = Corruption.from_values({name: value}, {name: at}, group=self.group)
                    with corrupted(self.model, candidate):
                        loss = evaluate(self.model, self.data, self.loss_fn)["loss"]
                    loss = math.inf if math.isnan(loss) else loss  # an output made NaN counts as the worst
                    if best is None or loss > best[0]:
                        best = (loss, flip)
        if best is None:
            raise ParamCorruptError(f"group {self.group.name!r} has no bit left to flip")
        loss, flip = best
        if len(flip) == 4:
            image.apply(flip)
        else:
            name, idx, bit = flip
            self._codes[name][idx] ^= 1 << bit
            self._done[name].add((idx, bit))
        self.flips.append(flip)
        self.losses.append(loss)

    def _ranked(self, name: str, param: Tensor, g: Tensor) -> list[tuple[int, int]]:
        """The tensor's top ``candidates`` single flips by first-order loss increase, among
        every weight's bits (``k_top=None``) or those of its ``k_top`` weights of largest |g|."""
        flat_g = g.reshape(-1).double()
        idx = torch.arange(param.numel(), device=param.device)
        if self.k_top is not None and self.k_top < param.numel():
            idx = torch.topk(flat_g.abs(), self.k_top).indices
            flat_g = flat_g[idx]
        now = param.detach().reshape(-1)[idx].double()
        found: list[tuple[float, int, int]] = []
        for bit in self._positions:
            flipped = self._fmt.decode(param, idx, self._codes[name][idx] ^ (1 << bit), self._scales[name]).double()
            score = flat_g * (flipped - now)
            score = torch.where(torch.isnan(score), torch.full_like(score, -math.inf), score)
            done = [i for i, b in self._done[name] if b == bit]  # never flip a bit back
            if done:
                score[torch.isin(idx, torch.tensor(done, device=idx.device))] = -math.inf
            top = torch.topk(score, min(self.candidates, score.numel()))
            found += [(float(s), int(idx[i]), bit) for s, i in zip(top.values, top.indices) if s > -math.inf]
        found.sort(key=lambda t: -t[0])
        return [(i, b) for _, i, b in found[: self.candidates]]


def k_top_setting(k_top: Any) -> int | None:
    """The ``k_top`` setting checked: an integer >= 1, or None (also spelt "all", as a
    command line gives it) for every weight.

    Example:
        >>> k_top_setting(10), k_top_setting("all"), k_top_setting(None)
        (10, None, None)
    """
    if k_top is None or (isinstance(k_top, str) and k_top.strip().lower() == "all"):
        return None
    if isinstance(k_top, bool) or not isinstance(k_top, int):
        raise InputTypeError(f"k_top must be an integer >= 1 or 'all' (every weight), got k_top={k_top!r}")
    if k_top < 1:
        raise ParamCorruptError(f"k_top must be an integer >= 1 or 'all' (every weight), got k_top={k_top!r}")
    return k_top


def bit_search(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Any,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    flips: int,
    format: str = "int8",
    bits: str | int = "any",
    candidates: int = 1,
    batches: int | None = 1,
    progress: bool = False,
    k_top: int | None = None,
    stored: Mapping[str, StoredTensor] | None = None,
    fields: Iterable[str] = FIELDS,
) -> BitSearch:
    """Find ``flips`` bit flips by the progressive bit search (see the module's doc).

    Args:
        model: the network; left bit-identical.
        loader: the attack data; its first ``batches`` batches are used (None: all).
        loss_fn: the batch loss.
        group: the parameters whose stored bits may flip (default: all trainable).
        flips: the budget, >= 1.
        format: the stored format (int8 by default, as the paper; any of
            :data:`~paramcorrupt.formats.FORMATS`).
        bits: the bits that may flip (any, sign, exponent, mantissa, msb, or an index).
        candidates: flips per tensor evaluated exactly each iteration (1: one per layer, as the
            Bit-Flip Attack evaluates).
        batches: how many batches of ``loader`` form the attack data.
        progress: show a progress bar.
        k_top: rank only the bits of each tensor's ``k_top`` weights of largest |g| (the
            Bit-Flip Attack code's ``k_top``; its default there is 10); None (the default):
            every weight's. A ``k_top`` above a tensor's size takes all of it. On stored
            weights it restricts the code bits; scale and zero-point bits are always ranked.
        stored: name -> StoredTensor of a model quantised by :func:`paramcorrupt.quantize`
            (what it returns): the group's stored weights are searched over their stored
            bits (codes, scales, zero points, ranked by g times the decoded change: see
            :mod:`paramcorrupt.faults.search_stored`), its other parameters in ``format``.
        fields: with ``stored``, the stored fields whose bits may flip (default: codes,
            scales and zero points; ``("codes",)``: the codes alone).

    Example:
        >>> import paramcorrupt as pc
        >>> _ = torch.manual_seed(0); model = nn.Linear(64, 3); x = torch.randn(16, 64)
        >>> q = pc.quantize(model, "int4", group_size=32)
        >>> data = [(x, torch.arange(16) % 3)]
        >>> s = bit_search(model, data, pc.classification_loss, "weight", flips=1, stored=q)
        >>> s.flips[0][1], s.corruption().info["scale_faults"]   # a float32 scale's bit: the block blows up
        ('scales', 1)
        >>> q.restore(model)

    Returns:
        The :class:`BitSearch`, with ``flips``, ``losses`` and ``corruption(m)``.

    Raises:
        ParamCorruptError: for flips < 1, a bad format, bit class, count of
            candidates/batches or k_top; ``stored`` that is not what ``quantize`` returned
            for this model (another shape or dtype, weights not its decoded values).
    """
    if isinstance(flips, bool) or not isinstance(flips, int) or flips < 1:
        raise ParamCorruptError(f"flips must be an integer >= 1, got flips={flips!r}")
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise ParamCorruptError(f"batches must be an integer >= 1 or None, got batches={batches!r}")
    group = as_group(model, group)
    data = list(loader if batches is None else itertools.islice(loader, batches))
    search = BitSearch(model, group, data, loss_fn, format, bits, candidates, progress, k_top=k_top, stored=stored, fields=fields)
    search.extend(flips)
    return search


@register_fault
class BitSearchFault(FaultModel):
    """The progressive bit search as a fault model: a row at ``flips = m`` holds the first m
    flips of one search per group (searched once, extended as the rows ask for more).

    ``k_top`` at its default (None: every weight) is left out of the row key and the row, so
    rows written before it existed keep their keys."""

    name = "bit-search"
    parameters = ("format", "bits", "flips", "candidates", "batches", "k_top")
    defaults = {"format": "int8", "bits": "any", "candidates": 1, "batches": 1, "k_top": None}
    axes = ("flips",)

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        bits = bits_setting(setting["format"], setting["bits"])
        for name in ("flips", "candidates", "batches"):
            value = setting[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParamCorruptError(f"{name} must be an integer >= 1, got {name}={value!r}")
        return dict(setting, bits=bits, k_top=k_top_setting(setting["k_top"]))

    def key(self) -> str:
        key = super().key()
        return key if self.setting["k_top"] is not None else key.removesuffix("|k_top=all")

    def corrupt(self, ctx: FaultContext) -> Corruption:
        s = self.setting
        key = ("bit-search", s["format"], s["bits"], s["candidates"], s["batches"], s["k_top"])
        if key not in ctx.cache:
            if ctx.loader is None:
                raise ParamCorruptError("the bit search needs attack data: the sweep's gradient loader")
            data = list(itertools.islice(ctx.loader, s["batches"]))
            ctx.cache[key] = BitSearch(  # a quantised sweep (ctx.stored): its stored bits are the candidates
                ctx.model, ctx.group, data, ctx.loss_fn, s["format"], s["bits"], s["candidates"], k_top=s["k_top"],
                stored=ctx.stored,
            )
        search = ctx.cache[key]
        search.extend(s["flips"])
        return search.corruption(s["flips"])

    def row_fields(self, ctx: FaultContext, corruption: Corruption | None = None) -> dict[str, Any]:
        out = dict(self.setting)
        if out["k_top"] is None:
            del out["k_top"]  # every weight: the rows as they were before k_top
        if corruption is not None:
            out["bit_errors"] = corruption.info["bit_errors"]
            out["search_loss"] = corruption.info["search_loss"]
            # a quantised model: flips in codes / scales / zero points (torchao's: in scales / zero points)
            out.update(stored_row_fields(corruption.info) or torchao_row_fields(corruption.info))
        return out
