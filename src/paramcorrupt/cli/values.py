"""Every value the command line parses: one parser each, one error wording.

- p: :func:`paramcorrupt.constraint.parse_p` (a number, ``inf`` included);
- n, the number of changed coordinates: an integer >= 1, or ``all`` (also spelled ``k`` and
  ``none``, any case): every coordinate (the library's None);
- comma-separated lists of numbers (eps, p), of n, of integers (seeds);
- groups (``--groups LABEL=PATTERN[+PATTERN],...`` or ``LABEL,...``);
- fault settings (``--format``, ``--ber``, ..., ``--fault-setting KEY=V[,V]``);
- ``--task-option KEY=VALUE``, converted to the type the task factory's annotation gives;
- training methods (``NAME[:key=value]...``).

Each parser raises ``ValueError`` naming the option; :func:`argument_type` turns one into an
argparse ``type=`` (argparse's own one-line error, exit code 2).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..constraint import parse_p
from ..errors import InputTypeError, ParamCorruptError
from ..experiments.training import METHODS, MethodConfig

__all__ = [
    "ALL_SPELLINGS",
    "FAULT_OPTIONS",
    "N_HELP",
    "argument_type",
    "fault_settings",
    "fault_value",
    "floats",
    "group_spec",
    "ints",
    "items",
    "n_values",
    "number",
    "parse_method",
    "parse_n",
    "parse_p",
    "quantize_options",
    "span",
    "task_option_values",
    "task_options",
]

#: the spellings of n = every coordinate of the group (any case)
ALL_SPELLINGS = ("all", "k", "none")
#: how the options' help describes n
N_HELP = "an integer >= 1, or all (also k or none): every parameter"


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type=``: its ``ValueError`` becomes argparse's error line."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def items(text: str, option: str) -> list[str]:
    """The non-empty comma-separated items of ``text``.

    Raises:
        ValueError: when there is none.
    """
    found = [t.strip() for t in text.split(",") if t.strip()]
    if not found:
        raise ParamCorruptError(f"{option} needs at least one value, got {text!r}")
    return found


def number(text: str, option: str = "value") -> float:
    """A float (``inf`` and ``infinity`` in any case included).

    Example:
        >>> number("1e-3"), number("Inf")
        (0.001, inf)
    """
    try:
        return float(text)  # float() reads "inf" and "infinity", any case
    except ValueError:
        raise ParamCorruptError(f"{option}: {text!r} is not a number") from None


def floats(text: str, option: str) -> list[float]:
    """Comma-separated numbers, e.g. ``--eps 1e-3,1e-2`` or ``--p inf,2``."""
    return [number(item, option) for item in items(text, option)]


def span(text: str, option: str) -> tuple[float, float]:
    """A range ``LOW:HIGH`` of two numbers with LOW < HIGH, e.g. ``--t-range -1:1``.

    Example:
        >>> span("-1:1", "--t-range")
        (-1.0, 1.0)
    """
    low, sep, high = text.partition(":")
    if not sep:
        raise ParamCorruptError(f"{option} takes LOW:HIGH, got {text!r}")
    low_value, high_value = number(low.strip(), option), number(high.strip(), option)
    if not low_value < high_value or not all(map(math.isfinite, (low_value, high_value))):
        raise ParamCorruptError(f"{option} {text!r} is an empty or infinite range: give LOW:HIGH with LOW < HIGH, both finite")
    return low_value, high_value


def ints(text: str, option: str) -> list[int]:
    """Comma-separated integers, e.g. ``--seeds 0,1,2``."""
    out = []
    for item in items(text, option):
        try:
            out.append(int(item))
        except ValueError:
            raise ParamCorruptError(f"{option}: {item!r} is not an integer") from None
    return out


def parse_n(text: str, option: str = "--n") -> int | None:
    """n: ``all``, ``k`` or ``none`` (any case) -> None (every coordinate), else an integer >= 1.

    Raises:
        ValueError: for anything else, in the spelling a user types (``'all'``, not None).

    Example:
        >>> parse_n("all"), parse_n("K"), parse_n("100")
        (None, None, 100)
    """
    if text.strip().lower() in ALL_SPELLINGS:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ParamCorruptError(f"{option}: {text.strip()!r} is not an integer >= 1 or 'all' (also k or none: every parameter)")
    return value


def n_values(text: str, option: str = "--n") -> list[int | None]:
    """Comma-separated n values (:func:`parse_n`), e.g. ``--n all,100``."""
    return [parse_n(item, option) for item in items(text, option)]


def group_spec(text: str | None) -> tuple[dict[str, list[str]] | None, list[str] | None]:
    """``--groups``: (label -> patterns) for ``LABEL=PATTERN[+PATTERN]`` entries, or the labels
    to keep of a grouping; (None, None) without the option.

    Example:
        >>> group_spec("stem=conv1+bn1,head=fc")
        ({'stem': ['conv1', 'bn1'], 'head': ['fc']}, None)
        >>> group_spec("conv,norm")
        (None, ['conv', 'norm'])
    """
    if text is None:
        return None, None
    entries = items(text, "--groups")
    defined = [i for i in entries if "=" in i]
    if defined and len(defined) != len(entries):
        raise ParamCorruptError("--groups: give either LABEL=PATTERN entries or plain labels, not both")
    if not defined:
        return None, entries
    mapping: dict[str, list[str]] = {}
    for item in entries:
        label, _, patterns = item.partition("=")
        label = label.strip()
        parts = [p.strip() for p in patterns.split("+") if p.strip()]
        if not label or not parts:
            raise ParamCorruptError(f"--groups: {item!r} is not LABEL=PATTERN[+PATTERN]")
        if label in mapping:
            raise ParamCorruptError(f"--groups: label {label!r} is given twice")
        mapping[label] = parts
    return mapping, None


#: the fault-setting options of ``probe`` (each one setting name)
FAULT_OPTIONS = ("format", "bits", "ber", "flips", "value", "candidates", "batches", "count")


def fault_value(text: str) -> Any:
    """A fault setting's value as typed: an integer, else a number, else the text.

    Example:
        >>> fault_value("3"), fault_value("1e-6"), fault_value("int8")
        (3, 1e-06, 'int8')
    """
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def fault_settings(args: argparse.Namespace) -> tuple[list[str], dict[str, dict[str, list[Any]]] | None]:
    """(methods, settings) from ``--methods``, ``--fault`` and the fault-setting options: the
    L_p methods (default random,gradient; none when --fault is given) then the fault models,
    and per fault model the values of each of its settings (a list: they are swept).

    Raises:
        ValueError: for a setting without ``--fault``, or one no ``--fault`` model has.
    """
    from ..faults import get_fault
    from ..probe.plan import grid_settings

    faults = items(args.fault, "--fault") if args.fault is not None else []
    given = {name: getattr(args, name) for name in FAULT_OPTIONS if getattr(args, name, None) is not None}
    for item in args.fault_setting:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ParamCorruptError(f"--fault-setting takes KEY=VALUE[,VALUE], got {item!r}")
        given[key.strip()] = values
    if given and not faults:
        raise ParamCorruptError(f"--{next(iter(given))} is a fault setting: give the fault model with --fault")
    methods = items(args.methods, "--methods") if args.methods is not None else ([] if faults else ["random", "gradient"])
    settings: dict[str, dict[str, list[Any]]] = {}
    used = set()
    for name in faults:
        cls = get_fault(name)
        if grid_settings(cls):  # the L_p ones run on --p/--n/--eps; their fixed settings here
            # (one value each), but steps, which is --steps's
            mine = {key: [fault_value(v) for v in items(text, f"--{key}")] for key, text in given.items()
                    if key in cls.fixed and key != "steps"}
            used |= set(mine)
            if mine:
                settings[name] = mine
            continue
        mine = {key: [fault_value(v) for v in items(text, f"--{key}")] for key, text in given.items() if key in cls.setting_names()}
        used |= set(mine)
        settings[name] = mine
    unused = [key for key in given if key not in used]
    if unused:
        raise ParamCorruptError(f"--{unused[0]} is a setting of none of --fault {','.join(faults)}")
    return [*methods, *(f for f in faults if f not in methods)], settings or None


# -- task options --------------------------------------------------------------------------


def task_options(args: argparse.Namespace) -> dict[str, str]:
    """``--task-option KEY=VALUE`` (repeatable) and ``--data-dir`` as factory options, as
    typed (strings: :func:`task_option_values` converts them for a factory)."""
    options: dict[str, str] = {}
    for item in getattr(args, "task_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ParamCorruptError(f"--task-option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    if getattr(args, "data_dir", None) is not None:
        options["data_dir"] = args.data_dir
    return options


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _as_type(text: str, kind: Any) -> Any:
    """``text`` as ``kind`` (int, float, bool, str, Path, tuple[X, ...]); raises ValueError,
    or TypeError for a type the command line cannot give."""
    if kind is str or kind is Any:
        return text
    if kind is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ParamCorruptError("expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ParamCorruptError("expected an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ParamCorruptError("expected a number") from None
    if kind is Path or kind is os.PathLike or typing.get_origin(kind) is os.PathLike:
        return Path(text)
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
            if not parts:
                raise ParamCorruptError("expected a comma-separated list")
            return tuple(_as_type(p, args[0]) for p in parts)
    raise InputTypeError(f"{kind} is no type the command line gives")


def _convert(text: str, annotation: Any) -> Any:
    """``text`` as ``annotation`` says: an optional takes ``none``; of a union the first member
    that reads it (a ``str`` member reads anything); a type the command line cannot give (or
    no annotation) keeps the string."""
    origin = typing.get_origin(annotation)
    members = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    if type(None) in members and text.strip().lower() in ("none", ""):
        return None
    members = tuple(m for m in members if m is not type(None))
    if str in members or Any in members:
        return text
    errors = []
    for member in members:
        try:
            return _as_type(text, member)
        except ValueError as error:
            errors.append(str(error))
        except TypeError:
            continue
    if errors:
        raise ParamCorruptError(" or ".join(dict.fromkeys(errors)))
    return text


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """(option name -> annotation, whether the factory takes any other keyword too)."""
    target = inspect.unwrap(factory)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return {}, True
    try:
        hints = typing.get_type_hints(target.func if isinstance(target, functools.partial) else target)
    except Exception:  # an annotation that does not resolve: read every value as a string
        hints = {}
    named = {}
    more = False
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            more = True
        elif parameter.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            named[name] = hints.get(name, Any)
    return named, more


def task_option_values(factory: Callable[..., Any], options: Mapping[str, Any], task: str = "the") -> dict[str, Any]:
    """``--task-option`` values converted to the types of ``factory``'s annotations (int,
    float, bool, str, Path, ``tuple[int, ...]`` and optionals of those; a value that is no
    string, or an option without a usable annotation, is passed as it is).

    Raises:
        ValueError: for an option the factory does not take (naming the ones it does) or a
            value that does not read as its type.

    Example:
        >>> def factory(*, limit: int | None = None, augment: bool = True, model: str = "a"): ...
        >>> task_option_values(factory, {"limit": "100", "augment": "no", "model": "b"})
        {'limit': 100, 'augment': False, 'model': 'b'}
    """
    named, more = _parameters(factory)
    out = {}
    for key, value in options.items():
        if key not in named:
            if more:
                out[key] = value
                continue
            close = difflib.get_close_matches(key, named, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ParamCorruptError(f"unknown --task-option {key!r} for the {task} task; {guess}valid: {', '.join(sorted(named))}")
        if not isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = _convert(value, named[key])
        except ValueError as error:
            raise ParamCorruptError(f"--task-option {key}={value!r}: {error}") from None
    return out


# -- training methods ------------------------------------------------------------------------


_METHOD_FIELDS: dict[str, Callable[[str], Any]] = {
    "eps": lambda text: number(text, "eps"), "p": parse_p, "n": lambda text: parse_n(text, "n"),
    "alpha": float, "interval": int, "lam": float, "epochs": int, "lr": float,
    "relative": lambda text: _as_type(text, bool), "eta": lambda text: number(text, "eta"),
}


def parse_method(spec: str, base: MethodConfig) -> MethodConfig:
    """``NAME[:key=value]...`` -> a MethodConfig, the settings replacing ``base``'s
    (``regularized`` is accepted for ``regularised``).

    Example:
        >>> parse_method("resistant:eps=0.2:n=all", MethodConfig()).eps
        0.2
    """
    name, *settings = spec.split(":")
    name = "regularised" if name == "regularized" else name
    if name not in METHODS:
        raise ParamCorruptError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    config = replace(base, method=name)
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in _METHOD_FIELDS:
            raise ParamCorruptError(f"bad method setting {setting!r} in {spec!r}; expected key=value with key in {', '.join(_METHOD_FIELDS)}")
        try:
            config = replace(config, **{key: _METHOD_FIELDS[key](value)})
        except ValueError as error:
            raise ParamCorruptError(f"bad value in {setting!r}: {error}") from error
    return config


def quantize_options(format: str | None, items: list[str] | None) -> dict[str, Any] | None:
    """``--quantize-option KEY=VALUE`` (repeatable) typed by the quantiser's defaults
    (``group_size=32`` an integer, ``pad=true`` a bool); None without ``--quantize``.

    Example:
        >>> quantize_options("int4", ["group_size=32", "pad=true"])
        {'group_size': 32, 'pad': True}
    """
    from ..formats import get_quantizer

    if format is None:
        if items:
            raise ParamCorruptError("--quantize-option goes with --quantize FORMAT")
        return None
    defaults = get_quantizer(format).defaults
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ParamCorruptError(f"--quantize-option expects KEY=VALUE, got {item!r}")
        if key not in defaults:
            raise ParamCorruptError(f"unknown option {key!r} for --quantize {format}; its options: {', '.join(defaults) or 'none'}")
        if isinstance(defaults[key], bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ParamCorruptError(f"--quantize-option {key} must be true or false, got {text!r}")
            out[key] = text.lower() in ("true", "1", "yes")
        else:
            try:
                out[key] = int(text)
            except ValueError:
                raise ParamCorruptError(f"--quantize-option {key} must be an integer, got {text!r}") from None
    return out
