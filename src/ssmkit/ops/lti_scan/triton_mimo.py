"""Triton kernel of the MIMO diagonal LTI scan (S5, LRU): the recurrence over the n modes.

A MIMO system has one state x (n,) per batch item, driven by all h channels. Its input
injection B_bar u_t (b, l, h) x (h, n) and readout C x_t (b, l, n) x (n, h) are dense matrix
products that the launcher (:mod:`.triton_backend`) leaves to the GEMM library: they run at
full matrix-unit speed there, whereas inside a sequential kernel they would be one
matrix-vector product per step. What is sequential, and what this kernel fuses into one
pass over time with the state in registers, is the diagonal recurrence between them:

    x_t = A_bar x_{t-1} + v_t                 (t = 0 .. l-1, x_{-1} = x0; v_t = B_bar u_t)
    g_t = conj(A_bar) g_{t+1} + v_t           (REVERSE: t = l-1 .. 0, g_l = 0)

The second is the adjoint of the first (PyTorch's convention for complex gradients,
g = dL/dRe x + i dL/dIm x, with v_t = dL/dx_t through the readout): the backward runs the same
kernel in reverse. Triton has no complex dtype: complex tensors arrive as interleaved
(real, imaginary) float pairs (``torch.view_as_real``). Each program owns ``BLOCK_N`` modes of
one batch item; b * n / BLOCK_N programs run in parallel.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Modes per program: S5 uses n = 64 .. 512 modes; 64 complex modes are 128 values, one per
# thread of the default 4 warps, so a program streams 512 contiguous bytes per float32 step.
# Not tuned on a GPU yet.
BLOCK_N = 64


@triton.jit
def diagonal_scan_kernel(
    a_ptr, v_ptr, x0_ptr, out_ptr,  # A_bar (n, 2); v, out (b, l, n, 2); x0 (b, n, 2)
    L, N,
    REVERSE: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (b, cdiv(n, BLOCK_N)): out_t = x_t (forward) or g_t (REVERSE, x0 unused)."""
    pid_b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) modes
    mask = k < N
    ar = tl.load(a_ptr + 2 * k, mask=mask, other=0.0)
    ai = tl.load(a_ptr + 2 * k + 1, mask=mask, other=0.0)
    if REVERSE:
        ai = -ai  # conj(A_bar)
        xr = tl.zeros((BLOCK_N,), dtype=ar.dtype)
        xi = tl.zeros((BLOCK_N,), dtype=ar.dtype)
    else:
        xr = tl.load(x0_ptr + pid_b * 2 * N + 2 * k, mask=mask, other=0.0)
        xi = tl.load(x0_ptr + pid_b * 2 * N + 2 * k + 1, mask=mask, other=0.0)
    for s in range(L):
        t = (L - 1 - s) if REVERSE else s
        at = (pid_b * L + t) * 2 * N + 2 * k  # (BLOCK_N,) offsets of the real parts
        vr = tl.load(v_ptr + at, mask=mask, other=0.0)
        vi = tl.load(v_ptr + at + 1, mask=mask, other=0.0)
        xr, xi = ar * xr - ai * xi + vr, ar * xi + ai * xr + vi
        tl.store(out_ptr + at, xr, mask=mask)
        tl.store(out_ptr + at + 1, xi, mask=mask)
