"""Corruption-resistant training: step time, perturbation memory, Table 2 on digits.

    python benchmarks/bench_train.py                      # timing + memory (about a minute)
    python benchmarks/bench_train.py --table2 --out runs/table2   # + Table 2 and the interval study

Timing (one process, variants interleaved round by round, median per step): a plain step of
the base optimiser (SGD, Nesterov momentum), the CorruptionResistant step (alpha = 1, p = 2,
n = None: SAM's setting, and the default alpha = 0.5), a literal SAM step (davda54/sam's
algorithm, written out below) at the same setting, and the ``interval`` variants. Goals
from issue 4: resistant / plain <= 2.1 (two forward/backward passes are the floor) and
resistant / literal SAM <= 1.05.

Memory: what the climb to w + a_hat holds (the saved values of w, the indices) for a sparse
n = 100 perturbation vs a dense one, and the measured peak of the tensors allocated inside
``first_step`` (tracked at the dispatcher: every op output is counted until it is freed).
With alpha < 1 the gradient at w is also kept during the second pass (one gradient's worth,
any n); alpha = 1 drops it, as SAM does.

Table 2 (``--table2``): ``paramcorrupt compare`` on digits, 3 seeds, baseline vs resistant
vs regularised and the interval variants; the Markdown goes to ``OUT/table2.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from paramcorrupt.tasks.digits import DigitsResNet
from paramcorrupt.train import CorruptionResistant

# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------


class LiteralSAM:
    """SAM as davda54/sam implements it: e(w) = rho g / (||g||_2 + 1e-12), climb, second
    gradient, w -= e(w), base step."""

    def __init__(self, params, base, rho, **kwargs):
        self.params = [p for p in params]
        self.base = base(self.params, **kwargs)
        self.rho = rho

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            loss = closure()
        norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in self.params if p.grad is not None]), p=2)
        scale = self.rho / (norm + 1e-12)
        moves = []
        for p in self.params:
            e = p.grad * scale
            p.add_(e)
            moves.append(e)
        with torch.enable_grad():
            closure()
        for p, e in zip(self.params, moves):
            p.sub_(e)
        self.base.step()
        return loss


def timing(width: int, batch: int, rounds: int, steps: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 8, 8)
    y = torch.randint(0, 10, (batch,))
    sgd = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def make(kind):
        torch.manual_seed(0)
        model = DigitsResNet(width).train()
        if kind == "plain":
            opt = torch.optim.SGD(model.parameters(), **sgd)
        elif kind == "sam":
            opt = LiteralSAM(model.parameters(), torch.optim.SGD, rho=0.05, **sgd)
        else:
            alpha, interval = kind
            opt = CorruptionResistant(
                model.parameters(), torch.optim.SGD, eps=0.05, alpha=alpha, interval=interval, model=model, **sgd
            )

        def closure():
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return lambda: opt.step(closure)

    variants = {
        "plain SGD step": make("plain"),
        "literal SAM (rho=0.05)": make("sam"),
        "resistant alpha=1 (SAM setting)": make((1.0, 1)),
        "resistant alpha=0.5": make((0.5, 1)),
        "resistant alpha=0.5, interval=2": make((0.5, 2)),
        "resistant alpha=0.5, interval=4": make((0.5, 4)),
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    for step in variants.values():  # warm-up
        for _ in range(3):
            step()
    for _ in range(rounds):
        for name, step in variants.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            cpu[name].append((time.process_time() - started_cpu) / steps)
            wall[name].append((time.perf_counter() - started) / steps)
    k = sum(p.numel() for p in DigitsResNet(width).parameters())
    print(f"\n## Step time: DigitsResNet(width={width}), k = {k:,} parameters, batch {batch}, "
          f"{torch.get_num_threads()} thread(s); median of {rounds} rounds x {steps} steps, variants interleaved\n")
    print("| variant | CPU ms / step | vs plain | vs literal SAM | wall ms / step | wall vs plain |")
    print("|---|---|---|---|---|---|")
    c = {name: statistics.median(values) for name, values in cpu.items()}
    w = {name: statistics.median(values) for name, values in wall.items()}
    plain, sam = "plain SGD step", "literal SAM (rho=0.05)"
    for name in cpu:
        print(f"| {name} | {c[name] * 1e3:.2f} | {c[name] / c[plain]:.3f}x | {c[name] / c[sam]:.3f}x "
              f"| {w[name] * 1e3:.2f} | {w[name] / w[plain]:.3f}x |")
    res = "resistant alpha=1 (SAM setting)"
    to_plain, to_sam = c[res] / c[plain], c[res] / c[sam]
    print(f"\nRatios on process CPU time (one thread: unaffected by other processes sharing the machine; "
          f"wall time is shown for reference). Goal resistant/plain <= 2.1: {to_plain:.3f} "
          f"({'met' if to_plain <= 2.1 else 'NOT met'}); goal resistant/SAM <= 1.05: {to_sam:.3f} "
          f"({'met' if to_sam <= 1.05 else 'NOT met'})")


# --------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------


class AllocationTracker(TorchDispatchMode):
    """Peak bytes of the tensors created by ops run under this mode (views and in-place
    results, which allocate nothing, are not counted; a tensor counts until it is freed)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        seen = set()
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in inputs or ptr in seen or func.is_view:
                continue
            seen.add(ptr)
            nbytes = storage.nbytes()
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._free, nbytes)
        return out


