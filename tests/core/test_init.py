"""Initialisations: closed forms, ranges, and their links to HiPPO."""

import math

import pytest
import torch

from ssmkit.core.hippo import nplr, transition
from ssmkit.core.init import (
    dt_bias_init,
    inverse_softplus,
    log_uniform_dt,
    lru_lambda,
    lru_ring_init,
    s4d_init,
    s4d_real,
    s5_init,
)
from ssmkit.testing import assert_close, generator

F64 = torch.float64


def test_s4d_closed_forms():
    N = 8
    n = torch.arange(4, dtype=F64)
    assert_close(s4d_init("lin", N, torch.complex128), torch.complex(-0.5 + 0 * n, math.pi * n))
    inv = s4d_init("inv", N, torch.complex128)
    assert_close(inv, torch.complex(-0.5 + 0 * n, N / math.pi * (N / (2 * n + 1) - 1)))
    assert_close(s4d_init("real", N, torch.complex128), torch.complex(-(n + 1), 0 * n))
    assert s4d_init("lin", N).dtype == torch.complex64


def test_s4d_legs_is_the_first_half_of_nplr():
    assert_close(s4d_init("legs", 16, torch.complex128), nplr("legs", 16)[0][:8])


def test_s4d_real_unpaired():
    assert_close(s4d_real(4), torch.tensor([-1.0, -2, -3, -4]))


def test_lru_ring_ranges_and_gamma():
    nu, theta, gamma = lru_ring_init(
        2000, r_min=0.4, r_max=0.9, max_phase=math.pi / 10, generator=generator(0), dtype=F64
    )
    lam = lru_lambda(nu, theta)
    assert (lam.abs() >= 0.4 - 1e-12).all() and (lam.abs() <= 0.9 + 1e-12).all()
    assert (lam.angle() >= 0).all() and (lam.angle() <= math.pi / 10 + 1e-12).all()
    assert_close(gamma.exp(), torch.sqrt(1 - lam.abs() ** 2))
    # uniform in area: |lambda|^2 is uniform on [r_min^2, r_max^2], so its mean is the midpoint
    assert abs(float((lam.abs() ** 2).mean()) - (0.16 + 0.81) / 2) < 0.02


def test_lru_seeded_reproducible():
    a = lru_ring_init(8, generator=generator(3))
    b = lru_ring_init(8, generator=generator(3))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_s5_block_diagonal_hippo_n():
    Lam, V, V_inv = s5_init(8, blocks=2, dtype=torch.complex128)
    assert_close(V @ V_inv, torch.eye(8, dtype=torch.complex128), atol=1e-12)
    A, _ = transition("legs", 4)
    p = torch.sqrt(torch.arange(4, dtype=F64) + 0.5)
    S = A + p[:, None] * p[None, :]  # HiPPO-N: the normal part of LegS
    expected = torch.block_diag(S, S).to(torch.complex128)
    assert_close(V @ torch.diag(Lam) @ V_inv, expected, atol=1e-12)
    assert_close(Lam.real, torch.full((8,), -0.5, dtype=F64))


def test_dt_log_uniform():
    dt = log_uniform_dt(20000, 1e-3, 1e-1, generator=generator(1), dtype=F64)
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    u = (dt.log() - math.log(1e-3)) / (math.log(1e-1) - math.log(1e-3))
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005


def test_inverse_softplus_roundtrip():
    x = torch.logspace(-4, 2, 50, dtype=F64)
    assert_close(torch.nn.functional.softplus(inverse_softplus(x)), x)
    assert torch.isfinite(inverse_softplus(torch.tensor([100.0], dtype=torch.float32))).all()


def test_dt_bias_gives_dt_in_range():
    bias = dt_bias_init(1000, 1e-3, 1e-1, dt_floor=1e-4, generator=generator(2))
    dt = torch.nn.functional.softplus(bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: s4d_init("chebyshev", 8), ValueError, "init"),
        (lambda: s4d_init("lin", 7), ValueError, "N must be even"),
        (lambda: lru_ring_init(4, r_min=0.9, r_max=0.5), ValueError, "r_min and r_max"),
        (lambda: lru_ring_init(4, max_phase=0.0), ValueError, "max_phase"),
        (lambda: s5_init(12, blocks=4), ValueError, "blocks"),
        (lambda: log_uniform_dt(4, 0.1, 0.01), ValueError, "dt_min and dt_max"),
        (lambda: inverse_softplus(torch.tensor([0.0, 1.0])), ValueError, "x must be > 0"),
        (lambda: log_uniform_dt(0), ValueError, "h must be >= 1"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
