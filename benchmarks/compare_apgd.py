"""Our iterative worst case on the relative set beside tml-epfl's APGD sharpness (issue 24, point 3).

Their code: tml-epfl/sharpness-vs-generalization (Andriushchenko et al., ICML 2023),
``sharpness.py``'s ``eval_APGD_sharpness`` with ``adaptive=True`` (the set
||delta / |w| ||_p <= rho, ASAM's with eta = 0) and ``rand_init=False`` (their
``eval_sharpness.py``'s default: APGD from delta = 0), over every parameter of the model. It is
not part of this project and is never copied into it: give the path of a snapshot (a checkout,
or a bare git directory such as the project's ``fetch`` tool makes, read with
``git show HEAD:<file>``) with ``--tml`` or ``$TML_SRC``. Their ``sharpness.py`` and
``utils.py`` are loaded as modules of this process. Their code calls ``.cuda()`` on the batch;
on a machine without CUDA ``torch.Tensor.cuda`` is replaced, for the duration of their call
only, by the identity (a run-time patch, said in the output).

The model: the digits ResNet trained by the ``digits`` task (``--seed``), in evaluation mode;
the batch: the first ``--batch`` training images with their labels; the loss: mean
cross-entropy on that batch (theirs: ``F.cross_entropy``, ours: ``classification_loss`` on a
loader holding that one batch). For each norm (L_2, L_inf) and rho, side by side, the loss
increase over the clean batch loss of:

* ours, one step: ``relative_gradient_corruption`` (the closed form, on the sphere);
* ours, iterative: ``iterative_relative_corruption`` with ``--steps`` (their n_iters, 20),
  APGD's schedule, started from the one step;
* theirs: ``eval_APGD_sharpness`` with ``n_iters=--steps`` (their returned obj).

Printed as a Markdown table with the ratios, the times, ||a / |w| ||_p of our iterative
result and of theirs, and their worst point's loss increase measured by our ``evaluate`` (their
point is read from their last ``copy.deepcopy``, the worst state dict: their module's ``copy``
is replaced during the call by one that keeps the last copy).

    .venv/bin/python benchmarks/compare_apgd.py --tml /work/.mirror/tml-epfl+sharpness-vs-generalization/repo
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from compare_bfa import their_commit, their_source  # a snapshot's files and commit

from paramcorrupt import (
    Constraint,
    classification_loss,
    corrupted,
    dataset_gradient,
    evaluate,
    iterative_relative_corruption,
    relative_gradient_corruption,
    select,
)

DEFAULT_RHOS = {"linf": "0.0005,0.001,0.002,0.004,0.008", "l2": "0.05,0.1,0.2,0.5,1.0"}


def digits_model(seed: int, weights: Path | None) -> object:
    """The digits task with its model trained from ``seed``; with ``weights``, the trained state
    dict is loaded from that file when it exists (else saved there after training: training
    takes minutes on a loaded CPU)."""
    from paramcorrupt.tasks import get_task

    if weights is not None and weights.is_file():
        return get_task("digits", seed=seed, state_dict=torch.load(weights, weights_only=True))
    task = get_task("digits", seed=seed)
    if weights is not None:
        torch.save(task.model.state_dict(), weights)
    return task


def load_theirs(root: Path) -> types.ModuleType:
    """Their ``sharpness`` module (which imports their ``utils`` at import time)."""
    saved = sys.modules.get("utils")
    utils = types.ModuleType("utils")
    utils.__file__ = str(root / "utils.py")
    exec(compile(their_source(root, "utils.py"), utils.__file__, "exec"), utils.__dict__)
    sys.modules["utils"] = utils
    try:
        sharpness = types.ModuleType("tml_sharpness")
        sharpness.__file__ = str(root / "sharpness.py")
        exec(
            compile(their_source(root, "sharpness.py"), sharpness.__file__, "exec"),
            sharpness.__dict__,
        )
    finally:
        if saved is None:
            del sys.modules["utils"]
        else:
            sys.modules["utils"] = saved
    return sharpness


@contextlib.contextmanager
def cuda_is_identity():
    """``Tensor.cuda`` as the identity while their code runs, when no GPU is there."""
    if torch.cuda.is_available():
        yield False
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield True
    finally:
        torch.Tensor.cuda = original


class Recording:
    """Their module's ``copy``: ``deepcopy`` as usual, the last copy kept. Their last deepcopy
    in ``eval_APGD_sharpness`` is the worst point's state dict (``worst_model_dict``)."""

    def __init__(self) -> None:
        self.last = None

    def deepcopy(self, value):
        self.last = copy.deepcopy(value)
        return copy.deepcopy(self.last)


