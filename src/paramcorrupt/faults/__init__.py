"""Fault models: every way of corrupting a group of parameters behind one interface.

- :mod:`~paramcorrupt.faults.base`: :class:`FaultModel` (one verb, ``corrupt``), its
  :class:`FaultContext`, the registry (:data:`FAULTS`, :func:`register_fault`,
  :func:`get_fault`).
- :mod:`~paramcorrupt.faults.lp`: the paper's ``random``, ``gradient`` and ``iterative``
  L_p corruptions, and ``relative-random`` / ``relative-gradient`` (||a / |w| ||_p = eps),
  swept over one grid of (p, n, eps). (Table 2's legacy ``random-sequential`` stream is
  registered by :mod:`paramcorrupt.experiments.table2`.)
- :mod:`~paramcorrupt.faults.values`: ``random-values`` (values written, not added).
- the stored number formats (float32, float16, bfloat16, int8 per tensor and per channel)
  and their bit classes live in the core package :mod:`paramcorrupt.formats`; their names
  are re-exported here.
- :mod:`~paramcorrupt.faults.bits`: ``bitflip`` and ``stuck-at`` at a bit error rate or
  a number of faulty bits.
- :mod:`~paramcorrupt.faults.stored`: the same faults in a quantised model's stored image
  (codes, scales, zero points of :func:`paramcorrupt.quantize`), and ``stored_faults``
  (given bits of given stored fields).
- :mod:`~paramcorrupt.faults.search`: ``bit-search``, the gradient-guided progressive
  bit search (Rakin et al., 2019).
- :mod:`~paramcorrupt.faults.activations`: faults in module outputs
  (:func:`activation_faults`); :mod:`~paramcorrupt.faults.activation_models` registers
  them for sweeps (``activation-bitflip``, ``activation-stuck-at``).
"""

# the import order is the registry's order: the paper's methods first
# isort: off
from .base import FAULTS, FaultContext, FaultModel, get_fault, key_text, register_fault
from .lp import GradientLp, IterativeLp, IterativeRelativeLp, LpFault, RandomLp, RelativeGradientLp, RelativeRandomLp
from .values import RandomValues
from ..formats import BIT_CLASSES, FORMATS, NumberFormat, get_format
from .bits import BitFlip, StuckAt, random_bit_faults
from .sampler import BitFaultSampler
from .stored import stored_faults
from ..formats.torchao import check_methods
from .search import BitSearch, BitSearchFault, bit_search
from .activation_models import ActivationBitFlip, ActivationStuckAt
from .activations import activation_faults

# isort: on

__all__ = [
    "ActivationBitFlip",
    "ActivationStuckAt",
    "BIT_CLASSES",
    "BitFaultSampler",
    "FAULTS",
    "FORMATS",
    "BitFlip",
    "BitSearch",
    "BitSearchFault",
    "NumberFormat",
    "StuckAt",
    "FaultContext",
    "FaultModel",
    "GradientLp",
    "IterativeLp",
    "IterativeRelativeLp",
    "LpFault",
    "RandomLp",
    "RandomValues",
    "RelativeGradientLp",
    "RelativeRandomLp",
    "activation_faults",
    "bit_search",
    "check_methods",
    "get_fault",
    "get_format",
    "key_text",
    "random_bit_faults",
    "register_fault",
    "stored_faults",
]
