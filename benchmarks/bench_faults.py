"""Hardware faults, side by side in one run.

Part A, injection throughput: random bit-error-rate trials (draw the faults, write them into
the model, restore it) per second, on the conv weights of a ResNet-20 (CIFAR shape, 268k conv
weights), float32 storage:

- **ours**: ``random_bit_faults`` (Binomial count, sparse draw) + ``corrupted()`` (writes the
  values in place, restores the saved bits);
- **pytorchfi 0.6.0**: it has no bit-error-rate weight model, so the *same* faults (drawn by
  our sampler, outside the timer's share for pytorchfi) are injected through its
  ``declare_weight_fi(function=...)``, which deep-copies the model per injection;
- **deepcopy + mask**: what one writes without either: deep-copy the model, draw a dense
  k x 32 Bernoulli mask, xor it into the weights' bits.

The injected weights of ours and pytorchfi's are checked equal bit for bit. An end-to-end
figure (the trial plus a forward pass of 128 images) is printed beside it.

Part B, flips to chance: the flips the progressive bit search needs to bring a model stored
in int8 (per tensor) to chance accuracy (<= 11%: 10 classes), against random flips (mean
over trials), on the digits ResNet and on the CIFAR-10 ResNet-20 (weights from
``--cifar-weights``, a state dict or a training checkpoint; skipped without one). The group
is the conv and linear weights (the quantised layers, as in the Bit-Flip Attack paper).

    .venv/bin/pip install -e '.[bench]'      # pytorchfi==0.6.0
    .venv/bin/python benchmarks/bench_faults.py --cifar-weights runs/cifar10/model.pt --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from paramcorrupt import accuracy, classification_loss, corrupted, evaluate, select
from paramcorrupt.faults import bit_search, random_bit_faults
from paramcorrupt.models.resnet import resnet20_cifar

CHANCE = 0.11


def conv_weights(model):
    return select(model, types="conv", kind="weight", name="conv weights")


def side_by_side(fns: dict, seconds: float, rounds: int = 10) -> dict:
    """Calls per second of each function, measured in interleaved rounds (A B C A B C ...)
    so that a change in the machine's load falls on all of them alike."""
    calls = dict.fromkeys(fns, 0)
    spent = dict.fromkeys(fns, 0.0)
    for fn in fns.values():
        fn()  # warm up
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            while True:
                fn()
                calls[name] += 1
                if time.perf_counter() - start >= seconds / rounds:
                    break
            spent[name] += time.perf_counter() - start
    return {name: calls[name] / spent[name] for name in fns}


