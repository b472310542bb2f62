"""Structural models' matrices, sampling, forecasting, mixed frequency, bad inputs."""

import math

import pytest
import torch

from ssmkit.probabilistic import (
    LinearGaussianSSM,
    kalman_filter,
    log_likelihood,
    rts_smoother,
    sample,
)
from ssmkit.probabilistic.forecast import forecast
from ssmkit.probabilistic.spec import dense_spec, pacf_to_ar, structural_spec
from ssmkit.probabilistic.structural import (
    autoregressive,
    local_level,
    local_linear_trend,
    seasonal,
    stationary_covariance,
    structural_model,
)
from tests.probabilistic.brute import posterior, random_model

D = torch.float64


def test_structural_matrices():
    m = structural_model(
        local_linear_trend(2.0, 3.0),
        seasonal(4, 5.0),
        autoregressive(torch.tensor([0.5], dtype=D), 7.0),
        sigma2_obs=1.5,
    )
    F = torch.zeros(6, 6, dtype=D)
    F[0, :2] = torch.tensor([1.0, 1.0])
    F[1, 1] = 1.0
    F[2, 2:5] = -1.0
    F[3, 2] = F[4, 3] = 1.0
    F[5, 5] = 0.5
    assert torch.equal(m.F, F)
    assert torch.equal(m.H, torch.tensor([[1.0, 0, 1, 0, 0, 1]], dtype=D))
    assert torch.equal(torch.diagonal(m.Q), torch.tensor([2.0, 3, 5, 0, 0, 7], dtype=D))
    assert torch.equal(m.R, torch.tensor([[1.5]], dtype=D))
    assert torch.equal(torch.diagonal(m.P0_diffuse), torch.tensor([1.0, 1, 1, 1, 1, 0], dtype=D))
    torch.testing.assert_close(m.P0[5, 5], torch.tensor(7.0 / (1 - 0.25), dtype=D))
    # noise-free seasonal of period 5: any 5 consecutive effects sum to 0, so it repeats
    s = seasonal(5, 0.0)
    x = torch.randn(4, generator=torch.Generator().manual_seed(0), dtype=D)
    path = [x]
    for _ in range(5):
        path.append(s.F @ path[-1])
    torch.testing.assert_close(x.sum() + path[1][0], torch.tensor(0.0, dtype=D))
    torch.testing.assert_close(path[5], path[0])
    assert torch.equal(local_level(2.0).F, torch.ones(1, 1, dtype=D))


def test_ar_stationarity_and_lyapunov():
    with pytest.raises(ValueError, match="not stationary"):
        autoregressive(torch.tensor([1.2], dtype=D), 1.0)
    F = torch.tensor([[0.5, -0.2], [1.0, 0.0]], dtype=D)
    Q = torch.diag(torch.tensor([2.0, 0.0], dtype=D))
    P = stationary_covariance(F, Q)
    torch.testing.assert_close(P, F @ P @ F.T + Q)
    phi = pacf_to_ar(torch.tanh(torch.randn(4, dtype=D) * 3))
    comp = autoregressive(phi, 1.0)  # any pacf in (-1, 1) gives a stationary AR
    assert float(torch.linalg.eigvals(comp.F).abs().max()) < 1
    torch.testing.assert_close(
        pacf_to_ar(torch.tensor([0.5], dtype=D)), torch.tensor([0.5], dtype=D)
    )


def test_sample_moments():
    one = torch.ones(1, 1, dtype=D)
    model = LinearGaussianSSM(
        F=0.5 * one, H=one, Q=one, R=one, m0=torch.zeros(1, dtype=D), P0=one / 0.75
    )
    x, y = sample(model, 4000, 3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 3, 1) and y.shape == (4000, 3, 1)
    torch.testing.assert_close(
        x.var(0).squeeze(), torch.full((3,), 4 / 3, dtype=D), rtol=0.08, atol=0
    )
    torch.testing.assert_close(
        y.var(0).squeeze(), torch.full((3,), 7 / 3, dtype=D), rtol=0.08, atol=0
    )


def test_forecast_equals_filtering_missing_future():
    """Forecasting h steps = filtering the series extended by h NaN steps."""
    model = random_model(3, 2, seed=2)
    _, y = sample(model, 2, 10, generator=torch.Generator().manual_seed(1))
    fc = forecast(model, y, 4, level=0.9)
    ext = torch.cat([y, torch.full((2, 4, 2), float("nan"), dtype=D)], 1)
    f = kalman_filter(model, ext)
    torch.testing.assert_close(fc.state_mean, f.m_pred[:, 10:])
    torch.testing.assert_close(fc.state_cov, f.P_pred[:, 10:])
    torch.testing.assert_close(fc.mean, (model.H @ f.m_pred[:, 10:].unsqueeze(-1)).squeeze(-1))
    sd = torch.diagonal(fc.cov, dim1=-2, dim2=-1).sqrt()
    torch.testing.assert_close(fc.upper - fc.mean, 1.6448536269514722 * sd)
    with pytest.raises(ValueError, match="level"):
        forecast(model, y, 2, level=1.5)


