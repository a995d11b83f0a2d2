"""torch.distributed: 2 gloo processes on CPU give the single-process numbers.

Each test launches its processes once (``paramcorrupt.parallel.spawn``: forked, or fresh
interpreters with PARAMCORRUPT_TEST_START=spawn; a free port) and runs every check of its
theme inside them, to keep the suite fast. One test runs the CLI under torchrun.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from paramcorrupt import dataset_gradient, evaluate
from paramcorrupt import parallel as D
from paramcorrupt.losses import accuracy, classification_loss

N_EXAMPLES = 37  # odd: the shards cannot be even

#: fork starts the 2 processes in milliseconds (spawn re-imports torch: seconds each); the
#: forked processes run one torch thread each (OpenMP is not fork-safe). PARAMCORRUPT_TEST_START
#: overrides it ("spawn").
START = os.environ.get(
    "PARAMCORRUPT_TEST_START",
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn",
)

#: a hung process group must fail the test, not the CI job (pytest-timeout, a test dependency)
pytestmark = pytest.mark.timeout(300)


def _spawn(fn, *args):
    return D.spawn(fn, 2, *args, start_method=START)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N_EXAMPLES, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (N_EXAMPLES,), generator=g
    )


def _model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():  # non-trivial running statistics
        model.train()(torch.randn(64, 6, dtype=torch.float64) + 0.5)
    return model.eval()


def _batches(batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data()
    return [
        (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, N_EXAMPLES, batch_size)
    ]


class F1OfClass0:
    """A metric that is not a mean over batches: F1 of class 0 from summed [tp, fp, fn]."""

    def __call__(self, logits: torch.Tensor, batch) -> tuple[list[int], int]:
        pred, y = logits.argmax(1), batch[1]
        tp = int(((pred == 0) & (y == 0)).sum())
        fp = int(((pred == 0) & (y != 0)).sum())
        fn = int(((pred != 0) & (y == 0)).sum())
        return [tp, fp, fn], len(y)

    @staticmethod
    def finalize(stats: list[float]) -> float:
        tp, fp, fn = stats
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


METRICS = {"accuracy": accuracy, "f1_class0": F1OfClass0()}


def _gradient_worker() -> dict:
    """Inside each rank: the gradient and evaluation through every sharding path."""
    x, y = _data()
    model = _model()
    metrics = METRICS
    out: dict = {"rank": D.get_rank(), "world": D.get_world_size()}
    # batch by batch: 8 batches of 5 (the last of 2) -> shards of 4 and 4 batches, 20 + 17 examples
    batches = D.shard(_batches(5))
    out["batch_shard_sizes"] = [len(b[1]) for b in batches]
    out["grad_batches"], out["loss_batches"] = dataset_gradient(
        model, batches, classification_loss, return_loss=True
    )
    out["eval_batches"] = evaluate(model, batches, classification_loss, metrics)
    # example by example: a DataLoader over a map-style data set -> ExactDistributedSampler (19 + 18)
    loader = D.shard(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))
    out["sampler"] = type(loader.sampler).__name__
    out["example_shard_size"] = sum(len(b[1]) for b in loader)
    out["grad_examples"] = dataset_gradient(model, loader, classification_loss)
    out["eval_examples"] = evaluate(model, loader, classification_loss, metrics)
    # fewer batches than ranks: rank 1's shard is empty and adds zeros
    one = D.shard(_batches(N_EXAMPLES))
    out["empty_shard"] = len(list(one)) == 0
    out["grad_one_batch"] = dataset_gradient(model, one, classification_loss)
    out["eval_one_batch"] = evaluate(model, one, classification_loss, metrics)
    # a language model carrying its hidden state across windows: sharded by columns
    out["grad_lm"] = dataset_gradient(*_lm(), distributed=True)
    # float32 parameters, accumulate_dtype=None: the reduction still runs in float64
    out["grad_float32"] = dataset_gradient(
        model.float(),
        [(a.float(), b) for a, b in batches],
        classification_loss,
        accumulate_dtype=None,
    )
    return out


def _lm(shard: bool = True):
    from paramcorrupt.models import LSTMLanguageModel
    from paramcorrupt.tasks.ptb_lm import CarriedStateLoss, WindowLoader

    torch.manual_seed(7)
    model = LSTMLanguageModel(20, 4, 4, 1).double().eval()
    tokens = torch.randint(0, 20, (203,), generator=torch.Generator().manual_seed(8))
    loader = WindowLoader(tokens, batch_size=7, bptt=5)  # 7 columns: 4 + 3
    return model, D.shard(loader) if shard else loader, CarriedStateLoss()


def _rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return (num / den) ** 0.5


@pytest.mark.slow
def test_dataset_gradient_and_evaluate_match_single_process():
    model = _model()
    metrics = METRICS
    ref_grad, ref_loss = dataset_gradient(model, _batches(5), classification_loss, return_loss=True)
    ref_eval = evaluate(model, _batches(5), classification_loss, metrics)
    ref_grad32 = dataset_gradient(
        _model().float(),
        [(a.float(), b) for a, b in _batches(5)],
        classification_loss,
        accumulate_dtype=None,
    )

    ref_lm = dataset_gradient(*_lm(shard=False))

    results = _spawn(_gradient_worker)

    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert sorted(n for r in results for n in r["batch_shard_sizes"]) == sorted(
        len(b[1]) for b in _batches(5)
    )
    assert sum(r["example_shard_size"] for r in results) == N_EXAMPLES  # none twice, none dropped
    assert [r["example_shard_size"] for r in results] == [19, 18]
    assert results[0]["sampler"] == "ExactDistributedSampler"
    assert [r["empty_shard"] for r in results] == [False, True]
    for r in results:
        for key in ("grad_batches", "grad_examples", "grad_one_batch"):
            assert r[key].keys() == ref_grad.keys()
            assert all(r[key][k].dtype == torch.float64 for k in ref_grad)
            assert _rel_err(r[key], ref_grad) < 1e-6, key
        assert _rel_err(r["grad_float32"], ref_grad32) < 1e-6
        assert _rel_err(r["grad_lm"], ref_lm) < 1e-6
        assert abs(r["loss_batches"] - ref_loss) < 1e-9 * abs(ref_loss)
        for key in ("eval_batches", "eval_examples", "eval_one_batch"):
            assert r[key].keys() == ref_eval.keys()
            for name in ref_eval:
                assert abs(r[key][name] - ref_eval[name]) < 1e-9, (key, name)
    # every rank ends with the same exact numbers
    for key in ("grad_batches", "grad_examples", "grad_one_batch"):
        assert all(torch.equal(results[0][key][k], results[1][key][k]) for k in ref_grad)
    assert results[0]["eval_batches"] == results[1]["eval_batches"]
    # the vector statistic was summed over the shards (an empty one included), not averaged
    x, y = _data()
    pred = model(x).argmax(1)
    tp, fp, fn = (int(((pred == 0) & (y == 0)).sum()), int(((pred == 0) & (y != 0)).sum()), int(((pred != 0) & (y == 0)).sum()))
    assert ref_eval["f1_class0"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)


def test_single_process_path_is_unchanged():
    """Not initialised: distributed=None is the old code path; distributed=True is an error."""
    model = _model()
    a = dataset_gradient(model, _batches(5), classification_loss)
    b = dataset_gradient(model, _batches(5), classification_loss, distributed=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    batches = _batches(5)
    assert D.shard(batches) is batches
    assert D.split([1, 2, 3]) == [1, 2, 3]
    assert D.all_reduce_sums([torch.ones(2)], [3.0])[1] == [3.0]
    with pytest.raises(RuntimeError, match="process group"):
        dataset_gradient(model, _batches(5), classification_loss, distributed=True)


def test_exact_sampler_and_sharded_loader_partition_the_data():
    for world in (1, 2, 3, 5):
        seen = sorted(
            i
            for r in range(world)
            for i in D.ExactDistributedSampler(range(11), world, r, shuffle=True)
        )
        assert seen == list(range(11))
        batches = [
            b
            for r in range(world)
            for b in D.ShardedLoader(list(range(7)), rank=r, world_size=world)
        ]
        assert sorted(batches) == list(range(7))
        assert (
            sum(
                len(D.ShardedLoader(list(range(7)), rank=r, world_size=world)) for r in range(world)
            )
            == 7
        )


# ---------------------------------------------------------------------------------------------
# probe sweeps: rows split across ranks, written by rank 0, resumable


def _probe_setup():
    from paramcorrupt import select
    from paramcorrupt.probe.sweep import SweepConfig

    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 36, 4),
    )
    with torch.no_grad():
        model.train()(torch.randn(32, 1, 6, 6))
    model.eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(41, 1, 6, 6, generator=g), torch.randint(0, 4, (41,), generator=g)
    xe, ye = torch.randn(23, 1, 6, 6, generator=g), torch.randint(0, 4, (23,), generator=g)
    gradient_loader = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 41, 8)]
    eval_loader = [(xe[i : i + 10], ye[i : i + 10]) for i in range(0, 23, 10)]
    groups = {"conv": select(model, "0"), "norm": select(model, "1"), "fc": select(model, "4")}
    config = SweepConfig(
        methods=["random", "gradient", "iterative"],
        trials=2,
        p_values=["inf"],
        n_values=[None, 5],
        eps_values=[1e-2],
        settings={"iterative": {"steps": 2}},
        task="test-distributed",
    )
    return model, config, gradient_loader, eval_loader, groups


class _FailingEvaluator:
    """Raises on rank ``fail_rank`` at its ``fail_at``-th row (1-based)."""

    def __init__(self, inner, fail_rank: int, fail_at: int) -> None:
        self.inner, self.fail_rank, self.fail_at, self.calls = inner, fail_rank, fail_at, 0

    def evaluate(self, group):
        self.calls += 1
        if D.get_rank() == self.fail_rank and self.calls == self.fail_at:
            raise ValueError("injected failure")
        return self.inner.evaluate(group)


def _probe_worker(path: str, fail_rank: int | None = None, fail_at: int = 0) -> list[dict]:
    from paramcorrupt.probe import FullEvaluator, ResultsStore, sweep

    model, config, gradient_loader, eval_loader, groups = _probe_setup()
    metrics = {"accuracy": accuracy}
    evaluator = None
    if fail_rank is not None:
        full = FullEvaluator(model, eval_loader, gradient_loader, classification_loss, metrics)
        evaluator = _FailingEvaluator(full, fail_rank, fail_at)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = sweep(
        model,
        config,
        gradient_loader,
        eval_loader,
        classification_loss,
        metrics,
        groups=groups,
        store=ResultsStore(path),
        progress=False,
        evaluator=evaluator,
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return rows


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for field in ra:
            if field == "seconds":
                continue
            va, vb = ra[field], rb[field]
            if isinstance(va, float) and isinstance(vb, float):
                assert va == vb or abs(va - vb) <= 1e-6 * max(abs(va), abs(vb)), (
                    ra["key"],
                    field,
                    va,
                    vb,
                )
            else:
                assert va == vb, (ra["key"], field, va, vb)


@pytest.mark.slow
def test_distributed_probe_rows_equal_single_process_rows(tmp_path):
    from paramcorrupt.probe import ResultsStore, read_results, sweep

    model, config, gradient_loader, eval_loader, groups = _probe_setup()
    single = sweep(
        model,
        config,
        gradient_loader,
        eval_loader,
        classification_loss,
        {"accuracy": accuracy},
        groups=groups,
        store=ResultsStore(tmp_path / "single.jsonl"),
        progress=False,
    )
    assert len(single) == 3 * 2 * 4  # groups x n x (2 random + gradient + iterative)

    results = _spawn(_probe_worker, str(tmp_path / "dist.jsonl"))

    _same_rows(results[0], single)
    _same_rows(results[1], single)  # every rank returns every row
    header, written = read_results(tmp_path / "dist.jsonl")
    _, written_single = read_results(tmp_path / "single.jsonl")
    assert header["sweep_id"] == single[0]["sweep_id"]
    _same_rows(written, written_single)  # written once, by rank 0, in the single-process order


@pytest.mark.slow
def test_failing_rank_ends_the_probe_with_a_clear_error_and_no_partial_row(tmp_path):
    import torch.multiprocessing as mp

    from paramcorrupt.probe import read_results, sweep

    model, config, gradient_loader, eval_loader, groups = _probe_setup()
    single = sweep(
        model,
        config,
        gradient_loader,
        eval_loader,
        classification_loss,
        {"accuracy": accuracy},
        groups=groups,
        store=None,
        progress=False,
    )
    path = tmp_path / "dist.jsonl"
    # rank 1 fails on its 3rd row, i.e. row 6 (rows 2r + 1 are rank 1's)
    with pytest.raises(mp.ProcessRaisedException) as failure:
        _spawn(_probe_worker, str(path), 1, 3)
    message = str(failure.value)
    assert (
        "RankFailedError: rank 1 failed on row " in message
        and "ValueError: injected failure" in message
    )
    assert repr(single[5]["key"]) in message
    data = path.read_bytes()
    assert data.endswith(b"\n")  # no half-written line
    _, partial = read_results(path)
    _same_rows(partial, single[:5])  # the rows before the failed one, complete, in order

    # resuming (same command, no failure) completes the file: equal to an uninterrupted run
    _spawn(_probe_worker, str(path))
    _, final = read_results(path)
    _same_rows(final, single)
    assert len({r["key"] for r in final}) == len(final)


# ---------------------------------------------------------------------------------------------
# corruption-resistant training under DistributedDataParallel

TRAIN_RUNS = {  # name -> (optimizer, micro-batches per rank)
    "resistant": ("resistant", 1),
    "resistant-topn-accumulate": ("resistant-topn", 2),
    "plain": ("plain", 1),
}


def _train_setup(kind: str):
    from paramcorrupt.train import CorruptionResistant

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(6)
    batches = [  # 5 global batches of 9 rows: split 5 + 4 over 2 ranks
        (
            torch.randn(9, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (9,), generator=g),
        )
        for _ in range(5)
    ]
    sgd = {"lr": 0.1, "momentum": 0.9}
    if kind == "plain":
        optimizer = torch.optim.SGD(model.parameters(), **sgd)
    elif kind == "resistant":
        optimizer = CorruptionResistant(
            model.parameters(), torch.optim.SGD, eps=0.05, p=2, alpha=0.5, model=model, **sgd
        )
    else:  # sparse top-n with L_inf: the perturbation depends on which 7 coordinates win
        optimizer = CorruptionResistant(
            model.parameters(),
            torch.optim.SGD,
            eps=0.05,
            p=float("inf"),
            n=7,
            alpha=0.5,
            model=model,
            **sgd,
        )
    return model, optimizer, batches


def _train_worker() -> dict:
    import torch.distributed as dist

    from paramcorrupt.train import fit

    reduced = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):  # DDP's sync goes through the summing hook
        reduced.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    out = {}
    for name, (kind, micro) in TRAIN_RUNS.items():
        model, optimizer, batches = _train_setup(kind)
        params = sum(p.numel() for p in model.parameters())
        reduced.clear()
        history = fit(model, optimizer, batches, classification_loss, epochs=1, micro_batches=micro)
        syncs = [n for n in reduced if n == params]  # gradient buckets (the model fits one bucket)
        out[name] = {"state": model.state_dict(), "loss": history[0]["loss"], "synced": len(syncs)}
    return out


@pytest.mark.slow
def test_distributed_training_equals_single_process_training():
    from paramcorrupt.train import fit

    single = {}
    for name, (kind, _) in TRAIN_RUNS.items():
        model, optimizer, batches = _train_setup(kind)
        history = fit(
            model, optimizer, batches, classification_loss, epochs=1
        )  # whole global batches
        single[name] = {"state": model.state_dict(), "loss": history[0]["loss"]}

    results = _spawn(_train_worker)

    for name, (kind, _) in TRAIN_RUNS.items():
        ref = single[name]["state"]
        start = _train_setup(kind)[0].state_dict()
        for rank in (0, 1):
            state = results[rank][name]["state"]
            for key in ref:
                moved = float((ref[key] - start[key]).norm())
                assert moved > 0
                assert float((state[key] - ref[key]).norm()) <= 1e-9 * moved, (name, rank, key)
            assert (
                abs(results[rank][name]["loss"] - single[name]["loss"]) < 1e-6
            )  # returned as float32
        # every rank holds bit-identical parameters: the same a_hat (top-n) was chosen everywhere
        assert all(
            torch.equal(results[0][name]["state"][k], results[1][name]["state"][k]) for k in ref
        )
        # each gradient synchronised once: 2 passes per resistant step, 1 per plain step, 5 steps
        expected = 5 * (1 if kind == "plain" else 2)
        assert results[0][name]["synced"] == expected, (name, results[0][name]["synced"])


# ---------------------------------------------------------------------------------------------
# the command line under torchrun: a failing rank, then the same command resumes

DATA_FACTORY = """
import os

