"""``paramcorrupt probe``: where is a model weakest? A resumable sweep over parameter groups.

Runs every group x method x p x n x eps (x trial) and appends one row per measurement to a
JSONL results file (see :mod:`paramcorrupt.probe.sweep` for the row schema). Running the same
command again with the same ``--out`` resumes: finished rows are kept, the rest computed. A
results file of another sweep is refused, never overwritten.

Built-in task (no arguments needed; the values' spellings: :mod:`paramcorrupt.cli.values`)::

    paramcorrupt probe --by type --out type.jsonl
    paramcorrupt probe --by position --methods gradient --n 100 --eps 1e-3,1e-2,1e-1 --out pos.jsonl
    paramcorrupt probe --groups stem=conv1+bn1,head=fc --p inf,2 --n all,100 --out mine.jsonl

Your own model (the user protocol, :mod:`paramcorrupt.tasks.user`): ``--model SPEC`` names a
factory of the ``nn.Module`` (``package.module:factory`` or ``path/to/file.py:factory``),
``--data SPEC`` one of a Task-like object or ``(gradient_loader, eval_loader, loss_fn[,
metrics])``, ``--checkpoint PATH`` a state dict or ``.safetensors`` file to load (never
unpickling code). ``examples/user_model.py`` is a complete example::

    paramcorrupt probe --model examples/user_model.py:make_model \\
        --data examples/user_model.py:make_data --by position --out user.jsonl

Groups: ``--by type|position|module`` (a task's own grouping of that name wins: the digits
task's "position" is stem, layer1, layer2, fc); ``--depth``/``--pattern`` cut positions
differently; ``--groups LABEL=PATTERN[+PATTERN],...`` defines groups by name patterns (globs,
module prefixes or ``re:`` expressions), ``--groups LABEL,...`` keeps some groups of ``--by``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import parallel as D
from ..errors import ParamCorruptError
from ..probe.report.outcomes import outcome_summary
from ..probe.report.summary import summary
from ..tasks import TASKS, Task, get_task
from ..tasks.user import load_checkpoint_into, task_identity, user_task
from . import CLIError
from .outcomes import add_outcome_arguments, checks_before_training, outcome_options
from .second_order import add_second_order_arguments, second_order_option
from .values import (
    N_HELP,
    fault_settings,
    floats,
    group_spec,
    n_values,
    quantize_options,
    task_option_values,
    task_options,
)

__all__ = ["HF_TASKS", "clamped_n_warning", "display_name", "register", "run", "synthetic_warning", "untrained_warning", "use_hf_flag"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "probe",
        help="sweep parameter groups x methods x p x n x eps; resumable JSONL results",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
        epilog="Your own model: --model FILE.py:FACTORY --data FILE.py:FACTORY [--checkpoint PATH]; "
        "see examples/user_model.py. Running the same command again resumes; --extend adds new eps "
        "(p, n, methods, trials) to a finished results file.",
    )
    source = parser.add_argument_group("model and data")
    source.add_argument("--task", default=None, help="a built-in task (default: digits, when --model/--data are not given)")
    source.add_argument("--model", metavar="SPEC", help="package.module:factory or path/file.py:factory returning the nn.Module")
    source.add_argument("--checkpoint", type=Path, metavar="PATH",
                        help="weights to load: a state dict (torch.save(model.state_dict(), PATH)) or .safetensors; "
                        "without it --model is probed with the factory's initial weights (a warning says so)")
    source.add_argument("--checkpoint-key", default=None, metavar="KEY",
                        help="the key of a dict checkpoint holding the state dict, e.g. model_state_dict "
                        "(default: the file itself, or its 'state_dict' / 'model' entry)")
    source.add_argument("--data", metavar="SPEC", help="factory returning a Task-like object or (gradient_loader, eval_loader, loss_fn[, metrics])")
    source.add_argument("--epochs", type=int, default=30, help="digits: training epochs when no checkpoint is given (default: 30)")
    source.add_argument("--hf", default=None, metavar="PATH",
                        help="a local Hugging Face checkpoint folder (safetensors): short for --task hf --task-option path=PATH")
    source.add_argument("--data-dir", default=None, help="--task: the folder holding the task's data (cifar10_jpg/, ptb_lm/; default: $PARAMCORRUPT_DATA)")
    source.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="--task: an option of the task's factory, repeatable (e.g. model=resnet34, limit_test=1000, cache_dir=PATH)")
    grouping = parser.add_argument_group("groups")
    grouping.add_argument("--by", default="type", help="type, position, module, or a grouping the task defines (default: type)")
    grouping.add_argument("--depth", type=int, default=None, help="--by position: cut module paths at this depth (default: none: top-level modules, repeated blocks split one by one)")
    grouping.add_argument("--pattern", default=None, help="--by position: a regex (not a glob) whose first group labels each parameter")
    grouping.add_argument("--groups", default=None, metavar="SPEC",
                          help="LABEL=PATTERN[+PATTERN],... (own groups; PATTERN is a glob such as 'layer1.*', a module "
                          "prefix, or re:REGEX: 'all=*' or 'all=re:.*', not 'all=.*') or LABEL,... (a subset of --by)")
    sweep_args = parser.add_argument_group("sweep")
    sweep_args.add_argument("--methods", default=None, help="L_p methods among random, gradient, iterative, relative-random, relative-gradient, or any registered "
                            "fault model (paramcorrupt.faults.FAULTS; see --fault) (default: random,gradient; none when --fault is given)")
    sweep_args.add_argument("--trials", type=int, default=10, action=GivenAction, help="random corruptions per setting (default: 10)")
    sweep_args.add_argument("--margin", type=float, default=None, metavar="E",
                            help="choose --trials for a margin of error E in (0, 1) at --confidence by Leveugle et al. "
                            "(DATE 2009): n = t^2 p(1-p) / E^2 with p = 0.5 (e.g. 0.01: 9604 trials at 95%%)")
    sweep_args.add_argument("--confidence", type=float, default=None,
                            help="with --margin: the confidence in (0, 1) (default: 0.95)")
    add_outcome_arguments(sweep_args)  # --outcomes, --tolerance
    sweep_args.add_argument("--p", default="inf", help="norms, e.g. inf,2 (default: inf)")
    sweep_args.add_argument("--n", "--top-n", default="all", help="numbers of changed parameters, each " + N_HELP + ", e.g. all,100 (default: all; under torchrun write --top-n: torchrun reads --n as one of its own options)")
    sweep_args.add_argument("--eps", default="1e-3,1e-2,1e-1", help="radii (default: 1e-3,1e-2,1e-1)")
    sweep_args.add_argument("--steps", type=int, default=5, help="iterative: ascent steps after the one-step corruption (default: 5)")
    sweep_args.add_argument("--seed", type=int, default=0, help="seed of the random rows (and of the digits task) (default: 0)")
    sweep_args.add_argument(
        "--reuse", action="store_true",
        help="evaluate only the part of the network downstream of each group, reusing the activations "
        "before it (equal rows up to float rounding; see paramcorrupt.probe.reuse)",
    )
    sweep_args.add_argument("--no-gradient-data", action="store_true", help="skip the loss on the gradient's data per row (no Theorem 2 ratio)")
    add_second_order_arguments(sweep_args)  # --second-order, --trace-samples
    sweep_args.add_argument("--allow-nonfinite", action="store_true",
                            help="probe a model with NaN/Inf weights or a NaN/Inf clean loss (refused by default: "
                            "every row would compare against a non-finite model)")
    faults = parser.add_argument_group(
        "hardware faults", "fault models beyond the L_p grid, and the values of their settings "
        "(comma-separated values are swept; each applies to the --fault models that have it)",
    )
    faults.add_argument("--fault", default=None, metavar="NAME[,NAME]",
                        help="bitflip, stuck-at, bit-search, random-values, or any registered fault model (paramcorrupt.faults.FAULTS)")
    faults.add_argument("--format", default=None, help="stored number format: float32 (default), float16, bfloat16, int8, int8-channel (bit-search: int8)")
    faults.add_argument("--bits", default=None, help="which bits fail: any (default), sign, exponent, mantissa, msb, or a bit index")
    faults.add_argument("--ber", default=None, help="bit error rates, e.g. 1e-7,1e-6,1e-5 (bitflip, stuck-at)")
    faults.add_argument("--flips", default=None, help="numbers of faulty bits, e.g. 1,10,100 (bitflip, stuck-at; bit-search: its budget)")
    faults.add_argument("--value", default=None, help="stuck-at: the value the bits are stuck at, 0 or 1")
    faults.add_argument("--candidates", default=None, help="bit-search: flips per tensor evaluated exactly per iteration (default: 1)")
    faults.add_argument("--batches", default=None, help="bit-search: batches of attack data (default: 1)")
    faults.add_argument("--count", default=None, help="random-values: numbers of weights set to random values")
    faults.add_argument("--fault-setting", action="append", default=[], metavar="KEY=V[,V]",
                        help="any other setting of a --fault model (repeatable)")
    faults.add_argument("--quantize", default=None, metavar="FORMAT",
                        help="probe the model as stored in FORMAT (int8, int8-channel, int8-group, int4, nf4, fp8-e4m3, "
                        "fp8-e5m2, mxfp8, mxfp6, mxfp4, float16, bfloat16): every weight its decoded code, the clean rows "
                        "the quantised model's (the float model's beside them); bitflip/stuck-at hit codes, scales and "
                        "zero points; the float weights are restored afterwards (see docs/formats.md)")
    faults.add_argument("--quantize-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the --quantize format, repeatable: group_size=32, pad=true, asymmetric=true, "
                        "block_size=64, per_channel=true")
    parser.add_argument("--out", type=Path, default=Path("probe-results.jsonl"), help="results file, resumed when it exists (default: probe-results.jsonl)")
    parser.add_argument(
        "--extend", action="store_true",
        help="add to a finished --out file of a sweep this one extends (more eps, p, n, methods, groups or trials, "
        "everything else the same): its rows are kept byte for byte, only the new rows are computed",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: PyTorch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


# -- the task --------------------------------------------------------------------------------


def _builtin_task(args: argparse.Namespace, *, train: bool) -> tuple[Task, str]:
    """A registered task (``--task``, default digits) and its identity; with ``train`` False
    the digits model stays untrained (its architecture is all the groups need)."""
    name = args.task or "digits"
    options: dict[str, Any] = {"seed": args.seed, **task_options(args)}
    settings = [(k, v) for k, v in sorted(options.items()) if k != "data_dir"]
    if name == "digits":
        if args.epochs < 1:
            raise ParamCorruptError(f"--epochs must be >= 1, got {args.epochs}")
        options.update(epochs=args.epochs, train=train and args.checkpoint is None)
        if args.checkpoint is None:
            settings.append(("epochs", args.epochs))
    key = getattr(args, "checkpoint_key", None)
    identity = task_identity(name, settings, checkpoint=args.checkpoint, checkpoint_key=key)
    if name in TASKS:
        options = task_option_values(TASKS[name], options, name)
    task = get_task(name, **options)
    if args.checkpoint is not None:
        load_checkpoint_into(task.model, args.checkpoint, key)
        task.model.eval()
    return task, identity


def _user_task(args: argparse.Namespace) -> tuple[Task, str]:
    """The Task of ``--model/--data`` (:func:`paramcorrupt.tasks.user.user_task`), its model
    in evaluation mode, and its identity."""
    if args.data is None:
        raise ParamCorruptError("--model needs --data (the loaders and the loss; see `paramcorrupt probe --help`)")
    task = user_task(args.model, args.data, checkpoint=args.checkpoint, checkpoint_key=getattr(args, "checkpoint_key", None))
    task.model.eval()
    return task, task.info["identity"]


def untrained_warning(spec: str) -> None:
    """Say on stderr that a ``--model`` without ``--checkpoint`` has its factory's initial weights."""
    print(
        f"warning: no --checkpoint: the model from --model {spec} has the factory's initial weights "
        "(untrained, unless the factory loads weights itself); give --checkpoint PATH to load trained ones",
        file=sys.stderr, flush=True,
    )


