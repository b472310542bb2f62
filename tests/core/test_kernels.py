"""LTI kernels: Vandermonde = Cauchy/DPLR = dense powering on the same SSM."""

import pytest
import torch

from ssmkit.core.discretize import discretize_dense, discretize_diag, dplr_to_dense
from ssmkit.core.hippo import nplr
from ssmkit.core.kernels import (
    default_chunk,
    dplr_c_tilde,
    expand_conj,
    kernel_dense,
    kernel_diag,
    kernel_dplr,
)
from ssmkit.testing import assert_close, generator, grads

C128 = torch.complex128
F64 = torch.float64
LENGTHS = [1, 7, 63, 64, 1000]


def diag_system(h=3, n=4, seed=0, dtype=C128):
    g = generator(seed)
    re = -torch.rand(h, n, generator=g, dtype=F64) - 0.1
    im = torch.randn(h, n, generator=g, dtype=F64) * 3
    Lam = torch.complex(re, im).to(dtype)
    B = torch.randn(h, n, generator=g, dtype=dtype)
    C = torch.randn(h, n, generator=g, dtype=dtype)
    dt = torch.rand(h, generator=g, dtype=F64) * 0.3 + 0.01
    return Lam, B, C, dt


def dplr_system(h=2, n=4, r=1, seed=0):
    Lam, B, C, dt = diag_system(h, n, seed)
    g = generator(seed + 100)
    P = torch.randn(h, r, n, generator=g, dtype=C128) * 0.3
    Q = torch.randn(h, r, n, generator=g, dtype=C128) * 0.3
    return Lam, P, Q, B, C, dt


def dense_reference_dplr(Lam, P, Q, B, C, dt, L):
    """The full conjugate-symmetric real system, discretised densely and powered."""
    A = dplr_to_dense(expand_conj(Lam), expand_conj(P), expand_conj(Q))
    A_bar, B_bar = discretize_dense(A, expand_conj(B).unsqueeze(-1), dt, "bilinear")
    K = kernel_dense(A_bar, B_bar.squeeze(-1), expand_conj(C), L)
    assert K.imag.abs().max() < 1e-9 * max(1.0, K.real.abs().max())  # a real system
    return K.real


@pytest.mark.parametrize("L", LENGTHS)
def test_vandermonde_equals_dense_powering_conj_pairs(L):
    Lam, B, C, dt = diag_system()
    A_bar, B_bar = discretize_diag(Lam, B, dt, "zoh")
    K = kernel_diag(A_bar, B_bar, C, L)
    ref = kernel_dense(torch.diag_embed(expand_conj(A_bar)), expand_conj(B_bar), expand_conj(C), L)
    assert K.dtype == F64 and K.shape == (3, L)
    assert_close(K, ref.real)


@pytest.mark.parametrize("L", [1, 7, 63])
def test_vandermonde_real_diagonal_without_pairs(L):
    g = generator(5)
    A_bar = torch.rand(3, 5, generator=g, dtype=F64) * 1.8 - 0.9  # negative entries too
    B_bar, C = torch.randn(2, 3, 5, generator=g, dtype=F64)
    K = kernel_diag(A_bar, B_bar, C, L, conj=False)
    assert_close(K, kernel_dense(torch.diag_embed(A_bar), B_bar, C, L))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_vandermonde_chunk_sizes_agree(chunk):
    Lam, B, C, dt = diag_system()
    A_bar, B_bar = discretize_diag(Lam, B, dt, "zoh")
    assert_close(
        kernel_diag(A_bar, B_bar, C, 1000, chunk=chunk), kernel_diag(A_bar, B_bar, C, 1000)
    )


def test_vandermonde_broadcasts_extra_output_axis():
    Lam, B, _, dt = diag_system()
    A_bar, B_bar = discretize_diag(Lam, B, dt, "zoh")
    C2 = torch.randn(2, 3, 4, dtype=C128)
    K = kernel_diag(A_bar, B_bar, C2, 50)
    assert K.shape == (2, 3, 50)
    assert_close(K[1], kernel_diag(A_bar, B_bar, C2[1], 50))


