"""Compiled (numba, float64) Kalman log-likelihood and its exact gradient by an adjoint pass.

The model is time invariant (F, H, Q, R without an l axis; each may differ per series) with a
diagonal R, so y_t is processed one entry at a time (the univariate treatment of Koopman &
Durbin 2000, exactly equivalent to the joint update for diagonal R, and the one the exact
diffuse filter needs anyway). Per observed entry i of y_t, with row z of H and r = R_ii:

    regular (F_inf = 0):  M = P z,  f = z^T M + r,  v = y - z^T a
        a <- a + M v / f,  P <- P - M M^T / f,  ll += -(log 2 pi + log f + v^2 / f) / 2
    diffuse (F_inf = z^T P_inf z > TOL; Durbin & Koopman 2012, sec. 5.2):
        a <- a + M_inf v / F_inf,  P_inf <- P_inf - M_inf M_inf^T / F_inf,
        P <- P + M_inf M_inf^T f / F_inf^2 - (M M_inf^T + M_inf M^T) / F_inf,
        ll += -(log 2 pi + log F_inf) / 2

then the prediction a <- F a, P <- F P F^T + Q, P_inf <- F P_inf F^T (the equations of
:mod:`ssmkit.core.gaussian`, specialised to scalar observations; the reference filter
:func:`ssmkit.probabilistic.filters.log_likelihood` with ``method="sequential"`` is the
definition this is tested against).

Steady state: once a fully observed, non-diffuse step leaves the predicted covariance
unchanged (max |P_{t+1} - P_t| <= ``steady_tol`` max |P_t|), the following fully observed
steps reuse that step's M and f (the gain) and skip the covariance recursion; a missing
entry ends the window and the recursion resumes from the frozen covariance. The function so
defined is differentiated exactly: the adjoints of M and f collected over a window flow into
the step that opened it.

Backward (:mod:`.kalman_numba_grad`): the forward pass keeps a_t, P_t (and P_inf,t during
the diffuse phase) at the start of each recomputed step; the adjoint pass recomputes one
step's entries from them and runs the reverse of each equation above, accumulating dF, dH,
dQ, dR, dm0, dP0, dP_inf per series.
"""

from __future__ import annotations

import math

import numpy as np

from ssmkit.core.gaussian import LOG_2PI  # a global constant: numba freezes it into the kernels

try:
    import numba
    from numba import njit, prange
except ImportError:  # the backend is optional (extra "fast")
    numba = None
    prange = range

TOL = 1e-8  # F_inf at or below this counts as zero (as in ssmkit.probabilistic.diffuse)
PARALLEL_MIN = 16  # series from which the kernels run in parallel over series
NORMAL, DIFFUSE = -1, -2  # step kinds in ``src``; >= 0: a steady step using that step's gain


def available() -> bool:
    """True when numba is installed."""
    return numba is not None


def _entries(a0, P0, Pi0, Z, r, y, diffuse, A, PS, PI, M, MI, f, fi, v, kind):  # pragma: no cover
    """One step's updates, entry by entry; fills the intermediates and returns the loglik.

    A (o+1, n), PS/PI (o+1, n, n): state before entry i (row o: after the last);
    M, MI (o, n); f, fi, v (o,); kind (o,): 0 missing, 1 regular, 2 diffuse.
    """
    o, n = Z.shape
    A[0, :] = a0
    PS[0] = P0
    if diffuse:
        PI[0] = Pi0
    ll = 0.0
    for i in range(o):
        A[i + 1, :] = A[i]
        PS[i + 1] = PS[i]
        if diffuse:
            PI[i + 1] = PI[i]
        if math.isnan(y[i]):
            kind[i] = 0
            continue
        za = 0.0
        fs = r[i]
        for k in range(n):
            s = 0.0
            for j in range(n):
                s += PS[i, k, j] * Z[i, j]
            M[i, k] = s
            fs += Z[i, k] * s
            za += Z[i, k] * A[i, k]
        f[i] = fs
        v[i] = y[i] - za
        fin = 0.0
        if diffuse:
            for k in range(n):
                s = 0.0
                for j in range(n):
                    s += PI[i, k, j] * Z[i, j]
                MI[i, k] = s
                fin += Z[i, k] * s
        fi[i] = fin
        if diffuse and fin > TOL:
            kind[i] = 2
            c = fs / (fin * fin)
            for k in range(n):
                A[i + 1, k] += MI[i, k] * v[i] / fin
                for j in range(n):
                    mm = MI[i, k] * MI[i, j]
                    PI[i + 1, k, j] -= mm / fin
                    PS[i + 1, k, j] += mm * c - (M[i, k] * MI[i, j] + MI[i, k] * M[i, j]) / fin
            ll -= 0.5 * (LOG_2PI + math.log(fin))
        else:
            kind[i] = 1
            for k in range(n):
                A[i + 1, k] += M[i, k] * v[i] / fs
                for j in range(n):
                    PS[i + 1, k, j] -= M[i, k] * M[i, j] / fs
            ll -= 0.5 * (LOG_2PI + math.log(fs) + v[i] * v[i] / fs)
    return ll


