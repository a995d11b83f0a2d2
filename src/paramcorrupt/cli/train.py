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
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import parallel as D
from ..errors import ParamCorruptError
from ..experiments import (
    DEFAULT_EPOCHS,
    DEFAULT_EVAL_EPS,
    MethodConfig,
    TaskSetup,
    goal_check,
    run_one,
    table2_markdown,
    task_setup,
    validate,
)
from ..experiments.markdown import display_of
from ..experiments.runs import check_output_folder
from . import CLIError
from .probe import use_hf_flag
from .values import (
    N_HELP,
    argument_type,
    floats,
    ints,
    number,
    parse_method,
    parse_n,
    parse_p,
    task_option_values,
    task_options,
)

__all__ = ["register", "run_compare", "run_train"]


#: argparse types of the options (the parsers of :mod:`paramcorrupt.cli.values`)
_EPS = argument_type(lambda text: number(text, "eps"))
_P = argument_type(parse_p)
_N = argument_type(lambda text: parse_n(text, "n"))


def _eval_eps(text: str) -> tuple[float, ...]:
    """``--eval-eps``: radii > 0, checked when parsed (before any training)."""
    values = tuple(floats(text, "--eval-eps"))
    for value in values:
        if not (math.isfinite(value) and value > 0):
            raise ParamCorruptError(f"each radius must be a finite number > 0, got {value:g}")
    return values


_EVAL_EPS = argument_type(_eval_eps)
_SEEDS = argument_type(lambda text: tuple(ints(text, "--seeds")))


