"""The sweep's second-order columns (``probe --second-order``; issue 24, point 1) against
independent references built here: the exact Hessian of the data set loss
(``torch.autograd.functional.hessian`` of a literal full-batch loss, float64), the exact
gradient, each row's corruption rebuilt from its fault model and its seed, and Monte Carlo
means of ½ aᵀHa over random corruptions drawn by the test."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from paramcorrupt import ParamCorruptError, ParameterGroup, select
from paramcorrupt.cli import main
from paramcorrupt.constraint import Constraint, closed_form
from paramcorrupt.corruption.random import random_corruption
from paramcorrupt.faults import FaultContext, get_fault
from paramcorrupt.losses import classification_loss
from paramcorrupt.probe.plan import SweepConfig, row_seed
from paramcorrupt.probe.second_order import SECOND_ORDER_FIELDS, random_sq_norm
from paramcorrupt.probe.store import ResultsStore, read_results
from paramcorrupt.probe.sweep import sweep

pytestmark = pytest.mark.usefixtures("one_thread")

INF = math.inf
N = 11  # batches of 4, 4, 3


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (N,), generator=g
    )


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data()
    return [(x[i : i + 4], y[i : i + 4]) for i in range(0, N, 4)]


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()


def _groups(model: nn.Module) -> dict[str, ParameterGroup]:
    return {"first": select(model, "0", name="first"), "last": select(model, "2", name="last")}


def _exact(model: nn.Module, group: ParameterGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient, Hessian) of the full-batch mean cross-entropy on the group, flattened."""
    x, y = _data()
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in group.names]
    sizes = [params[n].numel() for n in group.names]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = dict(zip(group.names, (p.reshape(s) for p, s in zip(flat.split(sizes), shapes))))
        return F.cross_entropy(functional_call(model, pieces, (x,)), y)

    flat = torch.cat([params[n].detach().reshape(-1) for n in group.names]).requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(flat), flat)
    return gradient, torch.autograd.functional.hessian(loss, flat.detach())