def test_vandermonde_float32_at_16384():
    """S4D-Lin style modes, dt log-uniform: float32 stays close to float64 at L = 16384."""
    from ssmkit.core.init import log_uniform_dt, s4d_init

    A = s4d_init("lin", 64, C128).expand(8, 32)
    dt = log_uniform_dt(8, generator=generator(0), dtype=F64)
    B = torch.ones(8, 32, dtype=C128)
    C = torch.randn(8, 32, generator=generator(1), dtype=C128)
    A_bar, B_bar = discretize_diag(A, B, dt, "zoh")
    K64 = kernel_diag(A_bar, B_bar, C, 16384)
    K32 = kernel_diag(
        A_bar.to(torch.complex64), B_bar.to(torch.complex64), C.to(torch.complex64), 16384
    )
    rel = float((K32.double() - K64).norm() / K64.norm())
    assert rel < 1e-4, rel


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("backend", ["ref", "adjoint"])
def test_cauchy_dplr_equals_dense_powering(L, r, backend):
    Lam, P, Q, B, C, dt = dplr_system(r=r)
    Ct = dplr_c_tilde(Lam, P, Q, C, dt, L)
    K = kernel_dplr(Lam, P, Q, B, Ct, dt, L, backend=backend)
    assert K.shape == (2, L)
    assert_close(K, dense_reference_dplr(Lam, P, Q, B, C, dt, L), atol=1e-9)


@pytest.mark.parametrize("L", [7, 64])
def test_dplr_conj_halves_equal_full_modes(L):
    Lam, P, Q, B, C, dt = dplr_system()
    Ct = dplr_c_tilde(Lam, P, Q, C, dt, L)
    half = kernel_dplr(Lam, P, Q, B, Ct, dt, L)
    full = kernel_dplr(*(expand_conj(x) for x in (Lam, P, Q, B, Ct)), dt, L, conj=False, chunk=5)
    assert_close(full, half)
    assert_close(dplr_c_tilde(Lam, P, Q, C, dt, L, conj=True), Ct)


def test_dplr_with_zero_low_rank_is_the_bilinear_vandermonde():
    Lam, P, _Q, B, C, dt = dplr_system()
    L = 100
    zero = torch.zeros_like(P)
    Ct = dplr_c_tilde(Lam, zero, zero, C, dt, L)
    A_bar, B_bar = discretize_diag(Lam, B, dt, "bilinear")
    assert_close(kernel_dplr(Lam, zero, zero, B, Ct, dt, L), kernel_diag(A_bar, B_bar, C, L))


def test_dplr_hippo_legs_kernel():
    """The S4 initialisation itself: HiPPO-LegS in NPLR form, N = 16, against dense powering."""
    Lam, P, B, _ = nplr("legs", 16)
    h = 8
    Lam, P, B = Lam[:8].expand(h, 8), P[:, :8].expand(h, 1, 8), B[:8].expand(h, 8)
    C = torch.randn(h, 8, generator=generator(2), dtype=C128)
    dt = torch.logspace(-3, -1, h, dtype=F64)
    L = 256
    Ct = dplr_c_tilde(Lam, P, P, C, dt, L)
    assert_close(
        kernel_dplr(Lam, P, P, B, Ct, dt, L),
        dense_reference_dplr(Lam, P, P, B, C, dt, L),
        atol=1e-9,
    )


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("backend", ["ref", "adjoint"])
def test_dplr_chunk_sizes_agree(chunk, backend):
    Lam, P, Q, B, C, dt = dplr_system()
    Ct = dplr_c_tilde(Lam, P, Q, C, dt, 64)
    assert_close(
        kernel_dplr(Lam, P, Q, B, Ct, dt, 64, chunk=chunk, backend=backend),
        kernel_dplr(Lam, P, Q, B, Ct, dt, 64),
    )


