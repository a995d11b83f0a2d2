"""Reproduce the paper's parsing results: Table 1 (gradient-based vs random corruption, L_inf,
n = k and n = 100), the vulnerability of the parameter types (embeddings, hidden, output) and
Table 2 (baseline vs corruption-resistant training: L2 gradient regularisation, lambda = 0.01,
as the paper's appendix for PTB-Parsing; 2 seeds in the full mode, 1 in --quick) for Chen & Manning's MLP parser on NLTK's PTB dependency sample (``ptb-dep``).

    .venv/bin/python benchmarks/reproduce_parser.py            # full: 8 epochs, 2 random trials (~4 min)
    .venv/bin/python benchmarks/reproduce_parser.py --quick    # < 5 min: 2 epochs, 2 trials
    .venv/bin/python benchmarks/reproduce_parser.py --smoke    # seconds: a slice, 1 epoch

The model is trained first (Adam 1e-3, decay 0.9 per epoch, batch 1024, as the paper's
appendix) unless a model with the same options is in ``--out``/models. The gradient is the
data set gradient of the oracle-transition loss on the training split; UAS (punctuation not
scored) is measured by greedy parsing of the held-out split. Writes ``parser/summary.md``
(the paper's numbers beside ours), ``summary.json``, the sweep rows and the probe report.

The generic machinery here (:func:`run_family`) also drives ``reproduce_transformer.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import repro_common as rc  # noqa: E402

#: the paper's Table 1, PTB-Parsing column (UAS %): (n, eps) -> (random, proposed)
PAPER_PARSER = {
    "clean": 87.3,
    (None, 1e-4): ("*", "*"),
    (None, 1e-3): ("*", "80.6 (-6.7)"),
    (None, 1e-2): ("79.8 (-7.5)", "6.1 (-81.2)"),
    (None, 1e-1): ("0.0 (-87.3)", "0.0 (-87.3)"),
    (None, 1.0): ("0.0 (-87.3)", "0.0 (-87.3)"),
    (100, 1e-2): ("*", "64.6 (-22.7)"),
    (100, 1e-1): ("*", "11.0 (-76.3)"),
    (100, 1.0): ("87.1 (-0.2)", "0.0 (-87.3)"),
    (100, 10.0): ("31.9 (-55.4)", "0.0 (-87.3)"),
    (100, 100.0): ("0.0 (-87.3)", "0.0 (-87.3)"),
}

def train_regularised(task: Any, epochs: int, lam: float = 0.01) -> list[dict[str, float]]:
    """The parser's recipe (Adam 1e-3, x0.9 per epoch) on L + lam ||g||_2 (Eq. 16, the paper's
    choice for PTB-Parsing: L2 gradient regularisation, lambda = 0.01), exact by double
    back-propagation."""
    from paramcorrupt.train import RegularizedLoss
    from paramcorrupt.train.recipe import fit_recipe

    # the task's recipe with its x0.9 per epoch in the closed form 0.9 ** epoch, updated at
    # every step (as this variant has always trained), not ExponentialLR's running product
    recipe = task.info["recipe"].replace(scheduler_interval="step")
    history = fit_recipe(task.model, task.train_loader, task.loss_fn, recipe, epochs=epochs, penalty=RegularizedLoss(lam, p=2.0))
    task.model.eval()
    return history


FAMILY = {
    "task": "ptb-dep",
    "metric": "uas",
    "unit": "UAS %",
    "scale": 100.0,
    "paper": PAPER_PARSER,
    "grouping": "type",
    "resistant": {"method": "L2 gradient regularisation", "lam": 0.01, "train": train_regularised},
    #: the paper's Table 2, PTB-Parsing (UAS %): eps -> (baseline, proposed); gradient-based
    #: corruption of every parameter
    "paper_table2": {
        0.0: (87.26, 87.89), 0.005: (86.74, 87.67), 0.01: (85.32, 87.26), 0.05: (72.32, 82.06),
        0.1: (61.80, 73.19), 0.2: (49.46, 57.73),
    },
    "sizes": {
        "smoke": {
            "task": {"limit_train_sentences": 200, "limit_eval_sentences": 40, "hidden_size": 32},
            "epochs": 1,
            "table1": [(None, (1e-3, 1e-1), 1), (100, (1.0, 100.0), 1)],
            "groups": {"p": math.inf, "n": 100, "eps": (1.0,)},
            "table2": {"seeds": (0,), "p": 2.0, "eps": (0.05, 0.2)},
        },
        "quick": {
            "task": {},
            "epochs": 2,
            "table1": [(None, (1e-4, 1e-3, 1e-2, 1e-1, 1.0), 2), (100, (1e-2, 1e-1, 1.0, 10.0, 100.0), 2)],
            "groups": {"p": math.inf, "n": 100, "eps": (0.1, 1.0)},
            "table2": {"seeds": (0,), "p": 2.0, "eps": (0.01, 0.05, 0.1, 0.2)},
        },
        "full": {
            "task": {},
            "epochs": 8,
            "table1": [(None, (1e-4, 1e-3, 1e-2, 1e-1, 1.0), 2), (100, (1e-2, 1e-1, 1.0, 10.0, 100.0), 2)],
            "groups": {"p": math.inf, "n": 100, "eps": (0.01, 0.1, 1.0)},
            "table2": {"seeds": (0, 1), "p": 2.0, "eps": (0.005, 0.01, 0.05, 0.1, 0.2)},
        },
    },
}

logger = logging.getLogger("reproduction")


SECTIONS = ("table1", "groups", "table2", "extra")


def arguments(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    ap = rc.parser(description, tasks=())
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run among {', '.join(SECTIONS)} (default: all; "
        "the summary then holds only these: rerun without --only for the whole one, which "
        "reuses the finished models and sweep rows)",
    )
    ap.add_argument(
        "--seeds",
        default=None,
        help="comma-separated Table 2 seeds to run (default: the size's; e.g. --only table2 "
        "--seeds 1 in one process and --seeds 0 in another, then a run without either)",
    )
    args = ap.parse_args(argv)
    try:
        args.seeds = None if args.seeds is None else tuple(int(x) for x in args.seeds.split(",") if x.strip())
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown or not only:
        ap.error(f"--only {args.only!r}: expected sections among {', '.join(SECTIONS)}")
    args.only = only
    return args


def setup(args: argparse.Namespace, script: str) -> Path:
    """Threads, logging, the data folder and the output folder (``rc.setup`` without its
    check of the task names, which lists the image and language-model tasks only)."""
    import torch

    torch.set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.data_dir is None and not os.environ.get("PARAMCORRUPT_DATA"):
        default = rc.ROOT.parent / "shared" / "data"
        if default.is_dir():
            args.data_dir = str(default)
    args.out = Path(args.out or rc.ROOT / "runs" / "reproduction" / args.mode)
    (args.out / script).mkdir(parents=True, exist_ok=True)
    return args.out / script


def model_identity(
    family: Mapping[str, Any], args: argparse.Namespace, seed: int = 0, variant: str = "baseline"
) -> tuple[dict[str, Any], str, Path]:
    """(identity, digest, weights file) of the model :func:`trained` builds: the identity holds
    the task options and the recipe, so models of other budgets sit side by side."""
    size = family["sizes"][args.mode]
    options = {**size["task"], "seed": seed, "epochs": size["epochs"]}
    ident: dict[str, Any] = {"task": family["task"], "mode": args.mode, "options": options}
    if size.get("train"):  # how the family's trainer runs (precision...), when the size says
        ident["train"] = size["train"]
    if variant != "baseline":
        ident["variant"] = variant
        ident["resistant"] = {k: v for k, v in family["resistant"].items() if not callable(v)}
    digest = rc._digest(ident)
    return ident, digest, args.out / "models" / f"{family['task']}-{variant}-seed{seed}.{digest}.pt"


def reused(
    family: Mapping[str, Any], args: argparse.Namespace, options: Mapping[str, Any], weights: Path, digest: str
) -> tuple[Any, dict[str, Any]] | None:
    """(task, metadata) with the saved ``weights`` loaded, or None when they are not there
    (or ``--fresh`` asks to retrain)."""
    from paramcorrupt.tasks import get_task

    meta_path = weights.with_suffix(".json")
    if args.fresh or not (weights.exists() and meta_path.exists()):
        return None
    common = {"data_dir": args.data_dir, "device": args.device}
    task = get_task(family["task"], **common, **{**options, "epochs": 0}, checkpoint=str(weights))
    task.info["model_id"] = digest
    logger.info("%s: reusing %s", family["task"], weights)
    return task, json.loads(meta_path.read_text())


def trained(
    family: Mapping[str, Any], args: argparse.Namespace, seed: int = 0, variant: str = "baseline"
) -> tuple[Any, dict[str, Any]]:
    """The task with its model trained in the task (``epochs``; the "resistant" variant: the
    same recipe through :func:`paramcorrupt.train.fit` with the gradient regulariser of
    ``family["resistant"]``), reused from ``--out``/models when a model with the same
    options exists."""
    from paramcorrupt.tasks import get_task

    size = family["sizes"][args.mode]
    ident, digest, weights = model_identity(family, args, seed, variant)
    options = ident["options"]
    weights.parent.mkdir(parents=True, exist_ok=True)
    found = reused(family, args, options, weights, digest)
    if found is not None:
        return found
    common = {"data_dir": args.data_dir, "device": args.device}
    started = time.perf_counter()
    if variant == "baseline" and "train" in family:  # resumable: a checkpoint after every epoch
        task = get_task(family["task"], **common, **{**options, "epochs": 0})
        checkpoint = weights.with_suffix(".ckpt.pt")
        if args.fresh:
            checkpoint.unlink(missing_ok=True)
        task.info["history"] = family["train"](task, size["epochs"], checkpoint, **size.get("train", {}))
    elif variant == "baseline":
        task = get_task(family["task"], **common, **options)
    else:
        task = get_task(family["task"], **common, **{**options, "epochs": 0})
        task.info["history"] = family["resistant"]["train"](task, size["epochs"])
    return task, store(task, weights, ident, digest, time.perf_counter() - started, args)


def store(
    task: Any, weights: Path, ident: Mapping[str, Any], digest: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Save a freshly trained model beside its metadata (``weights`` and ``weights`` with
    ``.json``: identity, history, training time, clean metrics); returns the metadata."""
    from paramcorrupt.evaluate import evaluate
    from paramcorrupt.experiments import save_model

    clean = evaluate(task.model, task.eval_loader, task.loss_fn, task.metrics)
    meta = {
        "id": digest,
        **ident,
        "history": task.info.get("history"),
        "build_and_train_seconds": seconds,
        "clean": clean,
        "parameters": task.info.get("parameters"),
        "machine": rc.machine(args),
    }
    save_model(task, weights, meta)
    logger.info("%s trained in %.0f s: %s", task.name, seconds, clean)
    return meta


