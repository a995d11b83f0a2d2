"""Activation reuse (probe.reuse) against full evaluation with the core ``evaluate``.

The reference is :class:`~paramcorrupt.probe.sweep.FullEvaluator` (full passes through the
model's own ``forward``), run under the same applied corruption; the reusing evaluator must
agree for every group of a residual network, skip connections included, and fall back to
full passes, with identical results, wherever it cannot serve.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcorrupt import BatchLoss, accuracy, classification_loss, corrupted, select, sequence_loss
from paramcorrupt.losses import token_accuracy
from paramcorrupt.probe.reuse import ReusingEvaluator, split_at
from paramcorrupt.probe.sweep import Evaluator, FullEvaluator, SweepConfig, sweep
from paramcorrupt.tasks.digits import Batches, DigitsResNet, digits_data

REL = 1e-6


def assert_same_results(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].keys() == want[key].keys(), key
        for name, value in want[key].items():
            assert got[key][name] == pytest.approx(value, rel=REL, abs=1e-9), (key, name)


def random_delta(model: nn.Module, names, scale: float, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: scale * torch.randn(params[n].shape, generator=generator) for n in names}


# one intra-op thread: on a shared 2-core machine, two threads contend and crawl
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits(one_thread):
    """An untrained digits ResNet with non-trivial batch-norm statistics, and its data."""
    torch.manual_seed(0)
    model = DigitsResNet(width=8)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
    model.eval()
    (x_train, y_train), (x_test, y_test) = digits_data(0)
    eval_loader = Batches(x_test, y_test, 128)  # 3 batches, the last one smaller
    gradient_loader = Batches(x_train[:400], y_train[:400], 128)  # 4 batches
    return model, eval_loader, gradient_loader


def digits_groups(model: nn.Module) -> dict[str, object]:
    groups = {}
    for name, _ in model.named_parameters():  # every parameter tensor on its own
        groups[name] = select(model, "re:" + re.escape(name), name=name)
    for block in ("conv1", "bn1", "layer1", "layer2", "fc", "layer2.shortcut", "layer1.conv2", "layer2.bn1"):
        groups["block:" + block] = select(model, block, name=block)
    for kind in ("conv", "norm", "linear"):
        groups["type:" + kind] = select(model, types=kind, name=kind)
    groups["all"] = select(model)
    return groups


@pytest.mark.slow
def test_every_group_of_a_residual_network_matches_full_evaluation(digits):
    model, eval_loader, gradient_loader = digits
    metrics = {"accuracy": accuracy}
    reusing = ReusingEvaluator(model, eval_loader, gradient_loader, classification_loss, metrics)
    full = FullEvaluator(model, eval_loader, gradient_loader, classification_loss, metrics)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    served = []
    for i, (label, group) in enumerate(digits_groups(model).items()):
        reused_before = reusing.stats["reused"]
        for trial in range(2):  # the first call builds the cache, the second reuses it
            with corrupted(model, random_delta(model, group.names, 0.3, seed=10 * i + trial)):
                got = reusing.evaluate(group)
                want = full.evaluate(group)
            assert_same_results(got, want)
        if reusing.cut(group) is not None:
            served.append(label)
            assert reusing.stats["reused"] > reused_before, label
    # everything downstream of the stem's first conv is served from a cache
    assert "conv1.weight" not in served and "all" not in served and "type:conv" not in served
    expected = {n for n, _ in model.named_parameters()} - {"conv1.weight"}
    assert expected <= set(served)
    assert {"block:layer1", "block:layer2", "block:fc", "block:layer2.shortcut", "type:norm", "type:linear"} <= set(served)
    assert reusing.stats["full_batches"] == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert "forward" not in model.__dict__


def test_cut_inside_a_skip_connection_caches_the_other_branch(digits):
    model, _, _ = digits
    traced = torch.fx.symbolic_trace(model)
    # corrupting the projection shortcut: the main branch (up to bn2) is computed once
    cut = split_at(traced, [model.layer2.shortcut[0].weight])
    assert set(cut.boundary) == {"relu_2", "layer2_bn2"}
    assert "layer2_conv1" not in cut.dependent and "layer2_shortcut_0" in cut.dependent
    # corrupting the main branch: the block's input and the shortcut's output are cached
    cut = split_at(traced, [model.layer2.conv2.weight])
    assert set(cut.boundary) == {"relu_3", "layer2_shortcut_1"}
    # an identity skip: layer1's input crosses the cut beside the branch
    cut = split_at(traced, [model.layer1.bn2.weight])
    assert set(cut.boundary) == {"relu", "layer1_conv2"}
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(cut.suffix(*cut.prefix(x)), model(x), rtol=0, atol=0)


class Untraceable(nn.Module):
    """Data-dependent control flow: symbolic tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.body(x.flatten(1)))
        if h.sum() > 0:
            h = h * 2
        return self.head(h)


