"""HiPPO matrices, their NPLR form, and online compression / reconstruction."""

import itertools
import math

import pytest
import torch

from ssmkit.core.hippo import (
    basis,
    hippo_coefficients,
    hippo_reconstruct,
    nplr,
    nplr_to_dense,
    transition,
)
from ssmkit.testing import assert_close

F64 = torch.float64


def smooth(s):
    return torch.sin(8 * s) * torch.exp(-s) + 0.5 * torch.cos(3 * s + 1)


def test_legs_entries():
    A, B = transition("legs", 4)
    assert A[2, 0] == pytest.approx(-math.sqrt(5) * math.sqrt(1))
    assert A[3, 1] == pytest.approx(-math.sqrt(7) * math.sqrt(3))
    assert A[2, 2] == -3 and A[0, 0] == -1
    assert A[0, 3] == 0
    assert_close(B, torch.sqrt(torch.tensor([1.0, 3, 5, 7], dtype=F64)))


def test_legt_lagt_fout_entries():
    A, B = transition("legt", 3)
    assert A[1, 0] == pytest.approx(-math.sqrt(3))  # k < n: +1 inside the minus sign
    assert A[0, 1] == pytest.approx(math.sqrt(3))  # k > n: (-1)^(n-k) = -1
    assert A[1, 1] == pytest.approx(-3)
    A, B = transition("lagt", 3)
    assert_close(A, -torch.tril(torch.ones(3, 3, dtype=F64)))
    assert_close(B, torch.ones(3, dtype=F64))
    A, B = transition("fout", 5)
    assert_close(B, torch.tensor([1, math.sqrt(2), 0, math.sqrt(2), 0], dtype=F64))
    J = A + B[:, None] * B[None, :]
    assert J[1, 2] == pytest.approx(2 * math.pi) and J[3, 4] == pytest.approx(4 * math.pi)
    assert_close(J, -J.T)


@pytest.mark.parametrize("measure", ["legs", "legt", "lagt", "fout"])
def test_stable(measure):
    A, _ = transition(measure, 16)
    assert torch.linalg.eigvals(A).real.max() < 0


def test_legs_preserves_constants():
    """The projection of a constant is c_0 = f, exactly, after any number of steps."""
    c = hippo_coefficients(torch.full((50,), 2.5, dtype=F64), "legs", 8)
    assert_close(c[-1], torch.tensor([2.5] + [0.0] * 7, dtype=F64))


def test_legs_error_falls_with_N():
    from ssmkit.analysis.hippo_plot import demo_signal, reconstruction_errors

    errors, _ = reconstruction_errors(demo_signal(2000), "legs", (8, 16, 32, 64))
    values = list(errors.values())
    assert all(a > b for a, b in itertools.pairwise(values)), errors
    assert values[-1] < 0.01 * values[0]


def test_legs_exact_for_piecewise_constant_is_first_order_in_l():
    """The log-time ZOH is exact for a step signal, so the error halves as l doubles."""
    errs = []
    for length in (500, 1000, 2000):
        s = torch.arange(1, length + 1, dtype=F64) / length
        c = hippo_coefficients(smooth(s), "legs", 32)[-1]
        x = torch.linspace(0, 1, 400, dtype=F64)
        errs.append(float(((hippo_reconstruct(c, "legs", x) - smooth(x)) ** 2).mean().sqrt()))
    assert errs[1] < 0.6 * errs[0] and errs[2] < 0.6 * errs[1], errs


def test_legt_reconstructs_the_window():
    length, theta = 4000, 0.25
    s = torch.arange(1, length + 1, dtype=F64) / length
    c = hippo_coefficients(smooth(s), "legt", 16, dt=1 / length, theta=theta)[-1]
    x = torch.linspace(0, 1, 200, dtype=F64)
    err = (hippo_reconstruct(c, "legt", x) - smooth(1 - theta + theta * x)).abs().max()
    assert err < 2e-3


def test_legt_wrong_sign_of_B_would_fail():
    """Guard: the test above can fail; flipping B's sign breaks the reconstruction."""
    A, B = transition("legt", 16)
    length = 4000
    s = torch.arange(1, length + 1, dtype=F64) / length
    from ssmkit.core.discretize import discretize_dense

    A_bar, B_bar = discretize_dense(A, -B[:, None], torch.tensor(4 / length, dtype=F64))
    c = torch.zeros(16, dtype=F64)
    for v in smooth(s):
        c = A_bar @ c + B_bar[:, 0] * v
    x = torch.linspace(0, 1, 200, dtype=F64)
    assert (hippo_reconstruct(c, "legt", x) - smooth(0.75 + 0.25 * x)).abs().max() > 0.1


