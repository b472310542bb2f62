"""The adjoint pass of :mod:`.kalman_numba`: the exact gradient of its log-likelihood.

Per step, from the last: recompute the step's entries from the state stored at its start,
reverse the prediction (P' = F P F^T + Q, P_inf' = F P_inf F^T, a' = F a), then each entry's
update, regular or diffuse (the equations in :mod:`.kalman_numba`), collecting dF, dH, dQ,
dR per series, and finally dm0, dP0, dP_inf. A steady window (steps that reuse one step's M
and f) adds its adjoints of M and f to the step that opened it.
"""

from __future__ import annotations

import numpy as np

from ssmkit.probabilistic.kalman_numba import (
    DIFFUSE,
    TOL,
    _entries,
    _maxabs,
    _mv,
    _parallel,
    numba,
)

if numba is not None:
    from numba import njit, prange
else:
    prange = range


def _entries_back(
    Z, r, y, A, PS, PI, M, MI, f, fi, v, kind, ga, gP, gPi, w, gMx, gfx, gH, gR, gM, gMi, gz
):  # pragma: no cover
    """Reverse of :func:`_entries`: turns the adjoints (ga, gP, gPi) of the state after the
    step into those of the state before it (in place); adds to gH (o, n) and gR (o,).
    gM, gMi, gz: (n,) scratch."""
    o, n = Z.shape
    for i in range(o - 1, -1, -1):
        if kind[i] == 0:
            continue
        z = Z[i]
        a = A[i]
        if kind[i] == 1:
            fs = f[i]
            vi = v[i]
            gf = -0.5 * w * (1.0 / fs - vi * vi / (fs * fs))
            gv = -w * vi / fs
            gaM = 0.0
            for k in range(n):
                gaM += ga[k] * M[i, k]
            mgm = 0.0
            for k in range(n):
                s = 0.0
                for j in range(n):
                    s += (gP[k, j] + gP[j, k]) * M[i, j]
                    mgm += M[i, k] * gP[k, j] * M[i, j]
                gM[k] = -s / fs + ga[k] * vi / fs + gMx[i, k]
            gf += mgm / (fs * fs) - gaM * vi / (fs * fs) + gfx[i]
            gv += gaM / fs
            for k in range(n):
                ga[k] -= gv * z[k]
                gz[k] = -gv * a[k] + gf * M[i, k]
                gM[k] += gf * z[k]
            gR[i] += gf
            for k in range(n):
                for j in range(n):
                    gP[k, j] += gM[k] * z[j]
            for j in range(n):
                s = 0.0
                for k in range(n):
                    s += PS[i, k, j] * gM[k]
                gz[j] += s
        else:
            fs, fin, vi = f[i], fi[i], v[i]
            gfi = -0.5 * w / fin
            c = fs / (fin * fin)
            gaMi = 0.0
            mgm_i = 0.0  # Mi^T GI Mi
            mgm = 0.0  # Mi^T G Mi
            msm = 0.0  # M^T (G + G^T) Mi
            for k in range(n):
                gaMi += ga[k] * MI[i, k]
                si = 0.0
                sg = 0.0
                sgm = 0.0
                for j in range(n):
                    si += (gPi[k, j] + gPi[j, k]) * MI[i, j]
                    sg += (gP[k, j] + gP[j, k]) * MI[i, j]
                    sgm += (gP[k, j] + gP[j, k]) * M[i, j]
                    mgm_i += MI[i, k] * gPi[k, j] * MI[i, j]
                    mgm += MI[i, k] * gP[k, j] * MI[i, j]
                    msm += M[i, k] * (gP[k, j] + gP[j, k]) * MI[i, j]
                gMi[k] = -si / fin + sg * c - sgm / fin + ga[k] * vi / fin
                gM[k] = -sg / fin
            gfi += mgm_i / (fin * fin) - 2.0 * mgm * fs / (fin * fin * fin) + msm / (fin * fin)
            gfi -= gaMi * vi / (fin * fin)
            gfs = mgm / (fin * fin)
            gv = gaMi / fin
            for k in range(n):
                ga[k] -= gv * z[k]
                gz[k] = -gv * a[k] + gfs * M[i, k] + gfi * MI[i, k]
                gM[k] += gfs * z[k]
                gMi[k] += gfi * z[k]
            gR[i] += gfs
            for k in range(n):
                for j in range(n):
                    gP[k, j] += gM[k] * z[j]
                    gPi[k, j] += gMi[k] * z[j]
            for j in range(n):
                s = 0.0
                si = 0.0
                for k in range(n):
                    s += PS[i, k, j] * gM[k]
                    si += PI[i, k, j] * gMi[k]
                gz[j] += s + si
        for k in range(n):
            gH[i, k] += gz[k]


