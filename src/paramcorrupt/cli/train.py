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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import distributed as D
from ..experiments import (
    DEFAULT_EPOCHS,
    DEFAULT_EVAL_EPS,
    MethodConfig,
    TaskSetup,
    goal_check,
    parse_method,
    run_one,
    table2_markdown,
    task_setup,
    validate,
)
from ..experiments.markdown import display_of
from ..experiments.training import parse_number, parse_top_n
from . import CLIError

__all__ = ["MethodConfig", "parse_method", "register", "run_compare", "run_train"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(parse_number(t) for t in text.split(",") if t.strip())
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
    parser.add_argument("--eps", type=parse_number, default=0.5, help="resistant: radius of a_hat (default: 0.5, the paper's CIFAR-10 setting)")
    parser.add_argument("--p", type=parse_number, default=2.0, help="resistant/regularised: the norm p (default: 2)")
    parser.add_argument("--n", "--top-n", type=parse_top_n, default=None, help="resistant: top-n per step, or 'all' (default: all; under torchrun write --top-n: torchrun reads --n as one of its own options)")
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
    validate(config)
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
        validate(config)
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
            _, shown, _ = display_of([result])
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