def test_untraceable_model_falls_back_to_identical_full_passes(digits, caplog):
    _, eval_loader, gradient_loader = digits
    torch.manual_seed(0)
    model = Untraceable().eval()
    reusing = ReusingEvaluator(model, eval_loader, gradient_loader, classification_loss)
    full = FullEvaluator(model, eval_loader, gradient_loader, classification_loss)
    group = select(model, "head")
    with caplog.at_level(logging.INFO, logger="paramcorrupt.probe.reuse"):
        for seed in range(2):
            with corrupted(model, random_delta(model, group.names, 0.5, seed)):
                assert reusing.evaluate(group) == full.evaluate(group)
    assert "cannot be traced" in reusing.why_not(group)
    assert "cannot be traced" in caplog.text
    assert reusing.cut(group) is None and reusing.stats["reused"] == 0


class BakedScale(nn.Module):
    """Reads a parameter's value at trace time: the traced graph holds a constant instead."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 10)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: Tensor) -> Tensor:
        # through _parameters, fx sees the real tensor, not a proxy: .item() bakes its value in
        return self.body(x.flatten(1)) * self._parameters["scale"].item()


def test_a_parameter_baked_into_the_graph_falls_back_to_full_passes(digits):
    _, eval_loader, _ = digits
    torch.manual_seed(0)
    model = BakedScale().eval()
    reusing = ReusingEvaluator(model, eval_loader, None, classification_loss)
    full = FullEvaluator(model, eval_loader, None, classification_loss)
    group = select(model, "scale")
    for seed in range(2):
        with corrupted(model, random_delta(model, group.names, 0.5, seed)):
            assert reusing.evaluate(group) == full.evaluate(group)
    assert "read by no node of the traced graph" in reusing.why_not(group)
    # the other parameter is read by the graph: served
    body = select(model, "body")
    with corrupted(model, random_delta(model, body.names, 0.5, 0)):
        assert_same_results(reusing.evaluate(body), full.evaluate(body))


@pytest.mark.parametrize("budget", [0, 1, "one batch"])
def test_memory_budget_bounds_the_cache_and_keeps_results(digits, budget):
    model, eval_loader, gradient_loader = digits
    group = select(model, "layer2")
    if budget == "one batch":
        probe = ReusingEvaluator(model, eval_loader, None, classification_loss)
        probe.evaluate(group)
        budget = max(e.nbytes for e in probe._caches[probe.cut(group).dependent].entries.values())
    reusing = ReusingEvaluator(model, eval_loader, gradient_loader, classification_loss, memory_budget=budget)
    full = FullEvaluator(model, eval_loader, gradient_loader, classification_loss)
    for seed in range(2):
        with corrupted(model, random_delta(model, group.names, 0.3, seed)):
            assert reusing.evaluate(group) == full.evaluate(group)
        assert reusing.cached_bytes <= budget
    if budget == 0:
        assert reusing.why_not(group) == "the memory budget is 0"
        assert reusing.stats["reused"] == 0 and reusing.stats["full_evaluations"] == 4
    elif budget == 1:
        assert reusing.stats["reused"] == 0 and reusing.stats["full_batches"] > 0
    else:
        assert reusing.stats["reused"] == 1 and reusing.stats["full_batches"] > 0


def test_a_new_group_evicts_the_least_recently_used_cache(digits):
    model, eval_loader, _ = digits
    first, second = select(model, "fc"), select(model, "layer2")
    size = {}
    for group in (first, second):
        probe = ReusingEvaluator(model, eval_loader, None, classification_loss)
        probe.evaluate(group)
        size[group.name] = probe.cached_bytes
    reusing = ReusingEvaluator(model, eval_loader, None, classification_loss, memory_budget=max(size.values()))
    full = FullEvaluator(model, eval_loader, None, classification_loss)
    for group in (first, second, first):
        with corrupted(model, random_delta(model, group.names, 0.3, 0)):
            assert reusing.evaluate(group) == full.evaluate(group)
        assert 0 < reusing.cached_bytes <= max(size.values())


def test_upstream_changes_invalidate_the_cache(digits):
    model, eval_loader, gradient_loader = digits
    reusing = ReusingEvaluator(model, eval_loader, gradient_loader, classification_loss)
    full = FullEvaluator(model, eval_loader, gradient_loader, classification_loss)
    group = select(model, "fc")
    reusing.evaluate(group)
    # a parameter upstream of the cut changes in place (a corruption of another group)
    with corrupted(model, random_delta(model, ["layer1.conv1.weight"], 0.5, 3)):
        assert_same_results(reusing.evaluate(group), full.evaluate(group))
    assert_same_results(reusing.evaluate(group), full.evaluate(group))
    # a buffer upstream of the cut changes value
    saved = model.bn1.running_mean.clone()
    try:
        with torch.no_grad():
            model.bn1.running_mean.add_(0.5)
        assert_same_results(reusing.evaluate(group), full.evaluate(group))
    finally:
        with torch.no_grad():
            model.bn1.running_mean.copy_(saved)
    assert_same_results(reusing.evaluate(group), full.evaluate(group))


def test_a_shuffled_loader_gets_full_passes_with_identical_results(digits, caplog):
    model, _, _ = digits
    (x_train, y_train), _ = digits_data(0)
    shuffled = Batches(x_train[:300], y_train[:300], 100, shuffle=True, seed=0)
    reusing = ReusingEvaluator(model, shuffled, None, classification_loss)
    group = select(model, "layer2")
    with caplog.at_level(logging.WARNING, logger="paramcorrupt.probe.reuse"):
        for seed in range(3):
            with corrupted(model, random_delta(model, group.names, 0.3, seed)):
                got = reusing.evaluate(group)
                # the same order the evaluator saw: rewind the generator by replaying its state
                want = FullEvaluator(model, _replay(shuffled, seed), None, classification_loss).evaluate(group)
            assert_same_results(got, want)
    assert reusing.stats["full_batches"] > 0
    assert "differ from those its activations were cached for" in caplog.text


def _replay(loader: Batches, calls: int) -> list:
    """The batches ``loader`` yielded on its call number ``calls`` (0-based)."""
    fresh = Batches(loader.x, loader.y, loader.batch_size, shuffle=True, seed=0)
    for _ in range(calls):
        list(fresh)
    return list(fresh)


def test_a_loss_fn_that_does_not_call_the_model_is_served_by_full_passes(digits, caplog):
    model, eval_loader, _ = digits

    def by_parts(model: nn.Module, batch) -> BatchLoss:
        # calls submodules itself: nothing to serve from the top-level forward
        x, y = batch
        out = F.relu(model.bn1(model.conv1(x)))
        out = F.adaptive_avg_pool2d(model.layer2(model.layer1(out)), 1).flatten(1)
        logits = model.fc(out)
        return BatchLoss(F.cross_entropy(logits, y), float(len(y)), logits)

    reusing = ReusingEvaluator(model, eval_loader, None, by_parts)
    group = select(model, "fc")
    with caplog.at_level(logging.INFO, logger="paramcorrupt.probe.reuse"):
        for seed in range(2):
            with corrupted(model, random_delta(model, group.names, 0.3, seed)):
                assert reusing.evaluate(group) == FullEvaluator(model, eval_loader, None, by_parts).evaluate(group)
    assert "never calls model" in reusing.why_not(group)
    assert reusing.stats["full_evaluations"] == 1


def test_an_error_in_loss_fn_leaves_the_model_untouched(digits):
    model, eval_loader, _ = digits

    def failing(model: nn.Module, batch) -> BatchLoss:
        model(batch[0])
        raise RuntimeError("boom")

    reusing = ReusingEvaluator(model, eval_loader, None, failing)
    with pytest.raises(RuntimeError, match="boom"):
        reusing.evaluate(select(model, "fc"))
    assert "forward" not in model.__dict__
    assert not model.training


class TinyLM(nn.Module):
    """embedding -> LSTM -> linear, returning (logits, hidden) like a language model."""

    def __init__(self, vocab: int = 20, dim: int = 12) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.decoder = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, hidden = self.lstm(self.embedding(tokens))
        return self.decoder(self.norm(out) + out), hidden


class TinySeq2Seq(nn.Module):
    """Keyword inputs (source, prefix) and a dict output, as sequence_loss's mapping batches."""

    def __init__(self, vocab: int = 20, dim: int = 12) -> None:
        super().__init__()
        self.source = nn.Embedding(vocab, dim)
        self.target = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, source: Tensor, prefix: Tensor) -> dict[str, Tensor]:
        context = self.source(source).mean(dim=1, keepdim=True)
        h = torch.tanh(self.mix(self.target(prefix) + context))
        return {"logits": self.out(h)}


