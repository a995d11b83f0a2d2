"""Groupings for transformer architectures (Hugging Face and alike): by component
(embedding, attention, MLP, norm, head) and by layer index.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..errors import ParamCorruptError
from .base import ParameterGroup, parameter_types
from .groupings import GROUPINGS, _build, _groups_by_kind, _owns_parameters, _trainable_names

__all__ = ["COMPONENTS", "component_of", "groups_by_component", "groups_by_layer"]


#: the components :func:`groups_by_component` splits a transformer into
COMPONENTS = ("embedding", "attention", "mlp", "norm", "head", "other")


_ATTENTION_SEGMENTS = {"attn", "self_attn", "attention", "self_attention", "selfattention",
                       "crossattention", "cross_attn", "encoder_attn", "encdecattention", "mixer"}


_MLP_SEGMENTS = {"mlp", "ffn", "feed_forward", "feedforward", "intermediate", "experts",
                 "block_sparse_moe", "moe", "dense_h_to_4h", "dense_4h_to_h", "fc1", "fc2"}


_MLP_CLASS_WORDS = ("mlp", "feedforward", "ffn", "layerff", "densereludense", "intermediate",
                    "moe", "expert")


_HEAD_SEGMENTS = {"lm_head", "classifier", "score", "pooler", "qa_outputs", "cls", "head", "heads"}


def component_of(model: nn.Module) -> dict[str, str]:
    """The component of every (unique) parameter: embedding, attention, mlp, norm, head, other.

    Read from module classes and names, in this order of precedence:

    - **norm**: its type is "norm" in :func:`~paramcorrupt.groups.parameter_types` (the one
      taxonomy: a normalisation module, torch's or a class named ``...Norm`` such as
      ``LlamaRMSNorm``), wherever it sits — inside an attention block too;
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
    types = parameter_types(model)  # the one taxonomy: "norm" is a normalisation module's
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    has_base = isinstance(base, nn.Module) and base is not model
    out: dict[str, str] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        owner = modules.get(".".join(parts[:-1]), model)
        chain = [modules.get(".".join(parts[:i]), model) for i in range(len(parts) - 1, 0, -1)]
        classes = [type(m).__name__.lower() for m in chain]
        segments = [s.lower() for s in parts[:-1]]
        if types.get(name) == "norm":
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
        raise ParamCorruptError(
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
        raise ParamCorruptError("the model has no trainable parameter to group")
    return groups


GROUPINGS["component"] = groups_by_component


GROUPINGS["layer"] = groups_by_layer
