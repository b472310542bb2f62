"""The numba SSD kernels with the skip D x folded in, and the state-free two-pass backward:
outputs, final states and all gradients against the loop definition plus D x."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops import ssd
from ssmkit.ops.ssd import cpu_numba
from ssmkit.ops.ssd.ref import ssd_ref
from ssmkit.testing import assert_close, grads, randn

pytestmark = pytest.mark.skipif(not cpu_numba.available(), reason="numba is not installed")


def inputs_with_skip(b=2, l=9, h=4, p=5, n=3, g=2, d_shape="h", seed=0, resets=()):
    """(x, delta, A, B, C, h0, D) float64 requiring grad, and keep (b, l) (0 at ``resets``)."""
    x = randn(b, l, h, p, seed=seed)
    delta = F.softplus(randn(b, l, h, seed=seed + 1) - 1)
    A = -torch.rand(h, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) - 0.1
    B, C = randn(b, l, g, n, seed=seed + 2), randn(b, l, g, n, seed=seed + 3)
    h0 = randn(b, h, p, n, seed=seed + 4)
    D = randn(h, seed=seed + 5) if d_shape == "h" else randn(h, p, seed=seed + 5)
    keep = torch.ones(b, l, dtype=torch.float64)
    for i, t in resets:
        keep[i, t] = 0.0
    return [t.requires_grad_(True) for t in (x, delta, A, B, C, h0, D)], keep


def numba_with_skip(keep):
    def f(x, delta, A, B, C, h0, D):
        return cpu_numba.ssd_numba(x, delta, A, B, C, h0, keep, D=D)

    return f


def ref_with_skip(keep):
    def f(x, delta, A, B, C, h0, D):
        y, last = ssd_ref(x, delta, A, B, C, h0, keep)
        return y + (D.unsqueeze(-1) if D.ndim == 1 else D) * x, last

    return f


@pytest.mark.parametrize("L", [1, 7, 63, 1000])
@pytest.mark.parametrize(("p", "d_shape"), [(5, "h"), (9, "hp"), (3, "h")])
def test_kernel_with_skip_matches_ref_outputs_states_and_all_gradients(L, p, d_shape):
    """p = 5 and 9: blocks of four rows plus a remainder; p = 3: the remainder only."""
    steps = L if p == 5 else min(L, 63)  # the long case once
    resets = [(0, steps // 2), (1, steps - 1)] if steps > 1 else []
    inputs, keep = inputs_with_skip(l=steps, p=p, d_shape=d_shape, seed=L + p, resets=resets)
    got, want = numba_with_skip(keep)(*inputs), ref_with_skip(keep)(*inputs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)
    got, want = grads(numba_with_skip(keep), inputs), grads(ref_with_skip(keep), inputs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("d_shape", ["h", "hp"])
def test_kernel_with_skip_gradcheck(d_shape):
    """float64 gradcheck of the autograd Function with D: groups, resets, h0, odd p and n."""
    inputs, keep = inputs_with_skip(b=2, l=11, h=2, p=5, n=3, resets=[(1, 4)], d_shape=d_shape)
    assert torch.autograd.gradcheck(numba_with_skip(keep), inputs)


def test_without_skip_is_the_plain_recurrence():
    inputs, keep = inputs_with_skip(l=12)
    got = cpu_numba.ssd_numba(*inputs[:6], keep)
    want = ssd_ref(*inputs[:6], keep)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


def test_public_ssd_with_numba_and_skip_matches_ref_at_mamba2_head_shape():
    """p = 64 (sixteen row blocks), n = 16, ngroups 2, D per head, z gate, dt_softplus."""
    b, l, h, p, n, g = 1, 40, 4, 64, 16, 2
    x, z = randn(b, l, h, p, seed=1), randn(b, l, h, p, seed=2)
    dt, bias = randn(b, l, h, seed=3) - 1, randn(h, seed=4)
    A = -torch.linspace(1.0, 4.0, h, dtype=torch.float64)
    B, C, D = randn(b, l, g, n, seed=5), randn(b, l, g, n, seed=6), randn(h, seed=7)
    h0 = randn(b, h, p, n, seed=8)
    inputs = [t.requires_grad_(True) for t in (x, z, dt, bias, A, B, C, D, h0)]

    def run(backend):
        def f(x, z, dt, bias, A, B, C, D, h0):
            return ssd(
                x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0,
                return_final_state=True, backend=backend,
            )  # fmt: skip

        return f

    for a, b_ in zip(run("numba")(*inputs), run("ref")(*inputs), strict=True):
        assert_close(a, b_)
    for a, b_ in zip(grads(run("numba"), inputs), grads(run("ref"), inputs), strict=True):
        assert_close(a, b_)


def test_skip_gradients_are_the_same_on_every_run():
    inputs, keep = inputs_with_skip(l=30, resets=[(0, 10)])
    first, second = (grads(numba_with_skip(keep), inputs) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
