"""The fit result: inference, residual diagnostics, summary, forecasts, plots, against
statsmodels' ``UnobservedComponents`` on the Nile data and scipy's distributions."""

import math
import re
import warnings

import numpy as np
import pytest
import scipy.stats
import statsmodels.api as sm
import torch

from ssmkit.probabilistic.diagnostics import (
    betainc,
    breakvar,
    chi2_sf,
    f_cdf_sf,
    jarque_bera,
    ljung_box,
    normal_sf,
    residual_tests,
    standardize,
)
from ssmkit.probabilistic.fit import fit_mle
from ssmkit.probabilistic.io import load_nile
from ssmkit.probabilistic.spec import structural_spec

RTOL = 1e-6


def _nile() -> torch.Tensor:
    return load_nile().y.unsqueeze(0)  # (1, 100, 1)


def _both(y: torch.Tensor, exact: bool, trend: str = "local level", seasonal: int = 0):
    """Our fit, and statsmodels' model and results evaluated at OUR parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.tsa.UnobservedComponents(
            y[0, :, 0].numpy(), trend, seasonal=seasonal or None, use_exact_diffuse=exact
        )
        spec = structural_spec(y, trend.replace(" ", "-"), seasonal)
        ours = fit_mle(
            spec, y, diffuse="exact" if exact else "approximate", burn=model.loglikelihood_burn
        )
        theirs = model.smooth(ours.params.numpy(), cov_type="approx")
    return ours, model, theirs


@pytest.fixture(scope="module", params=[True, False], ids=["exact", "approximate"])
def nile_fit(request):
    return _both(_nile(), request.param)


def test_statistics_equal_statsmodels_at_the_same_parameters(nile_fit):
    ours, _, theirs = nile_fit
    d = max(theirs.loglikelihood_burn, theirs.nobs_diffuse)
    assert int(ours.skipped[0]) == d == 1
    e = ours.standardized_residuals[0, :, 0].numpy()
    assert np.isnan(e[:d]).all()
    np.testing.assert_allclose(
        e[d:], theirs.filter_results.standardized_forecasts_error[0, d:], rtol=RTOL, atol=1e-12
    )
    t = ours.residual_tests()
    lb = theirs.test_serial_correlation("ljungbox")[0]  # (2, lags): Q, p
    assert t.lags == tuple(range(1, lb.shape[1] + 1)) == tuple(range(1, 11))
    np.testing.assert_allclose(t.ljung_box, lb[0], rtol=RTOL)
    np.testing.assert_allclose(t.ljung_box_pvalue, lb[1], rtol=RTOL)
    jb = theirs.test_normality("jarquebera")[0]
    got = [t.jarque_bera, t.jarque_bera_pvalue, t.skewness, t.kurtosis]
    np.testing.assert_allclose(got, jb, rtol=RTOL)
    het = theirs.test_heteroskedasticity("breakvar")[0]
    np.testing.assert_allclose([t.heteroskedasticity, t.heteroskedasticity_pvalue], het, rtol=RTOL)
    np.testing.assert_allclose(
        [ours.loglik, ours.aic, ours.bic, ours.hqic],
        [theirs.llf, theirs.aic, theirs.bic, theirs.hqic],
        rtol=1e-9,
    )
    np.testing.assert_allclose(ours.zvalues.numpy(), theirs.zvalues, rtol=1e-3)
    np.testing.assert_allclose(ours.pvalues.numpy(), theirs.pvalues, rtol=1e-3)
    np.testing.assert_allclose(ours.conf_int().numpy(), theirs.conf_int(), rtol=1e-3)
    np.testing.assert_allclose(ours.smoothed_state[0].numpy().T, theirs.smoothed_state, rtol=RTOL)


def _after(text: str, label: str) -> list[str]:
    """Every value printed after ``label`` (and an optional colon) in text."""
    return re.findall(re.escape(label) + r":?\s+(\S+)", text)


def test_summary_has_statsmodels_numbers(nile_fit):
    ours, _, theirs = nile_fit
    text = ours.summary(model_name="local level", y_name="flow")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = str(theirs.summary())
    labels = ("Log Likelihood", "AIC", "BIC", "HQIC", "Jarque-Bera (JB)", "Prob(JB)", "Skew")
    labels += ("Ljung-Box (L1) (Q)", "Prob(Q)", "Heteroskedasticity (H)", "Prob(H) (two-sided)")
    for label in (*labels, "Kurtosis"):
        assert _after(text, label) == _after(ref, label) != [], label
    # parameter rows: coef, std err, z, P>|z| and the interval, formatted the same way
    for name in ours.names:
        row = next(line for line in text.splitlines() if line.startswith(name)).split()
        theirs_row = next(line for line in ref.splitlines() if line.startswith(name)).split()
        assert row[1] == theirs_row[1]  # coef
        np.testing.assert_allclose(
            [float(x) for x in row[2:]], [float(x) for x in theirs_row[2:]], rtol=2e-3
        )
    assert "No. Observations:" in text and "Covariance Type:" in text and "flow" in text


def test_nile_durbin_koopman_values():
    """D&K (2012, sec. 2.12) on the Nile local level model: Q(9) = 8.84, H(33) = 0.61,
    skewness -0.03, kurtosis 3.09; and statsmodels' own fit lands on the same values."""
    ours, model, _ = _both(_nile(), True)
    t = ours.residual_tests()
    assert t.ljung_box[8] == pytest.approx(8.84, abs=0.01)
    assert t.heteroskedasticity == pytest.approx(0.61, abs=0.005)
    assert t.skewness == pytest.approx(-0.03, abs=0.005)
    assert t.kurtosis == pytest.approx(3.09, abs=0.005)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = model.fit(disp=False)  # its optimum differs from ours in the 3rd digit
    lb = fitted.test_serial_correlation("ljungbox")[0, 0]
    np.testing.assert_allclose(t.ljung_box, lb, rtol=0.025)  # Q(1) moves most with the params
    np.testing.assert_allclose(
        [t.jarque_bera, t.skewness, t.kurtosis],
        fitted.test_normality("jarquebera")[0, [0, 2, 3]],
        rtol=0.05,
    )
    het = fitted.test_heteroskedasticity("breakvar")[0, 0]
    assert t.heteroskedasticity == pytest.approx(het, rel=1e-3)


