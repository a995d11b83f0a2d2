"""Tests for paramcorrupt.theory (Theorem 1), each against an independent reference.

References used: Monte-Carlo draws on the sphere, the paper's hypergeometric CDF (Eq. 9) and
its angular integral (Eq. 36), closed forms for k = 2, 3, 4, numerical integration of the
density, the half-normal limit for large k, and arbitrary-precision mpmath evaluations of the
paper's formulas. Nothing is checked only against the module itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from paramcorrupt.theory import (
    eta_cdf,
    eta_pdf,
    eta_quantile,
    eta_sf,
    expected_eta,
    random_loss_change_quantiles,
)

HUGE_K = [10**7, 10**9]


# ----------------------------------------------------------------------------------------------
# Monte-Carlo: eta = |a~ . g| / (eps G) with a~ uniform on the sphere


def _dkw_band(n: int, alpha: float = 1e-4) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: sup |F_n - F| <= band with probability >= 1 - alpha."""
    return math.sqrt(math.log(2.0 / alpha) / (2.0 * n))


def _check_sample(eta: np.ndarray, k: int) -> None:
    n = eta.size
    assert np.all((eta >= 0) & (eta <= 1))
    ks = stats.kstest(eta, lambda x: eta_cdf(np.clip(x, 0.0, 1.0), k))
    assert ks.pvalue > 1e-3, ks
    # Sample quantiles must lie where the DKW band around the empirical CDF puts them.
    band = _dkw_band(n)
    for p in [0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]:
        q_hat = float(np.quantile(eta, p))
        lo = eta_quantile(max(p - band, 0.0), k)
        hi = eta_quantile(min(p + band, 1.0), k)
        assert lo <= q_hat <= hi, (p, lo, q_hat, hi)
    # The sample mean within 5 standard errors of E[eta].
    se = eta.std(ddof=1) / math.sqrt(n)
    assert abs(eta.mean() - expected_eta(k)) < 5 * se


def test_monte_carlo_k200_numpy():
    k, n = 200, 20_000
    rng = np.random.default_rng(20210205)
    r = rng.standard_normal((n, k))
    a = r / np.linalg.norm(r, axis=1, keepdims=True)  # uniform on the unit sphere (eps = 1)
    g = rng.standard_normal(k)
    g /= np.linalg.norm(g)  # a fixed unit gradient, not aligned with an axis
    eta = np.abs(a @ g)
    _check_sample(eta, k)


@pytest.mark.parametrize("k", [2, 5])
def test_monte_carlo_small_k_torch(k):
    # Small k, where eta is far from the half-normal shape; eps and G are not 1 here.
    n, eps = 20_000, 0.37
    gen = torch.Generator().manual_seed(1234 + k)
    r = torch.randn(n, k, generator=gen, dtype=torch.float64)
    a = eps * r / r.norm(dim=1, keepdim=True)
    g = torch.randn(k, generator=gen, dtype=torch.float64) * 5.0
    G = g.norm()
    eta = ((a @ g).abs() / (eps * G)).numpy()
    _check_sample(eta, k)


# ----------------------------------------------------------------------------------------------
# The paper's hypergeometric CDF (Eq. 9 / Eq. 18), taken literally
#
# Printed form: P(eta <= x) = 2 x 2F1(1/2, (3-k)/2; 3/2; x^2) / B((k-1)/2, 1/2).
# The brief's form, 2 Gamma(k/2) / (sqrt(pi) Gamma((k-1)/2)) * x * 2F1(...), is the same, since
# 1 / B((k-1)/2, 1/2) = Gamma(k/2) / (Gamma((k-1)/2) Gamma(1/2)) and Gamma(1/2) = sqrt(pi).
# Derivation check: substituting t = cos(phi) in the angular integral,
#     int_0^x (1 - t^2)^((k-3)/2) dt = x 2F1(1/2, (3-k)/2; 3/2; x^2),
# and the full integral (x = 1) is B((k-1)/2, 1/2) / 2, so Eq. 9 is right as printed.
# The proof's intermediate steps (Eqs. 34-36) have a slip: eta <= x means |cos phi_1| <= x, i.e.
# phi_1 in [arccos x, pi - arccos x], so the integral is 2 int_{arccos x}^{pi/2} sin^(k-2), not
# int_0^{arccos x} (that one gives P(eta >= x)). The final Eq. 37 is unaffected.


