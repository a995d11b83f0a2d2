"""Table 2's evaluation runs on probe.sweep and equals the plain loop it replaced (kept here,
literally); the random-sequential fault model gives every row its loop draw, also resumed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paramcorrupt import (
    Constraint,
    accuracy,
    classification_loss,
    corrupted,
    dataset_gradient,
    evaluate,
    gradient_corruption,
    random_corruption,
    select,
)
from paramcorrupt.experiments import table2_metrics
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep
from paramcorrupt.tasks import Task


def literal_table2(task, eval_eps, random_trials, seed):
    """The loop table2_metrics was before it ran on the sweep."""
    model, metric, group = task.model, task.primary_metric, select(task.model, name="all")
    clean = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    gradient = dataset_gradient(model, task.gradient_loader, task.loss_fn, group)
    generator = torch.Generator().manual_seed(10_000 + seed)
    grad, rand = {}, {}
    for eps in eval_eps:
        constraint = Constraint(2.0, eps, None)
        with corrupted(model, gradient_corruption(gradient, constraint, group)):
            grad[f"{eps:g}"] = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)[metric]
        values = []
        for _ in range(random_trials):
            with corrupted(model, random_corruption(model, constraint, group, generator=generator)):
                values.append(evaluate(model, task.eval_loader, task.loss_fn, task.metrics)[metric])
        rand[f"{eps:g}"] = float(np.mean(values)) if values else None
    return {"metric": metric, "clean": clean[metric], "clean_loss": clean["loss"], "gradient": grad, "random": rand,
            "k": group.numel(model)}


def tiny_task():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 5, generator=g)
    y = x[:, :3].argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    data = [(x[:48], y[:48]), (x[48:], y[48:])]
    return Task("tiny", model, data, data, classification_loss, {"accuracy": accuracy}, "accuracy", True)


@pytest.mark.slow
def test_table2_on_the_sweep_equals_the_loop_it_replaced():
    task = tiny_task()
    for trials, seed in ((3, 0), (2, 5), (0, 0)):
        assert table2_metrics(task, (0.3, 1.0, 3.0), random_trials=trials, seed=seed) == literal_table2(
            task, (0.3, 1.0, 3.0), trials, seed
        )


def test_random_sequential_rows_are_the_loop_draws_when_resumed(tmp_path):
    task = tiny_task()
    config = SweepConfig(methods=["random-sequential"], trials=3, p_values=[2, "inf"], eps_values=[0.5, 2.0], seed=7)
    groups = {"all": select(task.model)}
    path = tmp_path / "rows.jsonl"
    whole = sweep(task.model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics, groups=groups,
                  store=ResultsStore(path), progress=False)
    lines = path.read_text().splitlines()
    # keep the header and every other row: the resumed sweep computes the others out of order
    path.write_text("\n".join([lines[0], *lines[1::2][1:]]) + "\n")
    resumed = sweep(task.model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics,
                    groups=groups, store=ResultsStore(path), progress=False)
    assert [r["loss_after"] for r in resumed] == [r["loss_after"] for r in whole]
    # and the draws are one generator's stream in grid order
    generator = torch.Generator().manual_seed(7)
    group = groups["all"]
    for row in whole:
        constraint = Constraint(row["p"], row["eps"], None)
        with corrupted(task.model, random_corruption(task.model, constraint, group, generator=generator)):
            assert evaluate(task.model, task.eval_loader, task.loss_fn)["loss"] == row["loss_after"]
