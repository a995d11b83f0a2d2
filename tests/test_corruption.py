"""Random, gradient-based and iterative corruptions, checked against references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from paramcorrupt import (
    Constraint,
    Corruption,
    classification_loss,
    corrupted,
    dataset_gradient,
    evaluate,
    gradient_corruption,
    iterative_corruption,
    random_corruption,
    select,
)

INF = math.inf


def np_norm(x: np.ndarray, p: float) -> float:
    x = np.abs(np.asarray(x, dtype=np.float64).ravel())
    return float(x.max()) if p == INF else float(np.sum(x**p) ** (1 / p))


def ref_first_order(g: dict[str, torch.Tensor], p: float, eps: float, n: int | None) -> float:
    """eps * ||top_n(g)||_q, by sorting the concatenated group in numpy."""
    flat = np.concatenate([t.double().numpy().ravel() for t in g.values()])
    n = n or flat.size
    top = flat[np.argsort(-np.abs(flat), kind="stable")[:n]]
    q = INF if p == 1 else (1.0 if p == INF else p / (p - 1))
    return eps * np_norm(top, q)


def flat_dense(model: nn.Module, c: Corruption) -> np.ndarray:
    params = dict(model.named_parameters())
    out = []
    for name in c.group.names:
        d = torch.zeros(params[name].numel(), dtype=torch.float64)
        idx = c.indices[name]
        if idx is None:
            d[:] = c.values[name].double().reshape(-1)
        else:
            d[idx] = c.values[name].double()
        out.append(d.numpy())
    return np.concatenate(out)


def small_net(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def data(count: int = 24, batch: int = 10, seed: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 4, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (count,), generator=gen)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, count, batch)]


# --------------------------------------------------------------------------------------
# random corruption
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p, n", [(2, None), (INF, 5), (1.5, 3), (1, None)])
def test_random_reproducible_from_generator(p, n):
    net = small_net()
    c = Constraint(p=p, eps=0.1, n=n)
    a = random_corruption(net, c, generator=torch.Generator().manual_seed(42))
    b = random_corruption(net, c, generator=torch.Generator().manual_seed(42))
    other = random_corruption(net, c, generator=torch.Generator().manual_seed(43))
    assert a.method == "random" and a.constraint == c
    assert np.array_equal(flat_dense(net, a), flat_dense(net, b))
    assert not np.array_equal(flat_dense(net, a), flat_dense(net, other))
    # in S
    flat = flat_dense(net, a)
    assert np_norm(flat, p) == pytest.approx(0.1, rel=1e-6)
    assert np.count_nonzero(flat) <= (n or flat.size)
    # the global RNG is not used
    torch.manual_seed(0)
    state = torch.get_rng_state()
    random_corruption(net, c, generator=torch.Generator().manual_seed(42))
    assert torch.equal(torch.get_rng_state(), state)


def test_random_requires_generator():
    with pytest.raises(TypeError, match="Generator"):
        random_corruption(small_net(), Constraint(p=2, eps=0.1), generator=None)


def test_random_p2_is_uniform_on_the_sphere():
    net = nn.Linear(3, 2).double()  # k = 8
    k, eps, trials = 8, 0.5, 4000
    gen = torch.Generator().manual_seed(2024)
    c = Constraint(p=2, eps=eps)
    draws = np.stack([flat_dense(net, random_corruption(net, c, generator=gen)) for _ in range(trials)])
    norms = np.linalg.norm(draws, axis=1)
    np.testing.assert_allclose(norms, eps, rtol=1e-12)
    # mean ~ 0: each coordinate has sd eps / sqrt(k) per draw
    se = eps / math.sqrt(k) / math.sqrt(trials)
    assert np.abs(draws.mean(axis=0)).max() < 5 * se
    # second moments ~ eps^2 / k, covariance ~ (eps^2 / k) I
    second = draws.T @ draws / trials
    np.testing.assert_allclose(np.diag(second), eps**2 / k, rtol=0.1)
    off = second - np.diag(np.diag(second))
    assert np.abs(off).max() < 0.1 * eps**2 / k
    # the projection on a fixed direction: (a.u / eps)^2 ~ Beta(1/2, (k-1)/2) (Theorem 1)
    u = np.ones(k) / math.sqrt(k)
    eta2 = (draws @ u / eps) ** 2
    assert stats.kstest(eta2, stats.beta(0.5, (k - 1) / 2).cdf).pvalue > 1e-3


def test_random_sparse_keeps_top_n_of_gaussian():
    net = small_net()
    gen = torch.Generator().manual_seed(5)
    a = random_corruption(net, Constraint(p=2, eps=1.0, n=4), generator=gen)
    assert a.is_sparse and a.nnz() == 4
    # the same draw by hand: r ~ N(0, I) parameter by parameter from the same generator
    gen = torch.Generator().manual_seed(5)
    r = np.concatenate([torch.randn(p.shape, generator=gen, dtype=p.dtype).numpy().ravel() for p in net.parameters()])
    keep = np.argsort(-np.abs(r))[:4]
    expected = np.zeros_like(r)
    expected[keep] = r[keep] / np.linalg.norm(r[keep])
    np.testing.assert_allclose(flat_dense(net, a), expected, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------
# gradient corruption
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 1.5, 2, 3, INF])
@pytest.mark.parametrize("n", [1, 7, None])
def test_gradient_corruption_first_order(p, n):
    gen = torch.Generator().manual_seed(7)
    g = {"a.weight": torch.randn(5, 4, generator=gen), "a.bias": torch.randn(5, generator=gen), "b": torch.randn(3, 2, generator=gen)}
    c = gradient_corruption(g, Constraint(p=p, eps=0.03, n=n))
    assert c.method == "gradient"
    assert c.info["first_order"] == pytest.approx(ref_first_order(g, p, 0.03, n), rel=1e-5)
    flat_g = np.concatenate([t.double().numpy().ravel() for t in g.values()])
    assert c.info["G"] == pytest.approx(np.linalg.norm(flat_g), rel=1e-6)
    # a.g equals the first-order estimate, a in S
    a = np.concatenate([
        c.values[name].double().numpy().ravel() if c.indices[name] is None
        else np.bincount(c.indices[name].numpy(), weights=c.values[name].double().numpy(), minlength=g[name].numel())
        for name in g
    ])
    assert float(a @ flat_g) == pytest.approx(c.info["first_order"], rel=1e-5)
    assert np_norm(a, p) == pytest.approx(0.03, rel=1e-5)
    assert np.count_nonzero(a) <= (n or a.size)
    assert c.norm() == pytest.approx(0.03, rel=1e-5)
    assert c.dot(g) == pytest.approx(c.info["first_order"], rel=1e-12)


def test_gradient_corruption_group_slices_gradient():
    net = small_net()
    g = dataset_gradient(net, data(), classification_loss)
    group = select(net, "3")
    c = gradient_corruption(g, Constraint(p=2, eps=0.1), group)
    assert c.group is group and set(c.values) == {"3.weight", "3.bias"}
    assert c.info["first_order"] == pytest.approx(ref_first_order({k: g[k] for k in group.names}, 2, 0.1, None), rel=1e-10)
    with pytest.raises(ValueError, match="nothere"):
        gradient_corruption(g, Constraint(p=2, eps=0.1), select(net, "3").__class__("x", ("nothere",)))


def test_corruption_helpers():
    net = small_net()
    c = random_corruption(net, Constraint(p=3, eps=0.2, n=6), generator=torch.Generator().manual_seed(3))
    flat = flat_dense(net, c)
    assert c.nnz() == np.count_nonzero(flat)
    assert c.norm(1) == pytest.approx(np.abs(flat).sum(), rel=1e-12)
    dense = c.dense(net)
    assert np.array_equal(np.concatenate([dense[n].numpy().ravel() for n in c.group.names]), flat)
    half = c.scaled(-0.5)
    assert half.eps == pytest.approx(0.1) and np.allclose(flat_dense(net, half), -0.5 * flat)
    with pytest.raises(ValueError, match="model"):
        c.dense()
    with pytest.raises(ValueError, match="at least one"):
        Corruption.from_deltas({})


# --------------------------------------------------------------------------------------
# iterative corruption
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [2, INF])
@pytest.mark.parametrize("n", [None, 5])
def test_iterative_never_below_one_step_and_in_S(p, n):
    net = small_net(dtype=torch.float32)
    loader = data(dtype=torch.float32)
    eps = 0.3
    constraint = Constraint(p=p, eps=eps, n=n)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = iterative_corruption(net, constraint, loader, classification_loss, steps=3)
    # the one-step loss, by hand
    g = dataset_gradient(net, loader, classification_loss)
    one_step = gradient_corruption(g, constraint)
    with corrupted(net, one_step):
        one_step_loss = evaluate(net, loader, classification_loss)["loss"]
    losses = result.info["losses"]
    assert len(losses) == 4
    assert losses[0] == pytest.approx(one_step_loss, rel=1e-6)
    with corrupted(net, result):
        final_loss = evaluate(net, loader, classification_loss)["loss"]
    assert final_loss >= one_step_loss - 1e-6
    assert final_loss == pytest.approx(max(losses), rel=1e-6)
    assert final_loss == pytest.approx(losses[result.info["best_step"]], rel=1e-6)
    assert result.info["first_order"] == pytest.approx(one_step.info["first_order"], rel=1e-6)
    # in S
    flat = flat_dense(net, result)
    assert np_norm(flat, p) == pytest.approx(eps, rel=1e-5)
    assert np.count_nonzero(flat) <= (n or flat.size)
    # model untouched
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_iterative_zero_steps_is_one_step():
    net = small_net()
    loader = data()
    c = Constraint(p=INF, eps=0.01, n=4)
    result = iterative_corruption(net, c, loader, classification_loss, steps=0)
    one = gradient_corruption(dataset_gradient(net, loader, classification_loss), c)
    assert np.array_equal(flat_dense(net, result), flat_dense(net, one))
    assert result.info["best_step"] == 0 and len(result.info["losses"]) == 1
    with pytest.raises(ValueError, match="steps"):
        iterative_corruption(net, c, loader, classification_loss, steps=-1)


# --------------------------------------------------------------------------------------
# Theorem 2: the loss change of the gradient corruption approaches the first-order estimate
# --------------------------------------------------------------------------------------


def full_loss(net, loader) -> float:
    with torch.no_grad():
        total = sum(float(F.cross_entropy(net(x), y, reduction="sum")) for x, y in loader)
    return total / sum(len(y) for _, y in loader)


@pytest.mark.parametrize("p, n", [(2, None), (INF, None), (INF, 10), (2, 10), (3, None)])
def test_theorem2_ratio_tends_to_one(p, n):
    net = small_net()
    loader = data()
    g = dataset_gradient(net, loader, classification_loss)
    base = full_loss(net, loader)
    ratios = {}
    for eps in (1e-3, 1e-6):
        a = gradient_corruption(g, Constraint(p=p, eps=eps, n=n))
        assert a.info["first_order"] == pytest.approx(ref_first_order(g, p, eps, n), rel=1e-10)
        with corrupted(net, a):
            change = full_loss(net, loader) - base
        ratios[eps] = change / a.info["first_order"]
    assert ratios[1e-6] == pytest.approx(1.0, abs=1e-3)
    assert abs(ratios[1e-6] - 1) <= abs(ratios[1e-3] - 1) + 1e-4
