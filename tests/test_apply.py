"""corrupted(): in-place application of w + a and bit-exact restoration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from paramcorrupt import (
    Constraint,
    Corruption,
    corrupted,
    gradient_corruption,
    random_corruption,
    select,
)
from paramcorrupt.groups import ParameterGroup


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class Tied(nn.Module):
    """An embedding shared with the output decoder (weight tying)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 10)
        self.dec.weight = self.emb.weight

    def forward(self, tokens):
        return self.dec(torch.tanh(self.mid(self.emb(tokens))))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.num_batches_tracked.fill_(11)
    return net


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"p:{k}": v.detach().clone() for k, v in model.named_parameters(remove_duplicate=False)}
    state.update({f"b:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return state


def assert_bit_exact(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key].dtype == before[key].dtype
        # torch.equal, and also the raw bits (torch.equal says -0.0 == 0.0)
        assert torch.equal(after[key], before[key]), key
        if after[key].is_floating_point():
            assert torch.equal(after[key].contiguous().view(torch.uint8), before[key].contiguous().view(torch.uint8)), key


def dense_of(model: nn.Module, corruption: Corruption) -> dict[str, torch.Tensor]:
    """The dense delta, built here by hand from the (indices, values) description."""
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for name, values in corruption.values.items():
        idx = corruption.indices[name]
        if idx is None:
            out[name] = values
        else:
            d = torch.zeros(params[name].numel(), dtype=params[name].dtype)
            d[idx] = values
            out[name] = d.reshape(params[name].shape)
    return out


def corruptions(model: nn.Module):
    gen = torch.Generator().manual_seed(1)
    group = select(model, ["conv", "bn", "fc.weight"])
    yield "sparse-random", random_corruption(model, Constraint(p=2, eps=0.3, n=100), group, generator=gen)
    yield "dense-random", random_corruption(model, Constraint(p=math.inf, eps=0.01), group, generator=gen)
    grad = {name: torch.randn(p.shape, generator=gen) for name, p in model.named_parameters()}
    yield "sparse-gradient", gradient_corruption(grad, Constraint(p=1.5, eps=0.2, n=7))
    yield "dense-gradient", gradient_corruption(grad, Constraint(p=2, eps=0.2))
    yield "dict", {"fc.bias": torch.tensor([0.5, -0.25, 1.0]), "bn.weight": torch.full((4,), 1e-3)}


CASES = [name for name, _ in corruptions(make_net())]


def get_case(model, case):
    return dict(corruptions(model))[case]


@pytest.mark.parametrize("case", CASES)
def test_inside_block_parameters_equal_w_plus_a(case):
    net = make_net()
    corruption = get_case(net, case)
    before = snapshot(net)
    as_corruption = corruption if isinstance(corruption, Corruption) else Corruption.from_deltas(corruption)
    deltas = dense_of(net, as_corruption)
    with corrupted(net, corruption) as inside:
        assert inside is net
        for name, param in net.named_parameters():
            expected = before[f"p:{name}"] + deltas[name] if name in deltas else before[f"p:{name}"]
            assert torch.equal(param.detach(), expected), name
        changed = [name for name in deltas if not torch.equal(dict(net.named_parameters())[name], before[f"p:{name}"])]
        assert changed
    assert_bit_exact(net, before)


@pytest.mark.parametrize("case", CASES)
def test_restored_after_exception(case):
    net = make_net()
    corruption = get_case(net, case)
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        with corrupted(net, corruption):
            net.train()
            net(torch.randn(8, 2, 5, 5))  # updates BN running stats in train mode
            raise RuntimeError("boom")
    net.eval()
    assert_bit_exact(net, before)


@pytest.mark.parametrize("case", CASES)
def test_restored_after_keyboard_interrupt(case):
    net = make_net()
    corruption = get_case(net, case)
    before = snapshot(net)
    with pytest.raises(KeyboardInterrupt):
        with corrupted(net, corruption):
            net.train()
            net(torch.randn(8, 2, 5, 5))
            raise KeyboardInterrupt
    assert_bit_exact(net, before)


def test_running_stats_unchanged_in_train_mode():
    net = make_net()
    net.train()
    before = snapshot(net)
    with corrupted(net, get_case(net, "sparse-random")):
        for _ in range(3):
            net(torch.randn(8, 2, 5, 5))
        # the forward passes did move the statistics inside the block ...
        assert not torch.equal(net.bn.running_mean, before["b:bn.running_mean"])
    # ... and they are back, bit for bit, afterwards
    assert_bit_exact(net, before)
    assert net.training


def test_nested_and_repeated_blocks_restore():
    net = make_net()
    before = snapshot(net)
    a = get_case(net, "sparse-random")
    b = get_case(net, "dense-gradient")
    for _ in range(5):
        with corrupted(net, a):
            with corrupted(net, b):
                pass
    assert_bit_exact(net, before)


def test_output_changes_inside_and_matches_a_manual_copy():
    net = make_net().eval()
    corruption = get_case(net, "sparse-gradient")
    x = torch.randn(4, 2, 5, 5)
    manual = make_net().eval()
    with torch.no_grad():
        for name, delta in dense_of(net, corruption).items():
            dict(manual.named_parameters())[name].add_(delta)
        with corrupted(net, corruption):
            inside = net(x)
        assert torch.equal(inside, manual(x))
        assert not torch.equal(inside, net(x))


def test_non_contiguous_parameter_sparse():
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(5, 3).T)  # non-contiguous storage
    assert not model.w.is_contiguous()
    before = snapshot(model)
    idx = torch.tensor([0, 4, 13])
    values = torch.tensor([1.0, -2.0, 3.0])
    c = Corruption(ParameterGroup("w", ("w",)), None, "custom", {"w": idx}, {"w": values})
    with corrupted(model, c):
        expected = before["p:w"].reshape(-1).clone()
        expected[idx] += values
        assert torch.equal(model.w.detach().reshape(-1), expected)
    assert_bit_exact(model, before)
    assert not model.w.is_contiguous()


def test_plain_dict_of_dense_deltas():
    net = make_net()
    before = snapshot(net)
    delta = torch.randn(3)
    with corrupted(net, {"fc.bias": delta}):
        assert torch.equal(net.fc.bias.detach(), before["p:fc.bias"] + delta)
        assert torch.equal(net.fc.weight.detach(), before["p:fc.weight"])
    assert_bit_exact(net, before)


# --------------------------------------------------------------------------------------
# validation happens before anything changes
# --------------------------------------------------------------------------------------


def _bad_corruptions(net):
    good = {"fc.bias": torch.ones(3)}  # listed first: an eager implementation would apply it
    yield "unknown", {**good, "fc.nope": torch.ones(3)}, ValueError, "fc.nope"
    yield "shape", {**good, "conv.bias": torch.ones(5)}, ValueError, r"conv\.bias.*\(5,\).*\(4,\)"
    yield "nan", {**good, "bn.bias": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, ValueError, r"bn\.bias.*NaN"
    yield "inf", {**good, "bn.bias": torch.tensor([0.0, float("inf"), 0.0, 0.0])}, ValueError, r"bn\.bias.*Inf"
    group = ParameterGroup("g", ("fc.bias", "conv.weight"))
    yield (
        "index",
        Corruption(
            group,
            None,
            "custom",
            {"fc.bias": None, "conv.weight": torch.tensor([0, 72])},
            {"fc.bias": torch.ones(3), "conv.weight": torch.ones(2)},
        ),
        ValueError,
        r"conv\.weight.*outside",
    )
    yield "not-a-tensor", {"fc.bias": [1.0, 2.0, 3.0]}, TypeError, "fc.bias"


BAD = [name for name, *_ in _bad_corruptions(make_net())]


@pytest.mark.parametrize("case", BAD)
def test_validation_errors_before_any_change(case):
    net = make_net()
    before = snapshot(net)
    _, corruption, error, message = next(c for c in _bad_corruptions(net) if c[0] == case)
    entered = False
    with pytest.raises(error, match=message):
        with corrupted(net, corruption):
            entered = True
    assert not entered
    assert_bit_exact(net, before)


def test_tied_parameter_given_twice_is_rejected_before_any_change():
    model = Tied()
    before = snapshot(model)
    delta = torch.full((10, 4), 0.1)
    with pytest.raises(ValueError, match=r"(emb\.weight.*dec\.weight|dec\.weight.*emb\.weight)"):
        with corrupted(model, {"mid.bias": torch.ones(4), "emb.weight": delta, "dec.weight": delta}):
            pass
    assert_bit_exact(model, before)


def test_tied_weights_count_once_and_apply_through_either_name():
    model = Tied()
    group = select(model)
    assert group.names == ("emb.weight", "mid.weight", "mid.bias", "dec.bias")
    assert group.numel(model) == 40 + 16 + 4 + 10
    before = snapshot(model)
    delta = torch.full((10, 4), 0.5)
    for name in ("emb.weight", "dec.weight"):
        with corrupted(model, {name: delta}):
            assert torch.equal(model.emb.weight.detach(), before["p:emb.weight"] + delta)
            assert model.dec.weight is model.emb.weight
        assert_bit_exact(model, before)
    # a random corruption of the whole group touches the shared tensor once
    c = random_corruption(model, Constraint(p=2, eps=1.0), generator=torch.Generator().manual_seed(0))
    assert set(c.values) == set(group.names)
    with corrupted(model, c):
        assert torch.equal(model.emb.weight.detach(), before["p:emb.weight"] + c.values["emb.weight"])
    assert_bit_exact(model, before)


def test_wrong_corruption_type():
    with pytest.raises(TypeError, match="list"):
        with corrupted(make_net(), [torch.ones(3)]):
            pass
