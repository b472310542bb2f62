"""The ``triton`` backend of the diagonal LTI scan: launchers of the SISO kernels
(:mod:`.triton_kernels`) and of the MIMO scan kernel (:mod:`.triton_mimo`), called by the
custom ops of :mod:`.custom_op`.

The kernels are imported on the first call, so ``import ssmkit`` never
imports triton. They run compiled on CUDA tensors, and on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, reached only by ``backend="triton"``): that is how CI
tests them. Complex parameters and states travel as (real, imaginary) float planes, laid out
as the numba backend lays them out (:func:`.cpu_numba._parts`), (..., 2, n, h).
"""

from __future__ import annotations

import torch

from ssmkit.ops import triton_support
from ssmkit.ops.lti_scan import custom_op
from ssmkit.ops.lti_scan.cpu_numba import _join, _params, _parts
from ssmkit.ops.lti_scan.ref import inject, readout

Tensor = torch.Tensor

available = triton_support.available


def _kernels(device: torch.device):
    """The kernel module, imported now (lazily), once it is known the kernels can run here."""
    from ssmkit.ops.lti_scan import triton_kernels

    triton_support.check_launch(device, triton_kernels.lti_scan_fwd_kernel)
    return triton_kernels


def _blocks(kern, h: int, n: int) -> tuple[int, int, int]:
    """(channels per program, programs per batch item, padded modes)."""
    import triton

    block_n = triton.next_power_of_2(n)
    block = min(kern.BLOCK_H, max(1, kern.TILE_VALUES // block_n), triton.next_power_of_2(h))
    return block, triton.cdiv(h, block), block_n


def fused_forward(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, last: Tensor, scale: float,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Launch the SISO forward kernel; arguments and results as
    :func:`.cpu_numba.fused_forward` (no autograd: :mod:`.custom_op` wraps it)."""
    kern = _kernels(u.device)
    u, last = u.contiguous(), last.contiguous()
    b, L, h = u.shape
    n = A_bar.shape[-1]
    block, n_blk, block_n = _blocks(kern, h, n)
    n_chunks = -(-L // chunk)
    P = _params(A_bar, B_bar, C, scale, u.dtype)
    y = torch.empty_like(u)  # (b, l, h)
    xlast = u.new_empty(b, 2, n, h)
    ckpt = u.new_empty(b, n_chunks, 2, n, h)  # the state every chunk steps
    kern.lti_scan_fwd_kernel[(b, n_blk)](
        u, P, _parts(x0, u.dtype), last, y, xlast, ckpt,
        L, h, n, n_chunks, chunk,
        BLOCK=block, BLOCK_N=block_n,
    )  # fmt: skip
    return y, _join(xlast, x0), ckpt


def fused_backward(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, last: Tensor, ckpt: Tensor,
    dy: Tensor, dxlast: Tensor, scale: float, chunk: int,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Launch the SISO recomputing backward kernel; arguments and results as
    :func:`.cpu_numba.fused_backward` (no autograd: :mod:`.custom_op` wraps it)."""
    kern = _kernels(u.device)
    u, last, ckpt = u.contiguous(), last.contiguous(), ckpt.contiguous()
    b, L, h = u.shape
    n = A_bar.shape[-1]
    block, n_blk, block_n = _blocks(kern, h, n)
    P = _params(A_bar, B_bar, C, scale, u.dtype)
    dy, dx = dy.to(u.dtype).contiguous(), _parts(dxlast, u.dtype)
    du = torch.empty_like(u)
    dP = u.new_empty(b, 6, n, h)  # per batch item, summed below
    dx0 = u.new_empty(b, 2, n, h)
    scratch = u.new_empty(b * n_blk, chunk, 2, block, block_n)
    kern.lti_scan_bwd_kernel[(b, n_blk)](
        u, P, last, ckpt, dy, dx, du, dP, dx0, scratch,
        L, h, n, ckpt.shape[1], chunk,
        BLOCK=block, BLOCK_N=block_n,
    )  # fmt: skip
    dP = dP.sum(0)  # (6, n, h), over the batch in one fixed order: the same on every run
    return (
        du,
        _join(dP[0:2], A_bar),
        _join(dP[2:4], B_bar),
        _join(dP[4:6], C) * scale,
        _join(dx0, x0),
    )


def mimo_forward(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, last: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """MIMO forward (no autograd: :mod:`.custom_op` wraps it): inject, the fused diagonal
    scan (:mod:`.triton_mimo`), readout. The states (b, l, n) live only during the call.

    Args:
        u: (b, l, h) real. A_bar: (n,). B_bar: (n, h). C: (h, n). x0: (b, n).
        last: (b,) int64, the step whose state each item returns. scale: s (1 or 2).

    Returns:
        y (b, l, h) in u's dtype and x_last (b, n) in x0's dtype.
    """
    states = _mimo_states(u, A_bar, B_bar, x0)  # (b, l, n) complex
    y = readout(states, C, False, True) * scale
    x_last = states[torch.arange(u.shape[0], device=u.device), last]
    return y.to(u.dtype), _as(x_last, x0)


def mimo_backward(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, last: Tensor, dy: Tensor,
    dxlast: Tensor, scale: float,
) -> tuple[Tensor, ...]:  # fmt: skip
    """MIMO backward: the states recomputed, the adjoint g by the same kernel in reverse,
    then (g = dL/dRe x + i dL/dIm x, x_{-1} = x0, sums over b and t)

        g_t = conj(A_bar) g_{t+1} + s dy_t conj(C) (+ dL/dx_last at t = last)
        dA_bar = sum g_t conj(x_{t-1})    dB_bar = sum g_t u_t^T    dC = s sum dy_t conj(x_t)^T
        du_t = Re(conj(B_bar)^T g_t)      dx0 = conj(A_bar) g_0

    Returns:
        du, dA_bar, dB_bar, dC, dx0 in the shapes and dtypes of u, A_bar, B_bar, C, x0.
    """
    b = u.shape[0]
    states = _mimo_states(u, A_bar, B_bar, x0)  # (b, l, n) complex, recomputed
    cdt = states.dtype
    dx = (scale * dy.to(cdt)) @ C.to(cdt).conj_physical()  # (b, l, n): dL/dx_t by the readout
    dx[torch.arange(b, device=u.device), last] += dxlast.to(cdt)
    g = _scan(A_bar.to(cdt), dx, None)  # (b, l, n)
    prev = torch.cat([x0.to(cdt).unsqueeze(1), states[:, :-1]], 1)  # x_{t-1}
    uc = u.to(cdt)
    return (
        (g @ B_bar.to(cdt).conj_physical()).real.to(u.dtype),
        _as((g * prev.conj_physical()).sum((0, 1)), A_bar),
        _as(torch.einsum("bln,blh->nh", g, uc), B_bar),
        _as(scale * torch.einsum("blh,bln->hn", dy.to(cdt), states.conj_physical()), C),
        _as(A_bar.to(cdt).conj_physical() * g[:, 0], x0),
    )


def _mimo_states(u: Tensor, A_bar: Tensor, B_bar: Tensor, x0: Tensor) -> Tensor:
    """x_t (b, l, n), complex in u's precision (a real system runs with zero imaginary parts)."""
    cdt = torch.complex128 if u.dtype == torch.float64 else torch.complex64
    v = inject(u, B_bar, True).to(cdt)  # (b, l, n)
    return _scan(A_bar.to(cdt), v, x0.to(cdt))


def _scan(A_bar: Tensor, v: Tensor, x0: Tensor | None) -> Tensor:
    """The kernel: x_t = A_bar x_{t-1} + v_t from x0, or with x0 None the adjoint
    g_t = conj(A_bar) g_{t+1} + v_t backwards from g_l = 0. A_bar (n,), v (b, l, n) complex."""
    from ssmkit.ops.lti_scan import triton_mimo

    triton_support.check_launch(v.device, triton_mimo.diagonal_scan_kernel)
    b, L, n = v.shape
    a, vr = torch.view_as_real(A_bar.contiguous()), torch.view_as_real(v.contiguous())
    x0r = torch.view_as_real(x0.contiguous()) if x0 is not None else vr  # unused in reverse
    out = torch.empty_like(vr)  # (b, l, n, 2)
    block = min(triton_mimo.BLOCK_N, max(16, 1 << (n - 1).bit_length()))
    triton_mimo.diagonal_scan_kernel[(b, -(-n // block))](
        a, vr, x0r, out, L, n, REVERSE=x0 is None, BLOCK_N=block
    )
    return torch.view_as_complex(out)


def _as(x: Tensor, like: Tensor) -> Tensor:
    """A complex result in ``like``'s dtype: the real part for a real ``like``."""
    return (x if like.is_complex() else x.real).to(like.dtype).contiguous()


def lti_scan_triton(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, conj: bool, last: Tensor
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.lti_scan.ref.lti_scan_ref` (Triton).

    SISO: fused kernels (:mod:`.triton_kernels`). MIMO (state (n,)): inject and readout as
    matrix products around the fused diagonal scan (:mod:`.triton_mimo`), keeping no states.

    Args:
        u: (b, l, h) real. A_bar, B_bar, C: SISO (h, n), MIMO (n,), (n, h), (h, n); real or
            complex. x0: (b, *s).
        conj: y = 2 Re(C x) (conjugate pairs) instead of Re(C x).
        last: (b,) int64, the step whose state each item returns.

    Returns:
        y: (b, l, h) in u's dtype, and x_last: (b, *s) in x0's dtype.
    """
    scale = 2.0 if conj else 1.0
    if A_bar.ndim == 1:
        return custom_op.lti_scan_mimo_triton(u, A_bar, B_bar, C, x0, last, scale)
    y, x_last, _ = custom_op.lti_scan_triton(u, A_bar, B_bar, C, x0, last, scale, _chunk())
    return y, x_last


def _chunk() -> int:
    """The kernels' steps between stored states, read at call time (tests shrink it)."""
    from ssmkit.ops.lti_scan import triton_kernels

    return triton_kernels.CHUNK
