"""The fused CPU SSD kernels (numba backend) against the loop definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers.mamba2 import Mamba2
from ssmkit.ops import registry, ssd
from ssmkit.ops.ssd import cpu_numba
from ssmkit.ops.ssd.ref import ssd_ref
from ssmkit.testing import assert_close, grads, randn

pytestmark = pytest.mark.skipif(not cpu_numba.available(), reason="numba is not installed")


def kernel_inputs(b=2, l=9, h=4, p=3, n=5, g=2, dtype=torch.float64, seed=0, resets=()):
    """(x, delta, A, B, C, h0) requiring grad, and keep (b, l) with 0 at ``resets`` (i, t)."""
    x = randn(b, l, h, p, dtype=dtype, seed=seed)
    delta = F.softplus(randn(b, l, h, dtype=dtype, seed=seed + 1) - 1)
    A = -torch.rand(h, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 2 - 0.1
    B = randn(b, l, g, n, dtype=dtype, seed=seed + 2)
    C = randn(b, l, g, n, dtype=dtype, seed=seed + 3)
    h0 = randn(b, h, p, n, dtype=dtype, seed=seed + 4)
    keep = torch.ones(b, l, dtype=dtype)
    for i, t in resets:
        keep[i, t] = 0.0
    return [t.requires_grad_(True) for t in (x, delta, A, B, C, h0)], keep


@pytest.mark.parametrize("L", [1, 7, 63, 1000])
@pytest.mark.parametrize("p", [3, 70])  # rows of a head's state: few; more than a vector's
def test_kernel_matches_ref_outputs_states_and_all_gradients(L, p):
    n_steps = min(L, 63) if p == 70 else L  # keep the wide heads cheap
    resets = [(0, n_steps // 2), (1, n_steps - 1)] if n_steps > 1 else []
    inputs, keep = kernel_inputs(l=n_steps, p=p, h=2 if p == 70 else 4, seed=L, resets=resets)

    def numba(*t):
        return cpu_numba.ssd_numba(*t, keep)

    def ref(*t):
        return ssd_ref(*t, keep)

    for got, want in zip(numba(*inputs), ref(*inputs), strict=True):
        assert_close(got, want)
    for got, want in zip(grads(numba, inputs), grads(ref, inputs), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("with_reset", [False, True])
def test_kernel_gradcheck(with_reset):
    """float64 gradcheck of the autograd Function: groups, a length of 43 (odd),
    resets, h0, odd head and state sizes."""
    resets = [(0, 3), (1, 40), (1, 41)] if with_reset else []
    inputs, keep = kernel_inputs(b=2, l=43, h=2, p=2, n=3, g=2, resets=resets)
    assert torch.autograd.gradcheck(lambda *t: cpu_numba.ssd_numba(*t, keep), inputs)
    wide, keep = kernel_inputs(b=1, l=3, h=1, p=9, n=11, g=1, seed=5)
    assert torch.autograd.gradcheck(lambda *t: cpu_numba.ssd_numba(*t, keep), wide)


def test_float32_kernel_close_to_float64_at_mamba2_scales():
    """Mamba-2-like magnitudes (A in [-16, -1], small dt, n = 64, p = 64), float32."""
    b, l, h, p, n = 1, 300, 2, 64, 64
    x, B, C = randn(b, l, h, p, seed=1), randn(b, l, 1, n, seed=2), randn(b, l, 1, n, seed=3)
    delta = F.softplus(randn(b, l, h, seed=4) - 3)
    A = -torch.tensor([1.0, 16.0], dtype=torch.float64)
    h0 = randn(b, h, p, n, seed=5)
    want = [t.requires_grad_(True) for t in (x, delta, A, B, C, h0)]
    got = [t.detach().float().requires_grad_(True) for t in want]
    keep = torch.ones(b, l, dtype=torch.float64)
    out64 = ssd_ref(*want, keep)
    out32 = cpu_numba.ssd_numba(*got, keep.float())
    for a, c in zip(out32, out64, strict=True):
        assert_close(a, c.float())
    dy, dlast = randn(b, l, h, p, seed=6), randn(b, h, p, n, seed=7)  # the same upstream grads
    g64 = torch.autograd.grad(out64, want, (dy, dlast))
    g32 = torch.autograd.grad(out32, got, (dy.float(), dlast.float()))
    for a, c in zip(g32, g64, strict=True):
        assert_close(a, c.float(), rtol=1e-3, atol=1e-4 * float(c.abs().max()))


def test_gradients_are_the_same_on_every_run():
    inputs, keep = kernel_inputs(l=50, resets=[(0, 20)])
    first, second = (grads(lambda *t: cpu_numba.ssd_numba(*t, keep), inputs) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_auto_runs_numba_once_compiled_and_chunked_for_other_dtypes():
    cpu_numba.warm_up(torch.float64)
    assert registry.resolve("ssd", "auto", "cpu").name == "numba"
    (x, delta, A, B, C, h0), _ = kernel_inputs(l=20)
    opts = dict(chunk_size=8, initial_state=h0, return_final_state=True)
    auto, numba = ssd(x, delta, A, B, C, **opts), ssd(x, delta, A, B, C, **opts, backend="numba")
    for a, b in zip(auto, numba, strict=True):
        assert torch.equal(a, b)
    half = [t.detach().bfloat16() for t in (x, delta, A, B, C, h0)]
    y = ssd(*half[:5], chunk_size=8, initial_state=half[5])  # chunked: bfloat16 runs
    assert y.dtype == torch.bfloat16


def test_numba_with_another_dtype_is_a_clear_error():
    (x, delta, A, B, C, _), _ = kernel_inputs(l=4)
    half = [t.detach().bfloat16() for t in (x, delta, A, B, C)]
    with pytest.raises(ValueError, match="backend 'numba' of 'ssd' takes float32 or float64"):
        ssd(*half, backend="numba")


def test_mamba2_layer_with_numba_matches_ref_including_parameter_gradients():
    torch.manual_seed(0)
    m = Mamba2(8, d_state=4, d_conv=3, expand=2, headdim=4, ngroups=2, chunk_size=4)
    m = m.double()
    x = randn(2, 37, 8, seed=3, requires_grad=True)
    outs = {}
    for backend in ("numba", "ref"):
        m.backend = backend
        m.zero_grad(set_to_none=True)
        y, state = m(x, return_state=True)
        (gx,) = torch.autograd.grad((y * randn(*y.shape, seed=4)).sum(), x, retain_graph=True)
        y.square().sum().backward()
        outs[backend] = (y, state.ssm, gx, *(p.grad for p in m.parameters()))
    for a, b in zip(outs["numba"], outs["ref"], strict=True):
        assert_close(a, b)
