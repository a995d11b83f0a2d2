"""Loss along a direction (the paper's Figure 2, measured): L(w + t d) on a whole data set.

The directions, each on one parameter group (the rest of the model stays at w):

- ``gradient``: the gradient-based corruption a_hat (Definition 4) of unit radius, the closed
  form of Proposition 1 for S = {||a||_p = 1, ||a||_0 <= n} applied to the data set gradient
  on the gradient's data; so ||t d||_p = |t| and the point at t is the corruption at eps = t;
- ``iterative``: the multi-step corruption (:func:`~paramcorrupt.iterative_corruption`) found
  at one radius ``eps`` (default: the largest |t|), divided by eps: the ray through it, which
  passes through the iterative corruption at t = eps (||t d||_p = |t| for p = 2 and inf, whose
  projections end on the sphere);
- ``random``: the random corruption (Definition 3) of unit radius, at the same scale as a_hat;
- ``filter``: a random Gaussian direction with filter normalisation (Li et al., NeurIPS 2018,
  "Visualizing the Loss Landscape of Neural Nets"): each filter (a slice along the first
  dimension: a conv's output channel, a linear layer's output neuron) of the draw rescaled to
  the norm of the same filter of w, d_f <- d_f ||w_f|| / (||d_f|| + 1e-10) as their
  ``normalize_direction``; parameters of one dimension (biases, normalisation weights) are
  zeroed (``bias_bn="zero"``, their ``ignore='biasbn'``) or set to w (``"copy"``, their other
  branch). Its t is Li et al.'s: a step of t times each filter's own norm, not an L_p radius.

and the 2-D slice L(w + t d_gradient + u d_filter) on a grid. Every loss is the exact data
set loss of :func:`~paramcorrupt.evaluate` (batch-weighted, evaluation mode, running
statistics untouched). The model is changed only inside :func:`~paramcorrupt.corrupted` (one
point at a time), so it comes back bit for bit on any exit, KeyboardInterrupt included.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..constraint import Constraint, tensors_lp_norm
from ..corruption import (
    Corruption,
    corrupted,
    gradient_corruption,
    iterative_corruption,
    random_corruption,
)
from ..errors import InputTypeError, ParamCorruptError
from ..evaluate import evaluate
from ..gradient import dataset_gradient
from ..groups import ParameterGroup, as_group
from ..losses import LossFn, Metric

__all__ = [
    "BIAS_BN",
    "DIRECTIONS",
    "Landscape",
    "filter_normalized",
    "landscape",
    "linspace",
    "write_csv",
]

#: the directions :func:`landscape` can walk, in the order curves are drawn
DIRECTIONS = ("gradient", "iterative", "random", "filter")
#: what filter normalisation does with parameters of one dimension (Li et al.'s two branches)
BIAS_BN = ("zero", "copy")


def linspace(low: float, high: float, points: int) -> list[float]:
    """``points`` evenly spaced values from ``low`` to ``high``, both included, each computed
    as ``low + (high - low) * i / (points - 1)``: a grid of m points and one of 2m - 1 share
    their values bit for bit, and a symmetric range of odd length holds 0.0 exactly.

    Raises:
        ValueError: for fewer than 2 points, a range that is empty (low >= high) or not finite.

    Example:
        >>> linspace(-1, 1, 5)
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ParamCorruptError(f"points must be an integer >= 2, got {points!r}")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ParamCorruptError(
            f"the range {low:g}:{high:g} is empty or not finite; give LOW:HIGH with LOW < HIGH"
        )
    return [low + (high - low) * i / (points - 1) for i in range(points)]


