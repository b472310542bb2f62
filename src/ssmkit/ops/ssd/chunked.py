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

Tensor = torch.Tensor
CHUNK = 64


def ssd_chunked(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
    chunk_size: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.ssd.ref.ssd_ref`.

    Resets (``keep`` = 0) split a chunk into segments: a decay exp(s_t - s_r) only counts when
    r and t lie in one segment, and the state entering a chunk only reaches its first one.
    """
    b, l, h, p = x.shape
    Q = chunk_size
    if keep is None:
        keep = x.new_ones(b, l)
    pad = (-l) % Q
    if pad:  # delta = 0, x = 0: the state passes through unchanged
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        delta = F.pad(delta, (0, 0, 0, pad))
        keep = F.pad(keep, (0, pad), value=1.0)
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = x.shape[1] // Q
    g = B.shape[2]
    r = h // g  # heads per group
    # layouts: heads as (g, r); everything (b, g, r, c, Q, .) so products are batched matmuls
    B = B.reshape(b, c, Q, g, -1).permute(0, 3, 1, 2, 4).unsqueeze(2)  # (b, g, 1, c, Q, n)
    C = C.reshape(b, c, Q, g, -1).permute(0, 3, 1, 2, 4).unsqueeze(2)  # (b, g, 1, c, Q, n)
    xd = (x * delta.unsqueeze(-1)).reshape(b, c, Q, g, r, p).permute(0, 3, 4, 1, 2, 5)
    a = (delta * A).reshape(b, c, Q, g, r).permute(0, 3, 4, 1, 2)  # (b, g, r, c, Q)
    s = a.cumsum(-1)  # running sums inside each chunk
    seg = (keep == 0).reshape(b, 1, 1, c, Q).cumsum(-1)  # segment of each step in its chunk
    # 1. intra-chunk: (C_t . B_r) exp(s_t - s_r) for r <= t in one segment, times delta_r x_r
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)  # (b, g, r, c, Q, Q) [t, r]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    linked = causal & (seg.unsqueeze(-1) == seg.unsqueeze(-2))  # (b, 1, 1, c, Q, Q)
    scores = (C @ B.transpose(-1, -2)) * torch.exp(diff.masked_fill(~linked, float("-inf")))
    y = scores @ xd  # (b, g, r, c, Q, p)
    # 2. each chunk's own final state: sum_r exp(s_Q - s_r) (delta_r x_r) B_r^T
    to_end = torch.exp(s[..., -1:] - s) * (seg == seg[..., -1:])  # (b, g, r, c, Q)
    to_end = to_end.unsqueeze(-1)  # (b, g, r, c, Q, 1)
    local = (xd * to_end).transpose(-1, -2) @ B  # (b, g, r, c, p, n)
    # 3. pass states between chunks (a short sequential loop over c)
    unbroken = seg == 0  # steps before the chunk's first reset
    chunk_decay = (torch.exp(s[..., -1]) * unbroken[..., -1])[..., None, None]  # (b,g,r,c,1,1)
    state = h0.reshape(b, g, r, p, -1)
    starts = []
    for k in range(c):
        starts.append(state)
        state = chunk_decay[:, :, :, k] * state + local[:, :, :, k]
    prev = torch.stack(starts, dim=3)  # (b, g, r, c, p, n): state entering each chunk
    # 4. the entering state's contribution inside each chunk: exp(s_t) C_t S_prev
    y = y + (C @ prev.transpose(-1, -2)) * (torch.exp(s) * unbroken).unsqueeze(-1)
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * Q, h, p)
    return y[:, :l], state.reshape(b, h, p, -1)
