"""Parallel-in-time Kalman filter and RTS smoother (Sarkka & Garcia-Fernandez 2021,
arXiv:1905.13002, sec. 3-4): the filter and smoother as associative scans, O(log l) depth.

Filtering element k >= 1 is p(x_k | x_{k-1}, y_k) = N(A x_{k-1} + b, C) together with the
likelihood of y_k as a function of x_{k-1}, carried in information form (eta, J). With
S = H Q H^T + R and K = Q H^T S^{-1} (the update of N(c, Q) by y_k, from core.gaussian):
A = (I - K H) F, b and C = the updated moments, eta = F^T H^T S^{-1} (y - H c - d),
J = F^T H^T S^{-1} H F. Element 0 is the filtered N(m_0, P_0) with A = 0, eta = 0, J = 0.
The smoothing elements are the backward kernels x_k = E x_{k+1} + g + N(0, L).
"""

from __future__ import annotations

import torch

from ssmkit.core.gaussian import (
    cholesky,
    kalman_gain,
    mask_observation,
    mv,
    predict,
    symmetrize,
    update,
)
from ssmkit.probabilistic.model import Prepared
from ssmkit.probabilistic.scan import associative_scan

Tensor = torch.Tensor


def filter_combine(left: tuple[Tensor, ...], right: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The associative operator on filtering elements (A, b, C, eta, J) (paper, Lemma 8)."""
    A1, b1, C1, e1, J1 = left
    A2, b2, C2, e2, J2 = right
    eye = torch.eye(A1.shape[-1], dtype=A1.dtype, device=A1.device)
    # M = A2 (I + C1 J2)^{-1}; N = A1^T (I + J2 C1)^{-1}; C and J are symmetric.
    M = torch.linalg.solve(eye + J2 @ C1, A2.mT).mT
    N = torch.linalg.solve(eye + C1 @ J2, A1).mT
    A = M @ A1
    b = mv(M, b1 + mv(C1, e2)) + b2
    C = symmetrize(M @ C1 @ A2.mT + C2)
    e = mv(N, e2 - mv(J2, b1)) + e1
    J = symmetrize(N @ J2 @ A1 + J1)
    return A, b, C, e, J


def parallel_filter(p: Prepared) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Filtered moments by the associative scan.

    Returns:
        m_pred (b, l, n), P_pred (b, l, n, n) predicted; m (b, l, n), P (b, l, n, n) filtered;
        loglik (b, l) per step.
    """
    b, l, n = p.y.shape[0], p.y.shape[1], p.F.shape[-1]
    mask0 = None if p.mask is None else p.mask[:, :1]
    d = p.d
    m_first, P_first, _ = update(
        p.m0.unsqueeze(1),
        p.P0.unsqueeze(1),
        p.y[:, :1],
        p.H[:, :1],
        p.R[:, :1],
        None if d is None else d[:, :1],
        mask0,
    )
    F, Q = p.F[:, :-1], p.Q[:, :-1]  # transitions into steps 1 .. l-1
    c = p.c[:, :-1] if p.c is not None else torch.zeros_like(p.m0).unsqueeze(1).expand(b, l - 1, n)
    mask = None if p.mask is None else p.mask[:, 1:]
    y, H, R = mask_observation(p.y[:, 1:], p.H[:, 1:], p.R[:, 1:], mask)
    dd = None if d is None else (d[:, 1:] if mask is None else d[:, 1:] * mask.to(d.dtype))
    K, LS = kalman_gain(Q, H, R)
    bb, C, _ = update(c, Q, y, H, R, dd)
    eye = torch.eye(n, dtype=F.dtype, device=F.device)
    A = (eye - K @ H) @ F
    resid = y - mv(H, c) - (0 if dd is None else dd)  # (b, l-1, o)
    HF = H @ F  # (b, l-1, o, n)
    eta = mv(HF.mT, torch.cholesky_solve(resid.unsqueeze(-1), LS).squeeze(-1))
    J = symmetrize(HF.mT @ torch.cholesky_solve(HF, LS))
    zeros = torch.zeros(b, 1, n, n, dtype=F.dtype, device=F.device)
    elems = (
        torch.cat([zeros, A], 1),
        torch.cat([m_first, bb], 1),
        torch.cat([P_first, C], 1),
        torch.cat([zeros[..., 0], eta], 1),
        torch.cat([zeros, J], 1),
    )
    _, m, P, _, _ = associative_scan(filter_combine, elems)
    m_next, P_next = predict(m[:, :-1], P[:, :-1], F, Q, None if p.c is None else p.c[:, :-1])
    m_pred = torch.cat([p.m0.unsqueeze(1), m_next], 1)
    P_pred = torch.cat([p.P0.unsqueeze(1), P_next], 1)
    _, _, ll = update(m_pred, P_pred, p.y, p.H, p.R, p.d, p.mask)
    return m_pred, P_pred, m, P, ll


def smoother_combine(left: tuple[Tensor, ...], right: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Compose backward kernels: ``left`` is the later block (scan runs from the end)."""
    E1, g1, L1 = left
    E2, g2, L2 = right
    return E2 @ E1, mv(E2, g1) + g2, symmetrize(E2 @ L1 @ E2.mT + L2)


def parallel_smoother(
    m: Tensor, P: Tensor, m_pred: Tensor, P_pred: Tensor, F: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Smoothed moments by a reverse associative scan over backward kernels.

    Args:
        m, P: (b, l, n), (b, l, n, n) filtered; m_pred, P_pred: predicted (step t from t-1);
        F: (b, l, n, n) transitions (F[:, t] maps t to t + 1).

    Returns:
        m_s (b, l, n), P_s (b, l, n, n) and the gains G (b, l-1, n, n).
    """
    Fk = F[:, :-1]
    Lp = cholesky(P_pred[:, 1:], "the predicted covariance")
    E = torch.cholesky_solve(Fk @ P[:, :-1], Lp).mT  # (b, l-1, n, n) = P F^T P_pred^{-1}
    g = m[:, :-1] - mv(E, m_pred[:, 1:])
    Lk = symmetrize(P[:, :-1] - E @ Fk @ P[:, :-1])
    zeros = torch.zeros_like(P[:, -1:])
    elems = (
        torch.cat([E, zeros], 1).flip(1),
        torch.cat([g, m[:, -1:]], 1).flip(1),
        torch.cat([Lk, P[:, -1:]], 1).flip(1),
    )
    _, m_s, P_s = associative_scan(smoother_combine, elems)
    return m_s.flip(1), P_s.flip(1), E
