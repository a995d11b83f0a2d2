"""``paramcorrupt demo``: train the digits model, compare random with gradient-based
corruption (the paper's Table 1 in miniature), probe its parameters by type and by position
(Figures 3-5), and write a Markdown report with figures.

Every measurement goes through :func:`paramcorrupt.probe.sweep`; the output folder holds

- ``results.jsonl``: Table 1, all parameters, L_inf, n = k and n = 100;
- ``probe-type.jsonl`` and ``probe-position.jsonl``: the probes, L_inf, n = 100;
- ``report/report.md`` and its figures (when matplotlib is installed).

The demo's own files are rewritten on every run (it retrains the model).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..groups import select

EPS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SIZES = (None, 100)
#: the probes: (grouping, n values); L_inf, random and gradient-based, every eps of EPS
PROBES = (("type", (100,)), ("position", (100,)))
RESULTS = "results.jsonl"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo", help="train a digits model, compare random with gradient-based corruption, probe it, write a report"
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    parser.add_argument("--trials", type=int, default=10, help="random corruptions per setting (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the training and the trials (default: 0)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default: 1; the digits model is tiny, and on a busy machine more threads "
        "only contend)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def _identity(args: argparse.Namespace) -> str:
    return f"digits(seed={args.seed},epochs={args.epochs})"


def table1_rows(
    task: Any, *, eps_values=EPS, sizes=SIZES, trials: int, seed: int, progress: bool,
    path: Path | None = None, identity: str = "digits",
) -> list[dict[str, Any]]:
    """Rows of random vs gradient-based L_inf corruption over every parameter (Table 1).

    Rows have the sweep's schema (:data:`paramcorrupt.probe.ROW_FIELDS`); with ``path`` they
    are written there as well.
    """
    from ..probe.store import ResultsStore
    from ..probe.sweep import SweepConfig, sweep

    config = SweepConfig(
        methods=("gradient", "random"), trials=trials, p_values=(math.inf,), n_values=sizes,
        eps_values=eps_values, seed=seed, task=identity, grouping="all", metric=task.primary_metric,
    )
    store = None
    if path is not None:
        path.unlink(missing_ok=True)  # the demo retrains: its files start afresh
        store = ResultsStore(path)
    return sweep(
        task.model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics,
        groups={"all": select(task.model, name="all")}, store=store, progress=progress,
    )


def probe_rows(
    task: Any, grouping: str, *, sizes, eps_values=EPS, trials: int, seed: int, progress: bool,
    path: Path | None = None, identity: str = "digits",
) -> list[dict[str, Any]]:
    """Random vs gradient-based L_inf corruption of each group of one of the task's groupings."""
    from ..probe.grouping import GROUPINGS
    from ..probe.store import ResultsStore
    from ..probe.sweep import SweepConfig, sweep

    make = task.groupings.get(grouping) or GROUPINGS[grouping]
    config = SweepConfig(
        methods=("gradient", "random"), trials=trials, p_values=(math.inf,), n_values=sizes,
        eps_values=eps_values, seed=seed, task=identity, grouping=grouping, metric=task.primary_metric,
    )
    store = None
    if path is not None:
        path.unlink(missing_ok=True)
        store = ResultsStore(path)
    return sweep(
        task.model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics,
        groups=make(task.model), store=store, progress=progress,
    )


def _summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| n | eps | random acc (mean ± std) | gradient acc | random Δloss (train) | gradient Δloss (train) | first-order |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["n"], r["eps"]) for r in rows}, key=lambda t: (-t[0], t[1]))
    for n, eps in keys:
        rand = [r for r in rows if r["n"] == n and r["eps"] == eps and r["method"] == "random"]
        grad = next(r for r in rows if r["n"] == n and r["eps"] == eps and r["method"] == "gradient")
        acc = np.array([r["metric_after"] for r in rand]) * 100
        dloss = np.array([r["grad_loss_after"] - r["grad_loss_before"] for r in rand])
        lines.append(
            f"| {n} | {eps:g} | {acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.2f} "
            f"| {grad['metric_after'] * 100:.2f} | {dloss.mean():+.2e} "
            f"| {grad['grad_loss_after'] - grad['grad_loss_before']:+.2e} | {grad['first_order']:.2e} |"
        )
    return "\n".join(lines)


