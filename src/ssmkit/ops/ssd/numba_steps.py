"""The inner loops of the numba SSD kernels (:mod:`.cpu_numba`): one or two time steps of
one head's (p, n) state, forward, the backward's state recompute (pass 1) and its walk back
(pass 2). Compiled inline into the kernels.

One step takes rows ``ROWS`` at a time; two steps (t and t + 1 forward, t and t - 1 back) go
in one sweep over the state with rows two at a time, so that the accumulators and broadcast
scalars of both steps stay in AVX2's 16 registers; a row left over takes a one-row loop.
Every loop over n runs over B_t, C_t (and dB_t, dC_t) from index 0, so it vectorises.
"""

from __future__ import annotations

try:
    from numba import njit
except ImportError:  # the backend is optional (extra "fast")
    njit = None

ROWS = 4  # rows of a head's state per inner loop (4 keeps AVX2's 16 registers busy, no spills)


def _fwd_one(S, a, dl, Bt, Ct, xt, yt, Dh):  # pragma: no cover - compiled
    # one step: S <- a S + (dl x_t) B_t^T, y_t = S C_t + D x_t; rows ROWS at a time
    P, N = S.shape
    zero = S.dtype.type(0)
    i = 0
    while i + ROWS <= P:
        u0 = xt[i] * dl
        u1 = xt[i + 1] * dl
        u2 = xt[i + 2] * dl
        u3 = xt[i + 3] * dl
        S0 = S[i]
        S1 = S[i + 1]
        S2 = S[i + 2]
        S3 = S[i + 3]
        c0 = zero
        c1 = zero
        c2 = zero
        c3 = zero
        for k in range(N):
            bk = Bt[k]
            ck = Ct[k]
            v0 = a * S0[k] + u0 * bk
            v1 = a * S1[k] + u1 * bk
            v2 = a * S2[k] + u2 * bk
            v3 = a * S3[k] + u3 * bk
            S0[k] = v0
            S1[k] = v1
            S2[k] = v2
            S3[k] = v3
            c0 += ck * v0
            c1 += ck * v1
            c2 += ck * v2
            c3 += ck * v3
        yt[i] = c0 + Dh[i] * xt[i]  # the skip D x
        yt[i + 1] = c1 + Dh[i + 1] * xt[i + 1]
        yt[i + 2] = c2 + Dh[i + 2] * xt[i + 2]
        yt[i + 3] = c3 + Dh[i + 3] * xt[i + 3]
        i += ROWS
    while i < P:
        u = xt[i] * dl
        Si = S[i]
        acc = zero
        for k in range(N):
            v = a * Si[k] + u * Bt[k]
            Si[k] = v
            acc += Ct[k] * v
        yt[i] = acc + Dh[i] * xt[i]
        i += 1


def _fwd_two(S, a1, d1, B1, C1, x1, y1, a2, d2, B2, C2, x2, y2, Dh):  # pragma: no cover
    # steps t (1) and t + 1 (2) in one sweep over the state, two rows at a time: the state
    # is loaded and stored once per two steps
    P, N = S.shape
    zero = S.dtype.type(0)
    i = 0
    while i + 2 <= P:
        u10 = x1[i] * d1
        u11 = x1[i + 1] * d1
        u20 = x2[i] * d2
        u21 = x2[i + 1] * d2
        S0 = S[i]
        S1 = S[i + 1]
        p0 = zero
        p1 = zero
        q0 = zero
        q1 = zero
        for k in range(N):
            v0 = a1 * S0[k] + u10 * B1[k]
            v1 = a1 * S1[k] + u11 * B1[k]
            p0 += C1[k] * v0
            p1 += C1[k] * v1
            w0 = a2 * v0 + u20 * B2[k]
            w1 = a2 * v1 + u21 * B2[k]
            S0[k] = w0
            S1[k] = w1
            q0 += C2[k] * w0
            q1 += C2[k] * w1
        y1[i] = p0 + Dh[i] * x1[i]
        y1[i + 1] = p1 + Dh[i + 1] * x1[i + 1]
        y2[i] = q0 + Dh[i] * x2[i]
        y2[i + 1] = q1 + Dh[i + 1] * x2[i + 1]
        i += 2
    if i < P:
        u1 = x1[i] * d1
        u2 = x2[i] * d2
        Si = S[i]
        p = zero
        q = zero
        for k in range(N):
            v = a1 * Si[k] + u1 * B1[k]
            p += C1[k] * v
            w = a2 * v + u2 * B2[k]
            Si[k] = w
            q += C2[k] * w
        y1[i] = p + Dh[i] * x1[i]
        y2[i] = q + Dh[i] * x2[i]


