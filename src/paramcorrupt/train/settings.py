"""The settings :class:`~paramcorrupt.train.CorruptionResistant` keeps in each parameter group.

The groups are shared with the base optimiser, so the wrapper's eps, p, n, alpha (and, for a
relative corruption, eta) live in them under prefixed keys (:data:`GROUP_KEYS`). This module
reads and checks them: one group's constraint and alpha (:func:`group_settings`), the scale T
of a relative group (:func:`scale_of`), the one constraint of ``scope="all"``
(:func:`shared_constraint`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..constraint import Constraint
from ..errors import InputTypeError, ParamCorruptError

__all__ = ["GROUP_KEYS", "SCOPES", "check_groups", "group_settings", "scale_of", "shared_constraint"]

#: The keys a parameter group holds this wrapper's hyperparameters under. They carry a
#: prefix because the groups are shared with the base optimiser, whose own keys would
#: collide ("eps" in Adam, "alpha" in RMSprop).
GROUP_KEYS = {
    "eps": "corruption_eps",
    "p": "corruption_p",
    "n": "corruption_n",
    "alpha": "corruption_alpha",
    "relative": "corruption_relative",
    "eta": "corruption_eta",
}

#: Where the constraint S applies: "all" (one S over every perturbed parameter across the
#: optimiser groups, as SAM) or "group" (one S per optimiser group).
SCOPES = ("all", "group")


def group_settings(group: dict[str, Any]) -> tuple[Constraint, float]:
    """Validate one group's eps, p, n and alpha; return (constraint, alpha)."""
    alpha = group[GROUP_KEYS["alpha"]]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ParamCorruptError(f"alpha must be a number in [0, 1], got alpha={alpha!r}")
    constraint = Constraint(group[GROUP_KEYS["p"]], group[GROUP_KEYS["eps"]], group[GROUP_KEYS["n"]])
    relative, eta = group.get(GROUP_KEYS["relative"], False), group.get(GROUP_KEYS["eta"], 0.0)
    if not isinstance(relative, bool):
        raise InputTypeError(f"relative must be True or False, got relative={relative!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ParamCorruptError(f"eta must be a finite number >= 0, got eta={eta!r}")
    return constraint, float(alpha)


def scale_of(group: dict[str, Any], param: Tensor) -> Tensor | None:
    """T = |w| + eta for a relative group (ASAM's T_w), None for an absolute one."""
    if not group.get(GROUP_KEYS["relative"], False):
        return None
    return param.detach().abs().add_(group.get(GROUP_KEYS["eta"], 0.0))


def shared_constraint(groups: Sequence[dict[str, Any]]) -> Constraint | None:
    """The one constraint of ``scope="all"``: every perturbed group (alpha > 0) must give the
    same eps, p and n. ``None`` when no group is perturbed.

    Raises:
        ValueError: naming the first two groups whose settings differ.
    """
    shared: tuple[int, Constraint] | None = None
    for i, group in enumerate(groups):
        constraint, alpha = group_settings(group)
        if alpha == 0:
            continue
        if shared is None:
            shared = (i, constraint)
        elif constraint != shared[1]:
            j, first = shared
            raise ParamCorruptError(
                f"parameter groups {j} and {i} set different corruption settings "
                f"(p={first.p}, eps={first.eps}, n={first.n} vs p={constraint.p}, eps={constraint.eps}, n={constraint.n}); "
                "with scope='all' one constraint covers every perturbed parameter: give the groups the same "
                "corruption_eps/_p/_n, or pass scope='group' for one constraint per group"
            )
    return None if shared is None else shared[1]


def check_groups(groups: Sequence[dict[str, Any]], scope: str) -> None:
    """Check every group's settings and, under ``scope="all"``, that the perturbed ones agree."""
    for group in groups:
        group_settings(group)
    if scope == "all":
        shared_constraint(groups)
