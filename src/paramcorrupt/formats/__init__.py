"""Number formats: how a weight is stored (core).

- :mod:`~paramcorrupt.formats.numbers`: the stored formats of the bit faults (float32,
  float16, bfloat16, int8 per tensor and per channel): codes of single weights and their bit
  classes.
"""

from .numbers import BIT_CLASSES, FORMATS, NumberFormat, bits_setting, get_format

__all__ = ["BIT_CLASSES", "FORMATS", "NumberFormat", "bits_setting", "get_format"]