def filter_normalized(
    model: nn.Module,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    generator: torch.Generator,
    bias_bn: str = "zero",
) -> dict[str, Tensor]:
    """A random direction with filter normalisation (Li et al. 2018), on ``group``'s parameters.

    A Gaussian draw d ~ N(0, I) per parameter; for a parameter of two or more dimensions, each
    filter d[i] is rescaled to ||w[i]|| / (||d[i]|| + 1e-10) times itself; a parameter of one
    dimension (or a scalar) is zeroed (``bias_bn="zero"``) or set to w (``"copy"``).

    Example:
        >>> model = nn.Linear(3, 2)
        >>> d = filter_normalized(model, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(d["weight"].norm(dim=1), model.weight.detach().norm(dim=1)), d["bias"].abs().sum().item()
        (True, 0.0)
    """
    if not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if bias_bn not in BIAS_BN:
        raise ParamCorruptError(f"bias_bn must be one of {', '.join(BIAS_BN)}, got {bias_bn!r}")
    group = as_group(model, group)
    out = {}
    for name, param in group.tensors(model).items():
        w = param.detach()
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=generator.device).to(
            w.device
        )
        if w.dim() <= 1:
            d = torch.zeros_like(w) if bias_bn == "zero" else w.clone()
        else:
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
            d = d * (w_norm / (d_norm + 1e-10)).reshape(-1, *([1] * (d.dim() - 1)))
        out[name] = d
    return out


