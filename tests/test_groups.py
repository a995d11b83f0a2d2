"""select() and parameter_types(): groups by name pattern, module type and weight/bias."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramcorrupt import PARAMETER_TYPES, ParameterGroup, parameter_types, select


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.embed = nn.Embedding(20, 8)
        self.ln = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.lstm = nn.LSTM(8, 6, num_layers=2)
        self.head = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
        self.scale = nn.Parameter(torch.ones(()))  # owned by the root module: "other"


EXPECTED_TYPES = {
    "conv.weight": "conv",
    "conv.bias": "conv",
    "bn.weight": "norm",
    "bn.bias": "norm",
    "gn.weight": "norm",
    "gn.bias": "norm",
    "embed.weight": "embedding",
    "ln.weight": "norm",
    "ln.bias": "norm",
    "attn.in_proj_weight": "attention",
    "attn.in_proj_bias": "attention",
    "attn.out_proj.weight": "attention",  # an nn.Linear, but inside the attention module
    "attn.out_proj.bias": "attention",
    "head.0.weight": "linear",
    "head.0.bias": "linear",
    "head.2.weight": "linear",
    "head.2.bias": "linear",
    "scale": "other",
}
for _layer in (0, 1):
    for _kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        EXPECTED_TYPES[f"lstm.{_kind}_l{_layer}"] = "recurrent"


def names_by_type(model, kind):
    return tuple(name for name, _ in model.named_parameters() if EXPECTED_TYPES[name] == kind)


def test_parameter_types_of_every_parameter():
    model = Zoo()
    types = parameter_types(model)
    assert set(types) == {name for name, _ in model.named_parameters()}
    assert types == {name: EXPECTED_TYPES[name] for name in types}
    assert set(types.values()) <= set(PARAMETER_TYPES)


@pytest.mark.parametrize("kind", ["conv", "linear", "norm", "embedding", "attention", "recurrent", "other"])
def test_select_by_type(kind):
    model = Zoo()
    group = select(model, types=kind)
    assert isinstance(group, ParameterGroup)
    assert group.names == names_by_type(model, kind)
    tensors = group.tensors(model)
    params = dict(model.named_parameters())
    assert all(tensors[name] is params[name] for name in group.names)
    assert group.numel(model) == sum(params[name].numel() for name in group.names)
    assert len(group) == len(group.names)


def test_select_several_types_keeps_model_order():
    model = Zoo()
    group = select(model, types=["norm", "attention"])
    expected = tuple(name for name, _ in model.named_parameters() if EXPECTED_TYPES[name] in ("norm", "attention"))
    assert group.names == expected


def test_mha_out_proj_is_attention_not_linear():
    model = Zoo()
    assert "attn.out_proj.weight" not in select(model, types="linear").names
    assert "attn.out_proj.weight" in select(model, types="attention").names


def test_custom_attention_class_counts_as_attention():
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)

    model = nn.Sequential(SelfAttention(), nn.Linear(4, 2))
    # a normalisation module is "norm" wherever it sits, inside an attention block too
    assert select(model, types="attention").names == ("0.q.weight", "0.q.bias")
    assert select(model, types="norm").names == ("0.norm.weight", "0.norm.bias")
    assert select(model, types="linear").names == ("1.weight", "1.bias")


def test_norm_inside_attention_is_norm_by_module_class():
    """BERT's layout: attention.output.{dense, LayerNorm}; a class named ...Norm is norm too."""

    class LlamaRMSNorm(nn.Module):  # as transformers': not a torch norm class
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

    class BertSelfOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(4, 4)
            self.LayerNorm = nn.LayerNorm(4)

    class BertAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(4, 4)
            self.output = BertSelfOutput()
            self.norm = LlamaRMSNorm(4)

    model = nn.ModuleDict({"attention": BertAttention(), "head": nn.Linear(4, 2)})
    types = parameter_types(model)
    assert types["attention.output.LayerNorm.weight"] == "norm"
    assert types["attention.output.LayerNorm.bias"] == "norm"
    assert types["attention.norm.weight"] == "norm"
    assert types["attention.output.dense.weight"] == "attention"
    assert types["attention.query.bias"] == "attention"
    assert types["head.weight"] == "linear"


def test_default_is_every_trainable_parameter():
    model = Zoo()
    assert select(model).names == tuple(name for name, _ in model.named_parameters())
    assert select(model).name == "all"


