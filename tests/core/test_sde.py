"""core/sde.py: the Brownian tree, strong/weak order on GBM, OU moments, gradients, bad input."""

import itertools
import math

import pytest
import torch

from ssmkit.core.sde import BrownianTree, sdeint

F64 = torch.float64
MU, SIGMA, X0, T = 1.0, 0.8, 1.0, 1.0


def _gbm(M, seed=0):
    bm = BrownianTree(0.0, T, (M, 1), seed=seed, levels=10)
    y0 = torch.full((M, 1), X0, dtype=F64)
    exact = X0 * torch.exp((MU - SIGMA**2 / 2) * T + SIGMA * bm(T))  # (M, 1)
    return bm, y0, exact


def _solve_gbm(bm, y0, method, h):
    t = torch.tensor([0.0, T], dtype=F64)
    sol = sdeint(lambda t, y: MU * y, lambda t, y: SIGMA * y, y0, t, bm, method, step_size=h)
    return sol.y[-1]


def _slope(hs, errs):
    lh, le = torch.tensor(hs).log(), torch.tensor(errs).log()
    lh, le = lh - lh.mean(), le - le.mean()
    return float((lh * le).sum() / (lh * lh).sum())


def test_brownian_tree_is_a_pure_function_of_seed_and_time():
    a = BrownianTree(0.0, 2.0, (3, 2), seed=5)
    b = BrownianTree(0.0, 2.0, (3, 2), seed=5)
    ts = [1.3, 0.25, 1.999, 0.7]
    va = [a(t) for t in ts]
    vb = [b(t) for t in reversed(ts)][::-1]  # other query order, fresh cache
    for x, y in zip(va, vb, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.equal(a(1.0), BrownianTree(0.0, 2.0, (3, 2), seed=6)(1.0))
    torch.testing.assert_close(a(0.25, 1.3), a(1.3) - a(0.25))
    assert torch.equal(a(0.0), torch.zeros(3, 2, dtype=F64))


def test_brownian_tree_increments_have_the_right_law():
    bm = BrownianTree(0.0, 1.0, (20000,), seed=1, levels=6)
    d1, d2 = bm(0.0, 0.375), bm(0.375, 1.0)  # dyadic points: exact
    assert abs(float(d1.var()) - 0.375) < 0.02 and abs(float(d2.var()) - 0.625) < 0.03
    assert abs(float((d1 * d2).mean())) < 0.02  # independent increments
    assert abs(float(d1.mean())) < 0.02


@pytest.mark.parametrize(("method", "order"), [("euler", 0.5), ("milstein", 1.0)])
def test_strong_order_on_geometric_brownian_motion(method, order):
    bm, y0, exact = _gbm(2000)
    hs = [2.0**-k for k in range(3, 8)]
    errs = [float((_solve_gbm(bm, y0, method, h) - exact).abs().mean()) for h in hs]
    assert all(e2 < e1 for e1, e2 in itertools.pairwise(errs)), errs
    assert abs(_slope(hs, errs) - order) < 0.2, (errs, _slope(hs, errs))


def test_weak_order_one_on_geometric_brownian_motion():
    # E[X_T^h] - E[X_T], estimated against the exact solution on the same paths (low variance)
    bm, y0, exact = _gbm(4000, seed=3)
    hs = [2.0**-k for k in range(2, 6)]
    errs = [float((_solve_gbm(bm, y0, "euler", h) - exact).mean().abs()) for h in hs]
    assert abs(_slope(hs, errs) - 1.0) < 0.25, (errs, _slope(hs, errs))
    # the EM mean is (1 + mu h)^n exactly; compare with the expected bias
    bias = [X0 * ((1 + MU * h) ** round(T / h) - math.exp(MU * T)) for h in hs]
    for e, b in zip(errs, bias, strict=True):
        assert abs(e - abs(b)) < 0.25 * abs(b)


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_ornstein_uhlenbeck_moments(method):
    theta, sigma, x0, M = 1.5, 0.7, 2.0, 20000
    ts = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64)
    bm = BrownianTree(0.0, 2.0, (M,), seed=2, levels=8)
    sol = sdeint(
        lambda t, y: -theta * y, lambda t, y: torch.full_like(y, sigma),
        torch.full((M,), x0, dtype=F64), ts, bm, method, step_size=2.0**-7,
    )  # fmt: skip
    for k, t in enumerate(ts.tolist()):
        mean = x0 * math.exp(-theta * t)
        var = sigma**2 / (2 * theta) * (1 - math.exp(-2 * theta * t))
        x = sol.y[k]
        assert abs(float(x.mean()) - mean) < 4 * math.sqrt(var / M) + 0.02 * mean
        if t > 0:  # the standard error of a sample variance is ~ var sqrt(2 / M)
            assert abs(float(x.var()) - var) < 4 * var * math.sqrt(2 / M) + 0.02 * var