def _predict_back(F, Pp, G, gF, gPp, tmp, tmp2):  # pragma: no cover
    """Reverse of Pn = F Pp F^T (+ Q): gF += G F Pp^T + G^T F Pp, gPp = F^T G F."""
    n = F.shape[0]
    for k in range(n):  # tmp = F Pp, tmp2 = F Pp^T
        for j in range(n):
            s = 0.0
            s2 = 0.0
            for m in range(n):
                s += F[k, m] * Pp[m, j]
                s2 += F[k, m] * Pp[j, m]
            tmp[k, j] = s
            tmp2[k, j] = s2
    for k in range(n):
        for j in range(n):
            s = 0.0
            for m in range(n):
                s += G[k, m] * tmp2[m, j] + G[m, k] * tmp[m, j]
            gF[k, j] += s
    for k in range(n):  # tmp = G F
        for j in range(n):
            s = 0.0
            for m in range(n):
                s += G[k, m] * F[m, j]
            tmp[k, j] = s
    for k in range(n):  # gPp = F^T (G F)
        for j in range(n):
            s = 0.0
            for m in range(n):
                s += F[m, k] * tmp[m, j]
            gPp[k, j] = s


def _bwd(F, H, Q, R, y, burn, A_st, P_st, PI_st, src, gout, gF, gH, gQ, gR, gm0, gP0, gPinf):
    """Per series (in parallel): the adjoint pass; writes the per-series gradients."""
    b, l, o = y.shape
    n = F.shape[-1]
    for s in prange(b):
        A = np.empty((o + 1, n))
        PS = np.empty((o + 1, n, n))
        PI = np.zeros((o + 1, n, n))
        M = np.zeros((o, n))
        MI = np.zeros((o, n))
        f = np.ones(o)
        fi = np.zeros(o)
        v = np.zeros(o)
        kind = np.zeros(o, np.int64)
        gMx = np.zeros((o, n))
        gfx = np.zeros(o)
        zero_M = np.zeros((o, n))
        zero_f = np.zeros(o)
        tmp = np.empty((n, n))
        tmp2 = np.empty((n, n))
        tmpv = np.empty(n)
        ai = np.empty((o + 1, n))
        vi = np.empty(o)
        a = np.empty(n)
        gPp = np.empty((n, n))
        gM = np.empty(n)
        gMi = np.empty(n)
        gz = np.empty(n)
        ga = np.zeros(n)
        gP = np.zeros((n, n))
        gPi = np.zeros((n, n))
        Fs = F[s]
        window = -1  # the step whose gain the steady steps being reversed use
        for t in range(l - 1, -1, -1):
            w = gout[s] if t >= burn else 0.0
            kt = src[s, t]
            if kt >= 0:
                if window != kt:  # recompute the gain of the step that opened the window
                    _entries(
                        A_st[s, kt],
                        P_st[s, kt],
                        PI[0],
                        H[s],
                        R[s],
                        y[s, kt],
                        False,
                        A,
                        PS,
                        PI,
                        M,
                        MI,
                        f,
                        fi,
                        v,
                        kind,
                    )
                    window = kt
                # the step: a_i then a <- F a
                a[:] = A_st[s, t]
                for i in range(o):
                    ai[i] = a
                    za = 0.0
                    for k in range(n):
                        za += H[s, i, k] * a[k]
                    vi[i] = y[s, t, i] - za
                    for k in range(n):
                        a[k] += M[i, k] * vi[i] / f[i]
                for k in range(n):
                    for j in range(n):
                        gF[s, k, j] += ga[k] * a[j]
                _mv(Fs, ga, tmpv, True)
                ga[:] = tmpv
                for i in range(o - 1, -1, -1):
                    fs = f[i]
                    gaM = 0.0
                    for k in range(n):
                        gaM += ga[k] * M[i, k]
                    gv = gaM / fs - w * vi[i] / fs
                    gfx[i] += -gaM * vi[i] / (fs * fs) - 0.5 * w * (1.0 / fs - vi[i] ** 2 / fs**2)
                    for k in range(n):
                        gMx[i, k] += ga[k] * vi[i] / fs
                        gH[s, i, k] -= gv * ai[i, k]
                        ga[k] -= gv * H[s, i, k]
                continue
            diffuse = kt == DIFFUSE
            _entries(
                A_st[s, t],
                P_st[s, t],
                PI_st[s, t] if diffuse else PI[0],
                H[s],
                R[s],
                y[s, t],
                diffuse,
                A,
                PS,
                PI,
                M,
                MI,
                f,
                fi,
                v,
                kind,
            )
            for k in range(n):
                for j in range(n):
                    gF[s, k, j] += ga[k] * A[o, j]
            _mv(Fs, ga, tmpv, True)
            ga[:] = tmpv
            gQ[s] += gP
            _predict_back(Fs, PS[o], gP, gF[s], gPp, tmp, tmp2)
            gP[:] = gPp
            if diffuse and _maxabs(PI[o], PI[o], False) > TOL:
                _predict_back(Fs, PI[o], gPi, gF[s], gPp, tmp, tmp2)
                gPi[:] = gPp
            else:  # P_inf was zeroed (or is zero): nothing flows back through it
                gPi[:] = 0.0
            reused = window == t  # this step's gain was reused by the steady window after it
            gM_st, gf_st = (gMx, gfx) if reused else (zero_M, zero_f)
            _entries_back(
                H[s], R[s], y[s, t], A, PS, PI, M, MI, f, fi, v, kind, ga, gP, gPi, w,
                gM_st, gf_st, gH[s], gR[s], gM, gMi, gz,
            )  # fmt: skip
            if reused:
                gMx[:] = 0.0
                gfx[:] = 0.0
                window = -1
        gm0[s] = ga
        gP0[s] = gP
        gPinf[s] = gPi


if numba is not None:
    _entries_back = njit(cache=True, inline="always")(_entries_back)
    _predict_back = njit(cache=True, inline="always")(_predict_back)
    _bwd_par = njit(parallel=True, cache=True)(_bwd)
    _bwd = njit(cache=True)(_bwd)
else:
    _bwd_par = _bwd


def loglik_backward(F, H, Q, R, y, burn, saved, gout):
    """Run the adjoint kernel; returns per-series gradients (gF, gH, gQ, gR, gm0, gP0, gPinf)."""
    A_st, P_st, PI_st, src = saved
    b = y.shape[0]
    n, o = F.shape[-1], y.shape[-1]
    gF, gQ = np.zeros((b, n, n)), np.zeros((b, n, n))
    gH, gR = np.zeros((b, o, n)), np.zeros((b, o))
    gm0, gP0, gPinf = np.zeros((b, n)), np.zeros((b, n, n)), np.zeros((b, n, n))
    bwd = _bwd_par if _parallel(b) else _bwd
    bwd(F, H, Q, R, y, burn, A_st, P_st, PI_st, src, gout, gF, gH, gQ, gR, gm0, gP0, gPinf)
    return gF, gH, gQ, gR, gm0, gP0, gPinf
