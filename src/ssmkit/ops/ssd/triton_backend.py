"""The ``triton`` backend of :func:`ssmkit.ops.ssd.ssd`: the SSD chunked algorithm in Triton.

Forward: four Triton kernels (:mod:`.triton_kernels`): chunk cumsum of delta A, chunk-local
states, state passing between chunks, and each chunk's output (intra-chunk matmuls with
``tl.dot`` plus the entering state). Only (b, c, h, p, n) chunk states and (b, h, c, t) running
sums are written besides y; nothing of size (b, l, h, n).

Backward: three Triton kernels (:mod:`.triton_kernels_bwd`): the gradient of each chunk's
entering state through y, state passing backwards over the chunks, and each chunk's input
gradients (``tl.dot`` again). Autograd keeps the inputs and the forward's chunk-level sums and
states; the only (b, l, h, n) tensors are the per-head dB and dC gradients before the heads of
a group are summed.

Triton is imported lazily, on the first call, so ``import ssmkit`` never needs it. The backend
runs on CUDA tensors, or on CPU tensors when Triton's interpreter is on (``TRITON_INTERPRET=1``
set before Triton is first imported), which is how CI tests it without a GPU.
"""

from __future__ import annotations

import torch

from ssmkit.ops import triton_support
from ssmkit.ops.ssd import custom_op
from ssmkit.ops.ssd.chunked import CHUNK

Tensor = torch.Tensor

available = triton_support.available  # Triton installed (the optional ``gpu`` extra)


