"""The paper's Table 2 evaluation of one trained model: the task's primary metric clean, under
the gradient-based L2 corruption a_hat of every parameter (n = k, Definition 4, the gradient
of the training set) at each radius, and the mean of random L2 corruptions of the same radius.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .. import distributed as D
from ..apply import corrupted
from ..constraint import Constraint
from ..corruption import gradient_corruption, random_corruption
from ..evaluate import evaluate
from ..gradient import dataset_gradient
from ..groups import select
from .markdown import KNOWN_METRICS

__all__ = ["DEFAULT_EVAL_EPS", "table2_metrics"]

#: the L2 radii of Table 2's evaluation by default
DEFAULT_EVAL_EPS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def table2_metrics(task: Any, eval_eps: tuple[float, ...], *, random_trials: int = 3, seed: int = 0) -> dict[str, Any]:
    """The primary metric clean and under L2, n = k corruption of every parameter (Table 2).

    Returns ``{"metric", "clean", "clean_loss", "gradient": {eps: value}, "random": {eps:
    mean or None}, "k"}`` (eps as ``f"{eps:g}"``; ``higher_is_better`` too for a metric that
    :func:`~paramcorrupt.experiments.markdown.display` does not know). The random draws
    come from a generator seeded ``10_000 + seed``. Under ``torchrun`` each rank measures its
    shard and the sums are all-reduced (the same numbers).
    """
    model = task.model
    metric = task.primary_metric
    group = select(model, name="all")
    # under torchrun each rank measures its shard and the sums are all-reduced (same numbers)
    task = replace(task, gradient_loader=D.shard(task.gradient_loader), eval_loader=D.shard(task.eval_loader))
    clean = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    gradient = dataset_gradient(model, task.gradient_loader, task.loss_fn, group)
    generator = torch.Generator().manual_seed(10_000 + seed)
    gradient_rows, random_rows = {}, {}
    for eps in eval_eps:
        constraint = Constraint(2.0, eps, None)
        with corrupted(model, gradient_corruption(gradient, constraint, group)):
            gradient_rows[f"{eps:g}"] = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)[metric]
        values = []
        for _ in range(random_trials):
            with corrupted(model, random_corruption(model, constraint, group, generator=generator)):
                values.append(evaluate(model, task.eval_loader, task.loss_fn, task.metrics)[metric])
        random_rows[f"{eps:g}"] = float(np.mean(values)) if values else None
    out = {
        "metric": metric,
        "clean": clean[metric],
        "clean_loss": clean["loss"],
        "gradient": gradient_rows,
        "random": random_rows,
        "k": group.numel(model),
    }
    if metric not in KNOWN_METRICS:  # the known metrics' direction is known
        out["higher_is_better"] = bool(getattr(task, "higher_is_better", True))
    return out
