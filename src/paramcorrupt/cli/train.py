"""``paramcorrupt train`` and ``paramcorrupt compare``: corruption-resistant training and the
paper's Table 2 (clean accuracy and accuracy under corruption, baseline vs resistant).

``train`` trains one model with one method, saves a checkpoint after every epoch (resumable)
and the final weights (a state dict of tensors: ``torch.load(path, weights_only=True)``), then
evaluates it the way Table 2 does::

    paramcorrupt train --task digits --method resistant --eps 0.5 --alpha 0.5 --out runs/res0

``compare`` runs several methods over several seeds and writes Table 2 as Markdown, mean ±
std over seeds (finished runs are reused, so an interrupted compare resumes)::

    paramcorrupt compare --seeds 0,1,2 --methods plain resistant regularised --out runs/table2

A method is ``plain``, ``resistant`` or ``regularised``, optionally with settings that
override the command's options: ``resistant:eps=0.2:alpha=1``, ``resistant:interval=4``,
``regularised:lam=0.05``.

Evaluation (the paper's Table 2, "n = k, L2-norm, all parameters can be corrupted"): the
gradient-based corruption a_hat (Definition 4) of every parameter, L2, n = k, at each
``--eval-eps``, with the gradient taken on the training set in evaluation mode (as the paper
does for every task but ImageNet); accuracy on the test set. Random L2 corruption of the same
radius (mean of ``--random-trials`` draws) is reported beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
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
from ..train import CorruptionResistant, RegularizedLoss, fit
from . import CLIError

logger = logging.getLogger(__name__)

METHODS = ("plain", "resistant", "regularised")
DEFAULT_EVAL_EPS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class MethodConfig:
    """One training recipe: the method and its hyperparameters."""

    method: str = "plain"
    eps: float = 0.5
    p: float = 2.0
    n: int | None = None
    alpha: float = 0.5
    interval: int = 1
    lam: float = 0.25
    epochs: int = 30
    lr: float = 0.1
    batch_size: int = 64

    def label(self) -> str:
        if self.method == "plain":
            return "plain"
        if self.method == "regularised":
            return f"regularised (λ={self.lam:g}, p={_p_text(self.p)})"
        extra = f", interval={self.interval}" if self.interval != 1 else ""
        n = "" if self.n is None else f", n={self.n}"
        return f"resistant (ε={self.eps:g}, α={self.alpha:g}, p={_p_text(self.p)}{n}{extra})"

    def slug(self) -> str:
        if self.method == "plain":
            return f"plain-e{self.epochs}"
        if self.method == "regularised":
            return f"regularised-lam{self.lam:g}-p{_p_text(self.p)}-e{self.epochs}"
        n = "" if self.n is None else f"-n{self.n}"
        return f"resistant-eps{self.eps:g}-a{self.alpha:g}-p{_p_text(self.p)}{n}-i{self.interval}-e{self.epochs}"


def _p_text(p: float) -> str:
    return "inf" if p == math.inf else f"{p:g}"


def _float(text: str) -> float:
    return math.inf if text.strip().lower() in ("inf", "infinity") else float(text)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(_float(t) for t in text.split(",") if t.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _n(text: str) -> int | None:
    return None if text.lower() in ("all", "k", "none") else int(text)


_FIELDS = {"eps": _float, "p": _float, "n": _n, "alpha": float, "interval": int, "lam": float, "epochs": int, "lr": float}


def parse_method(spec: str, base: MethodConfig) -> MethodConfig:
    """``NAME[:key=value]...`` -> a MethodConfig (``regularized`` is accepted for ``regularised``)."""
    name, *settings = spec.split(":")
    name = "regularised" if name == "regularized" else name
    if name not in METHODS:
        raise CLIError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    config = replace(base, method=name)
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in _FIELDS:
            raise CLIError(f"bad method setting {setting!r} in {spec!r}; expected key=value with key in {', '.join(_FIELDS)}")
        try:
            config = replace(config, **{key: _FIELDS[key](value)})
        except ValueError as error:
            raise CLIError(f"bad value in {setting!r}: {error}") from error
    return config


def _validate(config: MethodConfig) -> None:
    if config.method == "resistant":
        Constraint(config.p, config.eps, config.n)
        if not 0 <= config.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {config.alpha}")
        if config.interval < 1:
            raise ValueError(f"interval must be >= 1, got {config.interval}")
    if config.method == "regularised" and config.lam < 0:
        raise ValueError(f"lam must be >= 0, got {config.lam}")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")


def _task(name: str, seed: int, batch_size: int) -> Any:
    if name != "digits":
        raise CLIError(f"training is available for the digits task only (got --task {name})")
    from ..tasks.digits import digits_task

    return digits_task(seed=seed, batch_size=batch_size, train=False)


def train_model(
    config: MethodConfig, seed: int, *, task_name: str = "digits", checkpoint: Path | None = None, progress: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Train one model with one recipe (the digits recipe: SGD, Nesterov momentum 0.9,
    weight decay 5e-4, one-cycle schedule peaking at ``lr``); return the task and a record."""
    _validate(config)
    task = _task(task_name, seed, config.batch_size)
    model = task.model
    base = {"lr": config.lr, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    penalty = None
    if config.method == "resistant":
        optimizer: torch.optim.Optimizer = CorruptionResistant(
            model.parameters(),
            torch.optim.SGD,
            eps=config.eps,
            p=config.p,
            n=config.n,
            alpha=config.alpha,
            interval=config.interval,
            model=model,
            **base,
        )
    else:
        optimizer = torch.optim.SGD(model.parameters(), **base)
        if config.method == "regularised":
            penalty = RegularizedLoss(config.lam, config.p)
    steps = config.epochs * len(task.train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    started = time.perf_counter()
    history = fit(
        model,
        optimizer,
        task.train_loader,
        task.loss_fn,
        epochs=config.epochs,
        scheduler=scheduler,
        penalty=penalty,
        checkpoint=checkpoint,
        progress=progress,
    )
    model.eval()
    # the epochs' own times: a fit resumed from a checkpoint counts the epochs run before too
    seconds = sum(r["seconds"] for r in history)
    logger.info("trained in %.1f s (this call: %.1f s)", seconds, time.perf_counter() - started)
    return task, {"train_seconds": seconds, "history": history}


def table2_metrics(task: Any, eval_eps: tuple[float, ...], *, random_trials: int = 3, seed: int = 0) -> dict[str, Any]:
    """Clean accuracy and accuracy under L2, n = k corruption of every parameter (Table 2)."""
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
    return {
        "metric": metric,
        "clean": clean[metric],
        "clean_loss": clean["loss"],
        "gradient": gradient_rows,
        "random": random_rows,
        "k": group.numel(model),
    }


def _recipe(config: MethodConfig) -> dict[str, Any]:
    """The settings that the method uses (what decides whether a finished run can be reused)."""
    used = {"plain": (), "resistant": ("eps", "p", "n", "alpha", "interval"), "regularised": ("lam", "p")}[config.method]
    keys = ("method", "epochs", "lr", "batch_size", *used)
    return {k: v for k, v in asdict(config).items() if k in keys}


def run_one(
    config: MethodConfig,
    seed: int,
    out: Path,
    *,
    eval_eps: tuple[float, ...],
    random_trials: int,
    task_name: str = "digits",
    progress: bool = False,
    reuse: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one (recipe, seed), writing ``model.pt`` and ``results.json`` in
    ``out``; a finished run with the same recipe and evaluation is read back instead."""
    results_path = out / "results.json"
    settings = {"recipe": _recipe(config), "seed": seed, "task": task_name, "eval_eps": list(eval_eps), "random_trials": random_trials}
    # under torchrun rank 0 reads and writes the files; every rank trains and evaluates
    previous = D.on_main(lambda: json.loads(results_path.read_text()) if reuse and results_path.exists() else None)
    if previous is not None and {k: previous.get(k) for k in settings} == json.loads(json.dumps(settings)):
        return previous
    if D.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    task, record = train_model(config, seed, task_name=task_name, checkpoint=out / "checkpoint.pt", progress=progress)
    if D.is_main_process():
        torch.save(task.model.state_dict(), out / "model.pt")
    metrics = table2_metrics(task, eval_eps, random_trials=random_trials, seed=seed)
    result = {**settings, "config": asdict(config), "label": config.label(), **metrics, **record}
    if D.is_main_process():
        results_path.write_text(json.dumps(result, indent=1, default=float))
    return result


# --------------------------------------------------------------------------------------
# the Markdown table
# --------------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float) * 100
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def table2_markdown(results: list[dict[str, Any]], labels: list[str], eval_eps: tuple[float, ...]) -> str:
    """Table 2's layout: rows "w/o corruption" and each eps; a column per method, mean ± std
    over seeds (accuracy, %), the difference to the first column in brackets."""
    by_label = {label: [r for r in results if r["label"] == label] for label in labels}
    seeds = sorted({r["seed"] for r in results})
    header = "| | ε | " + " | ".join(labels) + " |"
    lines = [header, "|---|---|" + "---|" * len(labels)]

    def row(name: str, eps: str, pick) -> str:
        cells = []
        base_mean = None
        for i, label in enumerate(labels):
            mean, std = _stats([pick(r) for r in by_label[label]])
            if i == 0:
                base_mean = mean
                cells.append(f"{mean:.2f} ± {std:.2f}")
            else:
                cells.append(f"{mean:.2f} ± {std:.2f} ({mean - base_mean:+.2f})")
        return f"| {name} | {eps} | " + " | ".join(cells) + " |"

    lines.append(row("w/o corruption", "-", lambda r: r["clean"]))
    for j, eps in enumerate(eval_eps):
        key = f"{eps:g}"
        lines.append(row("gradient corruption" if j == 0 else "", key, lambda r, key=key: r["gradient"][key]))
    if all(r.get("random") and all(v is not None for v in r["random"].values()) for r in results):
        for j, eps in enumerate(eval_eps):
            key = f"{eps:g}"
            lines.append(row("random corruption" if j == 0 else "", key, lambda r, key=key: r["random"][key]))
    times = [f"{label}: {np.mean([r['train_seconds'] for r in by_label[label]]):.1f} s" for label in labels]
    lines.append("")
    lines.append(
        f"Accuracy (%) on the test set, mean ± std (ddof=1) over seeds {', '.join(map(str, seeds))}; "
        "corruption: L2, n = k (all parameters), gradient-based a_hat with the gradient of the "
        "training set (Definition 4), random = mean of the random draws. "
        f"Mean training time per model: {'; '.join(times)}."
    )
    return "\n".join(lines)


def goal_check(results: list[dict[str, Any]], baseline: str, candidate: str, eval_eps: tuple[float, ...]) -> list[str]:
    """Where the baseline loses >= 10 points: is the candidate higher by more than one std
    (the larger of the two)? And is its clean accuracy within 0.5 points?"""
    base = [r for r in results if r["label"] == baseline]
    cand = [r for r in results if r["label"] == candidate]
    lines = []
    clean_b, _ = _stats([r["clean"] for r in base])
    clean_c, _ = _stats([r["clean"] for r in cand])
    lines.append(f"clean: {clean_c:.2f} vs {clean_b:.2f} ({clean_c - clean_b:+.2f}; goal >= -0.50: {'met' if clean_c - clean_b >= -0.5 else 'NOT met'})")
    met = 0
    for eps in eval_eps:
        key = f"{eps:g}"
        mb, sb = _stats([r["gradient"][key] for r in base])
        mc, sc = _stats([r["gradient"][key] for r in cand])
        if clean_b - mb < 10:
            continue
        ok = mc - mb > max(sb, sc)
        met += ok
        lines.append(f"eps={key}: baseline loses {clean_b - mb:.1f} points; {mc:.2f} ± {sc:.2f} vs {mb:.2f} ± {sb:.2f}: {'higher by more than one std' if ok else 'NOT higher by more than one std'}")
    lines.append(f"eps values where the baseline loses >= 10 points and the candidate is higher by > 1 std: {met}")
    return lines


# --------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="digits", help="the task (default: digits; the only one that trains here)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule (default: 0.1)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    parser.add_argument("--eps", type=_float, default=0.5, help="resistant: radius of a_hat (default: 0.5, the paper's CIFAR-10 setting)")
    parser.add_argument("--p", type=_float, default=2.0, help="resistant/regularised: the norm p (default: 2)")
    parser.add_argument("--n", "--top-n", type=_n, default=None, help="resistant: top-n per step, or 'all' (default: all; under torchrun write --top-n: torchrun reads --n as one of its own options)")
    parser.add_argument("--alpha", type=float, default=0.5, help="resistant: weight of L(w + a_hat) (default: 0.5)")
    parser.add_argument("--interval", type=int, default=1, help="resistant: two-pass step every INTERVAL steps (default: 1)")
    parser.add_argument("--lam", type=float, default=0.25, help="regularised: lambda of L + lambda ||g||_q (default: 0.25 = alpha * eps)")
    parser.add_argument("--eval-eps", type=_floats, default=DEFAULT_EVAL_EPS, help="L2 radii of the evaluation corruptions (default: 0.05,0.1,0.15,0.2,0.3,0.5)")
    parser.add_argument("--random-trials", type=int, default=3, help="random corruptions per radius (default: 3; 0: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train with a plain, corruption-resistant or regularised loss; evaluate as Table 2")
    train.add_argument("--method", default="plain", help="plain, resistant or regularised, optionally with :key=value settings")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and batch order (default: 0)")
    train.add_argument("--out", type=Path, default=Path("train-out"), help="output folder (default: train-out)")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    _common(train)
    train.set_defaults(run=run_train)

    compare = sub.add_parser("compare", help="Table 2: baseline vs corruption-resistant training over several seeds, as Markdown")
    compare.add_argument("--methods", nargs="+", default=["plain", "resistant"], help="methods (first = the baseline), e.g. plain resistant resistant:interval=2")
    compare.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="comma-separated seeds (default: 0,1,2)")
    compare.add_argument("--out", type=Path, default=Path("compare-out"), help="output folder (default: compare-out)")
    _common(compare)
    compare.set_defaults(run=run_compare)


def _base_config(args: argparse.Namespace) -> MethodConfig:
    return MethodConfig(
        eps=args.eps,
        p=args.p,
        n=args.n,
        alpha=args.alpha,
        interval=args.interval,
        lam=args.lam,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
    )


def _setup(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.random_trials < 0:
        raise ValueError(f"--random-trials must be >= 0, got {args.random_trials}")


def _distributed(run: Any) -> Any:
    """Under ``torchrun``: one process group for the command, output and files from rank 0."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        with D.command_session(error=CLIError):
            return run(args)

    return wrapper


@_distributed
def run_train(args: argparse.Namespace) -> int:
    _setup(args)
    config = parse_method(args.method, _base_config(args))
    _validate(config)
    checkpoint = args.out / "checkpoint.pt"
    if args.no_resume and D.is_main_process() and checkpoint.exists():
        checkpoint.unlink()
    print(f"training {config.label()} on {args.task} (seed {args.seed}, {config.epochs} epochs) ...", flush=True)
    result = run_one(
        config,
        args.seed,
        args.out,
        eval_eps=args.eval_eps,
        random_trials=args.random_trials,
        task_name=args.task,
        progress=not args.quiet,
        reuse=False,
    )
    print()
    print(table2_markdown([result], [result["label"]], args.eval_eps))
    print(f"\nweights: {args.out / 'model.pt'} (torch.load(..., weights_only=True)); results: {args.out / 'results.json'}")
    return 0


@_distributed
def run_compare(args: argparse.Namespace) -> int:
    _setup(args)
    base = _base_config(args)
    configs = [parse_method(spec, base) for spec in args.methods]
    for config in configs:
        _validate(config)
    labels = [c.label() for c in configs]
    if len(set(labels)) != len(labels):
        raise CLIError(f"two methods have the same settings: {labels}")
    if not args.seeds:
        raise CLIError("--seeds needs at least one seed")
    results = []
    for config in configs:
        for seed in args.seeds:
            started = time.perf_counter()
            result = run_one(
                config,
                seed,
                args.out / f"{config.slug()}-seed{seed}",
                eval_eps=args.eval_eps,
                random_trials=args.random_trials,
                task_name=args.task,
                progress=not args.quiet,
            )
            print(
                f"{config.label()} seed {seed}: clean {result['clean'] * 100:.2f}, "
                + ", ".join(f"ε={k}: {v * 100:.1f}" for k, v in result["gradient"].items())
                + f" ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            results.append(result)
    table = table2_markdown(results, labels, args.eval_eps)
    checks = []
    for label in labels[1:]:
        checks.append(f"\n{label} vs {labels[0]}:")
        checks.extend(goal_check(results, labels[0], label, args.eval_eps))
    text = table + "\n" + "\n".join(checks) + "\n"
    if D.is_main_process():
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table2.md").write_text(text)
        with (args.out / "results.jsonl").open("w") as f:
            for r in results:
                f.write(json.dumps(r, default=float) + "\n")
    print()
    print(text)
    print(f"table: {args.out / 'table2.md'}; rows: {args.out / 'results.jsonl'}")
    return 0
