"""Fused CPU selective scan (numba): one pass over time per channel, nothing (b, l, d, n) kept.

Forward: each (batch, channel) pair walks the sequence once with its n-vector state in
registers, writing y and, every ``CHUNK`` steps, the state (the only thing stored:
(b, l / CHUNK, d, n)). Backward: per chunk, from the last, the states are recomputed from the
stored one and the gradient runs back through them. Channels are split in blocks across
threads; dB, dC and dA are summed per block or per batch item into separate buffers and
then added in a fixed order, so gradients are the same bit for bit on every run.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:
    import numba
    from numba import njit, prange
except ImportError:  # the backend is optional (extra "fast")
    numba = None

Tensor = torch.Tensor
CHUNK = 64  # steps between stored states
BLOCKS_PER_THREAD = 2


# 2^n for n = -126 .. 127, the scale of the float32 exp below
POW2 = np.array([2.0**i for i in range(-126, 128)], dtype=np.float32)
LOG2E = 1.4426950408889634
# (ln 2)^k / k!, k = 1 .. 7: Taylor series of 2^f on |f| <= 1/2 (error ~5e-9 relative)
C1, C2, C3, C4 = 0.6931471805599453, 0.2402265069591007, 0.05550410866482158, 0.009618129107628477
C5, C6, C7 = 0.0013333558146428443, 0.00015403530393381608, 1.525273380405984e-05


def available() -> bool:
    return numba is not None


def _exp(x, pow2):  # pragma: no cover - compiled
    """exp(x): libm for float64 (pow2 is None); for float32 a branch-free form the compiler
    vectorises, exp(x) = 2^n 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by its Taylor
    series (relative error about 1e-7, float32's own); below 2^-126 it returns 2^-126 2^f."""
    if pow2 is None:
        return math.exp(x)
    y = x * np.float32(LOG2E)
    y = min(max(y, np.float32(-126.0)), np.float32(127.0))
    n = math.floor(y + np.float32(0.5))
    f = y - n
    p = np.float32(C7)
    p = p * f + np.float32(C6)
    p = p * f + np.float32(C5)
    p = p * f + np.float32(C4)
    p = p * f + np.float32(C3)
    p = p * f + np.float32(C2)
    p = p * f + np.float32(C1)
    p = p * f + np.float32(1.0)
    return p * pow2[int(n) + 126]


def _fwd(u, delta, A, B, C, h0, keep, y, hlast, ckpt, T, pow2):  # pragma: no cover - compiled
    Bsz, L, D = u.shape
    N = A.shape[1]
    per_group = D // B.shape[2]
    for p in prange(Bsz * D):
        b = p // D
        d = p % D
        g = d // per_group
        h = np.empty(N, dtype=h0.dtype)
        for k in range(N):
            h[k] = h0[b, d, k]
        for t in range(L):
            if t % T == 0:
                for k in range(N):
                    ckpt[b, t // T, d, k] = h[k]
            dl = delta[b, t, d]
            x = dl * u[b, t, d]
            kt = keep[b, t]
            acc = 0.0
            for k in range(N):
                hk = kt * _exp(dl * A[d, k], pow2) * h[k] + x * B[b, t, g, k]
                h[k] = hk
                acc += C[b, t, g, k] * hk
            y[b, t, d] = acc
        for k in range(N):
            hlast[b, d, k] = h[k]


def _bwd(
    u, delta, A, B, C, keep, ckpt, dy, dhlast, du, ddelta, dA_b, dB_blk, dC_blk, dh0, T, NB, pow2
):  # pragma: no cover
    Bsz, L, D = u.shape
    N = A.shape[1]
    per_group = D // B.shape[2]
    n_chunks = ckpt.shape[1]
    width = (D + NB - 1) // NB
    for p in prange(Bsz * NB):
        b = p // NB
        blk = p % NB
        H = np.empty((T + 1, N), dtype=u.dtype)
        E = np.empty((T, N), dtype=u.dtype)
        gh = np.empty(N, dtype=u.dtype)
        for d in range(blk * width, min(D, (blk + 1) * width)):
            g = d // per_group
            for k in range(N):
                gh[k] = dhlast[b, d, k]
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * T
                steps = min(L, t0 + T) - t0
                for k in range(N):
                    H[0, k] = ckpt[b, c, d, k]
                for j in range(steps):  # recompute the chunk's states
                    t = t0 + j
                    dl = delta[b, t, d]
                    x = dl * u[b, t, d]
                    kt = keep[b, t]
                    for k in range(N):
                        a = kt * _exp(dl * A[d, k], pow2)
                        E[j, k] = a
                        H[j + 1, k] = a * H[j, k] + x * B[b, t, g, k]
                for j in range(steps - 1, -1, -1):
                    t = t0 + j
                    dl = delta[b, t, d]
                    ut = u[b, t, d]
                    x = dl * ut
                    gy = dy[b, t, d]
                    ddl = 0.0
                    dx = 0.0
                    for k in range(N):
                        ghk = gh[k] + gy * C[b, t, g, k]  # dL/dh_t
                        dC_blk[blk, b, t, g, k] += gy * H[j + 1, k]
                        da = ghk * H[j, k] * E[j, k]  # dL/d(dl A_k)
                        ddl += da * A[d, k]
                        dA_b[b, d, k] += da * dl
                        dx += ghk * B[b, t, g, k]
                        dB_blk[blk, b, t, g, k] += ghk * x
                        gh[k] = ghk * E[j, k]
                    ddelta[b, t, d] = ddl + dx * ut
                    du[b, t, d] = dx * dl
            for k in range(N):
                dh0[b, d, k] = gh[k]


if numba is not None:
    _exp = njit(fastmath=True, inline="always")(_exp)
    _fwd = njit(parallel=True, fastmath=True, cache=True)(_fwd)
    _bwd = njit(parallel=True, fastmath=True, cache=True)(_bwd)


def _table(dtype: np.dtype) -> np.ndarray | None:
    """The fast exp's scale table for float32 kernels; None selects libm's exp (float64)."""
    return POW2 if dtype == np.float32 else None


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _threads() -> int:
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


class NumbaSelectiveScan(torch.autograd.Function):
    """Autograd wrapper of the fused kernels (first derivatives only)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, keep):
        b, L, d = u.shape
        n = A.shape[1]
        _threads()
        y = np.empty((b, L, d), dtype=_np(u).dtype)
        hlast = np.empty((b, d, n), dtype=y.dtype)
        ckpt = np.empty((b, -(-L // CHUNK), d, n), dtype=y.dtype)
        args = (_np(u), _np(delta), _np(A), _np(B), _np(C), _np(h0), _np(keep))
        _fwd(*args, y, hlast, ckpt, CHUNK, _table(y.dtype))
        ctx.save_for_backward(u, delta, A, B, C, keep, torch.from_numpy(ckpt))
        return torch.from_numpy(y), torch.from_numpy(hlast)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhlast):
        u, delta, A, B, C, keep, ckpt = ctx.saved_tensors
        b, L, d = u.shape
        n = A.shape[1]
        dtype = _np(u).dtype
        dy = np.zeros((b, L, d), dtype) if dy is None else _np(dy)
        dhlast = np.zeros((b, d, n), dtype) if dhlast is None else _np(dhlast)
        blocks = min(d, _threads() * BLOCKS_PER_THREAD)
        du = np.empty((b, L, d), dtype)
        ddelta = np.empty((b, L, d), dtype)
        dh0 = np.empty((b, d, n), dtype)
        dA_b = np.zeros((b, d, n), dtype)
        dB_blk = np.zeros((blocks, *B.shape), dtype)
        dC_blk = np.zeros((blocks, *C.shape), dtype)
        _bwd(
            _np(u), _np(delta), _np(A), _np(B), _np(C), _np(keep), _np(ckpt), dy, dhlast,
            du, ddelta, dA_b, dB_blk, dC_blk, dh0, CHUNK, blocks, _table(dtype),
        )  # fmt: skip
        t = torch.from_numpy
        grads = (t(du), t(ddelta), t(dA_b).sum(0), t(dB_blk).sum(0), t(dC_blk).sum(0), t(dh0))
        return (*grads, None)


def selective_scan_numba(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.selective_scan.ref.selective_scan_ref` (CPU)."""
    if keep is None:
        keep = u.new_ones(u.shape[:2])
    return NumbaSelectiveScan.apply(u, delta, A, B, C, h0, keep.to(u.dtype))
