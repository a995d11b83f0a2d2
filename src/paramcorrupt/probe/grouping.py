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

from ..groups import PARAMETER_TYPES, ParameterGroup, parameter_types, select

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
    return [n for n, p in model.named_parameters() if include_frozen or p.requires_grad]


def _build(model: nn.Module, units: Mapping[str, list[str]]) -> dict[str, ParameterGroup]:
    """label -> the group of exactly these parameter names (empty labels dropped)."""
    params = dict(model.named_parameters())
    out = {}
    for label, names in units.items():
        if not names:
            continue
        for name in names:
            if not params[name].is_floating_point():
                raise TypeError(
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
        raise ValueError(f"unknown {what} {unknown[0]!r}; expected one of {kinds}")
    kind = kind_of(model)
    units: dict[str, list[str]] = {k: [] for k in wanted}
    for name in _trainable_names(model, include_frozen):
        if kind[name] in units:
            units[kind[name]].append(name)
    groups = _build(model, units)
    if not groups:
        raise ValueError(f"no parameter of {what.split()[-1]} {', '.join(wanted)} in the model")
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
        raise ValueError("give depth or pattern, not both")
    names = _trainable_names(model, include_frozen)
    units: dict[str, list[str]] = {}
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"bad position pattern {pattern!r}: {error}") from None
        for name in names:
            match = regex.search(name)
            if match:
                label = next((g for g in match.groups() if g is not None), match.group(0))
                units.setdefault(label, []).append(name)
        if not units:
            raise ValueError(f"no parameter name matches the position pattern {pattern!r}")
    elif depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
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
        raise ValueError("the model has no trainable parameter to group")
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
        raise ValueError("the model has no trainable parameter to group")
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
        raise ValueError("the group mapping must map at least one label to name patterns")
    out = {}
    for label, patterns in mapping.items():
        if not isinstance(label, str) or not label:
            raise ValueError(f"a group label must be a non-empty string, got {label!r}")
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
        raise ValueError(f"unknown grouping {by!r}; expected one of {', '.join(GROUPINGS)}")
    return GROUPINGS[by](model, **options)


# -- transformer architectures (Hugging Face and alike) ---------------------------------------

#: the components :func:`groups_by_component` splits a transformer into
COMPONENTS = ("embedding", "attention", "mlp", "norm", "head", "other")

_ATTENTION_SEGMENTS = {"attn", "self_attn", "attention", "self_attention", "selfattention",
                       "crossattention", "cross_attn", "encoder_attn", "encdecattention", "mixer"}
_MLP_SEGMENTS = {"mlp", "ffn", "feed_forward", "feedforward", "intermediate", "experts",
                 "block_sparse_moe", "moe", "dense_h_to_4h", "dense_4h_to_h", "fc1", "fc2"}
_MLP_CLASS_WORDS = ("mlp", "feedforward", "ffn", "layerff", "densereludense", "intermediate",
                    "moe", "expert")
_HEAD_SEGMENTS = {"lm_head", "classifier", "score", "pooler", "qa_outputs", "cls", "head", "heads"}


def _is_norm_module(module: nn.Module, segment: str) -> bool:
    from ..groups import _NORM_TYPES

    cls = type(module).__name__.lower()
    return isinstance(module, _NORM_TYPES) or "norm" in cls or "norm" in segment.lower() or (
        segment.startswith("ln") and (len(segment) == 2 or not segment[2].isalpha())
    )