def test_milstein_equals_euler_for_additive_noise():
    bm = BrownianTree(0.0, 1.0, (4, 3), seed=0)
    y0 = torch.randn(4, 3, dtype=F64)
    ts = torch.linspace(0, 1, 5, dtype=F64)
    args = (lambda t, y: torch.sin(y) - t, lambda t, y: 0.3 + 0 * y, y0, ts, bm)
    e, m = sdeint(*args, "euler", 0.05), sdeint(*args, "milstein", 0.05)
    torch.testing.assert_close(e.y, m.y, rtol=1e-12, atol=1e-12)
    assert e.n_steps == 20 and e.y.shape == (5, 4, 3)


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_solution_is_reproducible_and_differentiable(method):
    theta = torch.tensor(0.7, dtype=F64, requires_grad=True)
    sig = torch.tensor(0.4, dtype=F64, requires_grad=True)
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.3, 1.0], dtype=F64)

    def run(theta, sig, y0):
        bm = BrownianTree(0.0, 1.0, (3, 2), seed=4, levels=8)
        f = lambda t, y: -theta * y + torch.cos(y)  # noqa: E731
        g = lambda t, y: sig * torch.sqrt(1 + y * y)  # noqa: E731
        return sdeint(f, g, y0, ts, bm, method, step_size=0.1).y

    torch.testing.assert_close(run(theta, sig, y0), run(theta, sig, y0), rtol=0, atol=0)
    assert torch.autograd.gradcheck(run, (theta, sig, y0))


def test_bad_input_is_named():
    bm = BrownianTree(0.0, 1.0, (2,), seed=0)
    y0 = torch.zeros(2, dtype=F64)
    f = lambda t, y: -y  # noqa: E731
    g = lambda t, y: 0.1 + 0 * y  # noqa: E731
    with pytest.raises(ValueError, match="t_eval must be strictly increasing"):
        sdeint(f, g, y0, torch.tensor([0.0, 0.5, 0.5], dtype=F64), bm)
    with pytest.raises(ValueError, match="Brownian window"):
        sdeint(f, g, y0, torch.tensor([0.0, 2.0], dtype=F64), bm)
    with pytest.raises(ValueError, match=r"bm\.shape"):
        sdeint(f, g, torch.zeros(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), bm)
    with pytest.raises(ValueError, match="unknown method"):
        sdeint(f, g, y0, torch.tensor([0.0, 1.0], dtype=F64), bm, "srk")
    with pytest.raises(ValueError, match=r"g\(t, y\) returned NaN"):
        sdeint(f, lambda t, y: y * float("nan"), y0, torch.tensor([0.0, 1.0], dtype=F64), bm)
    with pytest.raises(ValueError, match="y0 must be finite"):
        sdeint(f, g, torch.tensor([0.0, float("nan")], dtype=F64),
               torch.tensor([0.0, 1.0], dtype=F64), bm)  # fmt: skip
    with pytest.raises(ValueError, match="finite t0 < t1"):
        BrownianTree(1.0, 1.0, (2,))
    with pytest.raises(ValueError, match=r"t must lie in \[t0, t1\]"):
        bm(1.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_cuda_equals_cpu(method):
    y0 = torch.full((64, 1), X0, dtype=F64)
    ts = torch.tensor([0.0, 0.5, T], dtype=F64)
    out = []
    for device in ("cpu", "cuda"):
        bm = BrownianTree(0.0, T, (64, 1), seed=1, levels=8, device=device)
        f = lambda t, y: MU * y  # noqa: E731
        g = lambda t, y: SIGMA * y  # noqa: E731
        out.append(sdeint(f, g, y0.to(device), ts.to(device), bm, method, 2.0**-6).y)
    assert out[1].device.type == "cuda"
    torch.testing.assert_close(out[1].cpu(), out[0], rtol=1e-10, atol=1e-12)
