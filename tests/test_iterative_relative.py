"""The iterative worst case on the relative set {||a / T||_p <= eps, ||a||_0 <= n},
T = |w| + eta (issue 24, point 3): in the set, never below the one-step closed form, equal to
a brute-force grid search on a 2-parameter quadratic, APGD's checkpoints, the fault model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from paramcorrupt import (
    BatchLoss,
    Constraint,
    ParamCorruptError,
    classification_loss,
    corrupted,
    dataset_gradient,
    evaluate,
    iterative_relative_corruption,
    relative_gradient_corruption,
    select,
)
from paramcorrupt.corruption.iterative_relative import apgd_checkpoints
from paramcorrupt.faults import get_fault
from paramcorrupt.probe import SweepConfig, sweep

INF = math.inf


def tiny(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = (
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
        .to(dtype)
        .eval()
    )
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(40, 4, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (40,), generator=gen)
    return model, [(x[:16], y[:16]), (x[16:], y[16:])]


def relative_norm(model, corruption, p, eta=0.0):
    """||a / T||_p of a corruption, recomputed from the model in float64 (a must be 0 where
    T = 0: a zero bias with eta = 0 cannot change)."""
    params = dict(model.named_parameters())
    dense = corruption.dense(model)
    ratio = []
    for n, a in dense.items():
        t = params[n].detach().double().abs() + eta
        assert torch.all(a[t == 0] == 0), n
        ratio.append(torch.where(t > 0, a.double() / t, 0.0).reshape(-1))
    return float(torch.cat(ratio).norm(p))


def loss_of(model, loader, corruption):
    with corrupted(model, corruption):
        return evaluate(model, loader, classification_loss)["loss"]


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("p", [2.0, INF])
@pytest.mark.parametrize("n", [None, 7])
@pytest.mark.parametrize("schedule", ["apgd", "constant"])
def test_in_the_set_and_never_below_the_one_step(p, n, schedule):
    model, loader = tiny()
    before = snapshot(model)
    eps, eta = 0.3, 0.01
    constraint = Constraint(p, eps, n)
    result = iterative_relative_corruption(
        model, constraint, loader, classification_loss, eta=eta, steps=8, schedule=schedule
    )
    assert relative_norm(model, result, p, eta) <= eps * (1 + 1e-6)
    assert result.info["norm"] <= eps * (1 + 1e-12)
    assert sum(int(torch.count_nonzero(v)) for v in result.dense(model).values()) <= (n or 10**9)
    one = relative_gradient_corruption(
        model, dataset_gradient(model, loader, classification_loss), constraint, eta=eta
    )
    one_loss = loss_of(model, loader, one)
    losses = result.info["losses"]
    assert len(losses) == 9 and len(result.info["step_sizes"]) == 8
    assert losses[0] == pytest.approx(one_loss, rel=1e-5)
    final = loss_of(model, loader, result)
    assert final == pytest.approx(max(losses), rel=1e-5) and final >= one_loss - 1e-6
    assert final == pytest.approx(losses[result.info["best_step"]], rel=1e-5)
    assert result.info["first_order"] == pytest.approx(one.info["first_order"], rel=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_ascent_climbs_above_the_one_step_in_float64_exactly_in_the_set():
    """On a float64 tiny model at a large eps, 20 APGD steps beat the one step, and the L_inf
    projection (clipping in a / T) is exact: ||a / T||_inf <= eps to rounding of a = T b."""
    model, loader = tiny(torch.float64)
    constraint = Constraint(INF, 0.5)
    result = iterative_relative_corruption(model, constraint, loader, classification_loss, steps=20)
    one = relative_gradient_corruption(
        model, dataset_gradient(model, loader, classification_loss), constraint
    )
    assert loss_of(model, loader, result) > loss_of(model, loader, one) * 1.01
    assert result.info["norm"] <= 0.5
    assert relative_norm(model, result, INF) <= 0.5 * (1 + 1e-15)


def test_zero_steps_is_the_one_step_closed_form():
    model, loader = tiny(torch.float64)
    constraint = Constraint(2.0, 0.1, 5)
    g = dataset_gradient(model, loader, classification_loss)
    result = iterative_relative_corruption(
        model, constraint, loader, classification_loss, steps=0, eta=0.02
    )
    one = relative_gradient_corruption(model, g, constraint, eta=0.02).dense(model)
    for name, value in result.dense(model).items():
        torch.testing.assert_close(value, one[name], rtol=1e-12, atol=1e-15)
    assert result.info["best_step"] == 0 and result.info["losses"] == [
        pytest.approx(loss_of(model, loader, result))
    ]


class Quadratic(nn.Module):
    """Two parameters; the 'loss' is a quadratic of them (computed by the loss function)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))


