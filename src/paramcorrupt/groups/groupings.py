"""Grouping helpers: split a model's parameters into the groups a probe compares.

Every helper returns an ordered ``dict`` label -> :class:`~paramcorrupt.ParameterGroup` built
with the core :func:`~paramcorrupt.select`, so tied parameters count once and frozen ones are
left out unless asked for. Groups are named after ``named_parameters()`` names and module
types, never after counters in visiting order.

- :func:`groups_by_type`: conv, linear, norm, embedding, attention, recurrent (and "other"
  for parameters owned by no typed module), only the non-empty ones (Figure 4 a-b).
- :func:`groups_by_position`: lower to upper layers (Figure 4 c-f, Tables 4-5, Figure 5).
- :func:`groups_by_module`: every module that owns parameters, on its own (Figure 7).
- :func:`groups_from_mapping`: the user's own labels -> name patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from ..errors import InputTypeError, ParamCorruptError
from ..formats.torchao import is_torchao_tensor
from .base import PARAMETER_TYPES, ParameterGroup, parameter_types, select

__all__ = [
    "GROUPINGS",
    "groups_by_module",
    "groups_by_position",
    "groups_by_type",
    "groups_from_mapping",
    "make_groups",
]


_RNN_LAYER = re.compile(r"_l(\d+)(_reverse)?$")


def _trainable_names(model: nn.Module, include_frozen: bool) -> list[str]:
    # a torchao weight is frozen by torchao, yet it is the deployed model's weight: kept
    return [n for n, p in model.named_parameters() if include_frozen or p.requires_grad or is_torchao_tensor(p)]


def _build(model: nn.Module, units: Mapping[str, list[str]]) -> dict[str, ParameterGroup]:
    """label -> the group of exactly these parameter names (empty labels dropped)."""
    params = dict(model.named_parameters())
    out = {}
    for label, names in units.items():
        if not names:
            continue
        for name in names:
            if not params[name].is_floating_point():
                raise InputTypeError(
                    f"parameter {name!r} has dtype {params[name].dtype}; only floating-point parameters can be corrupted"
                )
        out[label] = ParameterGroup(label, tuple(names))
    return out


def groups_by_type(
    model: nn.Module, *, types: Iterable[str] | None = None, include_frozen: bool = False
) -> dict[str, ParameterGroup]:
    """One group per parameter type, in :data:`~paramcorrupt.PARAMETER_TYPES` order (Figure 4 a-b).

    The type is that of the module owning the parameter (anything inside an attention
    module is "attention"); parameters owned by no typed module (a bare ``nn.Parameter``
    such as a class token) form "other". Empty types are left out.

    Args:
        model: the network.
        types: the types to keep (default: all of them).
        include_frozen: keep parameters with ``requires_grad=False``.

    Raises:
        ValueError: for an unknown type, or when no parameter is left.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
        >>> {label: g.names for label, g in groups_by_type(model).items()}
        {'conv': ('0.weight', '0.bias'), 'linear': ('3.weight', '3.bias'), 'norm': ('1.weight', '1.bias')}
    """
    return _groups_by_kind(model, types, PARAMETER_TYPES, parameter_types, "parameter type", include_frozen)


def _groups_by_kind(
    model: nn.Module,
    wanted: Iterable[str] | None,
    kinds: tuple[str, ...],
    kind_of: Callable[[nn.Module], Mapping[str, str]],
    what: str,
    include_frozen: bool,
) -> dict[str, ParameterGroup]:
    """One group per kind (``kind_of(model)``: parameter name -> kind), in ``kinds`` order."""
    wanted = kinds if wanted is None else tuple(wanted)
    unknown = [k for k in wanted if k not in kinds]
    if unknown:
        raise ParamCorruptError(f"unknown {what} {unknown[0]!r}; expected one of {kinds}")
    kind = kind_of(model)
    units: dict[str, list[str]] = {k: [] for k in wanted}
    for name in _trainable_names(model, include_frozen):
        if kind[name] in units:
            units[kind[name]].append(name)
    groups = _build(model, units)
    if not groups:
        raise ParamCorruptError(f"no parameter of {what.split()[-1]} {', '.join(wanted)} in the model")
    return groups


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _is_block_list(module: nn.Module) -> bool:
    """A list of repeated blocks: ``encoder.layers``, ``layer1`` of a torchvision ResNet, ...

    A ``ModuleList`` with two or more children owning parameters, or a ``Sequential`` whose
    two or more parameter-owning children are themselves composite modules (blocks, not
    single layers: ``shortcut = Sequential(conv, bn)`` stays one unit).
    """
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    children = [c for c in module.children() if _owns_parameters(c)]
    if len(children) < 2:
        return False
    if isinstance(module, nn.ModuleList):
        return True
    return all(any(_owns_parameters(g) for g in c.children()) for c in children)


def _contains_block_list(module: nn.Module) -> bool:
    return any(_is_block_list(m) for m in module.modules())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _auto_units(module: nn.Module, prefix: str, expand: bool) -> list[tuple[str, str]]:
    """(label, module or parameter path) units, in registration order.

    ``expand`` forces one level of expansion (the root always is expanded).
    """
    if isinstance(module, nn.RNNBase) and module.num_layers > 1:
        # a stacked RNN: one unit per layer (weight_ih_l0, ..._l1, ...)
        layers: dict[str, None] = {}
        for pname, _ in module.named_parameters(recurse=False):
            match = _RNN_LAYER.search(pname)
            layers[f"l{match.group(1)}" if match else pname] = None
        return [(_join(prefix, layer), _join(prefix, layer)) for layer in layers]
    if not expand and not _contains_block_list(module):
        return [(prefix, prefix)]
    if not expand and _is_block_list(module):
        return [(_join(prefix, name), _join(prefix, name)) for name, c in module.named_children() if _owns_parameters(c)]
    units = [(_join(prefix, pname), _join(prefix, pname)) for pname, _ in module.named_parameters(recurse=False)]
    for name, child in module.named_children():
        if _owns_parameters(child):
            units += _auto_units(child, _join(prefix, name), False)
    return units


def _unit_of(name: str, units: list[tuple[str, str]]) -> str | None:
    """The label of the unit a parameter name lies under (the longest matching path)."""
    best, length = None, -1
    for label, path in units:
        if name == path or name.startswith(path + "."):
            if len(path) > length:
                best, length = label, len(path)
    return best


def groups_by_position(
    model: nn.Module,
    *,
    depth: int | None = None,
    pattern: str | None = None,
    include_frozen: bool = False,
) -> dict[str, ParameterGroup]:
    """Groups from the lower to the upper layers (Figure 4 c-f, Tables 4-5, Figure 5).

    Three ways to cut the network, in registration (roughly forward) order:

    - automatic (default): the top-level children; a child holding a list of repeated
      blocks is replaced by the blocks (``layer1.0``, ``layer1.1``, ... or
      ``encoder.layers.0``, ...; encoder and decoder stay apart); a stacked RNN is split
      by layer (``rnn.l0``, ``rnn.l1``); parameters held directly by a container are
      units of their own.
    - ``depth=d``: the first d components of each parameter's module path (``depth=1``:
      the top-level children, as the paper's ResNet-34 Layer1..Layer4).
    - ``pattern=REGEX``: the label is the first capturing group (or the whole match) of
      ``re.search(REGEX, name)``; parameters that do not match are left out
      (``pattern=r"layer\\d+"``, ``pattern=r"(encoder|decoder)\\.layers\\.\\d+"``).

    Args:
        model: the network.
        depth: cut module paths at this many components (>= 1).
        pattern: a regular expression giving each parameter's label.
        include_frozen: keep parameters with ``requires_grad=False``.

    Raises:
        ValueError: for both ``depth`` and ``pattern``, a depth < 1, a bad regular
            expression, or when nothing is selected.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> list(groups_by_position(model))
        ['0', '2']
    """
    if depth is not None and pattern is not None:
        raise ParamCorruptError("give depth or pattern, not both")
    names = _trainable_names(model, include_frozen)
    units: dict[str, list[str]] = {}
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ParamCorruptError(f"bad position pattern {pattern!r}: {error}") from None
        for name in names:
            match = regex.search(name)
            if match:
                label = next((g for g in match.groups() if g is not None), match.group(0))
                units.setdefault(label, []).append(name)
        if not units:
            raise ParamCorruptError(f"no parameter name matches the position pattern {pattern!r}")
    elif depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ParamCorruptError(f"depth must be an integer >= 1, got {depth!r}")
        for name in names:
            parts = name.split(".")
            label = ".".join(parts[: min(depth, len(parts) - 1)]) or name
            units.setdefault(label, []).append(name)
    else:
        auto = _auto_units(model, "", True)
        units = {label: [] for label, _ in auto}
        rnn_prefixes = {
            prefix for prefix, m in model.named_modules() if isinstance(m, nn.RNNBase) and m.num_layers > 1
        }
        for name in names:
            owner, _, leaf = name.rpartition(".")
            if owner in rnn_prefixes:
                match = _RNN_LAYER.search(leaf)
                label = _join(owner, f"l{match.group(1)}" if match else leaf)
            else:
                label = _unit_of(name, auto)
            if label is None:  # pragma: no cover - every parameter lies under some unit
                label = name
            units.setdefault(label, []).append(name)
    groups = _build(model, units)
    if not groups:
        raise ParamCorruptError("the model has no trainable parameter to group")
    return groups


def groups_by_module(model: nn.Module, *, include_frozen: bool = False) -> dict[str, ParameterGroup]:
    """Every module that owns parameters directly, on its own (Figure 7).

    The label is the module's path (``layer1.bn1``); parameters held by the root module
    itself are labelled by their own names.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4))
        >>> {label: g.names for label, g in groups_by_module(model).items()}
        {'0': ('0.weight', '0.bias'), '1': ('1.weight', '1.bias')}
    """
    units: dict[str, list[str]] = {}
    for name in _trainable_names(model, include_frozen):
        owner = name.rpartition(".")[0] or name
        units.setdefault(owner, []).append(name)
    groups = _build(model, units)
    if not groups:
        raise ParamCorruptError("the model has no trainable parameter to group")
    return groups


def groups_from_mapping(
    model: nn.Module, mapping: Mapping[str, str | Iterable[str]], *, include_frozen: bool = False
) -> dict[str, ParameterGroup]:
    """The user's groups: label -> name patterns (the syntax of :func:`~paramcorrupt.select`).

    Args:
        model: the network.
        mapping: label -> a pattern or a list of patterns (globs on parameter names, module
            prefixes, or ``re:`` regular expressions).
        include_frozen: keep parameters with ``requires_grad=False``.

    Raises:
        ValueError: for an empty mapping or a label whose patterns match nothing.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 1))
        >>> groups_from_mapping(model, {"head": "2", "biases": "*.bias"})["biases"].names
        ('0.bias', '1.bias', '2.bias')
    """
    if not isinstance(mapping, Mapping) or not mapping:
        raise ParamCorruptError("the group mapping must map at least one label to name patterns")
    out = {}
    for label, patterns in mapping.items():
        if not isinstance(label, str) or not label:
            raise ParamCorruptError(f"a group label must be a non-empty string, got {label!r}")
        out[label] = select(model, patterns, include_frozen=include_frozen, name=label)
    return out


#: name -> helper, for ``paramcorrupt probe --by``.
GROUPINGS: dict[str, Callable[..., dict[str, ParameterGroup]]] = {
    "type": groups_by_type,
    "position": groups_by_position,
    "module": groups_by_module,
}


def make_groups(model: nn.Module, by: str, **options: Any) -> dict[str, ParameterGroup]:
    """Group ``model`` by "type", "position" or "module" (options go to the helper).

    Raises:
        ValueError: for an unknown grouping.
    """
    if by not in GROUPINGS:
        raise ParamCorruptError(f"unknown grouping {by!r}; expected one of {', '.join(GROUPINGS)}")
    return GROUPINGS[by](model, **options)
