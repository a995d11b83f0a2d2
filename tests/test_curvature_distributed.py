"""paramcorrupt.curvature with 2 gloo processes equals one process (issue 24).

Each rank sums W_b H_b v over its own shard of the batches; the float64 sums and the
weights are all-reduced (``parallel.comm.all_reduce_sums``), so every rank runs the same
Lanczos recurrence and the same Hutchinson probes (drawn from the same seeded generator).
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
from torch import nn

import paramcorrupt
from paramcorrupt import parallel as D
from paramcorrupt.curvature import hessian_vector_product
from paramcorrupt.losses import classification_loss

N = 37  # batches of 5: 8 batches, the last of 2; shards of 4 and 4 batches

START = os.environ.get(
    "PARAMCORRUPT_TEST_START",
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn",
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]


def _batches(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (N,), generator=g)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, N, size)]


def _model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        model.train()(torch.randn(64, 6, dtype=torch.float64) + 0.5)
    return model.eval()


def _vector(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in model.named_parameters()}


def _settings() -> dict:
    return {"top": 2, "max_iter": 60, "tol": 1e-10, "trace_samples": 16, "seed": 3}


def _compute(batches) -> dict:
    model = _model()
    out = {"hvp": hessian_vector_product(model, batches, classification_loss, _vector(model))}
    out["curvature"] = paramcorrupt.curvature(model, batches, classification_loss, "0", **_settings())
    out["exact_trace"] = paramcorrupt.curvature(model, batches, classification_loss, "3", top=None,
                                               exact_trace=True).trace
    return out


def _worker() -> dict:
    out = _compute(D.shard(_batches(5)))
    one = D.shard(_batches(N))  # one batch: rank 1's shard is empty and adds zeros
    out["empty_shard"] = len(list(one)) == 0
    out["hvp_one"] = hessian_vector_product(_model(), one, classification_loss, _vector(_model()))
    return out


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_two_gloo_processes_equal_one_process():
    ref = _compute(_batches(5))
    results = D.spawn(_worker, 2, start_method=START)
    assert [r["empty_shard"] for r in results] == [False, True]
    for r in results:
        for key in ("hvp", "hvp_one"):
            for name, want in ref["hvp"].items():
                assert torch.allclose(r[key][name], want, rtol=1e-10, atol=1e-13), (key, name)
        got, want = r["curvature"], ref["curvature"]
        assert got.converged and want.converged
        for a, b in zip(got.eigenvalues, want.eigenvalues, strict=True):
            assert _rel(a, b) <= 1e-9
        assert _rel(got.trace, want.trace) <= 1e-9 and _rel(got.trace_stderr, want.trace_stderr) <= 1e-6
        assert _rel(r["exact_trace"], ref["exact_trace"]) <= 1e-10
    # every rank ends with the same numbers
    assert results[0]["curvature"] == results[1]["curvature"]
