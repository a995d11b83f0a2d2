"""Fault models: every way of corrupting a group of parameters behind one interface.

- :mod:`~paramcorrupt.faults.base`: :class:`FaultModel` (one verb, ``corrupt``), its
  :class:`FaultContext`, the registry (:data:`FAULTS`, :func:`register_fault`,
  :func:`get_fault`).
- :mod:`~paramcorrupt.faults.lp`: the paper's ``random``, ``gradient`` and ``iterative``
  L_p corruptions, swept over one grid of (p, n, eps).
- :mod:`~paramcorrupt.faults.values`: ``random-values`` (values written, not added).
"""

from .base import FAULTS, FaultContext, FaultModel, get_fault, key_text, register_fault
from .lp import GradientLp, IterativeLp, LpFault, RandomLp, parse_p
from .values import RandomValues

__all__ = [
    "FAULTS",
    "FaultContext",
    "FaultModel",
    "GradientLp",
    "IterativeLp",
    "LpFault",
    "RandomLp",
    "RandomValues",
    "get_fault",
    "key_text",
    "parse_p",
    "register_fault",
]
