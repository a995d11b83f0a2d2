"""Theorem 1: the distribution of the loss change under random L2 corruption.

For a corruption a~ drawn uniformly from the L2 sphere ||a~||_2 = eps in R^k (Algorithm 1
with p = 2 and n = k) and a gradient g with G = ||g||_2, Theorem 1 studies

    eta = |a~ . g| / (eps G)  in [0, 1],

the first-order ratio |Delta L(w, a~)| / Delta_max L(w, S) between the loss change of a random
corruption and that of the worst one (eps G). By rotational invariance eta = |cos phi_1| for the
angle phi_1 between a~ and g, and

    eta^2 ~ Beta(1/2, (k-1)/2).

So, with I_z(a, b) the regularised incomplete beta function,

    P(eta <= x) = I_{x^2}(1/2, (k-1)/2)
    x_p         = sqrt(I^{-1}_p(1/2, (k-1)/2))
    p_eta(x)    = 2 Gamma(k/2) / (sqrt(pi) Gamma((k-1)/2)) * (1 - x^2)^((k-3)/2)   (Eq. 8)
    E[eta]      = Gamma(k/2) / (sqrt(pi) Gamma((k+1)/2))

The paper's Eq. 9 writes the CDF as 2 x 2F1(1/2, (3-k)/2; 3/2; x^2) / B((k-1)/2, 1/2). It is the
same function, but evaluating the hypergeometric series directly fails for the k of real
networks (scipy returns NaN already at k = 1e5), so this module uses the beta form, which stays
accurate for k up to 1e9 and beyond. For large k, sqrt(k) eta is close to |N(0, 1)|.

Every function takes a scalar k (the number of corrupted parameters, an integer >= 2) and is
vectorised over its first argument: a float in gives a float out, an array in gives an array.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import betainc, betaincinv, gammaln

from .errors import ParamCorruptError

try:  # scipy >= 1.11
    from scipy.special import betaincc as _betaincc
except ImportError:  # pragma: no cover - older scipy

    def _betaincc(a, b, x):
        # I_x(a, b) = 1 - I_{1-x}(b, a)
        return betainc(b, a, 1.0 - x)


__all__ = [
    "eta_cdf",
    "eta_pdf",
    "eta_quantile",
    "eta_sf",
    "expected_eta",
    "random_loss_change_quantiles",
]

_LOG_PI = math.log(math.pi)
# Above this argument the log-gamma ratio is taken from its asymptotic series: gammaln of a
# large argument is itself large, and the difference of two of them loses about
# log10(a log a) digits (1e-6 relative at k = 1e9).
_SERIES_FROM = 30.0


def _check_k(k: object) -> float:
    """Validate k (an integer >= 2, possibly given as an integral float); return it as float."""
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise ParamCorruptError(f"k must be an integer >= 2, got {k!r}")
    kf = float(k)
    if not math.isfinite(kf) or not kf.is_integer() or kf < 2:
        raise ParamCorruptError(f"k must be an integer >= 2, got {k!r}")
    return kf


def _check_unit(value: ArrayLike, name: str) -> np.ndarray:
    """Convert to a float64 array and check every entry lies in [0, 1]."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ParamCorruptError(
            f"{name} must be a number or array of numbers in [0, 1], got {value!r}"
        ) from exc
    bad = ~((arr >= 0.0) & (arr <= 1.0))  # also catches NaN
    if np.any(bad):
        first = float(arr[bad].flat[0])
        raise ParamCorruptError(f"{name} must lie in [0, 1], got {name}={first!r}")
    return arr


