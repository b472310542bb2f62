"""latent/cd_ssm.py: exact continuous-discrete filtering equals the discrete Kalman filter, the
linear-time site posterior equals the dense joint Gaussian (values and gradients), missing
steps are masked not dropped, bad input is refused, and the deep model trains end to end."""

import pytest
import torch

from ssmkit.core.van_loan import van_loan
from ssmkit.latent.cd_ssm import (
    CDSSM,
    CDSSMConfig,
    cd_kalman_filter,
    cd_rts_smoother,
    site_posterior,
    site_posterior_dense,
)
from ssmkit.probabilistic import LinearGaussianSSM, kalman_filter, rts_smoother
from ssmkit.probabilistic.continuous import continuous_time_model
from ssmkit.testing import assert_close, grads, randn

F64 = torch.float64


def _prior(n=2, o=2, seed=0):
    A = randn(n, n, seed=seed)
    F_c = A - A.T - 0.5 * torch.eye(n, dtype=F64) - 0.1 * A @ A.T
    L = randn(n, n, seed=seed + 1)
    Q_c = L @ L.T / n + 0.1 * torch.eye(n, dtype=F64)
    H = randn(o, n, seed=seed + 2)
    R = 0.3 * torch.eye(o, dtype=F64)
    m0 = randn(n, seed=seed + 3)
    P0 = torch.eye(n, dtype=F64)
    return F_c, Q_c, H, R, m0, P0


@pytest.mark.parametrize("l", [1, 7, 63])
def test_equals_discrete_kalman_filter_on_a_regular_grid(l):
    F_c, Q_c, H, R, m0, P0 = _prior()
    b, dt = 2, 0.3
    times = 1.0 + dt * torch.arange(l, dtype=F64)
    y = randn(b, l, 2, seed=5)
    mask = torch.rand(b, l, 2, generator=torch.Generator().manual_seed(0)) < 0.7
    y_nan = torch.where(mask, y, torch.nan)

    def ours(F_c, Q_c, H, R, m0):
        f = cd_kalman_filter(F_c, Q_c, H, R, m0, P0, times, y_nan, mask)
        m_s, P_s = cd_rts_smoother(f)
        return f.m, f.P, f.m_pred, f.loglik, m_s, P_s

    def discrete(F_c, Q_c, H, R, m0):
        F, Q = van_loan(F_c, Q_c, torch.tensor(dt, dtype=F64))  # one time-invariant step
        model = LinearGaussianSSM(F=F, H=H, Q=Q, R=R, m0=m0, P0=P0)
        f = kalman_filter(model, y_nan)
        s = rts_smoother(model, y_nan)
        return f.m, f.P, f.m_pred, f.loglik, s.m, s.P

    args = [x.clone().requires_grad_() for x in (F_c, Q_c, H, R, m0)]
    for a, e in zip(ours(*args), discrete(*args), strict=True):
        assert_close(a, e)
    for a, e in zip(grads(ours, args), grads(discrete, args), strict=True):
        assert_close(a, e)


def test_irregular_per_series_times_equal_the_continuous_time_model():
    F_c, Q_c, H, R, m0, P0 = _prior(n=3, o=1, seed=3)
    b, l = 2, 7
    g = torch.Generator().manual_seed(1)
    times = torch.cumsum(torch.rand(b, l, generator=g, dtype=F64) + 0.05, 1)
    y = randn(b, l, 1, seed=2)
    ours = cd_kalman_filter(F_c, Q_c, H, R, m0, P0, times, y)
    for i in range(b):  # continuous_time_model: one series' grid at a time
        ref = kalman_filter(continuous_time_model(F_c, Q_c, H, R, m0, P0, times[i]), y[i : i + 1])
        assert_close(ours.m[i : i + 1], ref.m)
        assert_close(ours.P[i : i + 1], ref.P)
        assert_close(ours.loglik[i : i + 1], ref.loglik)


def test_a_masked_step_is_kept_not_dropped():
    """Masking step k gives the filter of the grid without t_k, plus a marginal at t_k."""
    F_c, Q_c, H, R, m0, P0 = _prior(o=1)
    times = torch.tensor([0.0, 0.4, 0.5, 1.3, 2.0], dtype=F64)
    y = randn(1, 5, 1, seed=4)
    y[0, 2] = torch.nan
    mask = torch.tensor([[True, True, False, True, True]])
    full = cd_kalman_filter(F_c, Q_c, H, R, m0, P0, times, y, mask)
    keep = [0, 1, 3, 4]
    dropped = cd_kalman_filter(F_c, Q_c, H, R, m0, P0, times[keep], y[:, keep])
    assert_close(full.loglik[:, keep], dropped.loglik)
    assert float(full.loglik[0, 2]) == 0.0
    assert_close(full.m[:, keep], dropped.m)
    m_s, P_s = cd_rts_smoother(full)
    assert torch.isfinite(m_s[0, 2]).all() and bool((torch.linalg.eigvalsh(P_s[0, 2]) > 0).all())


