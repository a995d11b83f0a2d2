"""Relative (multiplicative) corruption: S = {||a / T||_p = eps, ||a||_0 <= n}, T = |w| + eta,
in closed form by a = T b; and CorruptionResistant(relative=True), which is ASAM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramcorrupt import (
    Constraint,
    classification_loss,
    dual_norm,
    relative_gradient_corruption,
    relative_random_corruption,
    select,
)
from paramcorrupt.probe import SweepConfig, sweep
from paramcorrupt.train import CorruptionResistant

INF = math.inf


def model_and_gradient(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3).double()
    g = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    return model, g


def rel_norm(a, model, p, eta=0.0):
    params = dict(model.named_parameters())
    dense = a.dense(model)
    ratio = torch.cat([(dense[n] / (params[n].detach().abs() + eta)).reshape(-1) for n in dense])
    return float(ratio.norm(p))


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0, INF])
@pytest.mark.parametrize("n", [None, 4])
def test_the_closed_form_invariants(p, n):
    model, g = model_and_gradient()
    eps, eta = 0.05, 0.01
    a = relative_gradient_corruption(model, g, Constraint(p, eps, n), eta=eta)
    assert rel_norm(a, model, p, eta) == pytest.approx(eps, rel=1e-9)
    assert a.nnz() <= (n or 15)
    t = {name: prm.detach().abs() + eta for name, prm in model.named_parameters()}
    expected = eps * dual_norm({k: g[k] * t[k] for k in g}, Constraint(p, 1.0, n))
    assert a.info["first_order"] == pytest.approx(expected, rel=1e-9)
    assert a.dot(g) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("p", [2.0, INF])
def test_no_point_of_the_relative_set_does_better(p):
    """Brute force: 20,000 random points of {||a / T||_p = eps} never beat the closed form."""
    model, g = model_and_gradient(1)
    eps = 0.1
    a = relative_gradient_corruption(model, g, Constraint(p, eps))
    best = a.dot(g)
    t = torch.cat([prm.detach().abs().reshape(-1) for prm in model.parameters()])
    flat_g = torch.cat([g[n].reshape(-1) for n, _ in model.named_parameters()])
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(20_000, t.numel(), generator=gen, dtype=torch.float64)
    b = eps * b / b.norm(p, dim=1, keepdim=True)
    assert float(((b * t) @ flat_g).max()) <= best * (1 + 1e-12)


def test_random_relative_corruption_lies_on_the_relative_sphere():
    model, _ = model_and_gradient()
    a = relative_random_corruption(model, Constraint(2.0, 0.2, 6), eta=0.5, generator=torch.Generator().manual_seed(0))
    assert rel_norm(a, model, 2.0, 0.5) == pytest.approx(0.2, rel=1e-9)
    assert a.nnz() == 6 and a.info == {"relative": True, "eta": 0.5}
    with pytest.raises(ValueError, match="eta must be a finite number >= 0, got eta=-1"):
        relative_random_corruption(model, Constraint(2.0, 0.2), eta=-1, generator=torch.Generator())


class LiteralASAM:
    """ASAM (Kwon et al., 2021) as SamsungLabs/ASAM writes it: T_w = |w| + eta on weights
    (biases unscaled), e = rho T^2 g / ||T g||_2 over all parameters, base step at w."""

    def __init__(self, model, base, rho, eta, **kwargs):
        self.model, self.rho, self.eta = model, rho, eta
        self.base = base(model.parameters(), **kwargs)

    def step(self, closure):
        self.base.zero_grad()
        loss = closure()
        scaled = {}
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                t = p.abs() + self.eta if "weight" in name else torch.ones_like(p)
                scaled[name] = (t, p.grad * t)
            norm = torch.sqrt(sum((tg**2).sum() for _, tg in scaled.values()))
            moves = []
            for name, p in self.model.named_parameters():
                t, tg = scaled[name]
                e = self.rho * t * tg / norm
                p.add_(e)
                moves.append((p, e))
        self.base.zero_grad()
        closure()
        with torch.no_grad():
            for p, e in moves:
                p.sub_(e)
        self.base.step()
        return loss


@pytest.mark.slow
def test_relative_alpha_one_p_two_is_asam():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))

    def net():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()

    asam_model, ours_model = net(), net()
    asam = LiteralASAM(asam_model, torch.optim.SGD, rho=0.5, eta=0.01, lr=0.1, momentum=0.9)
    weights = [p for n, p in ours_model.named_parameters() if "weight" in n]
    biases = [p for n, p in ours_model.named_parameters() if "bias" in n]
    ours = CorruptionResistant(
        [{"params": weights}, {"params": biases, "corruption_relative": False}],
        torch.optim.SGD, eps=0.5, p=2, alpha=1.0, relative=True, eta=0.01, lr=0.1, momentum=0.9,
    )

    def closure_of(model, opt=None):
        def closure():
            if opt is not None:
                opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return closure

    for _ in range(10):
        asam.step(closure_of(asam_model))
        ours.step(closure_of(ours_model, ours))
    worst = max(float((a - b).detach().abs().max()) for a, b in zip(ours_model.parameters(), asam_model.parameters()))
    assert worst <= 1e-10
    plain = net()
    sam = CorruptionResistant(plain.parameters(), torch.optim.SGD, eps=0.5, alpha=1.0, lr=0.1, momentum=0.9)
    for _ in range(10):
        sam.step(closure_of(plain, sam))
    assert max(float((a - b).detach().abs().max()) for a, b in zip(plain.parameters(), asam_model.parameters())) > 1e-4


def test_relative_faults_in_a_sweep():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen))]
    config = SweepConfig(methods=["relative-random", "relative-gradient", "gradient"], trials=2, p_values=[2], eps_values=[0.1])
    rows = sweep(model, config, data, data, classification_loss, groups={"all": select(model)}, progress=False)
    assert [r["method"] for r in rows] == ["relative-random", "relative-random", "relative-gradient", "gradient"]
    rel, grad = rows[2], rows[3]
    assert rel["first_order"] != grad["first_order"] and rel["first_order"] > 0
    assert rel["loss_change"] > rows[0]["loss_change"]
