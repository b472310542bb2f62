"""The result of a maximum likelihood fit: inference, residual diagnostics, forecasts, plots.

:class:`MLEResult` is what :func:`ssmkit.probabilistic.fit.fit_mle` returns. Besides the
estimates it keeps the data and the filter settings, so it can run the smoother, the
forecast and the residual tests of :mod:`.diagnostics` on the fitted model, and lay them out
as statsmodels' ``summary()`` does (:mod:`.summary`). With ``per_series=True`` (params
(b, k)) or several series sharing one parameter vector, the per-series methods take the
series index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from ssmkit.core.checks import check_int
from ssmkit.probabilistic.diagnostics import (
    ResidualTests,
    default_lags,
    diffuse_periods,
    forecast_errors,
    normal_sf,
    residual_tests,
    standardize,
)
from ssmkit.probabilistic.filters import FilterResult, SmootherResult, rts_smoother
from ssmkit.probabilistic.forecast import Forecast, forecast
from ssmkit.probabilistic.model import LinearGaussianSSM, prepare

Tensor = torch.Tensor


def information_criteria(loglik: float, k: int, n: int) -> tuple[float, float, float]:
    """(AIC, BIC, HQIC) = -2 ll + (2 k, k log n, 2 k log log n)."""
    if n < 2:
        raise ValueError(f"the number of observations must be >= 2, got {n}")
    return (
        -2 * loglik + 2 * k,
        -2 * loglik + k * math.log(n),
        -2 * loglik + 2 * k * math.log(math.log(n)),
    )


@dataclass(frozen=True)
class MLEResult:
    """Output of :func:`~ssmkit.probabilistic.fit.fit_mle`."""

    params: Tensor  # (k,) natural parameters at the optimum; (b, k) with per_series
    names: tuple[str, ...]  # their names
    theta: Tensor  # (k,) or (b, k) unconstrained optimum
    se: Tensor  # (k,) or (b, k) standard errors of params (NaN: Hessian not definite)
    loglik: float  # maximised log-likelihood (summed over series)
    aic: float  # -2 loglik + 2 k' (k' = k + number of exactly diffuse states; times b
    bic: float  # per series) and -2 loglik + k' log(n_eff) (n_eff = observed steps after burn)
    iterations: int  # optimiser iterations run
    model: LinearGaussianSSM  # the fitted model (per-series matrices with per_series)
    loglik_series: Tensor | None = None  # (b,) each series' maximised log-likelihood
    df_model: int = 0  # k' of the information criteria
    nobs_effective: int = 0  # n_eff of BIC and HQIC
    y: Tensor | None = None  # (b, l, o) the data fitted (NaN = missing)
    u: Tensor | None = None  # (b, l, m) its inputs, or None
    diffuse: str = "exact"  # treatment of the diffuse prior in the fit
    kappa: float = 1e6  # approximate diffuse variance scale
    burn: int = 0  # leading steps left out of the likelihood
    seasonal_period: int = 0  # the model's seasonal period (sets the Ljung-Box lag)

    @property
    def per_series(self) -> bool:
        """True when every series has its own parameters (params (b, k))."""
        return self.params.ndim == 2

    @property
    def hqic(self) -> float:
        """Hannan-Quinn criterion -2 loglik + 2 k' log(log n_eff)."""
        return information_criteria(self.loglik, self.df_model, self.nobs_effective)[2]

    @property
    def zvalues(self) -> Tensor:
        """(k,) or (b, k) params / se."""
        return self.params / self.se

    @property
    def pvalues(self) -> Tensor:
        """(k,) or (b, k) two-sided p-values of z against N(0, 1)."""
        z = self.zvalues.abs()
        return z.new_tensor([2 * normal_sf(float(x)) for x in z.flatten()]).reshape(z.shape)

    def conf_int(self, alpha: float = 0.05) -> Tensor:
        """(k, 2) or (b, k, 2) Wald intervals params -/+ z_{1-alpha/2} se."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        z = float(torch.special.ndtri(torch.tensor(1 - alpha / 2, dtype=torch.float64)))
        return torch.stack([self.params - z * self.se, self.params + z * self.se], -1)

    def _data(self) -> Tensor:
        if self.y is None:
            raise ValueError("this result was built without its data (y is None)")
        return self.y

    @cached_property
    def smoothed(self) -> SmootherResult:
        """The smoother (and, in ``.filtered``, the filter) run on the fitted model.

        With a diagonal R it runs the univariate recursions of Durbin & Koopman (ch. 5-6;
        those of the exact diffuse smoother, with a zero diffuse part where there is none),
        which need no inverse of the predicted covariance, so models with a degenerate state
        (ARIMA, a known constant) are smoothed too; else the RTS smoother.
        """
        y, model = self._data(), self.model
        R = model.R.detach()
        if self.diffuse == "approximate":
            model = model.with_diffuse("approximate_diffuse", self.kappa)
        diagonal = bool((torch.diag_embed(torch.diagonal(R, dim1=-2, dim2=-1)) == R).all())
        diffuse = self.diffuse
        if diagonal:
            if model.P0_diffuse is None:
                n = model.n
                model = replace(model, P0_diffuse=torch.zeros(n, n, dtype=model.P0.dtype))
            diffuse = "exact"
        with torch.no_grad():
            return rts_smoother(model, y, self.u, "sequential", diffuse, self.kappa, False)

    @property
    def filtered(self) -> FilterResult:
        """The Kalman filter on the fitted model."""
        return self.smoothed.filtered

    @property
    def smoothed_state(self) -> Tensor:
        """(b, l, n) E[x_t | y_1..l] under the fitted model."""
        return self.smoothed.m

    @property
    def smoothed_state_cov(self) -> Tensor:
        """(b, l, n, n) Cov[x_t | y_1..l]."""
        return self.smoothed.P

    @cached_property
    def nobs_diffuse(self) -> Tensor:
        """(b,) leading steps in the exact diffuse phase (0 under approximate diffuse)."""
        Pd = self.model.P0_diffuse
        exact = self.diffuse == "exact" and Pd is not None and bool(Pd.any())
        return diffuse_periods(self.filtered, exact)

    @property
    def skipped(self) -> Tensor:
        """(b,) d = max(burn, diffuse periods): leading steps left out of the diagnostics."""
        return self.nobs_diffuse.clamp_min(self.burn)

    @cached_property
    def standardized_residuals(self) -> Tensor:
        """(b, l, o) one-step-ahead forecast errors standardised by their covariance
        (statsmodels' ``standardized_forecasts_error``, transposed), NaN where y is missing
        and over the first d = max(burn, diffuse periods) steps of each series."""
        y = self._data()
        p = prepare(self.model, y, self.u, validate=False)
        v, F = forecast_errors(p, self.filtered)
        e = standardize(v, F, p.mask)  # (b, l, o)
        steps = torch.arange(y.shape[1])
        early = steps.unsqueeze(0) < self.skipped.unsqueeze(1)  # (b, l)
        return torch.where(early.unsqueeze(-1), torch.full_like(e, float("nan")), e)

    def _series(self, series: int) -> int:
        b = self._data().shape[0]
        check_int("series", series, 0)
        if series >= b:
            raise ValueError(f"series must be in [0, {b - 1}], got {series}")
        return series

    def default_lags(self, series: int = 0) -> int:
        """statsmodels' default Ljung-Box lag for this series: min(10, (l - d) // 5), or
        min(2 s, (l - d) // 5) with a seasonal of period s."""
        i = self._series(series)
        steps = self._data().shape[1] - int(self.skipped[i])
        return default_lags(steps, self.seasonal_period)

    def residual_tests(
        self, series: int = 0, endog: int = 0, lags: int | None = None
    ) -> ResidualTests:
        """Ljung-Box (lags 1..``lags``, default :meth:`default_lags`), Jarque-Bera and the
        variance-break test H on the standardised residuals of one series and entry."""
        i = self._series(series)
        e = self._residuals(i, endog)
        return residual_tests(e, self.default_lags(i) if lags is None else lags)

    def _residuals(self, series: int, endog: int) -> Tensor:
        """(l - d,) standardised residuals of one series and entry after the first d steps."""
        o = self._data().shape[-1]
        check_int("endog", endog, 0)
        if endog >= o:
            raise ValueError(f"endog must be in [0, {o - 1}], got {endog}")
        return self.standardized_residuals[series, int(self.skipped[series]) :, endog]

    def forecast(self, horizon: int, level: float = 0.95) -> Forecast:
        """Means and central ``level`` intervals of y_{l+1} .. y_{l+horizon}."""
        with torch.no_grad():
            y, diffuse = self._data(), self.diffuse
            return forecast(self.model, y, horizon, "sequential", diffuse, self.kappa, level)

    def summary(
        self, series: int = 0, model_name: str = "state space model", y_name: str = "y"
    ) -> str:
        """A statsmodels-style text summary: fit statistics, the parameter table with
        standard errors, z, p-values and 95% intervals, and the residual tests."""
        from ssmkit.probabilistic.summary import format_summary

        return format_summary(self, self._series(series), model_name, y_name)

    def plot_diagnostics(
        self, path: str | Path, series: int = 0, endog: int = 0, lags: int = 10
    ) -> Path:
        """Write a PNG of the standardised residuals: the series, a histogram with the
        N(0, 1) density, a normal Q-Q plot and the correlogram (needs matplotlib)."""
        from ssmkit.probabilistic.plots import plot_diagnostics

        i = self._series(series)
        return plot_diagnostics(self._residuals(i, endog), Path(path), lags, int(self.skipped[i]))
