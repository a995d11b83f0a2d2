"""Probe benchmarks on the demo model (the digits ResNet of ``paramcorrupt.tasks.digits``).

Every figure is a ratio of two timings taken side by side in this one run, interleaved and
repeated; each timing is the best of its repeats (the machine is shared, so the minimum is
the least disturbed run).

(i)   A sweep's wall time over its floor. The floor is what any sweep must compute: one
      forward+backward pass over the gradient data (the data set gradient) plus one forward
      pass over the evaluation data per evaluated configuration (the rows and the clean
      model), timed with plain PyTorch loops. Measured on a by-type sweep with
      ``measure_gradient_data=False`` (exactly that floor) and with the default
      ``measure_gradient_data=True`` (then the floor also holds one forward pass over the
      gradient data per configuration). Goal: <= 1.10.
(ii)  A by-position sweep (stem, layer1, layer2, fc; random and gradient-based; several eps)
      with activation reuse (``ReusingEvaluator``, its cache built inside the timed run) vs
      without (the default full passes): speed-up, and whether the rows are identical (every
      field but ``seconds`` equal with ``==``). Goal: >= 2x, identical rows. The per-group
      speed-ups of one evaluation are printed too: they bound what reuse can give.
(iii) The same fault — n randomly chosen convolution weights set to random values in
      [-1, 1] — injected, evaluated once (``paramcorrupt.evaluate`` on the evaluation data)
      and undone, by pytorchfi 0.6.0's weight injection (``fault_injection`` +
      ``declare_weight_fi``, which deep-copies the model and sets each weight in a Python
      loop; undoing is dropping the copy) vs ours (the fault as a Corruption of delta =
      value - original: sparse for n = 100, a dense delta for n = every weight, applied
      and undone in place by ``paramcorrupt.corrupted``); trials per second, for n = 100 and
      n = every convolution weight. Goal: >= 10x at n = every weight, no slower at n = 100.
      The fault locations and values are drawn before the timed loop, for both.

pytorchfi lives in the benchmark's own environment, never in the project's. pytorchfi 0.6.0
is the registry release; its API differs from its GitHub README (no ``FaultInjection`` class,
no ``weight_error_models.single_bit_flip_weight``...). Create the environment once:

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install torch==2.13.0
    /tmp/bench-venv/bin/pip install pytorchfi==0.6.0 --no-deps
    /tmp/bench-venv/bin/pip install numpy scipy tqdm scikit-learn

(pytorchfi 0.6.0 declares no dependencies and imports only torch; the last line is what
paramcorrupt and its digits task need; paramcorrupt itself is imported from this checkout's
``src/``.) Then:

    .venv/bin/python benchmarks/bench_probe.py --venv /tmp/bench-venv   # re-runs itself there
    /tmp/bench-venv/bin/python benchmarks/bench_probe.py                # the same
    .venv/bin/python benchmarks/bench_probe.py                          # (iii) skipped
    ... --quick                                                         # fewer repeats

Torch runs with one intra-op thread by default (``--threads``): on a 2-core machine shared
with other jobs, two threads contend and the timings swing by orders of magnitude.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _reexec_in(venv: str) -> None:
    """Run this script with the interpreter of ``venv`` (unless it is the one running)."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        sys.exit(f"--venv {venv}: no {python}; create it as the docstring says")
    if Path(sys.prefix).resolve() == Path(venv).resolve():
        return
    rest, argv = [], iter(sys.argv[1:])
    for arg in argv:
        if arg == "--venv":
            next(argv, None)
        elif not arg.startswith("--venv="):
            rest.append(arg)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *rest])


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", help="the benchmark's own environment (with pytorchfi 0.6.0): re-run there")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each sweep (default 5)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and trials: a smoke run")
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 'iii' or 'i,ii'")
    return parser.parse_args()


args = _arguments()
if args.venv:
    _reexec_in(args.venv)
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from paramcorrupt import Corruption, ParameterGroup, corrupted, evaluate  # noqa: E402
from paramcorrupt.probe.reuse import ReusingEvaluator  # noqa: E402
from paramcorrupt.probe.sweep import FullEvaluator, SweepConfig, sweep  # noqa: E402
from paramcorrupt.tasks.digits import digits_task  # noqa: E402

EPS = (1e-3, 1e-2, 1e-1)


class Timing:
    """The best wall time and the best CPU time (this process) over the repeats."""

    def __init__(self) -> None:
        self.wall = math.inf
        self.cpu = math.inf

    def __truediv__(self, other: Timing) -> str:
        return f"{self.wall / other.wall:.3g}x wall, {self.cpu / other.cpu:.3g}x CPU"

    def __str__(self) -> str:
        return f"{self.wall:.3f} s wall ({self.cpu:.3f} s CPU)"


def best_of(*fns: Callable[[], Any], repeats: int) -> list[Timing]:
    """The best times of each function over ``repeats`` interleaved rounds."""
    best = [Timing() for _ in fns]
    for _ in range(repeats):
        for timing, fn in zip(best, fns):
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            timing.cpu = min(timing.cpu, time.process_time() - cpu)
            timing.wall = min(timing.wall, time.perf_counter() - wall)
    return best


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ----------------------------------------------------------------------------------------------
# (i) a sweep over its floor


