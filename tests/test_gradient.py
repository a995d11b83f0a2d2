"""dataset_gradient against the full-batch autograd gradient (Algorithm 2, step 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramcorrupt import BatchLoss, classification_loss, dataset_gradient, select, sequence_loss


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(8, 3),
    ).double()
    # non-trivial running statistics
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(7)
    return model


def classification_data(count: int = 10, batch: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (count,), generator=gen)
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, count, batch)]
    return x, y, batches


def full_batch_gradient(model: nn.Module, loss_of_model) -> dict[str, torch.Tensor]:
    """The reference: one forward pass over the whole data set, in eval mode, by autograd."""
    params = dict(model.named_parameters())
    was_training = model.training
    model.eval()
    try:
        loss = loss_of_model(model)
        grads = torch.autograd.grad(loss, list(params.values()))
    finally:
        model.train(was_training)
    return dict(zip(params, grads))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"p:{k}": v.detach().clone() for k, v in model.named_parameters()}
    state.update({f"b:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return state


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("count, batch", [(10, 4), (10, 3), (7, 7), (9, 1)])
def test_equals_full_batch_gradient_with_uneven_last_batch(count, batch):
    model = mlp()
    x, y, batches = classification_data(count, batch)
    assert len(batches[-1][0]) == (count % batch or batch)
    got, loss = dataset_gradient(model, batches, classification_loss, return_loss=True)
    ref = full_batch_gradient(model, lambda m: F.cross_entropy(m(x), y))
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name].dtype == torch.float64
        assert rel_err(got[name], ref[name]) < 1e-6, name
    model.eval()
    with torch.no_grad():
        assert loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-12)


def test_naive_unweighted_average_would_differ():
    # guards the test above: with 10 examples in batches of 4 the plain mean of batch
    # gradients is not the full-batch gradient, so the weighting is really being checked
    model = mlp()
    x, y, batches = classification_data(10, 4)
    ref = full_batch_gradient(model, lambda m: F.cross_entropy(m(x), y))
    per_batch = [full_batch_gradient(model, lambda m, b=b: F.cross_entropy(m(b[0]), b[1])) for b in batches]
    naive = {name: sum(g[name] for g in per_batch) / len(per_batch) for name in ref}
    assert max(rel_err(naive[name], ref[name]) for name in ref) > 1e-3


def test_float32_model_float64_accumulation():
    model = mlp().float()
    x, y, batches = classification_data(10, 4)
    batches = [(bx.float(), by) for bx, by in batches]
    got = dataset_gradient(model, batches, classification_loss)
    model64 = mlp()  # same seed, same weights, in float64
    ref = full_batch_gradient(model64, lambda m: F.cross_entropy(m(x), y))
    for name in ref:
        assert got[name].dtype == torch.float32
        assert rel_err(got[name], ref[name]) < 1e-5, name


class TinyLM(nn.Module):
    """Embedding -> LSTM -> Linear; returns (logits, state) like real language models."""

    def __init__(self, vocab: int = 11, dim: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens):
        h, state = self.rnn(self.embed(tokens))
        return self.out(h), state


def padded_sequences(ignore_index: int, seed: int = 2):
    """Three batches of different lengths and padding; returns the batches."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for size, length, pads in [(3, 6, [0, 2, 5]), (2, 4, [1, 3]), (1, 6, [4])]:
        inputs = torch.randint(0, 11, (size, length), generator=gen)
        targets = torch.randint(0, 11, (size, length), generator=gen)
        for row, pad in enumerate(pads):
            if pad:
                targets[row, length - pad :] = ignore_index
        batches.append((inputs, targets))
    return batches


@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_sequence_loss_is_token_weighted(ignore_index):
    torch.manual_seed(3)
    model = TinyLM().double()
    batches = padded_sequences(ignore_index)
    tokens = [int((t != ignore_index).sum()) for _, t in batches]
    assert len(set(tokens)) == len(tokens)  # batches hold different numbers of tokens
    got, loss = dataset_gradient(model, batches, sequence_loss(ignore_index), return_loss=True)

    def token_mean_loss(m):
        # sum of per-token losses over every non-padding token of the data set / token count
        total = sum(
            F.cross_entropy(m(x)[0].reshape(-1, 11), t.reshape(-1), ignore_index=ignore_index, reduction="sum")
            for x, t in batches
        )
        return total / sum(tokens)

    ref = full_batch_gradient(model, token_mean_loss)
    for name in ref:
        assert rel_err(got[name], ref[name]) < 1e-6, name
    with torch.no_grad():
        assert loss == pytest.approx(float(token_mean_loss(model.eval())), rel=1e-12)


