"""Triton kernels of the SSD chunked algorithm: the backward pass.

Notation as in :mod:`.triton_kernels` (s running sums, u_t = delta_t x_t, G = C B^T, L the
masked decays exp(s_t - s_r), w_r = exp(s_T - s_r), E_t = exp(s_t), dec = exp(s_T), prev_k =
S_{k-1}). With dy the output gradient and dS_k the gradient of the state after chunk k:

    dP_k    = sum_t E_t dy_t^T C_t                     gradient of prev_k through y, (p, n)
    dS_{k-1} = dec_k dS_k + dP_k,  ddec_k = <dS_k, prev_k>,  dh0 = dS_0
    du_r    = sum_t (G o L)[t, r] dy_t + w_r dS_k B_r^T
    dC_t    = sum_r (L o dy u^T)[t, r] B_r + E_t dy_t prev_k
    dB_r    = sum_t (L o dy u^T)[t, r] C_t + w_r u_r dS_k
    ds      = rowsum(P) - colsum(P) + E o (dy . y_off) - w o (dS B^T . u) (+ their sum and
              ddec_k dec_k at the last step), P = dy u^T o G o L
    da_r    = sum_{t >= r} ds_t,  ddelta = du . x + da A,  dA = sum da delta

The kernels store the per-head dB and dC (the heads of a group are summed afterwards) and
per-chunk partial sums of dA and ddec, so every reduction is deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ssmkit.ops.ssd.triton_kernels import _segments


@triton.jit
def chunk_state_grad_kernel(
    dy_ptr, C_ptr, s_ptr, keep_ptr, dP_ptr,
    l, h, c, T, r, p, n,
    stride_yb, stride_yl, stride_yh, stride_yp,
    stride_Cb, stride_Cl, stride_Cg, stride_Cn,
    stride_kb, stride_kl,
    HAS_RESET: tl.constexpr, ACC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dP[b, k, h] = sum_t E_t dy_t^T C_t over the chunk's first segment: (p, t) @ (t, n).

    Grid (b * h, c); dP is (b, c, h, p, n), contiguous; dy is (b, l, h, p).
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
    E = tl.where(valid & (seg == 0), tl.exp(s), 0.0)  # (t,)
    dyT = tl.load(
        dy_ptr
        + pid_b * stride_yb
        + pid_h * stride_yh
        + offs_p[:, None] * stride_yp
        + pos[None, :] * stride_yl,
        mask=(offs_p[:, None] < p) & valid[None, :],
        other=0.0,
    ).to(ACC)  # (p, t)
    Cm = tl.load(
        C_ptr
        + pid_b * stride_Cb
        + pid_g * stride_Cg
        + pos[:, None] * stride_Cl
        + offs_n[None, :] * stride_Cn,
        mask=valid[:, None] & (offs_n[None, :] < n),
        other=0.0,
    ).to(ACC)  # (t, n)
    dP = tl.dot(dyT * E[None, :], Cm, input_precision="ieee")  # (p, n)
    out = dP_ptr + ((pid_b * c + pid_c) * h + pid_h) * p * n
    tl.store(
        out + offs_p[:, None] * n + offs_n[None, :],
        dP,
        mask=(offs_p[:, None] < p) & (offs_n[None, :] < n),
    )


@triton.jit
def state_passing_bwd_kernel(
    dP_ptr, dec_ptr, prev_ptr, dlast_ptr, dS_ptr, ddec_ptr, dh0_ptr,
    h, c, pn, n_blocks,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dS_{k-1} = dec_k dS_k + dP_k backwards from dS_c = dlast; ddec_k = <dS_k, prev_k>.

    Writes dS[b, k] (the gradient of chunk k's local state), ddec partial sums (b, h, c,
    n_blocks) over this program's block of entries, and dh0. Grid (b * h, n_blocks).
    """
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1).to(tl.int64)
    pid_b = pid_bh // h
    pid_h = pid_bh % h
    offs = pid_e * BLOCK + tl.arange(0, BLOCK)
    m = offs < pn
    dS = tl.load(dlast_ptr + pid_bh * pn + offs, mask=m, other=0.0).to(ACC)
    for i in range(c):
        k = c - 1 - i
        at = ((pid_b * c + k) * h + pid_h) * pn + offs
        tl.store(dS_ptr + at, dS, mask=m)
        prev = tl.load(prev_ptr + at, mask=m, other=0.0)
        row = (pid_b * h + pid_h) * c + k
        tl.store(ddec_ptr + row * n_blocks + pid_e, tl.sum(dS * prev, axis=0))
        dS = tl.load(dec_ptr + row) * dS + tl.load(dP_ptr + at, mask=m, other=0.0)
    tl.store(dh0_ptr + pid_bh * pn + offs, dS, mask=m)


