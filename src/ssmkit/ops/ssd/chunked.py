"""The SSD chunked algorithm (Dao and Gu 2024, section 6): matmuls inside chunks, a short
recurrence between them.

With a_t = delta_t A and its running sum s_t inside a chunk of Q steps:

1. within a chunk, y_t = sum_{r <= t} (C_t . B_r) exp(s_t - s_r) delta_r x_r  (a masked,
   decaying attention-like product);
2. each chunk's own final state: sum_r exp(s_Q - s_r) delta_r x_r B_r^T;
3. states are passed between chunks: S_c = exp(s_Q of chunk c) S_{c-1} + (2);
4. the passed-in state adds C_t S_{c-1} exp(s_t) to every output of the chunk.

Pure PyTorch, differentiable by autograd; memory O(b l h Q) for the masks, never
(b, l, h, p, n). Lengths that are not a multiple of Q are padded with delta = 0 steps, which
leave the state unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops.ssd.ref import expand_head_groups

Tensor = torch.Tensor
CHUNK = 64


def ssd_chunked(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    chunk_size: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.ssd.ref.ssd_ref`."""
    b, l, h, p = x.shape
    Q = chunk_size
    pad = (-l) % Q
    if pad:  # delta = 0, x = 0: the state passes through unchanged
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        delta = F.pad(delta, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = x.shape[1] // Q
    B = expand_head_groups(B, h).reshape(b, c, Q, h, -1)  # (b, c, Q, h, n)
    C = expand_head_groups(C, h).reshape(b, c, Q, h, -1)
    xd = (x * delta.unsqueeze(-1)).reshape(b, c, Q, h, p)  # delta_r x_r
    a = (delta * A).reshape(b, c, Q, h).permute(0, 3, 1, 2)  # (b, h, c, Q)
    s = a.cumsum(-1)  # running sums inside each chunk
    # 1. intra-chunk: decays exp(s_t - s_r) for r <= t
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)  # (b, h, c, Q, Q) [t, r]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    Lmat = torch.exp(diff.masked_fill(~causal, float("-inf")))
    scores = torch.einsum("bcthn,bcrhn->bhctr", C, B) * Lmat  # (b, h, c, Q, Q)
    y = torch.einsum("bhctr,bcrhp->bcthp", scores, xd)  # (b, c, Q, h, p)
    # 2. each chunk's own final state
    to_end = torch.exp(s[..., -1:] - s)  # (b, h, c, Q)
    local = torch.einsum("bhcr,bcrhp,bcrhn->bchpn", to_end, xd, B)  # (b, c, h, p, n)
    # 3. pass states between chunks (a short sequential loop over c)
    chunk_decay = torch.exp(s[..., -1]).permute(0, 2, 1)  # (b, c, h)
    state = h0
    starts = []
    for k in range(c):
        starts.append(state)
        state = chunk_decay[:, k, :, None, None] * state + local[:, k]
    prev = torch.stack(starts, dim=1)  # (b, c, h, p, n): state entering each chunk
    # 4. the entering state's contribution inside each chunk
    from_start = torch.exp(s).permute(0, 2, 3, 1)  # (b, c, Q, h)
    y = y + torch.einsum("bcthn,bchpn->bcthp", C, prev) * from_start.unsqueeze(-1)
    return y.reshape(b, c * Q, h, p)[:, :l], state