def test_missing_values_and_seasonal_lag():
    """statsmodels writes 0 for the standardised residual of a missing step and tests those
    zeros as observations; the test functions reproduce it on its array, and our own
    residuals leave missing steps out. A seasonal of period s sets the lag to 2 s."""
    y = _nile().clone()
    gaps = [3, 10, 11, 50, 90]
    y[0, gaps] = float("nan")
    ours, _, theirs = _both(y, True, "local linear trend", seasonal=4)
    d = max(theirs.loglikelihood_burn, theirs.nobs_diffuse)
    assert int(ours.skipped[0]) == d == 8
    sf = theirs.filter_results.standardized_forecasts_error[0]
    assert (sf[gaps] == 0).all()
    e = ours.standardized_residuals[0, :, 0]
    assert torch.isnan(e[gaps]).all()
    obs = [t for t in range(d, 100) if t not in gaps]
    np.testing.assert_allclose(e[obs].numpy(), sf[obs], rtol=RTOL)
    on_theirs = residual_tests(torch.from_numpy(sf[d:]), ours.default_lags())
    assert ours.default_lags() == 8  # min(2 * 4, 92 // 5)
    lb = theirs.test_serial_correlation("ljungbox")[0]
    np.testing.assert_allclose(on_theirs.ljung_box, lb[0], rtol=RTOL)
    np.testing.assert_allclose(on_theirs.ljung_box_pvalue, lb[1], rtol=RTOL)
    jb = theirs.test_normality("jarquebera")[0]
    got = [on_theirs.jarque_bera, on_theirs.jarque_bera_pvalue]
    np.testing.assert_allclose([*got, on_theirs.skewness, on_theirs.kurtosis], jb, rtol=RTOL)
    het = theirs.test_heteroskedasticity("breakvar")[0]
    got = [on_theirs.heteroskedasticity, on_theirs.heteroskedasticity_pvalue]
    np.testing.assert_allclose(got, het, rtol=RTOL)
    mine = ours.residual_tests()
    assert mine.n == 100 - d - 4  # gap 3 lies in the diffuse phase
    np.testing.assert_allclose(mine.heteroskedasticity, het[0], rtol=RTOL)  # same sums
    assert mine.heteroskedasticity_pvalue != pytest.approx(het[1])  # fewer dof than zeros


def test_forecast_equals_statsmodels(nile_fit):
    ours, _, theirs = nile_fit
    fc = ours.forecast(5, level=0.9)
    ref = theirs.get_forecast(5).summary_frame(alpha=0.1)
    np.testing.assert_allclose(fc.mean[0, :, 0].numpy(), ref["mean"], rtol=RTOL)
    np.testing.assert_allclose(fc.lower[0, :, 0].numpy(), ref["mean_ci_lower"], rtol=RTOL)
    np.testing.assert_allclose(fc.upper[0, :, 0].numpy(), ref["mean_ci_upper"], rtol=RTOL)


