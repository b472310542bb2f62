"""Fused one-token steps of the Mamba and Mamba-2 mixers (numba, CPU, float32, in place).

Decoding one token at batch 1 is a chain of matrix-vector products (streaming the weights)
and, between ``in_proj`` and ``out_proj``, a few hundred tiny tensor ops per layer (the conv
window, SiLU, the selection projections, softplus, exp(dt A), the state update, C h, D u,
the gate). Each tiny op costs a dispatch and a pass over memory; here the whole middle part
of a layer is one compiled loop that reads and updates the conv window and the SSM state in
place. The big projections (``in_proj``, ``out_proj``) stay with the caller (BLAS).

The slow twins are the layers' own steps (``Mamba._step_unchecked``,
``Mamba2._step_unchecked``); ``tests/models/test_decode_fast.py`` compares them.

Mamba (Gu and Dao 2023, algorithm 2), per channel c with window w_c of the last k inputs:

    u_c = silu(bias_c + sum_j conv_w[c, j] w_c[j])
    (dt_low, B, C) = W_x u;  dt_c = softplus(W_dt[c] . dt_low + b_dt[c])
    h[c, i] = exp(dt_c A[c, i]) h[c, i] + dt_c B_i u_c;  y_c = (C . h[c] + D_c u_c) silu(z_c)

Mamba-2 (Dao and Gu 2024), per head with its group's B, C (n,) and dt = clamp(softplus(dt_raw
+ dt_bias), dt_limit): h[p, :] = exp(dt A) h[p, :] + dt x_p B;  y_p = C . h[p, :] + D x_p,
then the gated RMSNorm y silu(z) / rms(.) * weight over groups of ``group_size`` channels.

:func:`gemv` is the float32 matrix-vector product of the big projections at small batch
(``in_proj``, ``out_proj``, ``lm_head``): one dot product per weight row, the row read once
for every batch item. On one thread it streams the weights at about twice the rate of
``F.linear`` (MKL's sgemv on the AMD EPYC of our measurements); its twin is ``F.linear``.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit
except ImportError:  # optional (extra "fast"): decoding then takes the layers' own steps
    njit = None

SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus: x itself above this
LOG2E = 1.4426950408889634  # 1 / ln 2
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = LN2_HI + LN2_LO, LN2_HI exact in 9 bits


def available() -> bool:
    """Whether the fused steps can run (numba is installed)."""
    return njit is not None


def _silu(v):  # pragma: no cover - compiled
    return v / (1.0 + math.exp(-v))


def _softplus(v):  # pragma: no cover - compiled
    return v if v > SOFTPLUS_THRESHOLD else math.log1p(math.exp(v))


def _conv_silu(xin, conv, w, bias, b, u):  # pragma: no cover - compiled
    """u (c,) = silu(causal conv of [conv[b], xin]); conv[b] (c, k - 1) shifted in place."""
    c, k = w.shape
    for ch in range(c):
        x_new = xin[ch]
        acc = bias[ch] + w[ch, k - 1] * x_new
        for j in range(k - 1):
            acc += w[ch, j] * conv[b, ch, j]
        for j in range(k - 2):
            conv[b, ch, j] = conv[b, ch, j + 1]
        if k > 1:
            conv[b, ch, k - 2] = x_new
        u[ch] = _silu(acc)


def _exp_into(x, out, bits):  # pragma: no cover - compiled
    """out = exp(x) elementwise, float32, in a form LLVM vectorises (math.exp is a scalar call).

    exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 (Cody-Waite, two-part ln 2),
    exp(r) by its degree-6 Taylor polynomial on |r| <= ln(2) / 2 (within 5e-7 relative);
    2^k is built in the float32 exponent bits. Below -87 it returns 0, above 88 inf, NaN
    stays NaN. x, out (m,) float32, distinct; bits (m,) int32 scratch.
    """
    for i in range(x.shape[0]):
        v = min(max(x[i], np.float32(-87.0)), np.float32(88.0))
        k = np.floor(v * np.float32(LOG2E) + np.float32(0.5))
        r = v - k * np.float32(LN2_HI) - k * np.float32(LN2_LO)
        p = np.float32(1.0 / 120.0) + r * np.float32(1.0 / 720.0)
        p = np.float32(0.5) + r * (np.float32(1.0 / 6.0) + r * (np.float32(1.0 / 24.0) + r * p))
        out[i] = np.float32(1.0) + r * (np.float32(1.0) + r * p)
        bits[i] = (np.int32(k) + np.int32(127)) << 23
    scale = bits.view(np.float32)
    for i in range(x.shape[0]):
        v = x[i]
        e = out[i] * scale[i]
        e = np.float32(0.0) if v < np.float32(-87.0) else e
        e = np.float32(np.inf) if v > np.float32(88.0) else e
        out[i] = e if v == v else v


def _mamba_step(xz, conv, conv_w, conv_b, W_x, W_dt, b_dt, A, D, h, y):  # pragma: no cover
    """One Mamba token for every batch item, in place on ``conv`` and ``h``.

    Args:
        xz: (b, 2 d) in_proj output (x then z). conv: (b, d, k - 1) window, updated.
        conv_w: (d, k). conv_b: (d,). W_x: (r + 2 n, d) effective x_proj weight.
        W_dt: (d, r). b_dt: (d,). A: (d, n) = -exp(A_log). D: (d,).
        h: (b, d, n) SSM state, updated. y: (b, d) output (before out_proj), written.
    """
    batch = xz.shape[0]
    d, n = A.shape
    r = W_dt.shape[1]
    u = np.empty(d, dtype=xz.dtype)
    proj = np.empty(W_x.shape[0], dtype=xz.dtype)
    dt = np.empty(d, dtype=xz.dtype)
    dtA = np.empty(d * n, dtype=xz.dtype)  # (d n) flattened
    A_bar = np.empty(d * n, dtype=xz.dtype)  # (d n) exp(dt A)
    bits = np.empty(d * n, dtype=np.int32)
    for b in range(batch):
        _conv_silu(xz[b, :d], conv, conv_w, conv_b, b, u)
        for row in range(W_x.shape[0]):  # (dt_low, B, C) = W_x u
            s = np.float32(0.0)
            for ch in range(d):
                s += W_x[row, ch] * u[ch]
            proj[row] = s
        for ch in range(d):
            s = b_dt[ch]
            for q in range(r):
                s += W_dt[ch, q] * proj[q]
            dt[ch] = _softplus(s)
            for i in range(n):
                dtA[ch * n + i] = dt[ch] * A[ch, i]
        _exp_into(dtA, A_bar, bits)  # vectorised, unlike d n calls of math.exp
        for ch in range(d):
            du = dt[ch] * u[ch]
            acc = np.float32(0.0)
            for i in range(n):
                hi = A_bar[ch * n + i] * h[b, ch, i] + du * proj[r + i]
                h[b, ch, i] = hi
                acc += proj[r + n + i] * hi
            y[b, ch] = (acc + D[ch] * u[ch]) * _silu(xz[b, d + ch])


def _mamba2_step(
    zxbcdt, conv, conv_w, conv_b, dt_bias, dt_low, dt_high, A, D, h, norm_w, eps, group, y
):  # pragma: no cover - compiled
    """One Mamba-2 token for every batch item, in place on ``conv`` and ``h``.

    Args:
        zxbcdt: (b, d + c + heads) in_proj output (z, then x B C with c = d + 2 g n, then
            dt_raw). conv: (b, c, k - 1) window, updated. conv_w: (c, k). conv_b: (c,).
        dt_bias, A, D: (heads,). dt_low, dt_high: the clamp of dt.
        h: (b, heads, p, n) SSM state, updated. norm_w: (d,) gated RMSNorm weight; eps, group:
            its epsilon and group size. y: (b, d) output (before out_proj), written.
    """
    batch = zxbcdt.shape[0]
    heads, p, n = h.shape[1], h.shape[2], h.shape[3]
    d = heads * p
    c = conv_w.shape[0]
    g = (c - d) // (2 * n)
    per_group = heads // g
    u = np.empty(c, dtype=zxbcdt.dtype)
    for b in range(batch):
        _conv_silu(zxbcdt[b, d : d + c], conv, conv_w, conv_b, b, u)
        for hd in range(heads):
            dt = _softplus(zxbcdt[b, d + c + hd] + dt_bias[hd])
            dt = min(max(dt, dt_low), dt_high)
            decay = math.exp(dt * A[hd])
            B0 = d + (hd // per_group) * n  # this head's group in u: B, then C g n later
            C0 = B0 + g * n
            for q in range(p):
                xv = u[hd * p + q]
                dx = dt * xv
                acc = 0.0
                for i in range(n):
                    s = decay * h[b, hd, q, i] + dx * u[B0 + i]
                    h[b, hd, q, i] = s
                    acc += u[C0 + i] * s
                y[b, hd * p + q] = (acc + D[hd] * xv) * _silu(zxbcdt[b, hd * p + q])
        for start in range(0, d, group):  # RMSNorm over each group of the gated output
            ss = 0.0
            for ch in range(start, start + group):
                ss += y[b, ch] * y[b, ch]
            scale = 1.0 / math.sqrt(ss / group + eps)
            for ch in range(start, start + group):
                y[b, ch] = y[b, ch] * scale * norm_w[ch]


def _gemv(x, W, bias, y):  # pragma: no cover - compiled
    """y (b, m) = x (b, k) W^T + bias, float32 sums (reassociated: vectorised).

    Args:
        x: (b, k). W: (m, k) C-contiguous. bias: (m,), or (0,) for none. y: (b, m), written.
    """
    m, k = W.shape
    batch = x.shape[0]
    with_bias = bias.shape[0] > 0
    for i in range(m):
        for b in range(batch):
            s = np.float32(0.0)
            for j in range(k):
                s += W[i, j] * x[b, j]
            y[b, i] = s + bias[i] if with_bias else s


# reassociation lets LLVM vectorise the sums; no "nnan"/"ninf": silu(-100) needs exp(100) = inf
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

if njit is not None:
    _silu = njit(cache=True, fastmath=FASTMATH)(_silu)
    _softplus = njit(cache=True, fastmath=FASTMATH)(_softplus)
    _conv_silu = njit(cache=True, fastmath=FASTMATH)(_conv_silu)
    exp_into = njit(cache=True, fastmath=FASTMATH)(_exp_into)
    _exp_into = exp_into
    mamba_step = njit(cache=True, fastmath=FASTMATH)(_mamba_step)
    mamba2_step = njit(cache=True, fastmath=FASTMATH)(_mamba2_step)
    gemv = njit(cache=True, fastmath=FASTMATH)(_gemv)
else:  # pragma: no cover - without numba
    mamba_step = mamba2_step = gemv = exp_into = None