@pytest.mark.parametrize(
    "include, expected",
    [
        ("head.*", ("head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias")),
        ("*.bias", None),  # computed below
        ("head", ("head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias")),  # module prefix
        ("head.2", ("head.2.weight", "head.2.bias")),
        ("lstm.weight_*_l1", ("lstm.weight_ih_l1", "lstm.weight_hh_l1")),
        ("re:(bn|ln)\\.weight", ("bn.weight", "ln.weight")),
        ("re:head\\.\\d\\.bias", ("head.0.bias", "head.2.bias")),
        (["conv", "scale"], ("scale", "conv.weight", "conv.bias")),  # model order: root's own first
    ],
)
def test_select_by_patterns(include, expected):
    model = Zoo()
    if expected is None:
        expected = tuple(name for name, _ in model.named_parameters() if name.endswith(".bias"))
    assert select(model, include).names == expected


def test_prefix_does_not_match_a_longer_module_name():
    model = nn.Module()
    model.layer1 = nn.Linear(2, 2)
    model.layer10 = nn.Linear(2, 2)
    assert select(model, "layer1").names == ("layer1.weight", "layer1.bias")


def test_regex_is_a_full_match():
    model = Zoo()
    with pytest.raises(ValueError, match="empty"):
        select(model, "re:head")  # would match by re.search, not by fullmatch
    assert select(model, "re:head.*").names == names_by_type(model, "linear")


def test_exclude_and_combination():
    model = Zoo()
    group = select(model, "head", exclude="head.2.*", kind="weight")
    assert group.names == ("head.0.weight",)
    group = select(model, types="norm", exclude=["bn", "re:gn\\..*"])
    assert group.names == ("ln.weight", "ln.bias")


def test_kind_weight_and_bias():
    model = Zoo()
    biases = select(model, kind="bias").names
    weights = select(model, kind="weight").names
    all_names = [name for name, _ in model.named_parameters()]
    assert biases == tuple(n for n in all_names if n.rpartition(".")[2].startswith("bias"))
    assert set(weights) | set(biases) == set(all_names) and not set(weights) & set(biases)
    assert "lstm.bias_ih_l0" in biases and "lstm.weight_hh_l1" in weights
    assert "attn.in_proj_bias" not in biases  # "in_proj_bias" does not start with "bias"
    assert "scale" in weights
    assert select(model, types="recurrent", kind="bias").names == (
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "lstm.bias_ih_l1",
        "lstm.bias_hh_l1",
    )


def test_frozen_excluded_unless_include_frozen():
    model = Zoo()
    model.conv.weight.requires_grad_(False)
    model.bn.requires_grad_(False)
    assert select(model, types="conv").names == ("conv.bias",)
    assert select(model, types="conv", include_frozen=True).names == ("conv.weight", "conv.bias")
    assert "bn.weight" not in select(model).names
    with pytest.raises(ValueError, match="include_frozen"):
        select(model, "bn")
    assert select(model, "bn", include_frozen=True).names == ("bn.weight", "bn.bias")


def test_tied_parameters_count_once():
    model = nn.Module()
    model.emb = nn.Embedding(10, 4)
    model.dec = nn.Linear(4, 10)
    model.dec.weight = model.emb.weight
    group = select(model)
    assert group.names == ("emb.weight", "dec.bias")
    assert group.numel(model) == 40 + 10
    assert select(model, types="embedding").names == ("emb.weight",)
    # the alias is still a valid name for a group given explicitly
    alias = ParameterGroup("alias", ("dec.weight",))
    assert alias.tensors(model)["dec.weight"] is model.emb.weight


def test_empty_group_error():
    model = Zoo()
    with pytest.raises(ValueError, match=r"empty.*nothing"):
        select(model, "nothing*")
    with pytest.raises(ValueError, match="empty"):
        select(nn.Sequential(nn.Linear(2, 2)), types="norm")
    with pytest.raises(ValueError, match="empty"):
        select(model, "conv", exclude="conv")


def test_unknown_type_and_kind_errors():
    with pytest.raises(ValueError, match="'batchnorm'"):
        select(Zoo(), types="batchnorm")
    with pytest.raises(ValueError, match="'weights'"):
        select(Zoo(), kind="weights")
    with pytest.raises(TypeError, match="3"):
        select(Zoo(), ["conv", 3])


def test_group_tensors_unknown_name():
    with pytest.raises(ValueError, match="'missing'"):
        ParameterGroup("g", ("conv.weight", "missing")).tensors(Zoo())


def test_labels():
    model = Zoo()
    assert select(model, "head", types="linear", kind="bias").name == "head/linear/bias"
    assert select(model, types="norm", name="normalisation").name == "normalisation"