def part_i(task, repeats: int) -> None:
    model = task.model
    groups = task.groupings["type"](model)
    params = [p for p in model.parameters() if p.requires_grad]
    for measure in (False, True):
        config = SweepConfig(
            methods=("random", "gradient"), trials=5, eps_values=EPS, task="digits", grouping="type",
            measure_gradient_data=measure,
        )
        rows = len(groups) * len(EPS) * (config.trials + 1)
        configurations = rows + 1  # the rows and the clean model

        def run_sweep(config: SweepConfig = config) -> None:
            sweep(model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics,
                  groups=groups, progress=False)

        def floor(measure: bool = measure, configurations: int = configurations) -> None:
            model.eval()
            for x, y in task.gradient_loader:  # the data set gradient: forward + backward
                torch.autograd.grad(F.cross_entropy(model(x), y), params)
            with torch.no_grad():
                for _ in range(configurations):  # one forward pass per evaluated configuration
                    for x, y in task.eval_loader:
                        logits = model(x)
                        F.cross_entropy(logits, y)
                        (logits.argmax(-1) == y).sum()
                    if measure:
                        for x, y in task.gradient_loader:
                            F.cross_entropy(model(x), y)

        t_sweep, t_floor = best_of(run_sweep, floor, repeats=repeats)
        print(
            f"(i) by-type sweep ({', '.join(groups)}), {rows} rows, measure_gradient_data={measure}: "
            f"sweep {t_sweep}, floor {t_floor} -> {t_sweep / t_floor} the floor (goal <= 1.10)"
        )


# ----------------------------------------------------------------------------------------------
# (ii) a by-position sweep with and without activation reuse


def part_ii(task, repeats: int) -> None:
    model = task.model
    groups = task.groupings["position"](model)
    config = SweepConfig(methods=("random", "gradient"), trials=5, eps_values=EPS, task="digits", grouping="position")
    common = (model, config, task.gradient_loader, task.eval_loader, task.loss_fn, task.metrics)
    results: dict[str, Any] = {}

    def without() -> None:
        results["full"] = sweep(*common, groups=groups, progress=False)

    def with_reuse() -> None:  # a fresh evaluator: building the caches is part of the run
        evaluator = ReusingEvaluator(model, task.eval_loader, task.gradient_loader, task.loss_fn, task.metrics)
        results["reuse"] = sweep(*common, groups=groups, progress=False, evaluator=evaluator)
        results["stats"] = evaluator.stats

    t_full, t_reuse = best_of(without, with_reuse, repeats=repeats)
    same = strip(results["full"]) == strip(results["reuse"])
    stats = results["stats"]
    print(
        f"(ii) by-position sweep ({', '.join(groups)}), {len(results['full'])} rows: without reuse {t_full}, "
        f"with reuse {t_reuse} -> {t_full / t_reuse} faster (goal >= 2x); identical rows: {same} "
        f"(batches served from the cache {stats['reused']}, cached {stats['built']}; "
        f"loaders evaluated with full passes {stats['full_evaluations']})"
    )
    # one evaluation per group with the cache built: what reuse can give each group at most
    full = FullEvaluator(model, task.eval_loader, task.gradient_loader, task.loss_fn, task.metrics)
    reusing = ReusingEvaluator(model, task.eval_loader, task.gradient_loader, task.loss_fn, task.metrics)
    per_group = []
    totals = [Timing(), Timing()]
    totals[0].wall = totals[0].cpu = totals[1].wall = totals[1].cpu = 0.0
    for label, group in groups.items():
        reusing.evaluate(group)  # build the cache
        a, b = best_of(partial(full.evaluate, group), partial(reusing.evaluate, group), repeats=3 * repeats)
        for total, t in zip(totals, (a, b)):
            total.wall += t.wall
            total.cpu += t.cpu
        cut = reusing.cut(group)
        suffix = "no reuse" if cut is None else f"suffix {cut.nodes[1]} of {cut.nodes[0]} nodes"
        per_group.append(f"{label} {a.cpu / b.cpu:.2f}x ({suffix})")
    print(f"     one evaluation, cache built, CPU time: {'; '.join(per_group)}; the four together {totals[0] / totals[1]}")


# ----------------------------------------------------------------------------------------------
# (iii) pytorchfi's weight injection vs ours


