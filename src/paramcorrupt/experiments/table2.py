"""The paper's Table 2 evaluation of one trained model: the task's primary metric clean, under
the gradient-based L2 corruption a_hat of every parameter (n = k, Definition 4, the gradient
of the training set) at each radius, and the mean of random L2 corruptions of the same radius.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..groups import select
from ..probe.sweep import SweepConfig, sweep
from .markdown import KNOWN_METRICS

__all__ = ["DEFAULT_EVAL_EPS", "table2_metrics"]

#: the L2 radii of Table 2's evaluation by default
DEFAULT_EVAL_EPS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def table2_metrics(task: Any, eval_eps: tuple[float, ...], *, random_trials: int = 3, seed: int = 0) -> dict[str, Any]:
    """The primary metric clean and under L2, n = k corruption of every parameter (Table 2).

    One :func:`~paramcorrupt.probe.sweep` over the group of every parameter: the
    gradient-based corruption and ``random_trials`` random ones at each radius. The random
    draws come in loop order from one generator seeded ``10_000 + seed`` (the
    ``random-sequential`` fault model). Under ``torchrun`` the sweep splits the rows across
    the processes (the same numbers).

    Returns ``{"metric", "clean", "clean_loss", "gradient": {eps: value}, "random": {eps:
    mean or None}, "k"}`` (eps as ``f"{eps:g}"``; ``higher_is_better`` too for a metric that
    :func:`~paramcorrupt.experiments.markdown.display` does not know).
    """
    model = task.model
    metric = task.primary_metric
    group = select(model, name="all")
    methods = ("gradient", "random-sequential") if random_trials > 0 else ("gradient",)
    config = SweepConfig(
        methods=methods,
        trials=max(random_trials, 1),
        p_values=(2.0,),
        n_values=(None,),
        eps_values=tuple(eval_eps),
        seed=10_000 + seed,
        task=str(task.name),
        grouping="all",
        metric=metric,
        measure_gradient_data=False,
    )
    rows = sweep(model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics,
                 groups={"all": group}, progress=False)
    gradient_rows, random_rows = {}, {}
    for eps in config.eps_values:
        at = [r for r in rows if r["eps"] == eps]
        gradient_rows[f"{eps:g}"] = next(r["metric_after"] for r in at if r["method"] == "gradient")
        values = [r["metric_after"] for r in at if r["method"] == "random-sequential"]
        random_rows[f"{eps:g}"] = float(np.mean(values)) if values else None
    out = {
        "metric": metric,
        "clean": rows[0]["metric_before"],
        "clean_loss": rows[0]["loss_before"],
        "gradient": gradient_rows,
        "random": random_rows,
        "k": group.numel(model),
    }
    if metric not in KNOWN_METRICS:  # the known metrics' direction is known
        out["higher_is_better"] = bool(getattr(task, "higher_is_better", True))
    return out
