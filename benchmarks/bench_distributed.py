"""torch.distributed on this machine: a probe sweep with 1 and 2 processes, and what a
gradient costs in communication.

    .venv/bin/python benchmarks/bench_distributed.py            # ~1-2 minutes
    .venv/bin/python benchmarks/bench_distributed.py --quick    # fewer rows, ~30 s

Every measurement runs in processes joined by gloo on localhost
(``paramcorrupt.parallel.spawn``: fresh interpreters, start-up excluded from the timings), one
process with all the cores against N processes sharing them (``cores // N`` torch threads
each), on the digits model:

(1) sweep: a by-position probe (random with R trials and gradient-based, L_inf, n = all and
    100, several eps): wall time from a barrier before ``sweep`` to a barrier after it, on the
    slowest rank; rows written by rank 0 to a results file, as the CLI does. The rows of the
    runs are checked equal.
(2) dataset gradient: wall time of ``dataset_gradient`` over the training set, sharded.
(3) communication: bytes each rank hands to ``all_reduce`` per dataset gradient (float64
    sums and the weight) and per training step of CorruptionResistant under DDP (float32
    gradients, one sync per pass, plus the global weight), counted by wrapping
    ``torch.distributed.all_reduce``; beside the model's parameter count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

from paramcorrupt import dataset_gradient
from paramcorrupt import parallel as D
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep
from paramcorrupt.tasks.digits import digits_task


def _task(state: dict | None):
    task = digits_task(state_dict=state, train=state is None, epochs=3)
    return task


def _count_all_reduce() -> list[int]:
    """Wrap dist.all_reduce to record the bytes of every tensor handed to it."""
    sizes: list[int] = []
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        sizes.append(tensor.numel() * tensor.element_size())
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting
    return sizes


def _worker(state: dict, config: SweepConfig, out_dir: str, repeats: int) -> dict:
    task = _task(state)
    groups = task.groupings["position"](task.model)
    rank, world = D.get_rank(), D.get_world_size()
    result: dict = {"rank": rank, "world": world, "threads": torch.get_num_threads()}

    # (1) sweep
    times, rows = [], None
    for i in range(repeats):
        path = os.path.join(out_dir, f"sweep-{world}-{i}.jsonl")
        D.barrier()
        start = time.perf_counter()
        rows = sweep(
            task.model,
            config,
            task.gradient_loader,
            task.eval_loader,
            task.loss_fn,
            task.metrics,
            groups=groups,
            store=ResultsStore(path),
            progress=False,
        )
        D.barrier()
        times.append(time.perf_counter() - start)
    result["sweep_seconds"] = times
    result["rows"] = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    # (2) dataset gradient, sharded
    sizes = _count_all_reduce()
    gtimes = []
    for _ in range(repeats):
        sizes.clear()
        D.barrier()
        start = time.perf_counter()
        dataset_gradient(task.model, D.shard(task.gradient_loader), task.loss_fn)
        D.barrier()
        gtimes.append(time.perf_counter() - start)
    result["gradient_seconds"] = gtimes
    result["gradient_bytes"] = sum(sizes)
    result["gradient_calls"] = len(sizes)

    # (3) one CorruptionResistant step under DDP
    from paramcorrupt.train import CorruptionResistant, fit

    model = task.model
    optimizer = CorruptionResistant(
        model.parameters(), torch.optim.SGD, eps=0.1, model=model, lr=0.01, momentum=0.9
    )
    batch = next(iter(task.train_loader))
    sizes.clear()
    fit(model, optimizer, [batch], task.loss_fn, epochs=1)
    result["step_bytes"] = sum(sizes)
    result["step_calls"] = len(sizes)
    result["params"] = sum(p.numel() for p in model.parameters())
    return result


def _row_difference(a: list[dict], b: list[dict]) -> float:
    """The largest relative difference between the numbers of two runs' rows (same keys)."""
    assert [r["key"] for r in a] == [r["key"] for r in b], "the runs produced different rows"
    worst = 0.0
    for ra, rb in zip(a, b):
        for field, va in ra.items():
            vb = rb[field]
            if isinstance(va, float) and isinstance(vb, float) and va != vb:
                worst = max(worst, abs(va - vb) / max(abs(va), abs(vb)))
            elif not isinstance(va, float):
                assert va == vb, (ra["key"], field, va, vb)
    return worst