def _paper_eq9_scipy(x: np.ndarray, k: int) -> np.ndarray:
    return (
        2.0
        * x
        * special.hyp2f1(0.5, (3.0 - k) / 2.0, 1.5, x * x)
        / special.beta((k - 1.0) / 2.0, 0.5)
    )


def _brief_form_scipy(x: np.ndarray, k: int) -> np.ndarray:
    pref = 2.0 * math.gamma(k / 2.0) / (math.sqrt(math.pi) * math.gamma((k - 1.0) / 2.0))
    return pref * x * special.hyp2f1(0.5, (3.0 - k) / 2.0, 1.5, x * x)


@pytest.mark.parametrize("k", [3, 5, 10, 50, 200])
def test_cdf_matches_paper_hypergeometric_form(k):
    x = np.concatenate(
        [np.linspace(0.0, 1.0, 41), [1e-6, 0.3 / math.sqrt(k), min(3 / math.sqrt(k), 1.0)]]
    )
    ref = _paper_eq9_scipy(x, k)
    ref2 = _brief_form_scipy(x, k)
    finite = np.isfinite(ref) & np.isfinite(ref2)
    assert finite.sum() >= 40  # scipy's hyp2f1 is finite for these small k
    np.testing.assert_allclose(ref2[finite], ref[finite], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(eta_cdf(x[finite], k), ref[finite], rtol=1e-10, atol=1e-12)


def test_paper_hypergeometric_form_breaks_down_in_double_precision():
    # Why the module uses the beta form (NOTES): scipy's hyp2f1 fails for realistic k.
    x = 0.5 / math.sqrt(1e5)
    assert not np.isfinite(_paper_eq9_scipy(np.array([x]), 10**5)).all()
    assert np.isfinite(eta_cdf(x, 10**5))


@pytest.mark.parametrize("k", [3, 7, 1000, 10**5, 10**7, 10**9])
def test_cdf_matches_paper_eq9_in_arbitrary_precision(k):
    mp = pytest.importorskip("mpmath")
    with mp.workdps(40):
        for t in [0.0, 0.05, 0.3, 0.6745, 1.0, 2.0, 3.5]:
            x = min(t / math.sqrt(k), 1.0)
            X = mp.mpf(x)
            ref = (
                2
                * X
                * mp.hyp2f1(0.5, mp.mpf(3 - k) / 2, 1.5, X * X)
                / mp.beta(mp.mpf(k - 1) / 2, 0.5)
            )
            assert eta_cdf(x, k) == pytest.approx(float(ref), rel=1e-12, abs=1e-15)
            assert eta_sf(x, k) == pytest.approx(float(1 - ref), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("k", [2, 3, 57, 10**4, 10**7, 10**9])
def test_sf_keeps_relative_accuracy_in_both_tails(k):
    mp = pytest.importorskip("mpmath")
    with mp.workdps(40):
        for t in [1e-9, 1e-5, 0.01, 1.0, 4.0, 8.0, 20.0]:
            x = min(t / math.sqrt(k), 1.0)
            ref = mp.betainc(0.5, mp.mpf(k - 1) / 2, mp.mpf(x) ** 2, 1, regularized=True)
            if ref < mp.mpf("1e-300"):
                continue
            assert eta_sf(x, k) == pytest.approx(float(ref), rel=1e-11), (t, x)


@pytest.mark.parametrize("k", [2, 3, 6, 25, 200])
def test_cdf_matches_proof_angular_integral(k):
    # Eq. 36 with the corrected limits: 2 int_{arccos x}^{pi/2} sin^(k-2) / B((k-1)/2, 1/2).
    norm = special.beta((k - 1) / 2.0, 0.5)
    for x in [0.0, 0.1, 0.25, 0.5, 0.8, 0.95, 1.0]:
        val, _ = integrate.quad(
            lambda phi: math.sin(phi) ** (k - 2), math.acos(x), math.pi / 2, epsabs=1e-14
        )
        assert eta_cdf(x, k) == pytest.approx(2 * val / norm, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Closed forms for small k


def test_closed_forms_k2_k3_k4():
    x = np.linspace(0.0, 0.999, 50)
    # k = 2: eta = |cos theta|, theta uniform on the circle.
    np.testing.assert_allclose(eta_cdf(x, 2), 2 / np.pi * np.arcsin(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(eta_pdf(x, 2), 2 / (np.pi * np.sqrt(1 - x**2)), rtol=1e-12)
    p = np.linspace(0, 1, 11)
    np.testing.assert_allclose(eta_quantile(p, 2), np.sin(p * np.pi / 2), rtol=1e-12, atol=1e-15)
    assert expected_eta(2) == pytest.approx(2 / math.pi, rel=1e-14)
    # k = 3: eta uniform on [0, 1] (Archimedes' hat-box theorem).
    np.testing.assert_allclose(eta_cdf(x, 3), x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(eta_pdf(x, 3), np.ones_like(x), rtol=1e-13)
    np.testing.assert_allclose(eta_quantile(p, 3), p, rtol=1e-12, atol=1e-15)
    assert expected_eta(3) == pytest.approx(0.5, rel=1e-14)
    # k = 4: pdf (4/pi) sqrt(1 - x^2), cdf (2/pi)(x sqrt(1 - x^2) + arcsin x), mean 4/(3 pi).
    np.testing.assert_allclose(eta_pdf(x, 4), 4 / np.pi * np.sqrt(1 - x**2), rtol=1e-12)
    np.testing.assert_allclose(
        eta_cdf(x, 4), 2 / np.pi * (x * np.sqrt(1 - x**2) + np.arcsin(x)), rtol=1e-12, atol=1e-15
    )
    assert expected_eta(4) == pytest.approx(4 / (3 * math.pi), rel=1e-14)


def test_pdf_at_endpoints():
    assert eta_pdf(1.0, 2) == math.inf
    assert eta_pdf(1.0, 3) == pytest.approx(1.0, rel=1e-14)
    assert eta_pdf(1.0, 4) == 0.0
    assert eta_pdf(1.0, 10**9) == 0.0
    assert eta_pdf(0.0, 2) == pytest.approx(2 / math.pi, rel=1e-14)
    assert eta_cdf(1.0, 2) == 1.0 and eta_cdf(0.0, 2) == 0.0
    assert eta_quantile(0.0, 50) == 0.0 and eta_quantile(1.0, 50) == 1.0


# ----------------------------------------------------------------------------------------------
# pdf, cdf, quantile, mean: mutually consistent by integration / inversion


@pytest.mark.parametrize("k", [2, 3, 4, 10, 57, 200, 10_000])
def test_pdf_integrates_to_cdf(k):
    scale = min(1.0, 1.0 / math.sqrt(k))
    xs = sorted({min(t * scale, 1.0) for t in [0.1, 0.5, 1.0, 2.0, 3.0, 5.0]} | {0.999})
    if k >= 3:
        xs.append(1.0)  # for k = 2 the density is infinite at 1 (still integrable)
    for x in xs:
        val, err = integrate.quad(
            lambda t: eta_pdf(t, k), 0.0, x, points=[scale] if scale < x else None, limit=200
        )
        assert val == pytest.approx(eta_cdf(x, k), rel=1e-8, abs=1e-10), (x, val, err)


@pytest.mark.parametrize("k", [2, 3, 4, 10, 200, 10_000])
def test_mean_is_integral_of_x_pdf(k):
    scale = 1.0 / math.sqrt(k)
    val, _ = integrate.quad(lambda t: t * eta_pdf(t, k), 0.0, 1.0, points=[scale], limit=200)
    assert expected_eta(k) == pytest.approx(val, rel=1e-8)


@pytest.mark.parametrize("k", [2, 3, 10, 200, 123_457, *HUGE_K])
def test_quantile_inverts_cdf(k):
    p = np.array([0.0, 1e-9, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.995, 0.999999, 1.0])
    np.testing.assert_allclose(eta_cdf(eta_quantile(p, k), k), p, rtol=1e-10, atol=1e-13)
    x = eta_quantile(p[1:-1], k)
    np.testing.assert_allclose(eta_quantile(eta_cdf(x, k), k), x, rtol=1e-9)
    np.testing.assert_allclose(eta_cdf(x, k) + eta_sf(x, k), 1.0, rtol=1e-14)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(min_value=2, max_value=10**9),
    p1=st.floats(0.0, 1.0),
    p2=st.floats(0.0, 1.0),
)
def test_quantile_monotone_and_in_range(k, p1, p2):
    lo, hi = sorted([p1, p2])
    qlo, qhi = eta_quantile(lo, k), eta_quantile(hi, k)
    assert 0.0 <= qlo <= qhi <= 1.0
    assert eta_cdf(qhi, k) == pytest.approx(hi, abs=1e-10)


@pytest.mark.parametrize("k", [2, 3, 7, 1000, 10**6, 10**9])
def test_pdf_and_mean_match_literal_gamma_formulas_in_arbitrary_precision(k):
    mp = pytest.importorskip("mpmath")
    with mp.workdps(40):
        K = mp.mpf(k)
        c = 2 * mp.gamma(K / 2) / (mp.sqrt(mp.pi) * mp.gamma((K - 1) / 2))  # Eq. 8
        for t in [0.0, 0.3, 1.0, 2.5]:
            x = min(t / math.sqrt(k), 0.99)
            ref = c * (1 - mp.mpf(x) ** 2) ** ((K - 3) / 2)
            assert eta_pdf(x, k) == pytest.approx(float(ref), rel=1e-12)
        mean = mp.gamma(K / 2) / (mp.sqrt(mp.pi) * mp.gamma((K + 1) / 2))
        assert expected_eta(k) == pytest.approx(float(mean), rel=1e-13)


# ----------------------------------------------------------------------------------------------
# Large k: finite, and sqrt(k) eta ~ |N(0, 1)|


@pytest.mark.parametrize("k", HUGE_K)
def test_huge_k_finite(k):
    x = np.array([0.0, 1e-12, 1e-6, 1e-4, 0.01, 0.5, 1.0])
    p = np.linspace(0.0, 1.0, 11)
    for v in (eta_cdf(x, k), eta_sf(x, k), eta_pdf(x, k), eta_quantile(p, k)):
        assert np.all(np.isfinite(v))
    assert math.isfinite(expected_eta(k)) and expected_eta(k) > 0
    q = random_loss_change_quantiles(p, eps=1e-3, G=10.0, k=k)
    assert np.all(np.isfinite(q))


@pytest.mark.parametrize("k", HUGE_K)
def test_huge_k_half_normal_limit(k):
    root = math.sqrt(k)
    half_normal_median = stats.norm.ppf(0.75)  # 0.67449
    assert eta_quantile(0.5, k) * root == pytest.approx(half_normal_median, rel=1e-3)
    assert expected_eta(k) * root == pytest.approx(math.sqrt(2 / math.pi), rel=1e-3)
    # The correction is O(1/k), so the agreement is in fact much closer.
    p = np.array([0.1, 0.5, 0.9, 0.95, 0.995])
    np.testing.assert_allclose(eta_quantile(p, k) * root, stats.halfnorm.ppf(p), rtol=1e-5)
    t = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(eta_cdf(t / root, k), stats.halfnorm.cdf(t), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(eta_pdf(t / root, k) / root, stats.halfnorm.pdf(t), rtol=1e-5)
    assert expected_eta(k) * root == pytest.approx(math.sqrt(2 / math.pi), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Table 3 and the loss-change quantiles


def test_random_loss_change_quantiles_is_eps_g_times_eta_quantile():
    # An independent route: the first-order |loss change| is eps G |cos phi|, so its p-quantile
    # solves P(eta <= alpha / (eps G)) = p; check by plugging back into the CDF.
    eps, G, k = 0.02, 3.5, 1000
    p = np.array([0.1, 0.5, 0.9])
    alpha = random_loss_change_quantiles(p, eps, G, k)
    np.testing.assert_allclose(eta_cdf(alpha / (eps * G), k), p, rtol=1e-10)
    assert random_loss_change_quantiles(0.5, eps, 0.0, k) == 0.0


def test_table3_theoretical_row_is_reproduced():
    # Table 3: LSTM LM, eps = 5e-4, eps G = 0.044; theoretical alpha(0.9, 0.95, 0.995) =
    # 1.5e-5, 1.8e-5, 2.5e-5. The paper does not state k; estimate it from the appendix's model
    # (3-layer AWD-LSTM, vocabulary 10000, embedding 400, hidden 1150, tied decoder): ~24.2M.
    vocab, emb, hid = 10_000, 400, 1150
    sizes = [(emb, hid), (hid, hid), (hid, emb)]  # (input, hidden) per layer
    lstm = sum(4 * h * (i + h) + 2 * 4 * h for i, h in sizes)
    k = vocab * emb + vocab + lstm  # embedding (tied with decoder) + decoder bias + LSTMs
    assert 24_000_000 < k < 24_500_000
    eps = 5e-4
    G = 0.044 / eps
    alpha = random_loss_change_quantiles([0.9, 0.95, 0.995], eps, G, k)
    assert [f"{a:.1e}" for a in alpha] == ["1.5e-05", "1.8e-05", "2.5e-05"]
    # "more than 400 times (eta < 1/400)" with high probability:
    assert eta_quantile(0.995, k) < 1 / 400


# ----------------------------------------------------------------------------------------------
# Types and validation


def test_scalar_in_float_out_array_in_array_out():
    for f in (eta_cdf, eta_sf, eta_pdf, eta_quantile):
        assert type(f(0.3, 10)) is float
        assert type(f(np.float64(0.3), 10)) is float
        out = f([[0.1, 0.2], [0.3, 0.4]], 10)
        assert isinstance(out, np.ndarray) and out.shape == (2, 2) and out.dtype == np.float64
        out1 = f(np.array([0.5]), 10)
        assert isinstance(out1, np.ndarray) and out1.shape == (1,)
    assert type(expected_eta(10)) is float
    assert type(random_loss_change_quantiles(0.5, 0.1, 1.0, 10)) is float
    assert random_loss_change_quantiles([0.5], 0.1, 1.0, 10).shape == (1,)
    # k given as a numpy integer or an integral float
    assert eta_cdf(0.3, np.int64(10)) == eta_cdf(0.3, 10.0) == eta_cdf(0.3, 10)


@pytest.mark.parametrize("k", [1, 0, -5, 2.5, float("nan"), float("inf"), True, "10", None])
def test_bad_k_raises(k):
    for f in (eta_cdf, eta_sf, eta_pdf, eta_quantile):
        with pytest.raises(ValueError, match="k must be an integer >= 2"):
            f(0.5, k)
    with pytest.raises(ValueError, match="k must be"):
        expected_eta(k)
    with pytest.raises(ValueError, match="k must be"):
        random_loss_change_quantiles(0.5, 0.1, 1.0, k)


@pytest.mark.parametrize(
    "value, shown",
    [(-0.1, "-0.1"), (1.1, "1.1"), (float("nan"), "nan"), ([0.5, 2.0], "2.0"), ("abc", "abc")],
)
def test_bad_x_and_prob_raise(value, shown):
    for f in (eta_cdf, eta_sf, eta_pdf):
        with pytest.raises(ValueError, match=r"x") as info:
            f(value, 10)
        assert shown in str(info.value)
    with pytest.raises(ValueError, match=r"prob") as info:
        eta_quantile(value, 10)
    assert shown in str(info.value)
    with pytest.raises(ValueError, match=r"probs") as info:
        random_loss_change_quantiles(value, 0.1, 1.0, 10)
    assert shown in str(info.value)


@pytest.mark.parametrize(
    "eps, G, shown",
    [
        (0.0, 1.0, "eps=0.0"),
        (-1.0, 1.0, "eps=-1.0"),
        (float("nan"), 1.0, "eps=nan"),
        (0.1, -2.0, "G=-2.0"),
        (0.1, float("inf"), "G=inf"),
    ],
)
def test_bad_eps_or_g_raise(eps, G, shown):
    with pytest.raises(ValueError) as info:
        random_loss_change_quantiles(0.5, eps, G, 10)
    assert shown in str(info.value)