def memory(hidden: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    x, y = torch.randn(64, hidden), torch.randint(0, 10, (64,))
    k = sum(p.numel() for p in model.parameters())
    print(f"\n## Perturbation memory: MLP with k = {k:,} float32 parameters ({4 * k / 2**20:.1f} MiB)\n")
    print("| perturbation | alpha | held during the perturbed pass | peak allocated in first_step |")
    print("|---|---|---|---|")
    for n in (None, 100):
        for alpha in (1.0, 0.5):
            opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.05, n=n, alpha=alpha, lr=0.0)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            tracker = AllocationTracker()
            with tracker:
                opt.first_step()
            held = opt.perturbation_nbytes()
            F.cross_entropy(model(x), y).backward()
            opt.second_step()
            label = "dense (n = k)" if n is None else f"sparse (n = {n})"
            print(f"| {label} | {alpha:g} | {held / 2**20:.4f} MiB ({held / (4 * k):.3f} of w) "
                  f"| {tracker.peak / 2**20:.4f} MiB ({tracker.peak / (4 * k):.3f} of w) |")


# --------------------------------------------------------------------------------------
# Table 2 and the interval study
# --------------------------------------------------------------------------------------


def table2(out: str, eps: float, alpha: float, lam: float, seeds: str) -> None:
    from paramcorrupt.cli import main

    methods = [
        "plain",
        f"resistant:eps={eps:g}:alpha={alpha:g}",
        f"regularised:lam={lam:g}",
        f"resistant:eps={eps:g}:alpha={alpha:g}:interval=2",
        f"resistant:eps={eps:g}:alpha={alpha:g}:interval=4",
    ]
    argv = ["compare", "--quiet", "--threads", "1", "--seeds", seeds, "--out", out, "--methods", *methods]
    print("\n## Table 2 on digits\n\n$ paramcorrupt " + " ".join(argv) + "\n", flush=True)
    code = main(argv)
    if code:
        sys.exit(code)
    interval_study(out, methods)


def interval_study(out: str, methods: list[str]) -> None:
    """What the interval schedule keeps of the gain: (acc_interval - acc_plain) /
    (acc_interval1 - acc_plain) at each eps where the baseline loses >= 10 points."""
    import json
    from pathlib import Path

    import numpy as np

    rows = [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines()]
    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    labels = list(by)
    plain = by[labels[0]]
    reference = next(label for label in labels if label.startswith("resistant") and "interval=" not in label)
    resistant = [reference] + [label for label in labels if label.startswith(reference[:-1] + ", interval=")]
    clean = np.mean([r["clean"] for r in plain])
    print("\n## What the interval schedule keeps of the gain\n")
    print("| eps | " + " | ".join(resistant) + " |")
    print("|---|" + "---|" * len(resistant))
    for eps in plain[0]["gradient"]:
        base = np.mean([r["gradient"][eps] for r in plain])
        if clean - base < 0.10:
            continue
        full = np.mean([r["gradient"][eps] for r in by[resistant[0]]]) - base
        cells = []
        for label in resistant:
            gain = np.mean([r["gradient"][eps] for r in by[label]]) - base
            cells.append(f"{gain * 100:+.1f} points ({gain / full * 100:.0f}% of interval 1)")
        print(f"| {eps} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="DigitsResNet width for the timing (default: 32)")
    parser.add_argument("--batch", type=int, default=128, help="batch size for the timing (default: 128)")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (default: 7)")
    parser.add_argument("--steps", type=int, default=8, help="steps per variant and round (default: 8)")
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width for the memory part (default: 1024)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--table2", action="store_true", help="also train the Table 2 models (minutes)")
    parser.add_argument("--out", default="runs/table2", help="Table 2 output folder (default: runs/table2)")
    parser.add_argument("--eps", type=float, default=0.5, help="Table 2: training eps (default: 0.5, the paper's CIFAR-10 setting)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Table 2: training alpha (default: 0.5)")
    parser.add_argument("--lam", type=float, default=0.25, help="Table 2: regulariser lambda (default: 0.25 = alpha * eps)")
    parser.add_argument("--seeds", default="0,1,2", help="Table 2 seeds (default: 0,1,2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_timing:
        timing(args.width, args.batch, args.rounds, args.steps)
    if not args.skip_memory:
        memory(args.hidden)
    if args.table2:
        table2(args.out, args.eps, args.alpha, args.lam, args.seeds)


if __name__ == "__main__":
    main()