def test_mixed_frequency_as_missing_entries():
    """A monthly series and a quarterly one (observed every third month) in one vector: the
    quarterly entry is NaN in the other months. The likelihood equals the joint Gaussian of
    the observed entries only, and all implementations agree."""
    model = random_model(2, 2, seed=3)
    _, y = sample(model, 1, 12, generator=torch.Generator().manual_seed(2))
    months = torch.arange(12)
    y[0, months % 3 != 2, 1] = float("nan")
    _, _, ll, _ = posterior(model, y)
    for method in ("sequential", "sqrt", "parallel"):
        torch.testing.assert_close(log_likelihood(model, y, method=method)[0], ll)


def test_dense_spec_builds_valid_models():
    spec = dense_spec(3, 2, stable=True)
    theta = torch.randn(spec.theta0.shape, generator=torch.Generator().manual_seed(0), dtype=D) * 3
    model = spec.build(theta)
    assert float(torch.linalg.eigvals(model.F).abs().max()) < 1
    assert float(torch.linalg.eigvalsh(model.Q).min()) > 0
    assert len(spec.names) == theta.numel()
    _, y = sample(model, 1, 5, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(float(log_likelihood(model, y)))


def test_structural_spec_names_and_bad_options():
    y = torch.randn(1, 30, 1, dtype=D)
    spec = structural_spec(y, "local-linear-trend", seasonal_period=4, ar_order=2)
    assert spec.names == (
        "sigma2.irregular",
        "sigma2.level",
        "sigma2.trend",
        "sigma2.seasonal",
        "sigma2.ar",
        "ar.L1",
        "ar.L2",
    )
    assert spec.build(spec.theta0).n == 2 + 3 + 2
    with pytest.raises(ValueError, match="unknown trend"):
        structural_spec(y, "cubic")
    with pytest.raises(ValueError, match="seasonal_period"):
        structural_spec(y, seasonal_period=1)


class TestBadInputs:
    model = random_model(2, 2, seed=0)

    def y(self, b=1, l=5, o=2):
        return torch.randn(b, l, o, dtype=D)

    def test_non_psd_covariance(self):
        bad = LinearGaussianSSM(
            F=self.model.F,
            H=self.model.H,
            Q=-torch.eye(2, dtype=D),
            R=self.model.R,
            m0=self.model.m0,
            P0=self.model.P0,
        )
        with pytest.raises(ValueError, match="Q must be positive semi-definite"):
            kalman_filter(bad, self.y())

    def test_mismatched_dimensions(self):
        with pytest.raises(ValueError, match="y must have shape"):
            kalman_filter(self.model, self.y(o=3))
        bad = LinearGaussianSSM(
            F=self.model.F,
            H=torch.ones(2, 3, dtype=D),
            Q=self.model.Q,
            R=self.model.R,
            m0=self.model.m0,
            P0=self.model.P0,
        )
        with pytest.raises(ValueError, match="H must have shape"):
            kalman_filter(bad, self.y())
        bad = LinearGaussianSSM(
            F=torch.eye(2, dtype=D).expand(3, 2, 2),
            H=self.model.H,
            Q=self.model.Q,
            R=self.model.R,
            m0=self.model.m0,
            P0=self.model.P0,
        )
        with pytest.raises(ValueError, match="does not broadcast"):
            kalman_filter(bad, self.y(l=5))
        with pytest.raises(ValueError, match="m0 must have shape"):
            kalman_filter(
                LinearGaussianSSM(**{**self.model.__dict__, "m0": torch.zeros(3, dtype=D)}),
                self.y(),
            )

    def test_all_missing_series(self):
        y = self.y(b=2)
        y[1] = float("nan")
        with pytest.raises(ValueError, match=r"series \[1\] have no observed entries"):
            kalman_filter(self.model, y)

    def test_other_bad_values(self):
        y = self.y()
        y[0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match="inf"):
            kalman_filter(self.model, y)
        with pytest.raises(TypeError, match="floating"):
            kalman_filter(self.model, torch.ones(1, 3, 2, dtype=torch.long))
        with pytest.raises(ValueError, match="unknown method"):
            kalman_filter(self.model, self.y(), method="fast")
        with pytest.raises(ValueError, match="u is required"):
            kalman_filter(random_model(2, 2, inputs=1), self.y())
        with pytest.raises(ValueError, match="burn"):
            log_likelihood(self.model, self.y(), burn=5)
        with pytest.raises(TypeError, match="LinearGaussianSSM"):
            rts_smoother("model", self.y())

    def test_exact_diffuse_needs_diagonal_R(self):
        m = LinearGaussianSSM(**{**self.model.__dict__, "P0_diffuse": torch.eye(2, dtype=D)})
        with pytest.raises(ValueError, match="diagonal R"):
            kalman_filter(m, self.y())
        kalman_filter(m, self.y(), diffuse="approximate")  # fine