import torch

from paramcorrupt.tasks.digits import digits_task


def make():
    task = digits_task(train=False, eval_batch_size=256)
    fail_at = int(os.environ.get("FAIL_AT", "0"))
    if fail_at and os.environ.get("RANK") == "1":
        # rank 1 fails in its FAIL_AT-th row: the FAIL_AT-th corrupted model the loss meets, a
        # corrupted model being weights other than those of the data set gradient (the loss's
        # one call with gradients on). Counted by weights, not by calls: the library may call
        # the loss any number of times before the sweep (the first-batch check of --data does)
        inner, seen = task.loss_fn, {"clean": None, "last": None, "rows": 0}

        def loss_fn(model, batch):
            weights = torch.cat([p.detach().flatten() for p in model.parameters()])
            if torch.is_grad_enabled():  # the data set gradient, at the weights the rows corrupt
                seen["clean"] = weights.clone()
            elif seen["clean"] is None or torch.equal(weights, seen["clean"]):
                seen["last"] = None  # before the sweep, or the clean model
            elif seen["last"] is None or not torch.equal(weights, seen["last"]):
                seen["rows"] += 1  # another corrupted model: the next row
                seen["last"] = weights.clone()
                if seen["rows"] == fail_at:
                    raise ValueError("injected failure on rank 1")
            return inner(model, batch)

        task.loss_fn = loss_fn
    return task
