"""Our progressive bit search beside the Bit-Flip Attack authors' code, on one int8 model.

Their code: elliothe/BFA (Rakin et al., ICCV 2019; the repository of the CVPR 2020 follow-up,
``attack/BFA.py``, ``models/quantization.py``). It is not part of this project and is never
copied into it: give the path of a snapshot (a checkout, or a bare git directory such as the
one the project's ``fetch`` tool makes, read with ``git show HEAD:<file>``) with ``--bfa`` or
``$BFA_SRC``. Only their attack runs (``BFA.progressive_bit_search``, which makes no
``.cuda()`` call): their ``main.py`` is not run (it wants CUDA, torchvision, tensorboard and
pandas), and ``torchvision``, which ``models/quantization.py`` imports but does not use, is
stubbed when it is not installed. Their modules are loaded under their own names
(``models.quantization``, ``attack.BFA``) without their ``models/__init__.py``.

The model: the digits ResNet trained by the ``digits`` task (one per ``--seeds``); its conv
and linear layers become their ``quan_Conv2d`` / ``quan_Linear`` (their int8: step = max|w| /
127 per layer, ``__reset_stepsize__`` then ``__reset_weight__``, as their main.py with
``--reset_weight``). Our model is the same network with each such weight set to their
``weight * step_size`` (what their forward computes), so both attack one stored int8 model;
the checks printed first: their integer weights against our ``int8`` codes of the float model
and of the stored model, every one of the 8 single-bit flips of every weight decoded by both
(values equal bit for bit), both models' outputs on the attack batch (equal bit for bit).

The attack batch: the first ``--batch`` training images, labelled by the clean model's own
predictions (their main.py does so, "to prevent label leaking"). Ours: ``bit_search`` on the
conv and linear weights, ``candidates=1``, with ``k_top`` as theirs. Printed: per pairing of
their ``k_top`` and ours, how many of the first N flips are equal (leading run, then at any
position), and where the sequences part.

    git --git-dir=/work/.mirror/elliothe+BFA/repo log -1     # or any checkout of elliothe/BFA
    .venv/bin/python benchmarks/compare_bfa.py --bfa /work/.mirror/elliothe+BFA/repo --flips 20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

from paramcorrupt import classification_loss, select
from paramcorrupt.faults import bit_search, get_format


def their_source(root: Path, path: str) -> str:
    """A file of their snapshot: from a checkout, or ``git show HEAD:path`` of a git dir."""
    if (root / path).is_file():
        return (root / path).read_text()
    return subprocess.run(["git", "--git-dir", str(root), "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def their_commit(root: Path) -> str:
    git_dir = root / ".git" if (root / ".git").exists() else root
    done = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def load_theirs(root: Path) -> types.SimpleNamespace:
    """Their ``models.quantization``, ``attack.data_conversion`` and ``attack.BFA`` as modules
    of this process (their package ``__init__`` files, which import every model, skipped)."""
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:  # quantization.py imports it and never uses it
            stub = types.ModuleType("torchvision")
            stub.models = types.ModuleType("torchvision.models")
            sys.modules["torchvision"] = stub
            sys.modules["torchvision.models"] = stub.models
    loaded = {}
    for package in ("models", "attack"):
        module = types.ModuleType(package)
        module.__path__ = []
        sys.modules[package] = module
    for name, path in (("models.quantization", "models/quantization.py"),
                       ("attack.data_conversion", "attack/data_conversion.py"),
                       ("attack.BFA", "attack/BFA.py")):
        module = types.ModuleType(name)
        module.__file__ = str(root / path)
        sys.modules[name] = module
        exec(compile(their_source(root, path), module.__file__, "exec"), module.__dict__)
        loaded[name.split(".")[1]] = module
    return types.SimpleNamespace(**loaded)


def their_model(model: nn.Module, theirs) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear are their quantised layers, int8 weights set."""
    q = theirs.quantization
    copied = copy.deepcopy(model)
    for name, module in list(copied.named_modules()):
        if isinstance(module, nn.Conv2d):
            new = q.quan_Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                module.padding, module.dilation, module.groups, bias=module.bias is not None)
        elif isinstance(module, nn.Linear):
            new = q.quan_Linear(module.in_features, module.out_features, bias=module.bias is not None)
        else:
            continue
        new.load_state_dict(module.state_dict(), strict=False)
        new.__reset_stepsize__()  # their main.py, then --reset_weight
        new.__reset_weight__()
        parent, _, child = name.rpartition(".")
        setattr(copied.get_submodule(parent) if parent else copied, child, new)
    return copied.eval()