def part_a(seconds: float) -> list[str]:
    from pytorchfi.core import fault_injection

    torch.manual_seed(0)
    model = resnet20_cifar().eval()
    group = conv_weights(model)
    params = group.tensors(model)
    k = sum(p.numel() for p in params.values())
    x = torch.randn(128, 3, 32, 32)
    pfi = fault_injection(model, batch_size=1, input_shape=[3, 32, 32], layer_types=[torch.nn.Conv2d])
    conv_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    lines = [
        f"Part A: BER trials per second, conv weights of ResNet-20 (k = {k:,}), float32, 1 thread",
        "",
        "| BER | faulty bits (mean) | ours trials/s | pytorchfi trials/s | deepcopy+mask trials/s | ours / pytorchfi | ours / deepcopy+mask | end to end (+128-image forward): ours / pytorchfi |",
        "|---|---|---|---|---|---|---|---|",
    ]
    def one_rate(ber: float) -> str:
        gen = torch.Generator().manual_seed(0)
        drawn = []

        def ours(forward=False):
            fault = random_bit_faults(model, group, ber=ber, generator=gen)
            drawn.append(fault.info["bit_errors"])
            with corrupted(model, fault):
                if forward:
                    with torch.no_grad():
                        model(x)

        faults = [random_bit_faults(model, group, ber=ber, generator=torch.Generator().manual_seed(s)) for s in range(64)]
        plans = []
        for fault in faults:  # pytorchfi's locations: (layer, k, c, kh, kw) and the value to write
            layer, kk, c, kh, kw, values = [], [], [], [], [], []
            for name, idx in fault.indices.items():
                module = name.rsplit(".", 1)[0]
                shape = params[name].shape
                for i, v in zip(idx.tolist(), fault.values[name].tolist()):
                    pos = torch.unravel_index(torch.tensor(i), shape)
                    layer.append(conv_names.index(module))
                    kk.append(int(pos[0]))
                    c.append(int(pos[1]))
                    kh.append(int(pos[2]))
                    kw.append(int(pos[3]))
                    values.append(v)
            plans.append((layer, kk, c, kh, kw, values))
        # the same faults give the same weights, bit for bit
        for fault, plan in zip(faults[:8], plans[:8]):
            if not plan[0]:
                continue
            injected = pfi.declare_weight_fi(layer_num=plan[0], k=plan[1], dim1=plan[2], dim2=plan[3], dim3=plan[4], value=plan[5])
            with corrupted(model, fault):
                theirs = dict(injected.named_parameters())
                for name in params:
                    assert torch.equal(params[name].view(torch.int32), theirs[name].view(torch.int32)), name
        turn = [0]

        def pytorchfi(forward=False):
            plan = plans[turn[0] % len(plans)]
            turn[0] += 1
            if plan[0]:
                injected = pfi.declare_weight_fi(layer_num=plan[0], k=plan[1], dim1=plan[2], dim2=plan[3], dim3=plan[4], value=plan[5])
            else:
                injected = copy.deepcopy(model)
            if forward:
                with torch.no_grad():
                    injected(x)

        mask_gen = torch.Generator().manual_seed(0)
        weights = torch.tensor([1 << b for b in range(32)], dtype=torch.int64)

        def deepcopy_mask():
            copied = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in copied.named_parameters():
                    if name not in params:
                        continue
                    hits = torch.rand(p.numel(), 32, generator=mask_gen) < ber
                    mask = (hits.long() * weights).sum(1)
                    bits = p.view(torch.int32).reshape(-1).long() ^ mask
                    p.copy_(bits.to(torch.int32).view(torch.float32).view_as(p))

        rates = side_by_side({"ours": ours, "pytorchfi": pytorchfi, "mask": deepcopy_mask}, 3 * seconds)
        rate_ours, rate_pfi, rate_mask = rates["ours"], rates["pytorchfi"], rates["mask"]
        e2e = side_by_side({"ours": lambda: ours(True), "pytorchfi": lambda: pytorchfi(True)}, 2 * seconds)
        e2e_ours, e2e_pfi = e2e["ours"], e2e["pytorchfi"]
        return (
            f"| {ber:g} | {sum(drawn) / len(drawn):.2f} | {rate_ours:,.0f} | {rate_pfi:,.0f} | {rate_mask:,.1f} | "
            f"**{rate_ours / rate_pfi:.1f}x** | **{rate_ours / rate_mask:.0f}x** | {e2e_ours / e2e_pfi:.2f}x |"
        )

    lines += [one_rate(ber) for ber in (1e-7, 1e-6, 1e-5)]
    return lines


def search_to_chance(model, attack, evaluation, budget: int) -> dict:
    """Flips of the progressive bit search (int8 per tensor, the conv and linear weights)
    until the test accuracy is <= CHANCE, or ``budget`` flips: the count (None when not
    reached), the accuracy after each flip, the seconds, k and the flips found."""
    group = select(model, types=("conv", "linear"), kind="weight", name="weights")
    metrics = {"accuracy": accuracy}
    start = time.perf_counter()
    search = bit_search(model, attack, classification_loss, group, flips=1)
    found, curve = None, []
    for m in range(1, budget + 1):
        search.extend(m)
        with corrupted(model, search.corruption(m)):
            acc = evaluate(model, evaluation, classification_loss, metrics)["accuracy"]
        curve.append(acc)
        if acc <= CHANCE:
            found = m
            break
    return {"flips": found, "curve": curve, "seconds": time.perf_counter() - start, "k": group.numel(model),
            "found": [list(f) for f in search.flips[: len(curve)]]}


