"""The Gaussian predict/update core against textbook formulas with explicit inverses."""

import math

import pytest
import torch

from ssmkit.core.gaussian import (
    check_psd,
    diffuse_update_scalar,
    kalman_gain,
    mask_observation,
    predict,
    psd_factor,
    smooth_step,
    sqrt_predict,
    sqrt_update,
    tria,
    update,
)

D = torch.float64


def _spd(k, g, batch=()):
    A = torch.randn(*batch, k, k, generator=g, dtype=D)
    return A @ A.mT + 0.1 * torch.eye(k, dtype=D)


def _problem(n=3, o=2, batch=(4,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        m=torch.randn(*batch, n, generator=g, dtype=D),
        P=_spd(n, g, batch),
        y=torch.randn(*batch, o, generator=g, dtype=D),
        H=torch.randn(*batch, o, n, generator=g, dtype=D),
        R=_spd(o, g, batch),
        d=torch.randn(*batch, o, generator=g, dtype=D),
    )


def test_update_equals_textbook_form():
    p = _problem()
    m, P, ll = update(p["m"], p["P"], p["y"], p["H"], p["R"], p["d"])
    S = p["H"] @ p["P"] @ p["H"].mT + p["R"]
    K = p["P"] @ p["H"].mT @ torch.linalg.inv(S)
    v = p["y"] - (p["H"] @ p["m"].unsqueeze(-1)).squeeze(-1) - p["d"]
    torch.testing.assert_close(m, p["m"] + (K @ v.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(P, p["P"] - K @ S @ K.mT)
    ref = torch.distributions.MultivariateNormal(torch.zeros_like(v), S).log_prob(v)
    torch.testing.assert_close(ll, ref)


def test_predict():
    g = torch.Generator().manual_seed(1)
    m, P, F, Q = (
        torch.randn(3, generator=g, dtype=D),
        _spd(3, g),
        torch.randn(3, 3, generator=g, dtype=D),
        _spd(3, g),
    )
    c = torch.randn(3, generator=g, dtype=D)
    m2, P2 = predict(m, P, F, Q, c)
    torch.testing.assert_close(m2, F @ m + c)
    torch.testing.assert_close(P2, F @ P @ F.T + Q)


def test_square_root_forms_equal_covariance_forms():
    p = _problem()
    L, LR = psd_factor(p["P"]), psd_factor(p["R"])
    m1, L1, ll1 = sqrt_update(p["m"], L, p["y"], p["H"], LR, p["d"])
    m2, P2, ll2 = update(p["m"], p["P"], p["y"], p["H"], p["R"], p["d"])
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(L1 @ L1.mT, P2)
    torch.testing.assert_close(ll1, ll2)
    assert torch.equal(L1, torch.tril(L1))
    F = torch.randn(4, 3, 3, dtype=D)
    Q = p["P"] * 0.5
    ma, La = sqrt_predict(p["m"], L, F, psd_factor(Q))
    mb, Pb = predict(p["m"], p["P"], F, Q)
    torch.testing.assert_close(La @ La.mT, Pb)
    torch.testing.assert_close(ma, mb)


def test_mask_equals_dropping_rows():
    p = _problem(o=3, batch=())
    mask = torch.tensor([True, False, True])
    y = p["y"].clone()
    y[1] = float("nan")
    m1, P1, ll1 = update(p["m"], p["P"], y, p["H"], p["R"], p["d"], mask)
    keep = [0, 2]
    R = p["R"][keep][:, keep]
    m2, P2, ll2 = update(p["m"], p["P"], p["y"][keep], p["H"][keep], R, p["d"][keep])
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(P1, P2)
    torch.testing.assert_close(ll1, ll2)
    L = psd_factor(p["P"])
    m3, L3, ll3 = sqrt_update(p["m"], L, y, p["H"], psd_factor(p["R"]), p["d"], mask)
    torch.testing.assert_close(m3, m2)
    torch.testing.assert_close(L3 @ L3.mT, P2)
    torch.testing.assert_close(ll3, ll2)
    m4, P4, ll4 = update(
        p["m"], p["P"], y, p["H"], p["R"], p["d"], torch.zeros(3, dtype=torch.bool)
    )
    torch.testing.assert_close(m4, p["m"])
    torch.testing.assert_close(P4, p["P"])
    assert float(ll4) == 0.0
    y0, H0, R0 = mask_observation(y, p["H"], p["R"], mask)
    assert float(y0[1]) == 0 and bool((H0[1] == 0).all()) and float(R0[1, 1]) == 1


def test_smooth_step_is_backward_conditioning():
    """Two steps: smoothed x_1 given y_1, y_2 from the RTS step = dense conditioning."""
    g = torch.Generator().manual_seed(2)
    n = 2
    m, P, F, Q = (
        torch.randn(n, generator=g, dtype=D),
        _spd(n, g),
        torch.randn(n, n, generator=g, dtype=D),
        _spd(n, g),
    )
    H, R, y = (
        torch.randn(1, n, generator=g, dtype=D),
        _spd(1, g),
        torch.randn(1, generator=g, dtype=D),
    )
    mp, Pp = predict(m, P, F, Q)
    ms2, Ps2, _ = update(mp, Pp, y, H, R)
    ms1, Ps1, G = smooth_step(m, P, mp, Pp, ms2, Ps2, F)
    # dense: (x1, y2) jointly Gaussian with x1 ~ N(m, P), y2 = H (F x1 + w) + v
    Sxy = P @ F.T @ H.T
    Syy = H @ Pp @ H.T + R
    torch.testing.assert_close(ms1, m + (Sxy @ torch.linalg.solve(Syy, y - H @ mp)))
    torch.testing.assert_close(Ps1, P - Sxy @ torch.linalg.solve(Syy, Sxy.T))
    torch.testing.assert_close(G, P @ F.T @ torch.linalg.inv(Pp))


def test_diffuse_update_is_the_large_kappa_limit():
    g = torch.Generator().manual_seed(3)
    n = 3
    a, Ps = torch.randn(n, generator=g, dtype=D), _spd(n, g)
    Pi = torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=D))
    z, r = torch.randn(n, generator=g, dtype=D), torch.tensor(0.7, dtype=D)
    y = torch.tensor(1.3, dtype=D)
    Fi, Fs = z @ Pi @ z, z @ Ps @ z + r
    a1, Ps1, Pi1, ll = diffuse_update_scalar(a, Ps, Pi, y - z @ a, z, Fs, Fi)
    kappa = 1e7
    a2, P2, ll2 = update(a, Ps + kappa * Pi, y.view(1), z.view(1, n), r.view(1, 1))
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Ps1 + kappa * Pi1, P2, rtol=1e-4, atol=1e-3)
    # the diffuse term drops the log(kappa) that the proper one carries
    torch.testing.assert_close(ll, ll2 + 0.5 * math.log(kappa), rtol=1e-5, atol=1e-5)