@pytest.mark.parametrize("x", [0.01, 0.5, 1.3, 4.0, 17.5, 60.0])
def test_distributions_equal_scipy(x):
    for df in (1, 2, 7, 33):
        assert chi2_sf(x, df) == pytest.approx(scipy.stats.chi2.sf(x, df), rel=1e-10, abs=1e-300)
    for dfn, dfd in ((1, 1), (33, 33), (30, 29), (5, 60)):
        lo, hi = f_cdf_sf(x, dfn, dfd)
        assert lo == pytest.approx(scipy.stats.f.cdf(x, dfn, dfd), rel=1e-10, abs=1e-15)
        assert hi == pytest.approx(scipy.stats.f.sf(x, dfn, dfd), rel=1e-10, abs=1e-15)
    z = x / 4
    for a, b in ((0.5, 0.5), (2.0, 30.0), (16.5, 16.5)):
        if z < 1:
            assert betainc(a, b, z) == pytest.approx(scipy.special.betainc(a, b, z), rel=1e-10)
    assert normal_sf(x) == pytest.approx(scipy.stats.norm.sf(x), rel=1e-12)


def test_standardize_multivariate_with_partly_missing():
    """e_t = L^{-1} v_t on the observed block of F_t, in the original entry order."""
    g = torch.Generator().manual_seed(0)
    b, l, o = 2, 5, 3
    v = torch.randn(b, l, o, generator=g, dtype=torch.float64)
    A = torch.randn(b, l, o, o, generator=g, dtype=torch.float64)
    F = A @ A.mT + 0.5 * torch.eye(o, dtype=torch.float64)
    mask = torch.rand(b, l, o, generator=g) > 0.3
    e = standardize(v, F, mask)
    for i in range(b):
        for t in range(l):
            idx = torch.nonzero(mask[i, t]).flatten()
            want = torch.full((o,), float("nan"), dtype=torch.float64)
            if len(idx):
                L = torch.linalg.cholesky(F[i, t][idx][:, idx])
                want[idx] = torch.linalg.solve_triangular(L, v[i, t, idx, None], upper=False)[:, 0]
            torch.testing.assert_close(e[i, t], want, equal_nan=True)
    torch.testing.assert_close(standardize(v, F, None), standardize(v, F, torch.ones_like(mask)))


def test_per_series_summary_and_shapes():
    y = _nile()
    g = torch.Generator().manual_seed(1)
    y2 = torch.cat([y, 1.1 * y + 30 * torch.randn(1, 100, 1, generator=g, dtype=y.dtype)])
    res = fit_mle(structural_spec(y2), y2, per_series=True)
    assert res.smoothed_state.shape == (2, 100, 1)
    assert res.standardized_residuals.shape == (2, 100, 1)
    assert res.forecast(4).mean.shape == (2, 4, 1)
    assert res.conf_int().shape == (2, 2, 2) and res.pvalues.shape == (2, 2)
    one = fit_mle(structural_spec(y2[1:]), y2[1:])
    text = res.summary(series=1)
    assert "Series:" in text and "1 of 2" in text
    ll = re.search(r"Log Likelihood\s+(-?[\d.]+)", text).group(1)
    assert float(ll) == pytest.approx(one.loglik, abs=2e-3)
    assert res.residual_tests(1).ljung_box == pytest.approx(one.residual_tests().ljung_box, 1e-4)


def test_plot_diagnostics(nile_fit, tmp_path):
    ours = nile_fit[0]
    path = ours.plot_diagnostics(tmp_path / "d.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments(nile_fit, tmp_path):
    ours = nile_fit[0]
    with pytest.raises(ValueError, match=r"series must be in \[0, 0\], got 1"):
        ours.summary(series=1)
    with pytest.raises(ValueError, match=r"endog must be in \[0, 0\], got 2"):
        ours.residual_tests(endog=2)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 1.5"):
        ours.conf_int(1.5)
    with pytest.raises(ValueError, match=r"lags must be < the number of residuals \(99\), got 99"):
        ours.residual_tests(lags=99)
    with pytest.raises(ValueError, match="lags must be"):
        ours.plot_diagnostics(tmp_path / "x.png", lags=0)
    with pytest.raises(ValueError, match="horizon"):
        ours.forecast(0)
    with pytest.raises(ValueError, match="at least 2 residuals, got 1"):
        jarque_bera(torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="h must be"):
        breakvar(torch.ones(5, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="lags must be"):
        ljung_box(torch.ones(5, dtype=torch.float64), 5)
    assert math.isnan(breakvar(torch.tensor([1.0, float("nan"), 2.0]), 1)[0])
