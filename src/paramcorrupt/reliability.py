"""Statistical fault injection: binomial confidence intervals and the number of trials.

A rate measured by fault injection (the share of trials or examples whose outcome is a
silent data corruption, say) is a binomial proportion k / n. This module gives

- :func:`binomial_interval`: its confidence interval, by Wilson's score method
  (``"wilson"``) or the Clopper–Pearson "exact" method (``"clopper-pearson"``, also spelt
  ``"exact"``), two-sided, 95% by default. Both stay inside [0, 1];
- :func:`trials_for_margin`: how many trials give a margin of error ``e`` at a confidence
  ``c``, by Leveugle et al., "Statistical fault injection: quantified error and confidence",
  DATE 2009 (their Eq. 1).

Pure arithmetic on floats (scipy for the beta and normal quantiles): no torch, no model.

Example:
    >>> low, high = binomial_interval(3, 100)
    >>> round(low, 4), round(high, 4)
    (0.0103, 0.0845)
    >>> trials_for_margin(0.01, 0.95)
    9604
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from scipy.special import betaincinv, ndtri

from .errors import InputTypeError, ParamCorruptError

__all__ = ["INTERVAL_METHODS", "binomial_interval", "normal_quantile", "trials_for_margin"]

#: the interval methods, by name; "exact" is Clopper–Pearson (scipy's name for it)
INTERVAL_METHODS = ("wilson", "clopper-pearson", "exact")


def _check_fraction(name: str, value: object) -> float:
    """``value`` as a float strictly inside (0, 1), or one clear error naming it."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputTypeError(f"{name} must be a number in (0, 1), got {value!r}")
    value = float(value)
    if not 0.0 < value < 1.0:  # NaN fails too
        raise ParamCorruptError(f"{name} must be in (0, 1) (exclusive), got {value!r}")
    return value


def _check_count(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputTypeError(f"{name} must be an integer, got {value!r}")
    if int(value) < low:
        raise ParamCorruptError(f"{name} must be at least {low}, got {value!r}")
    return int(value)


def normal_quantile(confidence: float = 0.95) -> float:
    """t, the two-sided standard normal quantile of ``confidence``: P(|Z| <= t) = confidence.

    >>> round(normal_quantile(0.95), 6)
    1.959964
    """
    confidence = _check_fraction("confidence", confidence)
    return float(ndtri(1.0 - (1.0 - confidence) / 2.0))


def binomial_interval(
    successes: int, trials: int, confidence: float = 0.95, method: str = "wilson"
) -> tuple[float, float]:
    """The two-sided confidence interval of a binomial proportion k / n.

    With t = :func:`normal_quantile` (``confidence``), p^ = k / n and a = 1 - confidence:

    - ``"wilson"`` (Wilson's score interval, no continuity correction):
      (p^ + t^2 / 2n -+ t sqrt(p^ (1 - p^) / n + t^2 / 4n^2)) / (1 + t^2 / n), the lower end
      0 when k = 0 and the upper end 1 when k = n;
    - ``"clopper-pearson"`` (or ``"exact"``): the lower end is the a/2 quantile of
      Beta(k, n - k + 1) (0 when k = 0), the upper end the 1 - a/2 quantile of
      Beta(k + 1, n - k) (1 when k = n). Never narrower than its nominal coverage.

    They equal ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method)`` with
    ``method="wilson"`` and ``"exact"`` (checked in ``tests/test_outcomes_intervals.py``).

    Args:
        successes: k, an integer in [0, n].
        trials: n >= 1.
        confidence: in (0, 1), 0.95 by default.
        method: ``"wilson"`` (default), ``"clopper-pearson"`` or ``"exact"``.

    Returns:
        (low, high), both in [0, 1].

    Raises:
        ParamCorruptError: k outside [0, n], n < 1, a confidence outside (0, 1), an unknown
            method.

    >>> binomial_interval(0, 10, method="clopper-pearson")[0]
    0.0
    """
    trials = _check_count("trials", trials, low=1)
    successes = _check_count("successes", successes, low=0)
    if successes > trials:
        raise ParamCorruptError(f"successes ({successes}) cannot exceed trials ({trials})")
    confidence = _check_fraction("confidence", confidence)
    if method not in INTERVAL_METHODS:
        raise ParamCorruptError(f"unknown interval method {method!r}; choose one of {', '.join(INTERVAL_METHODS)}")
    k, n = successes, trials
    if method == "wilson":
        t = normal_quantile(confidence)
        centre = k / n + t * t / (2 * n)
        half = t * math.sqrt(k / n * (1 - k / n) / n + t * t / (4 * n * n))
        denominator = 1 + t * t / n
        low = 0.0 if k == 0 else max(0.0, (centre - half) / denominator)
        high = 1.0 if k == n else min(1.0, (centre + half) / denominator)
        return low, high
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return low, high


def trials_for_margin(
    margin: float, confidence: float = 0.95, population: int | None = None, p: float = 0.5
) -> int:
    """How many fault-injection trials give a margin of error ``margin`` at ``confidence``.

    Leveugle et al. (DATE 2009), for a population of N possible faults::

        n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))

    with e the margin of error, t the two-sided normal quantile of the confidence
    (:func:`normal_quantile`; 1.96 at 95%) and p the proportion sought, 0.5 by default: the
    worst case, which maximises p (1 - p) and so n. For an infinite population (``None``,
    the limit N -> oo) this is n = t^2 p (1 - p) / e^2. The result is rounded up.

    Args:
        margin: e, in (0, 1) (0.01 for +-1 percentage point).
        confidence: in (0, 1), 0.95 by default.
        population: N, the number of distinct faults (e.g. the bits of the weights times the
            examples); ``None`` for an infinite population.
        p: the assumed proportion, in (0, 1); 0.5 unless something better is known.

    Returns:
        n, an integer >= 1 (never more than N).

    Raises:
        ParamCorruptError: a margin, confidence or p outside (0, 1), a population below 1.

    >>> trials_for_margin(0.01, 0.95, population=10_000)
    4900
    """
    margin = _check_fraction("margin", margin)
    t = normal_quantile(confidence)
    p = _check_fraction("p", p)
    spread = t * t * p * (1 - p)
    if population is None:
        n = spread / (margin * margin)
    else:
        big_n = _check_count("population", population, low=1)
        n = big_n / (1 + margin * margin * (big_n - 1) / spread)
    # a value within rounding of an integer is that integer (e.g. 9604.0000000001)
    nearest = round(n)
    n = nearest if abs(n - nearest) < 1e-9 * max(1.0, n) else math.ceil(n)
    if population is not None:
        n = min(n, population)
    return max(1, int(n))