def display_name(args: argparse.Namespace, identity: str) -> str:
    """The task's short name for a report's titles and file names: a user's model factory's
    name (and the checkpoint's file name), else the identity shortened."""
    from ..probe.report.display import short_name

    if getattr(args, "model", None):
        name = str(args.model).rstrip(":").split(":")[-1]
    else:
        name = short_name(identity)
    return name + (f" ({args.checkpoint.name})" if getattr(args, "checkpoint", None) is not None else "")


def synthetic_warning(task: Task) -> None:
    """Say on stderr that a task runs on seeded random data (an HF task without ``data``)."""
    data = task.info.get("data")
    if isinstance(data, str) and data.startswith("synthetic"):
        print(
            f"warning: the {task.name} task has no data: it runs on seeded synthetic tokens ({data}), "
            "not on real text; give --task-option data=FILE (.safetensors with input_ids, or .txt/.tsv "
            "tokenised with the model folder's tokenizer)",
            file=sys.stderr, flush=True,
        )


def clamped_n_warning(config: Any, groups: Mapping[str, Any], model: torch.nn.Module) -> None:
    """Say once on stderr (not per row) which --n values exceed a probed group's size k:
    there n is cut to k, every coordinate (the rows keep ``n_requested``)."""
    from ..faults import get_fault
    from ..probe.sweep import probed_groups

    if not any("n" in get_fault(method).parameters for method in config.methods):
        return
    sizes = {label: group.numel(model) for label, group in probed_groups(config, groups).items()}
    over = sorted({n for n in config.n_values if n is not None and any(n > k for k in sizes.values())})
    if not over:
        return
    small = [f"{label} (k = {k:,})" for label, k in sizes.items() if k < over[-1]]
    more = f" and {len(small) - 6} more" if len(small) > 6 else ""
    print(
        f"note: --n {', '.join(map(str, over))} exceeds the size k of group{'s' if len(small) > 1 else ''} "
        f"{', '.join(small[:6])}{more}: there n is cut to k, every coordinate (the rows keep n_requested)",
        file=sys.stderr, flush=True,
    )


