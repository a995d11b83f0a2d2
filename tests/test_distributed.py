"""torch.distributed: 2 gloo processes on CPU give the single-process numbers.

Each test launches its processes once (``paramcorrupt.distributed.spawn``: fresh interpreters,
a free port) and runs every check of its theme inside them, to keep the suite fast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from paramcorrupt import dataset_gradient, evaluate
from paramcorrupt import distributed as D
from paramcorrupt.losses import accuracy, classification_loss

N_EXAMPLES = 37  # odd: the shards cannot be even


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


def _gradient_worker() -> dict:
    """Inside each rank: the gradient and evaluation through every sharding path."""
    x, y = _data()
    model = _model()
    metrics = {"accuracy": accuracy}
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
    # float32 parameters, accumulate_dtype=None: the reduction still runs in float64
    out["grad_float32"] = dataset_gradient(
        model.float(),
        [(a.float(), b) for a, b in batches],
        classification_loss,
        accumulate_dtype=None,
    )
    return out


def _rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return (num / den) ** 0.5


def test_dataset_gradient_and_evaluate_match_single_process():
    model = _model()
    metrics = {"accuracy": accuracy}
    ref_grad, ref_loss = dataset_gradient(model, _batches(5), classification_loss, return_loss=True)
    ref_eval = evaluate(model, _batches(5), classification_loss, metrics)
    ref_grad32 = dataset_gradient(
        _model().float(),
        [(a.float(), b) for a, b in _batches(5)],
        classification_loss,
        accumulate_dtype=None,
    )

    results = D.spawn(_gradient_worker, 2)

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
        assert abs(r["loss_batches"] - ref_loss) < 1e-9 * abs(ref_loss)
        for key in ("eval_batches", "eval_examples", "eval_one_batch"):
            assert r[key].keys() == ref_eval.keys()
            for name in ref_eval:
                assert abs(r[key][name] - ref_eval[name]) < 1e-9, (key, name)
    # every rank ends with the same exact numbers
    for key in ("grad_batches", "grad_examples", "grad_one_batch"):
        assert all(torch.equal(results[0][key][k], results[1][key][k]) for k in ref_grad)
    assert results[0]["eval_batches"] == results[1]["eval_batches"]


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
