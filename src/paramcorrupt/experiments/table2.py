"""The paper's Table 2 evaluation of one trained model: the task's primary metric clean, under
the gradient-based L2 corruption a_hat of every parameter (n = k, Definition 4, the gradient
of the training set) at each radius, and the mean of random L2 corruptions of the same radius.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..constraint import Constraint
from ..corruption.base import Corruption
from ..corruption.random import random_corruption
from ..faults import FaultContext, FaultModel, LpFault, register_fault
from ..groups import select
from ..losses import metric_info, metric_info_by_name
from ..probe.sweep import SweepConfig, sweep
from .markdown import known_metric

__all__ = ["DEFAULT_EVAL_EPS", "SequentialRandomLp", "table2_metrics"]

#: the L2 radii of Table 2's evaluation by default
DEFAULT_EVAL_EPS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


@register_fault
class SequentialRandomLp(LpFault):
    """Random corruption (Definition 3) drawn from *one* generator seeded with the sweep's
    seed, in grid order (p, n, eps, then trial): the stream of a plain loop over the grid, as
    the Table 2 evaluation has always drawn it. Rows computed out of order (a resumed sweep,
    other processes' rows) replay the draws before theirs, so every row gets the draw the
    loop gives it. ``random`` (one seed per row) is the cheaper default for new sweeps.

    An instance knows its place in its grid (``index``, set by :meth:`grid`); the context
    gives the sweep's ``seed`` and ``trials``.
    """

    name = "random-sequential"
    stochastic = True
    #: the setting's place in the grid it was built in (p, then n, then eps)
    index: int = 0

    @classmethod
    def grid(cls, values: Mapping[str, Sequence[Any]]) -> list[FaultModel]:
        faults = super().grid(values)
        for index, fault in enumerate(faults):
            fault.index = index  # type: ignore[attr-defined]
        return faults

    def corrupt(self, ctx: FaultContext) -> Corruption:
        position = self.index * ctx.trials + ctx.trial
        key = ("random-sequential", ctx.seed)
        if key not in ctx.cache or ctx.cache[key][1] > position:
            ctx.cache[key] = [torch.Generator().manual_seed(ctx.seed), 0]
        stream = ctx.cache[key]
        # n = None as the loop had it (the closed form without a top-n)
        constraint = Constraint(self.setting["p"], self.setting["eps"], self.setting["n"])
        while True:  # earlier rows' draws (computed elsewhere, or before a resume) are replayed
            corruption = random_corruption(ctx.model, constraint, ctx.group, generator=stream[0])
            stream[1] += 1
            if stream[1] > position:
                return corruption


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
    if not known_metric(metric):  # a built-in metric's direction is known by its name
        higher = metric_info(task.metrics[metric]).higher_is_better if metric in task.metrics else None
        out["higher_is_better"] = metric_info_by_name(metric).higher_is_better if higher is None else higher
    return out
