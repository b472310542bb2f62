"""The ``triton`` backend of the diagonal LTI scan: autograd Function and launcher (SISO).

The kernels (:mod:`.triton_kernels`) are imported on the first call, so ``import ssmkit`` never
imports triton. They run compiled on CUDA tensors, and on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, reached only by ``backend="triton"``): that is how CI
tests them. Complex parameters and states travel as (real, imaginary) float planes, laid out
as the numba backend lays them out (:func:`.cpu_numba._parts`), (..., 2, n, h).
"""

from __future__ import annotations

import torch

from ssmkit.ops import triton_support
from ssmkit.ops.lti_scan.cpu_numba import _join, _parts
from ssmkit.ops.lti_scan.ref import lti_scan_ref

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


class TritonLTIScan(torch.autograd.Function):
    """``apply(u, A_bar, B_bar, C, x0, last, scale) -> (y, x_last)``, SISO (first derivatives)."""

    @staticmethod
    def forward(ctx, u, A_bar, B_bar, C, x0, last, scale):
        kern = _kernels(u.device)
        u, last = u.contiguous(), last.contiguous()
        b, L, h = u.shape
        n = A_bar.shape[-1]
        dtype = u.dtype
        block, n_blk, block_n = _blocks(kern, h, n)
        chunk = kern.CHUNK
        n_chunks = -(-L // chunk)
        P = torch.cat([_parts(A_bar, dtype), _parts(B_bar, dtype), _parts(scale * C, dtype)])
        y = torch.empty_like(u)  # (b, l, h)
        xlast = u.new_empty(b, 2, n, h)
        ckpt = u.new_empty(b, n_chunks, 2, n, h)  # the state every CHUNK steps
        kern.lti_scan_fwd_kernel[(b, n_blk)](
            u, P, _parts(x0, dtype), last, y, xlast, ckpt,
            L, h, n, n_chunks, chunk,
            BLOCK=block, BLOCK_N=block_n,
        )  # fmt: skip
        ctx.save_for_backward(u, P, last, ckpt, A_bar, B_bar, C, x0)
        ctx.scale = scale
        ctx.chunk = chunk
        return y, _join(xlast, x0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dxlast):
        u, P, last, ckpt, A_bar, B_bar, C, x0 = ctx.saved_tensors
        kern = _kernels(u.device)
        b, L, h = u.shape
        n = A_bar.shape[-1]
        block, n_blk, block_n = _blocks(kern, h, n)
        dy = torch.zeros_like(u) if dy is None else dy.to(u.dtype).contiguous()
        dx = u.new_zeros(b, 2, n, h) if dxlast is None else _parts(dxlast, u.dtype)
        du = torch.empty_like(u)
        dP = u.new_empty(b, 6, n, h)  # per batch item, summed below
        dx0 = u.new_empty(b, 2, n, h)
        scratch = u.new_empty(b * n_blk, ctx.chunk, 2, block, block_n)
        kern.lti_scan_bwd_kernel[(b, n_blk)](
            u, P, last, ckpt, dy, dx, du, dP, dx0, scratch,
            L, h, n, ckpt.shape[1], ctx.chunk,
            BLOCK=block, BLOCK_N=block_n,
        )  # fmt: skip
        dP = dP.sum(0)  # (6, n, h), over the batch in one fixed order: the same on every run
        grads = (
            du,
            _join(dP[0:2], A_bar),
            _join(dP[2:4], B_bar),
            _join(dP[4:6], C) * ctx.scale,
            _join(dx0, x0),
        )
        return (*grads, None, None)


def lti_scan_triton(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, conj: bool, last: Tensor
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.lti_scan.ref.lti_scan_ref` (Triton, SISO fused).

    A MIMO system (state (n,)) has no (b, l, h, n) history to avoid: it runs as the reference
    does, inject and readout as matrix products around the registered diagonal scan.

    Args:
        u: (b, l, h) real. A_bar, B_bar, C: SISO (h, n), real or complex. x0: (b, h, n).
        conj: y = 2 Re(C x) (conjugate pairs) instead of Re(C x).
        last: (b,) int64, the step whose state each item returns.

    Returns:
        y: (b, l, h) in u's dtype, and x_last: (b, h, n) in x0's dtype.
    """
    if A_bar.ndim == 1:
        return lti_scan_ref(u, A_bar, B_bar, C, x0, conj, last)
    return TritonLTIScan.apply(u, A_bar, B_bar, C, x0, last, 2.0 if conj else 1.0)
