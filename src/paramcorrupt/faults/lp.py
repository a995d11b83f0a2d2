"""The paper's corruptions as fault models: L_p-bounded random (Definition 3), gradient-based
(Definition 4) and the multi-step ascent, over one grid of (p, n, eps); and their relative
(multiplicative) versions, ||a / |w| ||_p = eps, on the same grid, with the iterative worst
case there (APGD's projected ascent, ||a / |w| ||_p <= eps)."""

from __future__ import annotations

from typing import Any

from ..constraint import Constraint, dual_norm, parse_p
from ..corruption.base import Corruption
from ..corruption.gradient import gradient_corruption
from ..corruption.iterative import iterative_corruption
from ..corruption.iterative_relative import check_ascent, iterative_relative_corruption
from ..corruption.random import random_corruption
from ..corruption.relative import (
    relative_gradient_corruption,
    relative_random_corruption,
    relative_scale,
)
from ..errors import ParamCorruptError
from .base import FaultContext, FaultModel, register_fault

__all__ = [
    "GradientLp",
    "IterativeLp",
    "IterativeRelativeLp",
    "LpFault",
    "RandomLp",
    "RelativeGradientLp",
    "RelativeRandomLp",
]


class LpFault(FaultModel):
    """A corruption in S = {||a||_p = eps, ||a||_0 <= n} (Definition 1); n = None is n = k.

    An n larger than a group is clamped to its k (rows keep ``n_requested``).
    """

    parameters = ("p", "n", "eps")
    family = "lp"
    axes = ("eps",)
    # every L_p row records its first-order estimate eps ||top_n(g)||_q, random ones too
    uses_gradient = True

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        p, n, eps = parse_p(setting["p"]), setting["n"], setting["eps"]
        n = None if n == "all" else n
        Constraint(p, eps, n)  # validates each value
        return {"p": p, "n": n, "eps": float(eps)}

    def constraint(self, k: int) -> Constraint:
        """The constraint on a group of size k (n clamped to k)."""
        n = self.setting["n"]
        return Constraint(self.setting["p"], self.setting["eps"], k if n is None or n > k else n)

    def row_fields(self, ctx: FaultContext, corruption: Corruption | None = None) -> dict[str, Any]:
        s = self.setting
        return {"p": s["p"], "eps": s["eps"], "n": self.constraint(ctx.k).n, "n_requested": s["n"]}

    #: what the first-order estimate is the dual norm of (the cache's key)
    _vector = "gradient"

    def _first_order_vector(self, ctx: FaultContext) -> Any:
        return ctx.gradient

    def first_order(self, ctx: FaultContext) -> float | None:
        """eps ||top_n(v)||_q on the group (Proposition 1), v the gradient (|w| g for the
        relative set); None without a gradient. The norm is kept per (p, n) in ctx.cache."""
        if ctx.gradient is None:
            return None
        unit = self.constraint(ctx.k).with_eps(1.0)
        key = (self._vector, unit.p, unit.n)
        if key not in ctx.cache:
            ctx.cache[key] = dual_norm(self._first_order_vector(ctx), unit)
        return self.setting["eps"] * ctx.cache[key]


@register_fault
class RandomLp(LpFault):
    """Random corruption (Definition 3): Proposition 1 applied to a Gaussian draw."""

    name = "random"
    stochastic = True
    label, colour, order = "random", "tab:blue", 0
    theorem1_trials = True

    def corrupt(self, ctx: FaultContext) -> Corruption:
        return random_corruption(
            ctx.model, self.constraint(ctx.k), ctx.group, generator=ctx.generator
        )


@register_fault
class GradientLp(LpFault):
    """Gradient-based corruption (Definition 4): a_hat = argmax_{a in S} a.g in closed form."""

    name = "gradient"
    label, colour, order = "gradient-based", "tab:red", 1
    worst_case = True

    def corrupt(self, ctx: FaultContext) -> Corruption:
        return gradient_corruption(ctx.gradient, self.constraint(ctx.k), ctx.group)


@register_fault
class IterativeLp(LpFault):
    """Multi-step projected ascent from a_hat: ``steps`` steps (one value per sweep, no part of
    a row's key: the rows of earlier sweeps keep their keys)."""

    name = "iterative"
    fixed = ("steps",)
    defaults = {"steps": 5}
    label, colour, order = "multi-step", "tab:purple", 2

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        steps = setting["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ParamCorruptError(f"steps must be an integer >= 0, got {steps!r}")
        return {**super().check(setting), "steps": steps}

    def corrupt(self, ctx: FaultContext) -> Corruption:
        return iterative_corruption(
            ctx.model,
            self.constraint(ctx.k),
            ctx.loader,
            ctx.loss_fn,
            ctx.group,
            steps=self.setting["steps"],
            gradient=ctx.gradient,
        )


class _Relative(LpFault):
    """The relative set {||a / |w| ||_p = eps, ||a||_0 <= n} (T = |w|; see
    :func:`~paramcorrupt.corruption.relative_gradient_corruption`)."""

    _vector = "|w| gradient"

    def _first_order_vector(self, ctx: FaultContext) -> Any:
        scale = relative_scale(ctx.model, ctx.group)
        return {n: ctx.gradient[n] * scale[n].to(ctx.gradient[n].dtype) for n in scale}


@register_fault
class RelativeRandomLp(_Relative):
    """Random relative corruption: a = |w| b, b a random corruption of radius eps."""

    name = "relative-random"
    stochastic = True

    def corrupt(self, ctx: FaultContext) -> Corruption:
        return relative_random_corruption(
            ctx.model, self.constraint(ctx.k), ctx.group, generator=ctx.generator
        )


@register_fault
class RelativeGradientLp(_Relative):
    """Gradient-based relative corruption: a = |w| b, b the closed form for |w| g."""

    name = "relative-gradient"

    def corrupt(self, ctx: FaultContext) -> Corruption:
        return relative_gradient_corruption(
            ctx.model, ctx.gradient, self.constraint(ctx.k), ctx.group
        )


@register_fault
class IterativeRelativeLp(_Relative):
    """The iterative worst case on the relative set: projected ascent on
    {||a / |w| ||_p <= eps} from the one-step closed form (see
    :func:`~paramcorrupt.corruption.iterative_relative_corruption`). ``steps``, ``step_factor``
    (the step in a / |w| is step_factor x eps; APGD starts at 2) and ``schedule`` (``apgd`` or
    ``constant``) take one value per sweep."""

    name = "iterative-relative"
    fixed = ("steps", "step_factor", "schedule")
    defaults = {"steps": 20, "step_factor": 2.0, "schedule": "apgd"}
    label, colour, order = "multi-step relative", "tab:pink", 5

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        steps, factor, schedule = setting["steps"], setting["step_factor"], setting["schedule"]
        check_ascent(steps, factor, schedule, "step_factor")
        return {
            **super().check(setting),
            "steps": steps,
            "step_factor": float(factor),
            "schedule": schedule,
        }

    def corrupt(self, ctx: FaultContext) -> Corruption:
        s = self.setting
        return iterative_relative_corruption(
            ctx.model,
            self.constraint(ctx.k),
            ctx.loader,
            ctx.loss_fn,
            ctx.group,
            steps=s["steps"],
            step_size=s["step_factor"] * s["eps"],
            schedule=s["schedule"],
            gradient=ctx.gradient,
        )
