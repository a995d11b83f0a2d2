"""Stored formats side by side in one run (issue 20): what each format costs and survives.

Part 1, a classifier stored in float32, bf16, fp8-e4m3, int8, int4, nf4 and mxfp4 (each a
copy of one trained model quantised as a whole by ``paramcorrupt.quantize``: every conv and
linear weight its decoded code; biases and batch norm stay float32):

- the clean accuracy of the stored model (beside the float model's);
- accuracy against the bit error rate (``--bers``, default 1e-7 .. 1e-3, ``--trials`` per
  BER, default 10): ``bitflip`` over the whole stored image (``random_bit_faults(...,
  stored=q)``: every code, scale and zero-point bit fails independently at the BER), the
  mean faulty bits and the share that hit scales;
- the flips the progressive bit search (``bit_search(..., stored=q)``: every stored bit a
  candidate, scales and zero points included; one batch of attack data, ``candidates=1``,
  as ``bench_faults.py`` Part B) needs to bring the stored model to chance (<= 11%), and how
  many of them hit scales;
- trials per second (draw the faults, write them, restore; and the same with one evaluation
  of the test set), the formats measured in interleaved rounds, with the ratio to float32.

The digits ResNet (trained here, seed 0, the task's 30-epoch recipe) always runs; the
CIFAR-10 ResNet-20 runs when ``--cifar-weights`` names its weights (a state dict or a
training checkpoint, as ``bench_faults.py``).

Part 2, the costs on a GPT-2-shaped causal LM of about 1e8 parameters (random weights,
``transformers`` ``GPT2Config(n_embd=768, n_layer=13, vocab_size=8192)``, no hub; its
``Conv1D`` projections converted to ``nn.Linear`` with the same weights, so that torchao's
``quantize_`` takes them; the outputs are checked equal): the 52 projection matrices
(92M weights) stored in int8 (per tensor) and nf4 by ``paramcorrupt.quantize`` as a sweep
does (``restorable="file"``: the float weights wait in a temporary file; the codes are
re-derived from the decoded weights, only scales and zero points held), beside the float32 model faulted as it is and torchao's
``Int8WeightOnlyConfig`` (per row) probed in place. For each: trials per second of a BER
trial (draw, write, restore; and with one forward pass of 2 x 32 tokens), measured in
interleaved rounds, and the memory over the model's own: what the quantisation holds after
it returns (RSS, and what it accounts: ``Quantized.held_bytes``) and the peak RSS above that
during the trials (VmHWM reset before each phase; the part runs in a child process with a
fixed mmap threshold so that freed buffers leave the RSS, as ``bench_scale.py``).

    .venv/bin/python benchmarks/bench_formats.py > runs/bench_formats.log 2>&1 &
    .venv/bin/python benchmarks/bench_formats.py --cifar-weights runs/cifar10-8ep/model.pt --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from paramcorrupt import accuracy, classification_loss, corrupted, evaluate, quantize
from paramcorrupt.faults import bit_search, random_bit_faults
from paramcorrupt.faults.stored import stored_image
from paramcorrupt.formats.model import default_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_faults import side_by_side  # noqa: E402  (a sibling script, not a package)

CHANCE = 0.11
MIB = 1024 * 1024
#: label -> (quantiser, options): the formats of Part 1
STORED = {"float32": ("float32", {}), "bf16": ("bfloat16", {}), "fp8-e4m3": ("fp8-e4m3", {}), "int8": ("int8", {}),
          "int4": ("int4", {"group_size": 32, "pad": True}), "nf4": ("nf4", {}), "mxfp4": ("mxfp4", {"pad": True})}


def metrics_of(model, loader) -> tuple[float, float]:
    out = evaluate(model, loader, classification_loss, {"accuracy": accuracy})
    return out["accuracy"], out["loss"]


class Stored:
    """One copy of the model stored in one format."""

    def __init__(self, label: str, model, evaluation) -> None:
        fmt, options = STORED[label]
        self.label, self.format, self.options = label, fmt, options
        self.model = copy.deepcopy(model)
        self.group = default_weights(self.model)
        self.q = quantize(self.model, fmt, self.group, **options)
        self.weights = self.group.numel(self.model)
        # the bits a BER acts on: every stored entry's own bits (padding included; an FP4 code
        # kept in a byte counts 4), fewer than the memory's where a container is wider
        self.candidates = stored_image(self.group.tensors(self.model), self.q, "any").total
        self.clean, _ = metrics_of(self.model, evaluation)

    def fault(self, ber: float, generator: torch.Generator):
        return random_bit_faults(self.model, self.group, ber=ber, generator=generator, stored=self.q)


def ber_curve(s: Stored, evaluation, bers: list[float], trials: int) -> dict:
    """Accuracy (mean, std over trials), faulty bits and their share in scales, per BER."""
    out = {}
    for i, ber in enumerate(bers):
        accs, faults, scales, nonfinite = [], [], [], 0
        for t in range(trials):
            fault = s.fault(ber, torch.Generator().manual_seed(1000 * i + t))
            with corrupted(s.model, fault):
                acc, loss = metrics_of(s.model, evaluation)
            accs.append(acc)
            faults.append(fault.info["bit_errors"])
            scales.append(fault.info.get("scale_faults", 0) + fault.info.get("zero_point_faults", 0))
            nonfinite += not math.isfinite(loss)
        out[ber] = {
            "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "faults": statistics.mean(faults),
            "scale_faults": statistics.mean(scales),
            "nonfinite": nonfinite,
        }
    return out


#: whether this bit_search takes ``fields`` (the stored fields it may flip: codes alone)
CODES_ONLY = "fields" in inspect.signature(bit_search).parameters


def search_to_chance(s: Stored, attack, evaluation, budget: int, codes_only: bool = False) -> dict:
    """Flips of the progressive bit search over the stored image (codes, scales, zero
    points: ``bit_search(stored=...)``; the codes alone with ``codes_only``) until accuracy
    <= CHANCE, the budget, or the search's end (an Inf/NaN attack loss)."""
    start = time.perf_counter()
    fields = {"fields": ("codes",)} if codes_only else {}
    search = bit_search(s.model, attack, classification_loss, s.group, flips=1, stored=s.q, **fields)
    curve, found, info = [], None, {}
    for m in range(1, budget + 1):
        search.extend(m)
        if len(search.flips) < m:  # ended: the attack loss is Inf/NaN, no gradient left
            break
        fault = search.corruption(m)
        with corrupted(s.model, fault):
            acc, _ = metrics_of(s.model, evaluation)
        curve.append(acc)
        info = fault.info
        if acc <= CHANCE:
            found = m
            break
    return {"found": found, "curve": curve, "seconds": time.perf_counter() - start, "budget": budget,
            "scale_flips": info.get("scale_faults", 0) + info.get("zero_point_faults", 0), "ended": search.ended}