def _check_positive(value: object, name: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParamCorruptError(f"{name} must be a finite real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ParamCorruptError(f"{name} must be finite and {bound}, got {name}={value!r}")
    return v


def _out(arr: np.ndarray, like: np.ndarray) -> float | np.ndarray:
    """A Python float for 0-d input, an ndarray otherwise."""
    if like.ndim == 0:
        return float(arr)
    return np.asarray(arr, dtype=np.float64)


def _log_gamma_ratio_half(a: float) -> float:
    """log(Gamma(a + 1/2) / Gamma(a)) for a > 0, accurate for very large a.

    Below ``_SERIES_FROM`` it is the plain difference of ``gammaln``; above, the asymptotic
    expansion  (1/2) log a + sum_n (-1)^n (B_n(1/2) - B_n) / (n (n-1) a^(n-1))  with
    B_n(1/2) = (2^(1-n) - 1) B_n, whose first terms are
    -1/(8a) + 1/(192 a^3) - 1/(640 a^5) + 17/(14336 a^7); the next term, about 1.7e-3 / a^9,
    is below 1e-16 relative for a >= 30.
    """
    if a < _SERIES_FROM:
        return float(gammaln(a + 0.5) - gammaln(a))
    inv = 1.0 / a
    inv2 = inv * inv
    series = inv * (-1.0 / 8 + inv2 * (1.0 / 192 + inv2 * (-1.0 / 640 + inv2 * (17.0 / 14336))))
    return 0.5 * math.log(a) + series


def _log_pdf_const(k: float) -> float:
    """log(2 Gamma(k/2) / (sqrt(pi) Gamma((k-1)/2))) = log 2 - log(pi)/2 + log-ratio."""
    return math.log(2.0) - 0.5 * _LOG_PI + _log_gamma_ratio_half((k - 1.0) / 2.0)


def eta_cdf(x: ArrayLike, k: int) -> float | np.ndarray:
    """CDF of eta = |a~.g| / (eps G) for random L2 corruption (Theorem 1, Eq. 9).

    P(eta <= x) = I_{x^2}(1/2, (k-1)/2), the regularised incomplete beta function, which equals
    the paper's 2 x 2F1(1/2, (3-k)/2; 3/2; x^2) / B((k-1)/2, 1/2) but stays finite and accurate
    for any k.

    Args:
        x: value(s) in [0, 1].
        k: number of corrupted parameters, an integer >= 2.

    Returns:
        P(eta <= x): a float for scalar ``x``, an ndarray of the same shape otherwise.

    Raises:
        ValueError: if k is not an integer >= 2 or some x lies outside [0, 1] (or is NaN).

    Example:
        >>> round(eta_cdf(0.5, 3), 12)  # k = 3: eta is uniform on [0, 1] (Archimedes)
        0.5
        >>> eta_cdf([0.0, 1.0], 200)
        array([0., 1.])
    """
    kf = _check_k(k)
    xa = _check_unit(x, "x")
    return _out(betainc(0.5, (kf - 1.0) / 2.0, xa * xa), xa)


def eta_sf(x: ArrayLike, k: int) -> float | np.ndarray:
    """Survival function P(eta > x) = 1 - I_{x^2}(1/2, (k-1)/2) (Theorem 1).

    Computed with the complemented incomplete beta function in the upper half, so tail
    probabilities far below machine epsilon (large x, large k) are not lost to cancellation.

    Args:
        x: value(s) in [0, 1].
        k: number of corrupted parameters, an integer >= 2.

    Returns:
        P(eta > x): a float for scalar ``x``, an ndarray of the same shape otherwise.

    Raises:
        ValueError: if k is not an integer >= 2 or some x lies outside [0, 1] (or is NaN).

    Example:
        >>> round(eta_sf(0.25, 3), 12)
        0.75
    """
    kf = _check_k(k)
    xa = _check_unit(x, "x")
    b = (kf - 1.0) / 2.0
    z = xa * xa
    cdf = betainc(0.5, b, z)
    # Where the CDF is small, 1 - CDF is exact to rounding (and scipy's complemented function
    # loses digits at tiny z, e.g. 6e-11 relative for k = 2); elsewhere the complement keeps
    # the relative accuracy of tail probabilities.
    sf = np.where(cdf < 0.5, 1.0 - cdf, _betaincc(0.5, b, z))
    return _out(sf, xa)


def eta_quantile(prob: ArrayLike, k: int) -> float | np.ndarray:
    """Quantile of eta (inverse of :func:`eta_cdf`; Theorem 1).

    x_p = sqrt(I^{-1}_p(1/2, (k-1)/2)), the value with P(eta <= x_p) = p. For large k,
    x_p ~ Phi^{-1}((1 + p) / 2) / sqrt(k) (sqrt(k) eta is close to |N(0, 1)|).

    Args:
        prob: probability (or probabilities) in [0, 1].
        k: number of corrupted parameters, an integer >= 2.

    Returns:
        x_p: a float for scalar ``prob``, an ndarray of the same shape otherwise.

    Raises:
        ValueError: if k is not an integer >= 2 or some prob lies outside [0, 1] (or is NaN).

    Example:
        >>> round(eta_quantile(0.3, 3), 12)
        0.3
        >>> round(eta_quantile(0.5, 10**8) * 10**4, 4)  # ~ median of |N(0, 1)|
        0.6745
    """
    kf = _check_k(k)
    pa = _check_unit(prob, "prob")
    z = betaincinv(0.5, (kf - 1.0) / 2.0, pa)
    return _out(np.sqrt(np.clip(z, 0.0, 1.0)), pa)


def eta_pdf(x: ArrayLike, k: int) -> float | np.ndarray:
    """Density of eta (Theorem 1, Eq. 8).

    p_eta(x) = 2 Gamma(k/2) / (sqrt(pi) Gamma((k-1)/2)) * (1 - x^2)^((k-3)/2), evaluated in log
    space (log-gamma ratio, log1p), so it is finite for k up to 1e9 and beyond; the density near
    0 then grows like sqrt(2k/pi). At x = 1 it is +inf for k = 2 (eta = |cos theta|, theta
    uniform), exactly 1 for k = 3 (eta uniform on [0, 1]) and 0 for k > 3.

    Args:
        x: value(s) in [0, 1].
        k: number of corrupted parameters, an integer >= 2.

    Returns:
        p_eta(x): a float for scalar ``x``, an ndarray of the same shape otherwise.

    Raises:
        ValueError: if k is not an integer >= 2 or some x lies outside [0, 1] (or is NaN).

    Example:
        >>> eta_pdf([0.0, 0.5, 1.0], 3)
        array([1., 1., 1.])
        >>> round(eta_pdf(0.0, 2), 12) == round(2 / 3.141592653589793, 12)
        True
    """
    kf = _check_k(k)
    xa = _check_unit(x, "x")
    log_c = _log_pdf_const(kf)
    expo = (kf - 3.0) / 2.0
    if expo == 0.0:  # k = 3: (1 - x^2)^0 = 1 everywhere, including x = 1
        dens = np.full(xa.shape, math.exp(log_c))
    else:
        with np.errstate(divide="ignore"):  # log1p(-1) = -inf at x = 1, intended
            log_tail = np.log1p(-(xa * xa))
        dens = np.exp(log_c + expo * log_tail)  # x = 1: exp(+inf) = inf (k = 2), exp(-inf) = 0
    return _out(dens, xa)


def expected_eta(k: int) -> float:
    """Mean of eta: E[eta] = Gamma(k/2) / (sqrt(pi) Gamma((k+1)/2)) (Theorem 1).

    The expected first-order |loss change| of a random L2 corruption is eps G E[eta]; for large
    k, E[eta] ~ sqrt(2 / (pi k)). Evaluated through a log-gamma ratio, so finite for any k.

    Args:
        k: number of corrupted parameters, an integer >= 2.

    Returns:
        E[eta] as a float.

    Raises:
        ValueError: if k is not an integer >= 2.

    Example:
        >>> round(expected_eta(2), 12) == round(2 / 3.141592653589793, 12)  # E|cos theta|
        True
        >>> round(expected_eta(3), 12)  # uniform on [0, 1]
        0.5
    """
    kf = _check_k(k)
    return math.exp(-0.5 * _LOG_PI - _log_gamma_ratio_half(kf / 2.0))


def random_loss_change_quantiles(
    probs: ArrayLike, eps: float, G: float, k: int
) -> float | np.ndarray:
    """First-order quantiles of |Delta L| for random L2 corruption (Theorem 1, Table 3).

    alpha(p) = eps * G * x_p with x_p = :func:`eta_quantile` (p, k): to first order in eps,
    a random corruption on the sphere ||a||_2 = eps of k parameters (n = k) changes the loss by
    less than alpha(p) with probability p. This is the "Random corruption (Theoretical)" row of
    the paper's Table 3, where eps G is the first-order worst-case loss change (Eq. 6).

    Args:
        probs: probability (or probabilities) in [0, 1].
        eps: the corruption radius, > 0.
        G: the gradient's L2 norm ||g||_2, >= 0.
        k: number of corrupted parameters, an integer >= 2.

    Returns:
        alpha(p): a float for scalar ``probs``, an ndarray of the same shape otherwise.

    Raises:
        ValueError: if a probability lies outside [0, 1], eps <= 0, G < 0, either is not
            finite, or k is not an integer >= 2.

    Example:
        >>> q = random_loss_change_quantiles([0.9, 0.95, 0.995], eps=5e-4, G=88.0, k=24_000_000)
        >>> [f"{v:.1e}" for v in q]
        ['1.5e-05', '1.8e-05', '2.5e-05']
    """
    e = _check_positive(eps, "eps", allow_zero=False)
    g = _check_positive(G, "G", allow_zero=True)
    pa = _check_unit(probs, "probs")
    q = eta_quantile(pa, k)
    return _out(e * g * np.asarray(q), pa)
