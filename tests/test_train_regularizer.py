"""The regulariser L_a = L + lambda ||g||_q (Eq. 16): exact and finite-difference forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramcorrupt.train import (
    CorruptionResistant,
    RegularizedLoss,
    finite_difference_gradient,
    gradient_norm,
    regularized_loss,
)


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (12,), generator=g)


def objective(model, x, y, lam, p, n=None):
    """L + lam ||top_n(g)||_q as a plain number, for finite differences."""
    loss = F.cross_entropy(model(x), y)
    return float(regularized_loss(loss, model.parameters(), lam, p, n).detach())


@pytest.mark.parametrize("p", [2.0, 3.0, 1.5, math.inf], ids=["p2", "p3", "p1.5", "pinf"])
@pytest.mark.parametrize("n", [None, 6], ids=["all", "top6"])
def test_exact_gradient_matches_finite_differences_of_the_objective(p, n):
    """Central differences of F(w) = L(w) + lam ||top_n(dL/dw)||_q, coordinate by coordinate."""
    model = tiny()
    x, y = batch()
    lam = 0.3
    loss = F.cross_entropy(model(x), y)
    regularized_loss(loss, model.parameters(), lam, p, n).backward()
    exact = torch.cat([w.grad.reshape(-1) for w in model.parameters()])
    numeric = []
    step = 1e-6
    with torch.no_grad():
        for w in model.parameters():
            flat = w.view(-1)
            for i in range(flat.numel()):
                original = flat[i].item()
                flat[i] = original + step
                with torch.enable_grad():
                    up = objective(model, x, y, lam, p, n)
                flat[i] = original - step
                with torch.enable_grad():
                    down = objective(model, x, y, lam, p, n)
                flat[i] = original
                numeric.append((up - down) / (2 * step))
    torch.testing.assert_close(exact, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_gradient_norm_is_the_dual_norm_of_the_gradient():
    model = tiny()
    x, y = batch()
    loss = F.cross_entropy(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)])
    for p, q in ((2.0, 2.0), (math.inf, 1.0), (1.0, math.inf), (3.0, 1.5)):
        got = float(gradient_norm(loss, model.parameters(), p, create_graph=False))
        assert math.isclose(got, float(torch.linalg.vector_norm(g, q)), rel_tol=1e-12)
    top = g.abs().sort(descending=True).values[:5]
    got = float(gradient_norm(loss, model.parameters(), 2.0, n=5, create_graph=False))
    assert math.isclose(got, float(top.norm()), rel_tol=1e-12)


@pytest.mark.parametrize("p", [2.0, math.inf], ids=["p2", "pinf"])
def test_finite_difference_form_approaches_the_exact_one(p):
    model = tiny()
    x, y = batch()
    lam = 0.1
    params = list(model.parameters())
    regularized_loss(F.cross_entropy(model(x), y), params, lam, p).backward()
    exact = torch.cat([w.grad.reshape(-1) for w in params])
    for w in params:
        w.grad = None
    before = [w.detach().clone() for w in params]

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    errors = []
    for h in (1e-1, 1e-2, 1e-3, 1e-4):
        fd = torch.cat([g.reshape(-1) for g in finite_difference_gradient(closure, params, lam, p, h=h)])
        errors.append(float((fd - exact).norm() / exact.norm()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3, errors
    assert all(torch.equal(w, b) for w, b in zip(params, before))  # back at w, bit-exactly
    assert all(w.grad is None for w in params)  # .grad as it was


def test_training_step_of_the_finite_difference_form_is_the_regularised_gradient():
    """from_regularizer(lam, h) with SGD(lr=1) moves w by the finite-difference gradient."""
    model, reference = tiny(), tiny()
    x, y = batch()
    lam, h = 0.01, 0.05
    opt = CorruptionResistant.from_regularizer(model.parameters(), torch.optim.SGD, lam=lam, h=h, lr=1.0)

    def closure_model():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def closure_reference():
        loss = F.cross_entropy(reference(x), y)
        loss.backward()
        return loss

    fd = finite_difference_gradient(closure_reference, list(reference.parameters()), lam, h=h)
    before = [w.detach().clone() for w in model.parameters()]
    opt.step(closure_model)
    for w, b, g in zip(model.parameters(), before, fd):
        torch.testing.assert_close(w.detach(), b - g, rtol=1e-12, atol=1e-14)


def test_lam_zero_is_the_plain_loss_and_bad_input_raises():
    model = tiny()
    x, y = batch()
    loss = F.cross_entropy(model(x), y)
    assert regularized_loss(loss, model.parameters(), 0.0) is loss
    with pytest.raises(ValueError, match="lam"):
        RegularizedLoss(lam=-1.0)
    with pytest.raises(ValueError, match="p must"):
        regularized_loss(loss, model.parameters(), 0.1, p=0.5)
    with pytest.raises(ValueError, match="h must"):
        finite_difference_gradient(lambda: loss, list(model.parameters()), 0.1, h=0.0)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter"):
        gradient_norm(loss, frozen.parameters())