def _dstate_one(S, a, dl, Bt, xt, dyt, dCt):  # pragma: no cover - compiled
    # pass 1, one step: S <- a S + (dl x_t) B_t^T, dC_t += S^T dy_t
    P, N = S.shape
    i = 0
    while i + ROWS <= P:
        u0 = xt[i] * dl
        u1 = xt[i + 1] * dl
        u2 = xt[i + 2] * dl
        u3 = xt[i + 3] * dl
        e0 = dyt[i]
        e1 = dyt[i + 1]
        e2 = dyt[i + 2]
        e3 = dyt[i + 3]
        S0 = S[i]
        S1 = S[i + 1]
        S2 = S[i + 2]
        S3 = S[i + 3]
        for k in range(N):
            bk = Bt[k]
            v0 = a * S0[k] + u0 * bk
            v1 = a * S1[k] + u1 * bk
            v2 = a * S2[k] + u2 * bk
            v3 = a * S3[k] + u3 * bk
            S0[k] = v0
            S1[k] = v1
            S2[k] = v2
            S3[k] = v3
            dCt[k] += e0 * v0 + e1 * v1 + e2 * v2 + e3 * v3
        i += ROWS
    while i < P:
        u = xt[i] * dl
        e = dyt[i]
        Si = S[i]
        for k in range(N):
            v = a * Si[k] + u * Bt[k]
            Si[k] = v
            dCt[k] += e * v
        i += 1


def _dstate_two(S, a1, d1, B1, x1, dy1, dC1, a2, d2, B2, x2, dy2, dC2):  # pragma: no cover
    # pass 1, steps t (1) and t + 1 (2) in one sweep, two rows at a time
    P, N = S.shape
    i = 0
    while i + 2 <= P:
        u10 = x1[i] * d1
        u11 = x1[i + 1] * d1
        u20 = x2[i] * d2
        u21 = x2[i + 1] * d2
        e10 = dy1[i]
        e11 = dy1[i + 1]
        e20 = dy2[i]
        e21 = dy2[i + 1]
        S0 = S[i]
        S1 = S[i + 1]
        for k in range(N):
            v0 = a1 * S0[k] + u10 * B1[k]
            v1 = a1 * S1[k] + u11 * B1[k]
            dC1[k] += e10 * v0 + e11 * v1
            w0 = a2 * v0 + u20 * B2[k]
            w1 = a2 * v1 + u21 * B2[k]
            S0[k] = w0
            S1[k] = w1
            dC2[k] += e20 * w0 + e21 * w1
        i += 2
    if i < P:
        u1 = x1[i] * d1
        u2 = x2[i] * d2
        e1 = dy1[i]
        e2 = dy2[i]
        Si = S[i]
        for k in range(N):
            v = a1 * Si[k] + u1 * B1[k]
            dC1[k] += e1 * v
            w = a2 * v + u2 * B2[k]
            Si[k] = w
            dC2[k] += e2 * w


def _back_one(Gr, a, dl, Bt, Ct, dBt, xt, dyt, dxt, Dh):  # pragma: no cover - compiled
    # pass 2, one step: g = G + dy_t C_t^T, dx_t = dl g B_t + D dy_t, dB_t += g^T u_t,
    # G <- a g; returns u_t . du_t / dl
    P, N = Gr.shape
    zero = Gr.dtype.type(0)
    dxu = zero
    i = 0
    while i + ROWS <= P:
        e0 = dyt[i]
        e1 = dyt[i + 1]
        e2 = dyt[i + 2]
        e3 = dyt[i + 3]
        u0 = xt[i] * dl
        u1 = xt[i + 1] * dl
        u2 = xt[i + 2] * dl
        u3 = xt[i + 3] * dl
        G0 = Gr[i]
        G1 = Gr[i + 1]
        G2 = Gr[i + 2]
        G3 = Gr[i + 3]
        r0 = zero  # dL/du of the four rows
        r1 = zero
        r2 = zero
        r3 = zero
        for k in range(N):
            bk = Bt[k]
            ck = Ct[k]
            g0 = G0[k] + e0 * ck  # dL/dh_t
            g1 = G1[k] + e1 * ck
            g2 = G2[k] + e2 * ck
            g3 = G3[k] + e3 * ck
            r0 += g0 * bk
            r1 += g1 * bk
            r2 += g2 * bk
            r3 += g3 * bk
            dBt[k] += g0 * u0 + g1 * u1 + g2 * u2 + g3 * u3
            G0[k] = g0 * a
            G1[k] = g1 * a
            G2[k] = g2 * a
            G3[k] = g3 * a
        dxt[i] = r0 * dl + Dh[i] * e0
        dxt[i + 1] = r1 * dl + Dh[i + 1] * e1
        dxt[i + 2] = r2 * dl + Dh[i + 2] * e2
        dxt[i + 3] = r3 * dl + Dh[i + 3] * e3
        dxu += r0 * xt[i] + r1 * xt[i + 1] + r2 * xt[i + 2] + r3 * xt[i + 3]
        i += ROWS
    while i < P:
        e = dyt[i]
        u = xt[i] * dl
        Gi = Gr[i]
        r = zero
        for k in range(N):
            gk = Gi[k] + e * Ct[k]
            r += gk * Bt[k]
            dBt[k] += gk * u
            Gi[k] = gk * a
        dxt[i] = r * dl + Dh[i] * e
        dxu += r * xt[i]
        i += 1
    return dxu