def test_sequence_loss_models_are_served(caplog):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    lm = TinyLM().eval()
    tokens = [torch.randint(0, 20, (6, 9), generator=generator) for _ in range(3)]
    lm_data = [(t[:, :-1], torch.where(t[:, 1:] == 0, -100, t[:, 1:])) for t in tokens]
    seq = TinySeq2Seq().eval()
    seq_data = [
        {"source": torch.randint(0, 20, (4, 7), generator=generator), "prefix": t[:4, :-1], "target": t[:4, 1:]}
        for t in tokens
    ]
    loss_fn = sequence_loss()
    for model, data, labels in ((lm, lm_data, ("decoder", "norm", "lstm")), (seq, seq_data, ("out", "mix", "target"))):
        metrics = {"token_accuracy": token_accuracy()}
        reusing = ReusingEvaluator(model, data, data, loss_fn, metrics)
        full = FullEvaluator(model, data, data, loss_fn, metrics)
        for label in labels:
            group = select(model, label)
            for seed in range(2):
                with corrupted(model, random_delta(model, group.names, 0.3, seed)):
                    assert_same_results(reusing.evaluate(group), full.evaluate(group))
            assert reusing.why_not(group) is None, label
        assert reusing.stats["reused"] > 0
    # the LSTM group: its input (the embedding) is the boundary
    assert ReusingEvaluator(lm, lm_data, None, loss_fn).cut(select(lm, "lstm")).boundary == ("embedding",)


