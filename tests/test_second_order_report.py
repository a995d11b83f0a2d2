"""The report's Theorem 2 section (issue 24, point 2) on the rows of a second-order sweep:
its tables hold the rows' numbers, its figures are written, Spearman's rho equals scipy's,
and a report without second-order rows has no such section."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from paramcorrupt import select
from paramcorrupt.losses import classification_loss
from paramcorrupt.probe import write_report
from paramcorrupt.probe.plan import SweepConfig
from paramcorrupt.probe.report.theorem2 import spearman
from paramcorrupt.probe.store import ResultsStore
from paramcorrupt.probe.sweep import sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def _sweep(path, second_order):
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
        .double()
        .eval()
    )
    g = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(24, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (24,), generator=g),
    )
    data = [(x[:12], y[:12]), (x[12:], y[12:])]
    groups = {name: select(model, name, name=name) for name in ("0", "2", "4")}
    config = SweepConfig(
        methods=("random", "gradient"),
        trials=4,
        p_values=(2,),
        eps_values=(1e-2, 1e-1),
        grouping="position",
        second_order=second_order,
    )
    return sweep(
        model,
        config,
        data,
        data,
        classification_loss,
        groups=groups,
        store=ResultsStore(path),
        progress=False,
    )


@pytest.mark.slow
def test_theorem2_section(tmp_path):
    rows = _sweep(tmp_path / "r.jsonl", 8)
    report = write_report(tmp_path / "r.jsonl", tmp_path / "report")
    text = report.read_text()
    assert "## Theorem 2 and the second-order term" in text
    for name in ("theorem2-ratio.png", "theorem2-random-mean.png"):
        assert (tmp_path / "report" / "figures" / name).stat().st_size > 10_000
    for row in rows:
        if row["method"] == "gradient":  # the ratio table holds the row's numbers
            assert (
                f"| {row['eps']:g} | {row['ratio']:.4f} | 1 | {row['predicted_ratio']:.4f} |"
                in text
            )
    first = next(
        r for r in rows if r["method"] == "random" and r["group"] == "0" and r["eps"] == 1e-1
    )
    assert f"{first['predicted_mean']:.3e} ± {first['predicted_mean_stderr']:.3e}" in text
    assert f"| 0 | 40 | {first['lambda_max']:.3e} | {first['trace_per_k']:.3e} ± " in text
    match = re.search(
        r"Spearman ρ over 3 groups: λ_max vs ΔL ([-+0-9.]+); tr\(H\)/k vs ΔL ([-+0-9.]+)", text
    )
    assert match
    scipy_stats = pytest.importorskip("scipy.stats")
    gradient = {r["group"]: r for r in rows if r["method"] == "gradient" and r["eps"] == 1e-1}
    lam = [gradient[g]["lambda_max"] for g in ("0", "2", "4")]
    vuln = [
        gradient[g]["grad_loss_after"] - gradient[g]["grad_loss_before"] for g in ("0", "2", "4")
    ]
    assert float(match.group(1)) == pytest.approx(
        scipy_stats.spearmanr(lam, vuln).statistic, abs=0.006
    )


def test_spearman_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for size in (3, 5, 12):
        x = torch.randint(0, 4, (size,), generator=g).tolist()  # ties
        y = torch.randn(size, generator=g).tolist()
        reference = scipy_stats.spearmanr(x, y).statistic
        mine = spearman(x, y)
        assert (mine is None and math.isnan(reference)) or mine == pytest.approx(
            reference, abs=1e-12
        )
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


@pytest.mark.slow
def test_no_section_without_second_order_rows(tmp_path):
    _sweep(tmp_path / "r.jsonl", None)
    text = write_report(tmp_path / "r.jsonl", tmp_path / "report").read_text()
    assert "Theorem 2 and the second-order term" not in text
