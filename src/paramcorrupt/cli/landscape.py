"""``paramcorrupt landscape``: the loss along a direction, L(w + t d) (the paper's Figure 2, measured).

Along the gradient-based corruption a_hat of unit radius (t = eps), the iterative corruption's
ray, a random corruption, a random filter-normalised direction (Li et al. 2018), and on the
2-D slice (a_hat, the filter-normalised direction); each group moved alone. Writes OUT/
landscape.csv (group, direction, t, u, loss, metrics), OUT/landscape.md and one PNG of the 1-D
curves and one of the 2-D slice per group (see :mod:`paramcorrupt.probe.landscape`)::

    paramcorrupt landscape --checkpoint digits.pt --t-range -0.2:0.2 --out landscape/
    paramcorrupt landscape --by type --groups conv,norm --p inf --t-range=-1e-2:1e-2 --out types/
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..constraint import Constraint
from ..errors import ParamCorruptError
from ..tasks import Task
from .probe import (
    _builtin_task,
    _groups,
    _user_task,
    display_name,
    synthetic_warning,
    untrained_warning,
    use_hf_flag,
)
from .values import items, n_values, parse_p, span

__all__ = ["register", "run"]


# long: one add_argument call per option, each with its help (as probe's register)
def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "landscape",
        help="loss along a_hat, the iterative corruption, random and filter-normalised directions; a 2-D slice",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
        epilog="A range may start with a minus sign: --t-range -1:1 and --t-range=-1:1 both work.",
    )
    # "-1:1" reads as a value, not an option (argparse takes only plain negative numbers for values)
    parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.eE+-]*:")
    source = parser.add_argument_group("model and data (as probe)")
    source.add_argument(
        "--task",
        default=None,
        help="a built-in task (default: digits, when --model/--data are not given)",
    )
    source.add_argument(
        "--model",
        metavar="SPEC",
        help="package.module:factory or path/file.py:factory returning the nn.Module",
    )
    source.add_argument(
        "--data",
        metavar="SPEC",
        help="factory returning a Task-like object or (gradient_loader, eval_loader, loss_fn[, metrics])",
    )
    source.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="weights to load: a state dict or .safetensors",
    )
    source.add_argument(
        "--checkpoint-key",
        default=None,
        metavar="KEY",
        help="the key of a dict checkpoint holding the state dict",
    )
    source.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="digits: training epochs when no checkpoint is given (default: 30)",
    )
    source.add_argument(
        "--hf",
        default=None,
        metavar="PATH",
        help="a local Hugging Face checkpoint folder: --task hf --task-option path=PATH",
    )
    source.add_argument(
        "--data-dir",
        default=None,
        help="--task: the folder holding the task's data (default: $PARAMCORRUPT_DATA)",
    )
    source.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--task: an option of the task's factory, repeatable",
    )
    source.add_argument(
        "--on",
        choices=("eval", "gradient"),
        default="eval",
        help="the data whose loss is measured: the task's eval or gradient loader (default: eval); "
        "a_hat and the iterative ascent always use the gradient's data",
    )
    grouping = parser.add_argument_group("groups (as probe; default: the whole model as one group)")
    grouping.add_argument(
        "--by",
        default=None,
        help="type, position, module, or a grouping the task defines: one landscape per group",
    )
    grouping.add_argument(
        "--depth", type=int, default=None, help="--by position: cut module paths at this depth"
    )
    grouping.add_argument(
        "--pattern",
        default=None,
        help="--by position: a regex whose first group labels each parameter",
    )
    grouping.add_argument(
        "--groups",
        default=None,
        metavar="SPEC",
        help="LABEL=PATTERN[+PATTERN],... or LABEL,... (a subset of --by, default type)",
    )
    walk = parser.add_argument_group("the walk")
    walk.add_argument(
        "--t-range",
        default="-1:1",
        metavar="LOW:HIGH",
        help="steps t along the L_p directions, t = eps (default: -1:1)",
    )
    walk.add_argument(
        "--points", type=int, default=21, help="points per 1-D curve, >= 2 (default: 21)"
    )
    walk.add_argument(
        "--u-range",
        default=None,
        metavar="LOW:HIGH",
        help="steps u along the filter-normalised direction (Li et al.'s scale; default: --t-range)",
    )
    walk.add_argument(
        "--grid-points",
        type=int,
        default=11,
        help="points per axis of the 2-D slice, >= 2, or 0 for none (default: 11)",
    )
    walk.add_argument(
        "--directions",
        default="gradient,iterative,random,filter",
        help="among gradient, iterative, random, filter (default: all four)",
    )
    walk.add_argument(
        "--p",
        default="2",
        help="the norm of a_hat, the iterative and the random corruption (default: 2)",
    )
    walk.add_argument(
        "--n",
        "--top-n",
        default="all",
        help="their number of changed parameters: an integer >= 1 or all (default: all)",
    )
    walk.add_argument(
        "--eps",
        type=float,
        default=None,
        help="the radius of the iterative corruption (default: the largest |t|)",
    )
    walk.add_argument(
        "--steps", type=int, default=5, help="the iterative corruption's ascent steps (default: 5)"
    )
    walk.add_argument(
        "--bias-bn",
        choices=("zero", "copy"),
        default="zero",
        help="filter normalisation of one-dimensional parameters (biases, norms): zero them (Li et al.'s "
        "ignore='biasbn') or set them to w (default: zero)",
    )
    walk.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random directions (and of the digits task) (default: 0)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", type=Path, default=Path("landscape"), help="output folder (default: landscape/)"
    )
    output.add_argument(
        "--title", default=None, help="heading of the summary (default: the task's name)"
    )
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    output.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.set_defaults(run=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The walk's options, every value parsed and checked (one line for a bad one) before any
    task is built."""
    from ..probe.landscape import DIRECTIONS, linspace

    for option in ("points", "steps"):
        if getattr(args, option) < (2 if option == "points" else 0):
            raise ParamCorruptError(
                f"--{option} must be >= {2 if option == 'points' else 0}, got {getattr(args, option)}"
            )
    if args.grid_points < 0 or args.grid_points == 1:
        raise ParamCorruptError(
            f"--grid-points must be 0 (no 2-D slice) or >= 2, got {args.grid_points}"
        )
    if args.eps is not None and not args.eps > 0:
        raise ParamCorruptError(f"--eps must be > 0, got {args.eps}")
    directions = items(args.directions, "--directions")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ParamCorruptError(
            f"unknown direction {unknown[0]!r} in --directions; choose from {', '.join(DIRECTIONS)}"
        )
    if args.grid_points and not {"gradient", "filter"} <= set(directions):
        raise ParamCorruptError(
            "the 2-D slice walks the gradient and filter directions: include both in --directions, or --grid-points 0"
        )
    n = n_values(args.n, "--n")
    if len(n) != 1:
        raise ParamCorruptError(f"--n takes one value here, got {args.n!r}")
    try:
        p = parse_p(args.p)
    except ValueError as error:
        raise ParamCorruptError(f"--p: {error}") from None
    Constraint(p, 1.0, n[0])  # p in [1, inf]
    t = linspace(*span(args.t_range, "--t-range"), args.points)
    u = t if args.u_range is None else linspace(*span(args.u_range, "--u-range"), args.points)
    if args.eps is None and max(abs(v) for v in t) == 0:
        raise ParamCorruptError("--t-range holds only 0: give --eps for the iterative corruption")
    return {
        "t_values": t,
        "u_values": u,
        "directions": directions,
        "grid_points": args.grid_points,
        "p": p,
        "n": n[0],
        "eps": args.eps,
        "steps": args.steps,
        "seed": args.seed,
        "bias_bn": args.bias_bn,
    }