def random_to_chance(model, evaluation, counts, trials: int) -> dict:
    """Random flips (any bit of the int8 codes, ``trials`` draws per count) at ``counts``
    until the mean test accuracy is <= CHANCE: the count (None when not reached) and the
    [count, mean accuracy] pairs measured."""
    group = select(model, types=("conv", "linear"), kind="weight", name="weights")
    metrics = {"accuracy": accuracy}
    curve, found = [], None
    for m in counts:
        accs = []
        for t in range(trials):
            fault = random_bit_faults(model, group, format="int8", flips=m, generator=torch.Generator().manual_seed(t))
            with corrupted(model, fault):
                accs.append(evaluate(model, evaluation, classification_loss, metrics)["accuracy"])
        curve.append([m, sum(accs) / len(accs)])
        if curve[-1][1] <= CHANCE:
            found = m
            break
    return {"flips": found, "curve": curve, "trials": trials}


def flips_to_chance(name, model, attack, evaluation, budget, random_counts, trials) -> list[str]:
    clean = evaluate(model, evaluation, classification_loss, {"accuracy": accuracy})["accuracy"]
    searched = search_to_chance(model, attack, evaluation, budget)
    found, curve, search_s, k = searched["flips"], searched["curve"], searched["seconds"], searched["k"]
    randomly = random_to_chance(model, evaluation, random_counts, trials)
    random_found, random_curve = randomly["flips"], randomly["curve"]
    shown = ", ".join(f"{a * 100:.1f}" for a in curve)
    rand_shown = ", ".join(f"{m:,}: {a * 100:.1f}" for m, a in random_curve)
    return [
        f"**{name}** (int8 per tensor, k = {k:,} conv/linear weights, clean accuracy {clean * 100:.2f}%)",
        "",
        f"- bit search: {'**' + str(found) + ' flips**' if found else f'not at chance after {budget} flips'} "
        f"to <= {CHANCE * 100:.0f}% ({search_s:.0f} s); accuracy after each flip: {shown}",
        f"- random flips (mean of {trials}): "
        + (f"**{random_found:,} flips** to <= {CHANCE * 100:.0f}%" if random_found else f"not at chance with {random_counts[-1]:,} flips")
        + f"; flips: accuracy % = {rand_shown}",
        "",
    ]


def part_b(args) -> list[str]:
    from paramcorrupt.tasks import get_task

    lines = ["Part B: flips to chance (<= 11%), progressive bit search vs random flips, int8", ""]
    task = get_task("digits")
    attack = [next(iter(task.gradient_loader))]
    lines += flips_to_chance("digits ResNet", task.model, attack, task.eval_loader, 30, [1, 10, 100, 1000, 10_000, 100_000], args.trials)
    if args.cifar_weights is None:
        lines.append("CIFAR-10: skipped (give --cifar-weights).")
        return lines
    state = torch.load(args.cifar_weights, weights_only=True, map_location="cpu")
    state = state.get("model", state)
    task = get_task("cifar10", data_dir=args.data_dir, state_dict=state, limit_test=args.cifar_test, augment=False, batch_size=128)
    attack = [next(iter(task.gradient_loader))]
    lines += flips_to_chance("CIFAR-10 ResNet-20", task.model, attack, task.eval_loader, 60, [1, 10, 100, 1000, 10_000, 100_000, 300_000, 1_000_000], args.trials)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput measurement")
    parser.add_argument("--trials", type=int, default=5, help="random-flip trials per count")
    parser.add_argument("--cifar-weights", type=Path, default=None)
    parser.add_argument("--cifar-test", type=int, default=1000, help="test images for the CIFAR-10 accuracy")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--only", choices=("a", "b"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = []
    if args.only in (None, "a"):
        lines += part_a(args.seconds) + [""]
    if args.only in (None, "b"):
        lines += part_b(args)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

