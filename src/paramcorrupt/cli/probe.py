"""``paramcorrupt probe``: where is a model weakest? A resumable sweep over parameter groups.

Runs every group x method x p x n x eps (x trial) and appends one row per measurement to a
JSONL results file (see :mod:`paramcorrupt.probe.sweep` for the row schema). Running the same
command again with the same ``--out`` resumes: finished rows are kept, the rest computed. A
results file of another sweep is refused, never overwritten.

Built-in task (no arguments needed)::

    paramcorrupt probe --by type --out type.jsonl
    paramcorrupt probe --by position --methods gradient --n 100 --eps 1e-3,1e-2,1e-1 --out pos.jsonl
    paramcorrupt probe --groups stem=conv1+bn1,head=fc --p inf,2 --n all,100 --out mine.jsonl

Your own model (the user protocol):

- ``--model SPEC``: ``SPEC`` is ``package.module:factory`` or ``path/to/file.py:factory``;
  ``factory()`` (no arguments) returns the ``nn.Module``.
- ``--checkpoint PATH``: weights to load into it: a state dict saved with
  ``torch.save(model.state_dict(), PATH)`` (read with ``torch.load(weights_only=True)``, so no
  code is unpickled; a ``{"state_dict": ...}`` wrapper is accepted) or a ``.safetensors`` file.
  Its keys and shapes must match the model's exactly.
- ``--data SPEC``: ``factory()`` returns either a Task-like object with the attributes
  ``gradient_loader``, ``eval_loader``, ``loss_fn`` and optionally ``metrics``,
  ``primary_metric``, ``model`` (used when ``--model`` is not given), ``name`` and
  ``groupings``; or a tuple ``(gradient_loader, eval_loader, loss_fn[, metrics])``.
  Loaders are re-iterable iterables of batches (a ``DataLoader`` or a list), in the same
  order every time; ``loss_fn(model, batch)`` returns a :class:`~paramcorrupt.BatchLoss`
  (or a scalar loss); ``metrics`` maps a name to ``metric(output, batch) -> (total, count)``
  (see :mod:`paramcorrupt.losses`; ``paramcorrupt.classification_loss`` and
  ``paramcorrupt.accuracy`` fit ``(inputs, labels)`` batches).

``examples/user_model.py`` is a complete example::

    paramcorrupt probe --model examples/user_model.py:make_model \\
        --data examples/user_model.py:make_data --by position --out user.jsonl

Groups: ``--by type|position|module`` (a task's own grouping of that name wins: the digits
task's "position" is stem, layer1, layer2, fc); ``--depth``/``--pattern`` cut positions
differently; ``--groups LABEL=PATTERN[+PATTERN],...`` defines groups by name patterns (globs,
module prefixes or ``re:`` expressions), ``--groups LABEL,...`` keeps some groups of ``--by``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import math
import operator
import os
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import parallel as D
from ..tasks._options import load_into, load_weights
from . import CLIError

__all__ = ["load_checkpoint", "load_state_into", "register", "resolve"]


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
    grouping.add_argument("--pattern", default=None, help="--by position: regex whose first group labels each parameter")
    grouping.add_argument("--groups", default=None, metavar="SPEC", help="LABEL=PATTERN[+PATTERN],... (own groups) or LABEL,... (a subset of --by)")
    sweep_args = parser.add_argument_group("sweep")
    sweep_args.add_argument("--methods", default=None, help="among random, gradient, iterative, relative-random, relative-gradient (default: random,gradient; none when --fault is given)")
    sweep_args.add_argument("--trials", type=int, default=10, help="random corruptions per setting (default: 10)")
    sweep_args.add_argument("--p", default="inf", help="norms, e.g. inf,2 (default: inf)")
    sweep_args.add_argument("--n", "--top-n", default="all", help="numbers of changed parameters, e.g. all,100 (default: all; under torchrun write --top-n: torchrun reads --n as one of its own options)")
    sweep_args.add_argument("--eps", default="1e-3,1e-2,1e-1", help="radii (default: 1e-3,1e-2,1e-1)")
    sweep_args.add_argument("--steps", type=int, default=5, help="iterative: ascent steps after the one-step corruption (default: 5)")
    sweep_args.add_argument("--seed", type=int, default=0, help="seed of the random rows (and of the digits task) (default: 0)")
    sweep_args.add_argument(
        "--reuse", action="store_true",
        help="evaluate only the part of the network downstream of each group, reusing the activations "
        "before it (equal rows up to float rounding; see paramcorrupt.probe.reuse)",
    )
    sweep_args.add_argument("--no-gradient-data", action="store_true", help="skip the loss on the gradient's data per row (no Theorem 2 ratio)")
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
    parser.add_argument("--out", type=Path, default=Path("probe-results.jsonl"), help="results file, resumed when it exists (default: probe-results.jsonl)")
    parser.add_argument(
        "--extend", action="store_true",
        help="add to a finished --out file of a sweep this one extends (more eps, p, n, methods, groups or trials, "
        "everything else the same): its rows are kept byte for byte, only the new rows are computed",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: PyTorch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


# -- parsing ---------------------------------------------------------------------------------


def _items(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{option} needs at least one value, got {text!r}")
    return items


def _floats(text: str, option: str) -> list[float]:
    out = []
    for item in _items(text, option):
        try:
            out.append(float(item))  # float() reads "inf" and "infinity", any case
        except ValueError:
            raise ValueError(f"{option}: {item!r} is not a number") from None
    return out


def _sizes(text: str) -> list[int | None]:
    out: list[int | None] = []
    for item in _items(text, "--n"):
        if item.lower() in ("all", "k"):
            out.append(None)
            continue
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"--n: {item!r} is not an integer or 'all'") from None
        if value < 1:
            raise ValueError(f"--n: {item!r}: n must be an integer >= 1, or 'all' (every parameter of the group)")
        out.append(value)
    return out


def _group_spec(text: str | None) -> tuple[dict[str, list[str]] | None, list[str] | None]:
    """--groups: (label -> patterns) for LABEL=PATTERN entries, or labels to keep."""
    if text is None:
        return None, None
    items = _items(text, "--groups")
    defined = [i for i in items if "=" in i]
    if defined and len(defined) != len(items):
        raise ValueError("--groups: give either LABEL=PATTERN entries or plain labels, not both")
    if not defined:
        return None, items
    mapping: dict[str, list[str]] = {}
    for item in items:
        label, _, patterns = item.partition("=")
        label = label.strip()
        parts = [p.strip() for p in patterns.split("+") if p.strip()]
        if not label or not parts:
            raise ValueError(f"--groups: {item!r} is not LABEL=PATTERN[+PATTERN]")
        if label in mapping:
            raise ValueError(f"--groups: label {label!r} is given twice")
        mapping[label] = parts
    return mapping, None


# -- user code and weights ---------------------------------------------------------------------


def _load_file(path: Path) -> Any:
    path = path.resolve()
    name = "_paramcorrupt_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def resolve(spec: str, option: str = "spec") -> Any:
    """The object named by ``package.module:attribute`` or ``path/to/file.py:attribute``.

    Raises:
        ValueError: for a malformed spec, a module that cannot be imported or a missing
            attribute.
        FileNotFoundError: for a file path that does not exist.

    Example:
        >>> resolve("paramcorrupt.losses:accuracy").__name__
        'accuracy'
    """
    target, sep, attribute = spec.rpartition(":")
    if not sep or not target or not attribute:
        raise ValueError(f"{option} {spec!r}: expected package.module:attribute or path/to/file.py:attribute")
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"{option} {spec!r}: no file {target}")
        module = _load_file(path)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise ValueError(f"{option} {spec!r}: cannot import {target!r}: {error}") from None
    try:
        return operator.attrgetter(attribute)(module)
    except AttributeError:
        raise ValueError(f"{option} {spec!r}: {target!r} has no attribute {attribute!r}") from None


#: a state dict from a file (``.safetensors`` or ``torch.load(weights_only=True)``): the
#: tasks' one loader, :func:`paramcorrupt.tasks._options.load_weights`
load_checkpoint = load_weights


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "the checkpoint") -> None:
    """``model.load_state_dict(state)`` after checking keys and shapes, with a one-line error
    (:func:`paramcorrupt.tasks._options.load_into`)."""
    load_into(model, state, "the model", source=source)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# -- the task --------------------------------------------------------------------------------


class _Source:
    """What a probe runs on: model, loaders, loss, metrics and the task's own groupings."""

    def __init__(self, name: str, identity: str, model: nn.Module, gradient_loader: Any, eval_loader: Any,
                 loss_fn: Any, metrics: Mapping[str, Any], primary_metric: str | None,
                 groupings: Mapping[str, Any], chance: float | None = None) -> None:
        self.name, self.identity, self.model = name, identity, model
        self.gradient_loader, self.eval_loader, self.loss_fn = gradient_loader, eval_loader, loss_fn
        self.metrics, self.primary_metric, self.groupings = dict(metrics), primary_metric, dict(groupings)
        self.chance = chance  # the primary metric's chance level (Task.chance), for the report
        self.untrained: str | None = None  # the --model spec when no --checkpoint was loaded