def _cell(value: float | None, clean: float, scale: float) -> str:
    if value is None:
        return "—"
    shown, base = scale * value, scale * clean
    if abs(shown - base) < 0.1:
        return f"{shown:.2f} *"
    return f"{shown:.2f} ({shown - base:+.2f})"


def table1(family: Mapping[str, Any], task: Any, folder: Path, args: argparse.Namespace) -> tuple[list[str], dict, list[Path]]:
    """Random vs gradient-based corruption of every parameter (L_inf)."""
    from paramcorrupt.probe import SweepConfig

    metric, scale, paper = family["metric"], family["scale"], family["paper"]
    rows, files = [], []
    for n, eps_values, trials in family["sizes"][args.mode]["table1"]:
        config = SweepConfig(
            methods=("random", "gradient"), trials=trials, p_values=(math.inf,), n_values=(n,),
            eps_values=eps_values, seed=0, task=f"{family['task']}:{args.mode}", grouping="all",
            metric=metric, measure_gradient_data=False,
        )
        path = folder / f"table1-n{'all' if n is None else n}.jsonl"
        part, path = rc.run_sweep(task, config, path, args)
        rows += part
        files.append(path)
    clean = rows[0]["metric_before"]
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["n_requested"], r["eps"], r["method"]), []).append(r)
    settings = sorted({(n, eps) for n, eps, _ in by}, key=lambda s: (s[0] is not None, s[0] or 0, s[1]))
    out, data = [], []
    for n, eps in settings:
        rand = [r["metric_after"] for r in by.get((n, eps, "random"), [])]
        grad = by.get((n, eps, "gradient"), [])
        r_metric = rc.mean(rand)
        g_metric = grad[0]["metric_after"] if grad else None
        p_rand, p_grad = paper.get((n, eps), ("", ""))
        out.append(["k" if n is None else n, f"{eps:g}", p_rand, p_grad, _cell(r_metric, clean, scale), _cell(g_metric, clean, scale)])
        data.append({"n": n, "eps": eps, "random_metric": r_metric, "gradient_metric": g_metric, "random_trials": len(rand)})
    wins = sum(
        (d["gradient_metric"] is not None and d["random_metric"] is not None and d["gradient_metric"] <= d["random_metric"] + 1e-12)
        for d in data
    )
    lines = [
        f"## Table 1: {family['task']} ({family['unit']}; k = {rows[0]['k']:,} parameters)",
        "",
        f"Clean: paper {paper['clean']}, ours {scale * clean:.2f}.",
        "",
        *rc.table(["n", "eps", "paper random", "paper gradient", "ours random (mean)", "ours gradient"], out),
        f"Gradient-based at least as damaging as random in {wins} of {len(data)} settings.",
        "",
    ]
    return lines, {"clean": clean, "k": rows[0]["k"], "rows": data, "gradient_wins": wins}, files


