"""A second-order sweep split over 2 gloo processes gives the single process's rows: the
groups' curvature all-reduced over the shards, each row's ½ aᵀHa taken by the rank that
computes the row on the whole data."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
from torch import nn

from paramcorrupt import parallel as D
from paramcorrupt import select
from paramcorrupt.losses import classification_loss
from paramcorrupt.probe.plan import SweepConfig
from paramcorrupt.probe.second_order import SECOND_ORDER_FIELDS
from paramcorrupt.probe.sweep import sweep

START = os.environ.get(
    "PARAMCORRUPT_TEST_START",
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn",
)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _setup():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(37, 6, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (37,), generator=g),
    )
    data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 37, 8)]  # 5 batches: uneven shards
    groups = {"first": select(model, "0", name="first"), "last": select(model, "2", name="last")}
    config = SweepConfig(
        methods=("random", "gradient"),
        trials=2,
        p_values=(2, float("inf")),
        eps_values=(1e-2,),
        second_order=6,
    )
    return model, config, data, groups


def _run(model, config, data, groups):
    return sweep(model, config, data, data, classification_loss, groups=groups, progress=False)


def _worker():
    assert D.is_distributed()  # spawn joined the process group
    model, config, data, groups = _setup()
    return _run(model, config, data, groups)


def test_two_processes_equal_one():
    single = _run(*_setup())
    results = D.spawn(_worker, 2, start_method=START)
    for rows in results:
        assert [r["key"] for r in rows] == [r["key"] for r in single]
        for a, b in zip(rows, single):
            for name in SECOND_ORDER_FIELDS:
                if b[name] is None:
                    assert a[name] is None
                else:
                    assert a[name] == pytest.approx(b[name], rel=1e-9, abs=1e-15), (b["key"], name)