def _from_data(result: Any, model: nn.Module | None, spec: str, identity: str) -> _Source:
    if isinstance(result, tuple):
        if len(result) not in (3, 4):
            raise TypeError(f"--data {spec!r} returned a tuple of {len(result)}; expected (gradient_loader, eval_loader, loss_fn[, metrics])")
        gradient_loader, eval_loader, loss_fn = result[:3]
        metrics = result[3] if len(result) == 4 else {}
        primary, groupings, name, chance = None, {}, "custom", None
    else:
        missing = [a for a in ("gradient_loader", "eval_loader", "loss_fn") if not hasattr(result, a)]
        if missing:
            raise TypeError(
                f"--data {spec!r} returned a {type(result).__name__} without {', '.join(missing)}; expected a "
                "Task-like object or (gradient_loader, eval_loader, loss_fn[, metrics])"
            )
        gradient_loader, eval_loader, loss_fn = result.gradient_loader, result.eval_loader, result.loss_fn
        metrics = getattr(result, "metrics", None) or {}
        primary = getattr(result, "primary_metric", None)
        groupings = getattr(result, "groupings", None) or {}
        name = getattr(result, "name", None) or "custom"
        chance = getattr(result, "chance", None)
        if model is None:
            model = getattr(result, "model", None)
    if model is None:
        raise ValueError(f"no model: give --model, or make --data {spec!r} return a Task-like object with a model")
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model is a {type(model).__name__}, expected a torch.nn.Module")
    if not callable(loss_fn):
        raise TypeError(f"--data {spec!r}: loss_fn is a {type(loss_fn).__name__}, expected a callable")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"--data {spec!r}: metrics is a {type(metrics).__name__}, expected a mapping name -> metric")
    return _Source(name, identity, model, gradient_loader, eval_loader, loss_fn, metrics, primary, groupings, chance)