def _probe_summary(rows: list[dict[str, Any]]) -> str:
    """Gradient-based accuracy per group (rows) and eps (columns)."""
    grad = [r for r in rows if r["method"] == "gradient"]
    eps_values = sorted({r["eps"] for r in grad})
    groups = list(dict.fromkeys(r["group"] for r in grad))
    lines = [
        "| group | k | " + " | ".join(f"eps {e:g}" for e in eps_values) + " |",
        "|---|---|" + "---|" * len(eps_values),
    ]
    for group in groups:
        cells = {r["eps"]: r["metric_after"] * 100 for r in grad if r["group"] == group}
        k = next(r["k"] for r in grad if r["group"] == group)
        lines.append(f"| {group} | {k} | " + " | ".join(f"{cells[e]:.2f}" for e in eps_values) + " |")
    return "\n".join(lines)


def _write_report(paths: list[Path], out_dir: Path) -> Path | None:
    """The report of every results file, by ``paramcorrupt.probe.report.write_report``."""
    try:
        from ..probe.report import write_report
    except ImportError as error:
        print(f"(no report: {error})")
        return None
    try:
        return write_report(paths, out_dir)
    except ImportError as error:  # matplotlib missing: the report is an optional extra
        print(f"(no report: {error})")
        return None


def run(args: argparse.Namespace) -> int:
    from ..tasks import get_task

    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    progress = not args.quiet
    print(f"training the digits model (seed {args.seed}, {args.epochs} epochs) ...", flush=True)
    task = get_task("digits", seed=args.seed, epochs=args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    identity = _identity(args)
    path = args.out / RESULTS
    rows = table1_rows(
        task, trials=args.trials, seed=args.seed, progress=progress, path=path, identity=identity
    )
    clean = rows[0]["metric_before"] * 100
    print(
        f"\nRandom vs gradient-based corruption, L_inf, all {rows[0]['k']} parameters of the digits ResNet "
        f"(clean test accuracy {clean:.2f}%; gradient and Δloss on the training set, accuracy on the test set, "
        f"{args.trials} random trials):\n"
    )
    print(_summary(rows))
    at = [r for r in rows if r["eps"] == 1e-3 and r["n"] == r["k"]]
    drop_grad = np.mean([r["metric_before"] - r["metric_after"] for r in at if r["method"] == "gradient"])
    drop_rand = np.mean([r["metric_before"] - r["metric_after"] for r in at if r["method"] == "random"])
    versus = f"ratio {drop_grad / drop_rand:.1f}x" if drop_rand > 0 else "random corruption costs nothing on average"
    print(
        f"\nAt eps = 1e-3, n = k: accuracy drop {drop_grad * 100:.2f} points (gradient) vs "
        f"{drop_rand * 100:.2f} (random, mean): {versus}"
    )
    print(f"rows written to {path}")

    paths = [path]
    for grouping, sizes in PROBES:
        probe_path = args.out / f"probe-{grouping}.jsonl"
        probe = probe_rows(
            task, grouping, sizes=sizes, trials=args.trials, seed=args.seed, progress=progress,
            path=probe_path, identity=identity,
        )
        paths.append(probe_path)
        print(f"\nProbe by {grouping} (gradient-based, L_inf, n = {sizes[0]}): test accuracy % after corruption\n")
        print(_probe_summary(probe))
        print(f"rows written to {probe_path}")

    report = _write_report(paths, args.out / "report")
    if report is not None:
        print(f"\nreport: {report}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0