def _flat(group: ParameterGroup, dense: dict[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat(
        [dense.get(n, torch.zeros_like(params[n])).double().reshape(-1) for n in group.names]
    )


def _unflat(group: ParameterGroup, flat: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return dict(
        zip(
            group.names,
            (
                p.reshape(params[n].shape)
                for n, p in zip(group.names, flat.split([params[n].numel() for n in group.names]))
            ),
        )
    )


def _run(model, config, store=None):
    data = _batches()
    return sweep(
        model,
        config,
        data,
        data,
        classification_loss,
        groups=_groups(model),
        store=store,
        progress=False,
    )


ALL_METHODS = ("random", "gradient", "iterative", "relative-gradient")


@pytest.mark.slow
def test_second_order_column_is_half_the_exact_quadratic_form_on_every_row():
    config = SweepConfig(
        methods=ALL_METHODS,
        trials=2,
        p_values=(INF, 2, 3),
        n_values=(None, 5),
        eps_values=(1e-3, 3e-2),
        settings={"iterative": {"steps": 2}},
        second_order=4,
    )
    assert _check_rows(config) == 2 * 3 * 2 * 2 * (2 + 3)


def test_second_order_column_on_a_few_rows():
    config = SweepConfig(
        methods=("random", "gradient"),
        trials=1,
        p_values=(INF, 3),
        n_values=(5,),
        eps_values=(3e-2,),
        second_order=2,
    )
    assert _check_rows(config) == 2 * 2 * 2


def _check_rows(config: SweepConfig) -> int:
    """Each row's second_order, predicted_ratio and lambda_max against the exact Hessian."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = _run(model, config)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left unchanged
    exact = {label: _exact(model, group) for label, group in _groups(model).items()}
    checked = 0
    for row in rows:
        group = _groups(model)[row["group"]]
        g, H = exact[row["group"]]
        setting = {"p": row["p"], "n": row["n_requested"], "eps": row["eps"]}
        if row["method"] == "iterative":
            setting["steps"] = 2
        fault = get_fault(row["method"])(**setting)
        generator = (
            torch.Generator().manual_seed(row_seed(0, row["key"])) if fault.stochastic else None
        )
        ctx = FaultContext(
            model,
            group,
            row["k"],
            _unflat(group, g, model),
            generator,
            _batches(),
            classification_loss,
        )
        a = _flat(group, fault.corrupt(ctx).dense(model), model)
        half = 0.5 * float(a @ H @ a)
        assert row["second_order"] == pytest.approx(half, rel=1e-6, abs=1e-15), row["key"]
        predicted = (float(a @ g) + half) / row["first_order"]
        assert row["predicted_ratio"] == pytest.approx(predicted, rel=1e-6), row["key"]
        if row["method"] == "gradient":  # aᵀg = eps ||h||_q: 1 + ½ âᵀHâ / (eps ||h||_q)
            assert row["predicted_ratio"] == pytest.approx(1 + half / row["first_order"], rel=1e-9)
        assert set(SECOND_ORDER_FIELDS) <= set(row)
        evals = torch.linalg.eigvalsh(H)
        assert row["lambda_max"] == pytest.approx(
            float(evals[-1]), rel=1e-6
        )  # k <= 20: Lanczos is exact
        assert (row["predicted_mean"] is None) == (row["method"] != "random")
        checked += 1
    assert checked == len(rows)
    return checked


def test_measured_ratio_follows_the_predicted_one_at_small_eps():
    """Theorem 2 to second order: ratio - 1 is ½ âᵀHâ / (eps ||h||_q) plus O(eps²)."""
    model = _model()
    config = SweepConfig(
        methods=("gradient",), p_values=(INF, 2), eps_values=(1e-4, 1e-3, 1e-2), second_order=2
    )
    rows = _run(model, config)
    for row in rows:
        deviation = row["ratio"] - 1
        assert abs(row["predicted_ratio"] - row["ratio"]) <= 0.05 * abs(deviation) + 1e-9, row[
            "key"
        ]


@pytest.mark.slow
@pytest.mark.parametrize("p,n", [(2, None), (INF, None), (INF, 3), (1, None), (3, 5), (1.5, None)])
def test_predicted_random_mean_against_monte_carlo(p, n):
    """E[½ aᵀHa] = tr(H)/k · E‖a‖₂² / 2 for the random corruption, against the mean of the
    exact ½ aᵀHa over 4,000 random corruptions drawn here."""
    model = _model()
    eps = 0.05
    config = SweepConfig(
        methods=("random",),
        trials=1,
        p_values=(p,),
        n_values=(n,),
        eps_values=(eps,),
        second_order=400,
    )
    row = next(r for r in _run(model, config) if r["group"] == "first")
    group = _groups(model)["first"]
    _, H = _exact(model, group)
    k = H.shape[0]
    assert row["trace_per_k"] == pytest.approx(
        float(H.trace()) / k, abs=3.5 * row["trace_per_k_stderr"]
    )
    generator = torch.Generator().manual_seed(123)
    draws = []
    for _ in range(4000):
        a = _flat(
            group,
            random_corruption(model, Constraint(p, eps, n), group, generator=generator).dense(
                model
            ),
            model,
        )
        draws.append(0.5 * float(a @ H @ a))
    sample = torch.tensor(draws, dtype=torch.float64)
    mc, mc_se = float(sample.mean()), float(sample.std()) / math.sqrt(len(draws))
    assert abs(row["predicted_mean"] - mc) <= 3 * math.hypot(mc_se, row["predicted_mean_stderr"]), (
        row["predicted_mean"],
        mc,
        mc_se,
    )
    assert row["predicted_mean_stderr"] > 0


@pytest.mark.parametrize(
    "p,n,k", [(3.0, 5, 40), (1.5, 40, 40), (4.0, 1, 10), (2.0, 7, 30), (INF, 7, 30), (1.0, 7, 30)]
)
def test_random_sq_norm_against_the_closed_form_on_gaussian_draws(p, n, k):
    eps = 0.3
    value, se = random_sq_norm(p, n, k, eps, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(9)
    exact = p in (1.0, 2.0, INF) or n == 1
    draws = 20 if exact else 1500
    norms = [
        float(
            closed_form(torch.randn(k, generator=g, dtype=torch.float64), Constraint(p, eps, n))
            .pow(2)
            .sum()
        )
        for _ in range(draws)
    ]
    sample = torch.tensor(norms)
    ref, ref_se = float(sample.mean()), float(sample.std()) / math.sqrt(len(norms))
    if exact:
        assert se == 0.0 and value == pytest.approx(ref, rel=1e-6)
    else:
        assert abs(value - ref) <= 3.5 * math.hypot(se, ref_se) and se > 0


def test_results_file_holds_and_checks_the_columns(tmp_path):
    model = _model()
    config = SweepConfig(
        methods=("random", "gradient"), trials=2, eps_values=(1e-2,), second_order=3
    )
    path = tmp_path / "so.jsonl"
    rows = _run(model, config, ResultsStore(path))
    header, stored = read_results(path)
    assert header["config"]["second_order"] == 3
    assert [r["second_order"] for r in stored] == pytest.approx([r["second_order"] for r in rows])
    assert _run(model, config, ResultsStore(path)) == stored  # resumed: nothing recomputed
    assert "second_order" not in SweepConfig().as_dict()  # earlier sweep_ids unchanged
    lines = path.read_text().splitlines()
    broken = lines[1].replace('"lambda_max": ', '"lambda_max": "x", "was": ')
    path.write_text("\n".join([lines[0], broken, *lines[2:]]) + "\n")
    with pytest.raises(ParamCorruptError, match="field 'lambda_max' is 'x'"):
        _run(model, config, ResultsStore(path))


class _Once(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (1 - x.tanh() ** 2)


class _NoDouble(torch.autograd.Function):
    """As cuDNN's RNN: its backward refuses to build a graph (double backward)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError("double backwards is not supported for this function")
        (x,) = ctx.saved_tensors
        return grad * (1 - x.tanh() ** 2)


class _Act(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn.apply(x)


@pytest.mark.parametrize("fn", [_Once, _NoDouble])
def test_a_module_without_double_backward_is_named(fn):
    model = _model()
    model[1] = _Act(fn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = SweepConfig(
        methods=("gradient",), eps_values=(1e-2,), groups=("first",), second_order=2
    )
    with pytest.raises(
        ParamCorruptError, match=r"the module '1' \(_Act\) has no double backward"
    ) as info:
        _run(model, config)
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_bad_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    cases = {
        (
            "--second-order",
            "--fault",
            "bitflip",
            "--ber",
            "1e-3",
        ): "second_order needs an L_p method",
        ("--second-order", "--trace-samples", "0"): "--trace-samples must be >= 2",
        ("--second-order", "--trace-samples", "1"): "--trace-samples must be >= 2",
        ("--trace-samples", "10"): "--trace-samples 10 goes with --second-order",
    }
    for argv, expected in cases.items():
        code = main(["probe", "--epochs", "1", "--quiet", "--out", str(out), *argv])
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and expected in err, (argv, err)
        assert not out.exists()
    for bad in (0, 1, -3, True, 2.5):
        with pytest.raises((ParamCorruptError, TypeError), match="second_order"):
            SweepConfig(second_order=bad)


@pytest.mark.slow
def test_probe_second_order_on_a_user_model(tmp_path, capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "user_model.py"
    out = tmp_path / "so.jsonl"
    argv = [
        "probe",
        "--model",
        f"{example}:make_model",
        "--data",
        f"{example}:make_data",
        "--by",
        "type",
        "--methods",
        "random,gradient",
        "--trials",
        "2",
        "--eps",
        "1e-2",
        "--p",
        "2",
        "--second-order",
        "--trace-samples",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    header, rows = read_results(out)
    assert header["config"]["second_order"] == 4 and rows
    for row in rows:
        assert math.isfinite(row["second_order"]) and math.isfinite(row["lambda_max"])
        assert (row["predicted_mean"] is not None) == (row["method"] == "random")