def _landscape_groups(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """label -> ParameterGroup: probe's --by/--groups (--groups LABEL,... keeps groups of --by,
    default type), or the whole model as the one group ``all``."""
    from ..groups import ParameterGroup

    if args.by is None and args.groups is None:
        if args.depth is not None or args.pattern is not None:
            raise ParamCorruptError("--depth and --pattern go with --by position")
        names = tuple(name for name, param in task.model.named_parameters() if param.requires_grad)
        return {"all": ParameterGroup("all", names)}
    args.by = args.by or "type"
    _, groups, keep = _groups(args, task)
    chosen = {label: group for label, group in groups.items() if keep is None or label in keep}
    empty = [label for label, group in chosen.items() if not group.names]
    if empty:
        raise ParamCorruptError(f"group {empty[0]!r} has no parameters")
    return chosen


def run(args: argparse.Namespace) -> int:
    from ..probe.landscape_report import landscape_files

    start = time.perf_counter()
    if args.threads is not None:
        if args.threads < 1:
            raise ParamCorruptError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    use_hf_flag(args)
    if args.checkpoint_key is not None and args.checkpoint is None:
        raise ParamCorruptError("--checkpoint-key goes with --checkpoint")
    user = args.model is not None or args.data is not None
    if user and args.task is not None:
        raise ParamCorruptError("give --task or --model/--data, not both")
    if args.out.exists() and not args.out.is_dir():
        raise ParamCorruptError(f"--out {args.out} is a file; give a folder")
    options = _options(args)  # every option checked before the model is built or trained
    try:  # the figures need the report extra: say so now, not after the walk
        import matplotlib  # noqa: F401
    except ImportError:
        raise ParamCorruptError(
            "the landscape's figures need matplotlib: pip install 'paramcorrupt[report]'"
        ) from None
    if user:
        task, identity = _user_task(args)
    else:
        shell, identity = _builtin_task(args, train=False)
        _landscape_groups(args, shell)  # an unknown group refused before training
        if args.checkpoint is None and shell.name == "digits" and not args.quiet:
            print(
                f"training the digits model (seed {args.seed}, {args.epochs} epochs) ...",
                flush=True,
            )
        task, identity = (
            _builtin_task(args, train=True)
            if args.checkpoint is None and shell.name == "digits"
            else (shell, identity)
        )
    groups = _landscape_groups(args, task)
    synthetic_warning(task)
    if args.model is not None and args.checkpoint is None:
        untrained_warning(args.model)
    metric = task.primary_metric if task.primary_metric in task.metrics else None
    on_eval = args.on == "eval"
    results, paths = landscape_files(
        task.model,
        task.eval_loader if on_eval else task.gradient_loader,
        task.loss_fn,
        task.metrics,
        groups,
        args.out,
        title=args.title or f"Loss landscape: {display_name(args, identity)}",
        metric=metric,
        data=f"the {task.name} task's {'eval' if on_eval else 'gradient'} data",
        gradient_loader=task.gradient_loader,
        progress=not args.quiet,
        **options,
    )
    for result in results:
        line = ", ".join(
            f"{name} {values[-1]['loss']:.4g}" for name, values in result.curves.items()
        )
        print(f"{result.group}: clean loss {result.clean['loss']:.4g}; at the last step: {line}")
    print(
        f"{paths[0]} ({len(paths)} files in {args.out}, {time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
    )
    return 0
