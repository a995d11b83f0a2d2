"""indicator() against the same measurements done by hand with the core functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from paramcorrupt import (
    Constraint,
    ZeroVectorWarning,
    accuracy,
    classification_loss,
    corrupted,
    dataset_gradient,
    evaluate,
    gradient_corruption,
    indicator,
    random_corruption,
    select,
)

INF = math.inf


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def loader(count: int, seed: int, batch: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (count,), generator=gen)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, count, batch)]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("p, n, group", [(INF, None, None), (2, 5, "3"), (1.5, 3, "1")])
def test_indicator_equals_hand_computation(p, n, group):
    model = net()
    train, test = loader(20, 1), loader(13, 2)
    constraint = Constraint(p=p, eps=0.05, n=n)
    before = state(model)
    metrics = {"accuracy": accuracy}
    result = indicator(model, constraint, train, classification_loss, group, eval_loader=test, metrics=metrics)

    # by hand
    g = select(model, group) if group is not None else select(model)
    grad = dataset_gradient(model, train, classification_loss, g)
    a = gradient_corruption(grad, constraint, g)
    loss_before = evaluate(model, train, classification_loss)["loss"]
    eval_before = evaluate(model, test, classification_loss, metrics)
    with corrupted(model, a):
        loss_after = evaluate(model, train, classification_loss)["loss"]
        eval_after = evaluate(model, test, classification_loss, metrics)
    k = sum(p_.numel() for name, p_ in model.named_parameters() if name in g.names)
    flat_g = np.concatenate([grad[name].numpy().ravel() for name in g.names])
    top = flat_g[np.argsort(-np.abs(flat_g))[: n or k]]
    q = 1.0 if p == INF else p / (p - 1)
    first_order = 0.05 * float(np.sum(np.abs(top) ** q) ** (1 / q))

    assert result.group == g.name
    assert (result.p, result.eps, result.n, result.k) == (float(p), 0.05, n or k, k)
    assert result.G == pytest.approx(float(np.linalg.norm(flat_g)), rel=1e-10)
    assert result.first_order == pytest.approx(first_order, rel=1e-10)
    assert result.loss_before == pytest.approx(loss_before, rel=1e-12)
    assert result.loss_after == pytest.approx(loss_after, rel=1e-12)
    assert result.loss_change == pytest.approx(loss_after - loss_before, rel=1e-9, abs=1e-15)
    assert result.ratio == pytest.approx((loss_after - loss_before) / first_order, rel=1e-9)
    assert result.eval_before == pytest.approx(eval_before, rel=1e-12)
    assert result.eval_after == pytest.approx(eval_after, rel=1e-12)
    assert set(result.eval_before) == {"loss", "accuracy"}
    assert result.random is None
    assert result.as_dict()["first_order"] == result.first_order
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_metrics_on_gradient_data_without_eval_loader():
    model = net()
    train = loader(20, 1)
    result = indicator(model, Constraint(p=2, eps=0.1), train, classification_loss, metrics={"accuracy": accuracy})
    assert result.eval_before == pytest.approx(evaluate(model, train, classification_loss, {"accuracy": accuracy}))
    assert result.eval_before["loss"] == pytest.approx(result.loss_before)
    assert result.eval_after["loss"] == pytest.approx(result.loss_after)


def test_precomputed_gradient_is_used():
    model = net()
    train = loader(20, 1)
    fake = {name: torch.ones_like(p) for name, p in model.named_parameters()}
    result = indicator(model, Constraint(p=INF, eps=0.01), train, classification_loss, gradient=fake)
    k = sum(p.numel() for p in model.parameters())
    assert result.first_order == pytest.approx(0.01 * k)


def test_ratio_none_when_gradient_is_zero_on_group():
    model = net()
    model.unused = nn.Parameter(torch.randn(4, dtype=torch.float64))  # not in the forward pass
    train = loader(20, 1)
    with pytest.warns(ZeroVectorWarning):
        result = indicator(model, Constraint(p=2, eps=0.1), train, classification_loss, "unused")
    assert result.G == 0.0 and result.first_order == 0.0
    assert result.ratio is None
    assert result.loss_change == pytest.approx(0.0, abs=1e-15)
    assert not math.isnan(result.loss_after)


@pytest.mark.parametrize("p, n", [(2, None), (INF, 4)])
def test_random_stats_from_R_trials(p, n):
    model = net()
    train, test = loader(20, 1), loader(11, 3)
    constraint = Constraint(p=p, eps=0.2, n=n)
    trials = 7
    metrics = {"accuracy": accuracy}
    result = indicator(
        model,
        constraint,
        train,
        classification_loss,
        eval_loader=test,
        metrics=metrics,
        random_trials=trials,
        generator=torch.Generator().manual_seed(9),
    )
    # by hand: R draws from a generator seeded alike, each measured on the gradient's data
    gen = torch.Generator().manual_seed(9)
    base = evaluate(model, train, classification_loss)["loss"]
    changes, accs = [], []
    for _ in range(trials):
        a = random_corruption(model, constraint, generator=gen)
        with corrupted(model, a):
            changes.append(evaluate(model, train, classification_loss)["loss"] - base)
            accs.append(evaluate(model, test, classification_loss, metrics)["accuracy"])
    changes = np.array(changes)
    stats = result.random
    assert stats.trials == trials
    assert stats.mean == pytest.approx(changes.mean(), rel=1e-9)
    assert stats.std == pytest.approx(changes.std(ddof=1), rel=1e-9)
    assert stats.max == pytest.approx(changes.max(), rel=1e-9)
    for q in (5, 25, 50, 75, 95):
        assert stats.quantiles[f"q{q:02d}"] == pytest.approx(np.quantile(changes, q / 100), rel=1e-9, abs=1e-15)
        assert stats.abs_quantiles[f"q{q:02d}"] == pytest.approx(np.quantile(np.abs(changes), q / 100), rel=1e-9)
    assert stats.metric_mean["accuracy"] == pytest.approx(np.mean(accs))
    assert len(set(changes.tolist())) == trials  # really R different draws


def test_random_trials_validation():
    model = net()
    train = loader(20, 1)
    with pytest.raises(ValueError, match="Generator"):
        indicator(model, Constraint(p=2, eps=0.1), train, classification_loss, random_trials=3)
    with pytest.raises(ValueError, match="random_trials"):
        indicator(model, Constraint(p=2, eps=0.1), train, classification_loss, random_trials=-1)
    with pytest.raises(ValueError, match=r"n=1000.*k="):
        indicator(model, Constraint(p=2, eps=0.1, n=1000), train, classification_loss, "3")
