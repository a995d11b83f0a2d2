"""sweep() against the same computations done one by one with the core API; grouping helpers."""

from __future__ import annotations

import hashlib
import math
import warnings

import pytest
import torch
from torch import nn

from paramcorrupt import (
    Constraint,
    ParameterGroup,
    ZeroVectorWarning,
    accuracy,
    classification_loss,
    corrupted,
    dataset_gradient,
    dual_norm,
    evaluate,
    gradient_corruption,
    iterative_corruption,
    lp_norm,
    random_corruption,
)
from paramcorrupt.groups import (
    groups_by_module,
    groups_by_position,
    groups_by_type,
    groups_from_mapping,
    make_groups,
)
from paramcorrupt.probe import (
    ROW_FIELDS,
    FullEvaluator,
    ResultsStore,
    SweepConfig,
    read_results,
    sweep,
    sweep_id,
)
from paramcorrupt.tasks.digits import DigitsResNet

INF = math.inf


# tiny models: one intra-op thread is faster, and immune to a busy machine's other cores
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyNet(nn.Module):
    """conv + batch norm + linear on 1x4x4 inputs, with one unused parameter (G = 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean(dim=(2, 3)))


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def loader(count: int, seed: int, batch: int = 16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (count,), generator=gen)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, count, batch)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_bit_identical(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == saved.keys()
    for name, value in saved.items():
        assert torch.equal(now[name], value), name


def reference_seed(seed: int, key: str) -> int:
    # the documented derivation, written out independently
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:16], 16) & (2**63 - 1)


GROUPS = ("conv", "norm", "fc")


def groups_of(model):
    return {
        "conv": ParameterGroup("conv", ("conv.weight", "conv.bias")),
        "norm": ParameterGroup("norm", ("bn.weight", "bn.bias")),
        "fc": ParameterGroup("fc", ("fc.weight", "fc.bias")),
    }


def test_rows_equal_core_computations_one_by_one():
    model = tiny_net()
    train, test = loader(40, 1), loader(24, 2)
    metrics = {"accuracy": accuracy}
    groups = groups_of(model)
    config = SweepConfig(
        methods=("random", "gradient", "iterative"),
        trials=2,
        p_values=("inf", 2),
        n_values=(None, 5, 10_000),
        eps_values=(1e-3, 0.3),
        seed=7,
        settings={"iterative": {"steps": 1}},
        task="tiny",
        grouping="manual",
    )
    before = snapshot(model)
    rows = sweep(model, config, train, test, classification_loss, metrics, groups=groups, progress=False)
    assert_bit_identical(model, before)

    per_setting = 2 + 1 + 1  # random trials + gradient + iterative
    assert len(rows) == len(GROUPS) * 2 * 3 * 2 * per_setting
    assert len({r["key"] for r in rows}) == len(rows)
    sid = sweep_id(config, groups)
    clean_eval = evaluate(model, test, classification_loss, metrics)
    clean_grad = evaluate(model, train, classification_loss)["loss"]

    gradients = {label: dataset_gradient(model, train, classification_loss, g) for label, g in groups.items()}
    for row in rows:
        assert tuple(row) == ROW_FIELDS
        group = groups[row["group"]]
        k = group.numel(model)
        requested = row["n_requested"]
        n = k if requested is None or requested > k else requested
        g = gradients[row["group"]]
        constraint = Constraint(row["p"], row["eps"], n)
        if row["method"] == "random":
            generator = torch.Generator().manual_seed(reference_seed(7, row["key"]))
            corruption = random_corruption(model, constraint, group, generator=generator)
        elif row["method"] == "gradient":
            corruption = gradient_corruption(g, constraint, group)
            assert row["first_order"] == pytest.approx(corruption.info["first_order"], rel=1e-9)
        else:
            corruption = iterative_corruption(model, constraint, train, classification_loss, group, steps=1)
        with corrupted(model, corruption):
            after = evaluate(model, test, classification_loss, metrics)
            grad_after = evaluate(model, train, classification_loss)["loss"]

        assert row["sweep_id"] == sid
        assert row["key"] == (
            f"{row['group']}|{row['method']}|p={'inf' if row['p'] == INF else repr(row['p'])}"
            f"|n={'all' if requested is None else requested}|eps={row['eps']!r}|trial={row['trial']}"
        )
        assert (row["task"], row["grouping"], row["metric"]) == ("tiny", "manual", "accuracy")
        assert (row["k"], row["n"]) == (k, n)
        assert row["loss_before"] == pytest.approx(clean_eval["loss"], rel=1e-12)
        assert row["metric_before"] == pytest.approx(clean_eval["accuracy"], rel=1e-12)
        assert row["grad_loss_before"] == pytest.approx(clean_grad, rel=1e-12)
        assert row["loss_after"] == pytest.approx(after["loss"], rel=1e-9, abs=1e-12)
        assert row["metric_after"] == pytest.approx(after["accuracy"], rel=1e-12)
        assert row["grad_loss_after"] == pytest.approx(grad_after, rel=1e-9, abs=1e-12)
        assert row["loss_change"] == pytest.approx(after["loss"] - clean_eval["loss"], rel=1e-6, abs=1e-12)
        first_order = row["eps"] * dual_norm(g, Constraint(row["p"], 1.0, n))
        assert row["first_order"] == pytest.approx(first_order, rel=1e-9)
        assert row["G"] == pytest.approx(lp_norm(g, 2), rel=1e-9)
        assert row["ratio"] == pytest.approx((grad_after - clean_grad) / first_order, rel=1e-6, abs=1e-12)
        assert row["seconds"] >= 0
    # n larger than a group's k is clamped, and says so
    clamped = [r for r in rows if r["n_requested"] == 10_000]
    assert clamped and all(r["n"] == r["k"] for r in clamped)


def test_dataset_gradient_once_and_clean_values_once():
    model = tiny_net()
    train, test = loader(32, 1), loader(16, 2)
    calls = {"grad": 0, "nograd": 0}

    def counting_loss(model, batch):
        calls["grad" if torch.is_grad_enabled() else "nograd"] += 1
        return classification_loss(model, batch)

    config = SweepConfig(methods=("random", "gradient"), trials=2, p_values=(INF, 2, 1), n_values=(None, 3), eps_values=(1e-3, 1e-2))
    rows = sweep(model, config, train, test, counting_loss, groups=groups_of(model), progress=False)
    # one gradient pass over the gradient data for the whole sweep (every group, p, n, eps)
    assert calls["grad"] == len(train)
    # the clean model once, then one evaluation (both data sets) per row
    assert calls["nograd"] == (1 + len(rows)) * (len(train) + len(test))
    assert {r["metric"] for r in rows} == {"loss"}


def test_random_rows_depend_on_their_key_only():
    model = tiny_net()
    train, test = loader(16, 1), loader(16, 2)
    groups = groups_of(model)
    small = SweepConfig(methods=("random",), trials=2, eps_values=(1e-2,), seed=3)
    large = SweepConfig(methods=("random", "gradient"), trials=3, eps_values=(1e-3, 1e-2), seed=3)
    a = {r["key"]: r for r in sweep(model, small, train, test, classification_loss, groups=groups, progress=False)}
    b = {r["key"]: r for r in sweep(model, large, train, test, classification_loss, groups=groups, progress=False)}
    assert a.keys() < b.keys()
    for key, row in a.items():
        assert row["loss_after"] == b[key]["loss_after"]
    other_seed = SweepConfig(methods=("random",), trials=2, eps_values=(1e-2,), seed=4)
    c = {r["key"]: r for r in sweep(model, other_seed, train, test, classification_loss, groups=groups, progress=False)}
    assert any(c[key]["loss_after"] != row["loss_after"] for key, row in a.items())


def test_evaluator_hook_called_with_the_group_under_corruption():
    model = tiny_net()
    train, test = loader(16, 1), loader(16, 2)
    groups = groups_of(model)
    clean = snapshot(model)
    full = FullEvaluator(model, test, train, classification_loss, {"accuracy": accuracy})
    seen = []

    class Spy:
        def evaluate(self, group):
            changed = {n for n, v in model.state_dict().items() if not torch.equal(v, clean[n])}
            seen.append((group.name, changed))
            return full.evaluate(group)

    config = SweepConfig(methods=("gradient",), eps_values=(1e-2,))
    rows = sweep(model, config, train, test, classification_loss, {"accuracy": accuracy}, groups=groups, progress=False, evaluator=Spy())
    plain = sweep(model, config, train, test, classification_loss, {"accuracy": accuracy}, groups=groups, progress=False)
    assert [name for name, _ in seen] == list(GROUPS)
    for name, changed in seen:
        assert changed == set(groups[name].names)
    assert [r["loss_after"] for r in rows] == [r["loss_after"] for r in plain]


def test_evaluator_answer_is_checked():
    model = tiny_net()
    data = loader(16, 1)

    class Flat:
        def evaluate(self, group):
            return {"loss": 1.0}

    with pytest.raises(ValueError, match="evaluator must return"):
        sweep(model, SweepConfig(methods=("gradient",)), data, data, classification_loss, groups=groups_of(model), progress=False, evaluator=Flat())


def test_zero_gradient_group_has_no_ratio():
    model = tiny_net()
    train, test = loader(16, 1), loader(16, 2)
    groups = {"unused": ParameterGroup("unused", ("unused.weight", "unused.bias"))}
    config = SweepConfig(methods=("random", "gradient"), trials=1, eps_values=(1e-2,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroVectorWarning)
        rows = sweep(model, config, train, test, classification_loss, groups=groups, progress=False)
    assert {r["G"] for r in rows} == {0.0}
    assert {r["first_order"] for r in rows} == {0.0}
    assert {r["ratio"] for r in rows} == {None}


def test_without_gradient_data_measurements():
    model = tiny_net()
    train, test = loader(16, 1), loader(16, 2)
    calls = {"n": 0}

    def counting_loss(model, batch):
        calls["n"] += 1
        return classification_loss(model, batch)

    config = SweepConfig(methods=("gradient",), eps_values=(1e-2, 1e-1), measure_gradient_data=False)
    rows = sweep(model, config, train, test, counting_loss, groups=groups_of(model), progress=False)
    assert all(r["grad_loss_before"] is None and r["grad_loss_after"] is None and r["ratio"] is None for r in rows)
    assert calls["n"] == len(train) + (1 + len(rows)) * len(test)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("where", ["metric", "evaluator"])
def test_keyboard_interrupt_leaves_model_bit_identical(tmp_path, where):
    model = tiny_net()
    model.conv.weight.requires_grad_(False)  # flags must come back as they were too
    train, test = loader(24, 1), loader(16, 2)
    groups = {**groups_of(model), "conv": ParameterGroup("conv", ("conv.weight", "conv.bias"))}
    before = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    calls = {"n": 0}

    def metric(output, batch):
        calls["n"] += 1
        if where == "metric" and calls["n"] == 9:
            raise KeyboardInterrupt
        return accuracy(output, batch)

    full = FullEvaluator(model, test, train, classification_loss, {"accuracy": metric})

    class Interrupting:
        def evaluate(self, group):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return full.evaluate(group)

    config = SweepConfig(methods=("random", "gradient"), trials=2, eps_values=(1e-2, 1e-1), task="tiny")
    path = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sweep(
            model, config, train, test, classification_loss, {"accuracy": metric}, groups=groups,
            store=ResultsStore(path), progress=False, evaluator=Interrupting() if where == "evaluator" else None,
        )
    assert_bit_identical(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())

    # the rows finished before the interrupt are on disk, and resuming completes the sweep
    _, partial = read_results(path)
    assert 0 < len(partial) < 18
    calls["n"] = -10**9  # no more interrupts
    resumed = sweep(model, config, train, test, classification_loss, {"accuracy": metric}, groups=groups, store=ResultsStore(path), progress=False)
    fresh = sweep(model, config, train, test, classification_loss, {"accuracy": metric}, groups=groups, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(fresh)
    assert strip(read_results(path)[1]) == strip(fresh)
    assert_bit_identical(model, before)


def test_resuming_with_other_weights_is_refused(tmp_path):
    model = tiny_net()
    train, test = loader(16, 1), loader(16, 2)
    config = SweepConfig(methods=("random", "gradient"), trials=1, eps_values=(1e-2, 1e-1))
    path = tmp_path / "r.jsonl"

    def stop_after_two_rows(output, batch):
        stop_after_two_rows.calls += 1
        if stop_after_two_rows.calls == 4:  # the clean pass, two rows, then the third row
            raise Interrupt
        return accuracy(output, batch)

    stop_after_two_rows.calls = 0
    with pytest.raises(Interrupt):
        sweep(model, config, train, test, classification_loss, {"accuracy": stop_after_two_rows}, groups=groups_of(model), store=ResultsStore(path), progress=False)
    content = path.read_bytes()
    with torch.no_grad():
        model.fc.weight.mul_(1.1)
    with pytest.raises(ValueError, match="not the same weights"):
        sweep(model, config, train, test, classification_loss, {"accuracy": accuracy}, groups=groups_of(model), store=ResultsStore(path), progress=False)
    assert path.read_bytes() == content


def test_config_validation():
    with pytest.raises(ValueError, match="unknown method"):
        SweepConfig(methods=("gradient", "adversarial"))
    with pytest.raises(ValueError, match="p must be"):
        SweepConfig(p_values=(0.5,))
    with pytest.raises(ValueError, match="p must be"):
        SweepConfig(p_values=("two",))
    with pytest.raises(ValueError, match="eps must be"):
        SweepConfig(eps_values=(0.0,))
    with pytest.raises(ValueError, match="n must be"):
        SweepConfig(n_values=(0,))
    with pytest.raises(ValueError, match="trials"):
        SweepConfig(methods=("random",), trials=0)
    config = SweepConfig(p_values=["inf", 2, 2.0], n_values=["all", 10], eps_values=[1e-3])
    assert config.p_values == (INF, 2.0) and config.n_values == (None, 10)
    assert SweepConfig.from_dict(config.as_dict()) == config
    model = tiny_net()
    data = loader(8, 1)
    with pytest.raises(ValueError, match="unknown group 'attention'"):
        sweep(model, SweepConfig(groups=("attention",)), data, data, classification_loss, groups=groups_of(model), progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        sweep(model, SweepConfig(metric="bleu"), data, data, classification_loss, groups=groups_of(model), progress=False)


def test_sweep_id_is_stable_and_sensitive():
    model = tiny_net()
    groups = groups_of(model)
    base = SweepConfig(eps_values=(1e-3,), task="tiny")
    assert sweep_id(base, groups) == sweep_id(SweepConfig(eps_values=[1e-3], task="tiny"), dict(groups))
    assert len({
        sweep_id(base, groups),
        sweep_id(SweepConfig(eps_values=(1e-2,), task="tiny"), groups),
        sweep_id(SweepConfig(eps_values=(1e-3,), task="other"), groups),
        sweep_id(base, {**groups, "fc": ParameterGroup("fc", ("fc.weight",))}),
        sweep_id(SweepConfig(eps_values=(1e-3,), task="tiny", groups=("fc",)), groups),
    }) == 5


# -- grouping helpers ------------------------------------------------------------------------------


def assert_partition(model: nn.Module, groups: dict[str, ParameterGroup]) -> None:
    names = [n for g in groups.values() for n in g.names]
    assert len(names) == len(set(names)), "a parameter is in two groups"
    assert set(names) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(len(g) > 0 and g.name == label for label, g in groups.items())


def test_grouping_helpers_on_the_digits_model():
    model = DigitsResNet()
    by_type = groups_by_type(model)
    assert list(by_type) == ["conv", "linear", "norm"]
    assert by_type["norm"].names[:2] == ("bn1.weight", "bn1.bias")
    by_position = groups_by_position(model)
    assert list(by_position) == ["conv1", "bn1", "layer1", "layer2", "fc"]
    assert list(groups_by_position(model, depth=1)) == list(by_position)
    assert list(groups_by_position(model, depth=2))[2:4] == ["layer1.conv1", "layer1.bn1"]
    assert list(groups_by_position(model, pattern=r"layer\d")) == ["layer1", "layer2"]
    by_module = groups_by_module(model)
    assert "layer2.shortcut.1" in by_module and by_module["layer2.shortcut.1"].names == (
        "layer2.shortcut.1.weight",
        "layer2.shortcut.1.bias",
    )
    for groups in (by_type, by_position, groups_by_position(model, depth=2), by_module):
        assert_partition(model, groups)
    for by in ("type", "position", "module"):
        assert make_groups(model, by).keys() == {"type": by_type, "position": by_position, "module": by_module}[by].keys()
    with pytest.raises(ValueError, match="unknown grouping"):
        make_groups(model, "colour")
    with pytest.raises(ValueError, match="matches"):
        groups_by_position(model, pattern=r"decoder")


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=3, norm=nn.LayerNorm(8), enable_nested_tensor=False)
        self.rnn = nn.LSTM(8, 8, num_layers=2)
        self.head = nn.Linear(8, 20)
        self.head.weight = self.embed.weight  # tied: counted once


def test_grouping_helpers_on_a_transformer():
    model = TinyTransformer()
    by_type = groups_by_type(model)
    assert list(by_type) == ["linear", "norm", "embedding", "attention", "recurrent"]
    assert "encoder.layers.0.self_attn.in_proj_weight" in by_type["attention"].names
    assert "encoder.layers.0.self_attn.out_proj.weight" in by_type["attention"].names
    assert "encoder.layers.1.linear1.weight" in by_type["linear"].names
    assert by_type["embedding"].names == ("embed.weight",)
    assert list(groups_by_type(model, types=["norm", "attention"])) == ["norm", "attention"]
    by_position = groups_by_position(model)
    assert list(by_position) == [
        "embed", "encoder.layers.0", "encoder.layers.1", "encoder.layers.2", "encoder.norm", "rnn.l0", "rnn.l1", "head",
    ]
    assert by_position["rnn.l1"].names == ("rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.bias_ih_l1", "rnn.bias_hh_l1")
    assert by_position["head"].names == ("head.bias",)
    sides = groups_by_position(model, pattern=r"(encoder\.layers\.\d+)")
    assert list(sides) == ["encoder.layers.0", "encoder.layers.1", "encoder.layers.2"]
    by_module = groups_by_module(model)
    assert by_module["encoder.layers.2.self_attn"].names == (
        "encoder.layers.2.self_attn.in_proj_weight",
        "encoder.layers.2.self_attn.in_proj_bias",
    )
    for groups in (by_type, by_position, by_module):
        assert_partition(model, groups)


def test_groups_from_mapping_and_frozen_parameters():
    model = DigitsResNet()
    groups = groups_from_mapping(model, {"stem": ["conv1", "bn1"], "biases": "*.bias", "deep": "re:layer2\\..*"})
    assert groups["stem"].names == ("conv1.weight", "bn1.weight", "bn1.bias")
    assert all(n.endswith(".bias") for n in groups["biases"].names)
    assert groups["deep"].names[0] == "layer2.conv1.weight"
    with pytest.raises(ValueError, match="'nothing' is empty"):
        groups_from_mapping(model, {"nothing": "decoder.*"})
    with pytest.raises(ValueError):
        groups_from_mapping(model, {})
    model.fc.requires_grad_(False)
    assert "fc" not in groups_by_position(model)
    assert "fc" in groups_by_position(model, include_frozen=True)
    assert "linear" not in groups_by_type(model)
