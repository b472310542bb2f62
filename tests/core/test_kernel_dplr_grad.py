"""The adjoint DPLR backend (hand-written Cauchy backward) = the autograd reference."""

import pytest
import torch

import ssmkit.core.kernels_dplr as kernels_dplr
from ssmkit.core.kernels import dplr_c_tilde, expand_conj, kernel_dplr
from ssmkit.core.kernels_dplr import cauchy_adjoint, cauchy_ref, mirrored_points
from ssmkit.layers import S4
from ssmkit.testing import assert_close, generator, grads

C128 = torch.complex128
F64 = torch.float64
NAMES = ("Lambda", "P", "Q", "B", "C_tilde", "dt")


def system(h=2, n=4, r=1, seed=0, dtype=C128):
    """A stable DPLR system (h channels, n stored modes, rank r) with C_tilde for length 64."""
    g = generator(seed)
    real = dtype.to_real()
    Lam = torch.complex(
        -torch.rand(h, n, generator=g, dtype=F64) - 0.1,
        torch.randn(h, n, generator=g, dtype=F64) * 3,
    )
    P = torch.randn(h, r, n, generator=g, dtype=C128) * 0.3
    Q = torch.randn(h, r, n, generator=g, dtype=C128) * 0.3
    B = torch.randn(h, n, generator=g, dtype=C128)
    C = torch.randn(h, n, generator=g, dtype=C128)
    dt = torch.rand(h, generator=g, dtype=F64) * 0.3 + 0.01
    Ct = dplr_c_tilde(Lam, P, Q, C, dt, 64)
    return [x.to(dtype) for x in (Lam, P, Q, B, Ct)] + [dt.to(real)]


def both(inputs, L, **kw):
    """Kernels and gradients of all six inputs for the two backends."""
    out = {}
    for backend in ("ref", "adjoint"):
        xs = [x.clone().requires_grad_() for x in inputs]

        def fn(*a, backend=backend):
            return kernel_dplr(*a, L, backend=backend, **kw)

        out[backend] = (fn(*xs), grads(fn, xs))
    return out


