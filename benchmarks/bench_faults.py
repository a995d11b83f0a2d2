"""Hardware faults, side by side in one run.

Part A, injection throughput: random bit-error-rate trials (draw the faults, write them into
the model, restore it) per second, on the conv weights of a ResNet-20 (CIFAR shape, 268k conv
weights), float32 storage:

- **ours**: ``BitFaultSampler(model, group).injected(ber=...)``, one trial: the Binomial count
  and sparse draw, the faulty weights' bits read once, written, and restored on exit (the
  group laid out once, before the trials; ``random_bit_faults`` + ``corrupted()`` draw the
  same faults);
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

Part E, activation faults: one flipped bit (any of the 32 of float32) of one element of one
conv output per trial, trials per second on a ResNet-20 (random weights, random inputs):

- **ours, a trial per example**: ``activation_faults(flips=1, per_example=True)``: every
  example of a batch draws its own fault, one forward pass carries ``--batch`` trials;
- **pytorchfi, a trial per example**: ``declare_neuron_fi(function=...)`` with one location
  per example of the batch (its ``batch=`` list) and a custom function that flips each
  location's bit (vectorised: one read and one write for all), the faults ours drew;
- **pytorchfi, a trial per forward**: the same faults, one per injection on one image
  (``batch_size=1``), as its single-injection use runs;
- **ours, a trial per forward**: ``activation_faults(flips=1)`` on one image.

Outputs are checked equal bit for bit: the batch of ours beside pytorchfi's batch (the same
faults, found by a hook of the benchmark's own behind ours), and single faults one image at a
time (ours by ``index=``/``bits=``).

Part F, SDC per layer: every conv/linear layer of the digits ResNet (or of the CIFAR-10
ResNet-20 with ``--cifar-weights``, on ``--cifar-test`` images) at one bit error rate
(``--sdc-ber``, float32, any bit): ``--sdc-trials`` draws in the layer's weights (each run on
every test image) and faults in the layer's output (each example its own inference and
draw), classed masked / SDC (top-1 changed) / DUE (Inf/NaN) against the golden run
(``probe.outcomes``), rates with 95% Wilson intervals.

    .venv/bin/pip install -e '.[bench]'      # pytorchfi==0.6.0
    .venv/bin/python benchmarks/bench_faults.py --cifar-weights runs/cifar10-8ep/model.pt --data-dir ../shared/data
    .venv/bin/python benchmarks/bench_faults.py --only e      # one part: a, b, e or f
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import sys
import time
from pathlib import Path

import torch

from paramcorrupt import accuracy, classification_loss, corrupted, evaluate, select
from paramcorrupt.faults import BitFaultSampler, activation_faults, bit_search, random_bit_faults
from paramcorrupt.models.resnet import resnet20_cifar
from paramcorrupt.probe.outcomes import golden_run, outcome_classes, outcome_rates

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
    pfi = fault_injection(
        model, batch_size=1, input_shape=[3, 32, 32], layer_types=[torch.nn.Conv2d]
    )
    conv_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    lines = [
        f"Part A: BER trials per second, conv weights of ResNet-20 (k = {k:,}), float32, 1 thread",
        "",
        "| BER | faulty bits (mean) | ours trials/s | pytorchfi trials/s | deepcopy+mask trials/s | ours / pytorchfi | ours / deepcopy+mask | end to end (+128-image forward): ours / pytorchfi |",
        "|---|---|---|---|---|---|---|---|",
    ]

    sampler = BitFaultSampler(model, group)  # the group laid out once, as a loop of trials would

    def one_rate(ber: float) -> str:
        gen = torch.Generator().manual_seed(0)
        drawn = []

        def ours(forward=False):  # one trial: draw, write, (evaluate,) restore
            with sampler.injected(ber=ber, generator=gen) as fault:
                drawn.append(fault.info["bit_errors"])
                if forward:
                    with torch.no_grad():
                        model(x)

        faults = [
            random_bit_faults(model, group, ber=ber, generator=torch.Generator().manual_seed(s))
            for s in range(64)
        ]
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
        def declare(plan):  # pytorchfi's injection of one plan (a deep copy of the model)
            layer, k, dim1, dim2, dim3, value = plan
            return pfi.declare_weight_fi(layer_num=layer, k=k, dim1=dim1, dim2=dim2, dim3=dim3, value=value)

        # the same faults give the same weights, bit for bit: ours as the trial writes them
        # (the sampler's injection, same seeds), and as corrupted() writes the drawn faults
        def equal_to(theirs):
            for name in params:
                assert torch.equal(params[name].view(torch.int32), theirs[name].view(torch.int32)), name

        state = {n: p.detach().clone() for n, p in params.items()}
        for seed, (fault, plan) in enumerate(zip(faults[:8], plans[:8])):
            if not plan[0]:
                continue
            theirs = dict(declare(plan).named_parameters())
            with sampler.injected(ber=ber, generator=torch.Generator().manual_seed(seed)):
                equal_to(theirs)
            with corrupted(model, fault):
                equal_to(theirs)
        assert all(torch.equal(p.view(torch.int32), state[n].view(torch.int32)) for n, p in params.items())
        turn = [0]

        def pytorchfi(forward=False):
            plan = plans[turn[0] % len(plans)]
            turn[0] += 1
            if plan[0]:
                injected = declare(plan)
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

        rates = side_by_side(
            {"ours": ours, "pytorchfi": pytorchfi, "mask": deepcopy_mask}, 3 * seconds
        )
        rate_ours, rate_pfi, rate_mask = rates["ours"], rates["pytorchfi"], rates["mask"]
        e2e = side_by_side(
            {"ours": lambda: ours(True), "pytorchfi": lambda: pytorchfi(True)}, 2 * seconds
        )
        e2e_ours, e2e_pfi = e2e["ours"], e2e["pytorchfi"]
        return (
            f"| {ber:g} | {sum(drawn) / len(drawn):.2f} | {rate_ours:,.0f} | {rate_pfi:,.0f} | {rate_mask:,.1f} | "
            f"**{rate_ours / rate_pfi:.1f}x** | **{rate_ours / rate_mask:.0f}x** | {e2e_ours / e2e_pfi:.2f}x |"
        )

    lines += [one_rate(ber) for ber in (1e-7, 1e-6, 1e-5)]
    return lines


def flip_float32(values: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """float32 values with bit ``bits[i]`` of value i flipped (bit 31, the sign, included)."""
    mask = torch.where(bits == 31, torch.tensor(-(1 << 31)), torch.bitwise_left_shift(1, bits)).to(
        torch.int32
    )
    return (values.contiguous().view(torch.int32) ^ mask).view(torch.float32)


def drawn_activation_faults(model, name, x, seed):
    """Our per-example faults (flips=1 in the output of module ``name``, one per example):
    ours' output, and the faults found by a hook of the benchmark's own behind ours (the
    element and the bit where the faulty output differs from the fault-free one)."""
    module = dict(model.named_modules())[name]
    seen = {}
    capture = lambda key: lambda m, args, out: seen.__setitem__(key, out.detach().clone())  # noqa: E731
    handle = module.register_forward_hook(capture("golden"))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    with activation_faults(
        model, name, flips=1, per_example=True, generator=torch.Generator().manual_seed(seed)
    ) as faults:
        # registered after ours, this hook sees the faulty output
        handle = module.register_forward_hook(capture("faulty"))
        try:
            with torch.no_grad():
                out = model(x)
        finally:
            handle.remove()
    xor = seen["golden"].view(torch.int32) ^ seen["faulty"].view(torch.int32)
    where = xor.nonzero()  # (example, channel, row, column), sorted by example
    assert where.shape[0] == x.shape[0] == faults.bit_errors, "one faulty bit per example"
    assert torch.equal(where[:, 0], torch.arange(x.shape[0]))
    word = xor[tuple(where.t())].long() & 0xFFFFFFFF
    bits = torch.log2(word.double()).long()
    assert torch.equal(torch.bitwise_left_shift(1, bits), word), "one bit per faulty element"
    return out, where, bits


def pfi_injector(pfi, layer: int, bits: torch.Tensor):
    """pytorchfi's custom neuron function: flips ``bits[i]`` at its i-th declared location
    (one advanced-indexing read and write for all of them: pytorchfi's own ``_set_value``
    loops over the locations)."""

    def flip(module, args, output):
        if pfi.get_current_layer() == layer:
            where = tuple(
                torch.tensor(v)
                for v in (pfi.corrupt_batch, pfi.corrupt_dim1, pfi.corrupt_dim2, pfi.corrupt_dim3)
            )
            output[where] = flip_float32(output[where], bits)
        pfi.updateLayer()

    return flip


def run_pfi(pfi, layer: int, where: torch.Tensor, bits: torch.Tensor, inputs: torch.Tensor):
    """One pytorchfi injection (``declare_neuron_fi``: a deep copy of the model with hooks)
    of the faults at ``where`` (example, channel, row, column) and a forward pass."""
    injected = pfi.declare_neuron_fi(
        function=pfi_injector(pfi, layer, bits),
        layer_num=[layer] * len(bits),
        batch=where[:, 0].tolist(),
        dim1=where[:, 1].tolist(),
        dim2=where[:, 2].tolist(),
        dim3=where[:, 3].tolist(),
    )
    pfi.reset_current_layer()
    with torch.no_grad():
        return injected(inputs)


def activation_row(model, name: str, layer: int, x, pfis, seconds: float) -> str:
    """Part E for one module: the equality checks, then the four injectors side by side."""
    pfi_batch, pfi_one = pfis
    batch = x.shape[0]
    plans = [drawn_activation_faults(model, name, x, seed) for seed in range(4)]
    # the same faults give the same outputs, bit for bit: all at once, and one at a time
    for out, where, bits in plans[:2]:
        theirs = run_pfi(pfi_batch, layer, where, bits, x)
        assert torch.equal(out.view(torch.int32), theirs.view(torch.int32)), name
        for i in range(4):
            one = where[i : i + 1].clone()
            one[:, 0] = 0
            theirs = run_pfi(pfi_one, layer, one, bits[i : i + 1], x[i : i + 1])
            index = tuple(where[i, 1:].tolist())
            with activation_faults(model, name, index=index, bits=int(bits[i]), per_example=True):
                with torch.no_grad():
                    ours_one = model(x[i : i + 1])
            assert torch.equal(ours_one.view(torch.int32), theirs.view(torch.int32)), (name, i)
    gen = torch.Generator().manual_seed(0)
    turn = [0]

    def ours_batched():
        with activation_faults(model, name, flips=1, per_example=True, generator=gen):
            with torch.no_grad():
                model(x)

    def ours_single():
        i = turn[0] % batch
        turn[0] += 1
        with activation_faults(model, name, flips=1, generator=gen), torch.no_grad():
            model(x[i : i + 1])

    def pfi_batched():
        _, where, bits = plans[turn[0] % len(plans)]
        turn[0] += 1
        run_pfi(pfi_batch, layer, where, bits, x)

    def pfi_single():
        _, where, bits = plans[0]
        i = turn[0] % batch
        turn[0] += 1
        one = where[i : i + 1].clone()
        one[:, 0] = 0
        run_pfi(pfi_one, layer, one, bits[i : i + 1], x[i : i + 1])

    injectors = {
        "ours": ours_batched,
        "pfi_b": pfi_batched,
        "pfi_1": pfi_single,
        "ours_1": ours_single,
    }
    rates = side_by_side(injectors, 4 * seconds)
    ours, pfi_b = rates["ours"] * batch, rates["pfi_b"] * batch
    pfi_1, ours_1 = rates["pfi_1"], rates["ours_1"]
    return (
        f"| {name} | {ours:,.0f} | {pfi_b:,.0f} | {pfi_1:,.1f} | {ours_1:,.1f} "
        f"| **{ours / pfi_1:.1f}x** | {ours / pfi_b:.2f}x | {ours_1 / pfi_1:.1f}x |"
    )


def part_e(seconds: float, batch: int) -> list[str]:
    """Activation faults: one flipped bit of one element of one conv output per trial."""
    from pytorchfi.core import fault_injection

    torch.manual_seed(0)
    model = resnet20_cifar().eval()
    x = torch.randn(batch, 3, 32, 32)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    pfis = [
        fault_injection(
            model, batch_size=size, input_shape=[3, 32, 32], layer_types=[torch.nn.Conv2d]
        )
        for size in (batch, 1)
    ]
    lines = [
        "Part E: activation faults, one flipped bit (any of 32, float32) of one element of one conv "
        f"output per trial, ResNet-20 (random weights, CIFAR shape), batch {batch}, 1 thread",
        "",
        "| module | ours, a trial per example (trials/s) | pytorchfi, a trial per example (trials/s) "
        "| pytorchfi, a trial per forward (trials/s) | ours, a trial per forward (trials/s) "
        "| ours per example / pytorchfi per forward | ours per example / pytorchfi per example "
        "| ours per forward / pytorchfi per forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("conv1", "layer2.0.conv1", "layer3.2.conv2"):
        lines.append(activation_row(model, name, convs.index(name), x, pfis, seconds))
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
    return {
        "flips": found,
        "curve": curve,
        "seconds": time.perf_counter() - start,
        "k": group.numel(model),
        "found": [list(f) for f in search.flips[: len(curve)]],
    }


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
            fault = random_bit_faults(
                model, group, format="int8", flips=m, generator=torch.Generator().manual_seed(t)
            )
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
    found, curve, search_s, k = (
        searched["flips"],
        searched["curve"],
        searched["seconds"],
        searched["k"],
    )
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
        + (
            f"**{random_found:,} flips** to <= {CHANCE * 100:.0f}%"
            if random_found
            else f"not at chance with {random_counts[-1]:,} flips"
        )
        + f"; flips: accuracy % = {rand_shown}",
        "",
    ]


def part_b(args) -> list[str]:
    from paramcorrupt.tasks import get_task

    lines = ["Part B: flips to chance (<= 11%), progressive bit search vs random flips, int8", ""]
    task = get_task("digits")
    attack = [next(iter(task.gradient_loader))]
    lines += flips_to_chance(
        "digits ResNet",
        task.model,
        attack,
        task.eval_loader,
        30,
        [1, 10, 100, 1000, 10_000, 100_000],
        args.trials,
    )
    if args.cifar_weights is None:
        lines.append("CIFAR-10: skipped (give --cifar-weights).")
        return lines
    state = torch.load(args.cifar_weights, weights_only=True, map_location="cpu")
    state = state.get("model", state)
    task = get_task(
        "cifar10",
        data_dir=args.data_dir,
        state_dict=state,
        limit_test=args.cifar_test,
        augment=False,
        batch_size=128,
    )
    attack = [next(iter(task.gradient_loader))]
    lines += flips_to_chance(
        "CIFAR-10 ResNet-20",
        task.model,
        attack,
        task.eval_loader,
        60,
        [1, 10, 100, 1000, 10_000, 100_000, 300_000, 1_000_000],
        args.trials,
    )
    return lines


def sdc_row(model, loader, golden, name: str, ber: float, weight_trials: int, seed: int) -> str:
    """Part F for one layer: faults in its weights, then in its output."""

    def shown(r):  # count, rate and its 95% interval in percent
        return f"{r['count']}: {r['rate'] * 100:.2f}% [{r['low'] * 100:.2f}, {r['high'] * 100:.2f}]"

    group = select(model, f"{name}.weight", name=name)
    gen = torch.Generator().manual_seed(seed)
    drawn = [random_bit_faults(model, group, ber=ber, generator=gen) for _ in range(weight_trials)]
    bit_errors = sum(f.info["bit_errors"] for f in drawn) / weight_trials
    # a draw that changed no weight is masked on every example, exactly: not run
    changed = [f for f in drawn if f.info["changed"]]
    classes = outcome_classes(model, loader, changed, golden=golden).classes
    unchanged = torch.zeros(weight_trials - len(changed), golden.examples, dtype=classes.dtype)
    classes = torch.cat([classes, unchanged])
    per_trial, per_example = (
        outcome_rates(classes, per="trial"),
        outcome_rates(classes, per="example"),
    )
    act_gen = torch.Generator().manual_seed(seed)
    hooks = activation_faults(model, name, ber=ber, per_example=True, rearm=True, generator=act_gen)
    outputs = outcome_classes(model, loader, [hooks], golden=golden)
    # every example drew its own faults: independent inferences
    per_inference = outputs.rates(per="example")
    inferences = sum(r["per_example"].numel() for r in hooks.records)
    faulty = sum(int(r["per_example"].sum()) for r in hooks.records) / max(inferences, 1)
    return (
        f"| {name} | {group.numel(model):,} | {bit_errors:.2f} | {shown(per_trial['sdc'])} "
        f"| {shown(per_trial['due'])} | {shown(per_example['sdc'])} "
        f"| {_output_elements(model, name, loader):,} | {faulty:.2f} "
        f"| {shown(per_inference['sdc'])} | {shown(per_inference['due'])} |"
    )


def sdc_per_layer(
    model, loader, ber: float, weight_trials: int, seed: int = 0, only: str | None = None
) -> list[str]:
    """SDC and DUE rates per conv/linear layer at one bit error rate (float32, any bit):
    faults in the layer's weights (``weight_trials`` draws, each run over the whole loader)
    and in its output (each example its own inference with its own draw, one pass), classed
    against the golden run (top-1 changed: SDC; Inf/NaN: DUE) with 95% Wilson intervals."""
    model.eval()
    golden = golden_run(model, loader)
    n = golden.examples
    convs = (torch.nn.Conv2d, torch.nn.Linear)
    layers = [name for name, m in model.named_modules() if isinstance(m, convs)]
    position = {name: i for i, name in enumerate(layers)}  # each layer its own seed, in any share
    if only:  # comma-separated fnmatch patterns: a share of the layers (several processes)
        layers = [n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in only.split(","))]
    lines = [
        f"| layer | weights | weight faulty bits (mean) "
        f"| weights: SDC per trial ({weight_trials} trials) | weights: DUE per trial "
        f"| weights: SDC per example ({weight_trials} x {n:,}) | output elements "
        f"| output faulty bits per inference (mean) | outputs: SDC per inference ({n:,}) "
        "| outputs: DUE per inference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in layers:  # each row printed as it is done (stderr): a long run shows progress
        lines.append(
            sdc_row(model, loader, golden, name, ber, weight_trials, seed + position[name])
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _output_elements(model, name, loader) -> int:
    """Elements of one example's output of module ``name``."""
    seen = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda m, a, out: seen.append(out[0].numel())
    )
    try:
        with torch.no_grad():
            model(next(iter(loader))[0][:1])
    finally:
        handle.remove()
    return seen[0]


