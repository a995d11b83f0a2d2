"""Number formats: how a weight is stored (core).

- :mod:`~paramcorrupt.formats.numbers`: the stored formats of the bit faults (float32,
  float16, bfloat16, int8 per tensor and per channel): codes of single weights and their bit
  classes.
- :mod:`~paramcorrupt.formats.elements`: the element formats one stored entry is in (FP8,
  the OCP MX elements FP6/FP4 and the E8M0 scale, int4, NF4, the IEEE floats), their codes,
  rounding and bit classes.
- :mod:`~paramcorrupt.formats.stored`: a tensor as stored (:class:`StoredTensor`: codes,
  scales, zero points, each a :class:`Field` in its element format).
- :mod:`~paramcorrupt.formats.quantizers`: the quantisers (int8, int8-group, int4, nf4,
  fp8, mxfp8/6/4), float tensor -> :class:`StoredTensor` -> float tensor.
- :mod:`~paramcorrupt.formats.model`: :func:`quantize` and :func:`quantized`, a model's
  weights replaced by their stored values (loaded on first use: it imports ``groups``,
  which imports this package). See ``docs/formats.md``.
"""

import importlib
from typing import Any

from .elements import ELEMENTS, NF4_LEVELS, ElementFormat, get_element
from .numbers import BIT_CLASSES, FORMATS, NumberFormat, bits_setting, get_format
from .quantizers import QUANTIZERS, Quantizer, check_quantize, get_quantizer, quantize_tensor
from .stored import Field, StoredTensor

__all__ = [
    "BIT_CLASSES",
    "ELEMENTS",
    "FORMATS",
    "NF4_LEVELS",
    "QUANTIZERS",
    "ElementFormat",
    "Field",
    "NumberFormat",
    "Quantizer",
    "StoredTensor",
    "bits_setting",
    "check_quantize",
    "get_element",
    "get_format",
    "get_quantizer",
    "quantize_tensor",
]

_MODEL_NAMES = ("Quantized", "default_weights", "quantize", "quantized")


def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        return getattr(importlib.import_module(f"{__name__}.model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
