"""Kalman filter, smoother and likelihood: implementations agree, and equal the brute-force
joint Gaussian posterior (with missing entries dropped)."""

import pytest
import torch

from ssmkit.probabilistic import kalman_filter, log_likelihood, rts_smoother, sample
from ssmkit.probabilistic.parallel import filter_combine
from ssmkit.probabilistic.scan import associative_scan, associative_scan_ref
from tests.probabilistic.brute import posterior, random_model

METHODS = ["sequential", "sqrt", "parallel"]


def _data(model, b, l, seed=1, missing=0.0, u=None):
    _, y = sample(model, b, l, u=u, generator=torch.Generator().manual_seed(seed))
    if missing:
        drop = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed + 1)) < missing
        drop[:, 0] = False  # keep every series observed somewhere
        y = y.masked_fill(drop, float("nan"))
    return y


CASES = {
    "invariant": dict(n=3, o=2),
    "time-varying": dict(n=2, o=3, l=7),
    "per-series": dict(n=3, o=1, batch=2),
    "series-and-time": dict(n=2, o=2, l=7, batch=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_implementations_agree(case):
    """sequential = square-root = parallel to 1e-8 (filter, likelihood, smoother)."""
    model = random_model(**CASES[case], seed=3)
    for missing in (0.0, 0.3):
        y = _data(model, 2, 7, missing=missing)
        ref = rts_smoother(model, y, method="sequential")
        for method in ("sqrt", "parallel"):
            got = rts_smoother(model, y, method=method)
            for name in ("m_pred", "P_pred", "m", "P", "loglik", "m_next", "P_next"):
                a, b = getattr(got.filtered, name), getattr(ref.filtered, name)
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=f"{method} {name}")
            for name in ("m", "P", "P_cross"):
                a, b = getattr(got, name), getattr(ref, name)
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=f"{method} {name}")


@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_lengths_including_one(length):
    model = random_model(3, 2, seed=4)
    y = _data(model, 3, length, missing=0.2)
    lls = [log_likelihood(model, y, method=m) for m in METHODS]
    for ll in lls[1:]:
        torch.testing.assert_close(ll, lls[0], rtol=1e-9, atol=1e-9)
    sm = rts_smoother(model, y, method="parallel")
    assert sm.m.shape == (3, length, 3) and sm.P_cross.shape == (3, length - 1, 3, 3)


