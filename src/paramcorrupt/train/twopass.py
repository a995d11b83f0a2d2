"""The two-pass machinery: climb to w + a_hat, come back bit-exactly (Eq. 13-16).

Shared by :class:`~paramcorrupt.train.CorruptionResistant` and the finite-difference
regulariser (:func:`~paramcorrupt.train.finite_difference_gradient`):

- :func:`perturbation` — a_hat = argmax_{a in S} a.g, the closed form of Proposition 1;
- :func:`check_loss` — the closure must return the loss;
- :func:`climb_plan` — a_hat for each constraint of a step (the relative corruption by the
  change of variables a = T b);
- :func:`climb` / :func:`descend` — to w + a_hat in place, saving only what is overwritten,
  and back;
- :func:`combine_gradients` — (1 - alpha) g(w) + alpha g(w + a_hat), per group;
- :func:`held_bytes` — what a climb holds between the two passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..constraint import Constraint, sparse_closed_form
from ..corruption.apply import Saved, restore_in_place, write_in_place
from ..corruption.relative import times_scale
from ..errors import InputTypeError
from .settings import GROUP_KEYS

__all__ = ["Part", "Step", "check_loss", "climb", "climb_plan", "combine_gradients", "descend", "held_bytes", "perturbation"]

#: one constraint of a step: (constraint, its parameters, T per parameter or None, max |g|)
Part = tuple[Constraint, list[Tensor], list["Tensor | None"], float]
#: a_hat for one constraint: (parameters, flat indices per parameter or None, values)
Step = tuple[list[Tensor], list["Tensor | None"], list[Tensor]]


def perturbation(
    grads: Sequence[Tensor], constraint: Constraint, *, max_abs: float | None = None
) -> tuple[list[Tensor | None], list[Tensor]] | None:
    """a_hat = argmax_{a in S} a.g on one group (Definition 4), as (indices, values).

    Top-n is global across the group's tensors; ``indices[j] is None`` marks a dense entry.
    An n larger than the group counts as n = k. Returns ``None`` when g = 0 on the whole group
    (every point of S is then a maximiser; training takes no perturbation there).
    ``max_abs`` is max |g_i| when the caller already has it.
    """
    k = sum(g.numel() for g in grads)
    if constraint.n is not None and constraint.n >= k:
        constraint = Constraint(constraint.p, constraint.eps, None)
    if max_abs is None:
        max_abs = max(float(g.detach().abs().max()) for g in grads)
    if max_abs == 0.0:
        return None
    return sparse_closed_form([g.detach() for g in grads], constraint)


def check_loss(value: Any, which: str) -> Any:
    """The closure's return value, which must be the loss (a one-element tensor or a number)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise InputTypeError(f"the closure must return the loss as a scalar tensor; the {which} pass returned a tensor of shape {tuple(value.shape)}")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise InputTypeError(
        f"the closure must return the loss (a scalar tensor); the {which} pass returned {value!r:.80}. "
        "Write it as: def closure(): optimizer.zero_grad(); loss = ...; loss.backward(); return loss"
    )


def climb_plan(parts: Sequence[Part]) -> list[Step]:
    """a_hat for each constraint; a constraint whose gradient is 0 everywhere takes none.

    A relative constraint (some T given) takes b, the closed form for T g, and a = T b (the
    change of variables); an absolute one reuses the max |g| its part carries.
    """
    plan = []
    for constraint, params, scales, top in parts:
        if all(t is None for t in scales):
            found = perturbation([p.grad for p in params], constraint, max_abs=top)
        else:  # relative: a = T b, b the closed form for T g (change of variables)
            weighted = [p.grad if t is None else p.grad * t for p, t in zip(params, scales)]
            found = perturbation(weighted, constraint)
            if found is not None:
                found = (found[0], [v if t is None else times_scale(v, t, i) for v, t, i in zip(found[1], scales, found[0])])
        if found is not None:
            plan.append((params, found[0], found[1]))
    return plan


def climb(plan: Sequence[Step]) -> list[list[Saved]]:
    """Climb to w + a_hat in place; returns what :func:`descend` needs, per constraint.

    If a write fails, what was written is undone before the error propagates.
    """
    climbed: list[list[Saved]] = []
    try:
        for params, indices, values in plan:
            climbed.append(write_in_place(params, indices, values))
    except BaseException:
        descend(climbed)
        raise
    return climbed


def descend(climbed: Sequence[Sequence[Saved]]) -> None:
    """Back from w + a_hat to w bit-exactly: undo :func:`climb`, last constraint first."""
    for saved in reversed(climbed):
        restore_in_place(saved)


@torch.no_grad()
def combine_gradients(param_groups: Sequence[Mapping[str, Any]], saved_grads: Mapping[Tensor, Tensor | None]) -> None:
    """Set ``.grad`` to (1 - alpha) g(w) + alpha g(w + a_hat) per group, in place.

    ``saved_grads`` holds g(w) per parameter (``None`` where alpha = 1 made it unneeded);
    ``.grad`` holds g(w + a_hat). A parameter not in ``saved_grads`` is left as it is.
    """
    for group in param_groups:
        alpha = group[GROUP_KEYS["alpha"]]
        for p in group["params"]:
            if p not in saved_grads:
                continue
            g_w, g_a = saved_grads[p], p.grad
            if alpha == 0:
                p.grad = g_w
            elif alpha == 1:
                p.grad = g_a if g_a is not None else torch.zeros_like(p)
            elif g_a is None:
                p.grad = g_w.mul_(1 - alpha)
            else:
                p.grad = g_a.mul_(alpha).add_(g_w, alpha=1 - alpha)


def held_bytes(climbed: Sequence[Sequence[Saved]], saved_grads: Mapping[Tensor, Tensor | None]) -> int:
    """Bytes a climb holds: the saved values of w and their indices, and the gradient at w."""
    total = 0
    for saved in climbed:
        total += sum(s.numel() * s.element_size() for _, _, s in saved)
        total += sum(i.numel() * i.element_size() for _, i, _ in saved if i is not None)
    total += sum(g.numel() * g.element_size() for g in saved_grads.values() if g is not None)
    return total
