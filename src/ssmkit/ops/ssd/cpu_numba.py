"""Fused CPU SSD (numba): the recurrence of :mod:`.ref` walked once per head, no chunks.

Mamba-2's decay is one scalar per head and step, so the sequential recurrence costs one exp
and 2 p n multiply-adds per head and step (h = a h + x B^T, y = h C): fewer operations than
the chunked algorithm at any chunk size (its intra-chunk products grow with the chunk, its
state products cost the same 2 p n), and no (t, t) decay matrices. A head's state is a (p, n)
array (32 KiB for p = 64, n = 128 in float32, in the L1/L2 cache); the inner loops run over
n with B_t and C_t as the other operand, so they vectorise, and the sums over n (y, dL/dx)
stay in registers (the loops: :mod:`.numba_steps`). Rows of the state go ``ROWS`` at a
time: B_t, C_t and the n-long gradient sums are loaded and stored once per block of rows
instead of once per row (the loops were bound by loads and stores, not arithmetic). The
helpers (vectorisable 2^x, threading layer, launch lock, warm-up) are those of the Mamba
kernels, :mod:`ssmkit.ops.selective_scan.cpu_numba`.

Steps go two per sweep over the state (rows two at a time then, so that the accumulators
and the broadcast scalars of both steps stay in registers): the state is loaded and stored
once per two steps, and an odd last step takes the one-step loops (rows ``ROWS`` at a time).

Forward: each (batch, head) pair walks the sequence once, writing y + D x (the skip inside
the kernel: no (b, l, h, p) temporaries); nothing else is stored. Backward, two passes per
head, no stored states. Only dC needs the states (dC_t = h_t^T dy_t): the first pass walks
forward from h0 recomputing them and sums dC; dy_t . (h_t C_t), which the decay's gradient
needs, is dy_t . (y_t - D x_t), read from the saved output. The second walks back carrying
G = dL/dh (G_{t-1} = a_t (G_t + dy_t C_t^T)), which gives dx, dB, dD and, with no state, the
decay's gradient: with s_t the running sum of log a, u = delta x and du = dL/du,
dL/ds_t = dy_t . (h_t C_t) - u_t . du_t (+ dlast . last at the end; the SSD paper's
row-minus-column identity for d(cumsum)), so dL/d(log a_t) = sum over t' >= t of it, one
running float64 sum per head. dB and dC are summed per block of heads into separate buffers
that are then added in a fixed order (the gradients are the same bit for bit on every run).
At (b, l, h, p, n) = (4, 1024, 8, 64, 128), float32, 1 thread, CPU time on a shared machine:
the former chunk-checkpoint backward (states every 32 steps, a chunk's states recomputed
into a buffer and read back) took forward 38 ms, backward 125 ms; one step per sweep with
no stored states 28 / 74 ms; two steps per sweep 25 / 65 ms. Tiles of 16 rows walked
through the whole sequence (state in L1) measured slower (33 / 105 ms): B_t, C_t, dB_t,
dC_t are then re-read per tile. Storing the state entering every 64-step chunk and taking dC
from batched matmuls (the chunked algorithm's backward products) instead of the first pass
measured no faster (74 ms): the matmuls cost what the pass did.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ssmkit.ops import numba_compile
from ssmkit.ops.selective_scan import cpu_numba as mamba_kernels
from ssmkit.ops.ssd.numba_steps import (
    _back_one,
    _back_two,
    _dstate_one,
    _dstate_two,
    _fwd_one,
    _fwd_two,
)

try:
    from numba import njit, prange

    from ssmkit.ops.selective_scan.cpu_numba import _exp2
except ImportError:  # the backend is optional (extra "fast")
    njit = None

Tensor = torch.Tensor
LOG2E = mamba_kernels.LOG2E
DTYPES = (torch.float32, torch.float64)


def available() -> bool:
    return njit is not None


def _fwd(x, delta, At, B, C, Dp, h0, keep, y, hlast):  # pragma: no cover - compiled
    Bsz, L, H = x.shape[:3]
    G = B.shape[2]
    for q in prange(Bsz * H):
        b = q // H
        hd = q % H
        g = hd // (H // G)
        at = At[hd]
        Dh = Dp[hd]
        S = h0[b, hd].copy()
        t = 0
        while t + 1 < L:  # steps in pairs
            d1 = delta[b, t, hd]
            d2 = delta[b, t + 1, hd]
            a1 = keep[b, t] * _exp2(d1 * at)
            a2 = keep[b, t + 1] * _exp2(d2 * at)
            _fwd_two(
                S, a1, d1, B[b, t, g], C[b, t, g], x[b, t, hd], y[b, t, hd],
                a2, d2, B[b, t + 1, g], C[b, t + 1, g], x[b, t + 1, hd], y[b, t + 1, hd], Dh,
            )  # fmt: skip
            t += 2
        if t < L:
            dl = delta[b, t, hd]
            a = keep[b, t] * _exp2(dl * at)
            _fwd_one(S, a, dl, B[b, t, g], C[b, t, g], x[b, t, hd], y[b, t, hd], Dh)
        hlast[b, hd] = S


def _bwd(
    x, delta, A, At, B, C, Dp, keep, bounds, h0, hlast, y, dy, dhlast, dx, ddelta, dA_bh, dD_bh,
    dB_blk, dC_blk, dh0,
):  # pragma: no cover - compiled  # fmt: skip
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    NB = bounds.shape[0] - 1
    zero = x.dtype.type(0)
    for q in prange(Bsz * NB):
        b = q // NB
        blk = q % NB
        for hd in range(bounds[blk], bounds[blk + 1]):
            g = hd // (H // G)
            at = At[hd]
            Dh = Dp[hd]
            # pass 1, forward in time: the states again, for dC_t = h_t^T dy_t
            S = h0[b, hd].copy()  # (p, n)
            t = 0
            while t + 1 < L:
                d1 = delta[b, t, hd]
                d2 = delta[b, t + 1, hd]
                a1 = keep[b, t] * _exp2(d1 * at)
                a2 = keep[b, t + 1] * _exp2(d2 * at)
                _dstate_two(
                    S, a1, d1, B[b, t, g], x[b, t, hd], dy[b, t, hd], dC_blk[blk, b, t, g],
                    a2, d2, B[b, t + 1, g], x[b, t + 1, hd], dy[b, t + 1, hd],
                    dC_blk[blk, b, t + 1, g],
                )  # fmt: skip
                t += 2
            if t < L:
                dl = delta[b, t, hd]
                a = keep[b, t] * _exp2(dl * at)
                _dstate_one(S, a, dl, B[b, t, g], x[b, t, hd], dy[b, t, hd], dC_blk[blk, b, t, g])
            # pass 2, backward in time: G = dL/dh carried back gives dx, dB and, with no
            # state, the decay's gradient
            Gr = dhlast[b, hd].copy()  # (p, n)
            dDh = np.zeros(P, dtype=x.dtype)  # dL/dD of this item and head
            dA_acc = 0.0
            dlog_a = 0.0  # dL/d(log a_t), float64: a long sum whose terms partly cancel
            for i in range(P):
                for k in range(N):
                    dlog_a += Gr[i, k] * hlast[b, hd, i, k]
            t = L - 1
            while t >= 0:
                two = t >= 1
                dl = delta[b, t, hd]
                a = keep[b, t] * _exp2(dl * at)
                dxu = zero  # u_t . du_t / delta_t
                dxu1 = zero  # the same for step t - 1
                d1 = dl
                if two:
                    d1 = delta[b, t - 1, hd]
                    a1 = keep[b, t - 1] * _exp2(d1 * at)
                    dxu, dxu1 = _back_two(
                        Gr, a, dl, B[b, t, g], C[b, t, g], dB_blk[blk, b, t, g], x[b, t, hd],
                        dy[b, t, hd], dx[b, t, hd], a1, d1, B[b, t - 1, g], C[b, t - 1, g],
                        dB_blk[blk, b, t - 1, g], x[b, t - 1, hd], dy[b, t - 1, hd],
                        dx[b, t - 1, hd], Dh,
                    )  # fmt: skip
                else:
                    dxu = _back_one(
                        Gr, a, dl, B[b, t, g], C[b, t, g], dB_blk[blk, b, t, g], x[b, t, hd],
                        dy[b, t, hd], dx[b, t, hd], Dh,
                    )  # fmt: skip
                for s in range(t, t - 2 if two else t - 1, -1):  # the scalars, t first
                    ds = dl if s == t else d1
                    dyt = dy[b, s, hd]
                    xt = x[b, s, hd]
                    yt = y[b, s, hd]
                    ydy = zero  # dy_s . (y_s - D x_s): the SSM part of y, from the output
                    for i in range(P):
                        dDh[i] += dyt[i] * xt[i]
                        ydy += dyt[i] * (yt[i] - Dh[i] * xt[i])
                    du = dxu if s == t else dxu1
                    dlog_a += ydy - ds * du
                    ddelta[b, s, hd] = dlog_a * A[hd] + du
                    dA_acc += dlog_a * ds
                t -= 2 if two else 1
            dh0[b, hd] = Gr
            dA_bh[b, hd] = dA_acc
            dD_bh[b, hd] = dDh


if njit is not None:
    _fwd = njit(parallel=True, fastmath=True, cache=True)(_fwd)
    _bwd = njit(parallel=True, fastmath=True, cache=True)(_bwd)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def fused_forward(x, delta, A, B, C, Dp, h0, keep):
    """Launch the forward kernel (no autograd); every array must be contiguous.

    Args:
        x: (b, l, h, p). delta: (b, l, h). A: (h,). B, C: (b, l, g, n). Dp: (h, p) skip.
        h0: (b, h, p, n). keep: (b, l).

    Returns:
        y (b, l, h, p), the skip D x included, and the final state (b, h, p, n).
    """
    b, L, h, p = x.shape
    n = B.shape[3]
    mamba_kernels._threads()
    dtype = _np(x).dtype
    y = np.empty((b, L, h, p), dtype)
    hlast = np.empty((b, h, p, n), dtype)
    At = (_np(A).astype(np.float64) * LOG2E).astype(dtype)
    args = (_np(x), _np(delta), At, _np(B), _np(C), _np(Dp), _np(h0), _np(keep))
    with mamba_kernels._LAUNCH:
        _fwd(*args, y, hlast)
    return torch.from_numpy(y), torch.from_numpy(hlast)


def fused_backward(x, delta, A, B, C, Dp, h0, keep, last, y, dy, dlast):
    """Launch the backward kernel (y: the forward's output, D x included): dx, ddelta, dA,
    dB, dC, dD (h, p) and dh0, in the shapes of x, delta, A, B, C, Dp and h0 (b, h, p, n)."""
    b, L, h, p = x.shape
    dtype = _np(x).dtype
    blocks = min(h, mamba_kernels._threads() * mamba_kernels.BLOCKS_PER_THREAD)
    bounds = np.array([h * i // blocks for i in range(blocks + 1)], dtype=np.int64)
    dx = np.empty((b, L, h, p), dtype)
    ddelta = np.empty((b, L, h), dtype)
    dA_bh = np.empty((b, h), dtype)
    dD_bh = np.empty((b, h, p), dtype)
    dB_blk = np.zeros((blocks, *B.shape), dtype)
    dC_blk = np.zeros((blocks, *C.shape), dtype)
    dh0 = np.empty((b, h, p, B.shape[3]), dtype)
    At = (_np(A).astype(np.float64) * LOG2E).astype(dtype)
    with mamba_kernels._LAUNCH:
        _bwd(
            _np(x), _np(delta), _np(A), At, _np(B), _np(C), _np(Dp), _np(keep), bounds,
            _np(h0), _np(last), _np(y), _np(dy), _np(dlast), dx, ddelta, dA_bh, dD_bh, dB_blk,
            dC_blk, dh0,
        )  # fmt: skip
    t = torch.from_numpy
    sums = (t(a).sum(0) for a in (dA_bh, dB_blk, dC_blk, dD_bh))
    dA, dB, dC, dD = sums  # fixed-order sums over items and blocks
    return t(dx), t(ddelta), dA, dB, dC, dD, t(dh0)


class _SSDNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, Dp, h0, keep):
        # contiguous once: x, B and C are often views of one projection (Mamba2's xBC); the
        # backward reuses these copies instead of making them again
        x, delta, B, C, Dp, h0, keep = (t.contiguous() for t in (x, delta, B, C, Dp, h0, keep))
        y, last = fused_forward(x, delta, A, B, C, Dp, h0, keep)
        ctx.save_for_backward(x, delta, A, B, C, Dp, h0, keep, last, y)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):
        x, delta, A, B, C, Dp, h0, keep, last, y = ctx.saved_tensors
        dx, ddelta, dA, dB, dC, dD, dh0 = fused_backward(
            x, delta, A, B, C, Dp, h0, keep, last, y, dy.contiguous(), dlast.contiguous()
        )
        return dx, ddelta, dA, dB, dC, dD, dh0, None


def ssd_numba(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
    chunk_size: int = 64,
    D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.ssd.ref.ssd_ref` (CPU, float32/float64);
    differentiable once. ``chunk_size`` is ignored: the kernels walk the recurrence itself.

    ``D`` (h,) or (h, p): the skip D x added inside the kernels (y + D x, the same result as
    adding it afterwards, without the (b, l, h, p) temporaries); None adds nothing.
    """
    if keep is None:
        keep = x.new_ones(x.shape[:2])
    h, p = x.shape[2:]
    if D is None:
        Dp = x.new_zeros(h, p)
    else:
        Dp = (D.unsqueeze(-1) if D.ndim == 1 else D).to(x.dtype).expand(h, p)  # (h, p)
    return _SSDNumba.apply(x, delta, A, B, C, Dp, h0, keep.to(x.dtype))


# Cold start: compiling both kernels for one dtype takes tens of seconds; cache=True keeps
# them on disk. ``ssd(backend="auto")`` runs the chunked backend until they are ready.


def ready(dtype: torch.dtype) -> bool:
    """Whether the forward and backward kernels for ``dtype`` are compiled (or loaded)."""
    return njit is not None and numba_compile.compiled_for(dtype, (_fwd, _bwd))


def warm_up(dtype: torch.dtype = torch.float32, wait: bool = True) -> None:
    """Compile (or load from the cache) the kernels for ``dtype`` by running a tiny problem;
    ``wait=False`` does it in a background thread and returns at once."""
    if njit is None or ready(dtype):
        return
    numba_compile.compile_once(("ssd", dtype), lambda: _tiny_run(dtype), wait)


def _tiny_run(dtype: torch.dtype) -> None:
    x = torch.ones(1, 2, 1, 1, dtype=dtype, requires_grad=True)
    B = torch.ones(1, 2, 1, 1, dtype=dtype)
    y, _ = ssd_numba(x, x.detach()[..., 0], -torch.ones(1, dtype=dtype), B, B,
                     torch.zeros(1, 1, 1, 1, dtype=dtype))  # fmt: skip
    y.sum().backward()
