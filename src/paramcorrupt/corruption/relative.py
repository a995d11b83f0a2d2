"""Relative corruption: a = T b with T = diag(|w| + eta) and ||b||_p = eps (ASAM's set),
gradient-based and random."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..constraint import Constraint
from ..errors import ParamCorruptError
from ..groups import ParameterGroup
from .base import Corruption, _build
from .gradient import _group_gradient
from .random import random_corruption


def relative_scale(model: nn.Module, group: ParameterGroup, eta: float = 0.0) -> dict[str, Tensor]:
    """T = |w| + eta per coordinate of the group (detached copies).

    Raises:
        ValueError: for eta < 0 or not finite.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ParamCorruptError(f"eta must be a finite number >= 0, got eta={eta!r}")
    return {name: p.detach().abs() + eta for name, p in group.tensors(model).items()}


def times_scale(value: Tensor, scale: Tensor, idx: Tensor | None) -> Tensor:
    """T b at the entry's coordinates: ``value * scale`` (the flat ``idx`` of ``scale`` for a
    sparse entry), computed in ``value``'s dtype and returned in ``scale``'s."""
    at = scale if idx is None else scale.reshape(-1)[idx]
    return (value * at.to(value.dtype)).to(scale.dtype)


def _relative(b: Corruption, scale: dict[str, Tensor], method: str, eta: float) -> Corruption:
    """a = T b: the change of variables that maps S = {||b||_p = eps, ||b||_0 <= n} onto the
    relative set {||a / T||_p = eps, ||a||_0 <= n}."""
    values = {name: times_scale(b.values[name], scale[name], idx) for name, idx in b.indices.items()}
    return Corruption(b.group, b.constraint, method, dict(b.indices), values, {"relative": True, "eta": float(eta)})


def relative_gradient_corruption(
    model: nn.Module,
    gradient: Mapping[str, Tensor],
    constraint: Constraint,
    group: ParameterGroup | None = None,
    *,
    eta: float = 0.0,
) -> Corruption:
    """The worst relative corruption to first order: argmax a.g over
    {||a / T||_p = eps, ||a||_0 <= n}, T = |w| + eta (ASAM's set, multiplicative noise of
    analog memory), in closed form by a = T b: b is Definition 4's a_hat for the gradient T g.

    Coordinates with T = 0 (w = 0 and eta = 0) cannot change. ``info["first_order"]`` is
    a.g = eps ||top_n(T g)||_q; ``constraint`` bounds a / T, not a.

    Example:
        >>> model = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[2.0, -0.5]]))
        >>> a = relative_gradient_corruption(model, {"weight": torch.ones(1, 2)}, Constraint(float("inf"), 0.1))
        >>> a.values["weight"]
        tensor([[0.2000, 0.0500]])
    """
    group, g = _group_gradient(gradient, group)
    scale = relative_scale(model, group, eta)
    # b = Definition 4's a_hat for the gradient T g; a = T b
    b = _build(group, g, [g[name] * scale[name].to(g[name].dtype) for name in g], constraint, "relative-gradient")
    corruption = _relative(b, scale, "relative-gradient", eta)
    corruption.info["first_order"] = corruption.dot(g)
    return corruption


def relative_random_corruption(
    model: nn.Module,
    constraint: Constraint,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator,
) -> Corruption:
    """A random relative corruption: a = T b with b Definition 3's random corruption of
    radius eps (||a / T||_p = eps), T = |w| + eta."""
    b = random_corruption(model, constraint, group, generator=generator)
    return _relative(b, relative_scale(model, b.group, eta), "relative-random", eta)
