"""Parameter groups: the subspace R^k a corruption lives in.

Parameters are selected by their ``named_parameters()`` names and by the type of the module
that owns them, never by counters in visiting order. Tied (shared) parameters count once,
under the first name ``named_parameters()`` gives them; frozen ones are left out unless asked
for.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import InputTypeError, ParamCorruptError
from ..formats.torchao import is_torchao_tensor

__all__ = [
    "PARAMETER_TYPES",
    "ParameterGroup",
    "parameter_types",
    "select",
]

#: The parameter types the paper probes (Figure 4 a-b), plus recurrent layers and "other".
PARAMETER_TYPES = ("conv", "linear", "norm", "embedding", "attention", "recurrent", "other")

_NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    """A normalisation module: torch's (batch, layer, group, instance, local response, RMS)
    or a class whose name ends in "Norm" (``LlamaRMSNorm``, ``T5LayerNorm``, ``FusedLayerNorm``)."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def _module_type(module: nn.Module) -> str | None:
    if _is_norm(module):
        return "norm"
    if isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower():
        return "attention"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.RNNBase):
        return "recurrent"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "linear"
    return None


def parameter_types(model: nn.Module) -> dict[str, str]:
    """The type of every (unique) parameter of ``model``, keyed by its name.

    The rule, by module class (never by parameter name):

    1. a parameter of a normalisation module (``BatchNorm*``, ``LayerNorm``, ``GroupNorm``,
       ``InstanceNorm*``, ``LocalResponseNorm``, ``RMSNorm``, or any class whose name ends
       in "Norm") is "norm", wherever that module sits — BERT's
       ``attention.output.LayerNorm`` included;
    2. else anything inside an attention module (``nn.MultiheadAttention``, or a class whose
       name contains "Attention") is "attention" — its output projection included;
    3. else the type of the innermost typed module owning it (conv, linear, embedding,
       recurrent), and "other" when there is none.

    Example:
        >>> parameter_types(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
        {'0.weight': 'conv', '0.bias': 'conv', '1.weight': 'norm', '1.bias': 'norm'}
    """
    types: dict[str, str] = {}
    modules = dict(model.named_modules())
    for name, _ in model.named_parameters():
        owner, _, _ = name.rpartition(".")
        kind = None
        prefix = owner
        chain = []
        while True:
            chain.append(prefix)
            if not prefix:
                break
            prefix = prefix.rpartition(".")[0]
        # a normalisation module owning the parameter decides; else any attention ancestor
        # wins; else the innermost typed module
        if owner in modules and _is_norm(modules[owner]):
            types[name] = "norm"
            continue
        for path in chain:
            module_kind = _module_type(modules[path]) if path in modules else None
            if module_kind == "attention":
                kind = "attention"
                break
            if kind is None and module_kind is not None:
                kind = module_kind
        types[name] = kind or "other"
    return types