@pytest.mark.parametrize("case", ["invariant", "time-varying", "series-and-time"])
def test_smoother_and_likelihood_equal_joint_gaussian(case):
    """The sequential reference against the dense joint Gaussian (the others equal it above)."""
    model = random_model(**CASES[case], seed=5)
    y = _data(model, 2, 7, missing=0.25)  # partly observed vectors
    sm = rts_smoother(model, y, method="sequential")
    for b in range(2):
        m, P, ll, cross = posterior(model, y, b)
        torch.testing.assert_close(sm.m[b], m, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sm.P[b], P, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sm.P_cross[b], cross, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sm.filtered.loglik[b].sum(), ll, rtol=1e-10, atol=1e-10)
        for t in (0, 3, 6):  # filtered = posterior given y_1..t
            mt, Pt, llt, _ = posterior(model, y, b, upto=t + 1)
            torch.testing.assert_close(sm.filtered.m[b, t], mt[t], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(sm.filtered.P[b, t], Pt[t], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(sm.filtered.loglik[b, : t + 1].sum(), llt)


def test_missing_entries_count_nothing():
    """A NaN entry = the model without that row: the likelihood counts observed entries only."""
    model = random_model(2, 3, seed=6)
    y = _data(model, 1, 5)
    y[0, 2, 1] = float("nan")
    y[0, 3] = float("nan")  # a whole missing step
    _, _, ll, _ = posterior(model, y)
    for method in METHODS:
        torch.testing.assert_close(log_likelihood(model, y, method=method)[0], ll)


def test_inputs_B_and_D():
    model = random_model(3, 2, seed=7, inputs=2)
    u = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = _data(model, 2, 6, u=u, missing=0.2)
    for method in METHODS:
        sm = rts_smoother(model, y, u=u, method=method)
        for b in range(2):
            m, P, ll, _ = posterior(model, y, b, u=u)
            torch.testing.assert_close(sm.m[b], m, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(sm.P[b], P, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(sm.filtered.loglik[b].sum(), ll)


def test_batch_equals_items():
    model = random_model(3, 2, seed=8)
    y = _data(model, 3, 9, missing=0.2)
    whole = kalman_filter(model, y, method="parallel")
    for b in range(3):
        one = kalman_filter(model, y[b : b + 1], method="parallel")
        torch.testing.assert_close(one.m[0], whole.m[b])
        torch.testing.assert_close(one.loglik[0], whole.loglik[b])


def test_associative_scan_equals_loop():
    model = random_model(2, 2, seed=9)
    y = _data(model, 1, 11)
    g = torch.Generator().manual_seed(0)
    b, l, n = 2, 11, 2
    A = torch.randn(b, l, n, n, generator=g, dtype=torch.float64) * 0.5
    C = torch.randn(b, l, n, n, generator=g, dtype=torch.float64)
    C = C @ C.mT
    J = torch.randn(b, l, n, n, generator=g, dtype=torch.float64)
    J = J @ J.mT
    elems = (
        A,
        torch.randn(b, l, n, generator=g, dtype=torch.float64),
        C,
        torch.randn(b, l, n, generator=g, dtype=torch.float64),
        J,
    )
    for x, ref in zip(
        associative_scan(filter_combine, elems),
        associative_scan_ref(filter_combine, elems),
        strict=True,
    ):
        torch.testing.assert_close(x, ref)
    assert y.shape == (1, 11, 2)


@pytest.mark.parametrize("method", METHODS)
def test_loglik_gradcheck(method):
    model = random_model(2, 2, seed=10)
    y = _data(model, 1, 4, missing=0.2)
    eye = 0.1 * torch.eye(2, dtype=torch.float64)

    def fn(F, H, Q_factor, R_factor, m0):
        m = type(model)(
            F=F,
            H=H,
            Q=Q_factor @ Q_factor.mT + eye,
            R=R_factor @ R_factor.mT + eye,
            m0=m0,
            P0=model.P0,
        )
        return log_likelihood(m, y, method=method, validate=False)

    args = [x.clone().requires_grad_(True) for x in (model.F, model.H, model.Q, model.R, model.m0)]
    if method != "sequential":  # the other forms: gradients in F and R only (keeps it fast)
        for i in (1, 2, 4):
            args[i].requires_grad_(False)
    assert torch.autograd.gradcheck(fn, args)


def test_float32_and_default_dtype_follow_y():
    model = random_model(2, 1, seed=11)
    y = _data(model, 1, 6).float()
    f = kalman_filter(model, y)
    assert f.m.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    """The same code on CUDA tensors: filters, smoothers, exact diffuse, forecast, sample."""
    from ssmkit.probabilistic.forecast import forecast
    from ssmkit.probabilistic.structural import local_linear_trend, structural_model

    model = random_model(3, 2, l=9, seed=12)
    y = _data(model, 2, 9, missing=0.2)

    def cuda(m):
        return type(m)(**{k: (v.cuda() if v is not None else None) for k, v in m.__dict__.items()})

    for method in METHODS:
        a, b = (
            rts_smoother(model, y, method=method),
            rts_smoother(cuda(model), y.cuda(), method=method),
        )
        torch.testing.assert_close(b.m.cpu(), a.m)
        torch.testing.assert_close(b.P.cpu(), a.P)
        torch.testing.assert_close(b.filtered.loglik.cpu(), a.filtered.loglik)
    llt = structural_model(local_linear_trend(1.0, 0.1), sigma2_obs=2.0)
    yl = torch.randn(2, 20, 1, dtype=torch.float64).cumsum(1)
    a, b = rts_smoother(llt, yl), rts_smoother(cuda(llt), yl.cuda())
    torch.testing.assert_close(b.m.cpu(), a.m)
    torch.testing.assert_close(b.P.cpu(), a.P)
    fa, fb = forecast(llt, yl, 3), forecast(cuda(llt), yl.cuda(), 3)
    torch.testing.assert_close(fb.upper.cpu(), fa.upper)
    x, _ = sample(cuda(model), 2, 5)
    assert x.is_cuda