def run_theirs(sharpness, model, x, y, rho: float, norm: str, steps: int) -> dict:
    """Their loss increase, seconds, step-size reductions, whether .cuda was patched, and
    their worst point (its state dict) as our ``a = w' - w``: ||a / |w| ||_p and its loss
    increase measured by our ``evaluate``."""
    model = copy.deepcopy(model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, recording = io.StringIO(), Recording()
    sharpness.copy = recording
    start = time.perf_counter()
    try:
        with cuda_is_identity() as patched, contextlib.redirect_stdout(out):
            obj, _err, _norm = sharpness.eval_APGD_sharpness(
                model,
                [(x, None, y, None, None)],
                lambda logits, t: F.cross_entropy(logits, t, reduction="mean"),
                None,
                None,
                rho=rho,
                n_iters=steps,
                n_restarts=1,
                step_size_mult=1.0,
                rand_init=False,
                adaptive=True,
                version="default",
                norm=norm,
            )
    finally:
        sharpness.copy = copy
    seconds = time.perf_counter() - start
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "not restored"
    worst = recording.last
    params = dict(model.named_parameters())
    ratio = torch.cat(
        [
            ((worst[n].double() - w.detach().double()) / w.detach().double().abs()).reshape(-1)
            for n, w in params.items()
        ]
    )
    clean = evaluate(model, [(x, y)], classification_loss)["loss"]
    model.load_state_dict(worst)
    measured = evaluate(model, [(x, y)], classification_loss)["loss"] - clean
    return {
        "obj": float(obj),
        "s": seconds,
        "halvings": out.getvalue().count("Reducing step size"),
        "patched": patched,
        "norm": float(ratio.norm(2.0 if norm == "l2" else math.inf)),
        "measured": measured,
    }


def run_ours(model, loader, clean: float, rho: float, p: float, steps: int) -> dict[str, float]:
    group = select(model)
    constraint = Constraint(p, rho)
    start = time.perf_counter()
    one = relative_gradient_corruption(
        model, dataset_gradient(model, loader, classification_loss, group), constraint, group
    )
    one_s = time.perf_counter() - start
    with corrupted(model, one):
        one_loss = evaluate(model, loader, classification_loss)["loss"]
    start = time.perf_counter()
    it = iterative_relative_corruption(
        model, constraint, loader, classification_loss, group, steps=steps
    )
    it_s = time.perf_counter() - start
    with corrupted(model, it):
        it_loss = evaluate(model, loader, classification_loss)["loss"]
    params = dict(model.named_parameters())
    dense = it.dense(model)
    ratio = torch.cat(
        [(dense[n].double() / params[n].detach().double().abs()).reshape(-1) for n in dense]
    )
    return {
        "one": one_loss - clean,
        "one_s": one_s,
        "it": it_loss - clean,
        "it_s": it_s,
        "norm": float(ratio.norm(p)),
        "best_step": it.info["best_step"],
        "halvings": sum(b < a for a, b in zip(it.info["step_sizes"], it.info["step_sizes"][1:])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tml",
        type=Path,
        default=os.environ.get("TML_SRC"),
        help="their snapshot (a checkout or a bare git dir); or $TML_SRC",
    )
    parser.add_argument("--seed", type=int, default=0, help="the digits model's training seed")
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="a file for the trained digits weights: loaded when it exists, else written",
    )
    parser.add_argument(
        "--batch", type=int, default=128, help="images in the batch (their bs_sharpness: 128)"
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="their n_iters and our steps (20, their default)"
    )
    parser.add_argument(
        "--linf", default=DEFAULT_RHOS["linf"], help="rho values for adaptive L_inf"
    )
    parser.add_argument("--l2", default=DEFAULT_RHOS["l2"], help="rho values for adaptive L_2")
    args = parser.parse_args()
    if args.tml is None:
        parser.error("give their snapshot with --tml or $TML_SRC")
    torch.set_num_threads(1)
    sharpness = load_theirs(args.tml)
    task = digits_model(args.seed, args.weights)
    model = task.model.eval()
    x, y = next(iter(task.gradient_loader))
    x, y = x[: args.batch], y[: args.batch]
    loader = [(x, y)]
    clean = evaluate(model, loader, classification_loss)["loss"]
    k = sum(p.numel() for p in model.parameters())
    print(
        f"tml-epfl/sharpness-vs-generalization at {their_commit(args.tml)}; torch {torch.__version__}, "
        f"1 thread; digits ResNet seed {args.seed} ({k:,} parameters, all perturbed), batch of {len(y)} training "
        f"images, clean loss {clean:.6f}; {args.steps} steps\n"
    )
    print(
        "| norm | rho | ours one step | ours iterative | theirs (APGD) | one / theirs | iterative / theirs "
        "| ours ‖a/\\|w\\|‖_p | theirs ‖a/\\|w\\|‖_p | their point's ΔL by ours | our best step, halvings "
        "| their halvings | s: one, iterative, theirs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    patched_any = False
    for norm, p, text in (("linf", math.inf, args.linf), ("l2", 2.0, args.l2)):
        for rho in (float(v) for v in text.split(",")):
            ours = run_ours(model, loader, clean, rho, p, args.steps)
            t = run_theirs(sharpness, model, x, y, rho, norm, args.steps)
            patched_any |= t["patched"]
            theirs = t["obj"]
            print(
                f"| {norm} | {rho:g} | {ours['one']:.6g} | {ours['it']:.6g} | {theirs:.6g} | "
                f"{ours['one'] / theirs:.3f} | {ours['it'] / theirs:.4f} | {ours['norm']:.6g} | "
                f"{t['norm']:.6g} | {t['measured']:.6g} | {ours['best_step']}, {ours['halvings']} | "
                f"{t['halvings']} | {ours['one_s']:.2f}, {ours['it_s']:.2f}, {t['s']:.2f} |",
                flush=True,
            )
    if patched_any:
        print("\n(no CUDA here: torch.Tensor.cuda was the identity during their calls)")


if __name__ == "__main__":
    main()
