"""The "roots" DPLR backend (Cauchy backward by FFT + Vandermonde GEMMs) = the references."""

import pytest
import torch

import ssmkit.core.kernels_dplr_roots as roots
from ssmkit.core.kernels import expand_conj, kernel_dplr
from ssmkit.core.kernels_dplr import cauchy_ref, roots_of_unity
from ssmkit.core.kernels_dplr_roots import _blocks, cauchy_roots, root_positions
from ssmkit.layers import S4
from ssmkit.testing import assert_close, generator, grads

from .test_kernel_dplr_grad import NAMES, system

C128 = torch.complex128
F64 = torch.float64


def kernel_and_grads(inputs, L, backend, **kw):
    xs = [x.clone().requires_grad_() for x in inputs]

    def fn(*a):
        return kernel_dplr(*a, L, backend=backend, **kw)

    return fn(*xs), grads(fn, xs)


@pytest.mark.parametrize("L", [1, 7, 63, 1000])
@pytest.mark.parametrize("N", [2, 4, 64])
@pytest.mark.parametrize("r", [1, 2])
def test_roots_equals_ref_kernel_and_all_gradients(N, L, r):
    inputs = system(n=N // 2, r=r, seed=N + r + 11)
    K, g = kernel_and_grads(inputs, L, "roots")
    K_ref, g_ref = kernel_and_grads(inputs, L, "ref")
    assert_close(K, K_ref, atol=1e-12)
    for name, a, b in zip(NAMES, g, g_ref, strict=True):
        assert a is not None and a.shape == b.shape, name
        assert_close(a, b, atol=1e-11, msg=name)


@pytest.mark.parametrize("L", [6, 7])
def test_roots_without_conjugate_pairs_and_with_broadcast(L):
    Lam, P, Q, B, Ct, dt = system(h=3, n=3, r=2, seed=4)
    full = [expand_conj(x) for x in (Lam, P, Q, B, Ct)] + [dt]
    for inputs, kw in (
        (full, {"conj": False, "chunk": 2}),
        ([Lam, P, Q, B, torch.stack([Ct, -Ct]), dt], {}),
    ):
        K, g = kernel_and_grads(inputs, L, "roots", **kw)
        K_ref, g_ref = kernel_and_grads(inputs, L, "adjoint", **kw)
        assert K.shape == K_ref.shape
        for a, b in zip([K, *g], [K_ref, *g_ref], strict=True):
            assert_close(a, b, atol=1e-11)


def test_roots_blocks_and_chunks_agree(monkeypatch):
    """One channel per block and tiny chunks give the one-block result."""
    inputs = system(h=3, n=5, seed=2)
    K, g = kernel_and_grads(inputs, 41, "roots")
    monkeypatch.setattr(roots, "BLOCK_BUDGET", 1)
    K1, g1 = kernel_and_grads(inputs, 41, "roots", chunk=3)
    for a, b in zip([K1, *g1], [K, *g], strict=True):
        assert_close(a, b, atol=1e-12)


@pytest.mark.parametrize("L", [1, 6, 7])
def test_gradcheck_cauchy_roots(monkeypatch, L):
    monkeypatch.setattr(roots, "BLOCK_BUDGET", 1)  # several channel blocks
    g = generator(L)
    Lam = torch.complex(
        -torch.rand(2, 3, generator=g, dtype=F64) - 0.1, torch.randn(2, 3, generator=g, dtype=F64)
    )
    half_dt = torch.rand(2, generator=g, dtype=F64) * 0.2 + 0.05
    X = torch.randn(2, 4, 3, generator=g, dtype=C128)
    inputs = [x.clone().requires_grad_() for x in (Lam, half_dt, X)]
    assert torch.autograd.gradcheck(lambda *a: cauchy_roots(*a, L, 2), inputs)
    w = roots_of_unity(root_positions(L, 2), L, C128)
    assert_close(cauchy_roots(*inputs, L, 2), cauchy_ref(w, *inputs))


def test_s4_roots_equals_ref_beyond_l_max():
    """Beyond l_max (C_tilde rescaled, then the kernel): outputs and all parameter gradients."""
    torch.manual_seed(1)
    layers = {b: S4(3, N=8, l_max=16, kernel_backend=b).double() for b in ("ref", "roots")}
    layers["roots"].load_state_dict(layers["ref"].state_dict())
    x = torch.randn(2, 41, 3, dtype=F64)
    out = {}
    for b, layer in layers.items():
        y, _ = layer(x)
        y.square().sum().backward()
        out[b] = [y] + [p.grad for p in layer.parameters()]
    for a, b in zip(out["roots"], out["ref"], strict=True):
        assert_close(a, b, atol=1e-10)


def test_roots_without_gradients_matches_with():
    """Without gradients "roots" runs the chunked sums; the kernel is the same."""
    inputs = system(h=2, n=6, seed=3)
    with torch.no_grad():
        K = kernel_dplr(*inputs, 50, backend="roots", chunk=4)
    K_grad, _ = kernel_and_grads(inputs, 50, "roots", chunk=4)
    assert_close(K, K_grad.detach(), atol=1e-13)


def test_roots_float32_matches_float64():
    """float32 against the float64 reference: X's gradients as the direct adjoint's, Lambda
    and dt within the documented looser bound (module docstring of kernels_dplr_roots)."""
    weight = torch.randn(4, 1000, generator=generator(9), dtype=F64)
    results = {}
    for dtype, backend in ((C128, "ref"), (torch.complex64, "roots")):
        xs = [x.requires_grad_() for x in system(h=4, n=32, seed=7, dtype=dtype)]
        K = kernel_dplr(*xs, 1000, backend=backend)
        (K * weight.to(K.dtype)).sum().backward()
        results[backend] = [K.detach()] + [x.grad for x in xs]
    bounds = {"K": 1e-4, "Lambda": 1e-3, "P": 1e-4, "Q": 1e-4, "B": 1e-4, "C_tilde": 1e-4}
    for name, a, b in zip(("K", *NAMES), results["roots"], results["ref"], strict=True):
        assert a.dtype in (torch.float32, torch.complex64), name
        err = float((a.to(b.dtype) - b).norm() / b.norm())
        assert err < bounds.get(name, 1e-2), (name, err)


@pytest.mark.parametrize("L", [1, 2, 3, 5, 7, 17, 63, 64, 65, 1000, 16384])
def test_blocks_cover_the_length(L):
    c, m = _blocks(L)
    assert c & (c - 1) == 0 and m * c >= L and (m - 1) * c < L and c * c >= L


def test_roots_bad_inputs():
    Lam, _, _, _, _, dt = system()
    X = torch.ones(2, 4, 4, dtype=C128)
    with pytest.raises(ValueError, match=r"half_dt must be real, got dtype torch\.complex128"):
        cauchy_roots(Lam, dt.to(C128), X, 8, 2)
    with pytest.raises(ValueError, match="chunk"):
        root_positions(8, 0)