def _groups(args: argparse.Namespace, task: Task) -> tuple[str, dict[str, Any], list[str] | None]:
    """(grouping name, label -> ParameterGroup, labels to keep)."""
    from ..groups import GROUPINGS, groups_from_mapping

    mapping, keep = group_spec(args.groups)
    if mapping is not None:
        return "custom", groups_from_mapping(task.model, mapping), None
    by = args.by
    options = {}
    if args.depth is not None or args.pattern is not None:
        if by != "position":
            raise ParamCorruptError("--depth and --pattern go with --by position")
        options = {"depth": args.depth, "pattern": args.pattern}
    if by in task.groupings and not options:
        groups = task.groupings[by](task.model)
    elif by in GROUPINGS:
        groups = GROUPINGS[by](task.model, **options)
    else:
        available = sorted(set(GROUPINGS) | set(task.groupings))
        raise ParamCorruptError(f"unknown grouping --by {by!r}; available: {', '.join(available)}")
    if keep is not None:
        unknown = [label for label in keep if label not in groups]
        if unknown:
            raise ParamCorruptError(f"unknown group {unknown[0]!r} for --by {by}; available: {', '.join(groups)}")
    return by, groups, keep


def _config(args: argparse.Namespace, task: Task | None, identity: str, grouping: str, keep: list[str] | None) -> Any:
    """The sweep's configuration; with ``task`` None every option is parsed and checked
    (fault settings, the grid, --quantize's format and option names) before any task exists."""
    from ..probe.plan import SweepConfig, with_setting

    for option in ("trials", "steps"):
        if getattr(args, option) < 0:
            raise ParamCorruptError(f"--{option} must be >= 0, got {getattr(args, option)}")
    methods, settings = fault_settings(args)
    # the metric the task declares (a user's task may declare none: the sweep's default)
    declared = task is not None and task.info.get("declared_metric", True) and task.primary_metric in task.metrics
    return SweepConfig(
        groups=keep,
        methods=methods,
        settings=with_setting(settings, methods, "steps", args.steps),  # --steps: the iterative ascent's
        trials=args.trials,
        p_values=floats(args.p, "--p"),
        n_values=n_values(args.n, "--n"),
        eps_values=floats(args.eps, "--eps"),
        seed=args.seed,
        task=identity,
        grouping=grouping,
        metric=task.primary_metric if task is not None and declared else None,
        measure_gradient_data=not args.no_gradient_data,
        quantize=getattr(args, "quantize", None),
        quantize_options=quantize_options(getattr(args, "quantize", None), getattr(args, "quantize_option", None)),
        **outcome_options(args),
        second_order=second_order_option(args),
    )