def _fpf(F, P, out, tmp):  # pragma: no cover
    """out = F P F^T (tmp: (n, n) scratch holding F P)."""
    n = F.shape[0]
    for k in range(n):
        for j in range(n):
            s = 0.0
            for m in range(n):
                s += F[k, m] * P[m, j]
            tmp[k, j] = s
    for k in range(n):
        for j in range(n):
            s = 0.0
            for m in range(n):
                s += tmp[k, m] * F[j, m]
            out[k, j] = s


def _maxabs(X, Y, diff):  # pragma: no cover
    """max |X - Y| (diff) or max |X| over an (n, n) array, without temporaries."""
    n = X.shape[0]
    out = 0.0
    for k in range(n):
        for j in range(n):
            x = abs(X[k, j] - Y[k, j]) if diff else abs(X[k, j])
            out = max(out, x)
    return out


def _mv(F, x, out, transpose):  # pragma: no cover
    """out = F x (or F^T x)."""
    n = F.shape[0]
    for k in range(n):
        s = 0.0
        for j in range(n):
            s += (F[j, k] if transpose else F[k, j]) * x[j]
        out[k] = s


def _fwd(F, H, Q, R, m0, P0, Pinf, y, exact, burn, steady_tol, store, A_st, P_st, PI_st, src, ll):
    """Per series (in parallel): the log-likelihood, and what the backward pass needs."""
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
        Mst = np.zeros((o, n))
        fst = np.ones(o)
        tmp = np.empty((n, n))
        tmpv = np.empty(n)
        a = m0[s].copy()
        P = P0[s].copy()
        Pi = Pinf[s].copy()
        Pn = np.empty((n, n))
        diffuse = exact and np.any(Pi != 0)
        steady = -1
        total = 0.0
        for t in range(l):
            full = True
            for i in range(o):
                if math.isnan(y[s, t, i]):
                    full = False
            if store:
                A_st[s, t] = a
            if steady >= 0 and full:
                if store:
                    src[s, t] = steady
                llt = 0.0
                for i in range(o):
                    za = 0.0
                    for k in range(n):
                        za += H[s, i, k] * a[k]
                    vi = y[s, t, i] - za
                    for k in range(n):
                        a[k] += Mst[i, k] * vi / fst[i]
                    llt -= 0.5 * (LOG_2PI + math.log(fst[i]) + vi * vi / fst[i])
                _mv(F[s], a, tmpv, False)
                a[:] = tmpv
            else:
                steady = -1
                if store:
                    src[s, t] = DIFFUSE if diffuse else NORMAL
                    P_st[s, t] = P
                    if diffuse:
                        PI_st[s, t] = Pi
                llt = _entries(
                    a, P, Pi, H[s], R[s], y[s, t], diffuse, A, PS, PI, M, MI, f, fi, v, kind
                )
                was_diffuse = diffuse
                if diffuse and _maxabs(PI[o], PI[o], False) <= TOL:
                    diffuse = False  # a P_inf left with rounding noise only ends the phase
                _mv(F[s], A[o], a, False)
                _fpf(F[s], PS[o], Pn, tmp)
                Pn += Q[s]
                if diffuse:
                    _fpf(F[s], PI[o], Pi, tmp)
                else:
                    Pi[:] = 0.0
                scale = _maxabs(P, P, False)
                if (
                    steady_tol >= 0
                    and full
                    and not was_diffuse
                    and _maxabs(Pn, P, True) <= steady_tol * scale
                ):
                    steady = t
                    Mst[:] = M
                    fst[:] = f
                P[:] = Pn
            if t >= burn:
                total += llt
        ll[s] = total


if numba is not None:
    _entries = njit(cache=True, inline="always")(_entries)
    _fpf = njit(cache=True, inline="always")(_fpf)
    _mv = njit(cache=True, inline="always")(_mv)
    _maxabs = njit(cache=True, inline="always")(_maxabs)
    _fwd_par = njit(parallel=True, cache=True)(_fwd)
    _fwd = njit(cache=True)(_fwd)
else:
    _fwd_par = _fwd


def _parallel(b: int) -> bool:
    """Threads pay off only for many series: starting the pool costs more than one filter."""
    return numba is not None and b >= PARALLEL_MIN and numba.get_num_threads() > 1


def loglik_forward(F, H, Q, R, m0, P0, Pinf, y, exact, burn, steady_tol, store):
    """Run the forward kernel on float64 numpy arrays (shapes as in the module docstring,
    every one with a leading series axis b). Returns (ll (b,), saved state for backward)."""
    b, l, _o = y.shape
    n = F.shape[-1]
    ll = np.zeros(b)
    if store:
        A_st = np.zeros((b, l, n))
        P_st = np.zeros((b, l, n, n))
        PI_st = np.zeros((b, l, n, n)) if exact else np.zeros((b, 1, n, n))
        src = np.full((b, l), NORMAL, np.int64)
    else:
        A_st, P_st = np.zeros((1, 1, n)), np.zeros((1, 1, n, n))
        PI_st, src = np.zeros((1, 1, n, n)), np.zeros((1, 1), np.int64)
    fwd = _fwd_par if _parallel(b) else _fwd
    fwd(F, H, Q, R, m0, P0, Pinf, y, exact, burn, steady_tol, store, A_st, P_st, PI_st, src, ll)
    return ll, (A_st, P_st, PI_st, src)
