"""probabilistic/particle.py: bootstrap filter vs Kalman, nonlinear benchmark vs EKF/UKF, FFBSi."""

import math

import pytest
import torch

from ssmkit.probabilistic import (
    LinearGaussianSSM,
    ParticleModel,
    kalman_filter,
    particle_filter,
    rts_smoother,
    sample,
)
from ssmkit.probabilistic.nonlinear import ekf, ukf
from ssmkit.probabilistic.particle import ffbsi_smoother, resample

F64 = torch.float64


def _lgssm():
    F = torch.tensor([[0.9, 0.2], [0.0, 0.7]], dtype=F64)
    H = torch.tensor([[1.0, 0.5]], dtype=F64)
    Q = torch.tensor([[0.3, 0.05], [0.05, 0.2]], dtype=F64)
    R = torch.tensor([[0.5]], dtype=F64)
    return LinearGaussianSSM(F, H, Q, R, torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))


def _data(length=20, seed=0):
    model = _lgssm()
    _, y = sample(model, 1, length, generator=torch.Generator().manual_seed(seed))
    return model, y


@pytest.mark.parametrize("resampling", ["systematic", "multinomial"])
def test_loglik_converges_to_kalman_like_one_over_sqrt_n(resampling):
    model, y = _data()
    exact = float(kalman_filter(model, y).loglik.sum())
    reps = 64  # independent filters, run as one batch of identical series
    rmse = []
    counts = [32, 128, 512, 2048]
    for N in counts:
        g = torch.Generator().manual_seed(N)
        res = particle_filter(model, y.expand(reps, -1, -1), N, resampling, generator=g)
        assert res.log_likelihood.shape == (reps,)
        rmse.append(float((res.log_likelihood - exact).pow(2).mean().sqrt()))
    lN, le = torch.tensor(counts, dtype=F64).log(), torch.tensor(rmse).log()
    slope = float(((lN - lN.mean()) * (le - le.mean())).sum() / (lN - lN.mean()).pow(2).sum())
    assert -0.75 < slope < -0.35, (rmse, slope)
    assert rmse[-1] < 0.2, rmse  # about 6 / sqrt(N) on this series


def test_missing_steps_and_entries_match_kalman():
    model, y = _data(length=12)
    y = y.clone()
    y[0, 3] = float("nan")
    y[0, 7] = float("nan")
    exact = kalman_filter(model, y).loglik  # (1, l)
    g = torch.Generator().manual_seed(1)
    res = particle_filter(model, y.expand(32, -1, -1), 4000, generator=g)
    assert torch.equal(res.loglik[:, 3], torch.zeros(32, dtype=F64))  # no observation, no term
    assert abs(float(res.log_likelihood.mean()) - float(exact.sum())) < 0.05
    # a 2-D observation with one entry missing: the Kalman filter marginalises it
    H2 = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64)
    m2 = LinearGaussianSSM(model.F, H2, model.Q, torch.eye(2, dtype=F64) * 0.4, model.m0, model.P0)
    _, y2 = sample(m2, 1, 8, generator=torch.Generator().manual_seed(3))
    y2[0, 2, 1] = float("nan")
    exact2 = float(kalman_filter(m2, y2).loglik.sum())
    res2 = particle_filter(m2, y2.expand(32, -1, -1), 4000, generator=g)
    assert abs(float(res2.log_likelihood.mean()) - exact2) < 0.08


