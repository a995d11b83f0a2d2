"""paramcorrupt.probe.landscape: the loss along a direction, against literal loops written here.

- the curve along a_hat equals w + t d applied by hand and the full-batch loss computed by
  hand (d from the full-batch gradient by hand: g / ||g||_2, sign(g), top-n);
- filter normalisation: each filter's norm equals the weight's; one-dimensional parameters
  zeroed or copied; the same as Li et al.'s loop (their ``normalize_direction``) on the same draw;
- at t = 0 every curve equals the clean loss; the 2-D slice's axes equal the 1-D curves;
- the iterative ray passes through the iterative corruption at t = eps;
- the model comes back bit for bit when the evaluation raises (KeyboardInterrupt included)
  at any point of the walk; bad input is one line before anything runs.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramcorrupt import Constraint, corrupted, evaluate, iterative_corruption
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.losses import accuracy, classification_loss
from paramcorrupt.probe.landscape import filter_normalized, landscape, linspace

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = TinyCNN().double()
    with torch.no_grad():  # running statistics that are not the defaults
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def batches(
    shape: tuple[int, ...], sizes=(5, 5, 3), seed: int = 2
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g),
        )
        for n in sizes
    ]


def full_batch_loss(model: nn.Module, data) -> float:
    """The data set's mean loss, literally: one forward over every example."""
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def unit_a_hat_by_hand(model: nn.Module, data, p: float, n: int | None) -> dict[str, torch.Tensor]:
    """a_hat of radius 1 from the full-batch gradient, written out: p = 2 top-n of g over its
    L2 norm; p = inf the sign of g on the top n."""
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    names = [name for name, _ in model.named_parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    flat = torch.cat([g.reshape(-1) for g in grads])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat.abs(), descending=True)[: n or flat.numel()]] = True
    chosen = torch.where(keep, flat, torch.zeros_like(flat))
    d = chosen / chosen.norm() if p == 2 else torch.sign(chosen)
    out, start = {}, 0
    for name, g in zip(names, grads):
        out[name] = d[start : start + g.numel()].view_as(g)
        start += g.numel()
    return out


@pytest.mark.parametrize("p, n", [(2.0, None), (math.inf, None), (2.0, 7)])
def test_the_curve_along_a_hat_equals_a_literal_loop(p, n):
    model, data = tiny_mlp(), batches((4,))
    t_values = linspace(-0.5, 0.5, 5)
    result = landscape(
        model,
        data,
        classification_loss,
        t_values=t_values,
        directions=["gradient"],
        grid_points=0,
        p=p,
        n=n,
    )
    d = unit_a_hat_by_hand(model, data, p, n)
    for t, got in zip(t_values, result.curves["gradient"]):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in moved.named_parameters():
                param.add_(t * d[name])
        assert got["loss"] == pytest.approx(full_batch_loss(moved, data), rel=1e-12, abs=1e-14)
    g_norm = sum(float(v.abs().pow(2).sum()) for v in d.values())  # unit radius: ||d||_p = 1
    assert result.info["norms"]["gradient"]["norm_p"] == pytest.approx(1.0, rel=1e-12)
    assert g_norm > 0