@pytest.mark.parametrize("L", [1, 7, 63, 1000])
@pytest.mark.parametrize("N", [2, 4, 64])
@pytest.mark.parametrize("r", [1, 2])
def test_adjoint_equals_ref_kernel_and_all_gradients(N, L, r):
    out = both(system(n=N // 2, r=r, seed=N + r), L)
    (K, g), (K_ref, g_ref) = out["adjoint"], out["ref"]
    assert K.shape == (2, L)
    assert_close(K, K_ref, atol=1e-12)
    for name, a, b in zip(NAMES, g, g_ref, strict=True):
        assert a is not None and a.shape == b.shape, name
        assert_close(a, b, atol=1e-11, msg=name)


@pytest.mark.parametrize("L", [7, 63])
def test_adjoint_equals_ref_without_conjugate_pairs(L):
    Lam, P, Q, B, Ct, dt = system(n=3, r=2, seed=4)
    full = [expand_conj(x) for x in (Lam, P, Q, B, Ct)] + [dt]
    out = both(full, L, conj=False, chunk=3)
    (K, g), (K_ref, g_ref) = out["adjoint"], out["ref"]
    for a, b in zip([K, *g], [K_ref, *g_ref], strict=True):
        assert_close(a, b, atol=1e-11)


@pytest.mark.parametrize("budget", [1, 7, 100])
def test_adjoint_tiles_and_chunks_agree(monkeypatch, budget):
    """Tiny tiles (one channel, one point) and chunks give the untiled result."""
    inputs = system(h=3, n=5, r=1, seed=2)
    whole = both(inputs, 41)["adjoint"]
    monkeypatch.setattr(kernels_dplr, "TILE_BUDGET", budget)
    tiled = both(inputs, 41, chunk=4)["adjoint"]
    for a, b in zip([tiled[0], *tiled[1]], [whole[0], *whole[1]], strict=True):
        assert_close(a, b, atol=1e-12)


def test_adjoint_broadcasts_leading_axes():
    """A (2, h, n) C_tilde (S4's bidirectional layout) against (h, n) modes."""
    Lam, P, Q, B, Ct, dt = system(h=3, n=4)
    Ct2 = torch.stack([Ct, 2 * Ct.flip(-1)])  # (2, h, n)
    out = both([Lam, P, Q, B, Ct2, dt], 20)
    assert out["adjoint"][0].shape == (2, 3, 20)
    for a, b in zip(out["adjoint"][1], out["ref"][1], strict=True):
        assert a.shape == b.shape
        assert_close(a, b, atol=1e-12)


def test_adjoint_float32_matches_float64():
    weight = torch.randn(4, 1000, generator=generator(9), dtype=F64)
    results = {}
    for dtype, backend in ((C128, "ref"), (torch.complex64, "adjoint")):
        xs = [x.requires_grad_() for x in system(h=4, n=32, seed=7, dtype=dtype)]
        K = kernel_dplr(*xs, 1000, backend=backend)
        (K * weight.to(K.dtype)).sum().backward()
        results[backend] = [K.detach()] + [x.grad for x in xs]
    assert results["adjoint"][0].dtype == torch.float32
    for name, a, b in zip(("K", *NAMES), results["adjoint"], results["ref"], strict=True):
        assert a.dtype in (torch.float32, torch.complex64), name
        assert float((a.to(b.dtype) - b).norm() / b.norm()) < 1e-4, name


def test_gradcheck_cauchy_adjoint(monkeypatch):
    monkeypatch.setattr(kernels_dplr, "TILE_BUDGET", 4)  # several tiles in both loops
    g = generator(3)
    w = mirrored_points(torch.arange(4), 7, C128)  # (8,)
    Lam = torch.complex(
        -torch.rand(3, 2, generator=g, dtype=F64) - 0.1, torch.randn(3, 2, generator=g, dtype=F64)
    )
    half_dt = torch.rand(3, generator=g, dtype=F64) * 0.2 + 0.05
    X = torch.randn(3, 4, 2, generator=g, dtype=C128)
    inputs = [x.clone().requires_grad_() for x in (Lam, half_dt, X)]
    assert torch.autograd.gradcheck(lambda *a: cauchy_adjoint(w, *a), inputs)
    assert_close(cauchy_adjoint(w, *inputs), cauchy_ref(w, *inputs))


@pytest.mark.parametrize("r", [1, 2])
def test_gradcheck_kernel_dplr_adjoint(r):
    inputs = [x.clone().requires_grad_() for x in system(h=1, n=2, r=r, seed=5)]
    assert torch.autograd.gradcheck(
        lambda *a: kernel_dplr(*a, 9, chunk=2, backend="adjoint"), inputs
    )


def test_adjoint_backward_stores_no_cauchy_table():
    """Saved activations stay O(B (n + L)): far below one (B, f, n) table of 1/d."""
    h, n, L = 2, 128, 512
    inputs = [x.clone().requires_grad_() for x in system(h=h, n=n)]
    saved = {"adjoint": 0, "ref": 0}
    for backend in saved:

        def pack(x, backend=backend):
            saved[backend] += x.numel()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            K = kernel_dplr(*inputs, L, backend=backend)
        K.sum().backward()
    table = h * 2 * (L // 2 + 1) * n  # one (B, f, n) table over all points
    assert saved["adjoint"] < table / 4, saved
    assert saved["ref"] > table, saved  # the probe sees a stored table (one unchecked chunk)


def test_s4_layer_backends_agree():
    torch.manual_seed(0)
    layers = {b: S4(3, N=8, rank=2, l_max=32, kernel_backend=b).double() for b in ("ref", "auto")}
    layers["auto"].load_state_dict(layers["ref"].state_dict())
    with torch.no_grad():
        layers["ref"].P.add_(0.1 * torch.randn_like(layers["ref"].P))
    layers["auto"].load_state_dict(layers["ref"].state_dict())
    x = torch.randn(2, 32, 3, dtype=F64)
    out = {}
    for b, layer in layers.items():
        y, _ = layer(x)
        y.square().sum().backward()
        out[b] = [y] + [p.grad for p in layer.parameters()]
    for a, b in zip(out["auto"], out["ref"], strict=True):
        assert_close(a, b, atol=1e-10)


def test_bad_backend_and_dtype():
    Lam, P, Q, B, Ct, dt = system()
    with pytest.raises(ValueError, match="backend 'fast'"):
        kernel_dplr(Lam, P, Q, B, Ct, dt, 8, backend="fast")
    with pytest.raises(ValueError, match="kernel_backend 'cuda'"):
        S4(3, N=8, kernel_backend="cuda")
    w = mirrored_points(torch.arange(2), 4, C128)
    X = torch.ones(2, 4, 4, dtype=C128)
    with pytest.raises(ValueError, match=r"half_dt must be real, got dtype torch\.complex128"):
        cauchy_adjoint(w, Lam, dt.to(C128), X)
