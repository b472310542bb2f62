"""The selective scan, defined by a loop over time (Mamba, Gu and Dao 2023, algorithm 2).

    delta_t = softplus(dt_t + dt_bias)        (or dt_t + dt_bias without dt_softplus;
                                               layers pass delta_t itself as dt)
    h_t     = exp(delta_t A) * h_{t-1} + delta_t B_t u_t        h: (b, d, n)
    y_t     = C_t . h_t + D u_t,  then  y_t * silu(z_t)  when z is given

A is real (d, n); B_t, C_t are (n,) per token, shared by the channels of a group (Mamba-1
has one group). This file is the definition the fast backends are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.core.step_size import step_size

Tensor = torch.Tensor


def expand_groups(M: Tensor, d: int) -> Tensor:
    """(b, l, g, n) -> (b, l, d, n): channel i reads group i // (d / g)."""
    return M.repeat_interleave(d // M.shape[2], dim=2)


def delta_of(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool) -> Tensor:
    """The step sizes delta the scan uses, from the ops' ``dt`` (b, l, d) or (b, l, h).

    Layers pass the positive step size itself (no bias, ``dt_softplus=False``: returned as it
    is). With ``dt_softplus=True`` the ops apply the layers' equation,
    :func:`ssmkit.core.step_size.step_size`: delta = softplus(dt + dt_bias); without it,
    delta = dt + dt_bias.
    """
    if dt_softplus:
        return step_size(dt, dt_bias)
    return dt if dt_bias is None else dt + dt_bias


def finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D u, then the SiLU gate of z."""
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Core recurrence: u, delta (b, l, d); A (d, n); B, C (b, l, g, n); h0 (b, d, n).

    ``keep`` (b, l): 0 where a packed sequence starts (the state is reset before that step),
    1 elsewhere. Returns y (b, l, d) without the D and z terms, and the final state (b, d, n).
    """
    d = u.shape[-1]
    B, C = expand_groups(B, d), expand_groups(C, d)  # (b, l, d, n)
    if keep is None:
        keep = u.new_ones(u.shape[:2])
    h = h0
    ys = []
    # unbind once: per-step slicing would make every step's backward touch the whole tensor
    steps = zip(*(t.unbind(1) for t in (u, delta, B, C, keep)), strict=True)
    for u_t, dl, B_t, C_t, k_t in steps:
        dl = dl.unsqueeze(-1)  # (b, d, 1)
        decay = torch.exp(dl * A) * k_t[:, None, None]  # (b, d, n)
        h = decay * h + dl * B_t * u_t.unsqueeze(-1)  # (b, d, n)
        ys.append((C_t * h).sum(-1))  # (b, d)
    return torch.stack(ys, dim=1), h