def _user_source(args: argparse.Namespace) -> _Source:
    if args.data is None:
        raise ValueError("--model needs --data (the loaders and the loss; see `paramcorrupt probe --help`)")
    model = None
    if args.model is not None:
        factory = resolve(args.model, "--model")
        model = factory() if callable(factory) else factory
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model {args.model!r} gave a {type(model).__name__}, expected a torch.nn.Module")
    data_factory = resolve(args.data, "--data")
    result = data_factory() if callable(data_factory) else data_factory
    identity = f"model={_spec_identity(args.model)};data={_spec_identity(args.data)}"
    source = _from_data(result, model, args.data, identity)
    if args.checkpoint is not None:
        state = load_checkpoint(args.checkpoint, getattr(args, "checkpoint_key", None))
        load_state_into(source.model, state, f"checkpoint {args.checkpoint}")
        source.identity += f";checkpoint=sha256:{_file_digest(args.checkpoint)}"
        key = getattr(args, "checkpoint_key", None)
        if key is not None:
            source.identity += f"[{key}]"
    elif args.model is not None:
        source.untrained = args.model  # warned about once the inputs are checked
    source.model.eval()
    return source


def untrained_warning(spec: str) -> None:
    """Say on stderr that a ``--model`` without ``--checkpoint`` has its factory's initial weights."""
    print(
        f"warning: no --checkpoint: the model from --model {spec} has the factory's initial weights "
        "(untrained, unless the factory loads weights itself); give --checkpoint PATH to load trained ones",
        file=sys.stderr, flush=True,
    )


