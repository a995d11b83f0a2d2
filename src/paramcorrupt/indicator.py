"""The indicator in one call: how far can a corruption in S push the loss (Definition 2)?

    indicator = max_{a in S} L(w + a) - L(w)

estimated from below by the gradient-based corruption a_hat (Definition 4), whose loss change
approaches the first-order estimate eps * ||top_n(g)||_q as eps -> 0 (Theorem 2), and compared
with random corruption (Definition 3), whose |loss change| Theorem 1 describes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .constraint import Constraint
from .corruption.apply import corrupted
from .corruption.base import Corruption
from .corruption.gradient import gradient_corruption
from .corruption.random import random_corruption
from .errors import ParamCorruptError
from .evaluate import evaluate
from .gradient import dataset_gradient
from .groups import ParameterGroup, as_group
from .losses import LossFn, Metric

__all__ = ["IndicatorResult", "RandomStats", "indicator"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class RandomStats:
    """Statistics of the loss change over R random corruptions."""

    trials: int
    mean: float
    std: float
    max: float
    quantiles: dict[str, float]
    abs_quantiles: dict[str, float]
    metric_mean: dict[str, float] = field(default_factory=dict)


@dataclass
class IndicatorResult:
    """What :func:`indicator` measured.

    ``loss_*`` are on the gradient's data (where Theorem 2's ratio compares like with like);
    ``eval_*`` are on the evaluation data (the test metrics), when one was given.
    """

    group: str
    p: float
    eps: float
    n: int
    k: int
    G: float
    first_order: float
    loss_before: float
    loss_after: float
    loss_change: float
    ratio: float | None
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    random: RandomStats | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stats(changes: list[float], metrics: list[dict[str, float]]) -> RandomStats:
    arr = np.asarray(changes, dtype=np.float64)
    qs = {f"q{int(q * 100):02d}": float(np.quantile(arr, q)) for q in QUANTILES}
    aqs = {f"q{int(q * 100):02d}": float(np.quantile(np.abs(arr), q)) for q in QUANTILES}
    metric_mean = {}
    for name in metrics[0] if metrics else {}:
        metric_mean[name] = float(np.mean([m[name] for m in metrics]))
    return RandomStats(
        trials=len(arr),
        mean=float(arr.mean()),
        std=float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        max=float(arr.max()),
        quantiles=qs,
        abs_quantiles=aqs,
        metric_mean=metric_mean,
    )


def indicator(
    model: nn.Module,
    constraint: Constraint,
    loader: Iterable[Any],
    loss_fn: LossFn,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    eval_loader: Iterable[Any] | None = None,
    metrics: Mapping[str, Metric] | None = None,
    random_trials: int = 0,
    generator: torch.Generator | None = None,
    gradient: Mapping[str, Tensor] | None = None,
    progress: bool = False,
) -> IndicatorResult:
    """Measure the indicator of a group under S with both estimators.

    Args:
        model: the network (left exactly as it was).
        constraint: the set S.
        loader: the data of the gradient (the paper: the training set); the Theorem 2 ratio
            (measured loss change / first-order estimate) is computed on it.
        loss_fn: the batch loss (see :mod:`paramcorrupt.losses`).
        group: the parameters (default: every trainable one).
        eval_loader: other data (a test set) to report loss and metrics on, before and after.
        metrics: name -> metric, measured on ``eval_loader`` (or on ``loader`` without one).
        random_trials: R, the number of random corruptions (Definition 3) to draw.
        generator: the source of randomness for the random trials (required when R > 0).
        gradient: the data set gradient at w, if already computed (sliced by the group).
        progress: show progress bars.

    Returns:
        An :class:`IndicatorResult`. ``ratio`` is ``None`` when the first-order estimate is 0
        (G = 0), where Theorem 2's ratio is undefined.
    """
    if isinstance(random_trials, bool) or not isinstance(random_trials, int) or random_trials < 0:
        raise ParamCorruptError(f"random_trials must be an integer >= 0, got {random_trials!r}")
    if random_trials and generator is None:
        raise ParamCorruptError("random_trials > 0 needs an explicit torch.Generator")
    group = as_group(model, group)
    k = group.numel(model)
    n = constraint.size(k)
    if gradient is None:
        gradient = dataset_gradient(model, loader, loss_fn, group, progress=progress)

    def measure(corruption: Corruption | None) -> tuple[float, dict[str, float]]:
        if corruption is None:
            on_grad = evaluate(model, loader, loss_fn, None if eval_loader is not None else metrics, progress=progress)
            return on_grad["loss"], (evaluate(model, eval_loader, loss_fn, metrics) if eval_loader is not None else on_grad)
        with corrupted(model, corruption):
            return measure(None)

    loss_before, eval_before = measure(None)
    a_hat = gradient_corruption(gradient, constraint, group)
    loss_after, eval_after = measure(a_hat)
    first_order = a_hat.info["first_order"]
    change = loss_after - loss_before
    stats = None
    if random_trials:
        changes, metric_values = [], []
        for _ in range(random_trials):
            loss_r, eval_r = measure(random_corruption(model, constraint, group, generator=generator))
            changes.append(loss_r - loss_before)
            metric_values.append(eval_r)
        stats = _stats(changes, metric_values)
    return IndicatorResult(
        group=group.name,
        p=constraint.p,
        eps=constraint.eps,
        n=n,
        k=k,
        G=a_hat.info["G"],
        first_order=first_order,
        loss_before=loss_before,
        loss_after=loss_after,
        loss_change=change,
        ratio=change / first_order if first_order > 0 else None,
        eval_before=eval_before,
        eval_after=eval_after,
        random=stats,
    )

