"""EM never decreases the likelihood and recovers a simulated model; EKF = UKF = KF on a
linear model."""

import pytest
import torch

from ssmkit.probabilistic import LinearGaussianSSM, kalman_filter, log_likelihood, sample
from ssmkit.probabilistic.em import fit_em
from ssmkit.probabilistic.nonlinear import ekf, ukf
from tests.probabilistic.brute import random_model

D = torch.float64


def test_em_likelihood_never_decreases():
    true = random_model(2, 2, seed=1)
    _, y = sample(true, 4, 60, generator=torch.Generator().manual_seed(0))
    y[1, 10:15] = float("nan")  # whole missing steps are allowed
    start = random_model(2, 2, seed=2)
    res = fit_em(start, y, iterations=15)
    lls = torch.tensor(res.logliks)
    assert bool((lls.diff() >= -1e-9 * lls.abs()[1:]).all()), lls
    assert lls[-1] > lls[0] + 1.0
    torch.testing.assert_close(
        log_likelihood(start, y).sum(), torch.tensor(res.logliks[0], dtype=D)
    )


def test_em_subset_and_recovery():
    """Fixed F and H: EM on Q and R alone recovers the simulated variances."""
    one = torch.ones(1, 1, dtype=D)
    true = LinearGaussianSSM(
        F=0.8 * one, H=one, Q=2.0 * one, R=0.5 * one, m0=torch.zeros(1, dtype=D), P0=one
    )
    _, y = sample(true, 20, 200, generator=torch.Generator().manual_seed(1))
    start = LinearGaussianSSM(F=0.8 * one, H=one, Q=one, R=one, m0=true.m0, P0=one)
    res = fit_em(start, y, iterations=150, estimate=("Q", "R"), tol=1e-9, method="parallel")
    assert torch.equal(res.model.F, start.F)
    torch.testing.assert_close(res.model.Q, 2.0 * one, rtol=0.15, atol=0)
    torch.testing.assert_close(res.model.R, 0.5 * one, rtol=0.15, atol=0)


def test_em_rejects_bad_names():
    model = random_model(2, 2, seed=1)
    _, y = sample(model, 1, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unknown parameter"):
        fit_em(model, y, estimate=("A",))


@pytest.mark.parametrize("fn", [ekf, ukf])
def test_nonlinear_filters_equal_kf_on_linear_model(fn):
    model = random_model(3, 2, seed=4)
    _, y = sample(model, 2, 12, generator=torch.Generator().manual_seed(2))
    y[0, 4, 1] = float("nan")
    kf = kalman_filter(model, y)
    res = fn(
        lambda x: x @ model.F.T, lambda x: x @ model.H.T, model.Q, model.R, model.m0, model.P0, y
    )
    torch.testing.assert_close(res.m, kf.m)
    torch.testing.assert_close(res.P, kf.P)
    torch.testing.assert_close(res.loglik, kf.loglik)


def test_ekf_and_ukf_track_a_nonlinear_pendulum():
    """Pendulum observed through sin(angle) (Sarkka 2013, ex. 5.1): both filters track it,
    and the UKF's likelihood is finite and differentiable in the noise level."""
    dt, g = 0.05, 9.81

    def f(x):
        return torch.stack([x[:, 0] + dt * x[:, 1], x[:, 1] - g * dt * torch.sin(x[:, 0])], -1)

    def h(x):
        return torch.sin(x[:, :1])

    Q = torch.tensor([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]], dtype=D) * 0.1
    R = torch.tensor([[0.01]], dtype=D)
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([[1.0, 0.0]], dtype=D)
    xs, ys = [], []
    LQ = torch.linalg.cholesky(Q)
    for _ in range(100):
        xs.append(x)
        ys.append(h(x) + 0.1 * torch.randn(1, 1, generator=gen, dtype=D))
        x = f(x) + (LQ @ torch.randn(2, 1, generator=gen, dtype=D)).T
    X, Y = torch.stack(xs, 1), torch.stack(ys, 1)
    m0, P0 = torch.tensor([1.0, 0.0], dtype=D), 0.1 * torch.eye(2, dtype=D)
    for fn in (ekf, ukf):
        res = fn(f, h, Q, R, m0, P0, Y)
        rmse = (res.m[0, :, 0] - X[0, :, 0]).pow(2).mean().sqrt()
        assert rmse < 0.1, (fn.__name__, float(rmse))
    r = R.clone().requires_grad_(True)
    ukf(f, h, Q, r, m0, P0, Y).loglik.sum().backward()
    assert torch.isfinite(r.grad).all()
