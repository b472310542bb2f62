"""Log-depth scan (Hillis-Steele) with the associative operator of the linear recurrence.

(a1, b1) . (a2, b2) = (a2 a1, a2 b1 + b2) is associative, so ceil(log2 l) rounds, each a
full-width vectorised step, compute every prefix (Blelloch 1990; S5 uses it as its parallel
scan). It does O(l log l) work: the depth suits wide parallel hardware, the chunked scan
suits a CPU.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def scan_associative(a: Tensor, b: Tensor, initial_state: Tensor, reverse: bool = False) -> Tensor:
    """Associative-scan evaluation of h_t = a_t * h_{t-1} + b_t; contract of :func:`scan_ref`.

    ``reverse=True`` runs h_t = a_t * h_{t+1} + b_t from the end (h_l = ``initial_state``).
    """
    if reverse:
        return scan_associative(a.flip(1), b.flip(1), initial_state).flip(1)
    length = b.shape[1]
    b = b.clone()
    b[:, 0] = torch.addcmul(b[:, 0], a[:, 0], initial_state)
    offset = 1
    while offset < length:
        # prefix [0, t] = prefix [t - offset + 1, t] applied after prefix [0, t - offset]
        b = torch.cat(
            [b[:, :offset], torch.addcmul(b[:, offset:], a[:, offset:], b[:, :-offset])], 1
        )
        if 2 * offset < length:  # the decays are not needed after the last round
            a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b
