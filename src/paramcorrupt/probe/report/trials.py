"""How the report draws a setting's trials and names its axes (issue 21, point 3).

- The band around a mean over trials is the 10th to 90th percentile of the trials
  (:func:`trial_band`): every point of it lies between two trials' values, so it never leaves
  the metric's range (an accuracy band never passes 100%), as a ±1 std band did.
- The number of trials is in every legend that draws them (:func:`trials_text`).
- An axis is named by what it counts (:func:`axis_label`): stuck-at rows count stuck bits, bit
  flips and the bit search flipped bits.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["BAND", "BAND_TEXT", "axis_label", "trial_band", "trials_text"]

#: the band's quantiles of the trials
BAND = (0.1, 0.9)
#: what the band is, for captions
BAND_TEXT = (
    "the band spans the 10th to 90th percentile of the trials (between two trials' values, so it never "
    "leaves the metric's range; the mean lies outside it when a few trials fail badly)"
)

_AXES = {"ber": "bit error rate (BER)", "count": "values written", "eps": "eps"}


def trial_band(values: Iterable[float]) -> tuple[float, float]:
    """The 10th and 90th percentile of the finite ``values`` (linear interpolation between
    order statistics, numpy's default); (nan, nan) when none is finite.

    >>> trial_band([100.0, 100.0, 90.0])
    (92.0, 100.0)
    """
    arr = np.asarray([float(v) for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(arr, BAND)
    return float(low), float(high)


def trials_text(counts: Iterable[int]) -> str:
    """The trials per point of a curve, as a legend says it.

    >>> trials_text([10, 10]), trials_text([3, 5]), trials_text([1])
    ('10 trials per point', '3-5 trials per point', '1 trial per point')
    """
    distinct = sorted({int(c) for c in counts})
    if not distinct:
        return "no trials"
    number = str(distinct[0]) if len(distinct) == 1 else f"{distinct[0]}-{distinct[-1]}"
    return f"{number} trial{'' if distinct[-1] == 1 else 's'} per point"


def axis_label(axis: str, methods: Iterable[str]) -> str:
    """The name of a fault figure's x axis: what its value counts.

    >>> axis_label("flips", ["stuck-at"]), axis_label("flips", ["bitflip", "bit-search"])
    ('stuck bits', 'flipped bits')
    >>> axis_label("ber", ["stuck-at"])
    'bit error rate (BER)'
    """
    if axis == "flips":
        stuck = [("stuck" in m) for m in methods]
        if stuck and all(stuck):
            return "stuck bits"
        return "flipped bits" if not any(stuck) else "faulty bits (flipped or stuck)"
    return _AXES.get(axis, axis)
