"""Pure-PyTorch selective scan: chunks of the sequence, each through the two-level scan.

Each chunk of ``chunk_size`` steps builds its (b, t, d, n) decays and inputs, runs
:func:`ssmkit.ops.scan.scan_chunked` from the carried state and contracts with C. Under
autograd every chunk is recomputed in the backward pass (activation checkpointing), so no
(b, l, d, n) tensor is ever stored: the memory is the chunk's, whatever the length.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ssmkit.ops.scan.autograd import LinearScan
from ssmkit.ops.scan.chunked import scan_chunked
from ssmkit.ops.selective_scan.ref import expand_groups

Tensor = torch.Tensor
CHUNK = 256


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor,
    keep: Tensor | None = None,
    chunk_size: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`ssmkit.ops.selective_scan.ref.selective_scan_ref`."""
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (u, delta, A, B, C, h0))
    if keep is None:
        keep = u.new_ones(u.shape[:2])
    ys = []
    h = h0
    for start in range(0, u.shape[1], chunk_size):
        part = slice(start, start + chunk_size)
        args = (u[:, part], delta[:, part], A, B[:, part], C[:, part], h, keep[:, part])
        if needs_grad:
            y, h = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            y, h = _chunk(*args)
        ys.append(y)
    return torch.cat(ys, dim=1), h


def _chunk(u, delta, A, B, C, h0, keep):
    d = u.shape[-1]
    dl = delta.unsqueeze(-1)  # (b, t, d, 1)
    a = torch.exp(dl * A) * keep[..., None, None]  # (b, t, d, n)
    x = dl * expand_groups(B, d) * u.unsqueeze(-1)  # (b, t, d, n)
    h = LinearScan.apply(a, x, h0, scan_chunked, False)  # (b, t, d, n)
    y = torch.einsum("btdn,btdn->btd", expand_groups(C, d), h)
    return y, h[:, -1]