def _run(world: int, threads: int, state: dict, config: SweepConfig, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as out_dir:
        return D.spawn(
            _worker, world, state, config, out_dir, repeats, threads=threads
        )  # fresh interpreters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    trials, eps, repeats = (2, [1e-2, 1e-1], 1) if args.quick else (5, [1e-3, 1e-2, 1e-1], 3)
    config = SweepConfig(
        methods=["random", "gradient"],
        trials=trials,
        p_values=["inf"],
        n_values=[None, 100],
        eps_values=eps,
        task="bench-distributed",
        grouping="position",
    )
    print(
        f"machine: {cores} CPU cores (os.cpu_count), torch {torch.__version__}, gloo on localhost"
    )
    print("training the digits model (3 epochs) ...", flush=True)
    state = {k: v.clone() for k, v in _task(None).model.state_dict().items()}

    # (processes, threads each): one process with every core, one with one core, 2 with one each
    setups = [(1, cores), (1, 1), (2, max(1, cores // 2))]
    results = {}
    for world, threads in setups:
        print(f"  {world} process(es) x {threads} thread(s) ...", flush=True)
        results[(world, threads)] = _run(world, threads, state, config, repeats)
    one, two = results[(1, 1)][0], results[(2, max(1, cores // 2))]
    full = results[(1, cores)][0]
    diff = max(_row_difference(one["rows"], r["rows"]) for r in [*two, full])

    def med(values: list[float]) -> float:
        return statistics.median(values)

    sweep1 = med(one["sweep_seconds"])
    sweep1_full = med(full["sweep_seconds"])
    grad1_full = med(full["gradient_seconds"])
    sweep2 = med([max(a, b) for a, b in zip(two[0]["sweep_seconds"], two[1]["sweep_seconds"])])
    grad1 = med(one["gradient_seconds"])
    grad2 = med([max(a, b) for a, b in zip(two[0]["gradient_seconds"], two[1]["gradient_seconds"])])
    rows = len(one["rows"])
    params = one["params"]
    print()
    print(
        f"(1) sweep, {rows} rows (by position, {len(config.eps_values)} eps, n = all/100, random x{trials} + gradient), "
        f"median of {repeats}:"
    )
    print(f"    1 process   x {full['threads']} threads: {sweep1_full:6.2f} s")
    print(f"    1 process   x {one['threads']} thread:  {sweep1:6.2f} s")
    print(
        f"    2 processes x {two[0]['threads']} thread{'s' if two[0]['threads'] > 1 else ' '}: {sweep2:6.2f} s"
        f"   speed-up {sweep1_full / sweep2:.2f}x over the first, {sweep1 / sweep2:.2f}x over the second"
    )
    print(
        f"    rows: same keys and order; largest relative difference of a number {diff:.1e} "
        "(1 vs 2 torch threads round convolutions differently)"
    )
    print(
        f"(2) dataset gradient of the {one['params']:,}-parameter model over the training set: "
        f"1 process x {full['threads']} threads {grad1_full * 1000:.0f} ms, x 1 thread {grad1 * 1000:.0f} ms, "
        f"2 processes {grad2 * 1000:.0f} ms"
    )
    print(f"(3) communication per rank ({params:,} parameters):")
    print(
        f"    dataset gradient: {two[0]['gradient_bytes']:,} bytes in {two[0]['gradient_calls']} all_reduce "
        f"(float64: 8 x (parameters + 2) = {8 * (params + 2):,})"
    )
    print(
        f"    CorruptionResistant step under DDP: {two[0]['step_bytes']:,} bytes in {two[0]['step_calls']} all_reduce "
        f"(2 passes x float32 gradient = {2 * 4 * params:,}, + the global weight and loss per pass)"
    )
    print("    (bytes handed to all_reduce; gloo's ring sends about 2 (N-1)/N times that per rank)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "cores": cores,
                    "rows": rows,
                    "params": params,
                    "sweep_seconds": {"1x all cores": sweep1_full, "1x1": sweep1, "2": sweep2},
                    "gradient_seconds": {"1x all cores": grad1_full, "1x1": grad1, "2": grad2},
                    "gradient_bytes": two[0]["gradient_bytes"],
                    "step_bytes": two[0]["step_bytes"],
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
