"""Gradient-based corruption (Definition 4): the closed form of Proposition 1 applied to the
data set gradient."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..constraint import Constraint, check_tensors, tensors_lp_norm
from ..errors import ParamCorruptError
from ..groups import ParameterGroup
from .base import Corruption, _build


def _group_gradient(gradient: Mapping[str, Tensor], group: ParameterGroup | None) -> tuple[ParameterGroup, dict[str, Tensor]]:
    """The group (default: every entry of ``gradient``) and its slice of the gradient, checked.

    Raises:
        ValueError: for a name missing from ``gradient``, or NaN/Inf in it.
    """
    if group is None:
        group = ParameterGroup("all", tuple(gradient))
    missing = [n for n in group.names if n not in gradient]
    if missing:
        raise ParamCorruptError(f"the gradient has no entry for parameter {missing[0]!r} of group {group.name!r}")
    g = {name: gradient[name] for name in group.names}
    check_tensors(list(g.values()), list(g))
    return group, g


def gradient_corruption(
    gradient: Mapping[str, Tensor],
    constraint: Constraint,
    group: ParameterGroup | None = None,
) -> Corruption:
    """Gradient-based corruption (Definition 4): a_hat = argmax_{a in S} a.g, in closed form.

    Args:
        gradient: name -> the data set gradient of each parameter of the group (see
            :func:`~paramcorrupt.dataset_gradient`); a larger mapping is sliced by ``group``.
        constraint: the set S.
        group: which entries of ``gradient`` form the group (default: all of them).

    Returns:
        The corruption; ``info["first_order"]`` holds a_hat.g = eps * ||top_n(g)||_q, the
        first-order estimate of the loss change, and ``info["G"]`` holds ||g||_2 on the group.

    Raises:
        ValueError: for a name missing from ``gradient``, NaN/Inf in it, or n > k.

    Example:
        >>> a = gradient_corruption({"w": torch.tensor([1.0, -2.0])}, Constraint(p=float("inf"), eps=0.1))
        >>> a.values["w"], round(a.info["first_order"], 6)
        (tensor([ 0.1000, -0.1000]), 0.3)
    """
    group, g = _group_gradient(gradient, group)
    corruption = _build(group, g, list(g.values()), constraint, "gradient")
    corruption.info["first_order"] = corruption.dot(g)
    corruption.info["G"] = tensors_lp_norm(list(g.values()), 2)
    return corruption
