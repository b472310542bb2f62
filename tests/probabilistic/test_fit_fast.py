"""Fitting through the compiled filter: the same optimum as the reference path, per-series
fits equal one fit per series (and statsmodels' optimum), clear errors."""

import warnings

import pytest
import torch

from ssmkit.probabilistic import sample
from ssmkit.probabilistic.fit import build_batch, fit_mle
from ssmkit.probabilistic.fit_batch import stack_models
from ssmkit.probabilistic.io import load_nile
from ssmkit.probabilistic.spec import ar_spec, structural_spec
from ssmkit.probabilistic.structural import local_level, structural_model

pytest.importorskip("numba")
D = torch.float64


def _series(b, l, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = []
    for i in range(b):
        model = structural_model(local_level(0.5 + i), sigma2_obs=2.0 - 0.5 * i)
        ys.append(sample(model, 1, l, generator=g)[1])
    y = torch.cat(ys)
    y[:, 5::23] = float("nan")
    return y


def test_auto_fit_equals_reference_fit_on_nile():
    y = load_nile().y.view(1, -1, 1)
    spec = structural_spec(y)
    fast = fit_mle(spec, y)  # method="auto": the compiled filter
    ref = fit_mle(spec, y, method="sequential")
    torch.testing.assert_close(fast.loglik, ref.loglik, rtol=1e-10, atol=0)
    torch.testing.assert_close(fast.params, ref.params, rtol=1e-4, atol=0)
    torch.testing.assert_close(fast.se, ref.se, rtol=1e-3, atol=0)
    torch.testing.assert_close(fast.loglik_series.sum().item(), fast.loglik, rtol=1e-12, atol=0)


def test_per_series_equals_one_fit_per_series():
    y = _series(3, 150)
    spec = structural_spec(y)
    res = fit_mle(spec, y, per_series=True)
    assert res.params.shape == (3, 2) and res.se.shape == (3, 2) and res.theta.shape == (3, 2)
    assert res.model.F.shape == (3, 1, 1, 1)
    for i in range(3):
        yi = y[i : i + 1]
        one = fit_mle(structural_spec(yi), yi)
        torch.testing.assert_close(res.loglik_series[i].item(), one.loglik, rtol=1e-9, atol=0)
        torch.testing.assert_close(res.params[i], one.params, rtol=1e-3, atol=0)
        torch.testing.assert_close(res.se[i], one.se, rtol=1e-2, atol=0)
    torch.testing.assert_close(res.loglik, float(res.loglik_series.sum()), rtol=1e-12, atol=0)


def test_per_series_reaches_statsmodels_optimum():
    sm = pytest.importorskip("statsmodels.api")
    y = _series(3, 150, seed=4)
    res = fit_mle(structural_spec(y), y, per_series=True)
    for i in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = sm.tsa.UnobservedComponents(
                y[i, :, 0].numpy(), "llevel", use_exact_diffuse=True
            )
            ref = model.fit(disp=False)
        ours = model.loglike(res.params[i].numpy())
        assert ours >= ref.llf - 1e-6 * abs(ref.llf)
        torch.testing.assert_close(float(res.loglik_series[i]), ours, rtol=1e-9, atol=0)
        torch.testing.assert_close(res.params[i], torch.tensor(ref.params), rtol=2e-3, atol=0)


def test_per_series_without_a_batched_builder_stacks_builds():
    x = _series(2, 120, seed=2)
    x = x - x.nanmean(1, keepdim=True)
    spec = ar_spec(torch.diff(x, dim=1), 1)
    assert spec.build_batch is None
    theta = spec.theta0_batch
    model = build_batch(spec, theta)
    assert model.F.shape == (2, 1, 1, 1) and model.P0.shape == (2, 1, 1)
    res = fit_mle(spec, torch.diff(x, dim=1), per_series=True)
    assert res.params.shape == (2, 2) and bool(torch.isfinite(res.se).all())


def test_batched_builder_equals_stacked_builds():
    y = _series(3, 40)
    spec = structural_spec(y, "local-linear-trend", 4)
    theta = spec.theta0_batch + 0.1 * torch.arange(12, dtype=D).view(3, 4)
    got = spec.build_batch(theta)
    want = stack_models([spec.build(t) for t in theta])
    for name in ("F", "H", "Q", "R", "m0", "P0", "P0_diffuse"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0)


def test_per_series_bad_arguments():
    y = _series(2, 60)
    spec = structural_spec(y)
    with pytest.raises(ValueError, match="per_series=True needs optimizer='lbfgs', got 'adam'"):
        fit_mle(spec, y, optimizer="adam", per_series=True)
    with pytest.raises(TypeError, match="per_series must be a bool, got int"):
        fit_mle(spec, y, per_series=1)
    other = structural_spec(y[:1])
    with pytest.raises(ValueError, match=r"theta0_batch must have shape \(b, k\) = \(2, 2\)"):
        fit_mle(other, y, per_series=True)
