"""CIFAR ResNets and the LSTM language model: shapes, parameter names, tying, hidden state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramcorrupt.groups import parameter_types, select
from paramcorrupt.models import (
    CifarResNet,
    LSTMLanguageModel,
    detach_hidden,
    resnet20_cifar,
    resnet34_cifar,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- ResNet


@pytest.mark.slow
def test_resnet34_shapes_and_layout():
    torch.manual_seed(0)
    model = resnet34_cifar().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert [len(getattr(model, s)) for s in model.stage_names] == [3, 4, 6, 3]
    assert model.stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert model.fc.in_features == 512
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 33  # + fc = 34 weighted layers
    assert sum(m.kernel_size == (1, 1) for m in convs) == 3  # projections of layer2..4
    assert 21.0e6 < n_params(model) < 21.5e6


def test_resnet34_parameter_names():
    names = [n for n, _ in resnet34_cifar().named_parameters()]
    for expected in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.2.bn2.bias",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.weight",
        "layer3.5.conv2.weight",
        "layer4.0.shortcut.1.bias",
        "layer4.2.bn2.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert expected in names
    assert not any(n.startswith("layer1.0.shortcut") for n in names)  # identity there
    assert not any(n.startswith("layer5") for n in names)
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert names[-2:] == ["fc.weight", "fc.bias"]


def test_resnet_groups_by_type_and_position():
    model = resnet20_cifar()
    types = parameter_types(model)
    assert types["conv1.weight"] == "conv"
    assert types["layer2.0.shortcut.0.weight"] == "conv"
    assert types["layer2.0.shortcut.1.weight"] == "norm"
    assert types["layer1.0.bn1.bias"] == "norm"
    assert types["fc.weight"] == "linear"
    assert set(types.values()) == {"conv", "norm", "linear"}
    layer3 = select(model, "layer3")
    assert layer3.names and all(n.startswith("layer3.") for n in layer3.names)
    norms = select(model, types="norm")
    assert all(".bn" in n or n.startswith("bn1") or "shortcut.1" in n for n in norms.names)


def test_resnet20_parameter_count():
    model = resnet20_cifar()
    # 0.27M as in He et al. (2016); the two 1x1 projections add 2,752 over option A.
    assert n_params(model) == 272_474
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert model.stage_names == ("layer1", "layer2", "layer3")


def test_generic_resnet_configurable():
    model = CifarResNet([1, 2], [8, 24], num_classes=7, in_channels=1)
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 7)
    names = [n for n, _ in model.named_parameters()]
    assert "layer2.1.conv2.weight" in names and "layer2.0.shortcut.0.weight" in names
    assert model.conv1.in_channels == 1


def test_generic_resnet_rejects_bad_config():
    with pytest.raises(ValueError, match="equal length"):
        CifarResNet([1, 1], [8])
    with pytest.raises(ValueError, match="non-empty"):
        CifarResNet([], [])
    with pytest.raises(ValueError, match="positive"):
        CifarResNet([1, 0], [8, 16])


def test_zero_init_residual():
    model = CifarResNet([1], [8], zero_init_residual=True)
    assert torch.all(model.layer1[0].bn2.weight == 0)
    assert torch.all(model.bn1.weight == 1)


# ----------------------------------------------------------------------------- LSTM LM


def small_lm(**kwargs) -> LSTMLanguageModel:
    torch.manual_seed(0)
    options = {"vocab_size": 30, "emb_size": 6, "hidden_size": 10, "num_layers": 3, "dropout": 0.3}
    options.update(kwargs)
    return LSTMLanguageModel(**options)


def test_lstm_shapes_and_hidden():
    model = small_lm().eval()
    tokens = torch.randint(0, 30, (7, 4))
    logits, hidden = model(tokens)
    assert logits.shape == (7, 4, 30)
    assert len(hidden) == 3
    assert [tuple(h.shape) for h, _ in hidden] == [(1, 4, 10), (1, 4, 10), (1, 4, 10)]
    assert [tuple(c.shape) for _, c in hidden] == [(1, 4, 10)] * 3
    zeros = model.init_hidden(4)
    assert all(torch.all(h == 0) and torch.all(c == 0) for h, c in zeros)
    assert [tuple(h.shape) for h, _ in zeros] == [(1, 4, 10)] * 3


def test_lstm_parameter_names():
    names = [n for n, _ in small_lm().named_parameters()]
    assert names[0] == "embedding.weight"
    for i in range(3):
        for p in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            assert f"lstm.{i}.{p}" in names
    assert names[-2:] == ["decoder.weight", "decoder.bias"]
    types = parameter_types(small_lm())
    assert types["embedding.weight"] == "embedding"
    assert types["lstm.1.weight_hh_l0"] == "recurrent"
    assert types["decoder.bias"] == "linear"
    assert select(small_lm(), "lstm.1").names == (
        "lstm.1.weight_ih_l0",
        "lstm.1.weight_hh_l0",
        "lstm.1.bias_ih_l0",
        "lstm.1.bias_hh_l0",
    )


def test_tied_weights_share_one_parameter():
    model = small_lm(tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    names = [n for n, _ in model.named_parameters()]
    assert names.count("embedding.weight") == 1
    assert "decoder.weight" not in names
    assert len(list(model.parameters())) == len(names)
    # AWD-LSTM: the last layer's hidden size becomes the embedding size
    assert model.hidden_sizes == (10, 10, 6)
    _, hidden = model(torch.zeros(2, 3, dtype=torch.long))
    assert hidden[-1][0].shape == (1, 3, 6)
    untied = small_lm(last_hidden_size=6)
    assert n_params(untied) - n_params(model) == 30 * 6  # one decoder matrix fewer
    tied_total = sum(p.numel() for _, p in model.named_parameters())
    assert tied_total == n_params(model)  # the shared matrix counted once
    with torch.no_grad():
        model.embedding.weight[0, 0] = 123.0
    assert model.decoder.weight[0, 0].item() == 123.0


def test_tied_weights_size_mismatch_raises():
    with pytest.raises(ValueError, match="tie_weights"):
        small_lm(tie_weights=True, last_hidden_size=10)
    model = small_lm(tie_weights=True, last_hidden_size=6)
    assert model.decoder.weight is model.embedding.weight


def test_paper_lstm_size():
    # the paper's PTB model: 3 layers, embedding 400, hidden 1150, tied (as in AWD-LSTM, ~24M)
    model = LSTMLanguageModel(10_000, 400, 1150, 3, dropout=0.4, tie_weights=True)
    assert n_params(model) == 24_221_600


def test_hidden_state_carries_across_windows():
    model = small_lm().eval()
    tokens = torch.randint(0, 30, (9, 2))
    with torch.no_grad():
        full, _ = model(tokens)
        first, hidden = model(tokens[:4])
        second, _ = model(tokens[4:], detach_hidden(hidden))
    torch.testing.assert_close(torch.cat([first, second]), full)


@pytest.mark.slow
def test_dropout_only_in_training():
    model = small_lm(dropout=0.5, dropout_embedding=0.2, weight_drop=0.5)
    tokens = torch.randint(0, 30, (5, 3))
    model.train()
    a, _ = model(tokens)
    b, _ = model(tokens)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        c, _ = model(tokens)
        d, _ = model(tokens)
    torch.testing.assert_close(c, d)
    plain = small_lm(dropout=0.0)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(tokens)[0], c)


def test_weight_drop_keeps_names_and_gradients():
    model = small_lm(weight_drop=0.5, tie_weights=True).train()
    names = [n for n, _ in model.named_parameters()]
    assert "lstm.0.weight_hh_l0" in names and not any("raw" in n or "orig" in n for n in names)
    logits, hidden = model(torch.randint(0, 30, (4, 2)))
    logits.sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
    assert all(not h.requires_grad for h, _ in detach_hidden(hidden))


def test_lstm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        small_lm(num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        small_lm(dropout=1.0)
    with pytest.raises(ValueError, match=r"\[T, B\]"):
        small_lm()(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="layers"):
        small_lm()(torch.zeros(3, 2, dtype=torch.long), small_lm(num_layers=2).init_hidden(2))
