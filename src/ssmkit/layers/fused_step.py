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
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit
except ImportError:  # optional (extra "fast"): decoding then takes the layers' own steps
    njit = None

SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus: x itself above this


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
    for b in range(batch):
        _conv_silu(xz[b, :d], conv, conv_w, conv_b, b, u)
        for row in range(W_x.shape[0]):  # (dt_low, B, C) = W_x u
            s = 0.0
            for ch in range(d):
                s += W_x[row, ch] * u[ch]
            proj[row] = s
        for ch in range(d):
            s = b_dt[ch]
            for q in range(r):
                s += W_dt[ch, q] * proj[q]
            dt = _softplus(s)
            du = dt * u[ch]
            acc = 0.0
            for i in range(n):
                hi = math.exp(dt * A[ch, i]) * h[b, ch, i] + du * proj[r + i]
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


# reassociation lets LLVM vectorise the sums; no "nnan"/"ninf": silu(-100) needs exp(100) = inf
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

if njit is not None:
    _silu = njit(cache=True, fastmath=FASTMATH)(_silu)
    _softplus = njit(cache=True, fastmath=FASTMATH)(_softplus)
    _conv_silu = njit(cache=True, fastmath=FASTMATH)(_conv_silu)
    mamba_step = njit(cache=True, fastmath=FASTMATH)(_mamba_step)
    mamba2_step = njit(cache=True, fastmath=FASTMATH)(_mamba2_step)
else:  # pragma: no cover - without numba
    mamba_step = mamba2_step = None