def test_sequence_loss_with_mapping_batches():
    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.out = nn.Linear(4, 7)

        def forward(self, source, shift):
            return {"logits": self.out(self.embed(source) + shift)}

    torch.manual_seed(4)
    model = Seq2Seq().double()
    gen = torch.Generator().manual_seed(5)
    batches = []
    for size in (3, 1):
        target = torch.randint(0, 7, (size, 5), generator=gen)
        target[0, -2:] = -100
        batches.append({"source": torch.randint(0, 7, (size, 5), generator=gen), "shift": 0.5, "target": target})
    got = dataset_gradient(model, batches, sequence_loss())
    tokens = sum(int((b["target"] != -100).sum()) for b in batches)

    def loss(m):
        return sum(
            F.cross_entropy(m(b["source"], b["shift"])["logits"].reshape(-1, 7), b["target"].reshape(-1), reduction="sum")
            for b in batches
        ) / tokens

    ref = full_batch_gradient(model, loss)
    for name in ref:
        assert rel_err(got[name], ref[name]) < 1e-6, name


def test_state_left_unchanged_modes_grads_running_stats():
    model = mlp()
    model.train()
    model[3].eval()  # a module whose own flag differs from its parent's
    _, _, batches = classification_data(10, 4)
    sentinel = torch.full_like(model[0].weight, 3.25)
    model[0].weight.grad = sentinel
    model[4].bias.grad = torch.ones_like(model[4].bias)
    modes = {name: m.training for name, m in model.named_modules()}
    before = snapshot(model)
    for train_mode in (False, True):
        dataset_gradient(model, batches, classification_loss, train_mode=train_mode)
        assert {name: m.training for name, m in model.named_modules()} == modes
        assert_same_state(model, before)  # parameters and BN running stats, bit for bit
        assert model[0].weight.grad is sentinel and torch.equal(sentinel, torch.full_like(sentinel, 3.25))
        assert torch.equal(model[4].bias.grad, torch.ones_like(model[4].bias))
        assert model[0].bias.grad is None and model[1].weight.grad is None


def test_frozen_parameter_in_group_keeps_requires_grad():
    model = mlp()
    model[4].weight.requires_grad_(False)
    x, y, batches = classification_data()
    group = select(model, "4", include_frozen=True)
    got = dataset_gradient(model, batches, classification_loss, group)
    assert list(got) == ["4.weight", "4.bias"]
    assert model[4].weight.requires_grad is False and model[4].bias.requires_grad is True
    model[4].weight.requires_grad_(True)
    ref = full_batch_gradient(model, lambda m: F.cross_entropy(m(x), y))
    for name in got:
        assert rel_err(got[name], ref[name]) < 1e-6


def test_dropout_off_in_eval_mode_deterministic():
    model = mlp()
    model.train()  # as left after training: dropout would be active
    x, y, batches = classification_data()
    torch.manual_seed(123)
    first = dataset_gradient(model, batches, classification_loss)
    torch.manual_seed(456)
    second = dataset_gradient(model, batches, classification_loss)
    ref = full_batch_gradient(model, lambda m: F.cross_entropy(m(x), y))  # eval mode
    for name in first:
        assert torch.equal(first[name], second[name])
        assert rel_err(first[name], ref[name]) < 1e-6
    # control: in training mode dropout (and batch statistics) change the gradient
    torch.manual_seed(123)
    trained = dataset_gradient(model, batches, classification_loss, train_mode=True)
    assert any(rel_err(trained[name], first[name]) > 1e-3 for name in first)


def test_group_restricts_keys():
    model = mlp()
    x, y, batches = classification_data()
    got = dataset_gradient(model, batches, classification_loss, "0")
    assert list(got) == ["0.weight", "0.bias"]
    ref = full_batch_gradient(model, lambda m: F.cross_entropy(m(x), y))
    assert rel_err(got["0.weight"], ref["0.weight"]) < 1e-6


def test_unused_parameter_gets_zero_gradient():
    model = mlp()
    model.unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    _, _, batches = classification_data()
    got = dataset_gradient(model, batches, classification_loss)
    assert torch.equal(got["unused"], torch.zeros(3, dtype=torch.float64))


def test_empty_loader():
    with pytest.raises(ValueError, match="no batch"):
        dataset_gradient(mlp(), [], classification_loss)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss(bad):
    model = mlp()
    _, _, batches = classification_data()

    def loss_fn(m, batch):
        out = classification_loss(m, batch)
        return BatchLoss(out.loss * bad, out.weight)

    with pytest.raises(ValueError, match=str(bad)):
        dataset_gradient(model, batches, loss_fn)


def test_state_restored_after_error_midway():
    model = mlp()
    model[4].weight.requires_grad_(False)
    _, _, batches = classification_data()
    before = snapshot(model)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        if len(calls) == 2:
            return BatchLoss(torch.tensor(float("nan"), dtype=torch.float64), 4)
        return classification_loss(m, batch)

    with pytest.raises(ValueError):
        dataset_gradient(model, batches, loss_fn, select(model, include_frozen=True), train_mode=True)
    assert_same_state(model, before)
    assert model[4].weight.requires_grad is False
    assert model.training is True and all(m.training for m in model.modules())
