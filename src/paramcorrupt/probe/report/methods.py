"""What the report shows of a method, asked of its fault model by the name its rows carry.

A fault model declares it (:class:`~paramcorrupt.faults.FaultModel`: ``label``, ``colour``,
``order``, ``stochastic``, ``theorem1_trials``, ``worst_case``); a method this process does
not know (a user's fault model, not imported here) gets the defaults: its name as label, the
colour cycle's next colour, a place after the known ones, and none of the roles.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...faults import FAULTS

__all__ = ["MethodDisplay", "method_display", "method_sort"]


@dataclass(frozen=True)
class MethodDisplay:
    """How the report shows one method's rows.

    Attributes:
        label: its name in legends.
        colour: a matplotlib colour, or ``None`` for the colour cycle's next.
        order: its place among methods (lower first, then by name).
        stochastic: its rows are trials: shown as mean ± std.
        theorem1_trials: its rows are Theorem 1's random trials.
        worst_case: its rows are the worst case the first-order estimate describes.
    """

    label: str
    colour: str | None = None
    order: int = 100
    stochastic: bool = False
    theorem1_trials: bool = False
    worst_case: bool = False


def method_display(method: str) -> MethodDisplay:
    """The display of ``method``: its fault model's declarations, or the defaults.

    Example:
        >>> method_display("gradient").label, method_display("toy").label
        ('gradient-based', 'toy')
    """
    cls = FAULTS.get(method)
    if cls is None:
        return MethodDisplay(label=method)
    return MethodDisplay(
        label=cls.label or method,
        colour=cls.colour,
        order=cls.order,
        stochastic=cls.stochastic,
        theorem1_trials=cls.theorem1_trials,
        worst_case=cls.worst_case,
    )


def method_sort(method: str) -> tuple[int, str]:
    """The sort key of a method: its declared order, then its name.

    Example:
        >>> sorted(["toy", "iterative", "gradient", "random"], key=method_sort)
        ['random', 'gradient', 'iterative', 'toy']
    """
    return (method_display(method).order, method)
