"""Triton kernels of the SSD chunked algorithm (Dao and Gu 2024, section 6): the forward pass.

Notation as in :mod:`ssmkit.ops.ssd.chunked`. Per batch item, head and chunk of T steps, with
a_t = delta_t A and s_t = a_1 + ... + a_t (the running sum inside the chunk), u_t = delta_t x_t:

    G[t, r] = C_t . B_r                                        (t, t), one tl.dot
    y_t     = sum_{r <= t} G[t, r] exp(s_t - s_r) u_r            intra-chunk, one tl.dot
            + exp(s_t) C_t S_{k-1}^T                            state entering the chunk, one tl.dot
    local_k = sum_r exp(s_T - s_r) u_r B_r^T                   chunk's own final state, one tl.dot
    S_k     = exp(s_T) S_{k-1} + local_k                       state passing over the chunks

A reset (``keep`` = 0 at step t) splits a chunk into segments (segment id = number of resets so
far in the chunk): a decay only links two steps of one segment, the entering state only reaches
the first segment and only steps of the last segment reach local_k.

Each kernel is one equation; the launch code is :mod:`ssmkit.ops.ssd.triton_backend`. All
arithmetic runs in ``ACC`` (float32, or float64 for float64 inputs). Steps past the end of the
sequence (the last chunk's tail and the power-of-two block padding) load delta = 0 and x = 0,
so they leave sums and states unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

# tl.dot needs every block dimension >= 16 on GPUs; smaller sizes are padded up to this.
MIN_DOT_BLOCK = 16
# States are (p, n) per head: the passing kernel walks them in flat blocks of this many entries,
# so each program holds one block in registers across the sequential loop over chunks.
STATE_BLOCK = 256


def dot_block(size: int) -> int:
    """Block extent for a tl.dot dimension of ``size``: a power of two, at least MIN_DOT_BLOCK."""
    return max(MIN_DOT_BLOCK, triton.next_power_of_2(size))


@triton.jit
def _segments(keep_ptr, stride_kb, stride_kl, pid_b, pos, valid, HAS_RESET: tl.constexpr):
    """Segment id of each step of a chunk: the number of resets (keep == 0) up to and at it."""
    if HAS_RESET:
        k = tl.load(keep_ptr + pid_b * stride_kb + pos * stride_kl, mask=valid, other=1.0)
        seg = tl.cumsum((k == 0).to(tl.int32), axis=0)
    else:
        seg = tl.zeros(pos.shape, dtype=tl.int32)
    return seg


@triton.jit
def chunk_cumsum_kernel(
    delta_ptr, A_ptr, keep_ptr, s_ptr, dec_ptr,
    l, h, c, T,
    stride_db, stride_dl, stride_dh, stride_kb, stride_kl,
    HAS_RESET: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """s[b, h, k, :] = cumsum_t(delta_t A_h) inside chunk k, and the chunk's decay
    dec[b, h, k] = exp(s_T), or 0 when the chunk holds a reset (nothing passes through it).

    Grid (b, c, h). s is (b, h, c, T) and dec (b, h, c), both contiguous.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid_h = tl.program_id(2).to(tl.int64)
    offs = tl.arange(0, BLOCK_T)
    pos = pid_c * T + offs
    valid = (offs < T) & (pos < l)
    d = tl.load(delta_ptr + pid_b * stride_db + pos * stride_dl + pid_h * stride_dh, mask=valid)
    a = d.to(ACC) * tl.load(A_ptr + pid_h).to(ACC)  # (t,)
    s = tl.cumsum(tl.where(valid, a, 0.0), axis=0)
    row = (pid_b * h + pid_h) * c + pid_c
    tl.store(s_ptr + row * T + offs, s, mask=offs < T)
    dec = tl.exp(tl.sum(tl.where(valid, a, 0.0), axis=0))
    seg = _segments(keep_ptr, stride_kb, stride_kl, pid_b, pos, valid, HAS_RESET)
    dec = tl.where(tl.max(seg, axis=0) == 0, dec, 0.0)
    tl.store(dec_ptr + row, dec)