def test_gradients_match_dense_reference():
    Lam, B, C, dt = diag_system(h=2, n=3)
    L = 40
    Lam.requires_grad_()
    C.requires_grad_()

    def fast(Lam, C):
        A_bar, B_bar = discretize_diag(Lam, B, dt, "zoh")
        return kernel_diag(A_bar, B_bar, C, L, chunk=7)  # chunked + checkpointed

    def ref(Lam, C):
        A_bar, B_bar = discretize_diag(Lam, B, dt, "zoh")
        D = torch.diag_embed(expand_conj(A_bar))
        return kernel_dense(D, expand_conj(B_bar), expand_conj(C), L).real

    for g, g_ref in zip(grads(fast, [Lam, C]), grads(ref, [Lam, C]), strict=True):
        assert_close(g, g_ref)


@pytest.mark.parametrize("backend", ["ref", "adjoint"])
def test_dplr_gradients_match_dense_reference(backend):
    Lam, P, Q, B, C, dt = dplr_system(h=1, n=3)
    L = 16
    Ct = dplr_c_tilde(Lam, P, Q, C, dt, L)
    inputs = [x.clone().requires_grad_() for x in (Lam, P, Ct)]

    def fast(Lam, P, Ct):
        return kernel_dplr(Lam, P, Q, B, Ct, dt, L, chunk=5, backend=backend)

    def ref(Lam, P, Ct):
        # C_tilde = C (I - A_bar^L) is linear in C: recover C from C_tilde by a solve
        A = dplr_to_dense(expand_conj(Lam), expand_conj(P), expand_conj(Q))
        A_bar, B_bar = discretize_dense(A, expand_conj(B).unsqueeze(-1), dt, "bilinear")
        M = torch.eye(6, dtype=C128) - torch.linalg.matrix_power(A_bar, L)
        C_full = torch.linalg.solve(M.transpose(-1, -2), expand_conj(Ct).unsqueeze(-1)).squeeze(-1)
        return kernel_dense(A_bar, B_bar.squeeze(-1), C_full, L).real

    assert_close(fast(*inputs), ref(*inputs), atol=1e-9)
    for g, g_ref in zip(grads(fast, inputs), grads(ref, inputs), strict=True):
        assert_close(g, g_ref, atol=1e-8)


def test_default_chunk_bounds_the_temporary():
    c = default_chunk(1024, 64, 16384)
    assert 1024 * 64 * c <= max(1024 * 16384, 2**20)
    assert default_chunk(1, 4, 10) == 10


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: kernel_diag(torch.ones(3, 4), torch.ones(3, 5), torch.ones(3, 4), 8),
            ValueError,
            "B_bar must have n = 4",
        ),
        (
            lambda: kernel_diag(torch.ones(3, 4), torch.ones(3, 4), torch.ones(3, 4), 0),
            ValueError,
            "L must be >= 1",
        ),
        (
            lambda: kernel_diag(
                torch.ones(3, 4), torch.ones(3, 4), torch.full((3, 4), float("nan")), 8
            ),
            ValueError,
            "C must be finite",
        ),
        (
            lambda: kernel_dense(torch.ones(3, 4), torch.ones(3, 4), torch.ones(3, 4), 8),
            ValueError,
            "A_bar must have shape",
        ),
        (lambda: kernel_dplr(*dplr_system()[:5], -dplr_system()[5], 8), ValueError, "dt"),
        (
            lambda: kernel_dplr(*dplr_system(), 8, backend="triton"),
            ValueError,
            "unknown backend 'triton'",
        ),
        (
            lambda: kernel_dplr(
                dplr_system()[0], dplr_system()[1], dplr_system(r=2)[2], *dplr_system()[3:], 8
            ),
            ValueError,
            "P and Q",
        ),
        (
            lambda: kernel_diag(torch.ones(3, 4), torch.ones(3, 4), torch.ones(3, 4), 8.0),
            TypeError,
            "L must be an int",
        ),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- issue 16, finding 6: modes whose exp(dt A) underflows give 0, not NaN ---