def groups_sweep(family: Mapping[str, Any], task: Any, folder: Path, args: argparse.Namespace) -> tuple[list[str], dict, list[Path]]:
    """Gradient-based corruption of each group of the family's grouping (n coordinates)."""
    from paramcorrupt.probe import SweepConfig

    spec = family["sizes"][args.mode]["groups"]
    grouping = family["grouping"]
    groups = task.groupings[grouping](task.model)
    config = SweepConfig(
        methods=("gradient",), p_values=(spec["p"],), n_values=(spec["n"],), eps_values=spec["eps"],
        seed=0, task=f"{family['task']}:{args.mode}", grouping=grouping, metric=family["metric"],
        measure_gradient_data=False,
    )
    rows, path = rc.run_sweep(task, config, folder / f"groups-{grouping}.jsonl", args, groups=groups)
    clean, scale = rows[0]["metric_before"], family["scale"]
    eps_values = list(spec["eps"])
    table_rows, data = [], {}
    for label in groups:
        mine = {r["eps"]: r["metric_after"] for r in rows if r["group"] == label}
        table_rows.append([label, *(_cell(mine.get(e), clean, scale) for e in eps_values)])
        data[label] = mine
    p = "inf" if math.isinf(spec["p"]) else f"{spec['p']:g}"
    lines = [
        f"## Groups by {grouping}: gradient-based corruption, L_{p}, n = {spec['n']}",
        "",
        *rc.table([grouping, *(f"eps {e:g}" for e in eps_values)], table_rows),
    ]
    return lines, {"clean": clean, "groups": data, "eps": eps_values}, [path]