def test_result_fields_and_ess_threshold():
    model, y = _data(length=7)
    g = torch.Generator().manual_seed(0)
    never = particle_filter(model, y, 50, ess_threshold=0.0, generator=g)
    assert not bool(never.resampled.any())
    assert torch.equal(never.ancestors, torch.arange(50).expand(1, 7, 50))
    always = particle_filter(model, y, 50, ess_threshold=1.0, generator=g)
    assert bool(always.resampled[:, 1:].all()) and not bool(always.resampled[:, 0].any())
    r = particle_filter(model, y, 50, generator=g)
    assert r.particles.shape == (1, 7, 50, 2) and r.log_weights.shape == (1, 7, 50)
    assert r.ancestors.shape == (1, 7, 50) and r.ess.shape == (1, 7) and r.loglik.shape == (1, 7)
    torch.testing.assert_close(r.log_weights.exp().sum(-1), torch.ones(1, 7, dtype=F64))
    assert bool((r.ess <= 50 + 1e-9).all()) and bool((r.ess >= 1 - 1e-9).all())
    # seeded runs are reproducible
    a = particle_filter(model, y, 50, generator=torch.Generator().manual_seed(5))
    b = particle_filter(model, y, 50, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.particles, b.particles) and torch.equal(a.ancestors, b.ancestors)


def test_resampling_schemes():
    w = torch.tensor([[0.1, 0.0, 0.6, 0.3]], dtype=F64)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # systematic: each count is floor or ceil of N W_i
        idx = resample(w.log().expand(3, -1), "systematic", g)
        counts = torch.stack([torch.bincount(i, minlength=4) for i in idx]).double()
        assert bool(((counts - 4 * w).abs() < 1).all())
    idx = resample(w.log().expand(2000, -1), "multinomial", g)  # (2000, 4)
    freq = torch.bincount(idx.flatten(), minlength=4).double() / idx.numel()
    torch.testing.assert_close(freq, w[0], atol=0.02, rtol=0)
    assert int((idx == 1).sum()) == 0


class Benchmark:
    """x_{t+1} = x/2 + 25 x / (1 + x^2) + 8 cos(1.2 (t + 1)) + N(0, 10); y_t = x^2/20 + N(0, 1)
    (Gordon, Salmond & Smith 1993; Kitagawa 1996): the ParticleModel protocol in a test."""

    q, r = 10.0, 1.0

    @staticmethod
    def mean(x, t):
        return x / 2 + 25 * x / (1 + x * x) + 8 * math.cos(1.2 * (t + 1))

    def sample_initial(self, b, N, generator):
        return torch.randn(b, N, 1, generator=generator, dtype=F64) * math.sqrt(5.0)

    def sample_transition(self, x, t, generator):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return self.mean(x, t) + math.sqrt(self.q) * noise

    def transition_log_prob(self, x_next, x, t):
        v = (x_next - self.mean(x, t)).squeeze(-1)
        return -0.5 * (math.log(2 * math.pi * self.q) + v * v / self.q)

    def observation_log_prob(self, y, x, t):
        v = y[:, None, 0] - x[..., 0] ** 2 / 20
        return -0.5 * (math.log(2 * math.pi * self.r) + v * v / self.r)


def _simulate_benchmark(b, length, seed):
    g = torch.Generator().manual_seed(seed)
    m = Benchmark()
    x = m.sample_initial(b, 1, g)[:, 0]  # (b, 1)
    xs = []
    for t in range(length):
        xs.append(x)
        x = m.sample_transition(x, t, g)
    X = torch.stack(xs, 1)  # (b, l, 1)
    return X, X**2 / 20 + torch.randn(X.shape, generator=g, dtype=F64)


def test_nonlinear_benchmark_tracks_better_than_ekf_and_ukf():
    X, Y = _simulate_benchmark(8, 50, seed=0)
    model = Benchmark()
    assert isinstance(model, ParticleModel)
    pf = particle_filter(model, Y, 500, generator=torch.Generator().manual_seed(0))
    rmse_pf = float((pf.filtered_mean() - X).pow(2).mean().sqrt())

    # EKF / UKF on the time-augmented state (x, t): t advances deterministically
    def f(s):
        x, t = s[:, :1], s[:, 1:]
        return torch.cat([x / 2 + 25 * x / (1 + x * x) + 8 * torch.cos(1.2 * (t + 1)), t + 1], 1)

    def h(s):
        return s[:, :1] ** 2 / 20

    Q = torch.diag(torch.tensor([10.0, 1e-10], dtype=F64))
    R = torch.eye(1, dtype=F64)
    m0, P0 = torch.zeros(2, dtype=F64), torch.diag(torch.tensor([5.0, 1e-10], dtype=F64))
    rmse = {"pf": rmse_pf}
    for name, fn in (("ekf", ekf), ("ukf", ukf)):
        res = fn(f, h, Q, R, m0, P0, Y)
        rmse[name] = float((res.m[..., :1] - X).pow(2).mean().sqrt())
    assert rmse["pf"] < 0.7 * min(rmse["ekf"], rmse["ukf"]), rmse


