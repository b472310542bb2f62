"""Brute-force oracle: the joint Gaussian of (x_1..x_l, y_1..y_l) of a small SSM, conditioned
directly (dense covariance of size l (n + o))."""

from __future__ import annotations

import math

import torch

from ssmkit.probabilistic import LinearGaussianSSM


def random_model(n, o, l=None, seed=0, batch=None, inputs=0, dtype=torch.float64):
    """A random stable model; time-varying when l is given, per-series when batch is given."""
    g = torch.Generator().manual_seed(seed)
    lead = (() if batch is None else (batch,)) + (() if l is None else (l,))
    if batch is not None and l is None:
        lead = (batch, 1)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    def spd(k):
        A = rnd(*lead, k, k)
        return A @ A.mT / k + 0.2 * torch.eye(k, dtype=dtype)

    F = (
        0.9
        * torch.linalg.qr(rnd(*lead, n, n)).Q
        * torch.rand(*lead, 1, n, generator=g, dtype=dtype)
    )
    A0 = rnd(n, n)
    kw = {}
    if inputs:
        kw = {"B": rnd(*lead, n, inputs), "D": rnd(*lead, o, inputs)}
    return LinearGaussianSSM(
        F=F,
        H=rnd(*lead, o, n),
        Q=spd(n),
        R=spd(o),
        m0=rnd(n),
        P0=A0 @ A0.T / n + 0.5 * torch.eye(n, dtype=dtype),
        **kw,
    )


def joint(model: LinearGaussianSSM, l: int, b: int = 0, u=None):
    """Mean (l n + l o,) and covariance of (x_1..x_l, y_1..y_l) for series b."""
    n, o = model.n, model.o

    def mat(M, t, r, c):
        X = M
        if X.ndim == 4:
            X = X[b]
        if X.ndim == 3:
            X = X[t] if X.shape[0] > 1 else X[0]
        return X

    ne = n + (l - 1) * n + l * o  # noise: x_1 - m0, w_1..w_{l-1}, v_1..v_l
    cov_e = torch.zeros(ne, ne, dtype=torch.float64)
    cov_e[:n, :n] = model.P0 if model.P0.ndim == 2 else model.P0[b]
    for t in range(l - 1):
        s = n + t * n
        cov_e[s : s + n, s : s + n] = mat(model.Q, t, n, n)
    for t in range(l):
        s = n * l + t * o
        cov_e[s : s + o, s : s + o] = mat(model.R, t, o, o)
    Gx = torch.zeros(l * n, ne, dtype=torch.float64)
    mx = torch.zeros(l * n, dtype=torch.float64)
    m0 = model.m0 if model.m0.ndim == 1 else model.m0[b]
    mx[:n] = m0
    Gx[:n, :n] = torch.eye(n, dtype=torch.float64)
    for t in range(1, l):
        F = mat(model.F, t - 1, n, n)
        mx[t * n : (t + 1) * n] = F @ mx[(t - 1) * n : t * n]
        if model.B is not None:
            mx[t * n : (t + 1) * n] += mat(model.B, t - 1, n, 0) @ u[b, t - 1]
        Gx[t * n : (t + 1) * n] = F @ Gx[(t - 1) * n : t * n]
        Gx[t * n : (t + 1) * n, n + (t - 1) * n : n + t * n] += torch.eye(n, dtype=torch.float64)
    Gy = torch.zeros(l * o, ne, dtype=torch.float64)
    my = torch.zeros(l * o, dtype=torch.float64)
    for t in range(l):
        H = mat(model.H, t, o, n)
        my[t * o : (t + 1) * o] = H @ mx[t * n : (t + 1) * n]
        if model.D is not None:
            my[t * o : (t + 1) * o] += mat(model.D, t, o, 0) @ u[b, t]
        Gy[t * o : (t + 1) * o] = H @ Gx[t * n : (t + 1) * n]
        Gy[t * o : (t + 1) * o, n * l + t * o : n * l + (t + 1) * o] += torch.eye(
            o, dtype=torch.float64
        )
    G = torch.cat([Gx, Gy])
    return torch.cat([mx, my]), G @ cov_e @ G.T


def posterior(model, y, b=0, upto=None, u=None):
    """Posterior means (l, n), covariances (l, n, n) of the states given the observed entries
    of y[b, :upto], and log p(those entries)."""
    l, o = y.shape[1], y.shape[2]
    n = model.n
    mean, cov = joint(model, l, b, u)
    yb = y[b].reshape(-1).clone()
    keep = ~torch.isnan(yb)
    if upto is not None:
        keep[upto * o :] = False
    idx = torch.nonzero(keep).flatten() + l * n
    Syy = cov[idx][:, idx]
    Sxy = cov[: l * n][:, idx]
    r = yb[keep] - mean[idx]
    sol = torch.linalg.solve(Syy, r)
    m = mean[: l * n] + Sxy @ sol
    P = cov[: l * n, : l * n] - Sxy @ torch.linalg.solve(Syy, Sxy.T)
    k = idx.numel()
    ll = -0.5 * (r @ sol + torch.logdet(Syy) + k * math.log(2 * math.pi))
    Ps = torch.stack([P[t * n : (t + 1) * n, t * n : (t + 1) * n] for t in range(l)])
    cross = torch.stack([P[t * n : (t + 1) * n, (t + 1) * n : (t + 2) * n] for t in range(l - 1)])
    return m.reshape(l, n), Ps, ll, cross
