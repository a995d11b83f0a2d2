"""``paramcorrupt train`` and ``paramcorrupt compare``: corruption-resistant training and the
paper's Table 2 (clean accuracy and accuracy under corruption, baseline vs resistant).

``train`` trains one model with one method, saves a checkpoint after every epoch (resumable)
and the final weights (a state dict of tensors: ``torch.load(path, weights_only=True)``), then
evaluates it the way Table 2 does::

    paramcorrupt train --task digits --method resistant --eps 0.5 --alpha 0.5 --out runs/res0

Every registered task trains (``digits``, ``cifar10``, ``ptb-lm``, ...): ``--task-option
KEY=VALUE`` (repeatable) and ``--data-dir`` go to the task's factory as in ``paramcorrupt
probe``, and the optimiser, schedule, gradient clipping and number of epochs come from the
task's recipe (``task.info["recipe"]``, see :mod:`paramcorrupt.train.recipe`); ``--epochs``,
``--lr`` and ``--batch-size`` override it::

    paramcorrupt train --task ptb-lm --data-dir ../shared/data --task-option model=tiny --epochs 1

``compare`` runs several methods over several seeds and writes Table 2 as Markdown, mean ±
std over seeds (finished runs are reused, so an interrupted compare resumes)::

    paramcorrupt compare --seeds 0,1,2 --methods plain resistant regularised --out runs/table2

A method is ``plain``, ``resistant`` or ``regularised``, optionally with settings that
override the command's options: ``resistant:eps=0.2:alpha=1``, ``resistant:interval=4``,
``regularised:lam=0.05``.

Evaluation (the paper's Table 2, "n = k, L2-norm, all parameters can be corrupted"): the
gradient-based corruption a_hat (Definition 4) of every parameter, L2, n = k, at each
``--eval-eps``, with the gradient taken on the training set in evaluation mode (as the paper
does for every task but ImageNet); the task's primary metric on its evaluation data (accuracy,
shown in %; PTB's log-perplexity, shown as perplexity). Random L2 corruption of the same
radius (mean of ``--random-trials`` draws) is reported beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
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
from ..train import RegularizedLoss, fit
from ..train.recipe import build_optimizer, build_scheduler, fit_options
from . import CLIError

logger = logging.getLogger(__name__)

METHODS = ("plain", "resistant", "regularised")
DEFAULT_EVAL_EPS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
#: epochs when neither the task's recipe nor --epochs says
DEFAULT_EPOCHS = 10


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
    batch_size: int | None = 64

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


@dataclass(frozen=True)
class TaskSetup:
    """The task a command trains: its name, factory options (strings, as ``--task-option``
    gives them; ``data_dir`` included), its training recipe and the identity that finished
    runs are matched by (the name, plus the options but ``data_dir`` and ``cache_dir``)."""

    name: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    identity: str = "digits"


def _build_task(setup: TaskSetup, seed: int, batch_size: int | None) -> Any:
    """The task for ``seed``, its model untrained."""
    if setup.name == "digits":
        from ..tasks.digits import DIGITS_RECIPE

        options: dict[str, Any] = {k: _number(v) for k, v in setup.options.items()}
        options.update(batch_size=DIGITS_RECIPE["batch_size"] if batch_size is None else batch_size, train=False)
    else:
        options = dict(setup.options)
    from ..tasks import get_task

    try:
        return get_task(setup.name, seed=seed, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            key = str(error).rpartition("argument")[2].strip(" '\"")
            raise CLIError(f"unknown --task-option {key!r} for the {setup.name} task") from None
        raise
    except FileNotFoundError as error:
        text = error.args[-1] if error.args else str(error)
        raise FileNotFoundError(
            f"{text} (give --data-dir or set PARAMCORRUPT_DATA; without data, training is available for the digits task only)"
        ) from None


def _number(text: Any) -> Any:
    """A digits option from the command line: an int or float when it reads as one."""
    if not isinstance(text, str):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def task_setup(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
) -> tuple[TaskSetup, MethodConfig]:
    """Check the task and its options (building it once, untrained) and read its recipe:
    the setup and the base MethodConfig (epochs, lr, batch size: the arguments, else the
    recipe's)."""
    from ..tasks import TASKS

    if name not in TASKS:
        raise CLIError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    options = dict(options or {})
    for key in ("seed", "train", "checkpoint", "state_dict", "epochs"):
        if key in options:
            raise CLIError(f"--task-option {key} is set by the train command; use its own options instead")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if name != "digits" and batch_size is not None:
        if "batch_size" in options:
            raise CLIError("give the batch size once: --batch-size or --task-option batch_size")
        options["batch_size"] = str(batch_size)
    identity = name
    shown = {k: v for k, v in sorted(options.items()) if k not in ("data_dir", "cache_dir")}
    if shown:
        identity += "(" + ",".join(f"{k}={v}" for k, v in shown.items()) + ")"
    setup = TaskSetup(name, options, {}, identity)
    task = _build_task(setup, seed, batch_size)
    if task.train_loader is None:
        raise CLIError(f"the {name} task has no training data (train_loader)")
    recipe = dict(task.info.get("recipe") or {})
    if "lr" not in recipe and lr is None:
        raise CLIError(f"the {name} task gives no training recipe with a learning rate; give --lr")
    if batch_size is None:
        batch_size = recipe.get("batch_size", getattr(task.train_loader, "batch_size", None))
    config = MethodConfig(
        epochs=int(epochs if epochs is not None else recipe.get("epochs", DEFAULT_EPOCHS)),
        lr=float(lr if lr is not None else recipe["lr"]),
        batch_size=None if batch_size is None else int(batch_size),
    )
    return replace(setup, recipe=recipe), config


def train_model(
    config: MethodConfig,
    seed: int,
    *,
    task_name: str = "digits",
    checkpoint: Path | None = None,
    progress: bool = False,
    setup: TaskSetup | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one model with one method and the task's recipe (for digits: SGD, Nesterov
    momentum 0.9, weight decay 5e-4, one-cycle schedule peaking at ``lr``), the recipe's
    ``lr`` and ``epochs`` replaced by the config's; return the task and a record."""
    _validate(config)
    setup = setup or TaskSetup(task_name, identity=task_name)
    task = _build_task(setup, seed, config.batch_size)
    model = task.model
    recipe = {**(task.info.get("recipe") or {}), **setup.recipe, "lr": config.lr, "epochs": config.epochs}
    penalty = None
    resistant = config.method == "resistant"
    settings = None
    if resistant:
        settings = {"eps": config.eps, "p": config.p, "n": config.n, "alpha": config.alpha, "interval": config.interval}
    optimizer = build_optimizer(model, recipe, resistant=settings)
    if config.method == "regularised":
        penalty = RegularizedLoss(config.lam, config.p)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=len(task.train_loader), epochs=config.epochs)
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
        # a checkpoint of another method, epoch count, seed or task is refused
        identity={"recipe": _recipe(config), "seed": seed, "task": setup.identity},
        progress=progress,
        **fit_options(recipe, resistant=resistant),
    )
    model.eval()
    # the epochs' own times: a fit resumed from a checkpoint counts the epochs run before too
    seconds = sum(r["seconds"] for r in history)
    logger.info("trained in %.1f s (this call: %.1f s)", seconds, time.perf_counter() - started)
    return task, {"train_seconds": seconds, "history": history}