def li_et_al_filter_normalisation(model: nn.Module, seed: int, ignore: str) -> list[torch.Tensor]:
    """Li et al.'s net_plotter, literally: a Gaussian per parameter, then for each of >= 2
    dimensions ``for d, w in zip(direction, weights): d.mul_(w.norm() / (d.norm() + 1e-10))``,
    for the others fill 0 (ignore='biasbn') or copy w."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for w in model.parameters():
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype)
        if d.dim() <= 1:
            if ignore == "biasbn":
                d.fill_(0)
            else:
                d.copy_(w.detach())
        else:
            for d_f, w_f in zip(d, w.detach()):
                d_f.mul_(w_f.norm() / (d_f.norm() + 1e-10))
        out.append(d)
    return out


@pytest.mark.parametrize("bias_bn, ignore", [("zero", "biasbn"), ("copy", "")])
def test_filter_normalisation_each_filter_has_the_norm_of_the_weights_filter(bias_bn, ignore):
    model = tiny_cnn()
    d = filter_normalized(model, generator=torch.Generator().manual_seed(3), bias_bn=bias_bn)
    assert list(d) == [name for name, _ in model.named_parameters()]
    for (name, w), reference in zip(
        model.named_parameters(), li_et_al_filter_normalisation(model, 3, ignore)
    ):
        assert d[name].shape == w.shape
        if w.dim() >= 2:  # conv.weight: 4 filters of 2x3x3; fc.weight: 3 rows
            for i in range(w.shape[0]):
                assert float(d[name][i].norm()) == pytest.approx(
                    float(w[i].detach().norm()), rel=1e-9
                )
            assert not torch.allclose(
                d[name] / d[name].norm(), w.detach() / w.norm()
            )  # a random direction, not w
        elif bias_bn == "zero":
            assert torch.count_nonzero(d[name]) == 0
        else:
            assert torch.equal(d[name], w.detach())
        torch.testing.assert_close(d[name], reference, rtol=1e-12, atol=0)


def test_at_t_zero_every_curve_equals_the_clean_loss_and_the_grid_axes_equal_the_curves():
    model, data = tiny_cnn(), batches((2, 4, 4))
    metrics = {"accuracy": accuracy}
    t_values = linspace(-0.4, 0.4, 5)
    u_values = linspace(-1.0, 1.0, 5)
    result = landscape(
        model,
        data,
        classification_loss,
        metrics,
        t_values=t_values,
        u_values=u_values,
        grid_points=5,
        steps=2,
    )
    assert set(result.curves) == {"gradient", "iterative", "random", "filter"}
    clean = evaluate(model, data, classification_loss, metrics)
    assert result.clean == clean
    assert result.clean["loss"] == pytest.approx(full_batch_loss(model, data), rel=1e-12)
    for name, values in result.curves.items():
        steps = result.steps(name)
        assert values[steps.index(0.0)] == clean, name
        assert max(v["loss"] for v in values) > clean["loss"], name  # the curve moved away from w
    assert result.grid_t == t_values and result.grid_u == u_values
    assert result.grid[2][2] == clean
    for i in range(5):
        assert result.grid[i][2] == result.curves["gradient"][i]  # u = 0: the a_hat curve
        assert result.grid[2][i] == result.curves["filter"][i]  # t = 0: the filter-normalised curve
    assert (
        result.grid[0][0]["loss"] != result.curves["gradient"][0]["loss"]
    )  # off the axes: both directions


def test_a_grid_of_fewer_points_shares_the_curves_steps():
    """21 and 11 points over one range: every second step of the curve is on the grid, bit for bit."""
    t = linspace(-1.0, 1.0, 21)
    grid = linspace(-1.0, 1.0, 11)
    assert t[::2] == grid and t[10] == 0.0


def test_the_iterative_ray_passes_through_the_iterative_corruption():
    model, data = tiny_mlp(), batches((4,))
    eps = 0.3
    result = landscape(
        model,
        data,
        classification_loss,
        t_values=[-eps, 0.0, eps],
        directions=["iterative"],
        grid_points=0,
        steps=3,
        p=2.0,
    )
    found = iterative_corruption(model, Constraint(2.0, eps), data, classification_loss, steps=3)
    with corrupted(model, found):
        at_eps = full_batch_loss(model, data)
    assert result.curves["iterative"][2]["loss"] == pytest.approx(at_eps, rel=1e-9)
    assert result.info["iterative"]["best_step"] == found.info["best_step"]
    assert result.info["norms"]["iterative"]["norm_p"] == pytest.approx(1.0, rel=1e-9)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def assert_same(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key, value in before["state"].items():
        a, b = value, after["state"][key]
        assert a.dtype == b.dtype and torch.equal(
            a.view(torch.uint8) if a.is_floating_point() else a,
            b.view(torch.uint8) if b.is_floating_point() else b,
        ), key
    assert after["requires_grad"] == before["requires_grad"]
    assert all(x is y for x, y in zip(after["grad"], before["grad"]))
    assert after["training"] == before["training"]


class Stop(Exception):
    pass


@pytest.mark.parametrize("error", [KeyboardInterrupt, Stop])
@pytest.mark.parametrize(
    "at_call", [2, 9, 20, 40, 70]
)  # gradient, iterative ascent, clean, curves, 2-D slice
def test_the_model_comes_back_bit_for_bit_when_the_evaluation_raises_midway(error, at_call):
    model, data = tiny_cnn(), batches((2, 4, 4))
    before = snapshot(model)
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise error("stop")
        return classification_loss(model, batch)

    with pytest.raises(error):
        landscape(model, data, loss_fn, t_values=linspace(-0.5, 0.5, 3), grid_points=3, steps=2)
    assert calls["n"] == at_call
    assert_same(model, before)


def test_a_full_walk_leaves_the_model_bit_for_bit():
    model, data = tiny_cnn(), batches((2, 4, 4))
    before = snapshot(model)
    landscape(
        model, data, classification_loss, t_values=linspace(-0.5, 0.5, 3), grid_points=3, steps=1
    )
    assert_same(model, before)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"t_values": [0.5]}, "t_values needs at least 2 points"),
        ({"u_values": []}, "u_values needs at least 2 points"),
        ({"t_values": [0.0, math.nan]}, "finite"),
        ({"directions": ["sideways"]}, "unknown direction 'sideways'"),
        ({"grid_points": 1}, "grid_points must be 0"),
        ({"directions": ["gradient"], "grid_points": 3}, "include both"),
        ({"steps": -1}, "steps must be an integer >= 0"),
        ({"eps": 0.0}, "eps must be a finite number > 0"),
        ({"n": 10_000}, "exceeds the group's size"),
        ({"bias_bn": "keep"}, "bias_bn must be one of"),
        ({"p": 0.5}, "p must be a number in [1, inf]"),
    ],
)
def test_bad_input_is_one_line_before_anything_runs(options, words):
    model, data = tiny_mlp(), batches((4,))
    before = snapshot(model)
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        return classification_loss(model, batch)

    with pytest.raises(ParamCorruptError) as raised:
        landscape(model, data, loss_fn, **{"t_values": [-0.1, 0.0, 0.1], **options})
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert calls["n"] == 0
    assert_same(model, before)


@pytest.mark.parametrize(
    "low, high, points", [(1.0, -1.0, 5), (0.0, 0.0, 5), (-1.0, 1.0, 1), (-math.inf, 1.0, 3)]
)
def test_linspace_refuses_an_empty_range_and_fewer_than_two_points(low, high, points):
    with pytest.raises(ParamCorruptError):
        linspace(low, high, points)


def test_the_summary_along_a_hat_matches_the_exact_hessian_and_the_first_order_slope():
    """On the gradient's own data, at t = 1e-3 (float64): the second difference along a_hat
    equals d^T H d of the exact Hessian-vector product, and the measured rise equals
    t ||g||_2 + t^2 / 2 d^T H d; the slope is ||g||_2 of the gradient by hand."""
    from paramcorrupt import quadratic_form
    from paramcorrupt.probe.landscape_report import along_a_hat

    model, data = tiny_mlp(), batches((4,))
    t = 1e-3
    result = landscape(
        model,
        data,
        classification_loss,
        t_values=[-t, 0.0, t],
        directions=["gradient"],
        grid_points=0,
    )
    d = unit_a_hat_by_hand(model, data, 2.0, None)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    g_norm = float(torch.cat([g.reshape(-1) for g in grads]).norm())
    dhd = quadratic_form(model, data, classification_loss, d)
    found = along_a_hat(result)
    assert found["slope"] == pytest.approx(g_norm, rel=1e-12)
    assert found["second"] == pytest.approx(dhd, rel=1e-5)
    ((step, rise),) = found["rises"]
    assert step == t
    assert rise == pytest.approx(t * g_norm + 0.5 * t**2 * dhd, rel=1e-6)
