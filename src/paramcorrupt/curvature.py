"""The curvature of the data set loss on a parameter group (issue 24, point 1).

The paper's Eq. 4 reads ΔL = aᵀg + ½ aᵀHa + o(ε²) and Theorem 1 makes the random
corruption's mean loss change O(tr(H)/k · ε²): this module gives the second-order term.
Everything is built on Hessian-vector products of the *exact* data set loss

    H v = sum_b W_b H_b v / sum_b W_b,   H_b = d²L_b/dw²  (on the group's parameters)

accumulated exactly like :func:`~paramcorrupt.gradient.dataset_gradient` (batch weights
from the loss function, sums in float64, all-reduced over the processes of
``torch.distributed`` through :mod:`paramcorrupt.parallel.comm`), by double backward. On top
of them: the top eigenvalues (Lanczos with full reorthogonalisation), the trace (Hutchinson
with Rademacher probes from an explicit ``torch.Generator``, with its standard error, or
exactly from k unit vectors) and the quadratic form aᵀHa of a corruption.

The model is run in evaluation mode by default, its batch-norm statistics frozen, and left
bit for bit as it was (parameters, ``.grad``, ``requires_grad``, modes, buffers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._state import frozen_norm_stats, mode
from .corruption import Corruption
from .errors import InputTypeError, ParamCorruptError
from .groups import ParameterGroup, as_group
from .losses import LossFn, as_batch_loss
from .parallel.comm import all_reduce_sums, use_distributed

__all__ = ["Curvature", "curvature", "hessian_vector_product", "quadratic_form"]

#: the orders ``which`` accepts for the top eigenvalues
WHICH = ("largest", "magnitude")

Vector = list[Tensor]  # one float64 tensor per parameter of the group, in group order


@dataclass(frozen=True)
class Curvature:
    """The curvature of the data set loss on one parameter group.

    Attributes:
        group: the group's label.
        k: the group's number of scalar parameters.
        eigenvalues: the top eigenvalues of H, best first (by value for ``which="largest"``,
            by absolute value for ``"magnitude"``); empty when none were asked for.
        converged: every returned eigenvalue met the residual tolerance (or the Krylov space
            was the whole group, which makes them exact).
        trace: tr(H) (Hutchinson's estimate, or exact), ``None`` when not asked for.
        trace_stderr: its standard error (0.0 for the exact trace).
        trace_samples: the probes Hutchinson used (k for the exact trace, 0 for none).
        hvps: the Hessian-vector products computed (each is one over the whole data set).
        passes: the passes over the data they took (several products share one pass).
    """

    group: str
    k: int
    eigenvalues: tuple[float, ...]
    converged: bool
    trace: float | None
    trace_stderr: float | None
    trace_samples: int
    hvps: int
    passes: int

    @property
    def lambda_max(self) -> float | None:
        """The first eigenvalue (``None`` when none was computed)."""
        return self.eigenvalues[0] if self.eigenvalues else None

    @property
    def mean_eigenvalue(self) -> float | None:
        """tr(H)/k, the factor of Theorem 1's random mean (``None`` without a trace)."""
        return None if self.trace is None else self.trace / self.k


class _HessianOperator:
    """v -> H v on the whole data set for a group; several vectors share one data pass."""

    def __init__(self, model: nn.Module, loader: Iterable[Any], loss_fn: LossFn, group: ParameterGroup,
                 train_mode: bool, distributed: bool | None) -> None:
        self.model, self.loader, self.loss_fn, self.group = model, loader, loss_fn, group
        self.train_mode, self.distributed = train_mode, distributed
        self.tensors = list(group.tensors(model).values())
        self.hvps = 0
        self.passes = 0

    def zeros(self) -> Vector:
        return [torch.zeros(t.shape, dtype=torch.float64, device=t.device) for t in self.tensors]

    def __call__(self, vectors: Sequence[Vector]) -> list[Vector]:
        tensors = self.tensors
        sums = [self.zeros() for _ in vectors]
        total_weight = 0.0
        flags = [t.requires_grad for t in tensors]
        try:
            for t in tensors:
                t.requires_grad_(True)
            with mode(self.model, self.train_mode), frozen_norm_stats(self.model), torch.enable_grad(), \
                    _math_attention():
                for batch in self.loader:
                    weight = self._add_batch(batch, vectors, sums)
                    total_weight += weight
        finally:
            for t, flag in zip(tensors, flags):
                t.requires_grad_(flag)
        if use_distributed(self.distributed):  # sum the shards: an empty one adds zeros
            flat, (total_weight,) = all_reduce_sums([s for v in sums for s in v], [total_weight])
            sums = [flat[i * len(tensors):(i + 1) * len(tensors)] for i in range(len(vectors))]
        if total_weight == 0:
            raise ParamCorruptError("the loader yielded no batch: cannot compute a Hessian-vector product")
        self.hvps += len(vectors)
        self.passes += 1
        out = [[s / total_weight for s in v] for v in sums]
        for hv in out:
            for name, h in zip(self.group.names, hv):
                if not torch.isfinite(h).all():
                    raise ParamCorruptError(f"the Hessian-vector product on {name!r} contains NaN or Inf")
        return out

    def _add_batch(self, batch: Any, vectors: Sequence[Vector], sums: list[Vector]) -> float:
        """Add W_b H_b v to each sum; return W_b."""
        result = as_batch_loss(self.loss_fn(self.model, batch), batch)
        if not torch.isfinite(result.loss):
            raise ParamCorruptError(f"the loss of a batch is {float(result.loss.detach())}; cannot take its Hessian")
        grads = torch.autograd.grad(result.loss, self.tensors, create_graph=True, allow_unused=True)
        # a gradient that does not depend on the parameters (None, or no graph) adds H_b = 0
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not live:
            return result.weight
        broken = _non_differentiable_node([grads[i] for i in live])
        if broken is not None:
            raise ParamCorruptError(
                f"the loss cannot be differentiated twice with respect to group {self.group.name!r}: its gradient "
                f"passes through {broken}, a function without double backward (e.g. marked @once_differentiable)"
            )
        for j, vector in enumerate(vectors):
            dot = sum((grads[i] * vector[i].to(grads[i].dtype)).sum() for i in live)
            try:
                hv = torch.autograd.grad(dot, self.tensors, retain_graph=j < len(vectors) - 1, allow_unused=True)
            except RuntimeError as error:
                first = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ParamCorruptError(
                    f"the loss cannot be differentiated twice with respect to group {self.group.name!r} "
                    f"(a Hessian needs double backward through every module): {first}"
                ) from error
            for s, h in zip(sums[j], hv):
                if h is not None:
                    s.add_(h.to(torch.float64), alpha=result.weight)
        return result.weight


def _math_attention() -> AbstractContextManager[Any]:
    """``F.scaled_dot_product_attention`` by its math kernel: the fused ones (flash,
    memory-efficient, flash on CPU) have no double backward; the function is the same."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no kernel choice here
        return nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


#: autograd nodes that stand for "no derivative here": backward through them raises, and a
#: graph that only reaches the parameters through them silently gives H v = 0
_BROKEN_NODES = ("Error", "DelayedError", "NotImplemented")


def _non_differentiable_node(grads: Sequence[Tensor]) -> str | None:
    """The name of an autograd node of the gradients' graph that cannot be differentiated."""
    seen: set[Any] = set()
    stack = [g.grad_fn for g in grads]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in _BROKEN_NODES:
            return f"the autograd node {node.name()!r}"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return None


def _dot(a: Vector, b: Vector) -> float:
    parts = [torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]
    if all(p.device == parts[0].device for p in parts):  # one device: one synchronisation
        return float(torch.stack(parts).sum())
    return float(sum(float(p) for p in parts))


def _axpy(alpha: float, x: Vector, y: Vector) -> None:
    """y += alpha * x, in place."""
    for xi, yi in zip(x, y):
        yi.add_(xi, alpha=alpha)


def _random_vector(like: Vector, generator: torch.Generator, rademacher: bool) -> Vector:
    """Drawn on the CPU from ``generator`` (the same numbers on every device and rank)."""
    out = []
    for t in like:
        if rademacher:
            r = torch.randint(0, 2, t.shape, generator=generator, dtype=torch.int64).double().mul_(2).sub_(1)
        else:
            r = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        out.append(r.to(t.device))
    return out


def _check_count(value: Any, what: str, allow_none: bool = False, minimum: int = 1, why: str = "") -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{what} must be an integer{' or None' if allow_none else ''}, got {value!r}")
    if value < minimum:
        raise ParamCorruptError(f"{what} must be at least {minimum}{why}, got {what}={value}")


def _group_of(model: nn.Module, group: ParameterGroup | str | Iterable[str] | None) -> tuple[ParameterGroup, int]:
    """The group and its k; a group without parameters is refused."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    group = as_group(model, group)
    params = group.tensors(model)
    if not params:
        raise ParamCorruptError(f"group {group.name!r} has no parameters: its Hessian is empty")
    for name, p in params.items():
        if not p.is_floating_point():
            raise InputTypeError(f"parameter {name!r} has dtype {p.dtype}; a Hessian needs floating-point parameters")
    return group, sum(p.numel() for p in params.values())


def hessian_vector_product(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    vector: Mapping[str, Tensor],
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    train_mode: bool = False,
    distributed: bool | None = None,
) -> dict[str, Tensor]:
    """H v for the mean loss over a whole loader, on a group's parameters (float64).

    Args:
        model, loader, loss_fn, train_mode, distributed: as for
            :func:`~paramcorrupt.dataset_gradient` (batch weights, eval mode by default,
            float64 sums, all-reduced when a process group is initialised).
        vector: name -> tensor shaped like each parameter of the group (every name needed).
        group: the parameters H is taken over (default: every trainable one).

    Returns:
        name -> (H v) for that parameter, in float64.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> data = [(torch.randn(4, 2), torch.randn(4, 1))]
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> v = {n: torch.ones_like(p) for n, p in model.named_parameters()}
        >>> sorted(hessian_vector_product(model, data, mse, v))
        ['bias', 'weight']
    """
    group, _ = _group_of(model, group)
    params = group.tensors(model)
    if not isinstance(vector, Mapping):
        raise InputTypeError(f"vector must map parameter names to tensors, got {type(vector).__name__}")
    missing = [n for n in params if n not in vector]
    if missing:
        raise ParamCorruptError(f"the vector has no entry for parameter {missing[0]!r} of group {group.name!r}")
    v = []
    for name, p in params.items():
        t = vector[name]
        if not isinstance(t, Tensor):
            raise InputTypeError(f"the vector's entry for {name!r} is a {type(t).__name__}, expected a Tensor")
        if tuple(t.shape) != tuple(p.shape):
            raise ParamCorruptError(f"the vector's entry for {name!r} has shape {tuple(t.shape)}, the parameter {tuple(p.shape)}")
        v.append(t.detach().to(device=p.device, dtype=torch.float64))
    op = _HessianOperator(model, loader, loss_fn, group, train_mode, distributed)
    return dict(zip(params, op([v])[0]))


def quadratic_form(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    corruption: Corruption | Mapping[str, Tensor],
    *,
    train_mode: bool = False,
    distributed: bool | None = None,
) -> float:
    """aᵀHa for a corruption's delta a (a :class:`~paramcorrupt.Corruption` that adds, or
    name -> dense delta), H the data set Hessian on the corruption's parameters.

    ½ aᵀHa is the second-order term of Eq. 4: ΔL(a) = aᵀg + ½ aᵀHa + o(‖a‖²).
    """
    if isinstance(corruption, Mapping):
        corruption = Corruption.from_deltas(corruption)
    if not isinstance(corruption, Corruption):
        raise InputTypeError(f"corruption must be a Corruption or a mapping name -> tensor, got {type(corruption).__name__}")
    if corruption.mode != "add":
        raise ParamCorruptError(
            f"the quadratic form needs a delta; the {corruption.method!r} corruption sets values (mode='set')"
        )
    group = ParameterGroup(corruption.group.name, tuple(corruption.values))
    _group_of(model, group)
    dense = corruption.dense(model)
    hv = hessian_vector_product(model, loader, loss_fn, dense, group, train_mode=train_mode, distributed=distributed)
    return sum(float((dense[n].double() * hv[n]).sum()) for n in group.names)


def curvature(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    top: int | None = 1,
    which: str = "largest",
    max_iter: int = 100,
    tol: float = 1e-6,
    trace_samples: int | None = 100,
    exact_trace: bool = False,
    vectors_per_pass: int = 8,
    seed: int = 0,
    generator: torch.Generator | None = None,
    train_mode: bool = False,
    distributed: bool | None = None,
) -> Curvature:
    """The top eigenvalues and the trace of the data set Hessian on one parameter group.

    Args:
        model, loader, loss_fn, group, train_mode, distributed: as for
            :func:`hessian_vector_product`.
        top: how many eigenvalues (Lanczos); ``None``: none.
        which: ``"largest"`` (algebraic: λ_max, the sharpness) or ``"magnitude"``
            (largest |λ|, what power iteration finds, as PyHessian).
        max_iter: the most Lanczos steps (one Hessian-vector product each; at most k).
        tol: Lanczos stops when every returned Ritz pair has ‖Hx − θx‖ ≤ tol·max|θ|.
        trace_samples: Hutchinson's Rademacher probes (at least 2, for the standard
            error); ``None``: no trace.
        exact_trace: the exact trace from the k unit vectors instead (k products).
        vectors_per_pass: products computed in one pass over the data (Hutchinson and
            the exact trace): memory 2·8·k bytes per vector, one forward and first
            backward shared by them.
        seed, generator: the random numbers (Lanczos' start vector, the probes) come from
            ``generator``, or a CPU generator seeded with ``seed``.

    Raises:
        ParamCorruptError: for a count below 1 (``top``, ``max_iter``, ``trace_samples`` < 2,
            ``vectors_per_pass``), ``top`` > k, a group without parameters, or a loss that
            cannot be differentiated twice (torch's cause in the message). Nothing about the
            model changes.
    """
    _check_count(top, "top", allow_none=True)
    _check_count(max_iter, "max_iter")
    if not exact_trace:
        _check_count(trace_samples, "trace_samples", True, 2, " (the standard error needs two probes)")
    _check_count(vectors_per_pass, "vectors_per_pass")
    _check_count(seed, "seed", minimum=-(2**63))
    if top is not None and max_iter < top:
        raise ParamCorruptError(f"max_iter={max_iter} is below top={top}: Lanczos needs a step per eigenvalue")
    if which not in WHICH:
        raise ParamCorruptError(f"which must be one of {', '.join(map(repr, WHICH))}, got which={which!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
        raise ParamCorruptError(f"tol must be a finite number > 0, got tol={tol!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    group, k = _group_of(model, group)
    if top is not None and top > k:
        raise ParamCorruptError(f"top={top} exceeds the number of parameters of group {group.name!r} (k={k})")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    op = _HessianOperator(model, loader, loss_fn, group, train_mode, distributed)
    eigenvalues: tuple[float, ...] = ()
    converged = True
    if top is not None:
        eigenvalues, converged = _lanczos(op, k, top, which, max_iter, float(tol), generator)
    trace = stderr = None
    samples = 0
    if exact_trace:
        trace, stderr, samples = _exact_trace(op, k, vectors_per_pass), 0.0, k
    elif trace_samples is not None:
        trace, stderr = _hutchinson(op, trace_samples, vectors_per_pass, generator)
        samples = trace_samples
    return Curvature(group.name, k, eigenvalues, converged, trace, stderr, samples, op.hvps, op.passes)


def _lanczos(op: _HessianOperator, k: int, top: int, which: str, max_iter: int, tol: float,
             generator: torch.Generator) -> tuple[tuple[float, ...], bool]:
    """The top Ritz values of H by Lanczos with full reorthogonalisation (float64).

    Stores every Lanczos vector: memory 8·k·(steps + 2) bytes. An invariant subspace found
    early (β ≈ 0) restarts from a random vector orthogonal to the basis, so that repeated
    eigenvalues are not missed for lack of a start component.
    """
    steps = min(max_iter, k)
    basis: list[Vector] = []
    alphas: list[float] = []
    betas: list[float] = []
    q = _random_vector(op.zeros(), generator, rademacher=False)
    _normalise(q)
    scale = 0.0
    values: Tensor = torch.zeros(0, dtype=torch.float64)
    converged = False
    start = 0  # where the current Krylov block (after the last restart) begins
    while True:
        basis.append(q)
        w = op([q])[0]
        alpha = _dot(w, q)
        alphas.append(alpha)
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            for b in basis:
                _axpy(-_dot(w, b), b, w)
        beta = math.sqrt(max(_dot(w, w), 0.0))
        m = len(alphas)
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(betas, dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        theta, vecs = torch.linalg.eigh(tri)
        order = torch.argsort(theta.abs() if which == "magnitude" else theta, descending=True)[:top]
        values = theta[order]
        scale = max(scale, float(theta.abs().max()), abs(alpha), beta)
        residuals = beta * vecs[-1, order].abs()
        if m == k:  # the Krylov space is the whole group: the Ritz values are H's eigenvalues
            converged = True
            break
        breakdown = beta <= 1e-12 * max(scale, 1e-300)
        limit = tol * max(scale, 1e-300)
        if m >= top and not breakdown and bool((residuals <= limit).all()) and _block_converged(
            tri[start:, start:], beta, which, limit
        ):
            converged = True
            break
        if m >= steps:
            break
        if breakdown:  # an invariant subspace: go on from a fresh direction orthogonal to it
            w = _random_vector(op.zeros(), generator, rademacher=False)
            for _ in range(2):
                for b in basis:
                    _axpy(-_dot(w, b), b, w)
            if _dot(w, w) <= 1e-24:
                converged = True
                break
            betas.append(0.0)
            start = m  # the new block: its extreme Ritz values must converge too
        else:
            betas.append(beta)
        q = w
        _normalise(q)
    return tuple(float(v) for v in values), converged


def _block_converged(block: Tensor, beta: float, which: str, limit: float) -> bool:
    """Whether the current block's extreme Ritz values have converged: after a restart the
    block explores the complement of the invariant subspace found, and may still hold a top
    eigenvalue (a repeated one) that the earlier blocks could not see."""
    theta, vecs = torch.linalg.eigh(block)
    ends = [len(theta) - 1, 0] if which == "magnitude" else [len(theta) - 1]
    return all(beta * abs(float(vecs[-1, i])) <= limit for i in ends)


def _normalise(v: Vector) -> None:
    norm = math.sqrt(_dot(v, v))
    for t in v:
        t.div_(norm)


def _hutchinson(op: _HessianOperator, samples: int, per_pass: int, generator: torch.Generator) -> tuple[float, float]:
    """Hutchinson's tr(H) ≈ mean_i zᵢᵀHzᵢ (Rademacher zᵢ) and its standard error."""
    values: list[float] = []
    while len(values) < samples:
        probes = [_random_vector(op.zeros(), generator, rademacher=True) for _ in range(min(per_pass, samples - len(values)))]
        for z, hz in zip(probes, op(probes)):
            values.append(_dot(z, hz))
    sample = torch.tensor(values, dtype=torch.float64)
    return float(sample.mean()), float(sample.std(correction=1)) / math.sqrt(samples)


def _exact_trace(op: _HessianOperator, k: int, per_pass: int) -> float:
    """tr(H) = Σᵢ eᵢᵀHeᵢ over the k unit vectors (k products, ``per_pass`` in one pass)."""
    coords = [(t, i) for t, tensor in enumerate(op.tensors) for i in range(tensor.numel())]
    total = 0.0
    for begin in range(0, k, per_pass):
        units = []
        for t, i in coords[begin : begin + per_pass]:
            e = op.zeros()
            e[t].view(-1)[i] = 1.0
            units.append(e)
        for (t, i), he in zip(coords[begin : begin + per_pass], op(units)):
            total += float(he[t].reshape(-1)[i])
    return total
