"""The fused LTI-scan kernels as ``torch.library`` custom ops (namespace ``ssmkit``).

    ssmkit::lti_scan_numba(u, A_bar, B_bar, C, x0, last, scale, chunk) -> (y, x_last, ckpt)
    ssmkit::lti_scan_triton(...)                          (the same schema; SISO both)
    ssmkit::lti_scan_mimo_triton(u, A_bar, B_bar, C, x0, last, scale) -> (y, x_last)

and their backwards (``..._bwd``). Each forward has a fake implementation (shapes and dtypes
only, also the ``meta`` device's) and a registered autograd formula that calls the backward
op, so ``torch.compile(fullgraph=True)`` and ``torch.export`` see one opaque op each way. The
ops call the launchers of :mod:`.cpu_numba` and :mod:`.triton_backend` (imported when an op
runs: those modules import this one). ``ckpt``, the states stored every ``chunk`` steps for the
recomputing backward, is an output so that autograd can save it; it is not differentiable.
Complex A_bar, B_bar, C and states pass as complex tensors. First derivatives only.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch

Tensor = torch.Tensor


def _numba() -> ModuleType:
    from ssmkit.ops.lti_scan import cpu_numba

    return cpu_numba


def _triton() -> ModuleType:
    from ssmkit.ops.lti_scan import triton_backend

    return triton_backend


def _grads_like(u, A_bar, B_bar, C, x0):
    return tuple(torch.empty_like(x) for x in (u, A_bar, B_bar, C, x0))


def _define_siso(backend: str, launchers: Callable[[], ModuleType]) -> object:
    """Define ``ssmkit::lti_scan_<backend>`` (and ``..._bwd``) over the launchers'
    ``fused_forward`` and ``fused_backward`` (SISO: A_bar, B_bar, C (h, n), x0 (b, h, n))."""

    @torch.library.custom_op(f"ssmkit::lti_scan_{backend}", mutates_args=())
    def forward(
        u: Tensor,
        A_bar: Tensor,
        B_bar: Tensor,
        C: Tensor,
        x0: Tensor,
        last: Tensor,
        scale: float,
        chunk: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return launchers().fused_forward(u, A_bar, B_bar, C, x0, last, scale, chunk)

    @forward.register_fake
    def _(u, A_bar, B_bar, C, x0, last, scale, chunk):
        b, length, h = u.shape
        ckpt = u.new_empty(b, (length + chunk - 1) // chunk, 2, A_bar.shape[-1], h)
        return torch.empty_like(u), torch.empty_like(x0), ckpt

    @torch.library.custom_op(f"ssmkit::lti_scan_{backend}_bwd", mutates_args=())
    def backward_op(
        u: Tensor,
        A_bar: Tensor,
        B_bar: Tensor,
        C: Tensor,
        x0: Tensor,
        last: Tensor,
        ckpt: Tensor,
        dy: Tensor,
        dxlast: Tensor,
        scale: float,
        chunk: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        kernels = launchers()
        return kernels.fused_backward(u, A_bar, B_bar, C, x0, last, ckpt, dy, dxlast, scale, chunk)

    @backward_op.register_fake
    def _(u, A_bar, B_bar, C, x0, last, ckpt, dy, dxlast, scale, chunk):
        return _grads_like(u, A_bar, B_bar, C, x0)

    def setup_context(ctx, inputs, output):
        u, A_bar, B_bar, C, x0, last, scale, chunk = inputs
        ctx.save_for_backward(u, A_bar, B_bar, C, x0, last, output[2])
        ctx.scale, ctx.chunk = scale, chunk
        ctx.mark_non_differentiable(output[2])

    def backward(ctx, dy, dxlast, _dckpt):
        u, A_bar, B_bar, C, x0, last, ckpt = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy
        dxlast = torch.zeros_like(x0) if dxlast is None else dxlast
        grads = backward_op(u, A_bar, B_bar, C, x0, last, ckpt, dy, dxlast, ctx.scale, ctx.chunk)
        return (*grads, None, None, None)  # none for last, scale, chunk

    forward.register_autograd(backward, setup_context=setup_context)
    return forward


lti_scan_numba = _define_siso("numba", _numba)
lti_scan_triton = _define_siso("triton", _triton)


@torch.library.custom_op("ssmkit::lti_scan_mimo_triton", mutates_args=())
def lti_scan_mimo_triton(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, last: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """MIMO (A_bar (n,), B_bar (n, h), C (h, n), x0 (b, n)): y (b, l, h) and x_last (b, n)."""
    return _triton().mimo_forward(u, A_bar, B_bar, C, x0, last, scale)


@lti_scan_mimo_triton.register_fake
def _(u, A_bar, B_bar, C, x0, last, scale):
    return torch.empty_like(u), torch.empty_like(x0)


@torch.library.custom_op("ssmkit::lti_scan_mimo_triton_bwd", mutates_args=())
def _mimo_backward(
    u: Tensor,
    A_bar: Tensor,
    B_bar: Tensor,
    C: Tensor,
    x0: Tensor,
    last: Tensor,
    dy: Tensor,
    dxlast: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _triton().mimo_backward(u, A_bar, B_bar, C, x0, last, dy, dxlast, scale)


@_mimo_backward.register_fake
def _(u, A_bar, B_bar, C, x0, last, dy, dxlast, scale):
    return _grads_like(u, A_bar, B_bar, C, x0)


def _mimo_setup(ctx, inputs, output):
    u, A_bar, B_bar, C, x0, last, scale = inputs
    ctx.save_for_backward(u, A_bar, B_bar, C, x0, last)
    ctx.scale = scale


def _mimo_grads(ctx, dy, dxlast):
    u, A_bar, B_bar, C, x0, last = ctx.saved_tensors
    dy = torch.zeros_like(u) if dy is None else dy
    dxlast = torch.zeros_like(x0) if dxlast is None else dxlast
    grads = _mimo_backward(u, A_bar, B_bar, C, x0, last, dy, dxlast, ctx.scale)
    return (*grads, None, None)  # none for last, scale


lti_scan_mimo_triton.register_autograd(_mimo_grads, setup_context=_mimo_setup)
