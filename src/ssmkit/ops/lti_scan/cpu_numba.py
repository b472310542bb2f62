"""Fused CPU kernels (numba) of the SISO diagonal LTI scan: no (b, l, h, n) history exists.

Complex numbers are carried as separate real and imaginary float arrays; a real system runs
as a complex one with zero imaginary parts. The channels are cut into tiles of ``W``
neighbours (the last tile's spare lanes run on zeros); a tile's state is a (2, n, W) array and
every inner loop runs over the W lanes with a compile-time trip count, so it vectorises.

Forward: each (batch item, tile) walks the sequence once, fusing B_bar u_t, the recurrence and
y_t = Re(C x_t), and stores the state every ``CHUNK`` steps (b, l / CHUNK, 2, n, h): the only
thing kept for the backward. Backward: per chunk, from the last, the chunk's states are
recomputed from its stored one and the adjoint runs back through them (PyTorch's complex
convention, g = dL/dRe x + i dL/dIm x):

    g_t = g_t + dy_t conj(C)      dC += dy_t conj(x_t)      dB += g_t u_t
    du_t = Re(sum_n conj(B) g_t)  dA += g_t conj(x_{t-1})   g_{t-1} = conj(A_bar) g_t

dA, dB and dC are summed per batch item into separate buffers and then over the batch in a
fixed order, so the gradients are the same bit for bit on every run. Compiled once per float
dtype (float32, float64) and direction: four specialisations, cached on disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from ssmkit.ops.lti_scan import custom_op
from ssmkit.ops.lti_scan.ref import lti_scan_ref
from ssmkit.ops.numba_compile import compiling_note

try:
    import numba
    from numba import njit, prange
except ImportError:  # the backend is optional (extra "fast")
    numba = None

Tensor = torch.Tensor
CHUNK = 128  # steps between stored states
W = 32  # channels per tile (LLVM leaves a fully unrolled 16-lane loop scalar)
SERIAL_WORK = 2**20  # below this many (step, channel, mode) updates, run on one thread
AR, AI, BR, BI, CR, CI = range(6)  # rows of the (6, n, h) parameter array


def available() -> bool:
    return numba is not None


def _put(dst, src):  # pragma: no cover - compiled
    """dst[:w] = src (a tile's w <= W channels), zeros in the spare lanes."""
    w = src.shape[0]
    for i in range(w):
        dst[i] = src[i]
    for i in range(w, W):
        dst[i] = 0


def _fwd(u, P, x0, last, y, xlast, ckpt, T):  # pragma: no cover - compiled
    Bsz, L, H = u.shape
    N = P.shape[1]
    n_tiles = -(-H // W)
    for p in prange(Bsz * n_tiles):
        b = p // n_tiles
        c0 = (p % n_tiles) * W
        w = min(W, H - c0)
        cs = slice(c0, c0 + w)
        Q = np.empty((6, N, W), dtype=u.dtype)  # A_bar, B_bar, C: real and imaginary parts
        S = np.empty((2, N, W), dtype=u.dtype)  # the state x
        V = np.empty((2, W), dtype=u.dtype)  # the step's u and y
        for k in range(N):
            for j in range(6):
                _put(Q[j, k], P[j, k, cs])
            for j in range(2):
                _put(S[j, k], x0[b, j, k, cs])
        for t in range(L):
            if t % T == 0:
                for j in range(2):
                    for k in range(N):
                        ckpt[b, t // T, j, k, cs] = S[j, k, :w]
            _put(V[0], u[b, t, cs])
            for i in range(W):
                V[1, i] = 0
            for k in range(N):
                for i in range(W):
                    xr = S[0, k, i]
                    xi = S[1, k, i]
                    nr = Q[AR, k, i] * xr - Q[AI, k, i] * xi + Q[BR, k, i] * V[0, i]
                    ni = Q[AR, k, i] * xi + Q[AI, k, i] * xr + Q[BI, k, i] * V[0, i]
                    S[0, k, i] = nr
                    S[1, k, i] = ni
                    V[1, i] += Q[CR, k, i] * nr - Q[CI, k, i] * ni
            y[b, t, cs] = V[1, :w]
            if t == last[b]:
                for j in range(2):
                    for k in range(N):
                        xlast[b, j, k, cs] = S[j, k, :w]


def _bwd(u, P, last, ckpt, dy, dxlast, du, dP, dx0, T):  # pragma: no cover - compiled
    Bsz, L, H = u.shape
    N = P.shape[1]
    n_tiles = -(-H // W)
    n_chunks = ckpt.shape[1]
    for p in prange(Bsz * n_tiles):
        b = p // n_tiles
        c0 = (p % n_tiles) * W
        w = min(W, H - c0)
        cs = slice(c0, c0 + w)
        Q = np.empty((6, N, W), dtype=u.dtype)
        D = np.zeros((6, N, W), dtype=u.dtype)  # dA, dB, dC summed over time
        G = np.zeros((2, N, W), dtype=u.dtype)  # g = dL/dx carried back
        HS = np.empty((T + 1, 2, N, W), dtype=u.dtype)  # the chunk's states, x_{t0-1} first
        V = np.empty((3, W), dtype=u.dtype)  # the step's u, dy, du
        for k in range(N):
            for j in range(6):
                _put(Q[j, k], P[j, k, cs])
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * T
            steps = min(L, t0 + T) - t0
            for j in range(2):
                for k in range(N):
                    _put(HS[0, j, k], ckpt[b, c, j, k, cs])
            for s in range(steps):  # recompute the chunk's states
                _put(V[0], u[b, t0 + s, cs])
                for k in range(N):
                    for i in range(W):
                        xr = HS[s, 0, k, i]
                        xi = HS[s, 1, k, i]
                        HS[s + 1, 0, k, i] = (
                            Q[AR, k, i] * xr - Q[AI, k, i] * xi + Q[BR, k, i] * V[0, i]
                        )
                        HS[s + 1, 1, k, i] = (
                            Q[AR, k, i] * xi + Q[AI, k, i] * xr + Q[BI, k, i] * V[0, i]
                        )
            for ss in range(steps):  # and back through them
                s = steps - 1 - ss
                t = t0 + s
                if t == last[b]:
                    for j in range(2):
                        for k in range(N):
                            for i in range(w):
                                G[j, k, i] += dxlast[b, j, k, c0 + i]
                _put(V[0], u[b, t, cs])
                _put(V[1], dy[b, t, cs])
                for i in range(W):
                    V[2, i] = 0
                for k in range(N):  # split loops: each touches few rows, so it vectorises
                    for i in range(W):  # g_t = g_t + dy_t conj(C)
                        G[0, k, i] += V[1, i] * Q[CR, k, i]
                        G[1, k, i] -= V[1, i] * Q[CI, k, i]
                    for i in range(W):  # dC += dy_t conj(x_t)
                        D[CR, k, i] += V[1, i] * HS[s + 1, 0, k, i]
                        D[CI, k, i] -= V[1, i] * HS[s + 1, 1, k, i]
                    for i in range(W):  # dB += g_t u_t
                        D[BR, k, i] += G[0, k, i] * V[0, i]
                        D[BI, k, i] += G[1, k, i] * V[0, i]
                    for i in range(W):  # dA += g_t conj(x_{t-1}): real part ...
                        D[AR, k, i] += G[0, k, i] * HS[s, 0, k, i] + G[1, k, i] * HS[s, 1, k, i]
                    for i in range(W):  # ... and imaginary part
                        D[AI, k, i] += G[1, k, i] * HS[s, 0, k, i] - G[0, k, i] * HS[s, 1, k, i]
                    for i in range(W):  # du_t = Re(sum conj(B) g_t)
                        V[2, i] += G[0, k, i] * Q[BR, k, i] + G[1, k, i] * Q[BI, k, i]
                    for i in range(W):  # g_{t-1} = conj(A_bar) g_t
                        gr = G[0, k, i]
                        gi = G[1, k, i]
                        G[0, k, i] = Q[AR, k, i] * gr + Q[AI, k, i] * gi
                        G[1, k, i] = Q[AR, k, i] * gi - Q[AI, k, i] * gr
                du[b, t, cs] = V[2, :w]
        for k in range(N):
            for j in range(2):
                dx0[b, j, k, cs] = G[j, k, :w]
            for j in range(6):
                dP[b, j, k, cs] = D[j, k, :w]


if numba is not None:
    _put = njit(inline="always")(_put)
    _fwd = njit(parallel=True, fastmath=True, cache=True)(_fwd)
    _bwd = njit(parallel=True, fastmath=True, cache=True)(_bwd)


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _parts(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(..., h, n) real or complex -> (..., 2, n, h) real: [0] real part, [1] imaginary part."""
    parts = torch.view_as_real(x) if x.is_complex() else torch.stack([x, torch.zeros_like(x)], -1)
    return parts.to(dtype).movedim(-1, -3).transpose(-1, -2).contiguous()


def _join(parts: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`_parts` in the dtype of ``like`` (a real one keeps the real part)."""
    x = parts.transpose(-1, -2)  # (..., 2, h, n)
    if like.is_complex():
        return torch.complex(x[..., 0, :, :], x[..., 1, :, :]).to(like.dtype).contiguous()
    return x[..., 0, :, :].to(like.dtype, copy=True).contiguous()  # never a view of parts


@contextlib.contextmanager
def _threads(b: int, L: int, h: int, n: int) -> Iterator[None]:
    """Run numba on torch's thread count, but no more than there are (item, tile) tasks, and
    on one for small problems (starting a parallel region costs up to milliseconds on a busy
    machine). Numba's OpenMP layer resets the process's OpenMP thread count when it starts,
    which torch shares: torch's count is put back afterwards."""
    torch_threads = torch.get_num_threads()
    tasks = b * -(-h // W) if b * L * h * n >= SERIAL_WORK else 1
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS, tasks)))
    try:
        yield
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def _call(kernel, *args) -> None:
    """``kernel(*args)``; a first call for the dtype of ``args[0]`` may compile (tens of
    seconds) and is noted on stderr while it does."""
    want = numba.from_dtype(args[0].dtype)
    if any(sig[0].dtype == want for sig in kernel.signatures):
        kernel(*args)
    else:
        with compiling_note():
            kernel(*args)


def fused_forward(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, last: Tensor, scale: float,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Launch the SISO forward kernel (no autograd: :mod:`.custom_op` wraps it).

    Args:
        u: (b, l, h) real. A_bar, B_bar, C: (h, n), real or complex. x0: (b, h, n).
        last: (b,) int64, the step whose state each item returns. scale: s (1 or 2).
        chunk: steps between stored states.

    Returns:
        y (b, l, h), x_last (b, h, n) in x0's dtype, stored states (b, l / chunk, 2, n, h).
    """
    b, L, h = u.shape
    n = A_bar.shape[-1]
    dtype = u.dtype
    P = _params(A_bar, B_bar, C, scale, dtype)
    y = np.empty((b, L, h), dtype=_np(u).dtype)
    xlast = np.empty((b, 2, n, h), dtype=y.dtype)
    ckpt = np.empty((b, -(-L // chunk), 2, n, h), dtype=y.dtype)
    with _threads(b, L, h, n):
        _call(_fwd, _np(u), _np(P), _np(_parts(x0, dtype)), _np(last), y, xlast, ckpt, chunk)
    return torch.from_numpy(y), _join(torch.from_numpy(xlast), x0), torch.from_numpy(ckpt)


def fused_backward(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, last: Tensor, ckpt: Tensor,
    dy: Tensor, dxlast: Tensor, scale: float, chunk: int,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Launch the SISO recomputing backward kernel (no autograd: :mod:`.custom_op` wraps it).

    Args:
        u, A_bar, B_bar, C, x0, last, scale, chunk: as :func:`fused_forward`. ckpt: its stored
            states. dy: (b, l, h) gradient of y. dxlast: (b, h, n) gradient of x_last.

    Returns:
        du, dA_bar, dB_bar, dC, dx0 in the shapes and dtypes of u, A_bar, B_bar, C, x0.
    """
    b, L, h = u.shape
    n = A_bar.shape[-1]
    dtype = np.dtype(_np(u).dtype)
    P = _params(A_bar, B_bar, C, scale, u.dtype)
    dy, dx = _np(dy.to(u.dtype)), _np(_parts(dxlast, u.dtype))
    du = np.empty((b, L, h), dtype)
    dP = np.empty((b, 6, n, h), dtype)
    dx0 = np.empty((b, 2, n, h), dtype)
    with _threads(b, L, h, n):
        _call(_bwd, _np(u), _np(P), _np(last), _np(ckpt), dy, dx, du, dP, dx0, chunk)
    dP = torch.from_numpy(dP).sum(0)  # (6, n, h), over the batch in a fixed order
    return (
        torch.from_numpy(du),
        _join(dP[0:2], A_bar),
        _join(dP[2:4], B_bar),
        _join(dP[4:6], C) * scale,
        _join(torch.from_numpy(dx0), x0),
    )


def _params(A_bar: Tensor, B_bar: Tensor, C: Tensor, scale: float, dtype) -> Tensor:
    """(6, n, h): the real and imaginary parts of A_bar, B_bar and s C, as the kernels read them."""
    return torch.cat([_parts(A_bar, dtype), _parts(B_bar, dtype), _parts(scale * C, dtype)])


def lti_scan_numba(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, conj: bool, last: Tensor
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.lti_scan.ref.lti_scan_ref` (CPU, SISO fused).

    A MIMO system (state (n,)) has no (b, l, h, n) history to avoid: it runs as the reference
    does, inject and readout as matrix products around the registered diagonal scan.
    """
    if A_bar.ndim == 1:
        return lti_scan_ref(u, A_bar, B_bar, C, x0, conj, last)
    y, x_last, _ = custom_op.lti_scan_numba(
        u, A_bar, B_bar, C, x0, last, 2.0 if conj else 1.0, CHUNK
    )
    return y, x_last