@pytest.mark.parametrize("l", [1, 7, 31])
def test_site_posterior_equals_dense_joint_gaussian(l):
    F_c, Q_c, H, _, m0, P0 = _prior()
    b = 2
    times = torch.cumsum(torch.rand(l, generator=torch.Generator().manual_seed(l), dtype=F64), 0)
    site_mean = randn(b, l, 2, seed=6)
    site_var = randn(b, l, 2, seed=7).abs() + 0.2
    mask = torch.rand(b, l, generator=torch.Generator().manual_seed(3)) < 0.6
    mask[:, 0] = True

    def run(fn):
        def f(F_c, Q_c, H, m0, site_mean, site_var):
            p = fn(F_c, Q_c, H, m0, P0, times, site_mean, site_var, mask)
            return p.mean, p.cov, p.kl, p.log_evidence

        return f

    args = [x.clone().requires_grad_() for x in (F_c, Q_c, H, m0, site_mean, site_var)]
    fast, dense = run(site_posterior), run(site_posterior_dense)
    out = fast(*args)
    assert bool((out[2] > 0).all())  # a KL divergence
    for a, e in zip(out, dense(*args), strict=True):
        assert_close(a, e)
    for a, e in zip(grads(fast, args), grads(dense, args), strict=True):
        assert_close(a, e)


def test_bad_input_is_refused_with_clear_errors():
    F_c, Q_c, H, R, m0, P0 = _prior(o=1)
    y = randn(1, 3, 1)
    times = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match=r"times must be strictly increasing, got 1 after 1"):
        cd_kalman_filter(F_c, Q_c, H, R, m0, P0, torch.tensor([0.0, 1.0, 1.0], dtype=F64), y)
    with pytest.raises(ValueError, match=r"Q_c \(the diffusion\).*negative diagonal entry -0.5"):
        cd_kalman_filter(F_c, -0.5 * torch.eye(2, dtype=F64), H, R, m0, P0, times, y)
    y_nan = y.clone()
    y_nan[0, 1] = torch.nan
    with pytest.raises(ValueError, match="mark missing entries with mask"):
        cd_kalman_filter(F_c, Q_c, H, R, m0, P0, times, y_nan)
    with pytest.raises(ValueError, match="y must be finite where mask is True"):
        cd_kalman_filter(F_c, Q_c, H, R, m0, P0, times, y_nan, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(b, l\)"):
        cd_kalman_filter(F_c, Q_c, H, R, m0, P0, times, y, torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"H must have shape \(1, 2\)"):
        cd_kalman_filter(F_c, Q_c, H.T, R, m0, P0, times, y)
    with pytest.raises(ValueError, match="site_var must be > 0"):
        site_posterior(F_c, Q_c, H, m0, P0, times, y, -torch.ones_like(y))
    with pytest.raises(ValueError, match="state_dim must be"):
        CDSSMConfig(state_dim=0)


def test_deep_model_elbo_gradients_batch_and_prediction():
    torch.manual_seed(0)
    model = CDSSM(CDSSMConfig(obs_dim=2, state_dim=3, aux_dim=2, hidden=8)).double()
    b, u = 3, 9
    times = torch.linspace(0, 2, u, dtype=F64)
    values = randn(b, u, 2, seed=1)
    mask = torch.rand(b, u, generator=torch.Generator().manual_seed(2)) < 0.6
    mask[:, 0] = True
    values = torch.where(mask[..., None], values, torch.nan)  # missing stays missing
    eps = randn(b, u, 2, seed=3)
    terms = model.elbo(times, values, mask, eps=eps)
    assert torch.isfinite(terms.elbo).all() and bool((terms.kl > 0).all())
    terms.objective.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for i in range(b):  # a batch equals its items one by one
        one = model.elbo(times, values[i : i + 1], mask[i : i + 1], eps=eps[i : i + 1])
        assert_close(one.elbo, terms.elbo[i : i + 1].detach())
    query = torch.tensor([0.1, 2.5, 3.0], dtype=F64)  # inside and beyond the window
    pred = model.predict(times, values, mask, query)
    assert pred.shape == (b, 3, 2) and torch.isfinite(pred).all()
    on_grid = model.predict(times, values, mask, times[2:4])
    assert_close(on_grid, model.predict(times, values, mask, times)[:, 2:4])
