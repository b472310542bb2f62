"""The MIMO LTI scan's Triton kernel (S5, LRU) against the reference, under Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported (the kernels are compiled or
interpreted as their module is imported), hence before everything else here.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

pytest.importorskip("triton")  # CI installs it (extra "gpu"): there this never skips

from ssmkit.ops import lti_scan
from ssmkit.ops.lti_scan import custom_op, triton_mimo
from ssmkit.testing import assert_close, randn
from tests.ops.test_custom_ops import ops_called


def mimo(kind, b=2, l=7, h=3, n=5, dtype=torch.float64, seed=0):
    """(u, A_bar (n,), B_bar (n, h), C (h, n), x0 (b, n)) and conj of a stable system:
    "complex" (S5: conjugate pairs), "lru" (complex, y = Re(C x)) or "real" (real modes)."""
    g = torch.Generator().manual_seed(seed)
    radius = 0.5 + 0.49 * torch.rand(n, generator=g, dtype=dtype)
    if kind == "real":
        A, pdtype = radius * torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0), dtype
    else:
        A = torch.polar(radius, 3 * torch.rand(n, generator=g, dtype=dtype))
        pdtype = A.dtype
    u = randn(b, l, h, dtype=dtype, seed=seed + 1)
    B = randn(n, h, dtype=pdtype, seed=seed + 2)
    C = randn(h, n, dtype=pdtype, seed=seed + 3)
    x0 = randn(b, n, dtype=pdtype, seed=seed + 4)
    return [u, A.to(pdtype), B, C, x0], kind == "complex"


def outputs_and_grads(backend, inputs, conj, lengths=None):
    """(y, x_last) and the gradients of all five inputs from a fixed random projection."""
    xs = [x.clone().requires_grad_(True) for x in inputs]
    y, h = lti_scan(
        *xs[:4], conj=conj, initial_state=xs[4], return_final_state=True, lengths=lengths,
        backend=backend,
    )  # fmt: skip
    total = (y * randn(*y.shape, dtype=y.dtype, seed=11)).sum()
    w = randn(*h.shape, dtype=h.dtype, seed=12)
    total = total + ((h * w.conj()).real if h.is_complex() else h * w).sum()
    return y, h, torch.autograd.grad(total, xs)


def compare(inputs, conj, lengths=None):
    y_ref, h_ref, g_ref = outputs_and_grads("ref", inputs, conj, lengths)
    with ops_called() as called:
        y, h, g = outputs_and_grads("triton", inputs, conj, lengths)
    assert {"ssmkit::lti_scan_mimo_triton", "ssmkit::lti_scan_mimo_triton_bwd"} <= called
    assert y.dtype == y_ref.dtype and h.dtype == h_ref.dtype
    assert_close(y, y_ref, msg="y")
    assert_close(h, h_ref, msg="final state")
    for name, a, r in zip(["u", "A_bar", "B_bar", "C", "x0"], g, g_ref, strict=True):
        assert a.dtype == r.dtype
        assert_close(a, r, msg=f"gradient of {name}")


@pytest.mark.parametrize("kind", ["complex", "lru", "real"])
@pytest.mark.parametrize("L", [1, 7, 63])
def test_matches_ref(kind, L):
    """Odd n = 5 and h = 3; 63 steps; right-padded items (state from the middle, the first)."""
    inputs, conj = mimo(kind, b=3, l=L, seed=L)
    compare(inputs, conj, lengths=torch.tensor([L, max(1, L // 2), 1]))


def test_modes_across_program_blocks_float32(monkeypatch):
    """n = 37 modes over three programs of 16 (one partial); float32 (complex64 states)."""
    monkeypatch.setattr(triton_mimo, "BLOCK_N", 16)
    inputs, conj = mimo("complex", b=2, l=9, h=5, n=37, dtype=torch.float32, seed=3)
    compare(inputs, conj)


@pytest.mark.parametrize("kind", ["complex", "real"])
def test_gradcheck_float64(kind):
    """The custom op's registered autograd, all five differentiable inputs."""
    inputs, conj = mimo(kind, b=2, l=4, h=2, n=3, seed=5)
    last = torch.tensor([3, 1])
    xs = [x.clone().requires_grad_(True) for x in inputs]

    def f(*xs):
        return custom_op.lti_scan_mimo_triton(*xs, last, 2.0 if conj else 1.0)

    assert torch.autograd.gradcheck(f, xs, fast_mode=True)  # few interpreted forwards