def draw_faults(convs: list[tuple[str, nn.Conv2d]], n: int, trials: int, generator: torch.Generator) -> list:
    """``trials`` faults of ``n`` distinct conv weights set to uniform values in [-1, 1].

    Each fault in both libraries' terms: pytorchfi's ``declare_weight_fi`` keyword lists, and
    ours: parameter name -> (flat indices, values), or (None, dense values) when every weight
    of the tensor is set.
    """
    sizes = [conv.weight.numel() for _, conv in convs]
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    faults = []
    for _ in range(trials):
        flat = torch.randperm(sum(sizes), generator=generator)[:n]
        values = torch.rand(n, generator=generator) * 2 - 1  # as pytorchfi's random_value
        layer = torch.searchsorted(offsets, flat, right=True) - 1
        within = flat - offsets[layer]
        pfi: dict[str, list] = {"layer_num": [], "k": [], "dim1": [], "dim2": [], "dim3": [], "value": []}
        ours = {}
        for index, (name, conv) in enumerate(convs):
            pick = layer == index
            if not pick.any():
                continue
            idx, val = within[pick], values[pick]
            pfi["layer_num"] += [index] * len(idx)
            for key, coord in zip(("k", "dim1", "dim2", "dim3"), torch.unravel_index(idx, conv.weight.shape)):
                pfi[key] += coord.tolist()
            pfi["value"] += val.tolist()
            if len(idx) == conv.weight.numel():
                dense = torch.empty(conv.weight.numel())
                dense[idx] = val
                ours[f"{name}.weight"] = (None, dense.view_as(conv.weight))
            else:
                ours[f"{name}.weight"] = (idx, val)
        faults.append((pfi, ours))
    return faults


def pytorchfi_trials(fi: Any, task, faults: list) -> list[dict[str, float]]:
    results = []
    for pfi, _ in faults:
        faulty = fi.declare_weight_fi(**pfi)  # a deep copy with the faults set
        results.append(evaluate(faulty, task.eval_loader, task.loss_fn, task.metrics))
        del faulty  # undo: drop the copy
    return results


def our_trials(task, faults: list) -> list[dict[str, float]]:
    model = task.model
    params = dict(model.named_parameters())
    results = []
    for _, ours in faults:
        indices, deltas = {}, {}
        with torch.no_grad():
            for name, (idx, val) in ours.items():
                if idx is None:  # dense: delta = value - original
                    indices[name], deltas[name] = None, val - params[name]
                else:  # sparse: the n changed coordinates only
                    indices[name], deltas[name] = idx, val - params[name].view(-1)[idx]
        corruption = Corruption(ParameterGroup("fault", tuple(ours)), None, "custom", indices, deltas)
        with corrupted(model, corruption):
            results.append(evaluate(model, task.eval_loader, task.loss_fn, task.metrics))
    return results


def part_iii(task, repeats: int, quick: bool) -> None:
    try:
        from importlib.metadata import version

        from pytorchfi.core import fault_injection
    except ImportError:
        print("(iii) skipped: pytorchfi is not installed here (see the docstring: --venv /tmp/bench-venv)")
        return
    if version("pytorchfi") != "0.6.0":
        print(f"(iii) skipped: pytorchfi {version('pytorchfi')} is installed; the benchmark is for 0.6.0")
        return
    model = task.model
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    total = sum(conv.weight.numel() for _, conv in convs)
    inputs = next(iter(task.eval_loader))[0]
    # pytorchfi profiles the model once with a dummy input; its layers are the convs in module order
    fi = fault_injection(model, inputs.shape[0], input_shape=list(inputs.shape[1:]), layer_types=[nn.Conv2d])
    if [tuple(s) for s in fi.weights_size] != [tuple(conv.weight.shape) for _, conv in convs]:
        raise RuntimeError("pytorchfi's layer order differs from the model's convolutions")
    generator = torch.Generator().manual_seed(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for n, trials in ((100, 20 if quick else 50), (total, 2 if quick else 4)):
        faults = draw_faults(convs, n, trials, generator)
        got: dict[str, list] = {}
        t_pfi, t_ours = best_of(
            lambda: got.__setitem__("pytorchfi", pytorchfi_trials(fi, task, faults)),  # noqa: B023 - run here
            lambda: got.__setitem__("ours", our_trials(task, faults)),  # noqa: B023 - run here
            repeats=max(1, repeats // 2),
        )
        if any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()):
            raise RuntimeError("the model was left changed")
        pairs = list(zip(got["pytorchfi"], got["ours"]))
        diff = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in pairs)
        same_accuracy = all(a["accuracy"] == b["accuracy"] for a, b in pairs)
        label = "100" if n == 100 else f"every conv weight ({total})"
        print(
            f"(iii) n = {label}, {trials} trials: pytorchfi {trials / t_pfi.wall:.2f} trials/s, "
            f"ours {trials / t_ours.wall:.2f} trials/s -> {t_pfi / t_ours} "
            f"(goal >= {'1' if n == 100 else '10'}x); the same faults: max relative loss difference {diff:.1e}, "
            f"accuracies equal: {same_accuracy}"
        )


def main() -> None:
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(
        f"python {platform.python_version()} ({sys.prefix}), torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch thread(s), {repeats} repeats"
    )
    start = time.perf_counter()
    task = digits_task()  # the demo model: trained from seed 0
    print(f"demo model: digits ResNet trained in {time.perf_counter() - start:.1f} s; "
          f"gradient data {task.info['train_size']}, evaluation data {task.info['test_size']} examples")
    if "i" not in skip:
        part_i(task, repeats)
    if "ii" not in skip:
        part_ii(task, repeats)
    if "iii" not in skip:
        part_iii(task, repeats, args.quick)


if __name__ == "__main__":
    main()
