"""n = 1: the single most damaging parameter ("super weights", Yu et al. 2024).

With n = 1 the set S holds the corruptions of one coordinate by +-eps, whatever p, and the
closed form picks the coordinate of largest |g_i| (Proposition 1). Yu et al.'s super weights
are single scalars whose *removal* (setting them to zero) wrecks a language model; the
first-order estimate of zeroing w_i is -w_i g_i. :func:`super_weight_search` ranks every
coordinate of a group by one of these first-order scores (one data set gradient, an O(m)
global top-m, nothing the size of the model but the gradient), then measures the loss of
the m best candidates exactly (one evaluation each, applied and restored in place) and
returns them sorted by the measured damage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..constraint import global_top_n
from ..corruption.apply import corrupted
from ..corruption.base import Corruption
from ..errors import ParamCorruptError
from ..evaluate import evaluate
from ..gradient import dataset_gradient
from ..groups import ParameterGroup, as_group
from ..losses import LossFn

__all__ = ["SuperWeight", "super_weight_search"]

_MODES = ("zero", "gradient")


@dataclass(frozen=True)
class SuperWeight:
    """One candidate coordinate and what corrupting it did.

    Attributes:
        name: the parameter's name; ``index``: its multi-index; ``flat_index``: flat.
        value: the weight's value; ``gradient``: the data set gradient there.
        new_value: what the coordinate was set to (0, or value + eps * sign(g)).
        score: the first-order estimate of the loss change.
        loss: the measured loss after the corruption; ``loss_change``: minus the clean loss.
        metrics: the measured metrics after the corruption.
    """

    name: str
    index: tuple[int, ...]
    flat_index: int
    value: float
    gradient: float
    new_value: float
    score: float
    loss: float
    loss_change: float
    metrics: dict[str, float]


def super_weight_search(
    model: nn.Module,
    gradient_loader: Iterable[Any],
    loss_fn: LossFn,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    eval_loader: Iterable[Any] | None = None,
    metrics: dict[str, Any] | None = None,
    mode: str = "zero",
    eps: float | None = None,
    candidates: int = 10,
    accumulate_dtype: torch.dtype | None = torch.float64,
) -> list[SuperWeight]:
    """The single parameters whose corruption raises the loss most, measured.

    Args:
        model: the network (left exactly as it was).
        gradient_loader: the data of the data set gradient (and of the loss, by default).
        loss_fn: ``loss_fn(model, batch)`` -> BatchLoss.
        group: the parameters searched (default: all trainable ones).
        eval_loader: the data the damage is measured on (default: ``gradient_loader``).
        metrics: the metrics measured after each corruption.
        mode: ``"zero"``: set the weight to 0 (Yu et al.'s removal; first-order score
            -w_i g_i); ``"gradient"``: add eps * sign(g_i) (the n = 1 closed form; score
            eps |g_i|, so the candidates are the largest |g_i|).
        eps: the radius for ``mode="gradient"``.
        candidates: how many top-scored coordinates to measure exactly (m >= 1).
        accumulate_dtype: the gradient's running-sum dtype (see :func:`~paramcorrupt.dataset_gradient`).

    Returns:
        The candidates, most damaging (largest measured loss) first.

    Raises:
        ValueError: for an unknown mode, a missing or non-positive eps in gradient mode, or
            candidates < 1.
    """
    if mode not in _MODES:
        raise ParamCorruptError(f"unknown mode {mode!r}; expected one of {', '.join(_MODES)}")
    if mode == "gradient" and (eps is None or not eps > 0):
        raise ParamCorruptError(f"mode='gradient' needs eps > 0, got eps={eps!r}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ParamCorruptError(f"candidates must be an integer >= 1, got {candidates!r}")
    group = as_group(model, group)
    params = group.tensors(model)
    names = list(params)
    eval_loader = gradient_loader if eval_loader is None else eval_loader
    gradient = dataset_gradient(model, gradient_loader, loss_fn, group, accumulate_dtype=accumulate_dtype)
    assert isinstance(gradient, dict)
    if mode == "zero":
        scores = [-(params[n].detach() * gradient[n]) for n in names]
        # the largest *positive* first-order gains: push negatives below every positive one
        scores = [torch.where(s > 0, s, torch.zeros_like(s)) for s in scores]
    else:
        scores = [gradient[n].abs() for n in names]
    k = sum(s.numel() for s in scores)
    m = min(candidates, k)
    indices, _ = global_top_n(scores, m)
    clean = evaluate(model, eval_loader, loss_fn, metrics or {})
    found = []
    for name, idx, score in zip(names, indices, scores):
        param = params[name]
        for flat in idx.tolist():
            value = float(param.detach().reshape(-1)[flat])
            g = float(gradient[name].reshape(-1)[flat])
            if mode == "zero":
                new = torch.zeros((1,), dtype=param.dtype)
            else:
                sign = 1.0 if g >= 0 else -1.0
                new = (param.detach().reshape(-1)[flat : flat + 1] + sign * float(eps)).to(param.dtype)
            corruption = Corruption.from_values(
                {name: new}, {name: torch.tensor([flat])}, method=f"super-weight-{mode}"
            )
            with corrupted(model, corruption):
                after = evaluate(model, eval_loader, loss_fn, metrics or {})
            found.append(SuperWeight(
                name=name,
                index=tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), param.shape)) if param.dim() else (),
                flat_index=flat, value=value, gradient=g, new_value=float(new[0]),
                score=float(score.reshape(-1)[flat]) * (float(eps) if mode == "gradient" else 1.0),
                loss=after["loss"], loss_change=after["loss"] - clean["loss"],
                metrics={k2: v for k2, v in after.items() if k2 != "loss"},
            ))
    found.sort(key=lambda w: w.loss, reverse=True)
    return found

