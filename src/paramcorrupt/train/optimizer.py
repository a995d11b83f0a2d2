"""Adversarial corruption-resistant training as an optimiser wrapper (Eq. 13).

.. math::
    L^*(w; B) = (1 - \\alpha) L(w; B) + \\alpha L(w + \\hat a; B)

with a_hat the closed-form gradient-based corruption of the batch gradient (Definition 4,
Proposition 1), held constant. One step:

1. forward/backward at w: the batch gradient g(w) (accumulated over micro-batches if the
   closure does so) and dL(w);
2. a_hat = argmax_{a in S} a.g(w): by default one constraint over every perturbed
   parameter, whatever optimiser group it sits in (top-n global across all of them, one
   p-norm normalisation), as SAM and the paper's S; ``scope="group"`` takes one per group;
3. climb to w + a_hat in place (saving what is overwritten: the n values for a sparse a_hat,
   the parameter for a dense one), forward/backward there with the batch-norm running
   statistics frozen;
4. return to w bit-exactly and let the base optimiser step on
   (1 - alpha) dL(w) + alpha dL(w + a_hat).

alpha = 1, p = 2, n = None (and the default ``scope="all"``) is SAM's update (Foret et al.,
2021) with rho = eps, for any number of optimiser groups.

The settings kept in the parameter groups are read and checked by
:mod:`paramcorrupt.train.settings`; steps 2-4 (a_hat, the climb and the way back, the
combined gradient) are :mod:`paramcorrupt.train.twopass`, shared with the finite-difference
regulariser. This module holds the wrapper: its groups, its state dict and the step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .._state import frozen_norm_stats
from ..errors import InputTypeError, ParamCorruptError
from .settings import GROUP_KEYS, SCOPES, check_groups, group_settings, scale_of, shared_constraint
from .twopass import Part, check_loss, climb, climb_plan, combine_gradients, descend, held_bytes

__all__ = ["CorruptionResistant"]

logger = logging.getLogger(__name__)


class CorruptionResistant(Optimizer):
    """Wrap any torch optimiser to minimise L* = (1 - alpha) L(w) + alpha L(w + a_hat) (Eq. 13).

    .. math::
        \\hat a = \\arg\\max_{\\|a\\|_p = \\epsilon,\\ \\|a\\|_0 \\le n} a \\cdot g(w), \\qquad
        w \\leftarrow \\mathrm{base\\_step}\\big(w,\\ (1-\\alpha)\\nabla L(w) + \\alpha \\nabla L(w + \\hat a)\\big)

    a_hat is the closed form of Proposition 1 on the batch gradient, held constant (no
    gradient flows through it). To first order L* = L + alpha * eps * ||top_n(g)||_q, the
    regulariser of Eq. 16 with lambda = alpha * eps. alpha = 1, p = 2, n = None is SAM with
    rho = eps.

    The parameter groups *are* the base optimiser's (one list of dicts), so learning-rate
    schedulers work on the wrapper. By default (``scope="all"``) a_hat maximises a.g under
    one constraint over every perturbed parameter, whatever optimiser group it is in (top-n
    across all of them, one p-norm normalisation): splitting the parameters into groups for
    the base optimiser (weight decay on weights, none on biases) does not change the
    perturbation, exactly as in SAM. ``scope="group"`` instead takes one constraint per group
    (each group's a_hat has norm eps and at most n entries), and then eps, p and n may differ
    per group. The settings are stored in each group as ``corruption_eps``, ``corruption_p``,
    ``corruption_n``, ``corruption_alpha`` (prefixed, because Adam has its own "eps" and
    RMSprop its own "alpha"). alpha may differ per group under either scope; a group with
    alpha = 0 is not perturbed and steps on its plain gradient.

    Use it with a closure (torch's convention: it clears the gradients, computes the loss,
    back-propagates it and returns it; it is called twice)::

        def closure():
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        loss = optimizer.step(closure)          # the loss at w

    or, when the loop must run the passes itself, with :meth:`first_step` and
    :meth:`second_step` (see their docs). Unlike davda54/sam, ``step(closure)`` runs the first
    pass too: do not back-propagate before calling it.

    Args:
        params: the parameters, or parameter groups (dicts) as for any torch optimiser; a
            group may set ``corruption_eps``, ``corruption_p``, ``corruption_n`` and
            ``corruption_alpha``.
        base_optimizer: the optimiser class to wrap (``torch.optim.SGD``, ``AdamW``, ...).
        eps: the radius of the corruption, > 0.
        p: its norm, in [1, inf] (default 2).
        n: the largest number of parameters it may change (default None: all), over all
            perturbed parameters (or per group with ``scope="group"``). When n is smaller
            than that, a_hat is stored as indices and values, so the extra memory of the
            climb grows with n, not with the model.
        alpha: the weight of the corrupted loss, in [0, 1] (default 0.5, the paper's).
        interval: take the two-pass step every ``interval`` steps and plain steps between
            (default 1: always).
        scope: ``"all"`` (default): one constraint S over every perturbed parameter across
            the optimiser groups, as SAM; the groups with alpha > 0 must then share eps, p
            and n. ``"group"``: one constraint per optimiser group.
        relative: corrupt relatively: S = {||a / T||_p = eps, ||a||_0 <= n} with
            T = |w| + eta (ASAM's set; alpha = 1, p = 2 is ASAM with rho = eps), by the change
            of variables a = T b. Per group as ``corruption_relative``.
        eta: T's offset, >= 0 (ASAM's eta; default 0). Per group as ``corruption_eta``.
        model: the model the parameters belong to; when given, the perturbed pass cannot
            change its batch-norm running statistics (only the pass at w counts).
        max_grad_norm: clip the total gradient norm of the combined gradient (after
            unscaling) to this value before the base step (default None: no clipping).
        grad_scaler: a ``torch.amp.GradScaler`` whose ``scale(loss)`` the closure
            back-propagates. The combined gradient is unscaled once; the step is skipped
            when either pass produced Inf/NaN. Call ``grad_scaler.update()`` after ``step``.
        **base_kwargs: the base optimiser's own arguments (``lr``, ``momentum``, ...).

    Raises:
        ValueError: for eps <= 0, p < 1, n < 1, alpha outside [0, 1], interval < 1,
            max_grad_norm <= 0, an unknown scope, or (scope "all") perturbed groups with
            different eps, p or n.
        TypeError: when ``base_optimizer`` is not an optimiser class.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> optimizer = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.05, lr=0.1)
        >>> def closure():
        ...     optimizer.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = optimizer.step(closure)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        eps: float,
        p: float = 2.0,
        n: int | None = None,
        alpha: float = 0.5,
        interval: int = 1,
        *,
        scope: str = "all",
        relative: bool = False,
        eta: float = 0.0,
        model: nn.Module | None = None,
        max_grad_norm: float | None = None,
        grad_scaler: Any = None,
        **base_kwargs: Any,
    ) -> None:
        if not callable(base_optimizer) or isinstance(base_optimizer, Optimizer):
            raise InputTypeError(
                f"base_optimizer must be an optimiser class such as torch.optim.SGD, got {base_optimizer!r:.80}; "
                "pass the class and its arguments as keywords (lr=..., momentum=...)"
            )
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ParamCorruptError(f"interval must be an integer >= 1, got interval={interval!r}")
        if scope not in SCOPES:
            raise ParamCorruptError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got scope={scope!r}")
        if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
            raise ParamCorruptError(f"max_grad_norm must be a number > 0 or None, got {max_grad_norm!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        if grad_scaler is not None and not all(hasattr(grad_scaler, a) for a in ("unscale_", "scale", "update")):
            raise InputTypeError(f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")
        defaults = {GROUP_KEYS["eps"]: eps, GROUP_KEYS["p"]: p, GROUP_KEYS["n"]: n, GROUP_KEYS["alpha"]: alpha}
        if relative or eta:  # only then: the groups of an absolute wrapper stay as they were
            defaults.update({GROUP_KEYS["relative"]: relative, GROUP_KEYS["eta"]: eta})
        group_settings(defaults)
        self._base: Optimizer | None = None
        super().__init__(params, defaults)
        base = base_optimizer(self.param_groups, **base_kwargs)
        if not isinstance(base, Optimizer):
            raise InputTypeError(f"base_optimizer(...) must build a torch.optim.Optimizer, got {type(base).__name__}")
        self._base = base
        self._link()
        self.defaults.update(base.defaults)
        #: "all" (one constraint over every perturbed parameter) or "group" (one per group)
        self.scope = scope
        if scope == "all":
            shared_constraint(self.param_groups)
        self.interval = interval
        self.model = model
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.grad_scaler = grad_scaler
        #: the number of steps taken (two-pass and plain); the interval counts on it
        self.steps = 0
        #: the loss of the last perturbed pass (at w + a_hat), detached; None after a plain step
        self.perturbed_loss: Tensor | float | None = None
        #: whether the last step was skipped because a pass produced Inf/NaN (GradScaler)
        self.skipped = False
        self._pending: dict[str, Any] | None = None

    # -- the shared groups -------------------------------------------------------------

    @property
    def base_optimizer(self) -> Optimizer:
        """The wrapped optimiser (its ``param_groups`` and ``state`` are this wrapper's)."""
        return self._base  # type: ignore[return-value]  # set at the end of __init__

    def _link(self) -> None:
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (with its own eps/p/n/alpha if given) to the wrapper and the base."""
        if not isinstance(param_group, dict):
            raise InputTypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        for key, value in self.defaults.items():
            if key in GROUP_KEYS.values():
                param_group.setdefault(key, value)
        group_settings(param_group)
        if self._base is None:
            super().add_param_group(param_group)
            return
        if self.scope == "all":
            shared_constraint([*self.param_groups, param_group])
        self._base.add_param_group(param_group)

    # -- state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state dict (its state and the shared groups, with eps, p, n
        and alpha) plus this wrapper's step count. Tensors and plain values only, so it
        loads with ``torch.load(..., weights_only=True)``.

        Raises:
            ValueError: between :meth:`first_step` and :meth:`second_step` (the parameters
                are at w + a_hat then).
        """
        if self._pending is not None:
            raise ParamCorruptError("state_dict() was called between first_step() and second_step(): the parameters are at w + a_hat")
        out = self.base_optimizer.state_dict()
        out["corruption_resistant"] = {"steps": self.steps, "interval": self.interval, "scope": self.scope}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (the base optimiser's state included)."""
        if not isinstance(state_dict, dict) or "corruption_resistant" not in state_dict:
            raise ParamCorruptError("not a CorruptionResistant state dict: the 'corruption_resistant' entry is missing")
        if self._pending is not None:
            raise ParamCorruptError("load_state_dict() was called between first_step() and second_step()")
        state_dict = dict(state_dict)
        extra = state_dict.pop("corruption_resistant")
        check_groups(state_dict["param_groups"], self.scope)
        self.base_optimizer.load_state_dict(state_dict)
        self._link()
        self.steps = int(extra["steps"])
        if int(extra.get("interval", self.interval)) != self.interval:
            logger.warning("the state dict was saved with interval=%s; keeping interval=%s", extra["interval"], self.interval)
        if extra.get("scope", self.scope) != self.scope:
            logger.warning("the state dict was saved with scope=%r; keeping scope=%r", extra["scope"], self.scope)

    # -- the step ----------------------------------------------------------------------

    @property
    def two_pass_due(self) -> bool:
        """Whether the next :meth:`step` takes the two-pass step (by ``interval`` and alpha)."""
        return self.steps % self.interval == 0 and any(g[GROUP_KEYS["alpha"]] > 0 for g in self.param_groups)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step of corruption-resistant training; returns the loss at w.

        Calls ``closure`` at w, climbs to w + a_hat, calls it again there (batch-norm
        statistics frozen when ``model`` was given), returns to w and steps the base
        optimiser on (1 - alpha) dL(w) + alpha dL(w + a_hat). On a plain step (between
        ``interval`` steps, or with alpha = 0 everywhere) the closure is called once, or not
        at all when none is given (then the gradients already in ``.grad`` are used).

        Raises:
            ValueError: when a two-pass step is due and no closure is given, or the gradient
                at w contains Inf/NaN without a GradScaler.
            TypeError: when the closure does not return the loss.
        """
        if self._pending is not None:
            raise ParamCorruptError("step() was called between first_step() and second_step(); call second_step() or restore()")
        if not self.two_pass_due:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = check_loss(closure(), "first")
            self._base_step()
            self.perturbed_loss = None
            self.steps += 1
            return loss
        if closure is None:
            raise ParamCorruptError(
                "CorruptionResistant.step() needs a closure that re-evaluates the loss (two forward/backward "
                "passes per step); without one, call first_step(), back-propagate at w + a_hat, then second_step()"
            )
        with torch.enable_grad():
            loss = check_loss(closure(), "first")
        if self.first_step():
            try:
                with torch.enable_grad():
                    perturbed = check_loss(closure(), "second (at w + a_hat)")
            except BaseException:
                self.restore()
                raise
            self.perturbed_loss = perturbed.detach() if isinstance(perturbed, Tensor) else perturbed
        self.second_step()
        return loss

    @torch.no_grad()
    def first_step(self) -> bool:
        """Phase one: from the gradients at w in ``.grad``, climb to w + a_hat.

        Back-propagate at w first (accumulating over micro-batches as you like: a_hat is
        chosen on the accumulated gradient). The gradients are set aside and ``.grad`` is
        cleared, so the pass at w + a_hat accumulates into fresh buffers. Then run the
        forward/backward pass at w + a_hat and call :meth:`second_step`.

        Returns:
            True if the parameters moved to w + a_hat; False when the gradient at w holds
            Inf/NaN under a GradScaler (the step will be skipped: the second pass may be
            left out).

        Raises:
            ValueError: when called twice without :meth:`second_step`, or for Inf/NaN in the
                gradient without a GradScaler.
        """
        if self._pending is not None:
            raise ParamCorruptError("first_step() was called twice; call second_step() or restore() in between")
        saved_grads: dict[Tensor, Tensor | None] = {}
        shared = shared_constraint(self.param_groups) if self.scope == "all" else None
        # one part per constraint: one per perturbed group, or one in all
        parts: list[Part] = []
        finite = True
        for i, group in enumerate(self.param_groups):
            constraint, alpha = group_settings(group)
            params = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            if not params:
                continue
            top = float(torch.stack([p.grad.detach().abs().amax().float() for p in params]).max())
            if not math.isfinite(top):
                if self.grad_scaler is None:
                    raise ParamCorruptError(
                        f"the gradient at w of parameter group {i} contains Inf or NaN; cannot take the "
                        "corruption a_hat from it (use a GradScaler to skip such steps)"
                    )
                finite = False
            if alpha == 0:
                continue
            scales = [scale_of(group, p) for p in params]
            if shared is not None and parts:
                _, together, together_scales, top_so_far = parts[0]
                parts[0] = (shared, together + params, together_scales + scales, max(top_so_far, top))
            else:
                parts.append((constraint if shared is None else shared, params, scales, top))
        if not any(p.grad is not None for group in self.param_groups for p in group["params"]):
            raise ParamCorruptError("first_step() found no gradient at w: back-propagate the loss at w first")
        plan = climb_plan(parts) if finite else []
        # set the gradient at w aside: the pass at w + a_hat fills fresh .grad buffers
        for group in self.param_groups:
            alpha = group[GROUP_KEYS["alpha"]]
            for p in group["params"]:
                if p.grad is not None:
                    saved_grads[p] = p.grad if (alpha < 1 or not finite) else None
                    p.grad = None
        stack = ExitStack()
        if self.model is not None and finite:
            stack.enter_context(frozen_norm_stats(self.model))
        try:
            climbed = climb(plan)  # to w + a_hat, in place; what is overwritten is saved
        except BaseException:
            stack.close()
            for p, g in saved_grads.items():
                p.grad = g
            raise
        self._pending = {"grads": saved_grads, "climbed": climbed, "stack": stack, "finite": finite}
        return finite

    @torch.no_grad()
    def restore(self) -> None:
        """Abandon a step after :meth:`first_step`: return to w, put the gradient at w back
        in ``.grad`` and release the batch-norm statistics. Nothing is stepped."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        try:
            self._return_to_w(pending)
        finally:
            for p, g in pending["grads"].items():
                p.grad = g

    @staticmethod
    def _return_to_w(pending: dict[str, Any]) -> None:
        """Back from w + a_hat to w bit-exactly; release the batch-norm statistics."""
        try:
            descend(pending["climbed"])
        finally:
            pending["stack"].close()

    @torch.no_grad()
    def second_step(self) -> None:
        """Phase two: back from w + a_hat to w, then the base step on the combined gradient.

        Call it after back-propagating at w + a_hat. The gradient becomes
        (1 - alpha) dL(w) + alpha dL(w + a_hat) per group, clipped if ``max_grad_norm`` is
        set, unscaled once if a GradScaler is used (the step is skipped on Inf/NaN).

        Raises:
            ValueError: without a preceding :meth:`first_step`, when no gradient was computed
                at w + a_hat, or (without a GradScaler) when it holds Inf/NaN.
        """
        pending = self._pending
        if pending is None:
            raise ParamCorruptError("second_step() needs a preceding first_step()")
        if pending["finite"] and pending["climbed"] and all(p.grad is None for p in pending["grads"]):
            self.restore()
            raise ParamCorruptError(
                "no gradient was computed at w + a_hat: back-propagate the loss between first_step() and second_step()"
            )
        self._pending = None
        self._return_to_w(pending)
        saved_grads = pending["grads"]
        if not pending["finite"]:
            for p, g in saved_grads.items():
                p.grad = g
        else:
            combine_gradients(self.param_groups, saved_grads)  # (1 - alpha) g(w) + alpha g(w + a_hat)
        self._base_step()
        self.steps += 1

    def _base_step(self) -> None:
        """Unscale (once), skip on Inf/NaN, clip, and step the base optimiser at w."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.skipped = False
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            self.grad_scaler.unscale_(self)
            if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
                self.skipped = True
                logger.info("step %d skipped: Inf/NaN in the gradient (GradScaler)", self.steps)
                return
        if self.max_grad_norm is not None and grads:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.base_optimizer.step()

    # -- helpers -------------------------------------------------------------------------

    @classmethod
    def from_regularizer(
        cls,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        lam: float,
        h: float,
        p: float = 2.0,
        n: int | None = None,
        **kwargs: Any,
    ) -> CorruptionResistant:
        """Train L_a = L + lam ||top_n(g)||_q (Eq. 16) by the finite-difference form.

        The gradient of lam ||g||_q is (lam / h)(g(w + a_h) - g(w)) + O(h), a_h the closed-form
        corruption of radius h: the two-pass step with eps = h and alpha = lam / h (the
        relation lambda = alpha * eps).

        Raises:
            ValueError: when lam > h (alpha would exceed 1: use a larger h or the exact
                :func:`~paramcorrupt.train.regularized_loss`), or lam < 0, h <= 0.
        """
        if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
            raise ParamCorruptError(f"h must be a finite number > 0, got h={h!r}")
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ParamCorruptError(f"lam must be a finite number >= 0, got lam={lam!r}")
        if lam > h:
            raise ParamCorruptError(f"lam={lam} > h={h} would need alpha = lam / h > 1; choose h >= lam")
        return cls(params, base_optimizer, eps=h, p=p, n=n, alpha=lam / h, **kwargs)

    def perturbation_nbytes(self) -> int:
        """Bytes held for the climb between :meth:`first_step` and :meth:`second_step`:
        the saved values of w (n per group when sparse, the parameters when dense), the
        indices, and the set-aside gradient at w. 0 outside a step."""
        pending = self._pending
        if pending is None:
            return 0
        return held_bytes(pending["climbed"], pending["grads"])

    def __repr__(self) -> str:
        return f"CorruptionResistant(scope={self.scope!r}, interval={self.interval}, base={self.base_optimizer!r})"
