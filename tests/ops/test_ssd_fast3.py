"""The numba SSD kernels walking two steps per sweep over the state (and one for an odd last
step), with rows in pairs (and one left over), and the backward reading dy . (y - D x) from
the saved output: outputs, final states and all gradients against the loop definition."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.ssd import cpu_numba
from ssmkit.testing import assert_close, grads, randn
from tests.ops.test_ssd_fast2 import inputs_with_skip, numba_with_skip, ref_with_skip

pytestmark = pytest.mark.skipif(not cpu_numba.available(), reason="numba is not installed")

CASES = [(L, p) for L in (1, 2, 3, 7, 63) for p in (1, 2, 3, 8)] + [(1001, 5)]


@pytest.mark.parametrize(("L", "p"), CASES)
def test_two_step_kernels_match_ref_outputs_states_and_all_gradients(L, p):
    """Odd and even lengths (a single last step or none), odd and even p (a row left over or
    none), resets on both steps of a pair, two groups, an initial state and the skip D."""
    resets = [(0, t) for t in (L // 2, L // 2 + 1) if 0 < t < L] + [(1, L - 1)] * (L > 1)
    inputs, keep = inputs_with_skip(l=L, p=p, d_shape="hp", seed=L * 10 + p, resets=resets)
    got, want = numba_with_skip(keep)(*inputs), ref_with_skip(keep)(*inputs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)
    got, want = grads(numba_with_skip(keep), inputs), grads(ref_with_skip(keep), inputs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize(("L", "p"), [(6, 3), (5, 2)])
def test_two_step_kernels_gradcheck(L, p):
    inputs, keep = inputs_with_skip(l=L, h=2, p=p, n=3, g=2, seed=L, resets=[(1, 3)])
    assert torch.autograd.gradcheck(numba_with_skip(keep), inputs)


def test_float32_decay_gradient_with_a_large_skip():
    """dy . (y - D x) in float32 when D x dominates y: all gradients stay close to float64."""
    inputs, keep = inputs_with_skip(b=2, l=200, h=4, p=8, n=16, g=1, seed=3)
    with torch.no_grad():
        inputs[-1].fill_(20.0)  # D
    dy, dlast = randn(2, 200, 4, 8, seed=4), randn(2, 4, 8, 16, seed=5)

    def gradients(dtype):
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
        y, last = numba_with_skip(keep.to(dtype))(*leaves)
        return torch.autograd.grad((y, last), leaves, (dy.to(dtype), dlast.to(dtype)))

    for a, b in zip(gradients(torch.float32), gradients(torch.float64), strict=True):
        assert_close(a.double(), b, rtol=1e-3, atol=1e-3)
