"""Theorem 2's ratio and the random corruption's mean, to second order (issue 24, point 3):
``probe --second-order`` sweeps on the digits ResNet and on the PTB dependency parser
(``ptb-dep``), their reports (with the Theorem 2 section) and a summary of the predictions
against the measurements.

    .venv/bin/python benchmarks/reproduce_second_order.py --out runs/second-order          # both tasks
    .venv/bin/python benchmarks/reproduce_second_order.py --only digits --smoke           # seconds

Each task is trained once (digits: 30 epochs; ptb-dep: 8 epochs, its full recipe), then swept
by parameter type: gradient-based and random corruptions (``--trials`` each), L_2 over
eps 1e-3..1e-1 and L_inf over eps 1e-6..1e-3 (n = k), with the second-order columns (one
Hessian-vector product per row, tr(H)/k by Hutchinson with ``--trace-samples`` probes and
lambda_max by 20 Lanczos steps per group). Sweeps resume from their files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from paramcorrupt.probe import write_report
from paramcorrupt.probe.plan import SweepConfig
from paramcorrupt.probe.store import ResultsStore
from paramcorrupt.probe.sweep import sweep
from paramcorrupt.tasks import get_task

#: (p, eps values) swept per task
GRID = {2.0: (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), math.inf: (1e-6, 1e-5, 1e-4, 1e-3)}
SMOKE_GRID = {2.0: (1e-2,), math.inf: (1e-4,)}


def build(name: str, smoke: bool, data_dir: str | None, epochs: int | None) -> tuple[Any, str]:
    if name == "digits":
        epochs = 1 if smoke else epochs or 30
        return get_task("digits", epochs=epochs, seed=0), f"digits(seed=0,epochs={epochs})"
    options: dict[str, Any] = {
        "epochs": 1 if smoke else epochs or 8,
        "seed": 0,
        "data_dir": data_dir,
    }
    if smoke:
        options.update(limit_train_sentences=50, limit_eval_sentences=20)
    task = get_task("ptb-dep", **options)
    return task, "ptb-dep(" + ",".join(
        f"{k}={v}" for k, v in sorted(options.items()) if k != "data_dir"
    ) + ")"


def run_task(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    start = time.perf_counter()
    task, identity = build(name, args.smoke, args.data_dir, args.epochs)
    trained = time.perf_counter() - start
    print(f"{name}: built and trained in {trained:.0f} s", flush=True)
    groups = task.groupings["type"](task.model)
    gradient_loader = task.gradient_loader
    if args.grad_batches:  # the first batches only: the gradient, H, the ratio all on them
        gradient_loader = [
            batch for _, batch in zip(range(args.grad_batches), task.gradient_loader)
        ]
        identity += f"[gradient: first {args.grad_batches} batches]"
    rows = []
    norms = [float(p) for p in args.p.split(",")]
    for p, eps_values in (SMOKE_GRID if args.smoke else GRID).items():
        if p not in norms:
            continue
        if args.eps:
            eps_values = tuple(float(e) for e in args.eps.split(","))
        config = SweepConfig(
            methods=("random", "gradient"),
            trials=2 if args.smoke else args.trials,
            p_values=(p,),
            eps_values=eps_values,
            seed=0,
            task=identity,
            grouping="type",
            metric=task.primary_metric,
            second_order=4 if args.smoke else args.trace_samples,
        )
        path = args.out / f"{name}-{'inf' if math.isinf(p) else int(p)}.jsonl"
        t0 = time.perf_counter()
        rows += sweep(
            task.model,
            config,
            gradient_loader,
            task.eval_loader,
            task.loss_fn,
            task.metrics,
            groups=groups,
            store=ResultsStore(path),
            progress=False,
        )
        print(f"{name}: {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    report = write_report(sorted(args.out.glob(f"{name}-*.jsonl")), args.out / f"report-{name}")
    print(f"{name}: report {report}", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (group, p, eps): the gradient row's measured and predicted ratio; the random rows'
    mean ΔL, mean ΔL − aᵀg and the prediction (all on the gradient's data)."""
    out: dict[str, Any] = {}
    for r in rows:
        key = f"{r['group']}|p={r['p']}|eps={r['eps']:g}"
        entry = out.setdefault(
            key,
            {
                "k": r["k"],
                "lambda_max": r["lambda_max"],
                "trace_per_k": r["trace_per_k"],
                "trace_per_k_stderr": r["trace_per_k_stderr"],
                "random": [],
            },
        )
        change = r["grad_loss_after"] - r["grad_loss_before"]
        if r["method"] == "gradient":
            entry.update(ratio=r["ratio"], predicted_ratio=r["predicted_ratio"], dloss=change)
        else:
            linear = r["predicted_ratio"] * r["first_order"] - r["second_order"]
            entry["random"].append((change, change - linear, r["second_order"]))
            entry.update(
                predicted_mean=r["predicted_mean"], predicted_mean_stderr=r["predicted_mean_stderr"]
            )
    for entry in out.values():
        draws = torch.tensor(entry.pop("random"), dtype=torch.float64)
        if len(draws):
            se = (
                draws.std(dim=0) / math.sqrt(len(draws))
                if len(draws) > 1
                else torch.full((3,), math.nan)
            )
            entry.update(
                trials=len(draws),
                mean_dloss=float(draws[:, 0].mean()),
                mean_dloss_se=float(se[0]),
                mean_beyond_first=float(draws[:, 1].mean()),
                mean_beyond_first_se=float(se[1]),
                mean_half_quadratic=float(draws[:, 2].mean()),
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/second-order"))
    parser.add_argument("--only", default="digits,ptb-dep")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--trace-samples", type=int, default=100)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--eps", default=None, help="radii for every norm (default: the grid above)"
    )
    parser.add_argument("--p", default="2,inf", help="norms among 2 and inf (default: both)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: digits 30, ptb-dep 8)"
    )
    parser.add_argument(
        "--grad-batches", type=int, default=0, help="gradient data: the first N batches (0: all)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in args.only.split(","):
        summary[name] = summarise(run_task(name, args))
    (args.out / f"summary-{'-'.join(summary)}.json").write_text(
        json.dumps(summary, indent=1, default=str)
    )
    json.dump(summary, sys.stdout, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
