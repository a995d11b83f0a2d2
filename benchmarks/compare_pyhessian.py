"""``paramcorrupt.curvature`` beside PyHessian on the digits model: the top eigenvalue and the
trace of the Hessian of the data set loss, and the time they take (issue 24).

PyHessian (amirgholami/PyHessian, Yao et al. 2020) is not part of this project and is never
copied into it: the benchmark imports an installed ``pyhessian`` (``pip install pyhessian``,
the ``bench`` extra), or loads ``pyhessian/utils.py`` and ``pyhessian/hessian.py`` from a
snapshot given with ``--pyhessian`` or ``$PYHESSIAN_SRC`` (a checkout, or a bare git directory
such as the project's ``fetch`` tool makes, read with ``git show HEAD:<file>``). PyHessian is
unmaintained: its releases call ``torch.eig``, removed from torch (PyHessian issue #17), in
``density`` only, which is not run here; its newest snapshot calls ``torch.linalg.eig``. If a
loaded copy still names ``torch.eig`` anywhere, ``torch.eig`` is given for the run (a run-time
patch through ``torch.linalg.eig``, said in the output).

Same model, loss and data for both: the digits ResNet trained by the ``digits`` task, in
evaluation mode (PyHessian sets it), every parameter (PyHessian works on the whole model
only); mean cross-entropy; the task's gradient loader (the training images, batches of 512;
``--images N``: the first N), whose batch-size-weighted mean both accumulate. PyHessian's product over a loader is
``hessian.dataloader_hv_product``; its top eigenvalue is power iteration (the largest |lambda|,
``maxIter=100``, ``tol=1e-3`` on the change of the Rayleigh quotient: its defaults), its trace
Hutchinson with Rademacher probes (``maxIter=100``, ``tol=1e-3`` on the change of the
running mean: its defaults, which stop after a few probes). Ours: ``curvature(top=1,
which="magnitude")`` (Lanczos, tolerance 1e-6 on the residual: its default, and 1e-3, and
with ``max_iter`` set to the products PyHessian took in its latest run), and
``curvature(top=None, trace_samples=100)`` with its standard error.

Printed: per round (interleaved: theirs then ours, the order swapped every round), the values,
the Hessian-vector products and passes, the seconds; then the medians, one product of each
compared, the seconds per product (interleaved, 5 per round) and our time per eigenvalue over
theirs. One torch thread each.

    .venv/bin/python benchmarks/compare_pyhessian.py --pyhessian /work/.mirror/amirgholami+PyHessian/repo
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

from paramcorrupt import classification_loss, curvature, hessian_vector_product

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_apgd import digits_model  # noqa: E402  (the benchmark's own directory)
from compare_bfa import their_commit, their_source  # noqa: E402


def eig_works() -> bool:
    """Whether ``torch.eig`` still runs (torch 2.x keeps the name and raises RuntimeError)."""
    try:
        torch.eig(torch.eye(1), eigenvectors=True)
    except (AttributeError, RuntimeError):
        return False
    return True


def load_pyhessian(root: Path | None) -> tuple[types.ModuleType, str, bool]:
    """(the ``pyhessian.hessian`` module, where it came from, whether torch.eig was patched)."""
    if root is None:
        module = importlib.import_module("pyhessian.hessian")  # the installed package

        text = Path(module.__file__).read_text()
        where = f"installed pyhessian ({module.__file__})"
    else:
        package = types.ModuleType("pyhessian")
        package.__path__ = []
        sys.modules["pyhessian"] = package
        text = ""
        for name in ("utils", "hessian"):
            source = their_source(root, f"pyhessian/{name}.py")
            text += source
            module = types.ModuleType(f"pyhessian.{name}")
            module.__file__ = str(root / "pyhessian" / f"{name}.py")
            sys.modules[module.__name__] = module
            exec(compile(source, module.__file__, "exec"), module.__dict__)
            setattr(package, name, module)
        where = f"amirgholami/PyHessian at {their_commit(root)}"
    patched = "torch.eig(" in text and not eig_works()
    if patched:  # PyHessian issue #17: torch.eig was removed; only density() calls it

        def eig(a, eigenvectors=False):
            values, vectors = torch.linalg.eig(a)
            return torch.stack([values.real, values.imag], -1), (
                vectors.real if eigenvectors else None
            )

        torch.eig = eig
    return module, where, patched


class Counted:
    """A loader that counts the passes made over it (each PyHessian product is one pass)."""

    def __init__(self, loader) -> None:
        self.loader, self.passes = loader, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


def theirs_eigen(hessian, model: nn.Module, loader, seed: int) -> dict[str, float]:
    data = Counted(loader)
    torch.manual_seed(seed)
    start = time.perf_counter()
    h = hessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), dataloader=data, cuda=False)
    values, _ = h.eigenvalues(top_n=1)
    return {
        "value": float(values[0]),
        "s": time.perf_counter() - start,
        "hvps": data.passes,
        "passes": data.passes,
    }


def theirs_trace(hessian, model: nn.Module, loader, seed: int) -> dict[str, float]:
    data = Counted(loader)
    torch.manual_seed(seed)
    start = time.perf_counter()
    h = hessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), dataloader=data, cuda=False)
    samples = h.trace()
    seconds = time.perf_counter() - start
    se = statistics.stdev(samples) / len(samples) ** 0.5 if len(samples) > 1 else float("nan")
    return {
        "value": float(sum(samples) / len(samples)),
        "se": se,
        "s": seconds,
        "hvps": len(samples),
        "passes": data.passes,
    }


def ours_eigen(
    model: nn.Module, loader, seed: int, tol: float, max_iter: int = 100
) -> dict[str, float]:
    start = time.perf_counter()
    c = curvature(
        model,
        loader,
        classification_loss,
        top=1,
        which="magnitude",
        trace_samples=None,
        tol=tol,
        max_iter=max_iter,
        seed=seed,
    )
    return {
        "value": c.eigenvalues[0],
        "s": time.perf_counter() - start,
        "hvps": c.hvps,
        "passes": c.passes,
        "converged": c.converged,
    }


def ours_trace(model: nn.Module, loader, seed: int, samples: int) -> dict[str, float]:
    start = time.perf_counter()
    c = curvature(model, loader, classification_loss, top=None, trace_samples=samples, seed=seed)
    return {
        "value": c.trace,
        "se": c.trace_stderr,
        "s": time.perf_counter() - start,
        "hvps": c.hvps,
        "passes": c.passes,
    }


def hvp_rounds(
    hessian, model: nn.Module, loader, rounds: int, per_round: int
) -> list[tuple[float, float]]:
    """Seconds per Hessian-vector product over the loader, interleaved: (PyHessian's
    ``dataloader_hv_product``, our ``hessian_vector_product``) per round, the same vector."""
    h = hessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
    generator = torch.Generator().manual_seed(0)
    names = [n for n, _ in model.named_parameters()]
    vector = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
    mapping = dict(zip(names, vector))
    out = []
    for r in range(rounds):
        seconds = {}
        for who in ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs"):
            start = time.perf_counter()
            for _ in range(per_round):
                if who == "theirs":
                    h.dataloader_hv_product(vector)
                else:
                    hessian_vector_product(model, loader, classification_loss, mapping)
            seconds[who] = (time.perf_counter() - start) / per_round
        out.append((seconds["theirs"], seconds["ours"]))
    ours = hessian_vector_product(model, loader, classification_loss, mapping)
    _, theirs = h.dataloader_hv_product(vector)
    apart = max(float((ours[n] - t.double()).abs().max()) for n, t in zip(names, theirs))
    scale = max(float(ours[n].abs().max()) for n in names)
    print(
        f"one H v, ours vs PyHessian's: largest difference {apart:.3g} (largest |H v| {scale:.3g})"
    )
    return out


def measure(rows: list, r: int, kind: str, name: str, run, *args, **kwargs) -> None:
    """Run one measurement, keep it and print it at once."""
    v = run(*args, **kwargs)
    rows.append((kind, name, v))
    se = f" ± {v['se']:.4g}" if "se" in v else ""
    print(
        f"round {r}: {kind} {name}: {v['value']:.7g}{se}; {v['hvps']} HVPs, {v['passes']} passes, {v['s']:.1f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pyhessian",
        type=Path,
        default=os.environ.get("PYHESSIAN_SRC"),
        help="a PyHessian snapshot (checkout or bare git dir); default: the installed package",
    )
    parser.add_argument("--seed", type=int, default=0, help="the digits model's training seed")
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="a file for the trained digits weights: loaded when it exists, else written",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100, help="our Hutchinson probes")
    parser.add_argument("--images", type=int, default=None, help="only the first N training images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hessian, where, patched = load_pyhessian(args.pyhessian)
    task = digits_model(args.seed, args.weights)
    model = task.model.eval()
    loader = list(task.gradient_loader)
    if args.images is not None:
        x = torch.cat([b[0] for b in loader])[: args.images]
        y = torch.cat([b[1] for b in loader])[: args.images]
        loader = [(x[i : i + 512], y[i : i + 512]) for i in range(0, len(y), 512)]
    k = sum(p.numel() for p in model.parameters())
    n = sum(len(b[1]) for b in loader)
    print(
        f"{where}; torch {torch.__version__}, 1 thread; digits ResNet seed {args.seed}, every parameter "
        f"(k = {k:,}); {n} training images in {len(loader)} batches; torch.eig patched: {patched}\n"
    )
    if patched:  # show that density(), which calls torch.eig, runs with the patch
        h = hessian.hessian(
            copy.deepcopy(model), nn.CrossEntropyLoss(), dataloader=loader[:1], cuda=False
        )
        values, _ = h.density(iter=3, n_v=1)
        print(f"PyHessian density() with the patched torch.eig, 3 Lanczos steps: {values[0]}\n")
    rows, budget = [], None
    power, exact, loose, same = (
        "PyHessian power iteration (tol 1e-3)",
        "ours Lanczos (tol 1e-6)",
        "ours Lanczos (tol 1e-3)",
        "ours Lanczos (PyHessian's HVPs)",
    )
    for r in range(args.rounds):
        order = ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs")
        for who in order:
            if who == "theirs":
                measure(rows, r, "eigen", power, theirs_eigen, hessian, model, loader, r)
                budget = rows[-1][2]["hvps"]  # round 0 runs theirs first
                name = "PyHessian Hutchinson (tol 1e-3)"
                measure(rows, r, "trace", name, theirs_trace, hessian, model, loader, r)
            else:
                measure(rows, r, "eigen", exact, ours_eigen, model, loader, r, 1e-6)
                measure(rows, r, "eigen", loose, ours_eigen, model, loader, r, 1e-3)
                measure(
                    rows,
                    r,
                    "eigen",
                    same,
                    ours_eigen,
                    model,
                    loader,
                    r,
                    1e-12,
                    max_iter=budget,
                )
                name = f"ours Hutchinson ({args.samples} probes)"
                measure(rows, r, "trace", name, ours_trace, model, loader, r, args.samples)
    print(
        "\n| quantity | method | value (per round) | HVPs (median) | passes | s (median) | s per HVP |"
    )
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for name in dict.fromkeys(name for _, name, _ in rows):
        mine = [v for _, m, v in rows if m == name]
        kind = next(kd for kd, m, _ in rows if m == name)
        seconds = statistics.median(v["s"] for v in mine)
        hvps = statistics.median(v["hvps"] for v in mine)
        passes = statistics.median(v["passes"] for v in mine)
        medians[name] = seconds
        values = ", ".join(
            f"{v['value']:.6g}" + (f" ± {v['se']:.3g}" if "se" in v else "") for v in mine
        )
        print(
            f"| {kind} | {name} | {values} | {hvps:g} | {passes:g} | {seconds:.1f} | {seconds / hvps:.3f} |"
        )
    per_hvp = hvp_rounds(hessian, model, loader, args.rounds, 5)
    text = ", ".join(f"{o:.3f} / {t:.3f} = {o / t:.2f}x" for t, o in per_hvp)
    ratio = statistics.median(o / t for t, o in per_hvp)
    print(
        f"seconds per H v over the loader, ours / PyHessian's, 5 products per round: {text}; median {ratio:.2f}x"
    )
    ratios = ", ".join(
        f"{name}: {medians[name] / medians[power]:.2f}x" for name in (exact, loose, same)
    )
    print(f"\ntime per top eigenvalue, ours / PyHessian's (medians): {ratios}")


if __name__ == "__main__":
    main()
