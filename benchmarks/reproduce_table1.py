"""Reproduce Table 1: gradient-based vs random corruption of all parameters, L_inf, n = k and
n = 100, eps over decades, on CIFAR-10 (ResNet) and PTB (LSTM LM).

    .venv/bin/python benchmarks/reproduce_table1.py            # full: ResNet-20, small LSTM
    .venv/bin/python benchmarks/reproduce_table1.py --quick    # < 5 min: small models, slices
    .venv/bin/python benchmarks/reproduce_table1.py --smoke    # seconds (the test suite)

The models are trained first if no finished model of the same recipe is in ``--out``/models
(see benchmarks/repro_common.py). The gradient is the data set gradient on the training set
(CIFAR-10 without augmentation), in evaluation mode; metrics are on the test set. Random
corruption: ``trials`` draws per setting (mean reported). Writes ``table1/summary.md`` (the
paper's numbers beside ours), the sweep rows (``table1/*.jsonl``) and the probe report.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import repro_common as rc  # noqa: E402

#: the paper's Table 1 (CIFAR-10 ResNet-34 accuracy %, PTB-LM LSTM log-perplexity):
#: (n, eps) -> (random, proposed); "*" = the original score (difference < 0.1)
PAPER = {
    "cifar10": {
        "clean": 94.3,
        (None, 1e-4): ("*", "93.3 (-1.0)"),
        (None, 1e-3): ("*", "36.1 (-58.2)"),
        (None, 1e-2): ("75.1 (-19.2)", "10.0 (-84.3)"),
        (None, 1e-1): ("10.0 (-84.3)", "10.0 (-84.3)"),
        (None, 1.0): ("10.0 (-84.3)", "10.0 (-84.3)"),
        (100, 1e-2): ("*", "*"),
        (100, 1e-1): ("*", "*"),
        (100, 1.0): ("*", "*"),
        (100, 10.0): ("77.1 (-17.2)", "44.8 (-49.5)"),
        (100, 100.0): ("10.1 (-84.2)", "9.6 (-84.7)"),
    },
    "ptb-lm": {
        "clean": 4.25,
        (None, 1e-4): ("*", "*"),
        (None, 1e-3): ("*", "*"),
        (None, 1e-2): ("*", "4.52 (+0.27)"),
        (None, 1e-1): ("4.43 (+0.18)", "13.25 (+9.00)"),
        (None, 1.0): ("32.21 (+27.96)", "48.92 (+44.67)"),
        (100, 1e-2): ("*", "*"),
        (100, 1e-1): ("*", "*"),
        (100, 1.0): ("*", "*"),
        (100, 10.0): ("*", "*"),
        (100, 100.0): ("16.90 (+12.65)", "23.55 (+19.30)"),
    },
}

#: mode -> (n, eps values, random trials)
SETTINGS = {
    "full": [(None, (1e-4, 1e-3, 1e-2, 1e-1, 1.0), 2), (100, (1e-2, 1e-1, 1.0, 10.0, 100.0), 2)],
    "quick": [(None, (1e-4, 1e-3, 1e-2, 1e-1, 1.0), 2), (100, (1e-2, 1e-1, 1.0, 10.0, 100.0), 2)],
    "smoke": [(None, (1e-3, 1e-1), 2), (100, (1.0, 100.0), 2)],
}


def _cell(value: float, clean: float, metric: str) -> str:
    shown, base = (100 * value, 100 * clean) if metric == "accuracy" else (value, clean)
    if abs(shown - base) < 0.1:
        return f"{shown:.2f} *"
    return f"{shown:.2f} ({shown - base:+.2f})"


def summarise(name: str, rows: list[dict], metric: str) -> tuple[list[str], dict]:
    clean = rows[0]["metric_before"]
    by = {}
    for r in rows:
        by.setdefault((r["n_requested"], r["eps"], r["method"]), []).append(r)
    settings = sorted(
        {(n, eps) for n, eps, _ in by}, key=lambda s: (s[0] is not None, s[0] or 0, s[1])
    )
    out_rows, data = [], []
    for n, eps in settings:
        rand = by.get((n, eps, "random"), [])
        grad = by.get((n, eps, "gradient"), [])
        r_metric = rc.mean(r["metric_after"] for r in rand)
        g_metric = grad[0]["metric_after"] if grad else None
        ratio = grad[0].get("ratio") if grad else None
        r_change = rc.mean(abs(r["loss_change"]) for r in rand)
        g_change = grad[0]["loss_change"] if grad else None
        paper = PAPER[name].get((n, eps), ("", ""))
        out_rows.append(
            [
                "k" if n is None else n,
                f"{eps:g}",
                rc.paper_cell(paper[0]),
                rc.paper_cell(paper[1]),
                _cell(r_metric, clean, metric) if r_metric is not None else "—",
                _cell(g_metric, clean, metric) if g_metric is not None else "—",
                f"{r_change:.2e}" if r_change is not None else "—",
                f"{g_change:.2e}" if g_change is not None else "—",
                f"{ratio:.3f}" if ratio is not None else "—",
            ]
        )
        data.append(
            {
                "n": n,
                "eps": eps,
                "random_metric": r_metric,
                "gradient_metric": g_metric,
                "random_abs_loss_change": r_change,
                "gradient_loss_change": g_change,
                "ratio": ratio,
                "random_trials": len(rand),
            }
        )
    k = rows[0]["k"]
    unit = "accuracy %" if metric == "accuracy" else "log-perplexity"
    lines = [
        f"## {name} ({unit}; k = {k:,} parameters)",
        "",
        f"Clean: paper {PAPER[name]['clean']}, ours {rc.fmt(clean, metric)}.",
        "",
    ]
    lines += rc.table(
        [
            "n",
            "eps",
            "paper random",
            "paper gradient",
            "ours random (mean)",
            "ours gradient",
            "ours |dL| random",
            "ours dL gradient",
            "Thm 2 ratio",
        ],
        out_rows,
    )
    # the claim: gradient-based far stronger than random at equal eps and n
    stronger = [
        d for d in data if d["random_metric"] is not None and d["gradient_metric"] is not None
    ]
    wins = sum(
        rc.damage(metric, clean, d["gradient_metric"])
        >= rc.damage(metric, clean, d["random_metric"]) - 1e-12
        for d in stronger
    )
    threshold = 0.01 if metric == "accuracy" else 0.1
    first = {}
    for method, key in (("random", "random_metric"), ("gradient", "gradient_metric")):
        for n in sorted({d["n"] for d in data}, key=lambda v: (v is not None, v or 0)):
            hit = [
                d["eps"]
                for d in data
                if d["n"] == n
                and d[key] is not None
                and rc.damage(metric, clean, d[key]) >= threshold
            ]
            first[(method, n)] = min(hit) if hit else None
    lines += [
        f"Gradient-based at least as damaging as random in {wins} of {len(stronger)} settings."
    ]
    for n in sorted({d["n"] for d in data}, key=lambda v: (v is not None, v or 0)):
        shown = "1 point" if metric == "accuracy" else "0.1 nats"
        lines.append(
            f"Smallest eps with damage >= {shown} at n = {'k' if n is None else n}: "
            f"gradient {first[('gradient', n)]}, random {first[('random', n)]}."
        )
    lines.append("")
    summary = {
        "clean": clean,
        "k": k,
        "rows": data,
        "gradient_wins": wins,
        "settings": len(stronger),
        "first_damaging_eps": {f"{m}|n={n}": v for (m, n), v in first.items()},
    }
    return lines, summary


@rc.main_guard
def main(argv: Sequence[str] | None = None) -> int:
    args = rc.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    folder = rc.setup(args, "table1")
    from paramcorrupt.probe import SweepConfig

    lines, data, files = [], {}, []
    for name in args.tasks:
        task, meta = rc.trained_task(name, args)
        metric = rc.PRIMARY[name]
        rows = []
        for n, eps_values, trials in SETTINGS[args.mode]:
            config = SweepConfig(
                methods=("random", "gradient"),
                trials=trials,
                p_values=(math.inf,),
                n_values=(n,),
                eps_values=eps_values,
                seed=0,
                task=f"{name}:{args.mode}",
                grouping="all",
                metric=metric,
                measure_gradient_data=rc.MEASURE_GRADIENT_DATA[args.mode],
            )
            path = folder / f"{name}-n{'all' if n is None else n}.jsonl"
            part_rows, path = rc.run_sweep(task, config, path, args)
            rows += part_rows
            files.append(path)
        part, summary = summarise(name, rows, metric)
        lines += part
        data[name] = {**summary, "model": meta.get("options"), "train_clean": meta.get("clean")}
    return rc.finish(
        folder,
        files,
        "Table 1 reproduction",
        "Table 1: gradient-based vs random corruption (L_inf, all parameters)",
        lines,
        data,
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
