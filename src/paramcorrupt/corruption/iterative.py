"""The multi-step corruption: projected ascent in parameter space from a_hat (beyond the
paper). It applies and evaluates corruptions, so it lives beside :mod:`paramcorrupt.corruption.apply`
and :mod:`paramcorrupt.evaluate`; :mod:`paramcorrupt.corruption` knows neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..constraint import Constraint, global_top_n, tensors_lp_norm
from ..errors import ParamCorruptError
from ..evaluate import evaluate
from ..gradient import dataset_gradient
from ..groups import ParameterGroup, as_group
from .apply import corrupted
from .base import Corruption
from .gradient import gradient_corruption

__all__ = ["iterative_corruption"]


def keep_top_n(values: list[Tensor], constraint: Constraint) -> list[Tensor]:
    """``values`` with all but their n largest |coordinates| (over every tensor, n =
    ``constraint.size(k)``) set to 0: the first half of both projections onto S (absolute
    here, relative in :mod:`.iterative_relative`). Unchanged when n >= k."""
    k = sum(v.numel() for v in values)
    n = constraint.size(k)
    if n >= k:
        return values
    indices, _ = global_top_n(values, n)
    kept = []
    for v, idx in zip(values, indices):
        m = torch.zeros_like(v).reshape(-1)
        m[idx] = v.reshape(-1)[idx]
        kept.append(m.view_as(v))
    return kept


def _project(values: list[Tensor], constraint: Constraint) -> list[Tensor]:
    """Map a point back onto S: keep the top-n coordinates, then onto the sphere ||a||_p = eps.

    Exact Euclidean projection for p = inf (clip to the cube, pushed to its surface when it
    fell inside) and p = 2 (radial scaling); radial scaling for other p.
    """
    p, eps = constraint.p, constraint.eps
    values = keep_top_n(values, constraint)
    if p == math.inf:
        values = [v.clamp(-eps, eps) for v in values]
    norm = tensors_lp_norm(values, p)
    if norm == 0.0:
        return values
    return [v * (eps / norm) for v in values]


def iterative_corruption(
    model: nn.Module,
    constraint: Constraint,
    loader: Iterable[Any],
    loss_fn: Any,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    steps: int = 5,
    step_size: float | None = None,
    gradient: Mapping[str, Tensor] | None = None,
    progress: bool = False,
) -> Corruption:
    """Multi-step projected ascent in parameter space, started from the one-step corruption.

    Beyond the paper: a_0 = a_hat (Definition 4); then a_{t+1} = Proj_S(a_t + s_t), where s_t
    is the closed-form steepest-ascent step (Proposition 1 with radius ``step_size``) for the
    data set gradient at w + a_t. Every iterate's loss is measured on ``loader`` and the best
    is kept, so the result never does worse than a_hat on that data.

    Args:
        model: the network.
        constraint: the set S; p = 2 and p = inf use exact projections, other p radial ones.
        loader: the data whose loss is climbed (also used for the gradients).
        loss_fn: the batch loss (see :mod:`paramcorrupt.losses`).
        group: the parameters to corrupt.
        steps: ascent steps after a_hat (0 returns a_hat).
        step_size: radius of each step (default eps / 2).
        gradient: the data set gradient at w, if already computed.
        progress: show progress bars.

    Returns:
        The best corruption found; ``info`` holds the per-iterate losses and the best step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ParamCorruptError(f"steps must be an integer >= 0, got {steps!r}")
    group = as_group(model, group)
    if gradient is None:
        gradient = dataset_gradient(model, loader, loss_fn, group, progress=progress)
    step = constraint.with_eps(step_size if step_size is not None else constraint.eps / 2)
    current = gradient_corruption(gradient, constraint, group)
    params = group.tensors(model)
    dense = current.dense(model)
    with corrupted(model, current):
        best_loss = evaluate(model, loader, loss_fn, progress=progress)["loss"]
    losses = [best_loss]
    best, best_step = current, 0
    a = [dense[name].double() for name in group.names]
    for t in range(1, steps + 1):
        with corrupted(model, Corruption.from_deltas(dict(zip(group.names, [x.to(p.dtype) for x, p in zip(a, params.values())])))):
            g = dataset_gradient(model, loader, loss_fn, group)
        move = gradient_corruption(g, step, group).dense(model)
        a = _project([x + move[name].double() for x, name in zip(a, group.names)], constraint)
        candidate = Corruption(
            group,
            constraint,
            "iterative",
            {name: None for name in group.names},
            {name: x.to(params[name].dtype) for name, x in zip(group.names, a)},
        )
        with corrupted(model, candidate):
            loss = evaluate(model, loader, loss_fn, progress=progress)["loss"]
        losses.append(loss)
        if loss > best_loss:
            best, best_loss, best_step = candidate, loss, t
    result = Corruption(best.group, constraint, "iterative", best.indices, best.values, dict(best.info))
    result.info.update(losses=losses, best_step=best_step, first_order=current.info["first_order"], G=current.info["G"])
    return result