def quantised_layers(model: nn.Module, theirs) -> dict[str, nn.Module]:
    q = theirs.quantization
    return {n: m for n, m in model.named_modules() if isinstance(m, (q.quan_Conv2d, q.quan_Linear))}


def stored_model(model: nn.Module, attacked: nn.Module, theirs) -> nn.Module:
    """Our float model holding their stored int8 model: each weight = their weight * step."""
    ours = copy.deepcopy(model).eval()
    params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, module in quantised_layers(attacked, theirs).items():
            params[f"{name}.weight"].copy_(module.weight * module.step_size)
    return ours


def agreement(model: nn.Module, ours: nn.Module, attacked: nn.Module, theirs, x: torch.Tensor) -> list[str]:
    """Their quantisation against ours: codes, decoded flips, outputs."""
    fmt = get_format("int8")
    float_params, params = dict(model.named_parameters()), dict(ours.named_parameters())
    float_diff = stored_diff = flips = flip_diff = weights = ulps = 0
    scale_rel = 0.0
    for name, module in quantised_layers(attacked, theirs).items():
        w_int = module.weight.detach().reshape(-1).long()
        step = module.step_size.detach().reshape(())
        idx = torch.arange(w_int.numel())
        for source, counter in ((float_params, "float"), (params, "stored")):
            p = source[f"{name}.weight"]
            codes = fmt.encode(p, idx)
            signed = torch.where(codes >= 128, codes - 256, codes)
            if counter == "float":
                float_diff += int((signed != w_int).sum())
                scale_rel = max(scale_rel, abs(float(fmt.scales(p)[0]) / float(step) - 1))
            else:
                stored_diff += int((signed != w_int).sum())
        p = params[f"{name}.weight"]
        scales = fmt.scales(p)
        codes = fmt.encode(p, idx, scales)
        for bit in range(8):  # every single flip: our decoded value vs their (int ^ 2^bit) * step
            ours_v = fmt.decode(p, idx, codes ^ (1 << bit), scales)
            u = (w_int & 0xFF) ^ (1 << bit)
            theirs_v = torch.where(u >= 128, u - 256, u).float() * step
            apart = (ours_v.view(torch.int32).long() - theirs_v.view(torch.int32).long()).abs()  # same signs
            flip_diff += int((apart != 0).sum())
            ulps = max(ulps, int(apart.max()))
            flips += w_int.numel()
        weights += w_int.numel()
    with torch.no_grad():
        same_out = torch.equal(ours(x), attacked(x))
    return [
        f"- codes of the float model: their integer weights vs our `int8` codes: {float_diff} of {weights:,} differ "
        f"(scales: largest relative difference {scale_rel:.1e})",
        f"- codes of the stored model (weights = their int x step): {stored_diff} of {weights:,} differ",
        f"- every single flip decoded (8 x {weights:,}): {flip_diff:,} values differ bit for bit, by at most "
        f"{ulps} ulp (our scale: max|w| / 127 in float64 from the stored weights; theirs: the float32 step)",
        f"- outputs on the attack batch: {'equal bit for bit' if same_out else 'DIFFERENT'}",
    ]


def run_theirs(attacked: nn.Module, theirs, x, y, k_top: int | None, flips: int) -> tuple[list[tuple], list[float]]:
    """Their progressive bit search, iteration by iteration: the (layer, index, bit) flipped
    (found by xor of the two's complement before and after) and their loss after it."""
    model = copy.deepcopy(attacked)
    attacker = theirs.BFA.BFA(nn.CrossEntropyLoss(), model, k_top)
    layers = quantised_layers(model, theirs)
    found, losses = [], []
    while len(found) < flips:
        before = {n: m.weight.detach().reshape(-1).long() & 0xFF for n, m in layers.items()}
        with contextlib.redirect_stdout(io.StringIO()):  # it prints each flip
            attacker.progressive_bit_search(model, x, y)
        for name, m in layers.items():
            diff = (m.weight.detach().reshape(-1).long() & 0xFF) ^ before[name]
            for i in diff.nonzero().flatten().tolist():
                found += [(f"{name}.weight", i, b) for b in range(8) if int(diff[i]) >> b & 1]
        losses.append(attacker.loss_max)
    return found[:flips], losses


