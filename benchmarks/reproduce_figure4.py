"""Reproduce Figure 4 (a, c) and Table 4: the vulnerability of a CIFAR-10 ResNet by parameter
type (conv, BN, FC) and by position (stem, layer1..layerN, fc), with the gradient-based
corruption.

    .venv/bin/python benchmarks/reproduce_figure4.py            # full: ResNet-20
    .venv/bin/python benchmarks/reproduce_figure4.py --quick    # < 5 min
    .venv/bin/python benchmarks/reproduce_figure4.py --smoke    # seconds (the test suite)

Settings, as the paper: by type, n = 10, L_inf (Figure 4 a); by position, n = 100, L_inf
(Figure 4 c) and n = 100, L2 (Table 4); in full mode also position x type (n = 100, L_inf, a
coarse Figure 7). n is fixed, so every group has the same number of corrupted parameters
and the comparison is per parameter. eps spans the range where our model goes from intact to
destroyed (it differs from the paper's ResNet-34: see the summary). Evaluation reuses the
activations upstream of each group (paramcorrupt.probe.reuse), with identical results.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import repro_common as rc  # noqa: E402

#: the paper's Table 4, CIFAR-10 ResNet-34 (n = 100, L2): eps -> accuracy % of layer1..layer4
PAPER_TABLE4 = {
    10: ("*", "*", "*", "*"),
    20: ("93.6", "*", "87.6", "*"),
    50: ("62.2", "29.6", "31.9", "*"),
    100: ("13.5", "13.2", "11.8", "92.5"),
    200: ("10.0", "10.1", "10.3", "71.4"),
    500: ("10.0", "10.9", "9.8", "30.7"),
}
LINF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
L2 = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)
#: mode -> [(grouping, p, n, eps values)]
SETTINGS = {
    "full": [
        ("type", math.inf, 10, LINF),
        ("position", math.inf, 100, LINF),
        ("position", 2.0, 100, L2),
        ("position_type", math.inf, 100, (0.5, 5.0)),
    ],
    "quick": [
        ("type", math.inf, 10, LINF),
        ("position", math.inf, 100, LINF),
        ("position", 2.0, 100, L2),
    ],
    "smoke": [
        ("type", math.inf, 10, (1.0, 20.0)),
        ("position", math.inf, 100, (1.0, 20.0)),
        ("position", 2.0, 100, (20.0, 200.0)),
    ],
}


def _p(p: float) -> str:
    return "L_inf" if p == math.inf else f"L{p:g}"


def summarise(grouping: str, p: float, n: int, rows: list[dict]) -> tuple[list[str], dict]:
    clean = rows[0]["metric_before"]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    eps_values = sorted({r["eps"] for r in rows})
    cell = {(r["group"], r["eps"]): r for r in rows}
    lines = [f"### by {grouping}, {_p(p)}, n = {n} (accuracy %, loss change in brackets)", ""]
    header = ["eps", *[f"{g} (k={cell[(g, eps_values[0])]['k']:,})" for g in groups]]
    if grouping == "position" and p == 2.0:
        header += ["paper layer1..4"]
    body, most = [], []
    for eps in eps_values:
        line = [f"{eps:g}"]
        for g in groups:
            r = cell[(g, eps)]
            line.append(f"{100 * r['metric_after']:.1f} [{r['loss_change']:+.2g}]")
        if grouping == "position" and p == 2.0:
            line.append(
                " / ".join(PAPER_TABLE4.get(int(eps), ("",))) if eps in PAPER_TABLE4 else ""
            )
        body.append(line)
        # the most vulnerable group at this eps: the largest accuracy drop, then loss change
        worst = max(
            groups,
            key=lambda g: (
                round(clean - cell[(g, eps)]["metric_after"], 6),
                cell[(g, eps)]["loss_change"],
            ),
        )
        most.append((eps, worst))
    lines += rc.table(header, body)
    lines += [
        "Most vulnerable group per eps: " + ", ".join(f"{e:g}: {g}" for e, g in most) + ".",
        "",
    ]
    order = None
    if grouping == "position":
        # lower vs upper: mean accuracy drop over eps, per position (stem and fc are the ends)
        drops = {
            g: rc.mean(clean - cell[(g, e)]["metric_after"] for e in eps_values) for g in groups
        }
        changes = {g: rc.mean(cell[(g, e)]["loss_change"] for e in eps_values) for g in groups}
        order = sorted(groups, key=lambda g: (-drops[g], -changes[g]))
        lines += [
            "Mean accuracy drop over eps (points): "
            + ", ".join(f"{g} {100 * drops[g]:.1f}" for g in groups)
            + f". Most to least vulnerable: {' > '.join(order)}.",
            "",
        ]
    return lines, {
        "grouping": grouping,
        "p": p,
        "n": n,
        "clean": clean,
        "most_vulnerable": most,
        "order": order,
        "rows": [
            {k: r[k] for k in ("group", "eps", "k", "metric_after", "loss_change")} for r in rows
        ],
    }


@rc.main_guard
def main(argv: Sequence[str] | None = None) -> int:
    args = rc.parser(__doc__.split("\n\n")[0], tasks=("cifar10",)).parse_args(argv)
    folder = rc.setup(args, "figure4")
    from paramcorrupt.probe import SweepConfig

    task, meta = rc.trained_task("cifar10", args)
    lines = [
        f"Model: {meta['options']['model']} ({meta['parameters']:,} parameters), clean test accuracy "
        f"{100 * meta['clean']['accuracy']:.2f}% (paper: ResNet-34, 94.3%). Gradient-based corruption, "
        "gradient on the training set without augmentation.",
        "",
    ]
    data, files = [], []
    for grouping, p, n, eps_values in SETTINGS[args.mode]:
        groups = task.groupings[grouping](task.model)
        config = SweepConfig(
            methods=("gradient",),
            p_values=(p,),
            n_values=(n,),
            eps_values=eps_values,
            seed=0,
            task=f"cifar10:{args.mode}",
            grouping=grouping,
            metric="accuracy",
            measure_gradient_data=False,
        )
        path = folder / f"cifar10-{grouping}-{_p(p)}-n{n}.jsonl"
        rows, path = rc.run_sweep(task, config, path, args, groups=groups, reuse_activations=True)
        files.append(path)
        part, summary = summarise(grouping, p, n, rows)
        lines += part
        data.append(summary)
    return rc.finish(
        folder,
        files,
        "Figure 4 / Table 4 reproduction",
        "Figure 4 and Table 4: vulnerability by parameter type and position (CIFAR-10)",
        lines,
        {"settings": data, "model": meta.get("options")},
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
