"""The second-order columns of a sweep (``probe --second-order``; issue 24, point 1).

Eq. 4 reads ΔL(a) = aᵀg + ½ aᵀHa + o(ε²). With ``SweepConfig.second_order`` set (the
number of Hutchinson probes per group), every row of a sweep gets

- ``second_order``: ½ aᵀHa for the corruption a the row applied (one Hessian-vector product
  on the gradient's data; ``None`` for a fault that sets values instead of adding a delta);
- ``predicted_ratio``: (aᵀg + ½ aᵀHa) / (ε‖h‖_q), the second-order prediction of the row's
  measured ``ratio``; on a gradient row aᵀg = ε‖h‖_q, so it is 1 + ½ âᵀHâ / (ε‖h‖_q) (Theorem 2);
- ``predicted_mean`` and ``predicted_mean_stderr`` (random rows of the paper's L_p set): the
  expected loss change of a random corruption, tr(H)/k · E‖a‖₂² / 2 (:func:`random_sq_norm`);
- ``trace_per_k``, ``trace_per_k_stderr`` (tr(H)/k by Hutchinson) and ``lambda_max`` (Lanczos),
  the group's curvature, computed once per group and written on each of its rows.

Why tr(H)/k · E‖a‖₂²: the random corruption applies Proposition 1 to r ~ N(0, I_k). Flipping
the sign of one r_i flips a_i alone and leaves the law of r unchanged, so E[a_i a_j] = 0 for
i ≠ j; permuting coordinates leaves it unchanged too, so E[a_i²] = E‖a‖₂²/k for every i. Hence
E[aᵀHa] = Σ_i H_ii E[a_i²] = tr(H) · E‖a‖₂²/k, and E[aᵀg] = 0. ‖a‖₂² is ε² for p = 2 (any n)
and p = 1, nε² for p = ∞ and ε² whenever n = 1; for other p it depends on the draw, and its
mean (a function of p, n, k alone) is estimated by Monte Carlo, with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._state import frozen_norm_stats, mode
from ..curvature import Curvature, curvature, hessian_vector_product
from ..errors import ParamCorruptError
from ..faults import FaultContext, FaultModel, RandomLp
from ..groups import ParameterGroup
from ..losses import LossFn, as_batch_loss
from .plan import row_seed
from .schema import SECOND_ORDER_KINDS

__all__ = [
    "LANCZOS_STEPS",
    "SECOND_ORDER_FIELDS",
    "SecondOrderTerms",
    "for_sweep",
    "module_without_double_backward",
    "random_sq_norm",
]

#: the row fields a second-order sweep adds, in order
SECOND_ORDER_FIELDS = tuple(SECOND_ORDER_KINDS)

#: Lanczos steps (Hessian-vector products) for a group's lambda_max, and its tolerance
LANCZOS_STEPS = 20
LANCZOS_TOL = 1e-3

#: Monte Carlo draws of ‖a‖₂² for a p outside {1, 2, ∞}: at most this many coordinates drawn
_MC_BUDGET = 2**24
_MC_DRAWS = (16, 400)


def random_sq_norm(
    p: float, n: int, k: int, eps: float = 1.0, *, generator: torch.Generator | None = None
) -> tuple[float, float]:
    """E‖a‖₂² of the random corruption on S(p, eps, n) over k coordinates, and its standard
    error (0.0 where it is exact: p = 1, 2 or ∞, or n = 1).

    Example:
        >>> random_sq_norm(float("inf"), 10, 100, 0.1)
        (0.10000000000000002, 0.0)
        >>> random_sq_norm(2.0, 10, 100, 0.1)
        (0.010000000000000002, 0.0)
    """
    if not 1 <= n <= k:
        raise ParamCorruptError(f"n must be in [1, k={k}], got n={n}")
    if p == math.inf:
        return n * eps**2, 0.0
    if p in (1.0, 2.0) or n == 1:
        return eps**2, 0.0
    generator = generator or torch.Generator().manual_seed(0)
    draws = max(_MC_DRAWS[0], min(_MC_DRAWS[1], _MC_BUDGET // k))
    values = []
    for _ in range(draws):
        r = torch.randn(k, generator=generator, dtype=torch.float64).abs()
        h = r if n == k else torch.topk(r, n).values
        h = h / h.max()  # |h|^(1/(p-1)) / ‖|h|^(1/(p-1))‖_p is unchanged by scaling h
        u = h.pow(1.0 / (p - 1.0))
        values.append(float(u.pow(2).sum() / u.pow(p).sum().pow(2.0 / p)))
    sample = torch.tensor(values, dtype=torch.float64) * eps**2
    return float(sample.mean()), float(sample.std(correction=1)) / math.sqrt(draws)


class SecondOrderTerms:
    """The second-order columns of one sweep: the groups' curvature (once per group) and the
    terms of each row.

    Args:
        model, gradient_loader, loss_fn: the sweep's; H is the Hessian of the loss on the
            gradient's data (where the row's ``ratio`` is measured), in evaluation mode.
        samples: Hutchinson probes per group (``SweepConfig.second_order``).
        seed: the sweep's seed (the probes and Lanczos' start come from it and the group).
    """

    def __init__(
        self,
        model: nn.Module,
        gradient_loader: Iterable[Any],
        loss_fn: LossFn,
        samples: int,
        seed: int,
    ) -> None:
        self.model, self.loader, self.loss_fn = model, gradient_loader, loss_fn
        self.samples, self.seed = samples, seed
        self.groups: dict[str, Curvature] = {}
        self.factors: dict[tuple[str, float, int], tuple[float, float]] = {}

    def prepare(
        self, label: str, group: ParameterGroup, loader: Iterable[Any], distributed: bool
    ) -> Curvature:
        """tr(H)/k (Hutchinson) and lambda_max (Lanczos) of one group, once; every rank of a
        distributed sweep calls it with its shard of the data (the sums are all-reduced)."""
        if label not in self.groups:
            generator = torch.Generator().manual_seed(row_seed(self.seed, f"{label}|second-order"))
            try:
                self.groups[label] = curvature(
                    self.model,
                    loader,
                    self.loss_fn,
                    group,
                    top=1,
                    max_iter=LANCZOS_STEPS,
                    tol=LANCZOS_TOL,
                    trace_samples=self.samples,
                    generator=generator,
                    distributed=distributed,
                )
            except (
                ParamCorruptError,
                RuntimeError,
            ) as error:  # a RuntimeError: torch's, from a backward
                raise _named(error, self.model, self.loader, self.loss_fn, group) from error
        return self.groups[label]

    def fields(
        self,
        label: str,
        fault: FaultModel,
        ctx: FaultContext,
        corruption: Any,
        first_order: float | None,
    ) -> dict[str, Any]:
        """The second-order fields of one row (the model holds its clean weights)."""
        found = self.groups[label]
        out: dict[str, Any] = dict.fromkeys(SECOND_ORDER_FIELDS)
        out.update(
            trace_per_k=found.mean_eigenvalue,
            trace_per_k_stderr=found.trace_stderr / found.k,
            lambda_max=found.lambda_max,
        )
        if getattr(corruption, "mode", None) != "add":
            return out
        dense = corruption.dense(self.model)
        hv = hessian_vector_product(
            self.model,
            self.loader,
            self.loss_fn,
            dense,
            ParameterGroup(label, tuple(dense)),
            distributed=False,
        )  # one rank computes a row, on the whole data
        second = 0.5 * sum(float((dense[name].double() * hv[name]).sum()) for name in dense)
        out["second_order"] = second
        if first_order and ctx.gradient is not None:
            out["predicted_ratio"] = (corruption.dot(ctx.gradient) + second) / first_order
        if isinstance(fault, RandomLp):  # the paper's random set (not the relative one: tr(THT))
            constraint = fault.constraint(ctx.k)
            key = (label, constraint.p, constraint.size(ctx.k))
            if key not in self.factors:
                generator = torch.Generator().manual_seed(
                    row_seed(self.seed, f"{label}|{key[1]}|{key[2]}|norm")
                )
                self.factors[key] = random_sq_norm(constraint.p, key[2], ctx.k, generator=generator)
            factor, factor_se = self.factors[key]
            eps2 = constraint.eps**2 / 2
            mean, mean_se = found.trace / found.k, found.trace_stderr / found.k
            out["predicted_mean"] = mean * factor * eps2
            out["predicted_mean_stderr"] = math.hypot(mean_se * factor, mean * factor_se) * eps2
        return out


def _named(
    error: Exception,
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    group: ParameterGroup,
) -> Exception:
    """The error of a loss that cannot be differentiated twice, with the module named (a
    RuntimeError from torch is kept as it is unless a module is found to blame)."""
    if isinstance(error, ParamCorruptError) and "differentiated twice" not in str(error):
        return error
    module = module_without_double_backward(model, loader, loss_fn)
    if module is None:
        return error
    name, kind = module
    return ParamCorruptError(
        f"the module {name!r} ({kind}) has no double backward, needed for the Hessian of group "
        f"{group.name!r}: {(str(error).splitlines() or [type(error).__name__])[0]}"
    )


def module_without_double_backward(
    model: nn.Module, loader: Iterable[Any], loss_fn: LossFn
) -> tuple[str, str] | None:
    """(name, class) of the module nearest the loss whose backward cannot be differentiated
    (a custom function marked once_differentiable, cuDNN's RNN, a fused attention kernel),
    found on the first batch; ``None`` when every module passes. For error messages only:
    one backward per module, in evaluation mode, with nothing about the model changed."""
    seen: list[tuple[str, nn.Module, list[Tensor]]] = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            tensors = [t for t in _tensors(inputs) if t.requires_grad]
            seen.append(
                (
                    name,
                    module,
                    tensors + [p for p in module.parameters(recurse=False) if p.requires_grad],
                )
            )

        return record

    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook(name)) for name, m in leaves]
    try:
        with mode(model, False), frozen_norm_stats(model), torch.enable_grad():
            batch = next(iter(loader))
            loss = as_batch_loss(loss_fn(model, batch), batch).loss
            for name, module, tensors in reversed(seen):
                if tensors and not _twice_differentiable(loss, tensors):
                    return name or "(the model)", type(module).__name__
    finally:
        for handle in handles:
            handle.remove()
    return None


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _twice_differentiable(loss: Tensor, tensors: list[Tensor]) -> bool:
    """Whether d/dx (1ᵀ dL/dx) can be taken for the tensors x (a module's inputs and weights)."""
    try:
        grads = torch.autograd.grad(
            loss, tensors, create_graph=True, retain_graph=True, allow_unused=True
        )
        live = [g for g in grads if g is not None and g.requires_grad]
        if not live:
            return True
        if _through_error_node(
            live
        ):  # once_differentiable: backward through it may give 0 silently
            return False
        torch.autograd.grad(
            sum(g.sum() for g in live), tensors, retain_graph=True, allow_unused=True
        )
    except RuntimeError:
        return False
    return True


def for_sweep(
    config: Any,
    model: nn.Module,
    gradient_loader: Iterable[Any],
    loss_fn: LossFn,
    groups: Mapping[str, ParameterGroup],
    distributed: bool,
) -> SecondOrderTerms | None:
    """The sweep's :class:`SecondOrderTerms` with ``groups`` (label -> group: those with rows
    to compute) prepared, or ``None`` when ``config.second_order`` is None."""
    if config.second_order is None:
        return None
    from .. import parallel as D

    terms = SecondOrderTerms(model, gradient_loader, loss_fn, config.second_order, config.seed)
    loader = D.shard(gradient_loader) if distributed else gradient_loader
    for label, group in groups.items():
        terms.prepare(label, group, loader, distributed)
    return terms


def _through_error_node(grads: list[Tensor]) -> bool:
    """Whether the gradients' graph holds a node that stands for "no derivative here"."""
    seen: set[Any] = set()
    stack = [g.grad_fn for g in grads]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            if type(node).__name__ in ("Error", "DelayedError", "NotImplemented"):
                return True
            stack.extend(n for n, _ in node.next_functions)
    return False
