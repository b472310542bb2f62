"""(Gated) RMSNorm over groups of channels: the reference and a fused CPU kernel (numba).

    g = x * silu(z)  (Mamba-2's gate, applied before the norm; g = x without z)
    y = g / sqrt(mean over the group of g^2 + eps) * weight

:func:`gated_rms_norm_ref` is the definition (pure PyTorch, differentiable any number of
times). :func:`gated_rms_norm` runs one fused numba kernel each way on CPU float32/float64
tensors (no intermediates of the size of x: the composition makes about ten of them forward
and twenty backward) and the reference elsewhere. With r = (mean g^2 + eps)^(-1/2) per group
and dg_hat = dy * weight, the backward is dg = r dg_hat - r^3 g (dg_hat . g) / group_size,
dx = dg silu(z), dz = dg x silu'(z), dweight = sum over rows of dy g r; dweight is summed per
block of rows into separate buffers added in a fixed order (the same bits on every run).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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


def available() -> bool:
    return njit is not None


def gated_rms_norm_ref(
    x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int
) -> Tensor:
    """The definition, computed in float32 at least.

    Args:
        x: (..., d). z: (..., d) gate or None. weight: (d,). eps: added to the mean square.
        group_size: channels per group (divides d).

    Returns:
        (..., d) in the dtype of ``x`` promoted with ``weight``'s.
    """
    dtype = x.dtype
    work = torch.promote_types(dtype, torch.float32)  # float32 at least
    x = x.to(work)
    if z is not None:
        x = x * F.silu(z.to(work))
    groups = x.unflatten(-1, (-1, group_size))  # (..., d / group_size, group_size)
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return weight * groups.flatten(-2).to(dtype)


def _fwd(x, z, w, eps, gs, gated, y, rstd):  # pragma: no cover - compiled
    # x, z, y (r, d) rows; w (d,); rstd (r, d / gs). The inner loops index one group's
    # slices from 0 (an offset index defeats the vectoriser).
    R, D = x.shape
    one = x.dtype.type(1)
    inv_gs = x.dtype.type(1.0 / gs)  # float arithmetic in x's dtype throughout
    eps_t = x.dtype.type(eps)
    log2e = x.dtype.type(LOG2E)
    for i in prange(R):
        for j in range(D // gs):
            o = j * gs
            xg, zg, yg, wg = x[i, o : o + gs], z[i, o : o + gs], y[i, o : o + gs], w[o : o + gs]
            ss = x.dtype.type(0)
            if gated:
                for k in range(gs):
                    zk = zg[k]
                    g = xg[k] * zk / (one + _exp2(-zk * log2e))  # x silu(z)
                    yg[k] = g
                    ss += g * g
            else:
                for k in range(gs):
                    g = xg[k]
                    yg[k] = g
                    ss += g * g
            r = one / np.sqrt(ss * inv_gs + eps_t)
            rstd[i, j] = r
            for k in range(gs):
                yg[k] = yg[k] * r * wg[k]


def _bwd(x, z, w, rstd, gs, gated, bounds, dy, dx, dz, dw_blk):  # pragma: no cover - compiled
    D = x.shape[1]
    one = x.dtype.type(1)
    inv_gs = x.dtype.type(1.0 / gs)
    log2e = x.dtype.type(LOG2E)
    for blk in prange(bounds.shape[0] - 1):
        g = np.empty(gs, x.dtype)  # the group's gated input x silu(z)
        sg = np.empty(gs, x.dtype)  # and sigmoid(z)
        for i in range(bounds[blk], bounds[blk + 1]):
            for j in range(D // gs):
                o = j * gs
                xg, zg, wg, dyg = (
                    x[i, o : o + gs],
                    z[i, o : o + gs],
                    w[o : o + gs],
                    dy[i, o : o + gs],
                )
                dw = dw_blk[blk, o : o + gs]
                r = rstd[i, j]
                if gated:
                    for k in range(gs):
                        sg[k] = one / (one + _exp2(-zg[k] * log2e))
                        g[k] = xg[k] * zg[k] * sg[k]
                else:
                    for k in range(gs):
                        g[k] = xg[k]
                dot = x.dtype.type(0)  # dg_hat . g
                for k in range(gs):
                    dot += dyg[k] * wg[k] * g[k]
                    dw[k] += dyg[k] * g[k] * r
                c = r * r * r * dot * inv_gs
                dxg = dx[i, o : o + gs]
                if gated:
                    dzg = dz[i, o : o + gs]
                    for k in range(gs):
                        dg = r * dyg[k] * wg[k] - c * g[k]  # dL/dg
                        zk = zg[k]
                        sk = sg[k]
                        dxg[k] = dg * zk * sk
                        dzg[k] = dg * xg[k] * sk * (one + zk * (one - sk))
                else:
                    for k in range(gs):
                        dxg[k] = r * dyg[k] * wg[k] - c * g[k]


# below this many entries the forward runs on the calling thread: launching the parallel
# kernel costs about 0.1 ms (numba's workqueue layer), 300x the work of one 768-wide row,
# and decoding normalises one row per layer and token
SERIAL_MAX = 1 << 16

if njit is not None:
    # prange runs as range; division by zero gives inf as in the parallel kernel, not an error
    _fwd_serial = njit(fastmath=True, cache=True, error_model="numpy")(_fwd)
    _fwd = njit(parallel=True, fastmath=True, cache=True)(_fwd)
    _bwd = njit(parallel=True, fastmath=True, cache=True)(_bwd)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _forward(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int):
    """Launch the forward kernel on x, z (r, d) contiguous and weight (d,): y (r, d) and
    rstd (r, d / group_size); serial below ``SERIAL_MAX`` entries."""
    gated = z is not None
    y = np.empty(x.shape, _np(x).dtype)
    rstd = np.empty((x.shape[0], x.shape[1] // group_size), y.dtype)
    args = (_np(x), _np(z if gated else x), _np(weight), eps, group_size, gated, y, rstd)
    if x.numel() < SERIAL_MAX:
        _fwd_serial(*args)
    else:
        mamba_kernels._threads()
        with mamba_kernels._LAUNCH:
            _fwd(*args)
    return torch.from_numpy(y), torch.from_numpy(rstd)


class _GatedRMSNormNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, eps, group_size):
        # x, z (r, d) contiguous; weight (d,)
        y, rstd = _forward(x, z, weight, eps, group_size)
        ctx.save_for_backward(x, x if z is None else z, weight, rstd)
        ctx.gated, ctx.group_size = z is not None, group_size
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, z, weight, rstd = ctx.saved_tensors
        rows = x.shape[0]
        blocks = max(1, min(rows, mamba_kernels._threads() * mamba_kernels.BLOCKS_PER_THREAD))
        bounds = np.array([rows * i // blocks for i in range(blocks + 1)], dtype=np.int64)
        dx = np.empty(x.shape, _np(x).dtype)
        dz = np.empty(x.shape, dx.dtype) if ctx.gated else dx[:0]
        dw_blk = np.zeros((blocks, x.shape[1]), dx.dtype)
        args = (_np(x), _np(z), _np(weight), _np(rstd), ctx.group_size, ctx.gated, bounds)
        with mamba_kernels._LAUNCH:
            _bwd(*args, _np(dy), dx, dz, dw_blk)
        dz = torch.from_numpy(dz) if ctx.gated else None
        return torch.from_numpy(dx), dz, torch.from_numpy(dw_blk).sum(0), None, None


def gated_rms_norm(
    x: Tensor,
    z: Tensor | None,
    weight: Tensor,
    eps: float,
    group_size: int,
    backend: str = "auto",
) -> Tensor:
    """(Gated) RMSNorm; the arguments and result of :func:`gated_rms_norm_ref`.

    ``backend``: "ref" (the composition), "numba" (the fused kernels: CPU, x, z and weight
    all float32 or all float64; differentiable once) or "auto" (numba where it applies and
    its kernels are compiled, not while torch.compile traces; the reference otherwise).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    d = x.shape[-1]
    if weight.shape != (d,):
        raise ValueError(f"weight must have shape ({d},), got {tuple(weight.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
    if group_size < 1 or d % group_size:
        raise ValueError(f"group_size must divide d = {d}, got {group_size}")
    fits = _fits(x, z, weight)
    if backend == "numba" and not fits:
        raise ValueError(
            "backend 'numba' of gated_rms_norm takes CPU x, z and weight of one dtype, float32 "
            f"or float64, got x {x.dtype} on {x.device}, weight {weight.dtype}"
        )
    if backend == "auto" and not (fits and not torch.compiler.is_compiling() and ready(x.dtype)):
        if fits and not torch.compiler.is_compiling():
            warm_up(x.dtype, wait=False)
        return gated_rms_norm_ref(x, z, weight, eps, group_size)
    if backend == "ref":
        return gated_rms_norm_ref(x, z, weight, eps, group_size)
    rows = x.reshape(-1, d).contiguous()  # (r, d)
    zr = None if z is None else z.reshape(-1, d).contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, z, weight)):
        y = _GatedRMSNormNumba.apply(rows, zr, weight, float(eps), group_size)
    else:  # no graph to record (decoding): the kernel without the autograd Function
        y = _forward(rows, zr, weight, float(eps), group_size)[0]
    return y.view(x.shape)