def _check_store(store: Any, config: Any, groups: Mapping[str, Any]) -> None:
    """Refuse a results file of another sweep before any work, naming what differs."""
    from ..probe.sweep import probed_groups, sweep_id

    probed = probed_groups(config, groups)
    store.check(sweep_id(config, groups), config.as_dict(), groups={label: list(g.names) for label, g in probed.items()})


def _check_finite(model: torch.nn.Module) -> None:
    """Refuse a model whose parameters hold NaN or Inf before anything is written, naming them."""
    from ..evaluate import nonfinite_tensors

    where = nonfinite_tensors(model, buffers=False)
    if where:
        more = f" (and {len(where) - 1} more tensors)" if len(where) > 1 else ""
        raise ParamCorruptError(
            f"the model's {where[0]}{more}: every row would compare against a non-finite model; fix the "
            "weights (the checkpoint or the factory), or probe it anyway with --allow-nonfinite"
        )


def _progress_counts(path: Path, config: Any, groups: Mapping[str, Any]) -> tuple[int, int]:
    """(rows of this sweep the results file holds, rows the sweep has in all)."""
    from ..probe.store import read_results
    from ..probe.sweep import probed_groups, row_settings

    keys = {key for label in probed_groups(config, groups) for *_, key in row_settings(config, label)}
    done = 0
    if path.is_file() and path.stat().st_size:
        try:
            done = sum(1 for row in read_results(path)[1] if row.get("key") in keys)
        except ValueError:
            done = 0
    return done, len(keys)


