"""Binomial intervals and Leveugle's number of trials (paramcorrupt.reliability), against
scipy.stats.binomtest and values computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from paramcorrupt.errors import InputTypeError, ParamCorruptError
from paramcorrupt.reliability import binomial_interval, normal_quantile, trials_for_margin

NS = [1, 2, 3, 7, 10, 31, 100, 999, 9604]
CONFIDENCES = [0.5, 0.8, 0.9, 0.95, 0.99, 0.999]


def grid():
    for n in NS:
        for k in sorted({0, 1, 2, n // 3, n // 2, n - 2, n - 1, n}):
            if 0 <= k <= n:
                yield k, n


@pytest.mark.parametrize(("ours", "scipy_name"), [("wilson", "wilson"), ("clopper-pearson", "exact"), ("exact", "exact")])
def test_intervals_equal_scipy_binomtest(ours, scipy_name):
    checked = 0
    for k, n in grid():
        for confidence in CONFIDENCES:
            reference = binomtest(k, n).proportion_ci(confidence_level=confidence, method=scipy_name)
            low, high = binomial_interval(k, n, confidence, ours)
            assert low == pytest.approx(reference.low, rel=1e-9, abs=1e-12), (k, n, confidence)
            assert high == pytest.approx(reference.high, rel=1e-9, abs=1e-12), (k, n, confidence)
            assert 0.0 <= low <= k / n <= high <= 1.0
            checked += 1
    assert checked > 300


def test_the_default_is_a_95_percent_wilson_interval():
    reference = binomtest(17, 250).proportion_ci(0.95, method="wilson")
    assert binomial_interval(17, 250) == pytest.approx((reference.low, reference.high), rel=1e-12)


def test_clopper_pearson_is_never_narrower_than_wilson_at_the_edges():
    # at k = 0 the exact upper end is 1 - (a/2)^(1/n), by hand
    for n in (5, 50, 500):
        assert binomial_interval(0, n, 0.95, "exact")[1] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-12)
        assert binomial_interval(n, n, 0.95, "exact")[0] == pytest.approx(0.025 ** (1 / n), rel=1e-12)


# t at 95% and 99% from a table of the normal distribution (not from the code under test)
T95 = 1.959963984540054
T99 = 2.5758293035489004


def test_normal_quantile():
    assert normal_quantile(0.95) == pytest.approx(T95, rel=1e-12)
    assert normal_quantile(0.99) == pytest.approx(T99, rel=1e-12)


@pytest.mark.parametrize(
    ("margin", "confidence", "population", "expected"),
    [
        # infinite population: n = t^2 p (1 - p) / e^2 with p = 0.5
        (0.01, 0.95, None, 9604),  # 1.95996^2 * 0.25 / 1e-4 = 9603.65 -> 9604
        (0.05, 0.95, None, 385),  # 384.15 -> 385
        (0.01, 0.99, None, 16588),  # 2.57583^2 * 0.25 / 1e-4 = 16587.24 -> 16588
        (0.02, 0.95, None, 2401),  # 2400.91 -> 2401
        # finite: n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))
        (0.01, 0.95, 10_000, 4900),  # 10000 / (1 + 0.9999 / 0.960365) = 4899.1 -> 4900
        (0.05, 0.95, 1_000, 278),  # 1000 / (1 + 2.4975 / 0.960365) = 277.7 -> 278
        (0.01, 0.95, 1, 1),
        (0.01, 0.95, 100, 99),  # 100 / (1 + 0.0099 / 0.960365) = 98.98 -> 99
    ],
)
def test_trials_for_margin_by_hand(margin, confidence, population, expected):
    t = {0.95: T95, 0.99: T99}[confidence]
    spread = t * t * 0.25
    literal = spread / margin**2 if population is None else population / (1 + margin**2 * (population - 1) / spread)
    assert math.ceil(literal) == expected
    assert trials_for_margin(margin, confidence, population) == expected


def test_leveugle_grows_to_the_infinite_population_value():
    values = [trials_for_margin(0.01, 0.95, population) for population in (10**3, 10**4, 10**5, 10**7, 10**10)]
    assert values == sorted(values)
    assert values[-1] == trials_for_margin(0.01, 0.95)


def test_another_proportion_needs_fewer_trials():
    # p = 0.1: t^2 * 0.09 / e^2 = 3457.3 -> 3458
    assert trials_for_margin(0.01, 0.95, p=0.1) == math.ceil(T95**2 * 0.09 / 1e-4) == 3458


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.01, 1.5, float("nan"), float("inf")])
def test_a_margin_or_confidence_outside_the_open_unit_interval_is_one_clear_error(bad):
    with pytest.raises(ParamCorruptError, match=r"margin must be in \(0, 1\)") as error:
        trials_for_margin(bad)
    assert repr(float(bad)) in str(error.value)
    with pytest.raises(ParamCorruptError, match=r"confidence must be in \(0, 1\)"):
        trials_for_margin(0.01, bad)
    with pytest.raises(ParamCorruptError, match=r"confidence must be in \(0, 1\)"):
        binomial_interval(1, 10, bad)


def test_other_bad_input():
    with pytest.raises(InputTypeError, match="margin must be a number"):
        trials_for_margin("0.01")
    with pytest.raises(InputTypeError, match="margin must be a number"):
        trials_for_margin(True)
    with pytest.raises(ParamCorruptError, match="population must be at least 1, got 0"):
        trials_for_margin(0.01, population=0)
    with pytest.raises(ParamCorruptError, match=r"successes \(11\) cannot exceed trials \(10\)"):
        binomial_interval(11, 10)
    with pytest.raises(ParamCorruptError, match="trials must be at least 1, got 0"):
        binomial_interval(0, 0)
    with pytest.raises(ParamCorruptError, match="successes must be at least 0, got -1"):
        binomial_interval(-1, 10)
    with pytest.raises(ParamCorruptError, match="unknown interval method 'agresti'"):
        binomial_interval(1, 10, method="agresti")
    with pytest.raises(InputTypeError, match="trials must be an integer"):
        binomial_interval(1, 10.0)