@triton.jit
def chunk_scan_bwd_kernel(
    x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, s_ptr, keep_ptr, prev_ptr, dS_ptr, ddec_ptr, dec_ptr,
    dy_ptr, dx_ptr, ddelta_ptr, dB_ptr, dC_ptr, dA_ptr,
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
    """Per chunk and head: dx, ddelta, per-head dB and dC (b, l, h, n), and dA's partial sum
    dA[b, h, k] (the module docstring has the equations). dx has dy's (b, l, h, p) layout,
    contiguous like ddelta (b, l, h). Grid (b * h, c).
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
    row = (pid_b * h + pid_h) * c + pid_c
    s = tl.load(s_ptr + row * T + offs_t, mask=offs_t < T, other=0.0)  # (t,)
    s_last = tl.load(s_ptr + row * T + T - 1)
    seg = _segments(keep_ptr, stride_kb, stride_kl, pid_b, pos, valid, HAS_RESET)
    E = tl.where(valid & (seg == 0), tl.exp(s), 0.0)
    w = tl.where(valid & (seg == tl.max(seg, axis=0)), tl.exp(tl.minimum(s_last - s, 0.0)), 0.0)
    linked = (offs_t[:, None] >= offs_t[None, :]) & (seg[:, None] == seg[None, :])
    L = tl.where(linked, tl.exp(tl.minimum(s[:, None] - s[None, :], 0.0)), 0.0)  # (t, t)
    mask_tn = valid[:, None] & (offs_n[None, :] < n)
    mask_tp = valid[:, None] & (offs_p[None, :] < p)
    mask_pn = (offs_p[:, None] < p) & (offs_n[None, :] < n)
    B_at = pid_b * stride_Bb + pid_g * stride_Bg + pos[:, None] * stride_Bl
    Bm = tl.load(B_ptr + B_at + offs_n[None, :] * stride_Bn, mask=mask_tn, other=0.0).to(ACC)
    C_at = pid_b * stride_Cb + pid_g * stride_Cg + pos[:, None] * stride_Cl
    Cm = tl.load(C_ptr + C_at + offs_n[None, :] * stride_Cn, mask=mask_tn, other=0.0).to(ACC)
    d = tl.load(
        delta_ptr + pid_b * stride_db + pos * stride_dl + pid_h * stride_dh, mask=valid, other=0.0
    ).to(ACC)
    x_at = pid_b * stride_xb + pid_h * stride_xh + pos[:, None] * stride_xl
    xm = tl.load(x_ptr + x_at + offs_p[None, :] * stride_xp, mask=mask_tp, other=0.0).to(ACC)
    y_at = pid_b * stride_yb + pid_h * stride_yh + pos[:, None] * stride_yl
    dy = tl.load(dy_ptr + y_at + offs_p[None, :] * stride_yp, mask=mask_tp, other=0.0).to(ACC)
    state_at = ((pid_b * c + pid_c) * h + pid_h) * p * n + offs_p[:, None] * n + offs_n[None, :]
    prev = tl.load(prev_ptr + state_at, mask=mask_pn, other=0.0)  # (p, n)
    dS = tl.load(dS_ptr + state_at, mask=mask_pn, other=0.0)  # (p, n)
    u = xm * d[:, None]  # (t, p)
    G = tl.dot(Cm, tl.trans(Bm), input_precision="ieee")  # (t, t)
    dyu = tl.dot(dy, tl.trans(u), input_precision="ieee")  # (t, t): dy_t . u_r
    dG = L * dyu
    duw = tl.dot(Bm, tl.trans(dS), input_precision="ieee")  # (t, p): dS B_r^T
    du = tl.dot(tl.trans(G * L), dy, input_precision="ieee") + w[:, None] * duw
    dC = tl.dot(dG, Bm, input_precision="ieee") + E[:, None] * tl.dot(
        dy, prev, input_precision="ieee"
    )
    dB = tl.dot(tl.trans(dG), Cm, input_precision="ieee") + w[:, None] * tl.dot(
        u, dS, input_precision="ieee"
    )
    P = dG * G  # d/d(s_t - s_r)
    y_off = E[:, None] * tl.dot(Cm, tl.trans(prev), input_precision="ieee")  # (t, p)
    dw_w = tl.sum(duw * u, axis=1) * w  # (t,)
    ds = tl.sum(P, axis=1) - tl.sum(P, axis=0) + tl.sum(dy * y_off, axis=1) - dw_w
    ddec = tl.load(ddec_ptr + row) * tl.load(dec_ptr + row)
    ds += tl.where(offs_t == T - 1, tl.sum(dw_w, axis=0) + ddec, 0.0)
    da = tl.cumsum(ds, axis=0, reverse=True)  # s = cumsum(a) inside the chunk
    A = tl.load(A_ptr + pid_h).to(ACC)
    ddelta = tl.sum(du * xm, axis=1) + da * A
    tl.store(dA_ptr + row, tl.sum(tl.where(valid, da * d, 0.0), axis=0))
    tl.store(dx_ptr + ((pid_b * l + pos[:, None]) * h + pid_h) * p + offs_p[None, :],
             du * d[:, None], mask=mask_tp)  # fmt: skip
    tl.store(ddelta_ptr + (pid_b * l + pos) * h + pid_h, ddelta, mask=valid)
    grad_at = ((pid_b * l + pos[:, None]) * h + pid_h) * n + offs_n[None, :]
    tl.store(dB_ptr + grad_at, dB, mask=mask_tn)
    tl.store(dC_ptr + grad_at, dC, mask=mask_tn)