@pytest.mark.slow
def test_sweep_rows_equal_with_and_without_reuse(digits):
    model, eval_loader, gradient_loader = digits
    groups = {"layer1": select(model, "layer1"), "layer2": select(model, "layer2"), "fc": select(model, "fc")}
    config = SweepConfig(
        methods=("random", "gradient", "iterative"), trials=2, eps_values=(0.05, 0.2), settings={"iterative": {"steps": 2}}, task="test"
    )
    metrics = {"accuracy": accuracy}
    args = (model, config, gradient_loader, eval_loader, classification_loss, metrics)
    plain = sweep(*args, groups=groups, progress=False)
    evaluator = ReusingEvaluator(model, eval_loader, gradient_loader, classification_loss, metrics)
    assert isinstance(evaluator, Evaluator)
    reused = sweep(*args, groups=groups, progress=False, evaluator=evaluator)
    assert evaluator.stats["reused"] > 0
    assert len(plain) == len(reused) == 3 * 2 * 4
    for a, b in zip(plain, reused):
        a, b = dict(a), dict(b)
        a.pop("seconds"), b.pop("seconds")
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=REL, abs=1e-9), key
            else:
                assert a[key] == b[key], key


def test_bad_arguments_are_rejected(digits):
    model, eval_loader, _ = digits
    with pytest.raises(ValueError, match="memory_budget"):
        ReusingEvaluator(model, eval_loader, None, classification_loss, memory_budget=-1)
    with pytest.raises(TypeError, match="nn.Module"):
        ReusingEvaluator(lambda x: x, eval_loader, None, classification_loss)
    reusing = ReusingEvaluator(model, eval_loader, None, classification_loss)
    with pytest.raises(TypeError, match="ParameterGroup"):
        reusing.evaluate("fc")
