"""Fused CPU selective scan (numba): one pass over time per channel tile, no (b, l, d, n) kept.

The channels are cut into tiles of ``W`` neighbours of one group (the last tile of a group
may be narrower; its spare lanes run on zeros). A tile's state is an (n, W) array and every
inner loop runs over the W lanes with a compile-time trip count, so the compiler turns it into
whole SIMD vectors, with no horizontal sums in the recurrence. exp(delta A) is taken as
2^(delta A log2 e) with A log2 e computed once; in float32 by a branch-free polynomial that
vectorises (libm's exp does not). The rows of a (b, l, d) array lie d floats apart, too far
for the hardware prefetcher, so the kernels prefetch the tile's rows ``AHEAD`` steps ahead.

Forward: each (batch, tile) pair walks the sequence once, writing y and, every ``CHUNK``
steps, the state (the only thing stored: (b, l / CHUNK, n, d)). Backward: per chunk, from
the last, the states are recomputed from the stored one and the gradient runs back through
them. Tiles are split in blocks across threads; dB and dC are summed per block, dA per batch
item, into separate buffers that are then added in a fixed order, so the gradients are the
same bit for bit on every run.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import torch

from ssmkit.ops.numba_compile import compile_once, compiled_for
from ssmkit.ops.selective_scan import custom_op

try:
    import numba
    from llvmlite import binding as llvm
    from llvmlite import ir
    from numba import njit, prange
    from numba.core import cgutils, types
    from numba.extending import intrinsic, overload
    from numba.np.ufunc import parallel as numba_parallel
except ImportError:  # the backend is optional (extra "fast")
    numba = None

Tensor = torch.Tensor
CHUNK = 64  # steps between stored states
AHEAD = 4  # steps ahead to prefetch
# channels per tile: the inner loops run over them (four AVX-512 float32 vectors). At least
# 32: LLVM unrolls a 16-step loop fully and then leaves it scalar. 64 measured fastest.
W = 64
BLOCKS_PER_THREAD = 2

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# 2^f on |f| <= 1/2 by 1 + P1 f + ... + P5 f^5, fitted for the least maximal relative error
# (9e-8, about float32's half ulp; the Taylor series needs degree 7 for that); exp(0) = 1
P1, P2, P3 = 0.6931469775988572, 0.240222420851733, 0.055507337436918595
P4, P5 = 0.00967151264890368, 0.0013264727065037066


def available() -> bool:
    return numba is not None


def _exp2(y):  # pragma: no cover - compiled through the overload below
    """2^y inside the kernels: libm for float64, a vectorisable form for float32. The kernels
    take exp(delta A) as 2^(delta A log2 e), with A log2 e computed once, in float64."""
    return math.exp(y * LN2)


if numba is not None:
    # the intrinsic's name carries the pointer type: opaque pointers since LLVM 15
    PREFETCH = "llvm.prefetch.p0" if llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"

    @intrinsic
    def _pow2(typingctx, n):
        """2^n as float32 for an integer -126 <= n <= 127: the exponent bits set directly."""
        if not isinstance(n, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            biased = builder.trunc(builder.add(args[0], ir.Constant(args[0].type, 127)), i32)
            bits = builder.shl(biased, ir.Constant(i32, 23))
            return builder.bitcast(bits, ir.FloatType())

        return types.float32(n), codegen

    @intrinsic
    def _prefetch(typingctx, row):
        """Ask the cache for the first 128 bytes of a 1-D view (a tile's row, some steps ahead:
        see the module docstring)."""
        if not isinstance(row, types.Array):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            ptr = builder.bitcast(data, ir.IntType(8).as_pointer())
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, PREFETCH)
            hint = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            for offset in (0, 64):
                at = builder.gep(ptr, [ir.Constant(ir.IntType(64), offset)])
                builder.call(fn, [at, *hint])
            return context.get_dummy_value()

        return types.none(row), codegen

    @overload(_exp2, fastmath=True)
    def _exp2_overload(y):
        if y != types.float32:
            return lambda y: math.exp(y * LN2)

        def exp2_32(y):
            # 2^y = 2^m 2^f, m = round(y), |f| <= 1/2, 2^f by the polynomial: relative error
            # about 1e-7 (float32's own); below 2^-126 it returns 2^-126 2^f.
            y = min(max(y, np.float32(-126.0)), np.float32(127.0))
            m = np.rint(y)  # float32 (math.floor would give an int64)
            f = y - m
            p = np.float32(P5)
            p = p * f + np.float32(P4)
            p = p * f + np.float32(P3)
            p = p * f + np.float32(P2)
            p = p * f + np.float32(P1)
            p = p * f + np.float32(1.0)
            return p * _pow2(np.int32(m))

        return exp2_32


def _put(dst, src):  # pragma: no cover - compiled
    """dst[:w] = src (a tile's w <= W channels, a slice: no gather), zeros in the spare lanes."""
    w = src.shape[0]
    for i in range(w):
        dst[i] = src[i]
    for i in range(w, W):
        dst[i] = 0


def _fwd(u, delta, At, B, C, h0, keep, tiles, y, hlast, ckpt, T):  # pragma: no cover
    Bsz, L, _ = u.shape
    N = At.shape[0]
    n_tiles = tiles.shape[0]
    for p in prange(Bsz * n_tiles):
        b = p // n_tiles
        d0, w, g = tiles[p % n_tiles, 0], tiles[p % n_tiles, 1], tiles[p % n_tiles, 2]
        cs = slice(d0, d0 + w)  # the tile's channels
        S = np.empty((N, 2, W), dtype=u.dtype)  # [k, 0]: the state h; [k, 1]: A log2 e
        V = np.empty((3, W), dtype=u.dtype)  # the step's delta, x = delta u, y
        for k in range(N):
            _put(S[k, 0], h0[b, cs, k])
            _put(S[k, 1], At[k, cs])
        for t in range(L):
            if t % T == 0:
                for k in range(N):
                    ckpt[b, t // T, k, cs] = S[k, 0, :w]
            kt = keep[b, t]
            if t + AHEAD < L:
                _prefetch(delta[b, t + AHEAD, cs])
                _prefetch(u[b, t + AHEAD, cs])
                _prefetch(y[b, t + AHEAD, cs])
            _put(V[0], delta[b, t, cs])
            _put(V[1], u[b, t, cs])
            for i in range(W):
                V[1, i] *= V[0, i]
                V[2, i] = 0
            for k in range(N):
                bk = B[b, t, g, k]
                ck = C[b, t, g, k]
                for i in range(W):
                    hk = kt * _exp2(V[0, i] * S[k, 1, i]) * S[k, 0, i] + V[1, i] * bk
                    S[k, 0, i] = hk
                    V[2, i] += ck * hk
            y[b, t, cs] = V[2, :w]
        for k in range(N):
            hlast[b, cs, k] = S[k, 0, :w]


def _bwd(
    u, delta, At, B, C, keep, tiles, bounds, ckpt, dy, dhlast, du, ddelta, dA_b, dB_blk, dC_blk,
    dh0, T,
):  # pragma: no cover - compiled  # fmt: skip
    # Few scratch arrays, on purpose: the compiler vectorises an inner loop only behind a
    # run-time check that the arrays it touches do not overlap, and gives up past a handful.
    # But the step's sums over k get their own array R: kept in G (as rows [N]) they made
    # the backward 2x slower (the check against G[k] fails at run time: scalar code).
    Bsz, L, _ = u.shape
    N = At.shape[0]
    ln2 = u.dtype.type(LN2)
    NB = bounds.shape[0] - 1
    n_chunks = ckpt.shape[1]
    for p in prange(Bsz * NB):
        b = p // NB
        blk = p % NB
        HE = np.empty((T + 1, 2, N, W), dtype=u.dtype)  # the chunk's states [0] and decays [1]
        G = np.empty((N, 3, W), dtype=u.dtype)  # [k]: dL/dh carried back, dL/dA, A log2 e
        V = np.empty((4, W), dtype=u.dtype)  # the step's delta, x = delta u, dy, u
        R = np.empty((2, W), dtype=u.dtype)  # the step's dL/d(delta) via the decays, dL/dx
        for tile in range(bounds[blk], bounds[blk + 1]):
            d0, w, g = tiles[tile, 0], tiles[tile, 1], tiles[tile, 2]
            cs = slice(d0, d0 + w)
            for k in range(N):
                _put(G[k, 0], dhlast[b, cs, k])
                G[k, 1, :] = 0
                _put(G[k, 2], At[k, cs])
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * T
                steps = min(L, t0 + T) - t0
                for k in range(N):
                    _put(HE[0, 0, k], ckpt[b, c, k, cs])
                for j in range(steps):  # recompute the chunk's states
                    t = t0 + j
                    kt = keep[b, t]
                    if t + AHEAD < L:
                        _prefetch(delta[b, t + AHEAD, cs])
                        _prefetch(u[b, t + AHEAD, cs])
                    _put(V[0], delta[b, t, cs])
                    _put(V[1], u[b, t, cs])
                    for i in range(W):
                        V[1, i] *= V[0, i]
                    for k in range(N):
                        bk = B[b, t, g, k]
                        for i in range(W):
                            a = kt * _exp2(V[0, i] * G[k, 2, i])
                            HE[j, 1, k, i] = a
                            HE[j + 1, 0, k, i] = a * HE[j, 0, k, i] + V[1, i] * bk
                for jj in range(steps):  # and back through them
                    j = steps - 1 - jj
                    t = t0 + j
                    if t >= AHEAD:
                        for arr in (delta, u, dy, ddelta, du):
                            _prefetch(arr[b, t - AHEAD, cs])
                    _put(V[0], delta[b, t, cs])
                    _put(V[3], u[b, t, cs])
                    _put(V[2], dy[b, t, cs])
                    for i in range(W):
                        V[1, i] = V[0, i] * V[3, i]
                        R[0, i] = 0
                        R[1, i] = 0
                    for k in range(N):
                        bk = B[b, t, g, k]
                        ck = C[b, t, g, k]
                        sb = u.dtype.type(0)
                        sc = u.dtype.type(0)
                        for i in range(W):
                            ghk = G[k, 0, i] + V[2, i] * ck  # dL/dh_t
                            sc += V[2, i] * HE[j + 1, 0, k, i]
                            da = ghk * HE[j, 0, k, i] * HE[j, 1, k, i]  # dL/d(delta A_k)
                            R[0, i] += da * G[k, 2, i]
                            G[k, 1, i] += da * V[0, i]
                            R[1, i] += ghk * bk
                            sb += ghk * V[1, i]
                            G[k, 0, i] = ghk * HE[j, 1, k, i]
                        dB_blk[blk, b, t, g, k] += sb
                        dC_blk[blk, b, t, g, k] += sc
                    ddelta_t = ddelta[b, t, cs]
                    du_t = du[b, t, cs]
                    for i in range(w):
                        ddelta_t[i] = R[0, i] * ln2 + R[1, i] * V[3, i]
                        du_t[i] = R[1, i] * V[0, i]
            for k in range(N):
                dh0[b, cs, k] = G[k, 0, :w]
                dA_b[b, cs, k] = G[k, 1, :w]


if numba is not None:
    _put = njit(inline="always")(_put)
    _fwd = njit(parallel=True, fastmath=True, cache=True)(_fwd)
    _bwd = njit(parallel=True, fastmath=True, cache=True)(_bwd)


def _tiles(d: int, groups: int) -> np.ndarray:
    """(tiles, 3) int64 rows (first channel, width <= W, group): W-wide runs of each group."""
    per = d // groups
    rows = [
        (s, min(W, (g + 1) * per - s), g)
        for g in range(groups)
        for s in range(g * per, (g + 1) * per, W)
    ]
    return np.array(rows, dtype=np.int64)


def _scaled_At(A: Tensor) -> np.ndarray:
    """(n, d) A^T log2(e), rounded once from float64: the kernels take exp(delta A) as 2^(...)."""
    A = _np(A)
    return np.ascontiguousarray((A.T.astype(np.float64) * LOG2E).astype(A.dtype))


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


# numba's default threading layer on Linux is OpenMP through the system's libgomp, a second
# OpenMP runtime beside PyTorch's: after one kernel call, PyTorch's own ops ran 7-500x slower
# (a 2M-element multiply 16 ms instead of 2 ms, a 24k-element exp 15 ms instead of 30 us),
# which made whole models on CPU slow. numba's built-in work queue has no such effect; it
# must not be entered by two threads at once, hence the lock around every launch. A layer
# chosen through NUMBA_THREADING_LAYER is respected.
_LAUNCH = threading.Lock()


def _pick_threading_layer() -> None:
    started = getattr(numba_parallel, "_is_initialized", True)
    if "NUMBA_THREADING_LAYER" not in os.environ and not started:
        numba.config.THREADING_LAYER = "workqueue"


def _threads() -> int:
    _pick_threading_layer()
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


# Cold start: see ssmkit.ops.numba_compile (``backend="auto"`` runs the chunked backend
# while a thread compiles or loads the kernels).
def ready(dtype: torch.dtype) -> bool:
    """Whether the forward and backward kernels for ``dtype`` are compiled (or loaded)."""
    return compiled_for(dtype, (_fwd, _bwd))


def warm_up(dtype: torch.dtype = torch.float32, wait: bool = True) -> None:
    """Compile (or load from the cache) the kernels for ``dtype`` by running a tiny problem;
    ``wait=False`` does it in a background thread and returns at once."""
    if numba is None or ready(dtype):
        return
    compile_once(dtype, lambda: _tiny_run(dtype), wait)


def _tiny_run(dtype: torch.dtype) -> None:
    """Forward and backward on a (1, 2, 1, 1) problem: the argument types of every real call
    (C-contiguous arrays of this dtype), so numba compiles exactly the kernels used."""
    u = torch.ones(1, 2, 1, dtype=dtype, requires_grad=True)
    A = -torch.ones(1, 1, dtype=dtype)
    B = torch.ones(1, 2, 1, 1, dtype=dtype)
    y, _ = selective_scan_numba(u, u.detach(), A, B, B, torch.zeros(1, 1, 1, dtype=dtype))
    y.sum().backward()


def fused_forward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, keep: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel (no autograd: :mod:`.custom_op` wraps it).

    Args:
        u, delta: (b, l, d). A: (d, n). B, C: (b, l, g, n). h0: (b, d, n). keep: (b, l).
        chunk: steps between stored states.

    Returns:
        y (b, l, d), h_last (b, d, n) and the stored states ckpt (b, l / chunk, n, d).
    """
    b, L, d = u.shape
    n = A.shape[1]
    _threads()
    tiles = _tiles(d, B.shape[2])
    At = _scaled_At(A)
    y = np.empty((b, L, d), dtype=_np(u).dtype)
    hlast = np.empty((b, d, n), dtype=y.dtype)
    ckpt = np.empty((b, -(-L // chunk), n, d), dtype=y.dtype)
    args = (_np(u), _np(delta), At, _np(B), _np(C), _np(h0), _np(keep), tiles)
    with _LAUNCH:
        _fwd(*args, y, hlast, ckpt, chunk)
    return torch.from_numpy(y), torch.from_numpy(hlast), torch.from_numpy(ckpt)


def fused_backward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    keep: Tensor,
    ckpt: Tensor,
    dy: Tensor,
    dhlast: Tensor,
    chunk: int,
) -> tuple[Tensor, ...]:
    """Launch the recomputing backward kernel (no autograd: :mod:`.custom_op` wraps it).

    Args:
        u, delta, A, B, C, keep: the forward's inputs. ckpt: its stored states.
        dy: (b, l, d) gradient of y. dhlast: (b, d, n) gradient of the final state.
        chunk: the forward's steps between stored states.

    Returns:
        du, ddelta, dA, dB, dC, dh0 in the shapes of u, delta, A, B, C, h0.
    """
    b, L, d = u.shape
    n = A.shape[1]
    dtype = _np(u).dtype
    tiles = _tiles(d, B.shape[2])
    blocks = min(len(tiles), _threads() * BLOCKS_PER_THREAD)
    bounds = np.array([len(tiles) * i // blocks for i in range(blocks + 1)], dtype=np.int64)
    du = np.empty((b, L, d), dtype)
    ddelta = np.empty((b, L, d), dtype)
    dh0 = np.empty((b, d, n), dtype)
    dA_b = np.empty((b, d, n), dtype)
    dB_blk = np.zeros((blocks, *B.shape), dtype)
    dC_blk = np.zeros((blocks, *C.shape), dtype)
    with _LAUNCH:
        _bwd(
            _np(u), _np(delta), _scaled_At(A), _np(B), _np(C), _np(keep), tiles, bounds,
            _np(ckpt), _np(dy), _np(dhlast), du, ddelta, dA_b, dB_blk, dC_blk, dh0, chunk,
        )  # fmt: skip
    t = torch.from_numpy
    return t(du), t(ddelta), t(dA_b).sum(0), t(dB_blk).sum(0), t(dC_blk).sum(0), t(dh0)


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
    y, h_last, _ = custom_op.selective_scan_numba(u, delta, A, B, C, h0, keep.to(u.dtype), CHUNK)
    return y, h_last
