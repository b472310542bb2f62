"""One custom backward for every scan backend: the adjoint of a linear recurrence is itself a
linear recurrence run backwards, so the backward calls the same fast forward kernel.

For h_t = a_t h_{t-1} + b_t and an upstream gradient G_t = dLoss/dh_t (PyTorch's conjugate
convention for complex tensors), the total gradient g_t reaching h_t obeys

    g_t = G_t + conj(a_{t+1}) g_{t+1}          (reverse scan, g_{l-1} = G_{l-1})
    dLoss/db_t = g_t,   dLoss/da_t = g_t conj(h_{t-1}),   dLoss/dh_{-1} = conj(a_0) g_0.

Only a, h and h_{-1} are saved: no per-step history beyond the output itself. The backward is
built from differentiable operations (including this Function), so double backward works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor
# kernel(a, b, h0, reverse) -> h; reverse=True runs h_t = a_t h_{t+1} + b_t from the end.
Kernel = Callable[[Tensor, Tensor, Tensor, bool], Tensor]


class LinearScan(torch.autograd.Function):
    """``LinearScan.apply(a, b, h0, kernel, reverse) -> h``; a, b: (b, l, *s), h0: (b, *s)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor, kernel: Kernel, reverse: bool) -> Tensor:
        with torch.no_grad():
            h = kernel(a, b, h0, reverse)
        ctx.save_for_backward(a, h, h0)
        ctx.kernel = kernel
        ctx.reverse = reverse
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor | None, ...]:
        a, h, h0 = ctx.saved_tensors
        rev = ctx.reverse
        # the decay that carries g from its neighbour "downstream" (t+1, or t-1 when reversed)
        zero = torch.zeros_like(a[:, :1])
        a_next = torch.cat([zero, a[:, :-1]] if rev else [a[:, 1:], zero], dim=1).conj()
        g = LinearScan.apply(a_next, grad_h, torch.zeros_like(h0), ctx.kernel, not rev)
        grad_a = grad_b = grad_h0 = None
        first = -1 if rev else 0  # the step that reads h0
        if ctx.needs_input_grad[0]:
            h_prev = torch.cat(
                [h[:, 1:], h0.unsqueeze(1)] if rev else [h0.unsqueeze(1), h[:, :-1]], 1
            )
            grad_a = g * h_prev.conj()  # (b, l, *s)
        if ctx.needs_input_grad[1]:
            grad_b = g
        if ctx.needs_input_grad[2]:
            grad_h0 = a[:, first].conj() * g[:, first]
        return grad_a, grad_b, grad_h0, None, None
