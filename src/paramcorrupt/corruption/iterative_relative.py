"""The iterative worst case on the relative set (adaptive sharpness, ASAM's set): projected
ascent on {||a / T||_p <= eps, ||a||_0 <= n}, T = |w| + eta, beside the one-step closed form
of :mod:`paramcorrupt.corruption.relative` (issue 24, point 3).

The ascent runs in the rescaled coordinates b = a / T, where the set is the plain L_p ball
{||b||_p <= eps}: the loss is f(b) = L(w + T b), its gradient T g (g the data set gradient at
w + T b). Each step moves b along the steepest-ascent direction of T g for the norm (sign for
L_inf, T g / ||T g||_2 for L_2) and projects back onto the ball: clipping to the cube
(L_inf) and radial scaling (L_2) are the exact Euclidean projections in b; other p are
scaled radially (in the set, not a Euclidean projection). ``schedule="apgd"`` is APGD's
(Croce & Hein, 2020): momentum 0.75 and the step size halved at its checkpoints when the
ascent stalls, restarting from the best point; ``"constant"`` keeps the step size and takes
no momentum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..constraint import Constraint, closed_form, maximiser_values, tensors_lp_norm
from ..errors import ParamCorruptError
from ..evaluate import evaluate
from ..gradient import dataset_gradient
from ..groups import ParameterGroup, as_group
from .apply import corrupted
from .base import Corruption
from .iterative import keep_top_n
from .relative import relative_scale

__all__ = ["SCHEDULES", "apgd_checkpoints", "check_ascent", "iterative_relative_corruption"]

#: the step-size schedules of :func:`iterative_relative_corruption`
SCHEDULES = ("apgd", "constant")

#: APGD's weight of the new point against the momentum term, and the share of steps that
#: must raise the loss between two checkpoints (Croce & Hein, 2020: alpha = 0.75, rho = 0.75)
_ALPHA, _RHO = 0.75, 0.75

Vector = list[Tensor]  # float64, one tensor per parameter of the group, in group order


def check_ascent(steps: Any, step_size: Any, schedule: Any, step_name: str = "step_size") -> None:
    """Refuse a bad step count, step size (``None`` allowed: the default) or schedule, by name.

    Raises:
        ValueError: ``ParamCorruptError`` naming the value.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ParamCorruptError(f"steps must be an integer >= 0, got {steps!r}")
    if step_size is not None and (
        isinstance(step_size, bool)
        or not isinstance(step_size, (int, float))
        or not math.isfinite(step_size)
        or step_size <= 0
    ):
        raise ParamCorruptError(f"{step_name} must be a finite number > 0, got {step_size!r}")
    if schedule not in SCHEDULES:
        raise ParamCorruptError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints w_j = ceil(p_j N): p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein, 2020), in floating point as
    their code computes them (0.57 x 100 rounds up to 58, 0.70 x 20 to 15), without w_0 = 0 and those past N.

    Example:
        >>> apgd_checkpoints(20)
        [5, 9, 12, 15, 16, 18, 19, 20]
    """
    p, w = [0.0, 0.22], [0, math.ceil(0.22 * steps)]
    while w[-1] < steps and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * steps))
    return sorted({x for x in w[1:] if 0 < x <= steps})


def _project(b: Vector, constraint: Constraint, frozen: list[Tensor]) -> Vector:
    """b onto {||b||_p <= eps, ||b||_0 <= n}, coordinates that cannot move (T = 0) at 0.

    Keeping the n largest |b_i| and then clipping (L_inf) or scaling (L_2) is the exact
    Euclidean projection for both; other p are scaled radially."""
    b = keep_top_n([x.masked_fill(f, 0.0) for x, f in zip(b, frozen)], constraint)
    eps = constraint.eps
    if constraint.p == math.inf:
        return [x.clamp(-eps, eps) for x in b]
    norm = tensors_lp_norm(b, constraint.p)
    return b if norm <= eps else [x * (eps / norm) for x in b]


def _direction(v: Vector, p: float) -> Vector:
    """The steepest-ascent unit step for the gradient v: argmax d.v over ||d||_p <= 1 (zero
    where v is zero everywhere)."""
    if tensors_lp_norm(v, math.inf) == 0.0:
        return [torch.zeros_like(x) for x in v]
    if p == math.inf:
        return [torch.sign(x) for x in v]
    return maximiser_values(v, Constraint(p, 1.0))


def iterative_relative_corruption(
    model: nn.Module,
    constraint: Constraint,
    loader: Iterable[Any],
    loss_fn: Any,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    eta: float = 0.0,
    steps: int = 20,
    step_size: float | None = None,
    schedule: str = "apgd",
    gradient: Mapping[str, Tensor] | None = None,
    progress: bool = False,
) -> Corruption:
    """Projected ascent on the relative set {||a / T||_p <= eps, ||a||_0 <= n}, T = |w| + eta,
    started from the one-step closed form (:func:`~paramcorrupt.relative_gradient_corruption`).

    b_0 = a_hat / T; then ``steps`` steps in b = a / T (see the module's text): b moves by
    ``step_size`` along the steepest-ascent direction of T g for the norm and is projected
    back onto {||b||_p <= eps}. Every iterate's loss on ``loader`` is measured and the best
    is returned, so the result never does worse than the one step on that data. Coordinates
    with T = 0 (w = 0 and eta = 0) do not move.

    Args:
        model: the network (left as it was).
        constraint: p, eps and n of the set; eps bounds a / T. p = 2 and p = inf project
            exactly, other p radially.
        loader: the data whose loss is climbed (also used for the gradients).
        loss_fn: the batch loss (see :mod:`paramcorrupt.losses`).
        group: the parameters to corrupt.
        eta: T = |w| + eta.
        steps: ascent steps after the one step (0 returns it).
        step_size: the step's length in b (default 2 eps, APGD's start).
        schedule: ``"apgd"`` (momentum 0.75, the step halved at APGD's checkpoints when the
            ascent stalls, restarting from the best point) or ``"constant"``.
        gradient: the data set gradient at w, if already computed.
        progress: show progress bars.

    Returns:
        The best corruption found (dense, ``method="iterative-relative"``); ``info`` holds
        ``losses`` (per iterate, the one step first), ``best_step``, ``step_sizes`` (per
        step), ``norm`` (||a / T||_p of the result, computed in float64 on b),
        ``first_order`` (the one step's a.g), ``relative`` and ``eta``.

    Raises:
        ValueError: for bad steps, step_size, schedule or eta, before anything runs.
    """
    check_ascent(steps, step_size, schedule)
    group = as_group(model, group)
    scale = relative_scale(model, group, eta)  # T at w, fixed for the whole ascent
    params = group.tensors(model)
    names = list(group.names)
    t = [scale[name].double() for name in names]
    frozen = [x == 0 for x in t]
    if gradient is None:
        gradient = dataset_gradient(model, loader, loss_fn, group, progress=progress)
    g0 = [gradient[name].double() for name in names]
    b0 = closed_form(dict(zip(names, [g * s for g, s in zip(g0, t)])), constraint)
    x = _project([b0[name] for name in names], constraint, frozen)
    first_order = sum(float((xi * s * g).sum()) for xi, s, g in zip(x, t, g0))

    def delta(b: Vector) -> Corruption:
        return Corruption.from_deltas(
            {n: (s * bi).to(params[n].dtype) for n, s, bi in zip(names, t, b)}
        )

    def ascent_gradient(b: Vector) -> tuple[Vector, float]:
        with corrupted(model, delta(b)):
            g, loss = dataset_gradient(
                model, loader, loss_fn, group, return_loss=True, progress=progress
            )
        return [g[n].double() * s for n, s in zip(names, t)], float(loss)

    def loss_at(b: Vector) -> float:
        with corrupted(model, delta(b)):
            return float(evaluate(model, loader, loss_fn, progress=progress)["loss"])

    size = float(step_size) if step_size is not None else 2.0 * constraint.eps
    best, best_step, losses, sizes = _ascend(
        x, steps, size, schedule, constraint, frozen, ascent_gradient, loss_at
    )
    values = {n: (s * bi).to(params[n].dtype) for n, s, bi in zip(names, t, best)}
    info = {
        "relative": True,
        "eta": float(eta),
        "losses": losses,
        "best_step": best_step,
        "step_sizes": sizes,
        "norm": tensors_lp_norm(best, constraint.p),
        "first_order": first_order,
        "schedule": schedule,
    }
    return Corruption(
        group, constraint, "iterative-relative", {n: None for n in names}, values, info
    )


def _ascend(
    x: Vector,
    steps: int,
    size: float,
    schedule: str,
    constraint: Constraint,
    frozen: list[Tensor],
    ascent_gradient: Callable[[Vector], tuple[Vector, float]],
    loss_at: Callable[[Vector], float],
) -> tuple[Vector, int, list[float], list[float]]:
    """The ascent from b_0 = ``x``: (the best b, its step, the loss per iterate, the step size
    per step). APGD: z = P(x_k + s d_k); x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}));
    at each checkpoint, when fewer than 75% of the steps since the last one raised the loss, or
    neither the step size nor the best loss changed since it, s is halved and the ascent
    restarts from the best point."""
    grad, loss = ascent_gradient(x) if steps else (None, loss_at(x))
    losses, sizes = [loss], []
    best, best_loss, best_grad, best_step = x, loss, grad, 0
    checkpoints = set(apgd_checkpoints(steps)) if schedule == "apgd" else set()
    last, size_then, best_then, rises = 0, size, loss, 0
    previous = x
    for k in range(1, steps + 1):
        move = _direction(grad, constraint.p)
        z = _project([xi + size * d for xi, d in zip(x, move)], constraint, frozen)
        if schedule == "apgd" and k > 1:
            mixed = [
                xi + _ALPHA * (zi - xi) + (1 - _ALPHA) * (xi - pi)
                for xi, zi, pi in zip(x, z, previous)
            ]
            z = _project(mixed, constraint, frozen)
        previous, x = x, z
        sizes.append(size)
        # the last iterate needs its loss only
        grad, loss = ascent_gradient(x) if k < steps else (None, loss_at(x))
        rises += loss > losses[-1]
        losses.append(loss)
        if loss > best_loss:
            best, best_loss, best_grad, best_step = x, loss, grad, k
        if k in checkpoints:
            stalled = rises < _RHO * (k - last) or (size_then == size and best_then == best_loss)
            last, size_then, best_then, rises = k, size, best_loss, 0
            if stalled:  # halve the step and restart from the best point (no momentum)
                size /= 2.0
                x = previous = best
                grad = best_grad
    return best, best_step, losses, sizes