def table2_metrics(task: Any, eval_eps: tuple[float, ...], *, random_trials: int = 3, seed: int = 0) -> dict[str, Any]:
    """The primary metric clean and under L2, n = k corruption of every parameter (Table 2)."""
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
    out = {
        "metric": metric,
        "clean": clean[metric],
        "clean_loss": clean["loss"],
        "gradient": gradient_rows,
        "random": random_rows,
        "k": group.numel(model),
    }
    if metric not in _DISPLAY:  # the known metrics' direction is in _DISPLAY
        out["higher_is_better"] = bool(getattr(task, "higher_is_better", True))
    return out


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
    setup: TaskSetup | None = None,
) -> dict[str, Any]:
    """Train and evaluate one (recipe, seed), writing ``model.pt`` and ``results.json`` in
    ``out``; a finished run with the same recipe and evaluation is read back instead."""
    results_path = out / "results.json"
    setup = setup or TaskSetup(task_name, identity=task_name)
    settings = {"recipe": _recipe(config), "seed": seed, "task": setup.identity, "eval_eps": list(eval_eps), "random_trials": random_trials}
    # under torchrun rank 0 reads and writes the files; every rank trains and evaluates
    previous = D.on_main(lambda: json.loads(results_path.read_text()) if reuse and results_path.exists() else None)
    if previous is not None and {k: previous.get(k) for k in settings} == json.loads(json.dumps(settings)):
        return previous
    if D.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    task, record = train_model(config, seed, checkpoint=out / "checkpoint.pt", progress=progress, setup=setup)
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