def part_f(args) -> list[str]:
    from paramcorrupt.tasks import get_task

    ber = args.sdc_ber
    lines = [
        f"Part F: SDC and DUE per layer at BER {ber:g} (float32, any bit), 95% Wilson intervals",
        "",
    ]
    if args.cifar_weights is None:
        task = get_task("digits")
        lines += ["**digits ResNet** (seed 0, 30 epochs, its 360 test images)", ""]
    else:
        state = torch.load(args.cifar_weights, weights_only=True, map_location="cpu")
        state = state.get("model", state)
        task = get_task(
            "cifar10",
            data_dir=args.data_dir,
            state_dict=state,
            limit_test=args.cifar_test,
            augment=False,
            batch_size=250,
        )
        lines += [
            f"**CIFAR-10 ResNet-20** ({args.cifar_weights}, the first {args.cifar_test:,} test images)",
            "",
        ]
    start = time.perf_counter()
    metrics = {"accuracy": accuracy}
    clean = evaluate(task.model, task.eval_loader, classification_loss, metrics)["accuracy"]
    lines[-2] = lines[-2].rstrip(")") + f", clean accuracy {clean * 100:.2f}%)"
    lines += sdc_per_layer(task.model, task.eval_loader, ber, args.sdc_trials, only=args.sdc_layers)
    lines += ["", f"({time.perf_counter() - start:.0f} s)"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per throughput measurement"
    )
    parser.add_argument("--trials", type=int, default=5, help="random-flip trials per count")
    parser.add_argument("--cifar-weights", type=Path, default=None)
    parser.add_argument(
        "--cifar-test", type=int, default=1000, help="test images for the CIFAR-10 accuracy"
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch", type=int, default=128, help="inputs per forward pass in part E")
    parser.add_argument("--sdc-ber", type=float, default=1e-5, help="bit error rate of part F")
    parser.add_argument(
        "--sdc-trials", type=int, default=20, help="weight-fault trials per layer in part F"
    )
    parser.add_argument(
        "--sdc-layers", default=None, help="part F: only these layers (patterns, a,b)"
    )
    parser.add_argument("--only", choices=("a", "b", "e", "f"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = []
    if args.only in (None, "a"):
        lines += part_a(args.seconds) + [""]
    if args.only in (None, "e"):
        lines += part_e(args.seconds, args.batch) + [""]
    if args.only in (None, "b"):
        lines += part_b(args) + [""]
    if args.only in (None, "f"):
        lines += part_f(args)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