# --------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=None, help="the task: digits (default), cifar10, ptb-lm, ... (see paramcorrupt.tasks.TASKS)")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the task's factory, e.g. model=tiny, limit_train=512 (repeatable)")
    parser.add_argument("--hf", default=None, metavar="PATH",
                        help="a local Hugging Face checkpoint folder (safetensors): short for --task hf --task-option path=PATH")
    parser.add_argument("--data-dir", default=None, help="the folder holding the task's data (cifar10_jpg/, ptb_lm/; default: $PARAMCORRUPT_DATA)")
    parser.add_argument("--epochs", type=int, default=None, help=f"training epochs (default: the task's recipe; digits: 30; else {DEFAULT_EPOCHS})")
    parser.add_argument("--lr", type=float, default=None, help="(peak) learning rate (default: the task's recipe; digits: 0.1)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the task's; digits: 64)")
    parser.add_argument("--eps", type=_EPS, default=0.5, help="resistant: radius of a_hat (default: 0.5, the paper's CIFAR-10 setting)")
    parser.add_argument("--p", type=_P, default=2.0, help="resistant/regularised: the norm p (default: 2)")
    parser.add_argument("--n", "--top-n", type=_N, default=None, help="resistant: top-n per step, " + N_HELP + " (default: all; under torchrun write --top-n: torchrun reads --n as one of its own options)")
    parser.add_argument("--alpha", type=float, default=0.5, help="resistant: weight of L(w + a_hat) (default: 0.5)")
    parser.add_argument("--interval", type=int, default=1, help="resistant: two-pass step every INTERVAL steps (default: 1)")
    parser.add_argument("--lam", type=float, default=0.25, help="regularised: lambda of L + lambda ||g||_q (default: 0.25 = alpha * eps)")
    parser.add_argument("--eval-eps", type=_EVAL_EPS, default=DEFAULT_EVAL_EPS, help="L2 radii of the evaluation corruptions (default: 0.05,0.1,0.15,0.2,0.3,0.5)")
    parser.add_argument("--random-trials", type=int, default=3, help="random corruptions per radius (default: 3; 0: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


_TRAIN_EPILOG = """\
method settings (NAME:key=value[:key=value...], overriding the options below):
  plain         epochs, lr
  resistant     eps, p, n (an integer >= 1, or all: also k or none), alpha, interval, epochs, lr,
                relative (true: ASAM's set |a / (|w| + eta)|_p <= eps), eta (default 0.01)
  regularised   lam, p, epochs, lr
  e.g. resistant:eps=0.2:alpha=1, resistant:interval=4, resistant:relative=true:eps=0.5,
  regularised:lam=0.05

your own model (as for probe): --model FILE.py:FACTORY --data FILE.py:FACTORY
  [--checkpoint PATH [--checkpoint-key KEY]]: --data returns a Task-like object or
  (gradient_loader, eval_loader, loss_fn[, metrics]); it trains on its train_loader
  (else the gradient loader) with its info["recipe"], else Adam, lr 1e-3, cosine schedule,
  10 epochs; the checkpoint gives the initial weights. See examples/user_model.py.

  paramcorrupt train --model examples/user_model.py:make_model \\
      --data examples/user_model.py:make_data --method resistant --eps 0.1 --out runs/mine
"""


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train with a plain, corruption-resistant or regularised loss; evaluate as Table 2",
        description="Train one model (a built-in task, or your own with --model/--data) with one method, "
        "checkpointing every epoch (an interrupted run resumes), save its weights (model.pt, a state dict) "
        "and evaluate it as the paper's Table 2: the metric under gradient-based and random L2 corruption "
        "of every parameter at each --eval-eps.",
        epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--method", default="plain", help="plain, resistant or regularised, optionally with :key=value settings (default: plain; see below)")
    _user_model(train)
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

    compare = sub.add_parser(
        "compare", help="Table 2: baseline vs corruption-resistant training over several seeds, as Markdown",
        description="Train one model per method and seed (a built-in task, or your own with --model/--data, as "
        "train does), each in OUT/METHOD-seedS (a finished run is reused, an interrupted one resumes), and write "
        "OUT/table2.md: the metric under gradient-based and random L2 corruption at each --eval-eps, mean ± std "
        "over the seeds, and whether each method beats the first (the baseline) by more than one std where the "
        "baseline loses 10 points or more. With one seed there is no std: none is printed, no such conclusion drawn.",
        epilog=_TRAIN_EPILOG.replace("paramcorrupt train --model", "paramcorrupt compare --model")
        .replace("--method resistant --eps 0.1 --out runs/mine", "--methods plain resistant --seeds 0,1,2 --out runs/mine"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--methods", nargs="+", default=["plain", "resistant"], help="methods (first = the baseline), e.g. plain resistant resistant:interval=2")
    compare.add_argument("--seeds", type=_SEEDS, default=(0, 1, 2), help="comma-separated seeds (default: 0,1,2)")
    compare.add_argument("--out", type=Path, default=Path("compare-out"), help="output folder (default: compare-out)")
    _user_model(compare)
    _common(compare)
    compare.set_defaults(run=run_compare)


def _user_model(parser: argparse.ArgumentParser) -> None:
    """--model/--data/--checkpoint/--checkpoint-key: a user's own model (train and compare)."""
    parser.add_argument("--model", metavar="SPEC", help="your model: package.module:factory or path/file.py:factory returning the nn.Module (needs --data)")
    parser.add_argument("--data", metavar="SPEC", help="your data: a factory returning a Task-like object or (gradient_loader, eval_loader, loss_fn[, metrics])")
    parser.add_argument("--checkpoint", type=Path, metavar="PATH", help="--model: initial weights, a state dict (torch.save) or .safetensors (default: the factory's)")
    parser.add_argument("--checkpoint-key", default=None, metavar="KEY", help="the key of a dict checkpoint holding the state dict, e.g. model_state_dict")


def _user_factory(args: argparse.Namespace) -> tuple[Any, str]:
    """``factory(seed)`` -> the Task of ``--model/--data`` (its model seeded by ``seed``, the
    checkpoint loaded when given; :func:`paramcorrupt.tasks.user.user_task`), and its identity."""
    from ..tasks.user import resolve, user_identity, user_task

    if args.data is None:
        raise ParamCorruptError("--model needs --data (the loaders and the loss; see `paramcorrupt train --help`)")
    if args.task_option or args.data_dir is not None:
        raise ParamCorruptError("--task-option and --data-dir go with --task, not --model/--data")
    if args.model is not None:
        resolve(args.model, "--model")  # a spec that names nothing fails before any work
    resolve(args.data, "--data")

    def factory(seed: int) -> Any:
        return user_task(args.model, args.data, checkpoint=args.checkpoint, checkpoint_key=args.checkpoint_key, seed=seed)

    return factory, user_identity(args.model, args.data, checkpoint=args.checkpoint, checkpoint_key=args.checkpoint_key)


def _base_config(args: argparse.Namespace, seed: int = 0) -> tuple[TaskSetup, MethodConfig]:
    if getattr(args, "checkpoint_key", None) is not None and getattr(args, "checkpoint", None) is None:
        raise ParamCorruptError("--checkpoint-key goes with --checkpoint")
    if getattr(args, "model", None) is not None or getattr(args, "data", None) is not None:
        if args.task != "digits" or args.task_given:
            raise ParamCorruptError("give --task or --model/--data, not both")
        factory, identity = _user_factory(args)
        setup, base = task_setup("custom", seed=seed, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                 factory=factory, identity=identity)
    else:
        if getattr(args, "checkpoint", None) is not None:
            raise ParamCorruptError("--checkpoint goes with --model/--data (a built-in task trains from its own initialisation)")
        from ..tasks import TASKS

        given = task_options(args)
        options = task_option_values(TASKS[args.task], given, args.task) if args.task in TASKS else given
        setup, base = task_setup(
            args.task, options, given=given, seed=seed, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size
        )
    return setup, replace(base, eps=args.eps, p=args.p, n=args.n, alpha=args.alpha, interval=args.interval, lam=args.lam)


def _setup(args: argparse.Namespace) -> None:
    use_hf_flag(args)
    args.task_given = args.task is not None
    args.task = args.task or "digits"
    if args.threads is not None:
        if args.threads < 1:
            raise ParamCorruptError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.random_trials < 0:
        raise ParamCorruptError(f"--random-trials must be >= 0, got {args.random_trials}")


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
    if D.is_main_process():
        check_output_folder(args.out)  # cheap checks first: a folder that cannot be written, before training
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
