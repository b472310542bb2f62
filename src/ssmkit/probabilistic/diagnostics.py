"""Residual diagnostics of a fitted state space model (Durbin & Koopman 2012, sec. 2.12).

The standardised residual of step t is the one-step-ahead forecast error
v_t = y_t - H_t m_{t|t-1} - d_t scaled by its covariance F_t = H_t P_{t|t-1} H_t^T + R_t:
e_t = L_t^{-1} v_t with F_t = L_t L_t^T (e_t = v_t / sqrt(F_t) for one series), on the
observed entries of y_t only. The first d = max(burn, diffuse periods) steps are left out,
as statsmodels does with ``max(loglikelihood_burn, nobs_diffuse)``. On them:

* Ljung-Box Q(k) = n (n + 2) sum_{j<=k} r_j^2 / (n - j) ~ chi2(k) (Ljung & Box 1978);
* Jarque-Bera JB = n (S^2 + (K - 3)^2 / 4) / 6 ~ chi2(2), with the sample skewness S and
  kurtosis K (moments about the mean, divided by n);
* the variance-break statistic H(h) = sum of the last h squared residuals / sum of the first
  h, h = round((l - d) / 3), referred to F(h, h) two-sided (Harvey 1989, sec. 5.4).

The distribution functions are written here on torch so that the package needs no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_int
from ssmkit.probabilistic.filters import FilterResult
from ssmkit.probabilistic.model import Prepared

Tensor = torch.Tensor


@dataclass(frozen=True)
class ResidualTests:
    """The tests of one standardised residual series (n = residuals used)."""

    lags: tuple[int, ...]  # Ljung-Box lags 1..k
    ljung_box: tuple[float, ...]  # Q(1) .. Q(k)
    ljung_box_pvalue: tuple[float, ...]  # P(chi2(j) > Q(j))
    jarque_bera: float  # JB
    jarque_bera_pvalue: float  # P(chi2(2) > JB)
    skewness: float  # S
    kurtosis: float  # K (3 for a normal distribution)
    heteroskedasticity: float  # H(h)
    heteroskedasticity_pvalue: float  # two-sided, against F(h1, h2)
    n: int  # observed residuals after the first d steps


def chi2_sf(x: float, df: float) -> float:
    """P(chi2(df) > x), the regularised upper incomplete gamma function Q(df / 2, x / 2)."""
    t = torch.tensor(max(x, 0.0) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), t))


def normal_sf(x: float) -> float:
    """P(N(0, 1) > x)."""
    return 0.5 * math.erfc(x / math.sqrt(2))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz evaluation), for x < (a+1)/(a+b+2)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return f


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), a, b > 0, x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def f_cdf_sf(x: float, dfn: float, dfd: float) -> tuple[float, float]:
    """(P(F(dfn, dfd) <= x), P(F(dfn, dfd) > x)), each computed without cancellation."""
    if x <= 0:
        return 0.0, 1.0
    z = dfn * x / (dfn * x + dfd)
    return betainc(dfn / 2, dfd / 2, z), betainc(dfd / 2, dfn / 2, 1.0 - z)


def forecast_errors(p: Prepared, filt: FilterResult) -> tuple[Tensor, Tensor]:
    """One-step-ahead forecast errors v (b, l, o) and their covariances F (b, l, o, o).

    Under an exact diffuse prior F is the proper part only; those steps are excluded from
    the diagnostics (:func:`diffuse_periods`).
    """
    v = p.y - (p.H @ filt.m_pred.unsqueeze(-1)).squeeze(-1)  # (b, l, o)
    if p.d is not None:
        v = v - p.d
    F = p.H @ filt.P_pred @ p.H.mT + p.R  # (b, l, o, o)
    return v, 0.5 * (F + F.mT)


def standardize(v: Tensor, F: Tensor, mask: Tensor | None) -> Tensor:
    """e_t = L_t^{-1} v_t (F_t = L_t L_t^T) on the observed entries of each step; NaN where
    y is missing. Missing entries are decoupled (unit variance, zero error) before the
    Cholesky factorisation, which then factors the observed block in its original order.

    Args:
        v: (b, l, o) forecast errors; F: (b, l, o, o) their covariances.
        mask: (b, l, o) True where observed, or None when nothing is missing.
    """
    if mask is not None:
        both = mask.unsqueeze(-1) & mask.unsqueeze(-2)  # (b, l, o, o)
        eye = torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
        F = torch.where(both, F, eye)
        v = torch.where(mask, v, torch.zeros((), dtype=v.dtype))
    L, info = torch.linalg.cholesky_ex(F)
    e = torch.linalg.solve_triangular(L, v.unsqueeze(-1), upper=False).squeeze(-1)
    e = torch.where((info == 0)[..., None], e, torch.full_like(e, float("nan")))
    if mask is not None:
        e = torch.where(mask, e, torch.full_like(e, float("nan")))
    return e  # (b, l, o)


def diffuse_periods(filt: FilterResult, has_diffuse: bool) -> Tensor:
    """(b,) number of leading steps updated by the exact diffuse equations (statsmodels'
    ``nobs_diffuse``): step t is diffuse while the predicted P_inf is nonzero."""
    b, l = filt.m.shape[:2]
    if filt.P_inf is None or not has_diffuse:
        return torch.zeros(b, dtype=torch.long)
    nonzero = filt.P_inf.flatten(2).abs().amax(-1) > 0  # (b, l) P_inf left after step t
    lead = torch.cumprod(nonzero.long(), 1).sum(1)  # steps after which P_inf is still > 0
    return torch.clamp(lead + 1, max=l)


def default_lags(n_steps: int, seasonal_period: int = 0) -> int:
    """statsmodels' default Ljung-Box lag: min(10, n // 5), or min(2 s, n // 5) with a
    seasonal of period s (n = steps after the first d, missing ones included)."""
    cap = 2 * seasonal_period if seasonal_period else 10
    return max(1, min(cap, n_steps // 5))


def autocorrelations(e: Tensor, lags: int) -> Tensor:
    """(lags,) sample autocorrelations r_1..r_lags of e (n,) about its mean (divided by n)."""
    c = e - e.mean()
    denom = (c * c).sum()
    n = e.shape[0]
    return torch.stack([(c[j:] * c[: n - j]).sum() / denom for j in range(1, lags + 1)])


def ljung_box(e: Tensor, lags: int) -> tuple[Tensor, Tensor]:
    """Ljung-Box Q(1..lags) and chi2 p-values of e (n,) (no NaN), autocorrelations about
    the mean normalised by n."""
    check_int("lags", lags, 1)
    n = e.shape[0]
    if lags >= n:
        raise ValueError(f"lags must be < the number of residuals ({n}), got {lags}")
    r = autocorrelations(e, lags)
    j = torch.arange(1, lags + 1, dtype=e.dtype)
    q = n * (n + 2) * torch.cumsum(r**2 / (n - j), 0)  # (lags,)
    p = torch.tensor([chi2_sf(float(qk), k + 1) for k, qk in enumerate(q)], dtype=e.dtype)
    return q, p


def jarque_bera(e: Tensor) -> tuple[float, float, float, float]:
    """(JB, p-value, skewness, kurtosis) of e (n,) (no NaN), n >= 2."""
    n = e.shape[0]
    if n < 2:
        raise ValueError(f"the Jarque-Bera test needs at least 2 residuals, got {n}")
    c = e - e.mean()
    m2 = float((c**2).mean())
    skew = float((c**3).mean()) / m2**1.5
    kurt = float((c**4).mean()) / m2**2
    jb = n / 6 * (skew**2 + (kurt - 3) ** 2 / 4)
    return jb, chi2_sf(jb, 2), skew, kurt


def breakvar(e: Tensor, h: int) -> tuple[float, float]:
    """H(h) = (sum of e^2 over the last h steps) / (first h steps) and its two-sided
    p-value against F(n2, n1) of the observed counts (the ratio of sums scaled by n1 / n2);
    e is (l,) with NaN where missing."""
    check_int("h", h, 1)
    sq = e**2
    first, last = sq[:h], sq[-h:]
    n1, n2 = int((~torch.isnan(first)).sum()), int((~torch.isnan(last)).sum())
    if n1 < 2 or n2 < 2:
        return float("nan"), float("nan")
    H = float(torch.nansum(last) / torch.nansum(first))
    lower, upper = f_cdf_sf(H * n1 / n2, n2, n1)
    return H, min(1.0, 2 * min(lower, upper))


def residual_tests(e: Tensor, lags: int) -> ResidualTests:
    """All tests on one standardised residual series e (l - d,) (NaN where missing; the
    first d steps already removed). Ljung-Box and Jarque-Bera use the observed residuals
    (statsmodels drops missing ones for Jarque-Bera; its Ljung-Box returns NaN then)."""
    obs = e[~torch.isnan(e)]
    q, qp = ljung_box(obs, lags)
    jb, jbp, skew, kurt = jarque_bera(obs)
    H, Hp = breakvar(e, round(e.shape[0] / 3))
    return ResidualTests(
        tuple(range(1, lags + 1)),
        tuple(q.tolist()),
        tuple(qp.tolist()),
        jb,
        jbp,
        skew,
        kurt,
        H,
        Hp,
        int(obs.shape[0]),
    )