"""


@pytest.mark.slow
def test_torchrun_probe_fails_cleanly_then_resumes_to_the_single_process_rows(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from paramcorrupt.cli import main
    from paramcorrupt.probe import read_results

    factory = tmp_path / "data_factory.py"
    factory.write_text(DATA_FACTORY)
    args = [
        "probe",
        "--data",
        f"{factory}:make",
        "--by",
        "type",
        "--methods",
        "random,gradient",
        "--trials",
        "1",
        "--eps",
        "1e-2",
        "--top-n",
        "all",
        "--no-gradient-data",
        "--quiet",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as each torchrun process (OMP_NUM_THREADS=1); faster on a busy machine
    try:
        assert main([*args, "--out", str(tmp_path / "single.jsonl")]) == 0
    finally:
        torch.set_num_threads(threads)
    _, single = read_results(tmp_path / "single.jsonl")
    assert len(single) == 6  # conv, norm, linear x (random, gradient)

    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "paramcorrupt",
        *args,
        "--out",
        str(tmp_path / "dist.jsonl"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # rows alternate between the ranks: rank 1's 1st row is row 1, its 2nd row 3; it fails in
    # row 3, after rows 0-2 are written
    failed = subprocess.run(
        command, env={**env, "FAIL_AT": "2"}, capture_output=True, text=True, timeout=300
    )
    assert failed.returncode != 0
    assert (
        "rank 1 failed on row " in failed.stderr and "injected failure on rank 1" in failed.stderr
    ), failed.stderr
    data = (tmp_path / "dist.jsonl").read_bytes()
    assert data.endswith(b"\n")  # no half-written row
    _, partial = read_results(tmp_path / "dist.jsonl")
    _same_rows(partial, single[:3])  # the rows before the failed one, written once by rank 0

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "6 rows in" in resumed.stdout and resumed.stdout.count("6 rows in") == 1  # rank 0 prints
    _, final = read_results(tmp_path / "dist.jsonl")
    _same_rows(final, single)