def _back_two(
    Gr, a2, d2, B2, C2, dB2, x2, dy2, dx2, a1, d1, B1, C1, dB1, x1, dy1, dx1, Dh
):  # pragma: no cover - compiled
    # pass 2, steps t (2) and t - 1 (1) in one sweep, two rows at a time; returns both
    # u . du / dl
    P, N = Gr.shape
    zero = Gr.dtype.type(0)
    dxu2 = zero
    dxu1 = zero
    i = 0
    while i + 2 <= P:
        e20 = dy2[i]
        e21 = dy2[i + 1]
        e10 = dy1[i]
        e11 = dy1[i + 1]
        u20 = x2[i] * d2
        u21 = x2[i + 1] * d2
        u10 = x1[i] * d1
        u11 = x1[i + 1] * d1
        G0 = Gr[i]
        G1 = Gr[i + 1]
        r20 = zero
        r21 = zero
        r10 = zero
        r11 = zero
        for k in range(N):
            g20 = G0[k] + e20 * C2[k]  # dL/dh_t
            g21 = G1[k] + e21 * C2[k]
            r20 += g20 * B2[k]
            r21 += g21 * B2[k]
            dB2[k] += g20 * u20 + g21 * u21
            g10 = a2 * g20 + e10 * C1[k]  # dL/dh_{t-1}
            g11 = a2 * g21 + e11 * C1[k]
            r10 += g10 * B1[k]
            r11 += g11 * B1[k]
            dB1[k] += g10 * u10 + g11 * u11
            G0[k] = g10 * a1
            G1[k] = g11 * a1
        dx2[i] = r20 * d2 + Dh[i] * e20
        dx2[i + 1] = r21 * d2 + Dh[i + 1] * e21
        dx1[i] = r10 * d1 + Dh[i] * e10
        dx1[i + 1] = r11 * d1 + Dh[i + 1] * e11
        dxu2 += r20 * x2[i] + r21 * x2[i + 1]
        dxu1 += r10 * x1[i] + r11 * x1[i + 1]
        i += 2
    if i < P:
        e2 = dy2[i]
        e1 = dy1[i]
        u2 = x2[i] * d2
        u1 = x1[i] * d1
        Gi = Gr[i]
        r2 = zero
        r1 = zero
        for k in range(N):
            g2 = Gi[k] + e2 * C2[k]
            r2 += g2 * B2[k]
            dB2[k] += g2 * u2
            g1 = a2 * g2 + e1 * C1[k]
            r1 += g1 * B1[k]
            dB1[k] += g1 * u1
            Gi[k] = g1 * a1
        dx2[i] = r2 * d2 + Dh[i] * e2
        dx1[i] = r1 * d1 + Dh[i] * e1
        dxu2 += r2 * x2[i]
        dxu1 += r1 * x1[i]
    return dxu2, dxu1


if njit is not None:
    _inline = njit(fastmath=True, cache=True, inline="always")
    _fwd_one, _fwd_two = _inline(_fwd_one), _inline(_fwd_two)
    _dstate_one, _dstate_two = _inline(_dstate_one), _inline(_dstate_two)
    _back_one, _back_two = _inline(_back_one), _inline(_back_two)
