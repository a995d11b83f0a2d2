"""``paramcorrupt demo``: train the digits model, compare random with gradient-based
corruption (the paper's Table 1 in miniature), probe its parameters by type and by position
(Figures 3-5), flip bits of its int8 weights at random and by the bit search, and write a
Markdown report with figures.

Every measurement goes through :func:`paramcorrupt.probe.sweep`; the output folder holds

- ``results.jsonl``: Table 1, all parameters, L_inf and L_2, n = k and n = 100;
- ``probe-type.jsonl`` and ``probe-position.jsonl``: the probes, L_inf, n = 100;
- ``probe-faults.jsonl``: hardware faults in the model stored as int8 (per tensor): random bit
  flips (trials) beside the bit search, by the number of flipped bits (one figure);
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

from ..errors import ParamCorruptError
from ..groups import select

EPS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SIZES = (None, 100)
#: Table 1's norms: L_inf as the paper's Table 1, and L_2 with n = k, Theorem 1's premise
#: (the report's Theorem 1 section compares its random rows with the theory)
NORMS = (math.inf, 2.0)
#: the probes: (grouping, n values); L_inf, random and gradient-based, every eps of EPS
PROBES = (("type", (100,)), ("position", (100,)))
RESULTS = "results.jsonl"
#: the fault probe: int8 bit flips, at random and by the bit search, this many flips
FAULT_FLIPS = (1, 2, 5, 10, 20, 50)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="train a digits model, compare random with gradient-based corruption, probe it, write a report",
        description="Train the digits model (an MLP on scikit-learn's 8x8 digits), compare "
        "random with gradient-based corruption of all its parameters (the paper's Table 1 in miniature: L_inf and "
        "L_2, n = k and n = 100), probe its parameters by type and by position (Figures 3-5), flip bits of its "
        "int8 weights at random and by the bit search, and write OUT/report/report.md with its figures. OUT holds "
        "results.jsonl, probe-type.jsonl, probe-position.jsonl and probe-faults.jsonl, rewritten on every run.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)"
    )
    parser.add_argument(
        "--trials", type=int, default=10, help="random corruptions per setting (default: 10)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, the training and the trials (default: 0)",
    )
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default: 1; the digits model is tiny, and on a busy machine more threads "
        "only contend)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def _identity(args: argparse.Namespace) -> str:
    return f"digits(seed={args.seed},epochs={args.epochs})"


def _sweep(task: Any, config: Any, groups: dict[str, Any], path: Path | None, progress: bool) -> list[dict[str, Any]]:
    """Run one of the demo's sweeps on ``task``; with ``path``, its rows also go to a results
    file there, started afresh (the demo retrains) with the task's metric infos and chance."""
    from ..probe.store import ResultsStore, chance_metadata
    from ..probe.sweep import sweep

    store = None
    if path is not None:
        path.unlink(missing_ok=True)
        store = ResultsStore(path, metadata=chance_metadata(task.primary_metric, getattr(task, "chance", None), task.metrics))
    return sweep(task.model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics,
                 groups=groups, store=store, progress=progress)


def table1_rows(
    task: Any,
    *,
    eps_values=EPS,
    sizes=SIZES,
    norms=NORMS,
    trials: int,
    seed: int,
    progress: bool,
    path: Path | None = None,
    identity: str = "digits",
) -> list[dict[str, Any]]:
    """Rows of random vs gradient-based corruption over every parameter (Table 1), L_inf and L_2.

    Rows have the sweep's schema (:data:`paramcorrupt.probe.ROW_FIELDS`); with ``path`` they
    are written there as well.
    """
    from ..probe.sweep import SweepConfig

    config = SweepConfig(
        methods=("gradient", "random"),
        trials=trials,
        p_values=norms,
        n_values=sizes,
        eps_values=eps_values,
        seed=seed,
        task=identity,
        grouping="all",
        metric=task.primary_metric,
    )
    return _sweep(task, config, {"all": select(task.model, name="all")}, path, progress)


def probe_rows(
    task: Any,
    grouping: str,
    *,
    sizes,
    eps_values=EPS,
    trials: int,
    seed: int,
    progress: bool,
    path: Path | None = None,
    identity: str = "digits",
) -> list[dict[str, Any]]:
    """Random vs gradient-based L_inf corruption of each group of one of the task's groupings."""
    from ..groups import GROUPINGS
    from ..probe.sweep import SweepConfig

    make = task.groupings.get(grouping) or GROUPINGS[grouping]
    config = SweepConfig(
        methods=("gradient", "random"),
        trials=trials,
        p_values=(math.inf,),
        n_values=sizes,
        eps_values=eps_values,
        seed=seed,
        task=identity,
        grouping=grouping,
        metric=task.primary_metric,
    )
    return _sweep(task, config, make(task.model), path, progress)


def fault_rows(
    task: Any,
    *,
    flips=FAULT_FLIPS,
    trials: int,
    seed: int,
    progress: bool,
    path: Path | None = None,
    identity: str = "digits",
) -> list[dict[str, Any]]:
    """Random int8 bit flips (``trials`` per count) and the progressive bit search over every
    weight, at each number of ``flips``: the comparison ``--fault bitflip,bit-search`` asks for."""
    from ..probe.sweep import SweepConfig

    setting = {"format": ["int8"], "flips": list(flips)}
    config = SweepConfig(
        methods=("bitflip", "bit-search"),
        settings={"bitflip": setting, "bit-search": setting},
        trials=trials,
        seed=seed,
        task=identity,
        grouping="all",
        metric=task.primary_metric,
    )
    return _sweep(task, config, {"all": select(task.model, name="all")}, path, progress)