@dataclass(frozen=True)
class ParameterGroup:
    """A named set of parameters, by their ``named_parameters()`` names.

    Args:
        name: a label for reports ("norm", "layer3", ...).
        names: the parameter names, in model order, each parameter once.
    """

    name: str
    names: tuple[str, ...]

    def tensors(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The group's parameters in ``model``, name -> Parameter, in group order."""
        found = {n: find_parameter(model, n) for n in self.names}
        missing = [n for n, p in found.items() if p is None]
        if missing:
            raise ParamCorruptError(f"group {self.name!r}: the model has no parameter named {missing[0]!r}")
        return found  # type: ignore[return-value]  # no None left

    def numel(self, model: nn.Module) -> int:
        """k, the group's number of scalar parameters."""
        return sum(p.numel() for p in self.tensors(model).values())

    def __len__(self) -> int:
        return len(self.names)


def find_parameter(model: nn.Module, name: str) -> nn.Parameter | None:
    """The parameter reachable as ``name`` (tied aliases included), or None: resolved along
    its module path, without walking the whole model."""
    *path, last = name.split(".")
    module: nn.Module | None = model
    for atom in path:  # the registered submodules, as named_parameters() walks them
        module = module._modules.get(atom)  # type: ignore[union-attr]
        if module is None:
            break
    else:
        param = module._parameters.get(last)  # type: ignore[union-attr]
        if param is not None:
            return param  # type: ignore[return-value]
    # a model whose names do not follow its module tree: the full walk
    return _parameter_lookup(model).get(name)


def _parameter_lookup(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every name a parameter is reachable under, tied aliases included."""
    return dict(model.named_parameters(remove_duplicate=False))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*"):
            return True
    return False


def _as_patterns(value: str | Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    patterns = tuple(value)
    for p in patterns:
        if not isinstance(p, str):
            raise InputTypeError(f"{what} must be strings, got {p!r}")
    return patterns


def select(
    model: nn.Module,
    include: str | Iterable[str] | None = None,
    *,
    exclude: str | Iterable[str] | None = None,
    types: str | Iterable[str] | None = None,
    kind: str | None = None,
    include_frozen: bool = False,
    name: str | None = None,
) -> ParameterGroup:
    """Select a group of parameters by name pattern, module type and weight/bias.

    Patterns are shell globs on ``named_parameters()`` names (``"layer1.*"``, ``"*.bias"``);
    a pattern also matches everything under it as a module prefix (``"layer1"`` selects
    ``layer1.0.conv1.weight``); a pattern starting with ``re:`` is a full-match regular
    expression.

    Args:
        model: the network.
        include: patterns to keep (default: every parameter).
        exclude: patterns to drop.
        types: parameter types to keep, among :data:`PARAMETER_TYPES`.
        kind: ``"weight"`` or ``"bias"`` to keep only parameters whose name ends so
            (``"weight"`` keeps every non-bias parameter, e.g. LSTM ``weight_ih_l0``).
        include_frozen: keep parameters with ``requires_grad=False``.
        name: the group's label (default: built from the arguments).

    Raises:
        ValueError: for an unknown type or kind, or when nothing is selected.
        TypeError: when a selected parameter is not floating point.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
        >>> select(model, types="norm").names
        ('1.weight', '1.bias')
        >>> select(model, "0", kind="bias").names
        ('0.bias',)
    """
    include_p = _as_patterns(include, "include patterns")
    exclude_p = _as_patterns(exclude, "exclude patterns") or ()
    type_set = _as_patterns(types, "types")
    if type_set is not None:
        unknown = [t for t in type_set if t not in PARAMETER_TYPES]
        if unknown:
            raise ParamCorruptError(f"unknown parameter type {unknown[0]!r}; expected one of {PARAMETER_TYPES}")
    if kind not in (None, "weight", "bias"):
        raise ParamCorruptError(f"kind must be 'weight', 'bias' or None, got {kind!r}")
    type_of = parameter_types(model) if type_set is not None else {}
    names = []
    for pname, param in model.named_parameters():
        # a torchao weight is frozen by torchao, yet it is the deployed model's weight: kept
        if not include_frozen and not param.requires_grad and not is_torchao_tensor(param):
            continue
        if include_p is not None and not _matches(pname, include_p):
            continue
        if exclude_p and _matches(pname, exclude_p):
            continue
        if type_set is not None and type_of[pname] not in type_set:
            continue
        is_bias = pname.rpartition(".")[2].startswith("bias")
        if kind is not None and (kind == "bias") != is_bias:
            continue
        names.append(pname)
    label = name or _label(include_p, type_set, kind)
    if not names:
        criteria = f"include={include_p}, exclude={exclude_p or None}, types={type_set}, kind={kind!r}"
        if not include_frozen and any(not p.requires_grad for p in model.parameters()):
            try:  # only frozen parameters match: say so, and how to keep them (the CLI has no option)
                frozen = select(model, include, exclude=exclude, types=types, kind=kind, include_frozen=True).names
            except ParamCorruptError:
                frozen = ()
            if frozen:
                raise ParamCorruptError(
                    f"group {label!r} is empty: the {len(frozen)} parameters that match {criteria} are all frozen "
                    f"(requires_grad=False, e.g. {frozen[0]!r}) and frozen parameters are not probed; make them "
                    "trainable in the model (requires_grad_(True)), or in Python select them with include_frozen=True"
                )
        raise ParamCorruptError(f"group {label!r} is empty: no parameter matches {criteria}")
    params = dict(model.named_parameters())
    for pname in names:
        if not params[pname].is_floating_point():
            raise InputTypeError(f"parameter {pname!r} has dtype {params[pname].dtype}; only floating-point parameters can be corrupted")
    return ParameterGroup(label, tuple(names))


def _label(include: Sequence[str] | None, types: Sequence[str] | None, kind: str | None) -> str:
    parts = []
    if include:
        parts.append("+".join(include))
    if types:
        parts.append("+".join(types))
    if kind:
        parts.append(kind)
    return "/".join(parts) or "all"


def as_group(model: nn.Module, group: ParameterGroup | str | Iterable[str] | None) -> ParameterGroup:
    """Normalise the ways a group can be given: a ParameterGroup, patterns, or None (all)."""
    if isinstance(group, ParameterGroup):
        group.tensors(model)  # validates the names
        return group
    return select(model, group)
