"""A time-invariant diagonal SSM from input to output, by its definition (the slow twin).

    x_t = A_bar x_{t-1} + B_bar u_t        y_t = s Re(C x_t)        (S4 eq. 3; S5 eq. 2)

s = 2 when every stored mode stands for a conjugate pair (S4D, DSS, S5), else 1 (LRU, real
modes). SISO (S4D, DSS): one n-mode system per channel, state (h, n), A_bar (h, n). MIMO
(S5, LRU): one n-mode system driven by all h channels, state (n,), A_bar (n,).
"""

from __future__ import annotations

import torch

from ssmkit.core.dtypes import full_precision
from ssmkit.ops.scan import scan

Tensor = torch.Tensor


def inject(u: Tensor, B_bar: Tensor, mimo: bool) -> Tensor:
    """B_bar u_t. u: (b, l, h) real; B_bar: SISO (h, n), MIMO (n, h). Returns (b, l, *s)."""
    if mimo:  # a real u times a complex B: two real products, not one complex one
        if B_bar.is_complex():
            # in the SSM's precision even under autocast (there is no bfloat16 complex)
            with full_precision(u.device):
                u = u.to(B_bar.real.dtype)
                return torch.complex(u @ B_bar.real.T, u @ B_bar.imag.T)  # (b, l, n)
        return u @ B_bar.T
    return u.unsqueeze(-1) * B_bar  # (b, l, h, n)


def readout(x: Tensor, C: Tensor, conj: bool, mimo: bool) -> Tensor:
    """s Re(C x_t). x: (b, l, *s); C: (h, n). Returns (b, l, h) real."""
    if mimo:
        y = x @ C.T.to(x.dtype) if x.is_complex() else x @ (C.real if C.is_complex() else C).T
    else:
        y = (x * C).sum(-1)  # (b, l, h)
    y = y.real if y.is_complex() else y
    return 2 * y if conj else y


def lti_scan_ref(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, x0: Tensor, conj: bool, last: Tensor
) -> tuple[Tensor, Tensor]:
    """inject, the registered diagonal :func:`~ssmkit.ops.scan` (all states kept), readout.

    Args:
        u: (b, l, h) real input.
        A_bar: SISO (h, n) or MIMO (n,), real or complex.
        B_bar: SISO (h, n) or MIMO (n, h). C: (h, n).
        x0: (b, *s) state before the first step.
        conj: s = 2 (conjugate pairs) instead of 1.
        last: (b,) int64, the step whose state each item returns (its length - 1).

    Returns:
        y: (b, l, h) real, and x_last: (b, *s) the state after step ``last``.
    """
    mimo = A_bar.ndim == 1
    bu = inject(u, B_bar, mimo).to(x0.dtype)  # (b, l, *s)
    states = scan(A_bar.expand(1, 1, *A_bar.shape), bu, initial_state=x0)  # (b, l, *s)
    y = readout(states, C, conj, mimo)
    return y, states[torch.arange(u.shape[0], device=u.device), last]
