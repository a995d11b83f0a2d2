"""Which module outputs an activation fault hooks: by name pattern, by the modules owning a
parameter group, or by class or pattern inside a group's scope (modules owning no parameters:
activations, pooling, attention blocks). Used by :mod:`paramcorrupt.faults.activations`."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..errors import InputTypeError, ParamCorruptError
from ..groups import ParameterGroup

__all__ = ["modules_in_scope", "select_modules"]


def select_modules(model: nn.Module, modules: Any) -> dict[str, nn.Module]:
    """The modules whose outputs are faulted, name -> module, in model order.

    Args:
        model: the network.
        modules: a module name pattern (``fnmatch`` on the whole name, ``"re:..."`` a
            regular expression) or several; or a :class:`ParameterGroup` (the modules that
            own its parameters, e.g. ``groups_by_type(model)["conv"]``).

    Raises:
        ParamCorruptError: a pattern that matches no module, a group naming no module of
            the model; InputTypeError for any other kind of value.
    """
    named = dict(model.named_modules())
    if isinstance(modules, ParameterGroup):
        owners = list(dict.fromkeys(n.rpartition(".")[0] for n in modules.names))
        missing = [o for o in owners if o not in named]
        if missing or not owners:
            raise ParamCorruptError(
                f"group {modules.name!r} names no module of the model ({missing[0] if missing else 'no parameters'!r})"
            )
        return {n: named[n] for n in named if n in owners}
    patterns = (modules,) if isinstance(modules, str) else modules
    if not isinstance(patterns, Iterable) or isinstance(patterns, (bytes, nn.Module)):
        raise InputTypeError(
            f"modules must be a name pattern, a list of them or a ParameterGroup, got {type(modules).__name__}"
        )
    patterns = tuple(patterns)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise InputTypeError(f"modules must be name patterns (strings), got {modules!r}")
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [
            n
            for n in named
            if (
                re.fullmatch(pattern[3:], n)
                if pattern.startswith("re:")
                else fnmatch.fnmatchcase(n, pattern)
            )
        ]
        if not hits:
            near = ", ".join(n for n in list(named)[1:6])
            raise ParamCorruptError(
                f"module pattern {pattern!r} matches no module of the model (its modules: {near}, ...)"
            )
        chosen.update((n, named[n]) for n in hits)
    return {n: named[n] for n in named if n in chosen}


def _scope(group: ParameterGroup) -> str:
    """The name of the smallest module holding every parameter of ``group`` ("" for the model)."""
    owners = [n.rpartition(".")[0].split(".") if "." in n else [] for n in group.names]
    common: list[str] = []
    for parts in zip(*owners):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def modules_in_scope(
    model: nn.Module, group: ParameterGroup, spec: str = "owners"
) -> dict[str, nn.Module]:
    """The modules of ``group``'s region whose outputs a sweep's activation fault hooks.

    Args:
        model: the network.
        group: the row's parameter group.
        spec: ``"owners"``: the modules that own the group's parameters
            (:func:`select_modules`); a module class name (``relu``, ``maxpool2d``,
            ``multiheadattention``; any case): the modules of that class inside the
            *scope* of the group, the smallest module holding all of its parameters (the
            module itself included; the whole model when they share no parent below it);
            a name pattern (``fnmatch`` with ``*?[`` or a dot, ``re:`` a regular
            expression) on the full module name, inside the scope too. Modules that own no
            parameters (activations, pooling, attention blocks) are chosen this way.

    Raises:
        ParamCorruptError: a spec that matches no module of the group's scope (one line,
            naming the scope and some of its module classes).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputTypeError(
            f"modules must be 'owners', a module class name or a name pattern, got {spec!r}"
        )
    if spec == "owners":
        return select_modules(model, group)
    scope = _scope(group)
    inside = {
        n: m
        for n, m in model.named_modules()
        if not scope or n == scope or n.startswith(scope + ".")
    }
    if spec.startswith("re:") or any(c in spec for c in "*?[."):
        chosen = {
            n: m
            for n, m in inside.items()
            if (
                re.fullmatch(spec[3:], n)
                if spec.startswith("re:")
                else fnmatch.fnmatchcase(n, spec)
            )
        }
    else:
        chosen = {n: m for n, m in inside.items() if type(m).__name__.lower() == spec.lower()}
    if not chosen:
        kinds = ", ".join(dict.fromkeys(type(m).__name__ for m in inside.values()))
        where = f"module {scope!r}" if scope else "the model"
        raise ParamCorruptError(
            f"modules={spec!r} matches no module inside {where} (the scope of group {group.name!r}); its module classes: {kinds} (a functional call such as F.relu has no module to hook)"
        )
    return chosen
