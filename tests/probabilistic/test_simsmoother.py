"""Simulation smoother: the moments of its draws are the RTS smoother's (and the brute-force
joint Gaussian's)."""

import pytest
import torch

from ssmkit.probabilistic import LinearGaussianSSM, rts_smoother, sample
from ssmkit.probabilistic.simsmoother import simulation_smoother
from tests.probabilistic.brute import posterior, random_model

DRAWS = 3000


def _data(model, b, l, seed, u=None, missing=0.2):
    g = torch.Generator().manual_seed(seed)
    _, y = sample(model, b, l, u=u, generator=g)
    drop = torch.rand(y.shape, generator=g) < missing
    drop[:, 0, 0] = False  # every series keeps an observation
    return y.masked_fill(drop, float("nan"))


def _moments(x):
    """Mean (b, l, n), covariance (b, l, n, n) and lag-one cross-covariance (b, l-1, n, n)
    over the draws axis of x (b, s, l, n)."""
    mean = x.mean(1)
    e = x - mean.unsqueeze(1)
    s = x.shape[1]
    cov = torch.einsum("bsli,bslj->blij", e, e) / (s - 1)
    cross = torch.einsum("bsli,bslj->blij", e[:, :, :-1], e[:, :, 1:]) / (s - 1)
    return mean, cov, cross


def _check_moments(x, m_s, P_s, cross_s=None):
    """Sample moments within sampling error: 5 standard errors for the means, 12% (about
    six standard errors at 3000 draws) of the scale for the covariances."""
    s = x.shape[1]
    mean, cov, cross = _moments(x)
    sd = torch.diagonal(P_s, dim1=-2, dim2=-1).sqrt()  # (b, l, n)
    assert bool(((mean - m_s).abs() <= 5 * sd / s**0.5 + 1e-12).all())
    scale = sd.unsqueeze(-1) * sd.unsqueeze(-2)
    assert bool(((cov - P_s).abs() <= 0.12 * scale + 1e-12).all())
    if cross_s is not None:
        scale = sd[:, :-1].unsqueeze(-1) * sd[:, 1:].unsqueeze(-2)
        assert bool(((cross - cross_s).abs() <= 0.12 * scale + 1e-12).all())


@pytest.mark.parametrize("l", [1, 7, 63])
def test_moments_equal_rts_smoother_partly_observed(l):
    model = random_model(2, 3, seed=l)
    y = _data(model, 2, l, seed=l)
    g = torch.Generator().manual_seed(1)
    x = simulation_smoother(model, y, DRAWS, generator=g)
    assert x.shape == (2, DRAWS, l, 2)
    sm = rts_smoother(model, y)
    _check_moments(x, sm.m, sm.P, sm.P_cross)
    if l > 1:  # the test can fail: a sampler around the filtered means (not the smoothed
        # ones) is off by more than the tolerance
        sd = torch.diagonal(sm.P, dim1=-2, dim2=-1).sqrt()
        assert bool(((sm.filtered.m - sm.m).abs() > 5 * sd / DRAWS**0.5).any())


def test_moments_equal_brute_force_with_inputs_time_varying_per_series():
    l, b = 5, 2
    model = random_model(2, 2, l=l, seed=3, batch=b, inputs=1)
    u = torch.randn(b, l, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = _data(model, b, l, seed=5, u=u)
    x = simulation_smoother(model, y, DRAWS, u=u, generator=torch.Generator().manual_seed(6))
    for i in range(b):
        m, P, _, cross = posterior(model, y, b=i, u=u)
        _check_moments(x[i : i + 1], m.unsqueeze(0), P.unsqueeze(0), cross.unsqueeze(0))


def test_exact_diffuse_local_level_moments():
    one = torch.ones(1, 1, dtype=torch.float64)
    model = LinearGaussianSSM(
        F=one,
        H=one,
        Q=0.5 * one,
        R=2.0 * one,
        m0=torch.zeros(1, dtype=torch.float64),
        P0=0 * one,
        P0_diffuse=one,
    )
    y = torch.tensor([[3.0, float("nan"), 4.0, 2.5, float("nan"), 5.0, 4.5]], dtype=torch.float64)
    y = y.unsqueeze(-1)  # (1, 7, 1)
    x = simulation_smoother(model, y, DRAWS, generator=torch.Generator().manual_seed(2))
    sm = rts_smoother(model, y)
    _check_moments(x, sm.m, sm.P)


def test_seeded_draws_are_reproducible():
    model = random_model(2, 1, seed=8)
    y = _data(model, 1, 201, seed=9)
    a = simulation_smoother(model, y, 3, generator=torch.Generator().manual_seed(0))
    b = simulation_smoother(model, y, 3, generator=torch.Generator().manual_seed(0))
    c = simulation_smoother(model, y, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert bool(torch.isfinite(a).all())


def test_bad_inputs():
    model = random_model(2, 1, seed=8)
    y = _data(model, 1, 7, seed=9)
    with pytest.raises(ValueError, match="draws"):
        simulation_smoother(model, y, 0)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator, got int"):
        simulation_smoother(model, y, 2, generator=3)
    with pytest.raises(ValueError, match="y must have shape"):
        simulation_smoother(model, y[0], 2)
    with pytest.raises(TypeError, match="model must be a LinearGaussianSSM"):
        simulation_smoother("model", y, 2)
    per_series = random_model(2, 1, seed=8, batch=3)
    with pytest.raises(ValueError, match=r"F of shape \(3, 1, 2, 2\) does not broadcast"):
        simulation_smoother(per_series, y, 2)