#: metric -> (what the tables call it, value -> shown value, higher is better)
_DISPLAY: dict[str, tuple[str, Any, bool]] = {
    "accuracy": ("Accuracy (%)", lambda v: v * 100, True),
    "uas": ("UAS (%)", lambda v: v * 100, True),
    "las": ("LAS (%)", lambda v: v * 100, True),
    "log_ppl": ("Perplexity (lower is better)", math.exp, False),
    "perplexity": ("Perplexity (lower is better)", lambda v: v, False),
    "loss": ("Loss (lower is better)", lambda v: v, False),
    "bleu": ("BLEU", lambda v: v, True),
}


def display(metric: str, higher_is_better: bool = True) -> tuple[str, Any, bool]:
    """How a metric is shown: (title, value -> shown value, higher is better). Accuracy in %,
    PTB's log-perplexity as perplexity, anything else as it is."""
    if metric in _DISPLAY:
        return _DISPLAY[metric]
    return (f"{metric} ({'higher' if higher_is_better else 'lower'} is better)", lambda v: v, higher_is_better)


def _display_of(results: list[dict[str, Any]]) -> tuple[str, Any, bool]:
    first = results[0] if results else {}
    return display(first.get("metric", "accuracy"), first.get("higher_is_better", True))


def _stats(values: list[float], shown: Any = lambda v: v * 100) -> tuple[float, float]:
    arr = np.asarray([shown(v) for v in values], dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def table2_markdown(results: list[dict[str, Any]], labels: list[str], eval_eps: tuple[float, ...]) -> str:
    """Table 2's layout: rows "w/o corruption" and each eps; a column per method, mean ± std
    over seeds (accuracy in %, log-perplexity as perplexity: see :func:`display`), the
    difference to the first column in brackets."""
    title, shown, _ = _display_of(results)
    by_label = {label: [r for r in results if r["label"] == label] for label in labels}
    seeds = sorted({r["seed"] for r in results})
    header = "| | ε | " + " | ".join(labels) + " |"
    lines = [header, "|---|---|" + "---|" * len(labels)]

    def row(name: str, eps: str, pick) -> str:
        cells = []
        base_mean = None
        for i, label in enumerate(labels):
            mean, std = _stats([pick(r) for r in by_label[label]], shown)
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
        f"{title} on the test set, mean ± std (ddof=1) over seeds {', '.join(map(str, seeds))}; "
        "corruption: L2, n = k (all parameters), gradient-based a_hat with the gradient of the "
        "training set (Definition 4), random = mean of the random draws. "
        f"Mean training time per model: {'; '.join(times)}."
    )
    return "\n".join(lines)


def goal_check(results: list[dict[str, Any]], baseline: str, candidate: str, eval_eps: tuple[float, ...]) -> list[str]:
    """Where the baseline loses >= 10 points: is the candidate better by more than one std
    (the larger of the two)? And is its clean value within 0.5 points? (Points of the shown
    metric: accuracy in %, perplexity; "better" follows the metric's direction.)"""
    base = [r for r in results if r["label"] == baseline]
    cand = [r for r in results if r["label"] == candidate]
    _, shown, higher = _display_of(base or cand)
    sign = 1.0 if higher else -1.0  # sign * (a - b) > 0: a is better than b
    better = "higher" if higher else "lower"
    lines = []
    clean_b, _ = _stats([r["clean"] for r in base], shown)
    clean_c, _ = _stats([r["clean"] for r in cand], shown)
    goal = ">= -0.50" if higher else "<= +0.50"
    lines.append(f"clean: {clean_c:.2f} vs {clean_b:.2f} ({clean_c - clean_b:+.2f}; goal {goal}: {'met' if sign * (clean_c - clean_b) >= -0.5 else 'NOT met'})")
    met = 0
    for eps in eval_eps:
        key = f"{eps:g}"
        mb, sb = _stats([r["gradient"][key] for r in base], shown)
        mc, sc = _stats([r["gradient"][key] for r in cand], shown)
        if sign * (clean_b - mb) < 10:
            continue
        ok = sign * (mc - mb) > max(sb, sc)
        met += ok
        lines.append(f"eps={key}: baseline loses {sign * (clean_b - mb):.1f} points; {mc:.2f} ± {sc:.2f} vs {mb:.2f} ± {sb:.2f}: {f'{better} by more than one std' if ok else f'NOT {better} by more than one std'}")
    lines.append(f"eps values where the baseline loses >= 10 points and the candidate is {better} by > 1 std: {met}")
    return lines


