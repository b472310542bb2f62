"""Fused CPU SSD (numba): the recurrence of :mod:`.ref` walked once per head, no chunks.

Mamba-2's decay is one scalar per head and step, so the sequential recurrence costs one exp
and 2 p n multiply-adds per head and step (h = a h + x B^T, y = h C): fewer operations than
the chunked algorithm at any chunk size (its intra-chunk products grow with the chunk, its
state products cost the same 2 p n), and no (t, t) decay matrices. A head's state is a (p, n)
array (32 KiB for p = 64, n = 128 in float32, in the L1/L2 cache); the inner loops run over
n with B_t and C_t as the other operand, so they vectorise, and the sums over n (y, dL/dx)
stay in registers. Rows of the state go ``ROWS`` at a time: B_t, C_t and the n-long
gradient sums are loaded and stored once per block of rows instead of once per row (the
loops were bound by loads and stores, not arithmetic). The helpers (vectorisable 2^x,
threading layer, launch lock, warm-up) are those of the Mamba kernels,
:mod:`ssmkit.ops.selective_scan.cpu_numba`.

Forward: each (batch, head) pair walks the sequence once, writing y + D x (the skip inside
the kernel: no (b, l, h, p) temporaries); nothing else is stored. Backward, two passes per
head, no stored states. Only dC needs the states (dC_t = h_t^T dy_t): the first pass walks
forward from h0 recomputing them and sums dC, and per step dy_t . (h_t C_t) = C_t . dC_t of
this head. The second walks back carrying G = dL/dh (G_{t-1} = a_t (G_t + dy_t C_t^T)),
which gives dx, dB, dD and, with no state, the decay's gradient: with s_t the running sum of
log a, u = delta x and du = dL/du, dL/ds_t = dy_t . (h_t C_t) - u_t . du_t (+ dlast . last
at the end; the SSD paper's row-minus-column identity for d(cumsum)), so
dL/d(log a_t) = sum over t' >= t of it, one running float64 sum per head. dB and dC are
summed per block of heads into separate buffers that are then added in a fixed order (the
gradients are the same bit for bit on every run). Compared with the former chunk-checkpoint
backward (states every 32 steps, a chunk's states recomputed into a buffer and read back),
at (b, l, h, p, n) = (4, 1024, 8, 64, 128), float32, 1 thread: forward 38 -> 29 ms, backward
125 -> 78 ms (CPU time, shared machine). Tiles of 16 rows walked through the whole sequence
(state in L1) measured slower (33 / 105 ms): B_t, C_t, dB_t, dC_t are then re-read per tile.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ssmkit.ops.selective_scan import cpu_numba as mamba_kernels

try:
    import numba
    from numba import njit, prange

    from ssmkit.ops.selective_scan.cpu_numba import _exp2
except ImportError:  # the backend is optional (extra "fast")
    njit = None

Tensor = torch.Tensor
ROWS = 4  # rows of a head's state per inner loop (4 keeps AVX2's 16 registers busy, no spills)
LOG2E = mamba_kernels.LOG2E
DTYPES = (torch.float32, torch.float64)


def available() -> bool:
    return njit is not None


def _fwd(x, delta, At, B, C, Dp, h0, keep, y, hlast):
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    zero = x.dtype.type(0)
    for q in prange(Bsz * H):
        b = q // H
        hd = q % H
        g = hd // (H // G)
        at = At[hd]
        S = h0[b, hd].copy()
        for t in range(L):
            dl = delta[b, t, hd]
            a = keep[b, t] * _exp2(dl * at)
            Bt = B[b, t, g]
            Ct = C[b, t, g]
            xt = x[b, t, hd]
            yt = y[b, t, hd]
            Dh = Dp[hd]
            i = 0
            while i + ROWS <= P:
                u0 = xt[i] * dl
                u1 = xt[i + 1] * dl
                u2 = xt[i + 2] * dl
                u3 = xt[i + 3] * dl
                S0 = S[i]
                S1 = S[i + 1]
                S2 = S[i + 2]
                S3 = S[i + 3]
                c0 = zero
                c1 = zero
                c2 = zero
                c3 = zero
                for k in range(N):
                    bk = Bt[k]
                    ck = Ct[k]
                    v0 = a * S0[k] + u0 * bk
                    v1 = a * S1[k] + u1 * bk
                    v2 = a * S2[k] + u2 * bk
                    v3 = a * S3[k] + u3 * bk
                    S0[k] = v0
                    S1[k] = v1
                    S2[k] = v2
                    S3[k] = v3
                    c0 += ck * v0
                    c1 += ck * v1
                    c2 += ck * v2
                    c3 += ck * v3
                yt[i] = c0 + Dh[i] * xt[i]  # the skip D x
                yt[i + 1] = c1 + Dh[i + 1] * xt[i + 1]
                yt[i + 2] = c2 + Dh[i + 2] * xt[i + 2]
                yt[i + 3] = c3 + Dh[i + 3] * xt[i + 3]
                i += ROWS
            while i < P:
                u = xt[i] * dl
                Si = S[i]
                acc = zero
                for k in range(N):
                    v = a * Si[k] + u * Bt[k]
                    Si[k] = v
                    acc += Ct[k] * v
                yt[i] = acc + Dh[i] * xt[i]
                i += 1
        hlast[b, hd] = S


def _bwd(
    x, delta, A, At, B, C, Dp, keep, bounds, h0, hlast, dy, dhlast, dx, ddelta, dA_bh, dD_bh,
    dB_blk, dC_blk, dh0,
):  # pragma: no cover - compiled  # fmt: skip
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    NB = bounds.shape[0] - 1
    zero = x.dtype.type(0)
    for q in prange(Bsz * NB):
        b = q // NB
        blk = q % NB
        ydy = np.empty(L, dtype=x.dtype)  # dy_t . (y_t - D x_t), the SSM part of y
        for hd in range(bounds[blk], bounds[blk + 1]):
            g = hd // (H // G)
            at = At[hd]
            Dh = Dp[hd]
            # pass 1, forward in time: the states again, for dC_t = h_t^T dy_t (and
            # dy_t . y_t = C_t . (h_t^T dy_t) of this head, one more product per n entries)
            S = h0[b, hd].copy()  # (p, n)
            for t in range(L):
                dl = delta[b, t, hd]
                a = keep[b, t] * _exp2(dl * at)
                Bt = B[b, t, g]
                Ct = C[b, t, g]
                dCt = dC_blk[blk, b, t, g]
                xt = x[b, t, hd]
                dyt = dy[b, t, hd]
                yy = zero
                i = 0
                while i + ROWS <= P:
                    u0 = xt[i] * dl
                    u1 = xt[i + 1] * dl
                    u2 = xt[i + 2] * dl
                    u3 = xt[i + 3] * dl
                    e0 = dyt[i]
                    e1 = dyt[i + 1]
                    e2 = dyt[i + 2]
                    e3 = dyt[i + 3]
                    S0 = S[i]
                    S1 = S[i + 1]
                    S2 = S[i + 2]
                    S3 = S[i + 3]
                    for k in range(N):
                        bk = Bt[k]
                        v0 = a * S0[k] + u0 * bk
                        v1 = a * S1[k] + u1 * bk
                        v2 = a * S2[k] + u2 * bk
                        v3 = a * S3[k] + u3 * bk
                        S0[k] = v0
                        S1[k] = v1
                        S2[k] = v2
                        S3[k] = v3
                        dc = e0 * v0 + e1 * v1 + e2 * v2 + e3 * v3
                        dCt[k] += dc
                        yy += dc * Ct[k]
                    i += ROWS
                while i < P:
                    u = xt[i] * dl
                    e = dyt[i]
                    Si = S[i]
                    for k in range(N):
                        v = a * Si[k] + u * Bt[k]
                        Si[k] = v
                        dCt[k] += e * v
                        yy += e * v * Ct[k]
                    i += 1
                ydy[t] = yy
            # pass 2, backward in time: G = dL/dh carried back gives dx, dB and, with no
            # state, the decay's gradient
            Gr = dhlast[b, hd].copy()  # (p, n)
            dDh = np.zeros(P, dtype=x.dtype)  # dL/dD of this item and head
            dA_acc = 0.0
            dlog_a = 0.0  # dL/d(log a_t), float64: a long sum whose terms partly cancel
            for i in range(P):
                for k in range(N):
                    dlog_a += Gr[i, k] * hlast[b, hd, i, k]
            for t in range(L - 1, -1, -1):
                dl = delta[b, t, hd]
                a = keep[b, t] * _exp2(dl * at)
                Bt = B[b, t, g]
                Ct = C[b, t, g]
                dBt = dB_blk[blk, b, t, g]
                xt = x[b, t, hd]
                dyt = dy[b, t, hd]
                dxt = dx[b, t, hd]
                dxu = zero  # u_t . du_t / delta_t
                i = 0
                while i + ROWS <= P:
                    e0 = dyt[i]
                    e1 = dyt[i + 1]
                    e2 = dyt[i + 2]
                    e3 = dyt[i + 3]
                    u0 = xt[i] * dl
                    u1 = xt[i + 1] * dl
                    u2 = xt[i + 2] * dl
                    u3 = xt[i + 3] * dl
                    G0 = Gr[i]
                    G1 = Gr[i + 1]
                    G2 = Gr[i + 2]
                    G3 = Gr[i + 3]
                    r0 = zero  # dL/du of the four rows
                    r1 = zero
                    r2 = zero
                    r3 = zero
                    for k in range(N):
                        bk = Bt[k]
                        ck = Ct[k]
                        g0 = G0[k] + e0 * ck  # dL/dh_t
                        g1 = G1[k] + e1 * ck
                        g2 = G2[k] + e2 * ck
                        g3 = G3[k] + e3 * ck
                        r0 += g0 * bk
                        r1 += g1 * bk
                        r2 += g2 * bk
                        r3 += g3 * bk
                        dBt[k] += g0 * u0 + g1 * u1 + g2 * u2 + g3 * u3
                        G0[k] = g0 * a
                        G1[k] = g1 * a
                        G2[k] = g2 * a
                        G3[k] = g3 * a
                    dxt[i] = r0 * dl + Dh[i] * e0
                    dxt[i + 1] = r1 * dl + Dh[i + 1] * e1
                    dxt[i + 2] = r2 * dl + Dh[i + 2] * e2
                    dxt[i + 3] = r3 * dl + Dh[i + 3] * e3
                    dxu += r0 * xt[i] + r1 * xt[i + 1] + r2 * xt[i + 2] + r3 * xt[i + 3]
                    i += ROWS
                while i < P:
                    e = dyt[i]
                    u = xt[i] * dl
                    Gi = Gr[i]
                    r = zero
                    for k in range(N):
                        gk = Gi[k] + e * Ct[k]
                        r += gk * Bt[k]
                        dBt[k] += gk * u
                        Gi[k] = gk * a
                    dxt[i] = r * dl + Dh[i] * e
                    dxu += r * xt[i]
                    i += 1
                for i in range(P):
                    dDh[i] += dyt[i] * xt[i]
                dlog_a += ydy[t] - dl * dxu
                ddelta[b, t, hd] = dlog_a * A[hd] + dxu
                dA_acc += dlog_a * dl
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


def fused_backward(x, delta, A, B, C, Dp, h0, keep, last, dy, dlast):
    """Launch the backward kernel: dx, ddelta, dA, dB, dC, dD (h, p) and dh0, in the shapes
    of x, delta, A, B, C, Dp and h0 (b, h, p, n)."""
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
            _np(h0), _np(last), _np(dy), _np(dlast), dx, ddelta, dA_bh, dD_bh, dB_blk, dC_blk,
            dh0,
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
        ctx.save_for_backward(x, delta, A, B, C, Dp, h0, keep, last)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):
        x, delta, A, B, C, Dp, h0, keep, last = ctx.saved_tensors
        dx, ddelta, dA, dB, dC, dD, dh0 = fused_backward(
            x, delta, A, B, C, Dp, h0, keep, last, dy.contiguous(), dlast.contiguous()
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
    if njit is None:
        return False
    want = numba.from_dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    return all(any(sig[0].dtype == want for sig in k.signatures) for k in (_fwd, _bwd))


def warm_up(dtype: torch.dtype = torch.float32, wait: bool = True) -> None:
    """Compile (or load from the cache) the kernels for ``dtype`` by running a tiny problem;
    ``wait=False`` does it in a background thread and returns at once."""
    if njit is None or ready(dtype):
        return
    mamba_kernels.compile_once(("ssd", dtype), lambda: _tiny_run(dtype), wait)


def _tiny_run(dtype: torch.dtype) -> None:
    x = torch.ones(1, 2, 1, 1, dtype=dtype, requires_grad=True)
    B = torch.ones(1, 2, 1, 1, dtype=dtype)
    y, _ = ssd_numba(x, x.detach()[..., 0], -torch.ones(1, dtype=dtype), B, B,
                     torch.zeros(1, 1, 1, 1, dtype=dtype))  # fmt: skip
    y.sum().backward()