@triton.jit
def chunk_state_kernel(
    x_ptr, delta_ptr, B_ptr, s_ptr, keep_ptr, local_ptr,
    l, h, c, T, r, p, n,
    stride_xb, stride_xl, stride_xh, stride_xp,
    stride_db, stride_dl, stride_dh,
    stride_Bb, stride_Bl, stride_Bg, stride_Bn,
    stride_kb, stride_kl,
    HAS_RESET: tl.constexpr, ACC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """local[b, k, h] = sum_r exp(s_T - s_r) delta_r x_r B_r^T over the chunk's last segment:
    one (p, t) @ (t, n) tl.dot. Grid (b * h, c); local is (b, c, h, p, n), contiguous.
    """
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid_b = pid_bh // h
    pid_h = pid_bh % h
    pid_g = pid_h // r  # heads of a group share B
    offs_t = tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pos = pid_c * T + offs_t
    valid = (offs_t < T) & (pos < l)
    s_row = s_ptr + ((pid_b * h + pid_h) * c + pid_c) * T
    s = tl.load(s_row + offs_t, mask=offs_t < T, other=0.0)  # (t,)
    s_last = tl.load(s_row + T - 1)
    seg = _segments(keep_ptr, stride_kb, stride_kl, pid_b, pos, valid, HAS_RESET)
    d = tl.load(delta_ptr + pid_b * stride_db + pos * stride_dl + pid_h * stride_dh, mask=valid)
    w = tl.exp(tl.minimum(s_last - s, 0.0))  # s is non-increasing: the exponent is <= 0
    coef = tl.where(valid & (seg == tl.max(seg, axis=0)), d.to(ACC) * w, 0.0)  # (t,)
    xT = tl.load(
        x_ptr
        + pid_b * stride_xb
        + pid_h * stride_xh
        + offs_p[:, None] * stride_xp
        + pos[None, :] * stride_xl,
        mask=(offs_p[:, None] < p) & valid[None, :],
        other=0.0,
    ).to(ACC)  # (p, t)
    Bm = tl.load(
        B_ptr
        + pid_b * stride_Bb
        + pid_g * stride_Bg
        + pos[:, None] * stride_Bl
        + offs_n[None, :] * stride_Bn,
        mask=valid[:, None] & (offs_n[None, :] < n),
        other=0.0,
    ).to(ACC)  # (t, n)
    local = tl.dot(xT * coef[None, :], Bm, input_precision="ieee")  # (p, n)
    out = local_ptr + ((pid_b * c + pid_c) * h + pid_h) * p * n
    tl.store(
        out + offs_p[:, None] * n + offs_n[None, :],
        local,
        mask=(offs_p[:, None] < p) & (offs_n[None, :] < n),
    )


@triton.jit
def state_passing_kernel(
    local_ptr, dec_ptr, h0_ptr, prev_ptr, final_ptr,
    h, c, pn,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """S_k = dec_k S_{k-1} + local_k for k = 1..c from S_0 = h0, sequential over chunks.

    Writes prev[b, k] = S_{k-1} (the state entering chunk k) and final = S_c. Grid
    (b * h, cdiv(p * n, BLOCK)); local, prev (b, c, h, p, n), h0, final (b, h, p, n), all
    contiguous.
    """
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1).to(tl.int64)
    pid_b = pid_bh // h
    pid_h = pid_bh % h
    offs = pid_e * BLOCK + tl.arange(0, BLOCK)
    m = offs < pn
    S = tl.load(h0_ptr + pid_bh * pn + offs, mask=m, other=0.0).to(ACC)
    for k in range(c):
        at = ((pid_b * c + k) * h + pid_h) * pn + offs
        tl.store(prev_ptr + at, S, mask=m)
        dec = tl.load(dec_ptr + (pid_b * h + pid_h) * c + k)
        S = dec * S + tl.load(local_ptr + at, mask=m, other=0.0)
    tl.store(final_ptr + pid_bh * pn + offs, S, mask=m)


@triton.jit
def chunk_scan_kernel(
    x_ptr, delta_ptr, B_ptr, C_ptr, s_ptr, keep_ptr, prev_ptr, y_ptr,
    l, h, c, T, r, p, n,
    stride_xb, stride_xl, stride_xh, stride_xp,
    stride_db, stride_dl, stride_dh,
    stride_Bb, stride_Bl, stride_Bg, stride_Bn,
    stride_Cb, stride_Cl, stride_Cg, stride_Cn,
    stride_kb, stride_kl,
    stride_yb, stride_yl, stride_yh, stride_yp,
    HAS_RESET: tl.constexpr, ACC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """y_t = sum_{r <= t, same segment} (C_t . B_r) exp(s_t - s_r) delta_r x_r
             + [t in the first segment] exp(s_t) C_t S_{k-1}^T.

    Three tl.dots: C B^T (t, n) @ (n, t), the masked product (t, t) @ (t, p) and the entering
    state C (t, n) @ (n, p). Grid (b * h, c); y is (b, l, h, p).
    """
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid_b = pid_bh // h
    pid_h = pid_bh % h
    pid_g = pid_h // r
    offs_t = tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pos = pid_c * T + offs_t
    valid = (offs_t < T) & (pos < l)
    s = tl.load(s_ptr + ((pid_b * h + pid_h) * c + pid_c) * T + offs_t, mask=offs_t < T, other=0.0)
    seg = _segments(keep_ptr, stride_kb, stride_kl, pid_b, pos, valid, HAS_RESET)
    mask_tn = valid[:, None] & (offs_n[None, :] < n)
    Cm = tl.load(
        C_ptr
        + pid_b * stride_Cb
        + pid_g * stride_Cg
        + pos[:, None] * stride_Cl
        + offs_n[None, :] * stride_Cn,
        mask=mask_tn,
        other=0.0,
    ).to(ACC)  # (t, n)
    BT = tl.load(
        B_ptr
        + pid_b * stride_Bb
        + pid_g * stride_Bg
        + pos[None, :] * stride_Bl
        + offs_n[:, None] * stride_Bn,
        mask=(offs_n[:, None] < n) & valid[None, :],
        other=0.0,
    ).to(ACC)  # (n, t)
    G = tl.dot(Cm, BT, input_precision="ieee")  # (t, t)
    linked = (offs_t[:, None] >= offs_t[None, :]) & (seg[:, None] == seg[None, :])
    decay = tl.exp(tl.minimum(s[:, None] - s[None, :], 0.0))  # causal pairs have exponent <= 0
    d = tl.load(
        delta_ptr + pid_b * stride_db + pos * stride_dl + pid_h * stride_dh, mask=valid, other=0.0
    ).to(ACC)
    x_base = x_ptr + pid_b * stride_xb + pid_h * stride_xh
    mask_tp = valid[:, None] & (offs_p[None, :] < p)
    xm = tl.load(
        x_base + pos[:, None] * stride_xl + offs_p[None, :] * stride_xp, mask=mask_tp, other=0.0
    ).to(ACC)  # (t, p)
    y = tl.dot(tl.where(linked, G * decay, 0.0), xm * d[:, None], input_precision="ieee")
    prevT = tl.load(
        prev_ptr
        + ((pid_b * c + pid_c) * h + pid_h) * p * n
        + offs_n[:, None]
        + offs_p[None, :] * n,
        mask=(offs_n[:, None] < n) & (offs_p[None, :] < p),
        other=0.0,
    )  # (n, p)
    E = tl.where(seg == 0, tl.exp(s), 0.0)  # (t,)
    y += E[:, None] * tl.dot(Cm, prevT, input_precision="ieee")
    tl.store(
        y_ptr
        + pid_b * stride_yb
        + pid_h * stride_yh
        + pos[:, None] * stride_yl
        + offs_p[None, :] * stride_yp,
        y.to(y_ptr.dtype.element_ty),
        mask=mask_tp,
    )
