"""Corruptions: what a corruption is, how each kind is built, and how it is applied.

* :mod:`.base`: :class:`Corruption`, a value (the change a to a group of parameters, with the
  p, eps and n it was drawn under; sparse corruptions store only the indices they touch);
* :mod:`.random`: random corruption (Definition 3, Algorithm 1) and random values;
* :mod:`.gradient`: gradient-based corruption (Definition 4, the closed form of Prop. 1);
* :mod:`.relative`: relative corruption ||a / (|w| + eta)||_p = eps (ASAM's set);
* :mod:`.iterative`: multi-step projected ascent (beyond the paper);
* :mod:`.iterative_relative`: projected ascent on the relative set (APGD's schedule);
* :mod:`.apply`: :func:`corrupted`, in place, restored bit for bit.
"""

from __future__ import annotations

from .apply import corrupted, restore_in_place, write_in_place
from .base import MODES, Corruption, split_flat
from .gradient import gradient_corruption
from .iterative import iterative_corruption
from .iterative_relative import iterative_relative_corruption
from .random import random_corruption, random_values
from .relative import (
    relative_gradient_corruption,
    relative_random_corruption,
    relative_scale,
    times_scale,
)

__all__ = [
    "MODES",
    "Corruption",
    "corrupted",
    "gradient_corruption",
    "iterative_corruption",
    "iterative_relative_corruption",
    "random_corruption",
    "random_values",
    "relative_gradient_corruption",
    "relative_random_corruption",
    "relative_scale",
    "restore_in_place",
    "split_flat",
    "times_scale",
    "write_in_place",
]