def quadratic_loss(c, A):
    c, A = torch.tensor(c, dtype=torch.float64), torch.tensor(A, dtype=torch.float64)

    def f(w):  # w: [..., 2]
        return w @ c + 0.5 * ((w @ A) * w).sum(-1)

    def loss_fn(model, batch):
        return BatchLoss(f(model.w), 1.0)

    return f, loss_fn


def grid_maximum(f, w0, t, eps, p):
    """The largest f(w0 + T b) over a fine grid of {||b||_p <= eps} (its boundary included)."""
    if p == INF:
        s = torch.linspace(-eps, eps, 2001, dtype=torch.float64)
        b = torch.stack(torch.meshgrid(s, s, indexing="ij"), -1).reshape(-1, 2)
    else:
        r = torch.linspace(0, eps, 401, dtype=torch.float64)
        theta = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
        rr, tt = torch.meshgrid(r, theta, indexing="ij")
        b = torch.stack([rr * torch.cos(tt), rr * torch.sin(tt)], -1).reshape(-1, 2)
    return float(f(w0 + t * b).max())


# (c, A): convex with the maximum away from the one step's point; concave with the maximum
# inside the set (the one step, on the boundary, is not it)
QUADRATICS = {
    # gradient (0.3, -0.2) at w, curvature along (1, 1): the maximum is at another corner
    "convex": ([-2.7, -1.7], [[5.0, 4.0], [4.0, 5.0]]),
    # the maximum inside the set, at b = (0.1, -0.2)
    "concave": ([5.06, -2.97], [[-4.0, 1.0], [1.0, -3.0]]),
}


@pytest.mark.parametrize("p", [2.0, INF])
@pytest.mark.parametrize("shape", sorted(QUADRATICS))
def test_two_parameter_quadratic_equals_a_brute_force_grid(p, shape):
    w0, eta, eps = [1.0, -0.5], 0.1, 0.4
    f, loss_fn = quadratic_loss(*QUADRATICS[shape])
    model = Quadratic(w0)
    t = torch.tensor(w0, dtype=torch.float64).abs() + eta
    best = grid_maximum(f, torch.tensor(w0, dtype=torch.float64), t, eps, p)
    result = iterative_relative_corruption(
        model, Constraint(p, eps), [0], loss_fn, eta=eta, steps=100
    )
    found = float(f(model.w.detach() + result.dense(model)["w"]))
    one = float(
        f(
            model.w.detach()
            + relative_gradient_corruption(
                model, dataset_gradient(model, [0], loss_fn), Constraint(p, eps), eta=eta
            ).dense(model)["w"]
        )
    )
    clean = float(f(model.w.detach()))
    assert best - one > 1e-3 * (best - clean)  # the one step is not the maximum: the test can fail
    # equal to the grid's resolution (an interior maximum falls between its points)
    assert found == pytest.approx(best, abs=1e-5 * (best - clean))
    assert result.info["norm"] <= eps * (1 + 1e-12)


