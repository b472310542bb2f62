"""Mamba-2's SSD recurrence, defined by a loop over time (Dao and Gu 2024, section 3).

Per head (scalar A < 0, head dimension p, state n):

    h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t^T        h: (p, n)
    y_t = h_t C_t (+ D x_t)

B_t, C_t are shared by the heads of a group. This is the definition the chunked algorithm
is tested against.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def expand_head_groups(M: Tensor, h: int) -> Tensor:
    """(b, l, g, n) -> (b, l, h, n): head i reads group i // (h / g)."""
    return M.repeat_interleave(h // M.shape[2], dim=2)


def ssd_ref(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The SSD recurrence, one step at a time (axes as in :mod:`ssmkit._typing`).

    Args:
        x: (b, l, h, p) inputs. delta: (b, l, h) step sizes. A: (h,) scalar A per head.
        B, C: (b, l, g, n), shared by the heads of a group. h0: (b, h, p, n) initial state.
        keep: (b, l) 0 where a packed sequence starts (state reset before that step).
        chunk_size: ignored (the loop has no chunks); accepted so that every backend of
            ``ssd`` takes the same arguments.

    Returns:
        y (b, l, h, p) without D and z, and the final state (b, h, p, n).
    """
    heads = x.shape[2]
    B, C = expand_head_groups(B, heads), expand_head_groups(C, heads)  # (b, l, h, n)
    if keep is None:
        keep = x.new_ones(x.shape[:2])
    state = h0
    ys = []
    # unbind once: per-step slicing would make every step's backward touch the whole tensor
    steps = zip(*(t.unbind(1) for t in (x, delta, B, C, keep)), strict=True)
    for x_t, dl, B_t, C_t, k_t in steps:
        decay = torch.exp(dl * A) * k_t[:, None]  # (b, h)
        state = torch.einsum("bh,bhpn->bhpn", decay, state)
        state = state + torch.einsum("bh,bhp,bhn->bhpn", dl, x_t, B_t)  # + delta_t x_t B_t^T
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_t))  # h_t C_t
    return torch.stack(ys, dim=1), state
