"""Peak memory and time of one probe vs model size: GPT-2 models of 1e6 .. 1e8 parameters.

    .venv/bin/python benchmarks/bench_scale.py              # ~1e6, 1e7, 3e7, 1e8 parameters
    .venv/bin/python benchmarks/bench_scale.py --quick      # ~1e6 only, seconds
    .venv/bin/python benchmarks/bench_scale.py --sizes 1e6,1e7 --accumulate float64,float32

One probe point = the data set gradient (``dataset_gradient``: ``--batches`` batches of
``--batch`` x ``--seq`` tokens), the gradient-based corruption (closed form, n = 100, L_inf,
and n = k, L2), and one evaluation of the corrupted model (apply, evaluate, restore). The
model is a randomly initialised ``GPT2LMHeadModel`` (float32, built from a config offline);
values do not matter here, sizes do.

How memory is measured: each (size, accumulation dtype) runs in a fresh child process (this
script with ``--child``); before each phase the child notes VmRSS and resets the peak counter
VmHWM to it (writing "5" to /proc/self/clear_refs), and after it reads VmHWM: the phase's
peak extra memory over what was resident before (the model and the data). The parent prints
all points side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import _reset_peak  # noqa: E402  (one way to reset the peak RSS)

MIB = 2**20

#: approximate size -> GPT-2 shape (n_embd, n_layer, vocab)
SHAPES = {
    "1e6": (128, 4, 1024),
    "1e7": (256, 12, 4096),
    "3e7": (512, 9, 8192),
    "1e8": (768, 13, 8192),
}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _phase(fn):
    before = _status("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    return out, {"seconds": seconds, "peak_extra_mib": (peak - before) / MIB, "peak_mib": peak / MIB, "reset": reset}


def child(size: str, accumulate: str, batches: int, batch: int, seq: int, threads: int) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from paramcorrupt import (
        Constraint,
        corrupted,
        dataset_gradient,
        evaluate,
        gradient_corruption,
        select,
    )
    from paramcorrupt.parallel.fsdp import gradient_memory
    from paramcorrupt.tasks.hf import hf_loss

    torch.set_num_threads(threads)
    n_embd, n_layer, vocab = SHAPES[size]
    config = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=max(1, n_embd // 64), vocab_size=vocab,
                        n_positions=seq, bos_token_id=0, eos_token_id=0, use_cache=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    k = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(batches):
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        data.append({"input_ids": ids, "labels": ids})
    group = select(model, name="all")
    dtype = {"float64": torch.float64, "float32": torch.float32, "param": None}[accumulate]
    # warm-up (lazy imports, kernel dispatch): one 1 x 8-token gradient and closed form, dropped
    warm = dataset_gradient(model, [{k2: v[:1, :8] for k2, v in data[0].items()}], hf_loss, group, accumulate_dtype=dtype)
    gradient_corruption(warm, Constraint(float("inf"), 1e-2, 100), group)
    del warm
    rss_model = _status("VmRSS") / MIB
    grad, grad_m = _phase(lambda: dataset_gradient(model, data, hf_loss, group, accumulate_dtype=dtype))
    sparse, sparse_m = _phase(lambda: gradient_corruption(grad, Constraint(float("inf"), 1e-2, 100), group))
    dense, dense_m = _phase(lambda: gradient_corruption(grad, Constraint(2.0, 1e-1, None), group))
    del dense

    def corrupted_eval():
        with corrupted(model, sparse):
            return evaluate(model, data[:1], hf_loss)["loss"]

    loss, eval_m = _phase(corrupted_eval)
    return {
        "size": size, "k": k, "accumulate": accumulate, "rss_model_mib": rss_model,
        "gradient": grad_m, "closed_form_n100": sparse_m, "closed_form_dense_l2": dense_m, "eval": eval_m,
        "predicted_sums_mib": gradient_memory(model, group, dtype)["sums"] / MIB,
        # VmHWM is reset before each phase: the run's peak is the largest phase peak
        "peak_rss_mib": max(m["peak_mib"] for m in (grad_m, sparse_m, dense_m, eval_m)),
        "loss_after": loss, "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7,3e7,1e8")
    parser.add_argument("--accumulate", default="float64,float32", help="running-sum dtypes: float64, float32, param")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1: on a shared 2-core CPU, 2 threads measured 70x slower)")
    parser.add_argument("--quick", action="store_true", help="1e6 parameters only")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "ACCUMULATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.batches, args.batch, args.seq, args.threads)))
        return
    sizes = ["1e6"] if args.quick else [s.strip() for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown size {unknown[0]!r}; expected some of {', '.join(SHAPES)}")
    rows = []
    for size in sizes:
        for acc in args.accumulate.split(","):
            cmd = [sys.executable, __file__, "--child", size, acc, "--batches", str(args.batches), "--batch",
                   str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                print(f"{size} {acc}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  done {size} ({rows[-1]['k']:,} parameters, {acc} sums)", file=sys.stderr, flush=True)
    tokens = args.batches * args.batch * args.seq
    print(f"GPT-2 (float32), {args.batches} batches x {args.batch} x {args.seq} tokens ({tokens} tokens), "
          f"{args.threads} threads; peak extra memory over the resident model and data, per phase")
    print()
    print("| parameters | sums | model RSS (MiB) | gradient s | gradient peak extra (MiB) | predicted sums (MiB) "
          "| closed form n=100 s / MiB | closed form n=k L2 s / MiB | corrupted eval s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']:,} | {r['accumulate']} | {r['rss_model_mib']:.0f} | {r['gradient']['seconds']:.2f} "
              f"| {r['gradient']['peak_extra_mib']:.0f} | {r['predicted_sums_mib']:.0f} "
              f"| {r['closed_form_n100']['seconds']:.2f} / {r['closed_form_n100']['peak_extra_mib']:.0f} "
              f"| {r['closed_form_dense_l2']['seconds']:.2f} / {r['closed_form_dense_l2']['peak_extra_mib']:.0f} "
              f"| {r['eval']['seconds']:.2f} | {r['peak_rss_mib']:.0f} |")
    if rows and not all(r["gradient"]["reset"] for r in rows):
        print("\n(clear_refs could not be written: peak extra is an upper bound)")


if __name__ == "__main__":
    main()