def _spec_identity(spec: str | None) -> str:
    if spec is None:
        return "-"
    target, _, attribute = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or os.sep in target:
        return f"{Path(target).resolve()}:{attribute}"
    return spec


def _builtin_source(args: argparse.Namespace, *, train: bool) -> _Source:
    from ..tasks import get_task

    name = args.task or "digits"
    options: dict[str, Any] = {"seed": args.seed, **task_options(args)}
    identity = f"{name}(" + ",".join(f"{k}={v}" for k, v in sorted(options.items()) if k != "data_dir")
    if name == "digits":
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        options.update(epochs=args.epochs, train=train and args.checkpoint is None)
        if args.checkpoint is None:
            identity += f",epochs={args.epochs}"
    if args.checkpoint is not None:
        identity += f",checkpoint=sha256:{_file_digest(args.checkpoint)}" if args.checkpoint.is_file() else ""
        if getattr(args, "checkpoint_key", None) is not None:
            identity += f"[{args.checkpoint_key}]"
    identity += ")"
    task = get_task(name, **options)
    if args.checkpoint is not None:
        state = load_checkpoint(args.checkpoint, getattr(args, "checkpoint_key", None))
        load_state_into(task.model, state, f"checkpoint {args.checkpoint}")
        task.model.eval()
    return _Source(task.name, identity, task.model, task.gradient_loader, task.eval_loader, task.loss_fn,
                   task.metrics, task.primary_metric, task.groupings, getattr(task, "chance", None))


def task_options(args: argparse.Namespace) -> dict[str, str]:
    """``--task-option KEY=VALUE`` (repeatable) and ``--data-dir`` as factory options (values
    stay strings; the task factories convert them)."""
    options: dict[str, str] = {}
    for item in getattr(args, "task_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--task-option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    if getattr(args, "data_dir", None) is not None:
        options["data_dir"] = args.data_dir
    return options


def _groups(args: argparse.Namespace, source: _Source) -> tuple[str, dict[str, Any], list[str] | None]:
    """(grouping name, label -> ParameterGroup, labels to keep)."""
    from ..groups import GROUPINGS, groups_from_mapping

    mapping, keep = _group_spec(args.groups)
    if mapping is not None:
        return "custom", groups_from_mapping(source.model, mapping), None
    by = args.by
    options = {}
    if args.depth is not None or args.pattern is not None:
        if by != "position":
            raise ValueError("--depth and --pattern go with --by position")
        options = {"depth": args.depth, "pattern": args.pattern}
    if by in source.groupings and not options:
        groups = source.groupings[by](source.model)
    elif by in GROUPINGS:
        groups = GROUPINGS[by](source.model, **options)
    else:
        available = sorted(set(GROUPINGS) | set(source.groupings))
        raise ValueError(f"unknown grouping --by {by!r}; available: {', '.join(available)}")
    if keep is not None:
        unknown = [label for label in keep if label not in groups]
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r} for --by {by}; available: {', '.join(groups)}")
    return by, groups, keep


#: the fault-setting options of the CLI (each one setting name)
FAULT_OPTIONS = ("format", "bits", "ber", "flips", "value", "candidates", "batches", "count")


