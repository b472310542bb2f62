"""The Triton SSD kernels as ``torch.library`` custom ops (namespace ``ssmkit``).

    ssmkit::ssd_triton(x, delta, A, B, C, h0, keep?, chunk_size) -> (y, final, s, dec, prev)
    ssmkit::ssd_triton_bwd(x, delta, A, B, C, keep?, s, dec, prev, dy, dlast, chunk_size)

``keep`` is an optional tensor (None: no resets). The forward has a fake implementation
(shapes and dtypes only, also the ``meta`` device's) and a registered autograd formula that
calls the backward op, so ``torch.compile(fullgraph=True)`` and ``torch.export`` see one opaque
op each way. The ops call the launchers of :mod:`.triton_backend` (imported when an op runs:
that module imports this one). The chunk-level running sums s (b, h, c, t), decays dec
(b, h, c) and entering states prev (b, c, h, p, n) are outputs so that autograd can save them
for the backward; they are not differentiable. First derivatives only.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


@torch.library.custom_op("ssmkit::ssd_triton", mutates_args=())
def ssd_triton(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x (b, l, h, p), delta (b, l, h), A (h,), B, C (b, l, g, n), h0 (b, h, p, n), keep (b, l)
    or None, chunk_size <= l: y (b, l, h, p), the final state (b, h, p, n), s, dec, prev."""
    from ssmkit.ops.ssd import triton_backend

    return triton_backend.ssd_triton_forward(x, delta, A, B, C, h0, keep, chunk_size)


@ssd_triton.register_fake
def _(x, delta, A, B, C, h0, keep, chunk_size):
    b, length, h, p = x.shape
    n = B.shape[-1]
    c = (length + chunk_size - 1) // chunk_size
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = x.new_empty(b, h, c, chunk_size, dtype=acc)
    prev = x.new_empty(b, c, h, p, n, dtype=acc)
    return torch.empty_like(x), x.new_empty(b, h, p, n), s, x.new_empty(b, h, c, dtype=acc), prev


@torch.library.custom_op("ssmkit::ssd_triton_bwd", mutates_args=())
def _backward(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    keep: Tensor | None,
    s: Tensor,
    dec: Tensor,
    prev: Tensor,
    dy: Tensor,
    dlast: Tensor,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from ssmkit.ops.ssd import triton_backend

    saved = (x, delta, A, B, C, keep, s, dec, prev)
    return triton_backend.ssd_triton_backward(saved, dy, dlast, chunk_size)


@_backward.register_fake
def _(x, delta, A, B, C, keep, s, dec, prev, dy, dlast, chunk_size):
    b, _, h, p = x.shape
    grads = (torch.empty_like(t) for t in (x, delta, A, B, C))
    return (*grads, x.new_empty(b, h, p, B.shape[-1]))


def _setup(ctx, inputs, output):
    x, delta, A, B, C, _, keep, chunk_size = inputs
    ctx.save_for_backward(x, delta, A, B, C, keep, *output[2:])
    ctx.chunk_size = chunk_size
    ctx.mark_non_differentiable(*output[2:])


def _grads(ctx, dy, dlast, *_chunk_level):
    x, delta, A, B, C, keep, s, dec, prev = ctx.saved_tensors
    dy = torch.zeros_like(x) if dy is None else dy
    dlast = x.new_zeros(prev.shape[0], *prev.shape[2:]) if dlast is None else dlast
    grads = _backward(x, delta, A, B, C, keep, s, dec, prev, dy, dlast, ctx.chunk_size)
    return (*grads, None, None)  # none for keep, chunk_size


ssd_triton.register_autograd(_grads, setup_context=_setup)
