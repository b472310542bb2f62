"""The fused selective-scan kernels as ``torch.library`` custom ops (namespace ``ssmkit``).

    ssmkit::selective_scan_numba(u, delta, A, B, C, h0, keep, chunk) -> (y, h_last, ckpt)
    ssmkit::selective_scan_triton(...)                                 (the same schema)

and their backwards ``ssmkit::selective_scan_{numba,triton}_bwd``. Each forward has a fake
implementation (shapes and dtypes only, also the ``meta`` device's) and a registered autograd
formula that calls the backward op, so ``torch.compile(fullgraph=True)`` and ``torch.export``
see one opaque op each way instead of breaking the graph around a Python autograd Function.
The ops call the launchers of :mod:`.cpu_numba` and :mod:`.triton_backend` (imported when an op
runs: those modules import this one). ``ckpt`` (the states stored every ``chunk`` steps, the
only thing the recomputing backward keeps) is an output so that autograd can save it; it is
not differentiable. First derivatives only: the backward ops have no autograd formula.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch

Tensor = torch.Tensor


def _numba() -> ModuleType:
    from ssmkit.ops.selective_scan import cpu_numba

    return cpu_numba


def _triton() -> ModuleType:
    from ssmkit.ops.selective_scan import triton_backend

    return triton_backend


def _define(
    backend: str, launchers: Callable[[], ModuleType], fake_ckpt: Callable[..., Tensor]
) -> object:
    """Define ``ssmkit::selective_scan_<backend>`` (and ``..._bwd``) over the launchers'
    ``fused_forward`` and ``fused_backward``; ``fake_ckpt(u, chunks, n)`` is an empty tensor
    laid out as the backend stores its states."""

    @torch.library.custom_op(f"ssmkit::selective_scan_{backend}", mutates_args=())
    def forward(
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        h0: Tensor,
        keep: Tensor,
        chunk: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return launchers().fused_forward(u, delta, A, B, C, h0, keep, chunk)

    @forward.register_fake
    def _(u, delta, A, B, C, h0, keep, chunk):
        b, length, d = u.shape
        n = A.shape[1]
        ckpt = fake_ckpt(u, (length + chunk - 1) // chunk, n)
        return torch.empty_like(u), u.new_empty(b, d, n), ckpt

    @torch.library.custom_op(f"ssmkit::selective_scan_{backend}_bwd", mutates_args=())
    def backward_op(
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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return launchers().fused_backward(u, delta, A, B, C, keep, ckpt, dy, dhlast, chunk)

    @backward_op.register_fake
    def _(u, delta, A, B, C, keep, ckpt, dy, dhlast, chunk):
        b, _, d = u.shape
        like = (u, delta, A, B, C)
        return (*(torch.empty_like(x) for x in like), u.new_empty(b, d, A.shape[1]))

    def setup_context(ctx, inputs, output):
        u, delta, A, B, C, _, keep, chunk = inputs
        ctx.save_for_backward(u, delta, A, B, C, keep, output[2])
        ctx.chunk = chunk
        ctx.mark_non_differentiable(output[2])

    def backward(ctx, dy, dhlast, _dckpt):
        u, delta, A, B, C, keep, ckpt = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy
        dhlast = u.new_zeros(u.shape[0], *A.shape) if dhlast is None else dhlast
        grads = backward_op(u, delta, A, B, C, keep, ckpt, dy, dhlast, ctx.chunk)
        return (*grads, None, None)  # none for keep, chunk

    forward.register_autograd(backward, setup_context=setup_context)
    return forward


def _numba_ckpt(u: Tensor, chunks: int, n: int) -> Tensor:
    return u.new_empty(u.shape[0], chunks, n, u.shape[2])  # (b, c, n, d)


def _triton_ckpt(u: Tensor, chunks: int, n: int) -> Tensor:
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    return u.new_empty(u.shape[0], chunks, u.shape[2], n, dtype=acc)  # (b, c, d, n)


selective_scan_numba = _define("numba", _numba, _numba_ckpt)
selective_scan_triton = _define("triton", _triton, _triton_ckpt)
