"""The ``triton`` backend of the selective scan: autograd Function and launcher.

The kernels (:mod:`.triton_kernels`) are imported on the first call, so ``import ssmkit`` never
imports triton. They run compiled on CUDA tensors, and on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, reached only by ``backend="triton"``): that is how CI
tests them. The backward keeps no (b, l, d, n) history: the states are recomputed chunk by
chunk from those the forward stored every ``CHUNK`` steps.
"""

from __future__ import annotations

import torch

from ssmkit.ops import triton_support
from ssmkit.ops.selective_scan import custom_op

Tensor = torch.Tensor

available = triton_support.available


def _kernels(device: torch.device):
    """The kernel module, imported now (lazily), once it is known the kernels can run here."""
    from ssmkit.ops.selective_scan import triton_kernels

    triton_support.check_launch(device, triton_kernels.selective_scan_fwd_kernel)
    return triton_kernels


def _layout(kern, d: int, g: int, n: int) -> tuple[int, int, int, int]:
    """(channels per group, channels per program, programs per group, padded n)."""
    import triton

    dg = d // g  # a program never straddles two groups
    block_n = triton.next_power_of_2(n)
    block = min(kern.BLOCK_D, max(1, kern.TILE_VALUES // block_n), triton.next_power_of_2(dg))
    return dg, block, triton.cdiv(dg, block), block_n


def fused_forward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, keep: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel (no autograd: :mod:`.custom_op` wraps it).

    Args:
        u, delta: (b, l, d). A: (d, n). B, C: (b, l, g, n). h0: (b, d, n). keep: (b, l).
        chunk: steps between stored states.

    Returns:
        y (b, l, d), h_last (b, d, n) and the stored states ckpt (b, l / chunk, d, n) in the
        accumulation dtype (float64 for float64 inputs, else float32).
    """
    kern = _kernels(u.device)
    u, delta, A, B, C, h0, keep = (x.contiguous() for x in (u, delta, A, B, C, h0, keep))
    b, L, d = u.shape
    g, n = B.shape[2], B.shape[3]
    dg, block, nblk, block_n = _layout(kern, d, g, n)
    n_chunks = -(-L // chunk)
    y = torch.empty_like(u)  # (b, l, d)
    hlast = u.new_empty(b, d, n)
    ckpt = u.new_empty(b, n_chunks, d, n, dtype=acc_dtype(u.dtype))  # every chunk steps
    kern.selective_scan_fwd_kernel[(b, g, nblk)](
        u, delta, A, B, C, h0, keep, y, hlast, ckpt,
        L, d, g, n, dg, n_chunks, chunk,
        BLOCK=block, BLOCK_N=block_n,
    )  # fmt: skip
    return y, hlast, ckpt


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
        du, ddelta, dA, dB, dC, dh0 in the shapes of u, delta, A, B, C, h0, in u's dtype.
    """
    kern = _kernels(u.device)
    u, delta, A, B, C, keep = (x.contiguous() for x in (u, delta, A, B, C, keep))
    b, L, d = u.shape
    g, n = B.shape[2], B.shape[3]
    dg, block, nblk, block_n = _layout(kern, d, g, n)
    n_chunks, acc = ckpt.shape[1], ckpt.dtype
    dy, dhlast = dy.to(u.dtype).contiguous(), dhlast.to(u.dtype).contiguous()
    du = torch.empty_like(u)
    ddelta = torch.empty_like(u)
    dA = u.new_empty(b, d, n, dtype=acc)  # per batch item, summed below
    dB = u.new_empty(b, L, g, nblk, n, dtype=acc)  # per program, summed below
    dC = torch.empty_like(dB)
    dh0 = u.new_empty(b, d, n)
    scratch = u.new_empty(b * g * nblk, chunk, block, block_n, dtype=acc)
    kern.selective_scan_bwd_kernel[(b, g, nblk)](
        u, delta, A, B, C, keep, ckpt.contiguous(), dy, dhlast,
        du, ddelta, dA, dB, dC, dh0, scratch,
        L, d, g, n, dg, nblk, n_chunks, chunk,
        BLOCK=block, BLOCK_N=block_n,
    )  # fmt: skip
    # the partial sums are added in one fixed order: the same gradients on every run
    dtype = u.dtype
    return du, ddelta, dA.sum(0).to(dtype), dB.sum(3).to(dtype), dC.sum(3).to(dtype), dh0


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulation dtype for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.selective_scan.ref.selective_scan_ref` (Triton).

    Args:
        u, delta: (b, l, d). A: (d, n). B, C: (b, l, g, n). h0: (b, d, n).
        keep: (b, l), 0 where a packed sequence starts, else 1; None keeps every state.

    Returns:
        y: (b, l, d) without the D and z terms, and the final state (b, d, n).
    """
    if keep is None:
        keep = u.new_ones(u.shape[:2])
    chunk = _chunk()
    y, h_last, _ = custom_op.selective_scan_triton(u, delta, A, B, C, h0, keep.to(u.dtype), chunk)
    return y, h_last


def _chunk() -> int:
    """The kernels' steps between stored states, read at call time (tests shrink it)."""
    from ssmkit.ops.selective_scan import triton_kernels

    return triton_kernels.CHUNK