def trial_rates(stored: dict[str, Stored], evaluation, ber: float, seconds: float) -> dict:
    """Trials per second of every format, interleaved: injection alone and with an evaluation."""

    def trial(s: Stored, gen: torch.Generator, evaluate_too: bool):
        def run():
            with corrupted(s.model, s.fault(ber, gen)):
                if evaluate_too:
                    metrics_of(s.model, evaluation)
        return run

    inject = side_by_side({k: trial(s, torch.Generator().manual_seed(7), False) for k, s in stored.items()}, seconds)
    full = side_by_side({k: trial(s, torch.Generator().manual_seed(7), True) for k, s in stored.items()}, seconds)
    return {"inject": inject, "evaluate": full}


def searched(sr: dict) -> str:
    shown = ", ".join(f"{a * 100:.1f}" for a in sr["curve"])
    if sr["found"]:
        return f"**{sr['found']}** ({sr['scale_flips']} in scales; {sr['seconds']:.0f} s; {shown})"
    end = "the attack loss became Inf/NaN" if sr["ended"] else f"{sr['budget']} flips"
    return f"not at chance after {len(sr['curve'])} ({end}; {sr['seconds']:.0f} s; {shown})"


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def part1_model(name: str, model, attack, evaluation, args, budget: int) -> list[str]:
    """Part 1's tables for one trained model."""
    start = time.perf_counter()
    float_acc, _ = metrics_of(model, evaluation)
    stored = {label: Stored(label, model, evaluation) for label in args.formats}
    curves = {label: ber_curve(s, evaluation, args.bers, args.trials) for label, s in stored.items()}
    print(f"[{time.perf_counter() - start:6.0f} s] {name}: BER curves done", file=sys.stderr, flush=True)
    searches = {label: search_to_chance(s, attack, evaluation, budget) for label, s in stored.items()}
    codes = {label: search_to_chance(s, attack, evaluation, budget, True) for label, s in stored.items()} if CODES_ONLY else {}
    print(f"[{time.perf_counter() - start:6.0f} s] {name}: bit searches done", file=sys.stderr, flush=True)
    rates = trial_rates(stored, evaluation, args.rate_ber, args.seconds)
    k = next(iter(stored.values())).weights
    lines = [
        f"### {name}: k = {k:,} conv/linear weights, float32 accuracy {float_acc * 100:.2f}%",
        "",
        f"Accuracy (%) after bit flips at a BER over the whole stored image, mean ± std of {args.trials} trials:",
        "",
        "| format | memory bits / weight | fault candidates / weight | clean | " + " | ".join(f"BER {b:g}" for b in args.bers) + " |",
        "|---|---|---|---|" + "---|" * len(args.bers),
    ]
    for label, s in stored.items():
        cells = [f"{c['mean'] * 100:.1f} ± {c['std'] * 100:.1f}" for c in curves[label].values()]
        lines.append(f"| {label} | {s.q.nbits / k:.2f} | {s.candidates / k:.2f} | {s.clean * 100:.2f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Faulty bits per trial (mean), of which in scales or zero points, and trials whose loss was Inf/NaN:",
        "",
        "| format | " + " | ".join(f"BER {b:g}" for b in args.bers) + " |",
        "|---|" + "---|" * len(args.bers),
    ]
    for label in stored:
        cells = [f"{c['faults']:,.1f} ({c['scale_faults']:,.1f} scales" + (f", {c['nonfinite']} non-finite)" if c["nonfinite"] else ")")
                 for c in curves[label].values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    base_inject, base_eval = rates["inject"].get("float32"), rates["evaluate"].get("float32")
    lines += [
        "",
        f"Bit search to chance (<= {CHANCE * 100:.0f}%) and trials per second at BER {args.rate_ber:g} "
        f"(draw + write + restore; with one evaluation of the test set), interleaved rounds:",
        "",
        "| format | bit search: flips to chance (every stored bit) | the codes alone | trials/s | vs float32 | "
        "trials/s with evaluation | vs float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in stored:
        found = searched(searches[label])
        alone = searched(codes[label]) if CODES_ONLY else "n/a (this bit_search has no fields option)"
        inj, ev = rates["inject"][label], rates["evaluate"][label]
        lines.append(f"| {label} | {found} | {alone} | {inj:,.0f} | {ratio(inj, base_inject)} | {ev:,.1f} | {ratio(ev, base_eval)} |")
    lines += ["", f"({name}: {time.perf_counter() - start:.0f} s)", ""]
    return lines


def part1(args) -> list[str]:
    from paramcorrupt.tasks import get_task

    options = ", ".join(f"{k}={v}" for k, v in {k: STORED[k][1] for k in args.formats}.items() if v)
    lines = ["## Part 1: stored formats, accuracy vs BER, bit search, trials per second", "",
             f"Options: {options or 'defaults'}; the bit search's attack data: one batch of the gradient loader.", ""]
    task = get_task("digits")
    attack = [next(iter(task.gradient_loader))]
    lines += part1_model("digits ResNet (seed 0, 30 epochs; 360 test images)", task.model, attack, task.eval_loader, args, 30)
    if args.cifar_weights is None:
        lines.append("CIFAR-10 ResNet-20: skipped (give --cifar-weights).")
        return lines
    state = torch.load(args.cifar_weights, weights_only=True, map_location="cpu")
    state = state.get("model", state)
    task = get_task("cifar10", data_dir=args.data_dir, state_dict=state, limit_train=512, limit_test=args.cifar_test,  # no training:
                    augment=False, batch_size=128, eval_batch_size=128)  # 512 training images hold the attack batch
    attack = [next(iter(task.gradient_loader))]
    name = f"CIFAR-10 ResNet-20 ({args.cifar_weights}; {args.cifar_test} test images)"
    return lines + part1_model(name, task.model, attack, task.eval_loader, args, 60)


# -- Part 2 (in a child process) ------------------------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _phase(fn) -> tuple[object, dict]:
    """fn()'s result, and its memory: RSS held after it above before, peak RSS above before."""
    before = _status("VmRSS")
    reset = _reset_peak()
    out = fn()
    return out, {"held": _status("VmRSS") - before, "peak": _status("VmHWM") - before, "reset": reset}


def allocations(fn) -> dict:
    """Bytes of every tensor the torch operations inside ``fn()`` allocate (outputs that are
    not views of an input), their sum and the largest: an exact count where the RSS only
    sees pages (an upper bound of the live peak: some are freed before others are made)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    def storage(t):
        try:
            return t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # a wrapper subclass: its inner tensors count
            return None

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {storage(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and storage(t) is not None and storage(t) not in inputs:
                    self.sizes.append(t.numel() * t.element_size())
            return out

    with Allocations() as mode:
        fn()
    return {"total": sum(mode.sizes), "largest": max(mode.sizes, default=0), "count": len(mode.sizes)}


def gpt2_linear(seq: int):
    """The GPT-2-shaped LM (random weights, seed 0), its Conv1D projections as nn.Linear."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    config = GPT2Config(n_embd=768, n_layer=13, n_head=12, vocab_size=8192, n_positions=seq,
                        bos_token_id=0, eos_token_id=0, use_cache=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 8192, (2, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            nx, nf = module.weight.shape
            linear = torch.nn.Linear(nx, nf)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference, rtol=1e-4, atol=1e-4), "Conv1D -> Linear changed the outputs"
    return model, ids


def own_bytes(model) -> int:
    """The bytes the model's parameters and buffers hold (a torchao weight: its stored fields)."""
    from paramcorrupt.formats.torchao import is_torchao_tensor, stored_fields

    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if is_torchao_tensor(t):
            total += sum(f.tensor.numel() * f.tensor.element_size() for f in stored_fields(t))
        else:
            total += t.numel() * t.element_size()
    return total


def part2_child(args) -> None:
    """Runs in a fresh process; prints one JSON line."""
    from paramcorrupt import select

    torch.set_num_threads(1)
    base, ids = gpt2_linear(args.seq)
    pattern = r"re:.*\.(c_attn|c_proj|c_fc)\.weight"
    configs = ["float32", "int8", "nf4", "torchao-int8"]
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        configs.remove("torchao-int8")
    models, faulters, out = {}, {}, {"configs": {}, "params": sum(p.numel() for p in base.parameters())}
    for name in configs:
        model = copy.deepcopy(base)
        before = own_bytes(model)
        q = None
        if name in ("int8", "nf4"):
            q, mem = _phase(lambda model=model, name=name: quantize(model, name, select(model, pattern, name="projections"),
                                                                    restorable="file"))  # as a sweep does
        elif name == "torchao-int8":
            _, mem = _phase(lambda model=model: quantize_(model, Int8WeightOnlyConfig(),
                                              filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head"))
        else:
            mem = {"held": 0, "peak": 0, "reset": True}
        group = select(model, pattern, include_frozen=True, name="projections")
        gen = torch.Generator().manual_seed(0)

        counts: list[int] = []

        def fault(model=model, group=group, gen=gen, q=q, counts=counts):
            drawn = random_bit_faults(model, group, ber=args.lm_ber, generator=gen, stored=q)
            counts.append(drawn.info["bit_errors"])
            return drawn

        with torch.no_grad():
            model(ids)  # warm up
        with corrupted(model, fault()):
            pass

        def trials(model=model, fault=fault, forward=False):
            for _ in range(args.lm_trials):
                with corrupted(model, fault()):
                    if forward:
                        with torch.no_grad():
                            model(ids)

        _, inject = _phase(trials)

        def one_trial(model=model, fault=fault):
            with corrupted(model, fault()):
                pass

        allocated = allocations(one_trial)
        _, forward = _phase(lambda: trials(forward=True))
        with torch.no_grad():
            _, clean_forward = _phase(lambda model=model: model(ids))
        stored_image = 0 if q is None else q.nbits // 8
        held_bytes = 0 if q is None else q.held_bytes  # float copy (none with "file") + scales, zero points, kept codes
        out["configs"][name] = {
            "own_float": before, "own": own_bytes(model), "quantise": mem, "inject": inject, "forward": forward,
            "clean_forward": clean_forward, "weights": group.numel(model), "stored_image": stored_image,
            "held_bytes": held_bytes, "faults": statistics.mean(counts), "draws": len(counts), "allocated": allocated,
        }
        models[name], faulters[name] = model, fault
        print(f"part 2: {name} measured", file=sys.stderr, flush=True)

    def rate(name, forward):
        def run():
            with corrupted(models[name], faulters[name]()):
                if forward:
                    with torch.no_grad():
                        models[name](ids)
        return run

    out["inject_rate"] = side_by_side({n: rate(n, False) for n in configs}, args.seconds)
    out["forward_rate"] = side_by_side({n: rate(n, True) for n in configs}, 3 * args.seconds, rounds=5)
    print(json.dumps(out))


def part2(args) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--part2-child", "--seq", str(args.seq), "--lm-ber", str(args.lm_ber),
           "--lm-trials", str(args.lm_trials), "--seconds", str(args.seconds)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    res = json.loads(done.stdout.strip().splitlines()[-1])
    configs = res["configs"]
    lines = [
        f"## Part 2: the costs on a GPT-2-shaped LM ({res['params']:,} parameters, float32, 1 thread)", "",
        f"Faults at BER {args.lm_ber:g} over the stored image of the {configs['float32']['weights']:,} projection weights; "
        f"memory in MiB (RSS; peaks above the RSS before the phase); own = the model's parameters and buffers as held.", "",
        "| stored as | own | quantisation holds (measured) | held by the stored tensors (accounted); the stored image's size | "
        "peak during trials (inject / +forward; forward alone) | allocated by one trial: total, largest (KiB) | "
        "extra / own | faulty bits / trial (mean of the draws) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in configs.items():
        held = max(c["quantise"]["held"], 0) if name != "torchao-int8" else 0
        extra = held + max(c["inject"]["peak"], 0)
        accounted = f"{c['held_bytes'] / MIB:,.2f}; {c['stored_image'] / MIB:,.0f}" if c["stored_image"] else "-"
        lines.append(
            f"| {name} | {c['own'] / MIB:,.0f} | {c['quantise']['held'] / MIB:,.0f} (peak {c['quantise']['peak'] / MIB:,.0f}) | "
            f"{accounted} | {c['inject']['peak'] / MIB:,.1f} / {c['forward']['peak'] / MIB:,.1f}; {c['clean_forward']['peak'] / MIB:,.1f} | "
            f"{c['allocated']['total'] / 1024:,.1f}, {c['allocated']['largest'] / 1024:,.1f} | "
            f"**{extra / c['own']:.2f}x** | {c['faults']:,.1f} ({c['draws']}) |"
        )
    lines += ["", "Trials per second (interleaved rounds), and the ratio to float32 and to torchao int8:", "",
              "| stored as | trials/s (draw, write, restore) | vs float32 | vs torchao | with a forward of 2 x "
              f"{args.seq} tokens | vs float32 | vs torchao |", "|---|---|---|---|---|---|---|"]
    for name in configs:
        cells = []
        for key in ("inject_rate", "forward_rate"):
            r = res[key]
            cells += [f"{r[name]:,.2f}", f"{r[name] / r['float32']:.2f}x",
                      f"{r[name] / r['torchao-int8']:.2f}x" if "torchao-int8" in r else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    reset = all(c[k]["reset"] for c in configs.values() for k in ("quantise", "inject", "forward"))
    lines += ["", f"(peak RSS reset before each phase: {reset})", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bers", default="1e-7,1e-6,1e-5,1e-4,1e-3", help="bit error rates of Part 1")
    parser.add_argument("--trials", type=int, default=10, help="trials per BER")
    parser.add_argument("--formats", default=",".join(STORED), help="Part 1's formats, among " + ", ".join(STORED))
    parser.add_argument("--rate-ber", type=float, default=1e-4, help="the BER of Part 1's trials per second")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput measurement and format")
    parser.add_argument("--cifar-weights", type=Path, default=None)
    parser.add_argument("--cifar-test", type=int, default=1000, help="test images for the CIFAR-10 accuracy")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seq", type=int, default=32, help="Part 2: tokens per sequence of the 2-sequence batch")
    parser.add_argument("--lm-ber", type=float, default=1e-7, help="Part 2: the BER of a trial")
    parser.add_argument("--lm-trials", type=int, default=5, help="Part 2: trials per memory phase")
    parser.add_argument("--only", choices=("1", "2"), default=None)
    parser.add_argument("--part2-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.bers = [float(b) for b in args.bers.split(",")]
    args.formats = [f.strip() for f in args.formats.split(",")]
    unknown = [f for f in args.formats if f not in STORED]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose among {', '.join(STORED)}")
    torch.set_num_threads(1)
    if args.part2_child:
        part2_child(args)
        return
    start = time.perf_counter()
    lines = [f"bench_formats: {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
             f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}", ""]
    if args.only in (None, "1"):
        lines += part1(args)
    if args.only in (None, "2"):
        lines += part2(args)
    lines.append(f"(total {time.perf_counter() - start:.0f} s)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