def component_of(model: nn.Module) -> dict[str, str]:
    """The component of every (unique) parameter: embedding, attention, mlp, norm, head, other.

    Read from module classes and names, in this order of precedence:

    - **norm**: its owner is a normalisation module (LayerNorm, RMSNorm, batch norm, or any
      class whose name contains "Norm" such as ``LlamaRMSNorm``; or an owner named ``ln_*`` /
      ``*norm*``), wherever it sits — inside an attention block too;
    - **embedding**: owned by an ``nn.Embedding`` or by a module/parameter named ``*embed*``;
      a tied output embedding counts once, under its first name (the input embedding);
    - **head**: outside the base model (``model.base_model_prefix``: ``lm_head``,
      ``classifier``, ``score``), or under a module named pooler, classifier, lm_head, ...;
    - **attention**: under a module whose class name contains "Attention" or named
      ``attn``/``self_attn``/``attention``/...;
    - **mlp**: under a module whose class name contains MLP, FeedForward, Intermediate, MoE,
      ... or named ``mlp``/``ffn``/``intermediate``/..., or BERT's ``layer.N.output``;
    - **other**: anything else.

    Example:
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attn, self.ln, self.mlp = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)
        >>> model = nn.ModuleDict({"wte": nn.Embedding(10, 4), "block": Block(), "lm_head": nn.Linear(4, 10)})
        >>> sorted(set(component_of(model).values()))
        ['attention', 'embedding', 'head', 'mlp', 'norm']
    """
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    has_base = isinstance(base, nn.Module) and base is not model
    out: dict[str, str] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        owner_path = ".".join(parts[:-1])
        owner = modules.get(owner_path, model)
        owner_segment = parts[-2] if len(parts) > 1 else ""
        chain = [modules.get(".".join(parts[:i]), model) for i in range(len(parts) - 1, 0, -1)]
        classes = [type(m).__name__.lower() for m in chain]
        segments = [s.lower() for s in parts[:-1]]
        if _is_norm_module(owner, owner_segment):
            kind = "norm"
        elif isinstance(owner, (nn.Embedding, nn.EmbeddingBag)) or any("embed" in s for s in parts):
            kind = "embedding"
        elif (has_base and parts[0] != prefix) or any(s in _HEAD_SEGMENTS for s in segments):
            kind = "head"
        elif any("attention" in c for c in classes) or any(s in _ATTENTION_SEGMENTS for s in segments):
            kind = "attention"
        elif (
            any(w in c for c in classes for w in _MLP_CLASS_WORDS)
            or any(s in _MLP_SEGMENTS for s in segments)
            or any(s == "output" and i > 0 and segments[i - 1].isdigit() for i, s in enumerate(segments))
        ):
            kind = "mlp"
        else:
            kind = "other"
        out[name] = kind
    return out


def groups_by_component(
    model: nn.Module, *, components: Iterable[str] | None = None, include_frozen: bool = False
) -> dict[str, ParameterGroup]:
    """One group per transformer component: embedding, attention, mlp, norm, head, other.

    See :func:`component_of` for the rules (module classes and names; norms count as norm
    wherever they sit; tied embeddings count once). Empty components are left out.

    Raises:
        ValueError: for an unknown component, or when no parameter is left.
    """
    return _groups_by_kind(model, components, COMPONENTS, component_of, "component", include_frozen)


def _block_lists(model: nn.Module) -> list[str]:
    """Paths of the outermost ModuleLists of two or more same-class, parameter-owning blocks."""
    found: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or any(path.startswith(f + ".") for f in found):
            continue
        children = [c for c in module.children() if _owns_parameters(c)]
        if len(children) >= 2 and len({type(c) for c in children}) == 1:
            found.append(path)
    return found


def groups_by_layer(model: nn.Module, *, include_frozen: bool = False) -> dict[str, ParameterGroup]:
    """By layer index, lower to upper: ``input``, ``layer0`` .. ``layerN-1``, ``output``.

    The layers are the blocks of the model's list of repeated blocks (an ``nn.ModuleList`` of
    one block class: ``model.layers``, ``transformer.h``, ``bert.encoder.layer``); with
    several such lists (encoder and decoder) the labels are ``encoder.layers.0``, ... .
    Parameters before the first block (embeddings) form ``input``, those after the last
    (final norm, pooler, head) ``output``; a tied output embedding counts once, in ``input``.

    Raises:
        ValueError: when the model has no list of repeated blocks.
    """
    lists = _block_lists(model)
    if not lists:
        raise ValueError(
            f"{type(model).__name__} has no list of repeated blocks (an nn.ModuleList of one block class); "
            "group it with groups_by_position(pattern=...) instead"
        )
    units: dict[str, list[str]] = {"input": []}
    for path in lists:
        module = model.get_submodule(path)
        for index, (child, block) in enumerate(module.named_children()):
            if _owns_parameters(block):
                label = f"layer{index}" if len(lists) == 1 else f"{path}.{child}"
                units[label] = []
    units["output"] = []
    seen_block = False
    for name in _trainable_names(model, include_frozen):
        label = None
        for path in lists:
            if name.startswith(path + "."):
                child = name[len(path) + 1 :].split(".")[0]
                label = f"layer{child}" if len(lists) == 1 else f"{path}.{child}"
                break
        if label is not None:
            seen_block = True
        else:
            label = "output" if seen_block else "input"
        units[label].append(name)
    groups = _build(model, units)
    if not groups:
        raise ValueError("the model has no trainable parameter to group")
    return groups


GROUPINGS["component"] = groups_by_component
GROUPINGS["layer"] = groups_by_layer