# --------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="digits", help="the task: digits (default), cifar10, ptb-lm, ... (see paramcorrupt.tasks.TASKS)")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the task's factory, e.g. model=tiny, limit_train=512 (repeatable)")
    parser.add_argument("--data-dir", default=None, help="the folder holding the task's data (cifar10_jpg/, ptb_lm/; default: $PARAMCORRUPT_DATA)")
    parser.add_argument("--epochs", type=int, default=None, help=f"training epochs (default: the task's recipe; digits: 30; else {DEFAULT_EPOCHS})")
    parser.add_argument("--lr", type=float, default=None, help="(peak) learning rate (default: the task's recipe; digits: 0.1)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the task's; digits: 64)")
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
    train.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the checkpoint of an interrupted run in --out (default); --no-resume starts over",
    )
    _common(train)
    train.set_defaults(run=run_train)

    compare = sub.add_parser("compare", help="Table 2: baseline vs corruption-resistant training over several seeds, as Markdown")
    compare.add_argument("--methods", nargs="+", default=["plain", "resistant"], help="methods (first = the baseline), e.g. plain resistant resistant:interval=2")
    compare.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="comma-separated seeds (default: 0,1,2)")
    compare.add_argument("--out", type=Path, default=Path("compare-out"), help="output folder (default: compare-out)")
    _common(compare)
    compare.set_defaults(run=run_compare)


def _base_config(args: argparse.Namespace, seed: int = 0) -> tuple[TaskSetup, MethodConfig]:
    from .probe import task_options

    setup, base = task_setup(
        args.task, task_options(args), seed=seed, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size
    )
    return setup, replace(base, eps=args.eps, p=args.p, n=args.n, alpha=args.alpha, interval=args.interval, lam=args.lam)


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
    setup, base = _base_config(args, args.seed)
    config = parse_method(args.method, base)
    _validate(config)
    checkpoint = args.out / "checkpoint.pt"
    if not args.resume and D.is_main_process() and checkpoint.exists():
        checkpoint.unlink()
    print(f"training {config.label()} on {setup.identity} (seed {args.seed}, {config.epochs} epochs) ...", flush=True)
    result = run_one(
        config,
        args.seed,
        args.out,
        eval_eps=args.eval_eps,
        random_trials=args.random_trials,
        progress=not args.quiet,
        reuse=False,
        setup=setup,
    )
    print()
    print(table2_markdown([result], [result["label"]], args.eval_eps))
    print(f"\nweights: {args.out / 'model.pt'} (torch.load(..., weights_only=True)); results: {args.out / 'results.json'}")
    return 0


@_distributed
def run_compare(args: argparse.Namespace) -> int:
    _setup(args)
    if not args.seeds:
        raise CLIError("--seeds needs at least one seed")
    setup, base = _base_config(args, args.seeds[0])
    configs = [parse_method(spec, base) for spec in args.methods]
    for config in configs:
        _validate(config)
    labels = [c.label() for c in configs]
    if len(set(labels)) != len(labels):
        raise CLIError(f"two methods have the same settings: {labels}")
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
                progress=not args.quiet,
                setup=setup,
            )
            _, shown, _ = _display_of([result])
            print(
                f"{config.label()} seed {seed}: clean {shown(result['clean']):.2f}, "
                + ", ".join(f"ε={k}: {shown(v):.1f}" for k, v in result["gradient"].items())
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
