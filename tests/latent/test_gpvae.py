"""latent/gpvae.py: the Matern state space forms reproduce the kernel covariance matrix, their
Kalman-filter likelihood is the GP marginal likelihood (values and gradients, missing values
masked), bad input is refused, and the GP-VAE's ELBO runs end to end."""

import math

import pytest
import torch

from ssmkit.latent.cd_ssm import cd_kalman_filter
from ssmkit.latent.gpvae import (
    GPVAE,
    NUS,
    GPVAEConfig,
    matern_kernel,
    matern_sde,
    state_space_covariance,
)
from ssmkit.testing import assert_close, randn

F64 = torch.float64


def _times(l, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.rand(l, generator=g, dtype=F64) + 0.02, 0)


@pytest.mark.parametrize("nu", NUS)
def test_state_space_form_reproduces_the_kernel_matrix(nu):
    times = _times(17)
    ell, s2 = torch.tensor(0.8, dtype=F64), 1.7
    F_c, Q_c, H, P_inf = matern_sde(nu, ell, s2)
    K_ss = state_space_covariance(F_c, Q_c, H, P_inf, times)
    K = matern_kernel(nu, times[:, None] - times[None, :], ell, s2)
    assert_close(K_ss, K, rtol=1e-9, atol=1e-11)
    # P_inf is the stationary covariance: F_c P + P F_c^T + Q_c = 0
    assert_close(F_c @ P_inf + P_inf @ F_c.T + Q_c, torch.zeros_like(P_inf), atol=1e-11)


@pytest.mark.parametrize("nu", NUS)
@pytest.mark.parametrize("l", [1, 7, 63])
def test_kalman_likelihood_equals_gp_marginal_likelihood(nu, l):
    times = _times(l, seed=l)
    y = randn(1, l, 1, seed=2)
    mask = torch.rand(1, l, generator=torch.Generator().manual_seed(1)) < 0.7
    mask[0, 0] = True
    noise = 0.1

    def by_filter(ell):
        F_c, Q_c, H, P_inf = matern_sde(nu, ell)
        R = torch.full((1, 1), noise, dtype=F64)
        f = cd_kalman_filter(F_c, Q_c, H, R, torch.zeros(H.shape[1], dtype=F64), P_inf, times,
                             torch.where(mask[..., None], y, torch.nan), mask)  # fmt: skip
        return f.loglik.sum()

    def dense(ell):  # N(y_obs; 0, K_obs + noise I), missing points left out of the GP
        t, yo = times[mask[0]], y[0, mask[0], 0]
        K = matern_kernel(nu, t[:, None] - t[None, :], ell) + noise * torch.eye(len(t), dtype=F64)
        return torch.distributions.MultivariateNormal(torch.zeros_like(yo), K).log_prob(yo)

    ell = torch.tensor(0.6, dtype=F64, requires_grad=True)
    a, e = by_filter(ell), dense(ell)
    assert_close(a, e)
    (ga,) = torch.autograd.grad(a, ell)
    (ge,) = torch.autograd.grad(e, ell)
    assert_close(ga, ge)


def test_bad_input_is_refused_with_clear_errors():
    with pytest.raises(ValueError, match=r"nu must be one of \(0.5, 1.5, 2.5\).*got 2.0"):
        matern_sde(2.0, 1.0)
    with pytest.raises(ValueError, match="lengthscale"):
        matern_sde(1.5, -1.0)
    with pytest.raises(ValueError, match="variance"):
        matern_kernel(0.5, torch.zeros(2), 1.0, variance=0.0)
    with pytest.raises(ValueError, match="times must be strictly increasing"):
        F_c, Q_c, H, P = matern_sde(0.5, 1.0)
        state_space_covariance(F_c, Q_c, H, P, torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="nu must be one of"):
        GPVAEConfig(nu=1.0)
    with pytest.raises(ValueError, match="lengthscale must be a number > 0"):
        GPVAEConfig(lengthscale=0.0)


def test_gpvae_prior_elbo_and_prediction():
    torch.manual_seed(0)
    model = GPVAE(GPVAEConfig(obs_dim=3, latent_dim=2, nu=2.5, lengthscale=0.5, hidden=8))
    model = model.double()
    F_c, _, H, _, _ = model.prior()
    assert F_c.shape == (6, 6) and H.shape == (2, 6)
    assert float(F_c[0, 3:].abs().sum()) == 0.0  # independent channels: block diagonal
    assert_close(model.lengthscale, torch.full((2,), 0.5, dtype=F64), rtol=1e-6, atol=0)
    b, u = 2, 11
    times = torch.linspace(0, 3, u, dtype=F64)
    values = randn(b, u, 3, seed=1)
    mask = torch.rand(b, u, generator=torch.Generator().manual_seed(2)) < 0.5
    mask[:, 0] = True
    terms = model.elbo(times, torch.where(mask[..., None], values, torch.nan), mask)
    assert torch.isfinite(terms.elbo).all() and bool((terms.kl > 0).all())
    terms.objective.sum().backward()
    assert model.raw_lengthscale.grad is not None and bool(model.raw_lengthscale.grad.abs().sum())
    pred = model.predict(times, values, mask, torch.tensor([0.25, 4.0], dtype=F64))
    assert pred.shape == (b, 2, 3) and torch.isfinite(pred).all()
    assert math.isfinite(terms.nll_per_step())
