"""Flips to chance of the bit search on the model as stored (issue 20, point 4).

The digits ResNet (the built-in task, trained by its recipe) quantised as a whole by
``paramcorrupt.quantize`` in int8 (per tensor), int4 (groups of 32, padded), nf4 (blocks of
64) and mxfp4 (padded); the progressive bit search over the stored image (codes, scales, zero
points; ``bit_search(..., stored=...)``) on the conv and linear weights, one attack batch,
``candidates=1``, until the accuracy on the test split is <= 11% (10 classes). Printed per
format: the float and quantised clean accuracy, the flips needed (and how many of them hit a
scale), the accuracy after each flip, and random stored-bit flips of the same count (mean of
``--trials``). Beside it the same search with ``k_top=10`` (code bits of the 10 weights of
largest |g| per tensor, scale bits all), and the search over the codes alone
(``fields=("codes",)``: what the flips to chance would be were the scales out of reach), with
its accuracy after each flip.

    .venv/bin/python benchmarks/bit_search_stored.py [--budget 30] [--trials 10]
"""

from __future__ import annotations

import argparse
import time

import torch

import paramcorrupt as pc
from paramcorrupt.faults import bit_search, random_bit_faults
from paramcorrupt.tasks import get_task

CHANCE = 0.11
FORMATS = [("int8", {}), ("int4", {"group_size": 32, "pad": True}), ("nf4", {"block_size": 64}), ("mxfp4", {"pad": True})]


def accuracy_of(model, loader) -> float:
    return pc.evaluate(model, loader, pc.classification_loss, {"accuracy": pc.accuracy})["accuracy"]


def to_chance(model, group, attack, loader, stored, budget, k_top=None, fields=("codes", "scales", "zero_points")):
    """(flips to chance or None, accuracies after each flip, the search, seconds)."""
    start = time.perf_counter()
    search = bit_search(model, attack, pc.classification_loss, group, flips=1, format="float32", stored=stored,
                        k_top=k_top, fields=fields)
    curve = []
    for m in range(1, budget + 1):
        search.extend(m)
        with pc.corrupted(model, search.corruption(m)):
            curve.append(accuracy_of(model, loader))
        if curve[-1] <= CHANCE:
            return m, curve, search, time.perf_counter() - start
        if search.ended:
            break
    return None, curve, search, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task("digits")
    model = task.model
    group = pc.select(model, types=("conv", "linear"), kind="weight", name="weights")
    attack = [next(iter(task.gradient_loader))]
    float_acc = accuracy_of(model, task.eval_loader)
    print(f"digits ResNet, {group.numel(model):,} conv/linear weights, float32 accuracy {float_acc * 100:.2f}%")
    print()
    print("| format | stored bits | clean accuracy | search: flips to <= 11% (in scales) | accuracy after each flip | "
          "random flips of that count (mean) | k_top=10: flips (in scales) | codes alone: flips | codes alone: accuracy after each flip | "
          "seconds (search / k_top / codes) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fmt, options in FORMATS:
        stored = pc.quantize(model, fmt, **options)
        try:
            clean = accuracy_of(model, task.eval_loader)
            found, curve, search, seconds = to_chance(model, group, attack, task.eval_loader, stored, args.budget)
            m = found or len(curve)
            scales = search.corruption(m).info["scale_faults"]
            rand = []
            for t in range(args.trials):
                fault = random_bit_faults(model, group, flips=m, generator=torch.Generator().manual_seed(t), stored=stored)
                with pc.corrupted(model, fault):
                    rand.append(accuracy_of(model, task.eval_loader))
            k_found, k_curve, k_search, k_seconds = to_chance(model, group, attack, task.eval_loader, stored, args.budget, k_top=10)
            k_m = k_found or len(k_curve)
            k_scales = k_search.corruption(k_m).info["scale_faults"]
            c_found, c_curve, _, c_seconds = to_chance(model, group, attack, task.eval_loader, stored, args.budget, fields=("codes",))
            c_text = f"**{c_found}**" if c_found else f"not within {len(c_curve)}"
            c_shown = ", ".join(f"{a * 100:.1f}" for a in c_curve)
            shown = ", ".join(f"{a * 100:.1f}" for a in curve)
            found_text = f"**{found}** ({scales})" if found else f"not within {len(curve)} ({scales})"
            k_text = f"{k_found} ({k_scales})" if k_found else f"not within {len(k_curve)} ({k_scales})"
            bits = sum(st.nbits for st in stored.values())
            print(f"| {fmt} {options or ''} | {bits:,} | {clean * 100:.2f}% | {found_text} | {shown} | "
                  f"{sum(rand) / len(rand) * 100:.1f}% | {k_text} | {c_text} | {c_shown} | {seconds:.1f} / {k_seconds:.1f} / {c_seconds:.1f} |")
        finally:
            stored.restore(model)


if __name__ == "__main__":
    main()
