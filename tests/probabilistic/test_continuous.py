"""Van Loan discretisation and irregular time grids."""

import math

import pytest
import torch

from ssmkit.core.discretize import zoh_dense_ref
from ssmkit.core.van_loan import van_loan
from ssmkit.probabilistic import LinearGaussianSSM, kalman_filter, sample
from ssmkit.probabilistic.continuous import continuous_time_model

D = torch.float64


def test_ou_closed_form():
    """dx = -theta x dt + sigma dW: F = e^{-theta dt},
    Q = sigma^2 (1 - e^{-2 theta dt}) / (2 theta)."""
    theta, sigma2 = 0.7, 2.0
    dt = torch.tensor([0.1, 1.0, 3.0], dtype=D)
    F, Q = van_loan(torch.tensor([[-theta]], dtype=D), torch.tensor([[sigma2]], dtype=D), dt)
    torch.testing.assert_close(F[:, 0, 0], torch.exp(-theta * dt))
    torch.testing.assert_close(Q[:, 0, 0], sigma2 * (1 - torch.exp(-2 * theta * dt)) / (2 * theta))


def test_wiener_velocity_closed_form_and_augmented_expm():
    """Integrated random walk: Q = q [[dt^3/3, dt^2/2], [dt^2/2, dt]]; F = expm by ZOH's
    augmented matrix; Q = a trapezoid quadrature of exp(F s) Q_c exp(F s)^T."""
    Fc = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=D)
    Qc = torch.tensor([[0.0, 0.0], [0.0, 1.5]], dtype=D)
    dt = 0.8
    F, Q = van_loan(Fc, Qc, torch.tensor(dt, dtype=D))
    ref = 1.5 * torch.tensor([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]], dtype=D)
    torch.testing.assert_close(Q, ref)
    A_bar, _ = zoh_dense_ref(Fc, torch.zeros(2, 1, dtype=D), torch.tensor(dt, dtype=D))
    torch.testing.assert_close(F, A_bar)
    Fc2 = torch.tensor([[-0.3, 1.0], [-0.5, -0.2]], dtype=D)
    Qc2 = torch.tensor([[0.4, 0.1], [0.1, 1.0]], dtype=D)
    _, Q2 = van_loan(Fc2, Qc2, torch.tensor(dt, dtype=D))
    s = torch.linspace(0, dt, 2001, dtype=D)
    E = torch.linalg.matrix_exp(s[:, None, None] * Fc2)
    integrand = E @ Qc2 @ E.mT
    torch.testing.assert_close(Q2, torch.trapezoid(integrand, s, dim=0), rtol=1e-6, atol=1e-8)


def test_irregular_grid_equals_regular_when_equal_steps():
    Fc = torch.tensor([[-0.5, 1.0], [0.0, -0.1]], dtype=D)
    Qc = torch.diag(torch.tensor([0.2, 0.5], dtype=D))
    H, R = torch.tensor([[1.0, 0.0]], dtype=D), torch.tensor([[0.3]], dtype=D)
    m0, P0 = torch.zeros(2, dtype=D), torch.eye(2, dtype=D)
    times = torch.arange(12, dtype=D) * 0.5
    cont = continuous_time_model(Fc, Qc, H, R, m0, P0, times)
    F, Q = van_loan(Fc, Qc, torch.tensor(0.5, dtype=D))
    reg = LinearGaussianSSM(F=F, H=H, Q=Q, R=R, m0=m0, P0=P0)
    _, y = sample(reg, 2, 12, generator=torch.Generator().manual_seed(0))
    a, b = kalman_filter(cont, y), kalman_filter(reg, y)
    torch.testing.assert_close(a.m, b.m)
    torch.testing.assert_close(a.loglik, b.loglik)
    # an uneven grid (per series) runs through the same filters, all three agree
    t2 = torch.cumsum(
        torch.rand(2, 12, generator=torch.Generator().manual_seed(1), dtype=D) + 0.1, 1
    )
    uneven = continuous_time_model(Fc, Qc, H, R, m0, P0, t2)
    assert uneven.F.shape == (2, 12, 2, 2)
    lls = [kalman_filter(uneven, y, method=m).loglik for m in ("sequential", "sqrt", "parallel")]
    torch.testing.assert_close(lls[1], lls[0])
    torch.testing.assert_close(lls[2], lls[0])
    # the model-implied covariance decays as exp(-0.5 dt) for the first state's mean
    assert math.isfinite(float(lls[0].sum()))


def test_bad_inputs():
    Fc, Qc = torch.eye(2, dtype=D), torch.eye(2, dtype=D)
    with pytest.raises(ValueError, match="dt must be >= 0"):
        van_loan(Fc, Qc, torch.tensor([-1.0], dtype=D))
    with pytest.raises(ValueError, match="same n"):
        van_loan(Fc, torch.eye(3, dtype=D), torch.tensor(1.0, dtype=D))
    with pytest.raises(ValueError, match="strictly increasing"):
        continuous_time_model(
            Fc,
            Qc,
            torch.ones(1, 2, dtype=D),
            torch.eye(1, dtype=D),
            torch.zeros(2, dtype=D),
            Qc,
            torch.tensor([0.0, 1.0, 1.0]),
        )