def _p_text(p: float) -> str:
    return "inf" if p == math.inf else f"{p:g}"


def _summary(rows: list[dict[str, Any]], p: float = math.inf) -> str:
    """Table 1 of one norm: accuracy (%, test set) and Δloss on the test set (the numbers the
    report's Table 1 shows for the same rows), the gradient-based Δloss on the training set
    and its first-order estimate eps·‖top_n(g)‖_q there (Theorem 2 compares these two)."""
    lines = [
        "| n | eps | random acc % (test, mean ± std) | gradient acc % (test) | random Δloss (test, mean) "
        "| gradient Δloss (test) | gradient Δloss (train) | first-order (train) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [r for r in rows if r["p"] == p]
    keys = sorted({(r["n"], r["eps"]) for r in rows}, key=lambda t: (-t[0], t[1]))
    for n, eps in keys:
        rand = [r for r in rows if r["n"] == n and r["eps"] == eps and r["method"] == "random"]
        grad = next(
            r for r in rows if r["n"] == n and r["eps"] == eps and r["method"] == "gradient"
        )
        acc = np.array([r["metric_after"] for r in rand]) * 100
        dloss = np.array([r["loss_change"] for r in rand])
        lines.append(
            f"| {n} | {eps:g} | {acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.2f} "
            f"| {grad['metric_after'] * 100:.2f} | {dloss.mean():+.2e} | {grad['loss_change']:+.2e} "
            f"| {grad['grad_loss_after'] - grad['grad_loss_before']:+.2e} | {grad['first_order']:.2e} |"
        )
    return "\n".join(lines)


#: the README's table: L_inf, (n, eps) as the README lists them
README_SETTINGS = ((None, 1e-4), (None, 1e-3), (None, 1e-2), (None, 1e-1), (100, 1e-2), (100, 1e-1))


def readme_table(rows: list[dict[str, Any]], settings=README_SETTINGS) -> str:
    """The README's demo table from Table 1's rows (``tests/test_demo_readme.py`` compares)."""
    k = rows[0]["k"]
    lines = [
        "| n | eps | random acc % (test, mean ± std) | gradient acc % (test) |",
        "|---|---|---|---|",
    ]
    for n, eps in settings:
        chosen = [
            r for r in rows if r["p"] == math.inf and r["n_requested"] == n and r["eps"] == eps
        ]
        acc = np.array([r["metric_after"] for r in chosen if r["method"] == "random"]) * 100
        grad = next(r for r in chosen if r["method"] == "gradient")["metric_after"] * 100
        label = f"{k} (all)" if n is None else str(n)
        lines.append(
            f"| {label} | {eps:.0e} | {acc.mean():.2f} ± {acc.std(ddof=1):.2f} | {grad:.2f} |".replace(
                "e-0", "e-"
            )
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
        lines.append(
            f"| {group} | {k} | " + " | ".join(f"{cells[e]:.2f}" for e in eps_values) + " |"
        )
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
        raise ParamCorruptError(f"--trials must be >= 1, got {args.trials}")
    if args.threads < 1:
        raise ParamCorruptError(f"--threads must be >= 1, got {args.threads}")
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
    for p in NORMS:
        print(
            f"\nRandom vs gradient-based corruption, L_{_p_text(p)}, all {rows[0]['k']} parameters of the digits "
            f"ResNet (clean test accuracy {clean:.2f}%; the gradient taken on the training set; "
            f"{args.trials} random trials):\n"
        )
        print(_summary(rows, p))
    at = [r for r in rows if r["p"] == math.inf and r["eps"] == 1e-3 and r["n"] == r["k"]]
    drop_grad = np.mean(
        [r["metric_before"] - r["metric_after"] for r in at if r["method"] == "gradient"]
    )
    drop_rand = np.mean(
        [r["metric_before"] - r["metric_after"] for r in at if r["method"] == "random"]
    )
    versus = (
        f"ratio {drop_grad / drop_rand:.1f}x"
        if drop_rand > 0
        else "random corruption costs nothing on average"
    )
    print(
        f"\nAt L_inf, eps = 1e-3, n = k: accuracy drop {drop_grad * 100:.2f} points (gradient) vs "
        f"{drop_rand * 100:.2f} (random, mean): {versus}"
    )
    print(f"rows written to {path}")

    paths = [path]
    for grouping, sizes in PROBES:
        probe_path = args.out / f"probe-{grouping}.jsonl"
        probe = probe_rows(
            task,
            grouping,
            sizes=sizes,
            trials=args.trials,
            seed=args.seed,
            progress=progress,
            path=probe_path,
            identity=identity,
        )
        paths.append(probe_path)
        print(
            f"\nProbe by {grouping} (gradient-based, L_inf, n = {sizes[0]}): test accuracy % after corruption\n"
        )
        print(_probe_summary(probe))
        print(f"rows written to {probe_path}")

    from ..losses import metric_info
    from ..probe.report.summary import summary

    fault_path = args.out / "probe-faults.jsonl"
    faults = fault_rows(
        task,
        trials=args.trials,
        seed=args.seed,
        progress=progress,
        path=fault_path,
        identity=identity,
    )
    paths.append(fault_path)
    print(
        "\nInt8 bit flips, at random and by the bit search (all weights): test accuracy % after the faults\n"
    )
    print(summary(faults, metric_info(task.metrics[task.primary_metric])))
    print(f"rows written to {fault_path}")

    report = _write_report(paths, args.out / "report")
    if report is not None:
        print(f"\nreport: {report}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0
