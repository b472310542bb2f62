"""Agreement with statsmodels' UnobservedComponents on the Nile data (both diffuse
conventions): log-likelihood, filtered and smoothed means and variances, MLE."""

import warnings

import numpy as np
import pytest
import torch

from ssmkit.probabilistic import kalman_filter, rts_smoother
from ssmkit.probabilistic.fit import fit_mle
from ssmkit.probabilistic.io import load_nile
from ssmkit.probabilistic.spec import structural_spec
from ssmkit.probabilistic.structural import (
    autoregressive,
    local_level,
    local_linear_trend,
    seasonal,
    structural_model,
)

sm = pytest.importorskip("statsmodels.api")
RTOL = 1e-6


def nile() -> np.ndarray:
    return sm.datasets.nile.load_pandas().data["volume"].to_numpy().astype(float)


def _sm(y, exact: bool, params, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.tsa.UnobservedComponents(y, use_exact_diffuse=exact, **kw)
        return model, model.smooth(params)


def _compare(ours, res, burn):
    sf, ss = ours.filtered, ours
    ll = float(sf.loglik[0, burn:].sum())
    np.testing.assert_allclose(ll, res.llf, rtol=RTOL)
    np.testing.assert_allclose(sf.loglik[0].numpy(), res.llf_obs, rtol=RTOL)
    np.testing.assert_allclose(sf.m[0].numpy().T, res.filtered_state, rtol=RTOL)
    np.testing.assert_allclose(
        sf.P[0].numpy().transpose(1, 2, 0),
        res.filtered_state_cov,
        rtol=RTOL,
        atol=1e-9 * res.filtered_state_cov.max(),
    )
    np.testing.assert_allclose(ss.m[0].numpy().T, res.smoothed_state, rtol=RTOL)
    np.testing.assert_allclose(
        ss.P[0].numpy().transpose(1, 2, 0),
        res.smoothed_state_cov,
        rtol=RTOL,
        atol=1e-9 * res.smoothed_state_cov.max(),
    )


def test_bundled_nile_is_statsmodels_nile():
    np.testing.assert_array_equal(load_nile().y[:, 0].numpy(), nile())


@pytest.mark.parametrize("exact", [True, False])
def test_local_level_nile(exact):
    y = nile()
    params = [15099.0, 1469.1]  # Durbin & Koopman's estimates
    model, res = _sm(y, exact, params, level="llevel")
    ours = structural_model(local_level(params[1]), sigma2_obs=params[0])
    Y = torch.tensor(y).view(1, -1, 1)
    methods = ["sequential"] if exact else ["sequential", "sqrt", "parallel"]
    for method in methods:
        sm_ = rts_smoother(ours, Y, method=method, diffuse="exact" if exact else "approximate")
        _compare(sm_, res, model.loglikelihood_burn)


@pytest.mark.parametrize("exact", [True, False])
def test_trend_seasonal_ar_with_missing(exact):
    """A 2-step diffuse phase (trend), seasonal, stationary AR, and missing values."""
    y = nile()
    y[[3, 10, 11, 50]] = np.nan
    params = [12000.0, 1400.0, 20.0, 60.0, 300.0, 0.5, -0.2]
    model, res = _sm(y, exact, params, level="lltrend", seasonal=4, autoregressive=2)
    ours = structural_model(
        local_linear_trend(params[1], params[2]),
        seasonal(4, params[3]),
        autoregressive(torch.tensor(params[5:], dtype=torch.float64), params[4]),
        sigma2_obs=params[0],
    )
    np.testing.assert_array_equal(ours.F.numpy(), model.ssm["transition"])
    from scipy.linalg import solve_discrete_lyapunov

    ar = slice(5, 7)  # the AR block: stationary prior from the discrete Lyapunov equation
    F_ar, Q_ar = model.ssm["transition"][ar, ar], np.diag([params[4], 0.0])
    np.testing.assert_allclose(ours.P0[ar, ar].numpy(), solve_discrete_lyapunov(F_ar, Q_ar))
    np.testing.assert_array_equal(ours.P0_diffuse.diagonal().numpy(), [1, 1, 1, 1, 1, 0, 0])
    Y = torch.tensor(y).view(1, -1, 1)
    sm_ = rts_smoother(ours, Y, diffuse="exact" if exact else "approximate")
    _compare(sm_, res, model.loglikelihood_burn)


@pytest.mark.slow
@pytest.mark.parametrize("exact", [True, False])
def test_mle_nile(exact):
    """Our optimum is at least as good as statsmodels' in statsmodels' own likelihood, and
    lands on its parameters; AIC/BIC follow statsmodels' conventions; SEs match its Hessian."""
    y = nile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.tsa.UnobservedComponents(y, "llevel", use_exact_diffuse=exact)
        ref = model.fit(disp=False, cov_type="approx")
    Y = torch.tensor(y).view(1, -1, 1)
    res = fit_mle(
        structural_spec(Y),
        Y,
        diffuse="exact" if exact else "approximate",
        burn=model.loglikelihood_burn,
    )
    assert res.names == tuple(model.param_names)
    np.testing.assert_allclose(res.params.numpy(), ref.params, rtol=0.03)
    assert model.loglike(res.params.numpy()) >= ref.llf - 1e-7  # at least as high
    np.testing.assert_allclose(res.loglik, model.loglike(res.params.numpy()), rtol=1e-9)
    np.testing.assert_allclose(res.params.numpy(), [15099.0, 1469.1], rtol=0.01)  # D&K 2.10
    k = len(res.params) + (1 if exact else 0)
    n = len(y) - model.loglikelihood_burn
    np.testing.assert_allclose(res.aic, -2 * res.loglik + 2 * k)
    np.testing.assert_allclose(res.bic, -2 * res.loglik + k * np.log(n))
    np.testing.assert_allclose(ref.aic - (-2 * ref.llf), res.aic - (-2 * res.loglik))
    np.testing.assert_allclose(ref.bic - (-2 * ref.llf), res.bic - (-2 * res.loglik))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_ours = model.smooth(res.params.numpy(), cov_type="approx")
    np.testing.assert_allclose(res.se.numpy(), at_ours.bse, rtol=0.02)


def test_exact_diffuse_only_sequential():
    ours = structural_model(local_level(1.0), sigma2_obs=1.0)
    Y = torch.tensor(nile()[:5]).view(1, -1, 1)
    with pytest.raises(ValueError, match="diffuse='exact' needs method='sequential'"):
        kalman_filter(ours, Y, method="parallel")
