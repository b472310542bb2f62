"""Seasonal ARIMA as a state space model against statsmodels' SARIMAX on the sunspots."""

import argparse
import warnings

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from statsmodels.tsa.statespace.initialization import Initialization

from ssmkit.cli import kalman
from ssmkit.probabilistic.arima import differencing, poly_mul, sarima_model, sarima_spec
from ssmkit.probabilistic.filters import log_likelihood
from ssmkit.probabilistic.fit import fit_mle
from ssmkit.probabilistic.io import load_sunspots
from tests.probabilistic.test_cli_io import run


def _sunspots() -> torch.Tensor:
    return load_sunspots().y.unsqueeze(0)  # (1, 309, 1)


def _sarimax(y: np.ndarray, order, seasonal_order=(0, 0, 0, 0), trend="n"):
    """SARIMAX with an exactly diffuse prior on its differencing states (its default is
    approximate diffuse with a burn), stationary on the ARMA states."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.tsa.SARIMAX(y, order=order, seasonal_order=seasonal_order, trend=trend)
    k = order[1] + seasonal_order[1] * seasonal_order[3]
    if k:
        init = Initialization(model.k_states)
        init.set((0, k), "diffuse")
        init.set((k, model.k_states), "stationary")
        model.ssm.initialization = init
        model.ssm.loglikelihood_burn = 0
    return model


def test_bundled_sunspots_are_statsmodels_sunspots():
    data = sm.datasets.sunspots.load_pandas().data
    s = load_sunspots()
    np.testing.assert_array_equal(s.y[:, 0].numpy(), data["SUNACTIVITY"].to_numpy())
    assert s.index[0] == "1700" and s.index[-1] == "2008"


def test_sunspot_ar2_with_constant_equals_sarimax():
    """statsmodels: llf -1307.3182 for SARIMAX(order=(2, 0, 0), trend='c')."""
    y = _sunspots()
    res = fit_mle(sarima_spec(y, (2, 0, 0), trend="c"), y)
    model = _sarimax(y[0, :, 0].numpy(), (2, 0, 0), trend="c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model.fit(disp=False)
        at_ours = model.smooth(res.params.numpy(), cov_type="approx")
    assert res.names == tuple(model.param_names)
    assert res.loglik == pytest.approx(-1307.3182, abs=1e-4)
    assert res.loglik == pytest.approx(model.loglike(res.params.numpy()), rel=1e-10)
    assert res.loglik >= ref.llf - 1e-7
    np.testing.assert_allclose(res.params.numpy(), ref.params, rtol=1e-4)
    np.testing.assert_allclose([res.aic, res.bic, res.hqic], [ref.aic, ref.bic, ref.hqic], 1e-8)
    np.testing.assert_allclose(res.se.numpy(), at_ours.bse, rtol=1e-3)
    t = res.residual_tests()
    lb = at_ours.test_serial_correlation("ljungbox")[0]
    np.testing.assert_allclose(t.ljung_box, lb[0], rtol=1e-6)
    jb = at_ours.test_normality("jarquebera")[0]
    np.testing.assert_allclose([t.jarque_bera, t.skewness, t.kurtosis], jb[[0, 2, 3]], 1e-6)
    het = at_ours.test_heteroskedasticity("breakvar")[0]
    np.testing.assert_allclose([t.heteroskedasticity, t.heteroskedasticity_pvalue], het, 1e-6)
    fc = res.forecast(4)
    ref_fc = at_ours.get_forecast(4).summary_frame()
    np.testing.assert_allclose(fc.mean[0, :, 0].numpy(), ref_fc["mean"], rtol=1e-6)
    np.testing.assert_allclose(fc.upper[0, :, 0].numpy(), ref_fc["mean_ci_upper"], rtol=1e-6)


@pytest.mark.parametrize(
    ("order", "seasonal_order"),
    [((1, 0, 1), (0, 0, 0, 0)), ((1, 1, 1), (0, 1, 1, 11)), ((0, 2, 1), (1, 0, 0, 4))],
)
def test_sarima_fits_equal_sarimax(order, seasonal_order):
    y = _sunspots()
    res = fit_mle(sarima_spec(y, order, seasonal_order), y)
    model = _sarimax(y[0, :, 0].numpy(), order, seasonal_order)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model.fit(disp=False)
    assert res.names == tuple(model.param_names)
    assert res.loglik == pytest.approx(model.loglike(res.params.numpy()), rel=1e-10)
    assert res.loglik >= ref.llf - 1e-7
    np.testing.assert_allclose(res.params.numpy(), ref.params, rtol=1e-3, atol=1e-4)


def test_state_space_form_is_sarimax_for_arma():
    """Without differencing the ARMA block is statsmodels' (Harvey's) layout."""

    def f64(*x):
        return torch.tensor(x, dtype=torch.float64)

    ours = sarima_model(f64(0.5, -0.2), f64(0.3), f64(0.4), f64(-0.1), f64(2.0)[0], s=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = sm.tsa.SARIMAX(np.zeros(20), order=(2, 0, 1), seasonal_order=(1, 0, 1, 4))
        mod.update(np.array([0.5, -0.2, 0.3, 0.4, -0.1, 2.0]))
    np.testing.assert_allclose(ours.F.numpy(), mod.ssm["transition"], atol=1e-15)
    G = mod.ssm["selection"]
    np.testing.assert_allclose(ours.Q.numpy(), 2.0 * G @ G.T, atol=1e-14)
    np.testing.assert_allclose(ours.H.numpy(), mod.ssm["design"])


def test_numba_and_reference_agree_on_arima():
    y = _sunspots()[:, :63]
    spec = sarima_spec(y, (1, 1, 1), (1, 0, 0, 4))
    theta = torch.tensor([0.3, -0.4, 0.2, 7.0], dtype=torch.float64, requires_grad=True)
    values, grads = [], []
    for method in ("numba", "sequential"):
        ll = log_likelihood(spec.build(theta), y, method=method).sum()
        values.append(ll.detach())
        grads.append(torch.autograd.grad(ll, theta)[0])
    torch.testing.assert_close(values[0], values[1], rtol=1e-10, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)


def test_polynomials():
    a, b = torch.tensor([1.0, -0.5]), torch.tensor([1.0, 0.0, 0.25])
    torch.testing.assert_close(poly_mul(a, b), torch.tensor([1.0, -0.5, 0.25, -0.125]))
    torch.testing.assert_close(
        differencing(2, 0, 1), torch.tensor([2.0, -1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        differencing(1, 1, 4), torch.tensor([1.0, 0, 0, 1, -1], dtype=torch.float64)
    )


def test_bad_arguments():
    y = _sunspots()
    with pytest.raises(ValueError, match="trend='c' needs d = D = 0"):
        sarima_spec(y, (1, 1, 0), trend="c")
    with pytest.raises(ValueError, match=r"needs a period s >= 2, got 0"):
        sarima_spec(y, (1, 0, 0), (1, 0, 0, 0))
    with pytest.raises(ValueError, match=r"order must be \(p, d, q\)"):
        sarima_spec(y, (1, 0))
    with pytest.raises(ValueError, match="q must be"):
        sarima_spec(y, (1, 0, -1))
    with pytest.raises(ValueError, match="unknown trend 't'"):
        sarima_spec(y, (1, 0, 0), trend="t")
    with pytest.raises(ValueError, match="y is too short"):
        sarima_spec(y[:, :5], (0, 1, 0), (0, 1, 0, 4))
    with pytest.raises(ValueError, match="not stationary"):
        none = torch.zeros(0)
        sarima_model(torch.tensor([1.2]), none, none, none, torch.tensor(1.0))
    with pytest.raises(ValueError, match="too short for the model"):
        fit_mle(sarima_spec(y[:, :5], (2, 1, 2)), y[:, :5])


def test_cli_arima(tmp_path, capsys):
    argv = ["fit", "--example", "sunspots", "--model", "arima", "--order", "2", "0", "0"]
    assert run([*argv, "--trend", "c", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ARIMA(2, 0, 0) + constant" in out and "-1307.318" in out
    assert (tmp_path / "diagnostics.png").is_file()
    assert run(["fit", "--example", "nile", "--order", "1", "0", "0"]) == 2
    assert "need --model arima" in capsys.readouterr().err
    assert run(["fit", "--example", "nile", "--model", "arima"]) == 2
    assert "needs --order p d q" in capsys.readouterr().err
    args = argparse.Namespace(
        model="arima", order=[1, 1, 1], seasonal_order=[0, 1, 1, 12], trend=None
    )
    assert kalman.model_name(args) == "ARIMA(1, 1, 1)(0, 1, 1, 12)"
