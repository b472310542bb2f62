"""Square-root RTS smoother = plain RTS smoother (values and gradients), and stays PSD."""

import pytest
import torch

from ssmkit.probabilistic import LinearGaussianSSM, rts_smoother, sample
from ssmkit.probabilistic.sqrt_smoother import sqrt_rts_smoother, sqrt_smooth_step
from tests.probabilistic.brute import posterior, random_model


def _data(model, b, l, seed, u=None, missing=0.25):
    g = torch.Generator().manual_seed(seed)
    _, y = sample(model, b, l, u=u, generator=g)
    drop = torch.rand(y.shape, generator=g) < missing
    drop[:, 0, 0] = False
    return y.masked_fill(drop, float("nan"))


def _compare(a, ref, tol=1e-8):
    torch.testing.assert_close(a.m, ref.m, rtol=tol, atol=tol)
    torch.testing.assert_close(a.P, ref.P, rtol=tol, atol=tol)
    torch.testing.assert_close(a.P_cross, ref.P_cross, rtol=tol, atol=tol)
    for name in ("m_pred", "P_pred", "m", "P", "loglik", "m_next", "P_next"):
        torch.testing.assert_close(
            getattr(a.filtered, name), getattr(ref.filtered, name), rtol=tol, atol=tol
        )


@pytest.mark.parametrize("l", [1, 7, 63, 101])
def test_equals_plain_rts_partly_observed(l):
    model = random_model(3, 2, seed=l)
    y = _data(model, 2, l, seed=l)
    _compare(sqrt_rts_smoother(model, y), rts_smoother(model, y))


def test_equals_plain_rts_inputs_time_varying_per_series_and_brute_force():
    l, b = 7, 2
    model = random_model(2, 3, l=l, seed=4, batch=b, inputs=2)
    u = torch.randn(b, l, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = _data(model, b, l, seed=5, u=u)
    res = sqrt_rts_smoother(model, y, u)
    _compare(res, rts_smoother(model, y, u))
    m, P, ll, cross = posterior(model, y, b=1, u=u)
    torch.testing.assert_close(res.m[1], m, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.P[1], P, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.P_cross[1], cross, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.filtered.loglik[1].sum(), ll, rtol=1e-9, atol=1e-9)
    assert torch.equal(res.L, res.L.tril())


def test_approximate_diffuse_equals_plain_rts():
    one = torch.ones(1, 1, dtype=torch.float64)
    model = LinearGaussianSSM(
        F=one, H=one, Q=0.5 * one, R=2 * one, m0=one[0] * 0, P0=0 * one, P0_diffuse=one
    )
    y = torch.tensor([[[3.0], [float("nan")], [4.0], [2.5], [5.0]]], dtype=torch.float64)
    ref = rts_smoother(model, y, diffuse="approximate")
    _compare(sqrt_rts_smoother(model, y), ref, tol=1e-7)  # kappa = 1e6 costs 6 digits


@pytest.mark.parametrize("l", [1, 7])
def test_gradients_equal_plain_rts(l):
    base = random_model(2, 2, seed=11, inputs=1)
    u = torch.randn(1, l, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = _data(base, 1, l, seed=12, u=u)
    names = ("F", "H", "Q", "R", "B", "D", "m0", "P0")
    w = torch.randn(l, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def grads(fn):
        leaves = {k: getattr(base, k).clone().requires_grad_(True) for k in names}
        model = LinearGaussianSSM(**leaves)
        res = fn(model, y, u)
        out = (res.m**2).sum() + (res.P * w).sum() + res.P_cross.sum()
        f = res.filtered
        out = out + f.loglik.sum() + (f.m_next**3).sum() + (f.P_next * w[0]).sum()
        return torch.autograd.grad(out, [leaves[k] for k in names])

    for name, a, b in zip(names, grads(sqrt_rts_smoother), grads(rts_smoother), strict=True):
        if name in ("Q", "R", "P0"):  # only symmetric perturbations are meaningful: a factor
            a, b = a + a.mT, b + b.mT  # reads one triangle, the plain form both
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_step_gradcheck():
    g = torch.Generator().manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    L, Ls, LQ = (torch.tril(rnd(2, 2)) + 2 * torch.eye(2, dtype=torch.float64) for _ in range(3))
    args = (rnd(2), L, rnd(2), rnd(2), Ls, rnd(2, 2), LQ)
    args = tuple(a.requires_grad_(True) for a in args)
    assert torch.autograd.gradcheck(lambda *a: sqrt_smooth_step(*a)[:2], args)


def _ill_conditioned(eps):
    """A nearly deterministic model observed almost exactly: R = Q - q q^T = eps I, a vague
    prior P0 = 1e6 I; covariances span more than 20 orders of magnitude."""
    dt = torch.float64
    F = torch.tensor([[1.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=dt)
    q = torch.tensor([[1.0], [1.0], [1.0]], dtype=dt)
    return LinearGaussianSSM(
        F=F,
        H=torch.tensor([[1.0, 0.0, 0.0]], dtype=dt),
        Q=q @ q.T + eps * torch.eye(3, dtype=dt),
        R=eps * torch.eye(1, dtype=dt),
        m0=torch.zeros(3, dtype=dt),
        P0=1e6 * torch.eye(3, dtype=dt),
    )


@pytest.mark.parametrize("eps", [1e-14, 1e-16])
def test_psd_on_ill_conditioned_model(eps):
    """At eps = 1e-16 the plain smoother stops with a predicted covariance that is not
    positive definite by rounding; the factor form goes through."""
    model = _ill_conditioned(eps)
    y = _data(model, 1, 63, seed=0, missing=0.0)
    res = sqrt_rts_smoother(model, y, validate=False)
    assert bool(torch.isfinite(res.L).all()) and bool(torch.isfinite(res.m).all())
    eig = torch.linalg.eigvalsh(res.P)  # (b, l, n): PSD up to the rounding of L L^T
    assert float(eig.min()) >= -1e-12 * float(eig.max())
    # the first state is observed with variance eps: the smoothed level is the data
    torch.testing.assert_close(res.m[..., 0], y[..., 0], rtol=0, atol=1e-6)
    assert float(res.P[..., 0, 0].max()) <= 2 * eps
    if eps == 1e-14:  # the plain smoother still works: same answer
        ref = rts_smoother(model, y)
        torch.testing.assert_close(res.m, ref.m, rtol=1e-6, atol=1e-6)


def test_bad_inputs():
    model = random_model(2, 1, seed=1)
    y = _data(model, 1, 7, seed=1)
    with pytest.raises(TypeError, match="model must be a LinearGaussianSSM, got str"):
        sqrt_rts_smoother("model", y)
    with pytest.raises(ValueError, match="kappa"):
        sqrt_rts_smoother(model, y, kappa=0.0)
    with pytest.raises(ValueError, match="y must have shape"):
        sqrt_rts_smoother(model, y[..., 0])
    with pytest.raises(ValueError, match="y must not hold inf"):
        sqrt_rts_smoother(model, y.clone().fill_(float("inf")))
