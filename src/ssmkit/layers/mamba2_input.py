"""Mamba-2's input path as one fused CPU kernel each way (numba).

The layer splits its input projection into (z, xBC, dt_raw), runs xBC through the causal
depthwise convolution and SiLU, and splits the result into (x, B, C):

    zxbcdt (b, l, d_inner + conv_dim + h) -> z, xBC, dt_raw
    xBC -> a_t = bias + sum_{j < k} w_j * xBC_{t - (k - 1) + j}  (inputs before 0: the conv state)
    (x, B, C) = split(silu(a))

:func:`mamba2_input_ref` is that composition (the slow twin: PyTorch ops and
:func:`ssmkit.layers.conv1d.causal_conv1d_ref`). :func:`mamba2_input` reads the projection
once and writes z, x, B, C and dt_raw as separate contiguous arrays (what the SSD kernels and
the gated norm read), and its backward writes the gradient of the whole projection at once:
no split copies, no ``.contiguous()`` calls, no SiLU or convolution temporaries, no ``cat``.
The backward recomputes the pre-activation a (k multiply-adds per entry) instead of storing
it; with g = dL/d(silu(a)) * silu'(a), silu'(a) = s (1 + a (1 - s)), s = sigmoid(a):
dL/dxBC_s = sum_j w_j g_{s + (k - 1) - j}, dL/dw_j = sum_t g_t xBC_{t - (k - 1) + j},
dL/dbias = sum_t g_t. Time runs in blocks of ``T_BLOCK`` steps per item (the parallel unit);
the weight and bias gradients are summed per block into separate buffers and then added in a
fixed order (the same bits on every run).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ssmkit.layers.conv1d import causal_conv1d_ref
from ssmkit.ops import numba_compile
from ssmkit.ops.selective_scan import cpu_numba as mamba_kernels

try:
    from numba import njit, prange

    from ssmkit.ops.selective_scan.cpu_numba import _exp2
except ImportError:  # the backend is optional (extra "fast")
    njit = None

Tensor = torch.Tensor
DTYPES = (torch.float32, torch.float64)
BACKENDS = ("auto", "ref", "numba")
LOG2E = mamba_kernels.LOG2E
T_BLOCK = 64  # steps per block: the parallel unit, and the backward's scratch rows


class Mamba2Sizes(NamedTuple):
    """How the projection's last axis splits: d_inner (z and x), groups g and state size n
    (B and C: g n each), heads h (dt_raw); x is (h, headdim) by head."""

    d_inner: int
    ngroups: int
    d_state: int
    nheads: int
    headdim: int


class Mamba2Input(NamedTuple):
    z: Tensor  # (b, l, d_inner) gate
    x: Tensor  # (b, l, h, p)
    B: Tensor  # (b, l, g, n)
    C: Tensor  # (b, l, g, n)
    dt_raw: Tensor  # (b, l, h)


def available() -> bool:
    return njit is not None


def mamba2_input_ref(
    zxbcdt: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, sizes: Mamba2Sizes
) -> Mamba2Input:
    """The definition: split, causal conv1d, SiLU, split (differentiable any number of times).

    Args:
        zxbcdt: (b, l, d_inner + conv_dim + h) the input projection, conv_dim = d_inner + 2 g n.
        weight: (conv_dim, 1, k) depthwise conv weight. bias: (conv_dim,) or None.
        state: (b, conv_dim, k - 1) conv inputs before the sequence, or None (zeros).
        sizes: the split, :class:`Mamba2Sizes`.

    Returns:
        :class:`Mamba2Input` (z, x, B, C, dt_raw).
    """
    d, g, n, h, p = sizes
    conv_dim = d + 2 * g * n
    z, xBC, dt_raw = zxbcdt.split([d, conv_dim, h], dim=-1)
    xBC, _ = causal_conv1d_ref(xBC, weight, bias, state)  # (b, l, conv_dim)
    x, B, C = F.silu(xBC).split([d, g * n, g * n], dim=-1)
    return Mamba2Input(
        z, x.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n)), dt_raw
    )


def _conv(zx, prev, wk, bias, b, t, off, acc):  # pragma: no cover - compiled
    # acc (conv_dim,) <- the pre-activation a_t of item b; prev (b, k - 1, conv_dim).
    # Inner loops index slices from 0 (an offset index defeats the vectoriser).
    K, Cd = wk.shape
    K1 = K - 1
    for c in range(Cd):
        acc[c] = bias[c]
    for j in range(K):
        s = t - K1 + j
        w = wk[j]
        src = zx[b, s, off : off + Cd] if s >= 0 else prev[b, t + j]
        for c in range(Cd):
            acc[c] += w[c] * src[c]


def _silu(a, out, one, log2e):  # pragma: no cover - compiled
    for c in range(out.shape[0]):
        v = a[c]
        out[c] = v / (one + _exp2(-v * log2e))


def _fwd(zx, prev, wk, bias, d, gn, z, xo, Bo, Co, dt):  # pragma: no cover - compiled
    Bsz, L = zx.shape[0], zx.shape[1]
    Cd = wk.shape[1]
    H = dt.shape[2]
    one = zx.dtype.type(1)
    log2e = zx.dtype.type(LOG2E)
    NT = (L + T_BLOCK - 1) // T_BLOCK
    for q in prange(Bsz * NT):
        b = q // NT
        t0 = (q % NT) * T_BLOCK
        acc = np.empty(Cd, zx.dtype)
        for t in range(t0, min(t0 + T_BLOCK, L)):
            zt = z[b, t]
            src = zx[b, t, :d]
            for c in range(d):
                zt[c] = src[c]
            dtt = dt[b, t]
            src = zx[b, t, d + Cd :]
            for c in range(H):
                dtt[c] = src[c]
            _conv(zx, prev, wk, bias, b, t, d, acc)
            _silu(acc[:d], xo[b, t], one, log2e)
            _silu(acc[d : d + gn], Bo[b, t], one, log2e)
            _silu(acc[d + gn :], Co[b, t], one, log2e)


def _dsilu(a, dout, g, one, log2e):  # pragma: no cover - compiled
    # g <- dout * silu'(a)
    for c in range(g.shape[0]):
        v = a[c]
        s = one / (one + _exp2(-v * log2e))
        g[c] = dout[c] * s * (one + v * (one - s))


def _bwd(
    zx, prev, wk, bias, d, gn, dz, dxo, dBo, dCo, ddt, dzx, dprev, dw_blk, db_blk
):  # pragma: no cover - compiled
    Bsz, L = zx.shape[0], zx.shape[1]
    K, Cd = wk.shape
    K1 = K - 1
    H = ddt.shape[2]
    one = zx.dtype.type(1)
    log2e = zx.dtype.type(LOG2E)
    NT = (L + T_BLOCK - 1) // T_BLOCK
    for q in prange(Bsz * NT):
        b = q // NT
        t0 = (q % NT) * T_BLOCK
        t1 = min(t0 + T_BLOCK, L)
        te = min(t1 + K1, L)  # a step's input gradient reads g up to k - 1 steps later
        acc = np.empty(Cd, zx.dtype)
        gp = np.empty((te - t0, Cd), zx.dtype)  # g = dL/da of steps t0 .. te - 1
        for t in range(t0, te):
            _conv(zx, prev, wk, bias, b, t, d, acc)
            g = gp[t - t0]
            _dsilu(acc[:d], dxo[b, t], g[:d], one, log2e)
            _dsilu(acc[d : d + gn], dBo[b, t], g[d : d + gn], one, log2e)
            _dsilu(acc[d + gn :], dCo[b, t], g[d + gn :], one, log2e)
        dw = dw_blk[q]
        db = db_blk[q]
        for t in range(t0, t1):
            out = dzx[b, t, :d]
            src = dz[b, t]
            for c in range(d):
                out[c] = src[c]
            out = dzx[b, t, d + Cd :]
            src = ddt[b, t]
            for c in range(H):
                out[c] = src[c]
            out = dzx[b, t, d : d + Cd]
            for c in range(Cd):
                out[c] = 0
            for j in range(K):  # xBC_t enters a_{t + k - 1 - j} through w_j
                r = t + K1 - j
                if r < L:
                    w = wk[j]
                    g = gp[r - t0]
                    for c in range(Cd):
                        out[c] += w[c] * g[c]
            g = gp[t - t0]
            for c in range(Cd):
                db[c] += g[c]
            for j in range(K):
                s = t - K1 + j
                dwj = dw[j]
                src = zx[b, s, d : d + Cd] if s >= 0 else prev[b, t + j]
                for c in range(Cd):
                    dwj[c] += g[c] * src[c]
        if t0 == 0:  # the state's inputs: prev_i enters a_{i - j} through w_j
            for i in range(K1):
                out = dprev[b, i]
                for c in range(Cd):
                    out[c] = 0
                for j in range(i + 1):
                    r = i - j
                    if r < L:
                        w = wk[j]
                        g = gp[r]
                        for c in range(Cd):
                            out[c] += w[c] * g[c]


if njit is not None:
    _conv = njit(fastmath=True, cache=True, inline="always")(_conv)
    _dsilu = njit(fastmath=True, cache=True, inline="always")(_dsilu)
    _silu = njit(fastmath=True, cache=True, inline="always")(_silu)
    _fwd = njit(parallel=True, fastmath=True, cache=True)(_fwd)
    _bwd = njit(parallel=True, fastmath=True, cache=True)(_bwd)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Mamba2InputNumba(torch.autograd.Function):
    """zxbcdt (b, l, w), prev (b, k - 1, conv_dim), wk (k, conv_dim), bias (conv_dim,) ->
    z (b, l, d), x (b, l, d), B (b, l, g n), C (b, l, g n), dt_raw (b, l, h)."""

    @staticmethod
    def forward(ctx, zxbcdt, prev, wk, bias, d, gn):
        b, L, W = zxbcdt.shape
        h = W - 2 * d - 2 * gn
        mamba_kernels._threads()
        dtype = _np(zxbcdt).dtype
        z, x = np.empty((b, L, d), dtype), np.empty((b, L, d), dtype)
        B, C = np.empty((b, L, gn), dtype), np.empty((b, L, gn), dtype)
        dt = np.empty((b, L, h), dtype)
        with mamba_kernels._LAUNCH:
            _fwd(_np(zxbcdt), _np(prev), _np(wk), _np(bias), d, gn, z, x, B, C, dt)
        ctx.save_for_backward(zxbcdt, prev, wk, bias)
        ctx.sizes = (d, gn)
        return tuple(torch.from_numpy(a) for a in (z, x, B, C, dt))

    @staticmethod
    @once_differentiable
    def backward(ctx, dz, dx, dB, dC, ddt):
        zxbcdt, prev, wk, bias = ctx.saved_tensors
        d, gn = ctx.sizes
        b, L, W = zxbcdt.shape
        dtype = _np(zxbcdt).dtype
        blocks = b * ((L + T_BLOCK - 1) // T_BLOCK)
        dzx = np.empty((b, L, W), dtype)
        dprev = np.empty(prev.shape, dtype)
        dw_blk = np.zeros((blocks, *wk.shape), dtype)
        db_blk = np.zeros((blocks, wk.shape[1]), dtype)
        grads = (_np(dz), _np(dx), _np(dB), _np(dC), _np(ddt))
        mamba_kernels._threads()
        with mamba_kernels._LAUNCH:
            _bwd(
                _np(zxbcdt), _np(prev), _np(wk), _np(bias), d, gn, *grads, dzx, dprev, dw_blk,
                db_blk,
            )  # fmt: skip
        t = torch.from_numpy
        return t(dzx), t(dprev), t(dw_blk).sum(0), t(db_blk).sum(0), None, None


def mamba2_input(
    zxbcdt: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    state: Tensor | None,
    sizes: Mamba2Sizes,
    backend: str = "auto",
) -> Mamba2Input:
    """:func:`mamba2_input_ref` (same arguments and results), fused on CPU.

    ``backend``: "ref" (the composition), "numba" (the fused kernels: CPU, every tensor
    float32 or every tensor float64; differentiable once) or "auto" (numba where it applies
    and its kernels are compiled, not while torch.compile traces; the reference otherwise,
    while the kernels compile in a background thread).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    d, g, n, h, p = sizes
    conv_dim = d + 2 * g * n
    if zxbcdt.ndim != 3 or zxbcdt.shape[-1] != d + conv_dim + h or zxbcdt.shape[1] < 1:
        raise ValueError(
            f"zxbcdt must have shape (b, l, {d + conv_dim + h}) with l >= 1 (d_inner + conv_dim "
            f"+ nheads), got {tuple(zxbcdt.shape)}"
        )
    if d != h * p:
        raise ValueError(f"sizes: d_inner must be nheads * headdim = {h * p}, got {d}")
    if weight.ndim != 3 or weight.shape[:2] != (conv_dim, 1):
        raise ValueError(f"weight must have shape ({conv_dim}, 1, k), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (conv_dim,):
        raise ValueError(f"bias must have shape ({conv_dim},), got {tuple(bias.shape)}")
    b, k1 = zxbcdt.shape[0], weight.shape[-1] - 1
    if state is not None and tuple(state.shape) != (b, conv_dim, k1):
        raise ValueError(f"state must have shape ({b}, {conv_dim}, {k1}), got {tuple(state.shape)}")
    fits = _fits(zxbcdt, weight, bias, state)
    if backend == "numba" and not fits:
        raise ValueError(
            "backend 'numba' of mamba2_input takes CPU tensors of one dtype, float32 or "
            f"float64, got zxbcdt {zxbcdt.dtype} on {zxbcdt.device}, weight {weight.dtype}"
        )
    if backend == "auto" and not picks_numba(zxbcdt, weight, bias, state):
        backend = "ref"
    if backend == "ref":
        return mamba2_input_ref(zxbcdt, weight, bias, state, sizes)
    prev = zxbcdt.new_zeros(b, k1, conv_dim) if state is None else state.transpose(1, 2)
    wk = weight[:, 0].t()  # (k, conv_dim)
    bias = weight.new_zeros(conv_dim) if bias is None else bias
    z, x, B, C, dt_raw = _Mamba2InputNumba.apply(
        zxbcdt.contiguous(), prev.contiguous(), wk.contiguous(), bias, d, g * n
    )
    return Mamba2Input(
        z, x.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n)), dt_raw
    )


