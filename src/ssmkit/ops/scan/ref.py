"""The diagonal linear recurrence, by its definition (the slow twin of every scan backend)."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def scan_ref(a: Tensor, b: Tensor, initial_state: Tensor) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t, one step at a time (S4 eq. 3, Mamba eq. 2a, LRU eq. 1).

    Args:
        a: (b, l, *s) per-step decay (real or complex).
        b: (b, l, *s) per-step input, same dtype as ``a``.
        initial_state: (b, *s) h_{-1}.

    Returns:
        h: (b, l, *s) every state.
    """
    h = initial_state
    states = []
    # unbind, not a[:, t]: its backward is one stack instead of l full-size scatters.
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)