def _edge_modes(dtype):
    """A_bar with an exact 0, values around sqrt(tiny) (where |A|^2 underflows) and normal ones."""
    real = torch.finfo(torch.empty((), dtype=dtype).real.dtype)
    edge = real.tiny**0.5
    values = [0.0, real.tiny, edge * 0.5, edge * 2, 1e-3, -0.5, 0.9]
    return torch.tensor(values, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.complex64, C128])
@pytest.mark.parametrize("L", [1, 7, 63, 1001])
def test_vandermonde_with_underflowed_modes_equals_dense_powering(dtype, L):
    A_bar = _edge_modes(dtype).reshape(1, -1)  # (1, n)
    if dtype.is_complex:
        A_bar = A_bar * torch.exp(torch.tensor(0.3j, dtype=dtype))  # off the real axis too
    g = generator(3)
    B_bar = torch.randn(1, A_bar.shape[-1], generator=g, dtype=F64).to(dtype).requires_grad_()
    C = torch.randn(1, A_bar.shape[-1], generator=g, dtype=F64).to(dtype).requires_grad_()
    K = kernel_diag(A_bar, B_bar, C, L, conj=False, chunk=5)
    ref = kernel_dense(torch.diag_embed(A_bar), B_bar, C, L).real
    assert torch.isfinite(K).all()
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-12
    assert_close(K, ref, atol=tol, rtol=tol)
    for gk, gr in zip(grads(lambda b, c: kernel_diag(A_bar, b, c, L, conj=False), [B_bar, C]),
                      grads(lambda b, c: kernel_dense(torch.diag_embed(A_bar), b, c, L).real,
                            [B_bar, C]), strict=True):  # fmt: skip
        assert torch.isfinite(gk).all()
        assert_close(gk, gr, atol=tol, rtol=tol)


@pytest.mark.parametrize("L", [1, 7, 63])
def test_power_sum_with_underflowed_modes_equals_the_recurrence(L):
    from ssmkit.core.kernels import power_sum

    A_bar = _edge_modes(F64).reshape(1, -1)  # (h=1, n)
    v = torch.randn(2, L, 1, generator=generator(4), dtype=F64)
    expected = sum(A_bar**j * v[:, j].unsqueeze(-1) for j in range(L))  # (b, 1, n)
    out = power_sum(A_bar, v, chunk=3)
    assert torch.isfinite(out).all()
    assert_close(out, expected)


@pytest.mark.parametrize(
    ("layer", "kwargs"),
    [("s4d", {"N": 64, "init": "real", "dt_min": 1.9, "dt_max": 2.0}),
     ("s4d", {"N": 256, "init": "real", "dt_min": 0.9, "dt_max": 1.0}),
     ("s4d", {"N": 64, "init": "legs", "dt_min": 1.9, "dt_max": 2.0}),
     ("dss", {"N": 64, "dt_min": 1.9, "dt_max": 2.0})],
)  # fmt: skip
def test_conv_mode_equals_scan_mode_where_exp_dt_a_underflows(layer, kwargs):
    from ssmkit.layers.dss import DSS
    from ssmkit.layers.s4d import S4D

    torch.manual_seed(0)
    model = {"s4d": S4D, "dss": DSS}[layer](3, mode="conv", **kwargs)
    x = torch.randn(2, 63, 3, generator=generator(1))
    out = {}
    for mode in ("conv", "scan"):
        model.zero_grad()
        model.mode = mode
        y, _ = model(x)
        y.square().sum().backward()
        out[mode] = [y] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(out["conv"], out["scan"], strict=True):
        assert torch.isfinite(a).all()
        assert_close(a, b, atol=1e-4, rtol=1e-4)