def picks_numba(zxbcdt: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None) -> bool:
    """Whether "auto" runs the fused kernels on these arguments: they fit (CPU, one dtype,
    float32 or float64), torch.compile is not tracing and the kernels are compiled; while
    they are not, this starts compiling them in a background thread."""
    if not _fits(zxbcdt, weight, bias, state) or torch.compiler.is_compiling():
        return False
    if not ready(zxbcdt.dtype):
        warm_up(zxbcdt.dtype, wait=False)
        return False
    return True


def _fits(*tensors: Tensor | None) -> bool:
    ts = [t for t in tensors if t is not None]
    return (
        njit is not None
        and ts[0].dtype in DTYPES
        and all(t.device.type == "cpu" and t.dtype == ts[0].dtype for t in ts)
    )


def ready(dtype: torch.dtype) -> bool:
    """Whether the forward and backward kernels for ``dtype`` are compiled (or loaded)."""
    return njit is not None and numba_compile.compiled_for(dtype, (_fwd, _bwd))


def warm_up(dtype: torch.dtype = torch.float32, wait: bool = True) -> None:
    """Compile (or load from the cache) the kernels for ``dtype``; ``wait=False`` does it in
    a background thread."""
    if njit is None or ready(dtype):
        return
    numba_compile.compile_once(("mamba2_input", dtype), lambda: _tiny_run(dtype), wait)


def _tiny_run(dtype: torch.dtype) -> None:
    sizes = Mamba2Sizes(1, 1, 1, 1, 1)
    zx = torch.ones(1, 2, 5, dtype=dtype, requires_grad=True)
    w = torch.ones(3, 1, 2, dtype=dtype)
    out = mamba2_input(zx, w, torch.ones(3, dtype=dtype), None, sizes, backend="numba")
    sum(t.sum() for t in out).backward()
