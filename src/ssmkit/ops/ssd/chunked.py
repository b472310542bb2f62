"""The SSD chunked algorithm (Dao and Gu 2024, section 6) with a hand-written backward.

With a_t = delta_t A and its running sum s_t inside a chunk of t steps, u_t = delta_t x_t:

1. within a chunk, y_t = sum_{j <= t} (C_t . B_j) exp(s_t - s_j) u_j  (a masked, decaying
   attention-like product);
2. each chunk's own final state: sum_j exp(s_last - s_j) u_j B_j^T;
3. states are passed between chunks: S_k = exp(s_last of chunk k) S_{k-1} + (2);
4. the passed-in state adds exp(s_t) C_t S_{k-1} to every output of the chunk.

Written for the CPU's matrix units: the heads of a group share B and C, so the state products
(2) and (4) are batched matmuls with all heads side by side as columns, (t, n) @ (n, r p), and
C_t . B_r is formed once per group. Inter-chunk passing (3) is a recurrence over the c chunks
(not a (c, c) matrix) with one fused op per chunk, so few thread synchronisations sit on the
sequential path (which matters on a loaded machine). The backward is written out (it
recomputes the (t, t) decays instead of storing them), so autograd keeps only the inputs, the
chunk-entry states and the inter-chunk part of y. Lengths that are not a multiple of the chunk
size are padded with delta = 0 steps, which leave the state unchanged.

Axes (the glossary of :mod:`ssmkit._typing`): b batch, c chunks, t a step inside a chunk and
j an earlier step of the same chunk (j <= t), g groups sharing B and C, r heads per group
(h = g r), p head dimension, n state size; "r p" is the heads of a group side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
    """Same contract as :func:`ssmkit.ops.ssd.ref.ssd_ref`; differentiable once.

    Resets (``keep`` = 0) split a chunk into segments: a decay exp(s_t - s_j) only counts when
    j and t lie in one segment, and the state entering a chunk only reaches its first one.

    Args:
        x: (b, l, h, p). delta: (b, l, h), >= 0. A: (h,). B, C: (b, l, g, n).
        h0: (b, h, p, n) initial state. keep: (b, l) 1.0, or 0.0 where the state is reset.
        chunk_size: steps per chunk (clipped to l).

    Returns:
        y: (b, l, h, p) without D and z, and the final state (b, h, p, n).
    """
    return _SSDChunked.apply(x, delta, A, B, C, h0, keep, min(chunk_size, x.shape[1]))


@dataclass(frozen=True)
class _Shape:
    b: int
    l: int  # unpadded length
    c: int  # chunks
    t: int  # steps per chunk
    g: int
    r: int  # heads per group
    p: int
    n: int


def _chunked(M: Tensor, shape: _Shape, value: float = 0.0) -> Tensor:
    """(b, l, ...) -> (b, c, t, ...), padded at the end with ``value``."""
    pad = shape.c * shape.t - shape.l
    if pad:
        M = F.pad(M, (0, 0) * (M.ndim - 2) + (0, pad), value=value)
    return M.reshape(shape.b, shape.c, shape.t, *M.shape[2:])


def _decays(delta: Tensor, A: Tensor, keep: Tensor | None, shape: _Shape):
    """The decay factors of one chunked pass, all <= 1 (A <= 0, so no overflow).

    With s the running sums of delta A inside each chunk (cumsum differences, masked once),
    returns L (b, g, r, c, t, j) = exp(s_t - s_j) on causal same-segment pairs j <= t,
    w (b, g, r, c, j) = exp(s_last - s_j) for steps in the chunk's last segment, and
    E (b, g, r, c, t) = exp(s_t) for steps before the chunk's first reset.

    Why the difference of running sums suffices here (instead of the "stable segment sum",
    which adds a_{j+1} .. a_t for every pair at O(t^2) cost per chunk): every a = delta A is
    <= 0, so s falls monotonically and exp(s_t - s_j) <= 1 on the kept pairs; the pairs j > t,
    whose difference is positive and could overflow, are set to -inf before the exp. The sums
    restart at every chunk, so |s_t| <= |s_last| = the sum of one chunk's |delta A|, and the
    rounding error of s_t - s_j (each cumsum step rounds at about eps |s_t|) is at most about
    (t - j) eps |s_last| in absolute terms, which is the relative error of exp(s_t - s_j): in
    float32 about 1e-4 at worst after a decay by exp(-100) inside a chunk of 16 steps. It grows
    with one chunk's total decay, never with the sequence length (tested in
    ``tests/ops/test_ssd_glossary.py``). Mamba-2's fused kernels make the same choice (exp of
    differences of a chunk-local cumsum).
    """
    b, g, r, c, t = shape.b, shape.g, shape.r, shape.c, shape.t
    a = delta * A.reshape(g, r)  # (b, c, t, g, r)
    s = a.cumsum(2).permute(0, 3, 4, 1, 2).contiguous()  # (b, g, r, c, t)
    linked = torch.ones(t, t, dtype=torch.bool, device=s.device).tril()  # (t, j): j <= t
    if keep is not None:
        seg = (keep == 0).cumsum(-1).reshape(b, 1, 1, c, t)  # segment of each step
        linked = linked & (seg.unsqueeze(-1) == seg.unsqueeze(-2))  # (b, 1, 1, c, t, j)
    L = (s.unsqueeze(-1) - s.unsqueeze(-2)).masked_fill_(~linked, float("-inf")).exp_()
    w = torch.exp(s[..., -1:] - s)
    E = torch.exp(s)
    if keep is not None:
        w = w * (seg == seg[..., -1:])
        E = E * (seg == 0)
    return L, w, E


def _CB(C: Tensor, B: Tensor) -> Tensor:
    """C_t . B_j for every pair of steps of a chunk: (b, g, c, t, n), (b, g, c, j, n) ->
    (b, g, c, t, j), once per group."""
    return torch.einsum("bgctn,bgcjn->bgctj", C, B)


def _heads_as_columns(M: Tensor, shape: _Shape) -> Tensor:
    """(b, c, t, g, r, p) -> (b, g, c, t, r * p): the heads of a group side by side."""
    return M.permute(0, 3, 1, 2, 4, 5).reshape(shape.b, shape.g, shape.c, shape.t, -1)


def _heads_as_batch(M: Tensor) -> Tensor:
    """(b, c, t, g, r, p) -> (b, g, r, c, t, p): one (t, p) block per head and chunk."""
    return M.permute(0, 3, 4, 1, 2, 5).contiguous()


def _per_column(v: Tensor) -> Tensor:
    """(b, g, r, c, t) -> (b, g, c, t, r, 1), to scale heads-as-columns blocks."""
    return v.permute(0, 1, 3, 4, 2).unsqueeze(-1)


class _SSDChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, h0, keep, chunk_size):
        b, l, h, p = x.shape
        g, n = B.shape[2:]
        shape = _Shape(b, l, -(-l // chunk_size), chunk_size, g, h // g, p, n)
        xc = _chunked(x, shape).reshape(b, shape.c, chunk_size, g, shape.r, p)
        dc = _chunked(delta, shape).reshape(b, shape.c, chunk_size, g, shape.r)
        kc = None if keep is None else _chunked(keep, shape, 1.0)  # (b, c, t)
        Bc = _chunked(B, shape).permute(0, 3, 1, 2, 4).contiguous()  # (b, g, c, t, n)
        Cc = _chunked(C, shape).permute(0, 3, 1, 2, 4).contiguous()  # (b, g, c, t, n)
        L, w, E = _decays(dc, A, kc, shape)
        u = xc * dc.unsqueeze(-1)  # (b, c, t, g, r, p)
        # 1. intra-chunk: (C_t . B_j) once per group, decays per head
        M = L.mul_(_CB(Cc, Bc).unsqueeze(2))  # (b, g, r, c, t, j)
        y_diag = torch.einsum("bgrctj,bgrcjp->bgrctp", M, _heads_as_batch(u))
        # 2. chunk-local final states, heads as columns: (n, t) @ (t, r p); states are kept
        # transposed, (n, r p)
        uw = (_heads_as_columns(u, shape).unflatten(-1, (shape.r, p)) * _per_column(w)).flatten(-2)
        local = Bc.transpose(-1, -2) @ uw  # (b, g, c, n, r p)
        # 3. the recurrence over chunks
        dec = E[..., -1].permute(0, 1, 3, 2)[..., None, :, None]  # (b, g, c, 1, r, 1)
        states = x.new_empty(b, g, shape.c + 1, n, shape.r, p)  # entering chunk k, and the last
        states[:, :, 0] = h0.reshape(b, g, shape.r, p, n).permute(0, 1, 4, 2, 3)
        local = local.unflatten(-1, (shape.r, p))
        for k in range(shape.c):
            states[:, :, k + 1] = torch.addcmul(local[:, :, k], states[:, :, k], dec[:, :, k])
        prev = states[:, :, :-1].flatten(-2)  # (b, g, c, n, r p)
        state = states[:, :, -1]
        # 4. the entering state's part of y: exp(s_t) C_t S_{k-1}
        y_off = (Cc @ prev).unflatten(-1, (shape.r, p)).mul_(_per_column(E))  # (b,g,c,t,r,p)
        y = y_off + y_diag.permute(0, 1, 3, 4, 2, 5)  # (b, g, c, t, r, p)
        y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, h, p)[:, :l].contiguous()
        last = state.permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
        ctx.save_for_backward(xc, dc, A, Bc, Cc, kc, prev, y_off)
        ctx.shape = shape
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):
        xc, dc, A, Bc, Cc, kc, prev, y_off = ctx.saved_tensors
        shape = ctx.shape
        b, c, g, r, p, n = shape.b, shape.c, shape.g, shape.r, shape.p, shape.n
        L, w, E = _decays(dc, A, kc, shape)
        u = xc * dc.unsqueeze(-1)  # (b, c, t, g, r, p)
        dyc = _chunked(dy, shape).reshape(xc.shape)  # (b, c, t, g, r, p)
        dy_cols = _heads_as_columns(dyc, shape).unflatten(-1, (r, p))  # (b, g, c, t, r, p)
        # 4. y_off = E * (C @ prev)
        dyE = (dy_cols * _per_column(E)).flatten(-2)  # (b, g, c, t, r p)
        dC = dyE @ prev.transpose(-1, -2)  # (b, g, c, t, n)
        ds = (dy_cols * y_off).sum(-1).permute(0, 1, 4, 2, 3)  # (b, g, r, c, t): dE/ds = E
        # 3. the recurrence backwards: grads[k + 1] = dloss/dS_k = dloss/d(local_k)
        dprev = (Cc.transpose(-1, -2) @ dyE).unflatten(-1, (r, p))  # (b, g, c, n, r, p)
        dec = E[..., -1].permute(0, 1, 3, 2)[..., None, :, None]  # (b, g, c, 1, r, 1)
        grads = dprev.new_empty(b, g, c + 1, n, r, p)
        grads[:, :, c] = dlast.reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3)
        for k in reversed(range(c)):
            grads[:, :, k] = torch.addcmul(dprev[:, :, k], grads[:, :, k + 1], dec[:, :, k])
        dh0 = grads[:, :, 0].permute(0, 1, 3, 4, 2).reshape(b, g * r, p, n)
        dlocal = grads[:, :, 1:]  # (b, g, c, n, r, p)
        ddec = (dlocal * prev.unflatten(-1, (r, p))).sum((3, 5))  # (b, g, c, r)
        ds[..., -1] += ddec.transpose(-1, -2) * E[..., -1]
        # 2. local = B^T @ (u * w)
        dlocal = dlocal.flatten(-2)  # (b, g, c, n, r p)
        u_cols = _heads_as_columns(u, shape).unflatten(-1, (r, p))  # (b, g, c, t, r, p)
        uw = (u_cols * _per_column(w)).flatten(-2)  # (b, g, c, t, r p)
        duw = (Bc @ dlocal).unflatten(-1, (r, p))  # (b, g, c, t, r, p)
        dB = uw @ dlocal.transpose(-1, -2)  # (b, g, c, t, n)
        du_cols = duw * _per_column(w)  # (b, g, c, t, r, p)
        dw_w = (duw * u_cols).sum(-1).permute(0, 1, 4, 2, 3) * w  # (b, g, r, c, t)
        ds -= dw_w
        ds[..., -1] += dw_w.sum(-1)
        # 1. y_diag = (L * G) u with G = C_t . B_j
        M = L * _CB(Cc, Bc).unsqueeze(2)  # (b, g, r, c, t, j)
        dy_h = _heads_as_batch(dyc)  # (b, g, r, c, t, p)
        du_h = torch.einsum("bgrctj,bgrctp->bgrcjp", M, dy_h)
        dM = torch.einsum("bgrctp,bgrcjp->bgrctj", dy_h, _heads_as_batch(u))
        dG = (dM * L).sum(2)  # (b, g, c, t, j)
        P = dM.mul_(M)  # d/d(s_t - s_j), (b, g, r, c, t, j)
        ds += P.sum(-1) - P.sum(-2)
        dC += torch.einsum("bgctj,bgcjn->bgctn", dG, Bc)
        dB += torch.einsum("bgctj,bgctn->bgcjn", dG, Cc)
        # s = cumsum(delta A) inside each chunk: da_j = sum_{t >= j} ds_t
        da = ds.flip(-1).cumsum(-1).flip(-1).permute(0, 3, 4, 1, 2)  # (b, c, t, g, r)
        du = du_cols.permute(0, 2, 3, 1, 4, 5) + du_h.permute(0, 3, 4, 1, 2, 5)  # (b,c,t,g,r,p)
        dx = du * dc.unsqueeze(-1)
        ddelta = (du * xc).sum(-1) + da * A.reshape(g, r)  # (b, c, t, g, r)
        dA = (da * dc).sum((0, 1, 2)).reshape(g * r)
        l, h = shape.l, g * r
        dx = dx.reshape(b, -1, h, p)[:, :l]
        ddelta = ddelta.reshape(b, -1, h)[:, :l]
        dB, dC = (d.permute(0, 2, 3, 1, 4).reshape(b, -1, g, n)[:, :l] for d in (dB, dC))
        return dx, ddelta, dA, dB, dC, dh0, None, None
