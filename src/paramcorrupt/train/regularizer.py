"""The adversarial corruption-resistant loss as a gradient regulariser (Eq. 16).

.. math::
    L_a(w; B) = L(w; B) + \\lambda \\, \\| \\mathrm{top}_n(g) \\|_q,
    \\qquad g = \\nabla_w L(w; B),\\quad q = p / (p - 1)

To first order it equals L* of Eq. 13 with lambda = alpha * eps (Eq. 14-15: L(w + a_hat)
= L(w) + eps ||top_n(g)||_q + O(eps^2)). Two ways to train it:

- exactly, by double back-propagation: :func:`regularized_loss` builds L_a with the graph
  of g, and ``backward()`` differentiates through it;
- by finite differences, with the two-pass machinery (:mod:`paramcorrupt.train.twopass`) of
  :class:`~paramcorrupt.train.CorruptionResistant`: the gradient of lambda ||g||_q is
  (lambda / h)(g(w + a_h) - g(w)) + O(h), a_h the closed-form corruption of radius h
  (:func:`finite_difference_gradient`; to train with it,
  :meth:`CorruptionResistant.from_regularizer`, i.e. eps = h and alpha = lambda / h).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..constraint import Constraint, dual_exponent, global_top_n
from ..errors import ParamCorruptError
from .twopass import check_loss, climb, descend, perturbation

__all__ = ["RegularizedLoss", "finite_difference_gradient", "gradient_norm", "regularized_loss"]


def _check(lam: float | None, p: float, n: int | None) -> None:
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0):
        raise ParamCorruptError(f"lam must be a finite number >= 0, got lam={lam!r}")
    Constraint(p, 1.0, n)  # validates p and n


def _params(params: Iterable[Tensor]) -> list[Tensor]:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ParamCorruptError("no parameter requires a gradient: nothing to regularise")
    return params


def gradient_norm(
    loss: Tensor, params: Iterable[Tensor], p: float = 2.0, n: int | None = None, *, create_graph: bool = True
) -> Tensor:
    """||top_n(dL/dw)||_q with q = p / (p - 1): the first-order gain of the worst corruption of
    unit radius (Eq. 11), as a differentiable scalar (Eq. 16's regularisation term).

    Args:
        loss: the scalar loss L(w; B), attached to the graph.
        params: the parameters w (those not requiring a gradient are ignored).
        p: the corruption's norm (q is its dual: p = 2 -> ||g||_2, p = inf -> ||g||_1).
        n: keep only the n largest |g_i| across all ``params`` (default None: all).
        create_graph: keep the graph of g so that the result can be back-propagated
            (double back-propagation). The graph of ``loss`` is kept either way.

    Example:
        >>> w = torch.tensor([3.0, -4.0], requires_grad=True)
        >>> float(gradient_norm((w * torch.tensor([1.0, 2.0])).sum(), [w]).detach())  # g = (1, 2)
        2.2360680103302
        >>> float(gradient_norm((w * torch.tensor([1.0, 2.0])).sum(), [w], p=float("inf")).detach())
        3.0
    """
    _check(None, p, n)
    params = _params(params)
    # the graph of L is kept: L itself is back-propagated too (L_a = L + lam ||g||_q)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, params)]
    q = dual_exponent(float(p))
    if n is not None and n < sum(g.numel() for g in grads):
        indices, _ = global_top_n(grads, n)
        kept = torch.cat([g.reshape(-1)[idx] for g, idx in zip(grads, indices)])
        return torch.linalg.vector_norm(kept, q)
    # ||concat(g_i)||_q = ||(||g_1||_q, ..., ||g_m||_q)||_q, without concatenating
    norms = torch.stack([torch.linalg.vector_norm(g, q) for g in grads])
    return torch.linalg.vector_norm(norms, q)


def regularized_loss(
    loss: Tensor, params: Iterable[Tensor], lam: float, p: float = 2.0, n: int | None = None
) -> Tensor:
    """L_a = L + lam * ||top_n(g)||_q (Eq. 16), exact: ``backward()`` runs double back-propagation.

    lam = alpha * eps relates it to L* of Eq. 13 (to first order).

    Args:
        loss: the scalar batch loss L(w; B), attached to the graph.
        params: the parameters w.
        lam: the weight lambda >= 0.
        p: the corruption's norm; the penalty is the dual norm q = p / (p - 1).
        n: penalise only the n largest gradient entries (default None: all).

    Raises:
        ValueError: for lam < 0, p < 1, n < 1 or no parameter requiring a gradient.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> loss = (w ** 2).sum()                      # g = 2w = (2, 4), ||g||_2 = sqrt(20)
        >>> total = regularized_loss(loss, [w], lam=0.5)
        >>> round(float(total.detach()), 4)
        7.2361
        >>> total.backward()                           # d/dw [w.w + 0.5 * 2 ||w||] = 2w + w / ||w||
        >>> w.grad
        tensor([2.4472, 4.8944])
    """
    _check(lam, p, n)
    if lam == 0:
        return loss
    return loss + lam * gradient_norm(loss, params, p, n, create_graph=True)


class RegularizedLoss:
    """L_a = L + lam * ||top_n(g)||_q (Eq. 16) as a loss transform: hyperparameters here,
    the loss and the parameters in the call. See :func:`regularized_loss`.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> round(float(RegularizedLoss(lam=0.5)((w ** 2).sum(), [w]).detach()), 4)
        7.2361
    """

    def __init__(self, lam: float, p: float = 2.0, n: int | None = None) -> None:
        _check(lam, p, n)
        self.lam, self.p, self.n = float(lam), float(p), n

    def __call__(self, loss: Tensor, params: Iterable[Tensor]) -> Tensor:
        return regularized_loss(loss, params, self.lam, self.p, self.n)

    def __repr__(self) -> str:
        return f"RegularizedLoss(lam={self.lam}, p={self.p}, n={self.n})"


def finite_difference_gradient(
    closure: Callable[[], Any],
    params: Sequence[Tensor],
    lam: float,
    p: float = 2.0,
    n: int | None = None,
    *,
    h: float = 1e-3,
) -> list[Tensor]:
    """The gradient of L_a = L + lam ||top_n(g)||_q (Eq. 16) by finite differences.

    .. math::
        \\nabla L_a \\approx g(w) + \\frac{\\lambda}{h}\\big(g(w + a_h) - g(w)\\big),
        \\qquad a_h = \\arg\\max_{\\|a\\|_p = h,\\ \\|a\\|_0 \\le n} a \\cdot g(w)

    using the two passes of :class:`~paramcorrupt.train.CorruptionResistant` (the climb to
    w + a_h is undone bit-exactly). The error is O(h); it tends to the exact gradient of
    :func:`regularized_loss` as h -> 0 (until rounding dominates: use float64 for small h).

    Args:
        closure: computes the loss and back-propagates it into ``.grad`` (it need not zero
            the gradients: they are cleared before each call); returns the loss.
        params: the parameters w.
        lam: the weight lambda >= 0.
        p: the corruption's norm; n: its sparsity (default None: all).
        h: the radius of the finite difference, > 0.

    Returns:
        One gradient tensor per parameter; ``.grad`` is left as it was before the call.
    """
    _check(lam, p, n)
    if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
        raise ParamCorruptError(f"h must be a finite number > 0, got h={h!r}")
    params = list(params)
    before = [w.grad for w in params]

    def gradient() -> list[Tensor]:
        for w in params:
            w.grad = None
        with torch.enable_grad():
            check_loss(closure(), "finite-difference")
        return [torch.zeros_like(w) if w.grad is None else w.grad for w in params]

    try:
        g_w = gradient()
        found = perturbation(g_w, Constraint(p, h, n))
        if found is None or lam == 0:
            return [g.clone() for g in g_w]
        indices, values = found
        climbed = climb([(params, indices, values)])  # to w + a_h, in place
        try:
            g_a = gradient()
        finally:
            descend(climbed)  # back to w, bit-exactly
        return [gw + (lam / h) * (ga - gw) for gw, ga in zip(g_w, g_a)]
    finally:
        for w, g in zip(params, before):
            w.grad = g