def ssd_triton(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
    chunk_size: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.ssd.ref.ssd_ref`; differentiable once.

    Args:
        x: (b, l, h, p). delta: (b, l, h), >= 0. A: (h,). B, C: (b, l, g, n).
        h0: (b, h, p, n) initial state. keep: (b, l) 1.0, or 0.0 where the state is reset.
        chunk_size: steps per chunk (clipped to l).

    Returns:
        y: (b, l, h, p) without D and z, and the final state (b, h, p, n).

    Raises:
        RuntimeError: Triton is not installed, or the tensors are on CPU without
            ``TRITON_INTERPRET=1`` (see :func:`ssmkit.ops.triton_support.check_launch`).
        ValueError: a device other than cuda and cpu, or chunk_size < 1.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, x.shape[1])
    y, last, *_ = custom_op.ssd_triton(x, delta, A, B, C, h0, keep, chunk_size)
    return y, last


def ssd_triton_forward(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, ...]:
    """Launch the four forward kernels; arguments as :func:`ssd_triton` (no autograd:
    :mod:`.custom_op` wraps it).

    Returns:
        y (b, l, h, p), the final state (b, h, p, n) and, for the backward, the running sums
        s (b, h, c, t), the chunk decays dec (b, h, c) and the entering states prev
        (b, c, h, p, n), in the accumulation dtype.
    """
    if not available():
        raise RuntimeError(f"the 'triton' backend of ssd needs {triton_support.NEEDS}")
    import triton.language as tl

    from ssmkit.ops.ssd import triton_kernels as K  # lazy: Triton is optional

    triton_support.check_launch(x.device, K.chunk_scan_kernel)
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    T = chunk_size
    c = -(-l // T)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    ACC = tl.float64 if acc == torch.float64 else tl.float32
    # keep's dummy (never read when HAS_RESET is off) keeps one signature for both cases
    has_reset = keep is not None
    keep_t = keep if has_reset else x.new_ones(1, 1)
    keep_strides = (keep_t.stride(0), keep_t.stride(1))
    s = x.new_empty(b, h, c, T, dtype=acc)  # running sums of delta A inside each chunk
    dec = x.new_empty(b, h, c, dtype=acc)  # what passes through each chunk
    local = x.new_empty(b, c, h, p, n, dtype=acc)  # (b, c, h, p, n)
    prev = torch.empty_like(local)  # state entering each chunk
    final = x.new_empty(b, h, p, n, dtype=acc)
    y = torch.empty_like(x)  # (b, l, h, p)
    h0 = h0.contiguous()
    bt, bp, bn = K.dot_block(T), K.dot_block(p), K.dot_block(n)
    x_strides, d_strides = x.stride(), delta.stride()
    B_strides, C_strides = B.stride(), C.stride()
    K.chunk_cumsum_kernel[(b, c, h)](
        delta, A, keep_t, s, dec, l, h, c, T, *d_strides, *keep_strides,
        HAS_RESET=has_reset, ACC=ACC, BLOCK_T=bt,
    )  # fmt: skip
    K.chunk_state_kernel[(b * h, c)](
        x, delta, B, s, keep_t, local, l, h, c, T, h // g, p, n,
        *x_strides, *d_strides, *B_strides, *keep_strides,
        HAS_RESET=has_reset, ACC=ACC, BLOCK_T=bt, BLOCK_P=bp, BLOCK_N=bn,
    )  # fmt: skip
    pn = p * n
    K.state_passing_kernel[(b * h, -(-pn // K.STATE_BLOCK))](
        local, dec, h0, prev, final, h, c, pn, ACC=ACC, BLOCK=K.STATE_BLOCK
    )
    K.chunk_scan_kernel[(b * h, c)](
        x, delta, B, C, s, keep_t, prev, y, l, h, c, T, h // g, p, n,
        *x_strides, *d_strides, *B_strides, *C_strides, *keep_strides, *y.stride(),
        HAS_RESET=has_reset, ACC=ACC, BLOCK_T=bt, BLOCK_P=bp, BLOCK_N=bn,
    )  # fmt: skip
    return y, final.to(x.dtype), s, dec, prev


def ssd_triton_backward(
    saved: tuple[Tensor, ...], dy: Tensor, dlast: Tensor, chunk_size: int
) -> tuple[Tensor, ...]:
    """Launch the three backward kernels (:mod:`.triton_kernels_bwd`).

    Args:
        saved: the inputs x, delta, A, B, C, keep (or None) and the forward's chunk-level
            s (b, h, c, t), dec (b, h, c) and prev (b, c, h, p, n).
        dy: (b, l, h, p) gradient of y. dlast: (b, h, p, n) gradient of the final state.
        chunk_size: the forward's steps per chunk.

    Returns:
        dx, ddelta, dA, dB, dC, dh0 in the inputs' shapes and dtype.
    """
    import triton.language as tl

    from ssmkit.ops.ssd import triton_kernels as K  # lazy: Triton is optional
    from ssmkit.ops.ssd import triton_kernels_bwd as KB

    x, delta, A, B, C, keep, s, dec, prev = saved
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    T, c, pn = chunk_size, prev.shape[1], p * n
    acc = s.dtype
    ACC = tl.float64 if acc == torch.float64 else tl.float32
    has_reset = keep is not None
    keep_t = keep if has_reset else x.new_ones(1, 1)
    keep_strides = (keep_t.stride(0), keep_t.stride(1))
    bt, bp, bn = K.dot_block(T), K.dot_block(p), K.dot_block(n)
    dy = dy.contiguous()
    dP = torch.empty_like(prev)  # (b, c, h, p, n): gradient of the entering states through y
    KB.chunk_state_grad_kernel[(b * h, c)](
        dy, C, s, keep_t, dP, l, h, c, T, h // g, p, n,
        *dy.stride(), *C.stride(), *keep_strides,
        HAS_RESET=has_reset, ACC=ACC, BLOCK_T=bt, BLOCK_P=bp, BLOCK_N=bn,
    )  # fmt: skip
    n_blocks = -(-pn // K.STATE_BLOCK)
    dS = torch.empty_like(prev)  # gradient of each chunk's local state
    ddec = x.new_empty(b, h, c, n_blocks, dtype=acc)
    dh0 = x.new_empty(b, h, p, n, dtype=acc)
    KB.state_passing_bwd_kernel[(b * h, n_blocks)](
        dP, dec, prev, dlast.contiguous(), dS, ddec, dh0, h, c, pn, n_blocks,
        ACC=ACC, BLOCK=K.STATE_BLOCK,
    )  # fmt: skip
    ddec = ddec.sum(-1).contiguous()  # (b, h, c)
    dx = x.new_empty(b, l, h, p, dtype=acc)
    ddelta = x.new_empty(b, l, h, dtype=acc)
    dB_h = x.new_empty(b, l, h, n, dtype=acc)  # per head, summed over each group below
    dC_h = torch.empty_like(dB_h)
    dA = x.new_empty(b, h, c, dtype=acc)  # per chunk, summed below
    KB.chunk_scan_bwd_kernel[(b * h, c)](
        x, delta, A, B, C, s, keep_t, prev, dS, ddec, dec, dy, dx, ddelta, dB_h, dC_h, dA,
        l, h, c, T, h // g, p, n,
        *x.stride(), *delta.stride(), *B.stride(), *C.stride(), *keep_strides, *dy.stride(),
        HAS_RESET=has_reset, ACC=ACC, BLOCK_T=bt, BLOCK_P=bp, BLOCK_N=bn,
    )  # fmt: skip
    dB = dB_h.view(b, l, g, h // g, n).sum(3)  # (b, l, g, n)
    dC = dC_h.view(b, l, g, h // g, n).sum(3)
    grads = dx, ddelta, dA.sum((0, 2)), dB, dC, dh0
    return tuple(t.to(x.dtype) for t in grads)