def _fits(x: Tensor, z: Tensor | None, weight: Tensor) -> bool:
    tensors = (x, weight) if z is None else (x, z, weight)
    return (
        njit is not None
        and x.dtype in DTYPES
        and all(t.device.type == "cpu" and t.dtype == x.dtype for t in tensors)
    )


def ready(dtype: torch.dtype) -> bool:
    """Whether the forward and backward kernels for ``dtype`` are compiled (or loaded)."""
    return njit is not None and numba_compile.compiled_for(dtype, (_fwd, _fwd_serial, _bwd))


def warm_up(dtype: torch.dtype = torch.float32, wait: bool = True) -> None:
    """Compile (or load from the cache) the kernels for ``dtype``; ``wait=False`` does it in
    a background thread."""
    if njit is None or ready(dtype):
        return
    numba_compile.compile_once(("gated_norm", dtype), lambda: _tiny_run(dtype), wait)


def _tiny_run(dtype: torch.dtype) -> None:
    for gated in (True, False):  # one signature: z is x's stand-in when not gated
        x = torch.ones(1, 2, dtype=dtype, requires_grad=True)
        z = torch.ones(1, 2, dtype=dtype) if gated else None
        w = torch.ones(2, dtype=dtype)
        gated_rms_norm(x, z, w, 1e-5, 2, backend="numba").sum().backward()  # serial forward
        x = torch.ones(SERIAL_MAX // 2, 2, dtype=dtype, requires_grad=True)  # parallel forward
        z = torch.ones(SERIAL_MAX // 2, 2, dtype=dtype) if gated else None
        gated_rms_norm(x, z, w, 1e-5, 2, backend="numba").sum().backward()