def test_lagt_reconstructs_recent_history():
    length, dt = 3000, 0.01
    t = torch.arange(1, length + 1, dtype=F64) * dt
    g = torch.sin(0.5 * t)
    c = hippo_coefficients(g, "lagt", 16, dt=dt)[-1]
    ages = torch.linspace(0, 2, 100, dtype=F64)
    assert (hippo_reconstruct(c, "lagt", ages) - torch.sin(0.5 * (t[-1] - ages))).abs().max() < 1e-2


def test_fout_reconstructs_a_window_periodic_signal():
    """Fourier basis on the window: exact up to the edge approximation f(t-1) ~ B^T c."""
    length, window = 4000, 0.25
    s = torch.arange(1, length + 1, dtype=F64) / length
    f = torch.sin(2 * math.pi * 2 * s / window) + 0.3
    c = hippo_coefficients(f, "fout", 17, dt=1 / (length * window))[-1]
    x = torch.linspace(0, 1, 200, dtype=F64)
    target = torch.sin(2 * math.pi * 2 * (1 - window + window * x) / window) + 0.3
    err = ((hippo_reconstruct(c, "fout", x) - target) ** 2).mean().sqrt()
    assert err < 2e-2
    assert abs(float(c[4]) - 1 / math.sqrt(2)) < 2e-2  # the sin(2 pi 2 x) coefficient


def test_basis_is_orthonormal():
    x = (torch.arange(20000, dtype=F64) + 0.5) / 20000
    for measure in ("legs", "fout"):
        G = basis(measure, 7, x)
        assert_close(G.T @ G / len(x), torch.eye(7, dtype=F64), atol=1e-6, rtol=0)
    y = torch.linspace(0, 60, 60001, dtype=F64)
    G = basis("lagt", 5, y) * torch.exp(-y)[:, None].sqrt()
    assert_close(G.T @ G * (y[1] - y[0]), torch.eye(5, dtype=F64), atol=2e-3, rtol=0)


def test_batched_and_float32():
    s = torch.arange(1, 301, dtype=F64) / 300
    f = torch.stack([smooth(s), 2 * smooth(s)])
    c = hippo_coefficients(f, "legs", 8)
    assert c.shape == (2, 300, 8)
    assert_close(c[1], 2 * c[0])
    c32 = hippo_coefficients(f.float(), "legs", 8)
    assert c32.dtype == torch.float32
    assert_close(c32.double(), c, rtol=1e-4, atol=1e-5)


def test_differentiable():
    f = torch.randn(20, dtype=F64, requires_grad=True)
    hippo_coefficients(f, "legt", 4)[-1].sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


@pytest.mark.parametrize("N", [2, 4, 16, 64])
def test_nplr_reconstructs_legs(N):
    Lam, P, B, V = nplr("legs", N)
    A, b = transition("legs", N)
    assert_close(nplr_to_dense(Lam, P, V), A.to(Lam.dtype), atol=1e-11)
    assert_close(V @ V.conj().T, torch.eye(N, dtype=V.dtype), atol=1e-12)
    assert_close(Lam.real, torch.full((N,), -0.5, dtype=F64))
    assert_close(V @ B, b.to(V.dtype), atol=1e-12)
    h = N // 2
    assert (Lam.imag[:h] > 0).all() and (Lam.imag[:h].diff() > 0).all()
    assert torch.equal(Lam[h:], Lam[:h].conj())
    assert torch.equal(V[:, h:], V[:, :h].conj())
    assert torch.equal(P[:, h:], P[:, :h].conj()) and torch.equal(B[h:], B[:h].conj())


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: transition("legx", 4), ValueError, "measure"),
        (lambda: transition("legs", 0), ValueError, "N must be >= 1"),
        (lambda: transition("legs", 2.5), TypeError, "N must be an int"),
        (lambda: nplr("legs", 5), ValueError, "N must be even"),
        (lambda: nplr("fout", 4), ValueError, "measure"),
        (
            lambda: hippo_coefficients(torch.tensor([1.0, float("nan")]), "legs", 4),
            ValueError,
            "f must be finite",
        ),
        (lambda: hippo_coefficients(torch.ones(5), "legt", 4, dt=-1.0), ValueError, "dt"),
        (lambda: hippo_coefficients(torch.ones(5), "legt", 4, theta=0.0), ValueError, "theta"),
        (lambda: hippo_coefficients(torch.ones(0), "legs", 4), ValueError, "l >= 1"),
        (lambda: hippo_coefficients(torch.ones(5), "legs", 4, method="rk4"), ValueError, "method"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