def _value(text: str) -> Any:
    """A setting's value as typed: an integer, else a number, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _fault_settings(args: argparse.Namespace) -> tuple[list[str], dict[str, dict[str, list[Any]]] | None]:
    """(methods, settings) from --methods, --fault and the fault-setting options."""
    from ..faults import get_fault

    faults = _items(args.fault, "--fault") if args.fault is not None else []
    given = {name: getattr(args, name) for name in FAULT_OPTIONS if getattr(args, name, None) is not None}
    for item in args.fault_setting:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--fault-setting takes KEY=VALUE[,VALUE], got {item!r}")
        given[key.strip()] = values
    if given and not faults:
        raise ValueError(f"--{next(iter(given))} is a fault setting: give the fault model with --fault")
    methods = _items(args.methods, "--methods") if args.methods is not None else ([] if faults else ["random", "gradient"])
    settings: dict[str, dict[str, list[Any]]] = {}
    used = set()
    for name in faults:
        cls = get_fault(name)
        if cls.family_name() == "lp":  # the relative L_p ones run on --p/--n/--eps
            continue
        mine = {key: [_value(v) for v in _items(text, f"--{key}")] for key, text in given.items() if key in cls.parameters}
        used |= set(mine)
        settings[name] = mine
    unused = [key for key in given if key not in used]
    if unused:
        raise ValueError(f"--{unused[0]} is a setting of none of --fault {','.join(faults)}")
    return [*methods, *(f for f in faults if f not in methods)], settings or None


def _config(args: argparse.Namespace, source: _Source, grouping: str, keep: list[str] | None) -> Any:
    from ..probe.sweep import SweepConfig

    for option in ("trials", "steps"):
        if getattr(args, option) < 0:
            raise ValueError(f"--{option} must be >= 0, got {getattr(args, option)}")
    methods, settings = _fault_settings(args)
    return SweepConfig(
        groups=keep,
        methods=methods,
        settings=settings,
        trials=args.trials,
        p_values=_floats(args.p, "--p"),
        n_values=_sizes(args.n),
        eps_values=_floats(args.eps, "--eps"),
        seed=args.seed,
        iterative_steps=args.steps,
        task=source.identity,
        grouping=grouping,
        metric=source.primary_metric if source.primary_metric in (source.metrics or {}) else None,
        measure_gradient_data=not args.no_gradient_data,
    )


def _check_store(store: Any, config: Any, groups: Mapping[str, Any]) -> None:
    """Refuse a results file of another sweep before any work, naming what differs."""
    from ..probe.sweep import probed_groups, sweep_id

    probed = probed_groups(config, groups)
    store.check(sweep_id(config, groups), config.as_dict(), groups={label: list(g.names) for label, g in probed.items()})


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


# -- output ----------------------------------------------------------------------------------


def fault_summary(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows off the L_p grid: per group, fault model and setting, the
    metric after the fault (mean over trials) and how many faulty bits were drawn."""
    from ..faults import FAULTS

    metric = rows[0]["metric"]
    lines = [
        f"| group | fault | setting | {metric} before (eval) | {metric} after (eval, mean of R trials) | R (trials) | faulty bits (mean) | loss Inf/NaN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    settings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        names = FAULTS[row["method"]].parameters if row["method"] in FAULTS else ()
        text = ", ".join(f"{n}={row[n]}" for n in names if row.get(n) is not None)
        settings.setdefault((row["group"], row["method"], text), []).append(row)
    for (group, method, text), members in settings.items():
        after = sum(r["metric_after"] for r in members) / len(members)
        bits = [r["bit_errors"] for r in members if r.get("bit_errors") is not None]
        bits_text = f"{sum(bits) / len(bits):.3g}" if bits else "–"
        bad = sum(1 for r in members if r.get("loss_nonfinite"))
        lines.append(
            f"| {group} | {method} | {text} | {members[0]['metric_before']:.4g} | {after:.4g} | {len(members)} | {bits_text} | {bad} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: per group, p, n and eps, the metric after gradient-based corruption
    and the mean after random corruption (Figure 4 / Table 1 at a glance); rows of other
    fault models in a second table (:func:`fault_summary`)."""
    if not rows:
        return "(no rows)"
    others = [r for r in rows if r.get("eps") is None]
    rows = [r for r in rows if r.get("eps") is not None]
    if not rows:
        return fault_summary(others)
    if others:
        return summary(rows) + "\n\n" + fault_summary(others)
    from ..probe.report.display import metric_display

    metric = rows[0]["metric"]
    disp = metric_display(metric, [r["metric_before"] for r in rows if r.get("metric_before") is not None])
    name = f"{metric}{disp.unit}"
    lines = [
        f"Eval data: {name} and Δloss (loss after - loss before); R: random trials per setting; "
        "first-order: eps·‖top_n(g)‖_q, g the gradient on the gradient's data (train).",
        "",
        f"| group | p | n | eps | {name} before (eval) | {name} after gradient (eval) | {name} after random "
        "(eval, mean of R) | R | gradient Δloss (eval) | first-order (train) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    settings: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        settings.setdefault((row["group"], row["p"], row["n"], row["eps"]), []).append(row)
    for (group, p, n, eps), members in settings.items():
        grad = next((r for r in members if r["method"] == "gradient"), None)
        rand = [r["metric_after"] for r in members if r["method"] == "random"]
        p_text = "inf" if p == math.inf else f"{p:g}"
        grad_metric = "" if grad is None else disp.fmt(disp.show(grad["metric_after"]))
        grad_loss = "" if grad is None else f"{grad['loss_change']:+.3g}"
        rand_metric = "" if not rand else disp.fmt(disp.show(sum(rand) / len(rand)))
        lines.append(
            f"| {group} | {p_text} | {n} | {eps:g} | {disp.fmt(disp.show(members[0]['metric_before']))} | {grad_metric} "
            f"| {rand_metric} | {len(rand) or ''} | {grad_loss} | {members[0]['first_order']:.3g} |"
        )
    return "\n".join(lines)


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
        raise ValueError(f"--hf goes with --task hf, hf-causal-lm or hf-seq-cls, not {args.task!r}")
    args.task = args.task or "hf"
    args.task_option = [*args.task_option, f"path={args.hf}"]


def _run(args: argparse.Namespace) -> int:
    from ..probe.store import ResultsStore, chance_metadata
    from ..probe.sweep import sweep

    start = time.perf_counter()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    use_hf_flag(args)
    if getattr(args, "checkpoint_key", None) is not None and args.checkpoint is None:
        raise ValueError("--checkpoint-key goes with --checkpoint")
    user = args.model is not None or args.data is not None
    if user and args.task is not None:
        raise ValueError("give --task or --model/--data, not both")
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a results file path")
    store = ResultsStore(args.out, extend=getattr(args, "extend", False))
    if user:
        source = _user_source(args)
    else:
        # the groups and the sweep_id need only the architecture: check the results file
        # before spending time on training
        if args.checkpoint is None:
            shell = _builtin_source(args, train=False)
            grouping, groups, keep = _groups(args, shell)
            _check_store(store, _config(args, shell, grouping, keep), groups)
            if not args.quiet:
                print(f"training the {shell.name} model (seed {args.seed}, {args.epochs} epochs) ...", flush=True)
        source = _builtin_source(args, train=True)
    D.broadcast_module(source.model)  # every rank probes rank 0's weights, to the last bit
    grouping, groups, keep = _groups(args, source)
    config = _config(args, source, grouping, keep)
    _check_store(store, config, groups)
    store.metadata = chance_metadata(config.metric, source.chance)  # a new header's chance level
    if getattr(source, "untrained", None) and D.is_main_process():
        untrained_warning(source.untrained)
    done, total = _progress_counts(args.out, config, groups)
    if done and D.is_main_process():
        print(f"resuming: {done} of {total} rows done ({args.out})", flush=True)
    evaluator = None
    if args.reuse:
        from ..probe.reuse import ReusingEvaluator

        evaluator = ReusingEvaluator(
            source.model, source.eval_loader, source.gradient_loader if config.measure_gradient_data else None,
            source.loss_fn, source.metrics,
        )
    try:
        rows = sweep(
            source.model, config, source.gradient_loader, source.eval_loader, source.loss_fn, source.metrics,
            groups=groups, store=store, progress=not args.quiet, evaluator=evaluator,
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
    print(summary(rows))
    print(f"{len(rows)} rows in {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0