def test_ffbsi_matches_rts_smoother():
    model, y = _data(length=10, seed=4)
    rts = rts_smoother(model, y)
    g = torch.Generator().manual_seed(0)
    yb = y.expand(8, -1, -1)
    pf = particle_filter(model, yb, 500, generator=g)
    traj = ffbsi_smoother(model, yb, pf, 100, generator=g)  # (8, 100, 10, 2)
    assert traj.shape == (8, 100, 10, 2)
    mean = traj.mean((0, 1))  # 800 draws (correlated within each filter run)
    err = (mean - rts.m[0]).abs() / torch.diagonal(rts.P[0], dim1=-2, dim2=-1).sqrt()
    assert float(err.max()) < 0.25, err
    # the last time step of FFBSi is the filter's marginal
    torch.testing.assert_close(traj[:, :, -1].mean((0, 1)), rts.m[0, -1], atol=0.2, rtol=0)


def test_bad_input_is_named():
    model, y = _data(length=5)

    class Impossible(Benchmark):
        def observation_log_prob(self, y, x, t):
            return torch.full(x.shape[:2], -math.inf, dtype=x.dtype)

    with pytest.raises(ValueError, match="degenerate weights at step t = 0 for series \\[0\\]"):
        particle_filter(Impossible(), y[..., :1], 10)

    class NanModel(Benchmark):
        def observation_log_prob(self, y, x, t):
            return torch.full(x.shape[:2], math.nan, dtype=x.dtype)

    with pytest.raises(ValueError, match="NaN log-weight"):
        particle_filter(NanModel(), y[..., :1], 10)
    with pytest.raises(ValueError, match="unknown resampling 'stratified'"):
        particle_filter(model, y, 10, resampling="stratified")
    with pytest.raises(ValueError, match=r"ess_threshold must be in \[0, 1\], got 1\.5"):
        particle_filter(model, y, 10, ess_threshold=1.5)
    with pytest.raises(ValueError, match="n_particles must be >= 1, got 0"):
        particle_filter(model, y, 0)
    with pytest.raises(TypeError, match="ParticleModel protocol"):
        particle_filter(object(), y, 10)
    bad = y.clone()
    bad[0, 1, 0] = math.inf
    with pytest.raises(ValueError, match="y must not hold inf"):
        particle_filter(model, bad, 10)
    with pytest.raises(ValueError, match="y must have shape \\(b, l, o\\)"):
        particle_filter(model, y[0], 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_filter_and_smoother():
    """CUDA tensors with a CPU generator: results stay on the GPU and agree with Kalman."""
    model, y = _data(length=10)
    exact = float(kalman_filter(model, y).loglik.sum())
    cuda = type(model)(
        **{k: (v.cuda() if v is not None else None) for k, v in model.__dict__.items()}
    )
    g = torch.Generator().manual_seed(0)
    yb = y.cuda().expand(32, -1, -1)
    res = particle_filter(cuda, yb, 2000, generator=g)
    assert res.log_likelihood.device.type == "cuda" and res.particles.device.type == "cuda"
    assert abs(float(res.log_likelihood.mean()) - exact) < 0.05
    traj = ffbsi_smoother(cuda, yb, res, 10, generator=g)
    assert traj.device.type == "cuda" and traj.shape == (32, 10, 10, 2)