def table2_cell(
    family: Mapping[str, Any], folder: Path, args: argparse.Namespace, variant: str, seed: int
) -> tuple[list[dict[str, Any]], Path, dict[str, Any]]:
    """One model of Table 2 (trained, or reused from ``--out``/models) and its sweep of
    gradient-based corruption of every parameter: (rows, results file, model metadata).
    Separate cells may run in separate processes; :func:`table2` then reuses their results."""
    from paramcorrupt.probe import SweepConfig

    spec = family["sizes"][args.mode]["table2"]
    build = family.get("table2_model", trained)  # a family may derive its Table 2 models otherwise
    model_task, meta = build(family, args, seed=seed, variant=variant)
    config = SweepConfig(
        methods=("gradient",), p_values=(spec["p"],), n_values=(None,), eps_values=tuple(spec["eps"]),
        seed=0, task=f"{family['task']}:{args.mode}:{variant}:seed{seed}", grouping="all",
        metric=family["metric"], measure_gradient_data=False,
    )
    rows, path = rc.run_sweep(model_task, config, folder / f"table2-{variant}-seed{seed}.jsonl", args)
    return rows, path, meta


def table2(family: Mapping[str, Any], task: Any, folder: Path, args: argparse.Namespace) -> tuple[list[str], dict, list[Path]]:
    """Baseline vs corruption-resistant training: clean metric and the metric under
    gradient-based corruption of every parameter (L_p, n = k), mean over the seeds."""
    spec = family["sizes"][args.mode]["table2"]
    scale = family["scale"]
    results: dict[str, dict[float, list[float]]] = {"baseline": {}, "resistant": {}}
    files, times = [], {}
    seeds = spec["seeds"] if args.seeds is None else args.seeds
    for variant in ("baseline", "resistant"):
        for seed in seeds:
            rows, path, meta = table2_cell(family, folder, args, variant, seed)
            times[f"{variant}-seed{seed}"] = meta.get("build_and_train_seconds")
            files.append(path)
            results[variant].setdefault(0.0, []).append(rows[0]["metric_before"])
            for r in rows:
                results[variant].setdefault(r["eps"], []).append(r["metric_after"])
    paper = family.get("paper_table2", {})
    out = []
    for eps in [0.0, *spec["eps"]]:
        base, res = rc.mean(results["baseline"].get(eps, [])), rc.mean(results["resistant"].get(eps, []))
        p_base, p_res = paper.get(eps, ("—", "—"))
        out.append([
            "w/o corruption" if eps == 0.0 else f"{eps:g}", p_base, p_res,
            "—" if base is None else f"{scale * base:.2f}", "—" if res is None else f"{scale * res:.2f}",
            "—" if base is None or res is None else f"{scale * (res - base):+.2f}",
        ])
    p = "inf" if math.isinf(spec["p"]) else f"{spec['p']:g}"
    resistant = family["resistant"]
    describe = resistant.get("describe") or f"{resistant['method']}, lambda = {resistant['lam']}"
    lines = [
        f"## Table 2: baseline vs corruption-resistant training ({describe}); "
        f"gradient-based corruption L_{p}, n = k; "
        f"mean of seeds {list(seeds)}",
        "",
        *rc.table(["eps", "paper baseline", "paper proposed", "ours baseline", "ours resistant", "ours diff"], out),
        *(
            [
                f"Both variants continue each seed's {family['sizes'][args.mode]['epochs']}-epoch baseline run for "
                f"{spec['finetune_epochs']} more epochs (its optimiser state, schedule step and batch order): "
                "the baseline with its own loss, the resistant one with the objective above.",
                "",
            ]
            if "finetune_epochs" in spec
            else []
        ),
        f"Training seconds (task build included): {times}",
        "",
    ]
    data = {v: {str(e): vals for e, vals in r.items()} for v, r in results.items()}
    return lines, {"results": data, "train_seconds": times}, files


def run_family(family: Mapping[str, Any], script: str, title: str, argv: Sequence[str] | None, extra: Any = None) -> int:
    args = arguments(title, argv)
    folder = setup(args, script)
    task, meta = trained(family, args)
    lines = [
        f"Model: {task.info.get('parameters', 0):,} parameters; training: {meta.get('build_and_train_seconds', float('nan')):.0f} s "
        f"(task build included); history: {meta.get('history')}",
        "",
    ]
    data: dict[str, Any] = {"model": meta}
    sections = {"table1": table1, "groups": groups_sweep, "table2": table2, "extra": extra}
    if "table2" not in family["sizes"][args.mode]:
        del sections["table2"]
    files: list[Path] = []
    for name, run in sections.items():
        if run is None or name not in args.only:
            continue
        part, summary, more = run(family, task, folder, args)
        lines += part
        data[name] = summary
        files += more
    return rc.finish(folder, files, title, title, lines, data, args)


@rc.main_guard
def main(argv: Sequence[str] | None = None) -> int:
    return run_family(FAMILY, "parser", "MLP parser (ptb-dep): Table 1 and parameter types", argv)


if __name__ == "__main__":
    sys.exit(main())
