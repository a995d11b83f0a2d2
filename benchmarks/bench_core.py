"""Core benchmarks: memory of the sparse closed form, cost of apply/restore.

    .venv/bin/python benchmarks/bench_core.py            # full size (~1e8 and ~1e7 parameters)
    .venv/bin/python benchmarks/bench_core.py --quick    # small, a few seconds

(1) Peak extra memory of ``closed_form(group, Constraint(p, eps, n=100), sparse=True)`` over a
    group of ``--params`` float32 parameters split into ``--tensors`` tensors, as a ratio to the
    largest tensor's size. Goal: <= 1.5.

    How it is measured. tracemalloc does not see torch's allocations, and torch has no CPU
    counterpart of ``torch.cuda.max_memory_allocated``. So each measurement runs in a fresh
    child process (this script, re-invoked with ``--child``) and reads the kernel's own
    accounting of the process's resident memory in /proc/self/status: after the inputs are
    created (torch.randn writes every page, so they are resident), the child notes VmRSS,
    resets the peak-RSS counter VmHWM to the current RSS by writing "5" to
    /proc/self/clear_refs (Linux >= 4.0), runs the call, and reads VmHWM again:
    peak extra = VmHWM_after - VmRSS_before. Large buffers (> 32 MiB, beyond glibc's largest
    mmap threshold) are mmap'ed and unmapped on free, so they cannot hide in reused heap
    memory; the child also runs with MALLOC_MMAP_THRESHOLD_=131072 so that this holds for
    buffers down to 128 KiB (the --quick sizes), and a fresh process has no big free lists. The child first calibrates
    the method on an allocation of known size (one float32 tensor as large as the largest
    input, written once): it must read ~1.0x, which shows the number really measures. If
    clear_refs cannot be written, the child falls back to VmHWM - VmRSS_before without the
    reset (an upper bound: the setup's own peak is ~ its final RSS) and says so.

(2) Time of ``with corrupted(model, c): pass`` for a sparse n = 100 corruption on a model of
    about ``--model-params`` parameters, against ``copy.deepcopy(model)`` (the naive way to get
    a restorable corrupted model). Goal: deepcopy / apply-restore >= 100.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from paramcorrupt import Constraint, closed_form, corrupted, random_corruption

KIB = 1024


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * KIB
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_extra(fn) -> tuple[int, bool]:
    """Peak resident memory above the current RSS while ``fn()`` runs, in bytes."""
    before = _status()["VmRSS"]
    reset = _reset_peak()
    result = fn()
    peak = _status()["VmHWM"]
    del result
    return peak - before, reset


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    sizes = _split(args.params, args.tensors, args.layout)
    gen = torch.Generator().manual_seed(0)
    group = {f"t{i}": torch.randn(s, generator=gen, dtype=torch.float32) for i, s in enumerate(sizes)}
    largest = max(sizes) * 4
    constraint = Constraint(p=args.p, eps=1.0, n=args.n)
    closed_form({"w": torch.randn(1000)}, constraint, sparse=True)  # warm up lazy inits
    calibration, _ = _peak_extra(lambda: torch.empty(max(sizes), dtype=torch.float32).fill_(1.0))
    extra, reset = _peak_extra(lambda: closed_form(group, constraint, sparse=True))
    # the two big temporaries of the streaming top-n, measured alone on the largest tensor
    t = group[f"t{sizes.index(max(sizes))}"]
    abs_extra, _ = _peak_extra(lambda: t.abs())
    topk_extra, _ = _peak_extra(lambda: torch.topk(t, args.n, sorted=False))
    print(
        json.dumps(
            {
                "largest_bytes": largest,
                "calibration": calibration / largest,
                "closed_form": extra / largest,
                "abs": abs_extra / largest,
                "topk": topk_extra / largest,
                "reset": reset,
            }
        )
    )


def _split(total: int, count: int, layout: str = "equal") -> list[int]:
    """Tensor sizes summing to ``total``: equal, or uneven in proportion count:...:2:1."""
    weights = [1] * count if layout == "equal" else list(range(count, 0, -1))
    sizes = [total * w // sum(weights) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def bench_memory(args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--params",
        str(args.params),
        "--tensors",
        str(args.tensors),
        "--n",
        str(args.n),
        "--p",
        str(args.p),
        "--layout",
        args.layout,
    ]
    # a fixed mmap threshold (which also turns off glibc's dynamic one, that grows up to
    # 32 MiB) makes every buffer >= 128 KiB its own mapping, returned to the kernel on free:
    # then a temporary can never reuse pages already resident, at any --params size
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_model(target: int) -> nn.Module:
    """An MLP with batch norm of about ``target`` parameters (width chosen for 8 layers)."""
    depth = 8
    width = max(8, int(math.sqrt(target / depth)))
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_apply(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    model = make_model(args.model_params)
    k = sum(p.numel() for p in model.parameters())
    c = random_corruption(model, Constraint(p=2, eps=0.1, n=args.n), generator=torch.Generator().manual_seed(0))

    def apply_restore():
        with corrupted(model, c):
            pass

    for _ in range(5):
        apply_restore()
    t_apply = _time(apply_restore, args.repeats)
    copy.deepcopy(model)
    t_copy = _time(lambda: copy.deepcopy(model), max(3, args.repeats // 20))
    return {"k": k, "apply": t_apply, "deepcopy": t_copy, "ratio": t_copy / t_apply}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100_000_000, help="size of the closed-form group")
    parser.add_argument("--tensors", type=int, default=4, help="number of tensors in the group")
    parser.add_argument("--layout", choices=["equal", "uneven"], default="equal", help="group tensor sizes")
    parser.add_argument("--model-params", type=int, default=10_000_000, help="size of the apply/restore model")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--p", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=200, help="timed apply/restore repetitions")
    parser.add_argument("--quick", action="store_true", help="small sizes (4e6 and 1e6 parameters)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.params, args.model_params, args.repeats = 4_000_000, 1_000_000, 50
    if args.child:
        child(args)
        return

    mem = bench_memory(args)
    app = bench_apply(args)
    largest_mb = mem["largest_bytes"] / 2**20
    print(f"closed_form(sparse=True): k = {args.params:.3g} float32 in {args.tensors} tensors "
          f"{_split(args.params, args.tensors, args.layout)}, largest {largest_mb:.0f} MiB, n = {args.n}, p = {args.p:g}")
    if not mem["reset"]:
        print("  note: /proc/self/clear_refs not writable; peak read without reset (upper bound)")
    print(f"apply/restore: MLP with {app['k']:.3g} parameters, sparse n = {args.n}, median of {args.repeats}")
    print()
    rows = [
        ("calibration: 1 tensor of largest size / largest", f"{mem['calibration']:.2f}x", "~1.0", ""),
        ("closed_form peak extra memory / largest tensor", f"{mem['closed_form']:.2f}x", "<= 1.5",
         "yes" if mem["closed_form"] <= 1.5 else "NO"),
        ("  of which |v| temporary (alone) / largest", f"{mem['abs']:.2f}x", "", ""),
        ("  of which torch.topk(n) (alone) / largest", f"{mem['topk']:.2f}x", "", ""),
        ("apply+restore time", f"{app['apply'] * 1e6:.0f} us", "", ""),
        ("copy.deepcopy(model) time", f"{app['deepcopy'] * 1e3:.1f} ms", "", ""),
        ("deepcopy / apply+restore", f"{app['ratio']:.0f}x", ">= 100",
         "yes" if app["ratio"] >= 100 else "NO"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("measurement", "value", "goal", "met")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
