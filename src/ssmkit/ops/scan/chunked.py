"""Two-level chunked scan: O(l) work in about 3 sqrt(l) vectorised steps, no extra big tensor.

The sequence is cut into ``c`` chunks of ``t`` steps (a tail shorter than ``t`` runs on its
own). (1) Every chunk is scanned from a zero state, all chunks at once, keeping only each
chunk's final state and total decay. (2) Those are chained sequentially (``c`` steps) into the
state entering each chunk. (3) Every chunk is scanned again from its true incoming state,
writing the output. Inputs are read three times, the output written once, and only products
of ``a`` appear (never a division), so it is as stable as the sequential loop.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def default_chunk_size(length: int) -> int:
    """sqrt(l) balances the in-chunk loops (2 t steps) against the chunk chain (c steps)."""
    return max(1, math.isqrt(max(length, 1)))


def scan_chunked(
    a: Tensor,
    b: Tensor,
    initial_state: Tensor,
    reverse: bool = False,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Chunked evaluation of h_t = a_t * h_{t-1} + b_t; same contract as :func:`scan_ref`.

    With ``reverse=True`` the recurrence runs from the end: h_t = a_t * h_{t+1} + b_t with
    h_l = ``initial_state`` (the backward pass uses this to avoid flipping copies).
    """
    batch, length = b.shape[:2]
    state_shape = b.shape[2:]
    t = min(chunk_size or default_chunk_size(length), length)
    c = length // t
    body = c * t
    out = torch.empty_like(b)
    if reverse:  # the body is the last c*t steps; the tail the first ones
        start = length - body
        a_body, b_body, out_body = a[:, start:], b[:, start:], out[:, start:]
    else:
        a_body, b_body, out_body = a[:, :body], b[:, :body], out[:, :body]
    a_c = a_body.reshape(batch, c, t, *state_shape)  # (b, c, t, *s), a view
    b_c = b_body.reshape(batch, c, t, *state_shape)
    o_c = out_body.view(batch, c, t, *state_shape)
    steps = range(t - 1, -1, -1) if reverse else range(t)
    chunks = range(c - 1, -1, -1) if reverse else range(c)

    # (1) chunk summaries from a zero state: final state and total decay.
    first, *rest = steps
    end = b_c[:, :, first].clone()  # (b, c, *s)
    decay = a_c[:, :, first].clone()
    for i in rest:
        end = torch.addcmul(b_c[:, :, i], a_c[:, :, i], end)
        decay.mul_(a_c[:, :, i])
    # (2) chain: the state entering each chunk.
    carry = torch.empty_like(end)  # (b, c, *s)
    h = initial_state
    for k in chunks:
        carry[:, k] = h
        h = torch.addcmul(end[:, k], decay[:, k], h)
    # (3) rescan every chunk from its incoming state, writing the output.
    h = carry
    for i in steps:
        h = torch.addcmul(b_c[:, :, i], a_c[:, :, i], h)
        o_c[:, :, i] = h
    # the tail (fewer than t steps), continuing from the body's last state
    last = out_body[:, 0] if reverse else out_body[:, -1]
    tail = range(length - body - 1, -1, -1) if reverse else range(body, length)
    for i in tail:
        last = torch.addcmul(b[:, i], a[:, i], last)
        out[:, i] = last
    return out