def test_apgd_checkpoints_as_croce_and_hein():
    # p_j: 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, 1.05 -> ceil(p_j N), in floating
    # point as their code (p_3 is 0.5700000000000001: 58 of 100; p_4 0.7000000000000001: 15 of 20);
    # a repeated checkpoint ends the list (5 steps: 2, 3, 3)
    assert apgd_checkpoints(100) == [22, 41, 58, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
    assert apgd_checkpoints(5) == [2, 3]
    assert apgd_checkpoints(0) == []


def test_the_step_size_halves_when_the_ascent_stalls():
    """A concave quadratic whose maximum is inside the set: sign steps of a fixed length
    oscillate, so APGD halves the step at checkpoints; the constant schedule never does."""
    f, loss_fn = quadratic_loss(*QUADRATICS["concave"])
    model = Quadratic([1.0, -0.5])
    result = iterative_relative_corruption(
        model, Constraint(INF, 0.4), [0], loss_fn, eta=0.1, steps=30
    )
    sizes = result.info["step_sizes"]
    assert sizes[0] == pytest.approx(0.8) and sizes[-1] < sizes[0] / 4
    assert all(b in (a, a / 2) for a, b in zip(sizes, sizes[1:]))
    constant = iterative_relative_corruption(
        model,
        Constraint(INF, 0.4),
        [0],
        loss_fn,
        eta=0.1,
        steps=30,
        schedule="constant",
        step_size=0.05,
    )
    assert set(constant.info["step_sizes"]) == {0.05}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "steps must be an integer >= 0, got -1"),
        ({"steps": 2.0}, "steps must be an integer >= 0, got 2.0"),
        ({"step_size": 0.0}, "step_size must be a finite number > 0, got 0.0"),
        ({"step_size": math.nan}, "step_size must be a finite number > 0, got nan"),
        ({"schedule": "cosine"}, "schedule must be one of apgd, constant, got 'cosine'"),
        ({"eta": -1.0}, "eta must be a finite number >= 0, got eta=-1.0"),
    ],
)
def test_bad_input_is_one_line_and_the_model_is_unchanged(kwargs, message):
    model, loader = tiny()
    before = snapshot(model)
    with pytest.raises(ParamCorruptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        iterative_relative_corruption(
            model, Constraint(2.0, 0.1), loader, classification_loss, **kwargs
        )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_fault_model_in_a_sweep():
    model, loader = tiny()
    cls = get_fault("iterative-relative")
    assert cls.fixed == ("steps", "step_factor", "schedule")
    with pytest.raises(ParamCorruptError, match="step_factor must be a finite number > 0, got 0"):
        cls(p=2, n=None, eps=0.1, step_factor=0)
    with pytest.raises(ParamCorruptError, match="schedule must be one of apgd, constant"):
        cls(p=2, n=None, eps=0.1, schedule="x")
    config = SweepConfig(
        methods=["relative-gradient", "iterative-relative"],
        p_values=[2, INF],
        eps_values=[0.3],
        settings={"iterative-relative": {"steps": 4}},
    )
    rows = sweep(
        model,
        config,
        loader,
        loader,
        classification_loss,
        groups={"all": select(model)},
        progress=False,
    )
    by = {(r["method"], r["p"]): r for r in rows}
    for p in (2.0, INF):
        one, it = by["relative-gradient", p], by["iterative-relative", p]
        assert it["loss_change"] >= one["loss_change"] - 1e-6
        assert it["first_order"] == pytest.approx(one["first_order"], rel=1e-9)


def test_the_cli_takes_its_fixed_settings_by_fault_setting():
    """``--fault iterative-relative --fault-setting step_factor=1 --fault-setting schedule=constant``;
    its steps stay ``--steps``'s (a --fault-setting steps=... is refused, not overridden)."""
    from argparse import Namespace

    from paramcorrupt.cli.values import fault_settings

    def parsed(*settings):
        return fault_settings(
            Namespace(fault="iterative-relative", methods=None, fault_setting=list(settings))
        )

    methods, settings = parsed("step_factor=1", "schedule=constant")
    assert methods == ["iterative-relative"]
    assert settings == {"iterative-relative": {"step_factor": [1], "schedule": ["constant"]}}
    with pytest.raises(
        ParamCorruptError, match="--steps is a setting of none of --fault iterative-relative"
    ):
        parsed("steps=3")