def compare(a: list[tuple], b: list[tuple]) -> tuple[int, int]:
    """(length of the common leading run, positions equal) of two flip sequences."""
    lead = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
    return lead, sum(u == v for u, v in zip(a, b))


def one_seed(seed: int, args, theirs) -> list[str]:
    from paramcorrupt.tasks import get_task

    task = get_task("digits", seed=seed)
    model = task.model.eval()
    xs, ys = next(iter(task.gradient_loader))
    x = xs[: args.batch]
    attacked = their_model(model, theirs)
    ours = stored_model(model, attacked, theirs)
    with torch.no_grad():
        y = attacked(x).argmax(1)  # their main.py: the model's own labels
    group = select(ours, types=("conv", "linear"), kind="weight", name="weights")
    sizes = [p.numel() for p in group.tensors(ours).values()]
    lines = [f"**digits ResNet, seed {seed}** ({len(sizes)} int8 layers, {sum(sizes):,} weights, "
             f"largest layer {max(sizes):,}; attack batch {len(y)} images)", ""]
    lines += agreement(model, ours, attacked, theirs, x) + [""]
    n = args.flips
    runs, seconds = {}, {}
    for k in (10, None):
        start = time.perf_counter()
        runs["theirs", k] = run_theirs(attacked, theirs, x, y, k, n)
        seconds["theirs", k] = time.perf_counter() - start
        start = time.perf_counter()
        search = bit_search(ours, [(x, y)], classification_loss, group, flips=n, k_top=k)
        seconds["ours", k] = time.perf_counter() - start
        runs["ours", k] = (search.flips, search.losses[1:])
    lines += [f"| ours | theirs | first {n} flips: equal leading run | equal at any position | ours s | theirs s |",
              "|---|---|---|---|---|---|"]
    shown = {None: "k_top = layer size (None)", 10: "k_top = 10"}
    for mine, their in ((None, None), (10, 10), (None, 10)):
        lead, equal = compare(runs["ours", mine][0], runs["theirs", their][0])
        mine_text = "default (every weight)" if mine is None else "`k_top=10`"
        lines.append(f"| {mine_text} | {shown[their]} | **{lead}** | {equal} | {seconds['ours', mine]:.1f} | "
                     f"{seconds['theirs', their]:.1f} |")
    lines.append("")
    for (who, k), (flips, losses) in runs.items():
        text = ", ".join(f"{name.removesuffix('.weight')}[{i}] b{b}" for name, i, b in flips[: min(n, 12)])
        loss_text = ", ".join(f"{v:.4g}" for v in losses[: min(n, 12)])
        lines.append(f"- {who}, k_top={k}: {text}; loss {loss_text}")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bfa", type=Path, default=os.environ.get("BFA_SRC"),
                        help="their snapshot: a checkout of elliothe/BFA or its git directory (or $BFA_SRC)")
    parser.add_argument("--flips", type=int, default=20, help="flips per search")
    parser.add_argument("--seeds", default="0", help="digits models to attack (training seeds), e.g. 0,1,2")
    parser.add_argument("--batch", type=int, default=128, help="attack images (their default: 128)")
    args = parser.parse_args()
    if args.bfa is None:
        parser.error("give the path of their snapshot with --bfa or $BFA_SRC")
    torch.set_num_threads(1)
    theirs = load_theirs(args.bfa)
    lines = [f"Bit-Flip Attack code: elliothe/BFA at {their_commit(args.bfa)[:12]}; torch {torch.__version__}, CPU, 1 thread", ""]
    for seed in (int(s) for s in args.seeds.split(",")):
        lines += one_seed(seed, args, theirs)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