def run(args: argparse.Namespace) -> int:
    # under torchrun: one process group, the sweep's rows split across ranks, rank 0 prints
    # and writes the results file (see paramcorrupt.parallel)
    with D.command_session(error=CLIError):
        return _run(args)


HF_TASKS = ("hf", "hf-causal-lm", "hf-seq-cls")


def use_hf_flag(args: argparse.Namespace) -> None:
    """--hf PATH (probe and train): the hf task on a local folder, i.e. --task hf --task-option path=PATH."""
    if getattr(args, "hf", None) is None:
        return
    if args.task not in (None, *HF_TASKS):
        raise ParamCorruptError(f"--hf goes with --task hf, hf-causal-lm or hf-seq-cls, not {args.task!r}")
    args.task = args.task or "hf"
    args.task_option = [*args.task_option, f"path={args.hf}"]


class GivenAction(argparse.Action):
    """Store the value and remember that the option was given (``given_<dest>``): argparse's
    mutually exclusive groups miss a value equal to the default (``--trials 10``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"given_{self.dest}", True)


def trials_from_margin(args: argparse.Namespace) -> None:
    """--margin E [--confidence C]: set --trials by Leveugle et al.'s formula (an infinite
    population, p = 0.5) and say it once on stderr; a value outside (0, 1) is one line."""
    from ..reliability import trials_for_margin

    margin, confidence = getattr(args, "margin", None), getattr(args, "confidence", None)
    if margin is None:
        if confidence is not None:
            raise ParamCorruptError("--confidence goes with --margin (it sets how many trials that margin needs)")
        return
    if getattr(args, "given_trials", False):
        raise ParamCorruptError("give --trials or --margin, not both (--margin chooses the number of trials)")
    confidence = 0.95 if confidence is None else confidence
    try:
        args.trials = trials_for_margin(margin, confidence)
    except ParamCorruptError as error:
        raise ParamCorruptError(f"--{error}") from None  # "--margin must be in (0, 1) ..."
    if D.is_main_process():
        print(
            f"--margin {margin:g} at {confidence:.4g} confidence: {args.trials} trials per setting "
            "(Leveugle et al., DATE 2009: n = t^2 p (1 - p) / e^2, p = 0.5, an infinite population of faults)",
            file=sys.stderr, flush=True,
        )


def _run(args: argparse.Namespace) -> int:
    from ..probe.store import ResultsStore

    start = time.perf_counter()
    if args.threads is not None:
        if args.threads < 1:
            raise ParamCorruptError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    use_hf_flag(args)
    if getattr(args, "checkpoint_key", None) is not None and args.checkpoint is None:
        raise ParamCorruptError("--checkpoint-key goes with --checkpoint")
    user = args.model is not None or args.data is not None
    if user and args.task is not None:
        raise ParamCorruptError("give --task or --model/--data, not both")
    if args.out.is_dir():
        raise ParamCorruptError(f"--out {args.out} is a folder; give a results file path")
    # cheap checks first: every option parsed and checked (bad input writes nothing), then the
    # results file locked (another process writing it, a path that cannot be written, a pipe
    # or a device: refused now), then the model built or trained
    group_spec(args.groups)
    trials_from_margin(args)
    _config(args, None, "", "", None)
    store = ResultsStore(args.out, extend=getattr(args, "extend", False))
    if D.is_main_process():
        store.lock()
    try:
        return _probe(args, store, user, start)
    finally:
        store.close()  # a run stopped before its first row leaves no file behind that lock() created


def _probe(args: argparse.Namespace, store: Any, user: bool, start: float) -> int:
    """The task built (or trained), the results file checked against its sweep, the sweep run."""
    from ..probe.store import chance_metadata
    from ..probe.sweep import check_quantization, sweep

    if user:
        task, identity = _user_task(args)
    else:
        # the groups and the sweep_id need only the architecture: check the results file
        # before spending time on training
        if args.checkpoint is None:
            shell, identity = _builtin_task(args, train=False)
            grouping, groups, keep = _groups(args, shell)
            shell_config = _config(args, shell, identity, grouping, keep)
            _check_store(store, shell_config, groups)
            checks_before_training(shell.model, shell_config, groups)  # --quantize options, activation faults' modules
            if not args.quiet and shell.name == "digits":  # the one task trained here
                print(f"training the {shell.name} model (seed {args.seed}, {args.epochs} epochs) ...", flush=True)
        task, identity = _builtin_task(args, train=True)
    D.broadcast_module(task.model)  # every rank probes rank 0's weights, to the last bit
    grouping, groups, keep = _groups(args, task)
    config = _config(args, task, identity, grouping, keep)
    _check_store(store, config, groups)
    check_quantization(task.model, config)
    if not getattr(args, "allow_nonfinite", False):
        _check_finite(task.model)
    store.metadata = {  # a new header's metric infos, and the task's short name and data for the report
        **chance_metadata(config.metric, task.chance, task.metrics),
        "task_display": display_name(args, identity),
        **({"task_data": task.info["data"]} if isinstance(task.info.get("data"), str) else {}),
    }
    if D.is_main_process():
        synthetic_warning(task)
    if user and args.model is not None and args.checkpoint is None and D.is_main_process():
        untrained_warning(args.model)
    if D.is_main_process():
        clamped_n_warning(config, groups, task.model)
    done, total = _progress_counts(args.out, config, groups)
    if done and D.is_main_process():
        print(f"resuming: {done} of {total} rows done ({args.out})", flush=True)
    evaluator = None
    if args.reuse:
        from ..probe.reuse import ReusingEvaluator

        evaluator = ReusingEvaluator(
            task.model, task.eval_loader, task.gradient_loader if config.measure_gradient_data else None,
            task.loss_fn, task.metrics,
        )
    try:
        rows = sweep(
            task.model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics,
            groups=groups, store=store, progress=not args.quiet, evaluator=evaluator,
            allow_nonfinite=getattr(args, "allow_nonfinite", False),
        )
    except KeyboardInterrupt:
        if D.is_main_process():
            saved, total = _progress_counts(args.out, config, groups)
            command = shlex.join(["paramcorrupt", *(getattr(args, "argv", None) or sys.argv[1:])])
            print(
                f"\ninterrupted: {saved} of {total} rows are saved in {args.out}; "
                f"the same command resumes: {command}",
                file=sys.stderr, flush=True,
            )
        raise
    from ..losses import metric_info  # the metric's own display: fault and L_p rows in one unit

    info = metric_info(task.metrics[rows[0]["metric"]]) if rows and rows[0].get("metric") in task.metrics else None
    print(summary(rows, info) + outcome_summary(rows))  # the outcome classes' rates where the rows have them
    print(f"{len(rows)} rows in {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0