@dataclass
class Landscape:
    """What :func:`landscape` measured on one group.

    Attributes:
        group: the group's label; ``k`` its number of parameters.
        t: the steps of the 1-D curves along the L_p directions (``gradient``, ``iterative``,
            ``random``); ``u``: the steps along ``filter`` (Li et al.'s scale).
        curves: direction -> one ``{"loss": ..., metric: ...}`` per step.
        clean: the loss and metrics at w.
        grid_t, grid_u, grid: the 2-D slice, ``grid[i][j]`` at w + grid_t[i] d_gradient +
            grid_u[j] d_filter (empty when not asked for).
        info: the setting (p, n, eps of the iterative corruption, seed, bias_bn) and per
            direction its norms (``norm_p``, ``norm_2``); ``first_order``: ||top_n(g)||_q, the
            slope of the first-order estimate t ||g||_q along a_hat; the iterative
            corruption's losses per step and best step.
    """

    group: str
    k: int
    t: list[float]
    u: list[float]
    curves: dict[str, list[dict[str, float]]]
    clean: dict[str, float]
    grid_t: list[float] = field(default_factory=list)
    grid_u: list[float] = field(default_factory=list)
    grid: list[list[dict[str, float]]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def steps(self, direction: str) -> list[float]:
        """The steps of a direction's curve: ``u`` for ``filter``, else ``t``."""
        return self.u if direction == "filter" else self.t

    def rows(self) -> list[dict[str, Any]]:
        """One row per point (the CSV's): group, direction, t, u, loss and each metric; a 1-D
        point has its step in ``t`` (``u`` for ``filter``), a 2-D point (direction
        ``gradient x filter``) both."""
        out = []
        for direction, values in self.curves.items():
            for step, value in zip(self.steps(direction), values):
                t, u = (None, step) if direction == "filter" else (step, None)
                out.append({"group": self.group, "direction": direction, "t": t, "u": u, **value})
        for t, line in zip(self.grid_t, self.grid):
            for u, value in zip(self.grid_u, line):
                out.append(
                    {"group": self.group, "direction": "gradient x filter", "t": t, "u": u, **value}
                )
        return out


def _unit_directions(
    model: nn.Module,
    group: ParameterGroup,
    names: Sequence[str],
    gradient: Mapping[str, Tensor],
    setting: dict[str, Any],
    loader: Iterable[Any],
    loss_fn: LossFn,
    progress: bool,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """direction -> name -> dense unit direction, and what was found on the way."""
    p, n, eps = setting["p"], setting["n"], setting["eps"]
    unit = Constraint(p, 1.0, n)
    out: dict[str, dict[str, Tensor]] = {}
    info: dict[str, Any] = {}
    a_hat = gradient_corruption(gradient, unit, group)
    info["first_order"] = a_hat.info["first_order"]  # = ||top_n(g)||_q: the slope of t ||g||_q
    if "gradient" in names:
        out["gradient"] = a_hat.dense(model)
    if "iterative" in names:
        found = iterative_corruption(
            model,
            unit.with_eps(eps),
            loader,
            loss_fn,
            group,
            steps=setting["steps"],
            gradient=gradient,
            progress=progress,
        )
        out["iterative"] = {name: v / eps for name, v in found.dense(model).items()}
        info["iterative"] = {
            "eps": eps,
            "losses": found.info["losses"],
            "best_step": found.info["best_step"],
        }
    if "random" in names:
        generator = torch.Generator().manual_seed(setting["seed"])
        out["random"] = random_corruption(model, unit, group, generator=generator).dense(model)
    if "filter" in names:
        generator = torch.Generator().manual_seed(
            setting["seed"] + 1
        )  # not the random direction's draw
        out["filter"] = filter_normalized(
            model, group, generator=generator, bias_bn=setting["bias_bn"]
        )
    for name, d in out.items():
        values = list(d.values())
        info.setdefault("norms", {})[name] = {
            "norm_p": tensors_lp_norm(values, p),
            "norm_2": tensors_lp_norm(values, 2),
        }
    return out, info


def _check(
    t_values: Sequence[float],
    u_values: Sequence[float],
    directions: Sequence[str],
    grid_points: int,
    steps: int,
    eps: float | None,
    bias_bn: str,
) -> None:
    """Every argument checked before anything runs (one line naming the bad value)."""
    for what, values in (("t_values", t_values), ("u_values", u_values)):
        if len(values) < 2:
            raise ParamCorruptError(f"{what} needs at least 2 points, got {len(values)}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ParamCorruptError(f"{what} must be finite numbers, got {list(values)!r}")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise ParamCorruptError(
            f"unknown direction {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(DIRECTIONS)}"
        )
    if (
        isinstance(grid_points, bool)
        or not isinstance(grid_points, int)
        or grid_points < 0
        or grid_points == 1
    ):
        raise ParamCorruptError(
            f"grid_points must be 0 (no 2-D slice) or an integer >= 2, got {grid_points!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ParamCorruptError(f"steps must be an integer >= 0, got {steps!r}")
    if eps is not None and (not math.isfinite(eps) or eps <= 0):
        raise ParamCorruptError(f"eps must be a finite number > 0, got {eps!r}")
    if bias_bn not in BIAS_BN:
        raise ParamCorruptError(f"bias_bn must be one of {', '.join(BIAS_BN)}, got {bias_bn!r}")


# over 100 lines: most of it the docstring, one entry per argument
def landscape(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    metrics: Mapping[str, Metric] | None = None,
    *,
    group: ParameterGroup | str | Iterable[str] | None = None,
    gradient_loader: Iterable[Any] | None = None,
    t_values: Sequence[float] = tuple(linspace(-1.0, 1.0, 21)),
    u_values: Sequence[float] | None = None,
    directions: Sequence[str] = DIRECTIONS,
    grid_points: int = 11,
    p: float = 2.0,
    n: int | None = None,
    eps: float | None = None,
    steps: int = 5,
    seed: int = 0,
    bias_bn: str = "zero",
    gradient: Mapping[str, Tensor] | None = None,
    progress: bool | Callable[[int], Any] = False,
) -> Landscape:
    """The loss along each direction and on the 2-D slice (a_hat, a filter-normalised draw).

    Args:
        model: the network (changed one point at a time, restored bit for bit after each).
        loader: the data whose loss is measured (a task's eval or gradient loader).
        loss_fn, metrics: as :func:`~paramcorrupt.evaluate`.
        group: the parameters moved (default: every trainable one).
        gradient_loader: the data of the gradient and of the iterative ascent (default: ``loader``).
        t_values: the steps along the L_p directions (t = eps).
        u_values: the steps along ``filter`` (default: ``t_values``).
        directions: which of :data:`DIRECTIONS` to walk.
        grid_points: points per axis of the 2-D slice over [min t, max t] x [min u, max u]
            (0: none); it needs the ``gradient`` and ``filter`` directions.
        p, n: the constraint of a_hat, the iterative and the random corruption (radius 1).
        eps: the radius the iterative corruption is found at (default: the largest |t|).
        steps: the iterative corruption's ascent steps.
        seed: seeds the random direction's draw; seed + 1 the filter-normalised one.
        bias_bn: filter normalisation of one-dimensional parameters: "zero" or "copy" (w).
        gradient: the data set gradient on ``gradient_loader``, if already computed.
        progress: show a progress bar (True), or a callable given the number of points to
            evaluate that returns an object with ``update(1)`` and ``close()``.

    Raises:
        ValueError: for fewer than 2 steps, an unknown direction, a grid without its two
            directions, a negative step count, eps <= 0, or n larger than the group.
    """
    t_values, u_values = list(t_values), list(t_values if u_values is None else u_values)
    _check(t_values, u_values, directions, grid_points, steps, eps, bias_bn)
    if grid_points and not {"gradient", "filter"} <= set(directions):
        raise ParamCorruptError(
            "the 2-D slice walks the gradient and filter directions: include both, or grid_points=0"
        )
    group = as_group(model, group)
    if not group.names:
        raise ParamCorruptError(f"group {group.name!r} has no parameters")
    k = group.numel(model)
    unit = Constraint(p, 1.0, n)
    unit.size(k)  # n > k refused before any pass over the data
    gradient_loader = loader if gradient_loader is None else gradient_loader
    eps = max(abs(t) for t in t_values) if eps is None else float(eps)
    if eps == 0:
        raise ParamCorruptError(
            "the iterative corruption needs a radius > 0: give eps, or t values other than 0"
        )
    setting = {"p": unit.p, "n": n, "eps": eps, "steps": steps, "seed": seed, "bias_bn": bias_bn}
    if gradient is None:
        gradient = dataset_gradient(model, gradient_loader, loss_fn, group)
    d, info = _unit_directions(
        model, group, directions, gradient, setting, gradient_loader, loss_fn, bool(progress)
    )
    grid_t = linspace(min(t_values), max(t_values), grid_points) if grid_points else []
    grid_u = linspace(min(u_values), max(u_values), grid_points) if grid_points else []
    total = (
        1
        + sum(len(u_values if name == "filter" else t_values) for name in d)
        + len(grid_t) * len(grid_u)
    )
    bar = _bar(progress, total)
    try:
        clean = _at(model, loader, loss_fn, metrics, {}, bar)
        curves = {
            name: [
                _at(model, loader, loss_fn, metrics, {name: step}, bar, d)
                for step in (u_values if name == "filter" else t_values)
            ]
            for name in DIRECTIONS
            if name in d
        }
        grid = [
            [
                _at(model, loader, loss_fn, metrics, {"gradient": t, "filter": u}, bar, d)
                for u in grid_u
            ]
            for t in grid_t
        ]
    finally:
        if bar is not None:
            bar.close()
    info.update(setting=setting, directions=list(curves))
    return Landscape(group.name, k, t_values, u_values, curves, clean, grid_t, grid_u, grid, info)


def _bar(progress: bool | Callable[[int], Any], total: int) -> Any:
    if callable(progress):
        return progress(total)
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="landscape", leave=False, dynamic_ncols=True)


def _at(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    metrics: Mapping[str, Metric] | None,
    steps: Mapping[str, float],
    bar: Any,
    directions: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> dict[str, float]:
    """The loss and metrics at w + sum_i steps[i] d_i (w itself for no steps)."""
    if not steps:
        result = evaluate(model, loader, loss_fn, metrics)
    else:
        deltas: dict[str, Tensor] = {}
        for name, step in steps.items():
            for param, v in directions[name].items():
                deltas[param] = step * v if param not in deltas else deltas[param] + step * v
        with corrupted(model, Corruption.from_deltas(deltas, "landscape")):
            result = evaluate(model, loader, loss_fn, metrics)
    if bar is not None:
        bar.update(1)
    return result


def write_csv(results: Sequence[Landscape], path: str | Path) -> Path:
    """The rows of every landscape (:meth:`Landscape.rows`) as one CSV file: group, direction,
    t, u, loss, then each metric (repr-exact floats; an empty cell where a step does not apply)."""
    rows = [row for result in results for row in result.rows()]
    metrics = list(
        dict.fromkeys(
            key
            for row in rows
            for key in row
            if key not in ("group", "direction", "t", "u", "loss")
        )
    )
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["group", "direction", "t", "u", "loss", *metrics])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return path