def test_update_gradcheck():
    p = _problem(n=2, o=2, batch=())

    def fn(m, P, y, H, R):
        P, R = P @ P.mT, R @ R.mT
        out = update(m, P, y, H, R)
        return out[0], out[1], out[2]

    args = [p[k].clone().requires_grad_(True) for k in ("m", "P", "y", "H", "R")]
    assert torch.autograd.gradcheck(fn, args)


def test_tria_and_psd_factor():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(3, 5, generator=g, dtype=D)
    L = tria(A)
    torch.testing.assert_close(L @ L.T, A @ A.T)
    assert bool((torch.diagonal(L) >= 0).all())
    singular = torch.diag(torch.tensor([2.0, 0.0], dtype=D))
    Ls = psd_factor(singular)
    torch.testing.assert_close(Ls @ Ls.T, singular)


def test_check_psd_errors():
    with pytest.raises(ValueError, match="positive semi-definite"):
        check_psd("Q", torch.diag(torch.tensor([1.0, -1.0], dtype=D)))
    with pytest.raises(ValueError, match="symmetric"):
        check_psd("Q", torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=D))
    with pytest.raises(ValueError, match="shape"):
        check_psd("Q", torch.ones(2, 3))
    with pytest.raises(ValueError, match="finite"):
        check_psd("Q", torch.full((2, 2), float("nan")))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        check_psd("Q", [[1.0]])
    check_psd("Q", torch.zeros(2, 2))  # PSD, singular: fine


def test_kalman_gain():
    p = _problem()
    K, LS = kalman_gain(p["P"], p["H"], p["R"])
    S = p["H"] @ p["P"] @ p["H"].mT + p["R"]
    torch.testing.assert_close(LS @ LS.mT, S)
    torch.testing.assert_close(K, p["P"] @ p["H"].mT @ torch.linalg.inv(S))
