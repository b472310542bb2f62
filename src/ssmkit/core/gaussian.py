"""Gaussian predict and condition (update) steps: THE Kalman equations, written once.

Every filter, smoother, EKF and UKF in ssmkit calls these functions; nothing else re-derives
them. Axes: ``n`` state size, ``o`` observation size (entries of one observation vector),
``*`` any leading batch axes (broadcast).

* predict:  m' = F m + c,  P' = F P F^T + Q
* update (Joseph form, Bucy & Joseph 1968; Sarkka 2013, eq. 4.20 and after):
      v = y - H m - d,  S = H P H^T + R,  K = P H^T S^{-1}  (a Cholesky solve, no inverse)
      m' = m + K v,  P' = (I - K H) P (I - K H)^T + K R K^T
      log N(v; 0, S) counted over the observed entries only
* square-root forms (Cholesky factors, triangularised by QR; Arasaratnam & Haykin 2008):
      predict: L' = tria([F L, L_Q]);  update: tria([[L_R, H L], [0, L]]) = [[L_S, 0], [Kb, L']]
* smoothing step (Rauch, Tung & Striebel 1965): G = P F^T P'^{-1},
      m_s = m + G (m_s' - m'),  P_s = P + G (P_s' - P') G^T

Missing entries of y are handled by :func:`mask_observation`: a missing entry becomes a dummy
observation of 0 with unit variance, independent of the state and of the other entries, so it
leaves the state untouched and contributes nothing to the log-likelihood except the
constant, which :func:`update` leaves out.
"""

from __future__ import annotations

import math

import torch

from ssmkit.core.checks import check_tensor

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


def mv(A: Tensor, x: Tensor) -> Tensor:
    """A x for A: (*, r, c) and x: (*, c), broadcast; written as x^T A^T so that a shared
    2-D A folds the batch into one matrix product (much faster than a batched one)."""
    return (x.unsqueeze(-2) @ A.mT).squeeze(-2)


def symmetrize(P: Tensor) -> Tensor:
    """(P + P^T) / 2 for P: (*, n, n)."""
    return 0.5 * (P + P.mT)


def check_psd(name: str, P: Tensor, rtol: float = 1e-9) -> Tensor:
    """Raise ``ValueError`` unless ``P`` (*, n, n) is finite, symmetric and positive semi-definite.

    Eigenvalues down to ``-rtol * max(1, largest |eigenvalue|)`` count as zero.
    """
    check_tensor(name, P)
    if P.ndim < 2 or P.shape[-1] != P.shape[-2]:
        raise ValueError(f"{name} must have shape (*, n, n), got shape {tuple(P.shape)}")
    P = P.detach()
    if not bool(torch.isfinite(P).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    scale = P.abs().amax().clamp_min(1.0)
    asym = float((P - P.mT).abs().amax())
    if asym > 1e-8 * float(scale):
        raise ValueError(f"{name} must be symmetric, got max |P - P^T| = {asym:.3g}")
    low = float(torch.linalg.eigvalsh(symmetrize(P).to(torch.float64)).amin())
    if low < -rtol * float(scale) * P.shape[-1]:
        raise ValueError(
            f"{name} must be positive semi-definite, got smallest eigenvalue {low:.4g}"
        )
    return P


def psd_factor(P: Tensor) -> Tensor:
    """A factor L with L L^T = P for symmetric PSD P: (*, n, n).

    Cholesky where P is positive definite; otherwise the symmetric square root by eigh with
    negative rounding noise clipped (its gradient is undefined at repeated eigenvalues).
    """
    L, info = torch.linalg.cholesky_ex(P)
    if not bool((info != 0).any()):
        return L
    w, V = torch.linalg.eigh(symmetrize(P))
    return V * w.clamp_min(0).sqrt().unsqueeze(-2)


def tria(A: Tensor) -> Tensor:
    """Lower-triangular L (*, n, n) with L L^T = A A^T for A: (*, n, k), k >= n, by QR."""
    R = torch.linalg.qr(A.mT, mode="reduced").R  # (*, n, n), A^T = Q R
    sign = torch.where(torch.diagonal(R, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(R.dtype)
    return (R * sign.unsqueeze(-1)).mT


def cholesky(P: Tensor, name: str) -> Tensor:
    """Cholesky factor of a positive definite P: (*, n, n).

    Uses ``cholesky_ex`` (``torch.linalg.cholesky`` checks each call far more slowly), and a
    square root for 1 x 1 matrices (univariate series: the common case); on CPU
    a failure raises ``ValueError`` naming ``name``; on GPU it is not checked (no host sync).
    """
    if P.shape[-1] == 1:  # scalar: an elementwise sqrt (no per-matrix LAPACK call)
        L, info = P.clamp_min(0).sqrt(), (P[..., 0, 0] <= 0).to(torch.int32)
    else:
        L, info = torch.linalg.cholesky_ex(P)
    if P.device.type == "cpu" and bool((info != 0).any()):
        raise ValueError(f"{name} is not positive definite (Cholesky failed)")
    return L


def mask_observation(
    y: Tensor, H: Tensor, R: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Replace missing entries by independent unit-variance dummy observations of 0.

    Args:
        y: (*, o) observations (values at missing entries are ignored, NaN allowed).
        H: (*, o, n) emission matrix.
        R: (*, o, o) observation noise covariance.
        mask: (*, o) bool, True where observed; None means everything is observed.

    Returns:
        y0 (*, o) with 0 at missing entries, H (*, o, n) with zero rows there, and R (*, o, o)
        with unit diagonal and zero cross terms there.
    """
    if mask is None:
        return y, H, R
    fm = mask.to(H.dtype)
    y0 = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
    H0 = H * fm.unsqueeze(-1)
    R0 = R * (fm.unsqueeze(-1) * fm.unsqueeze(-2)) + torch.diag_embed(1 - fm)
    return y0, H0, R0


def predict(
    m: Tensor, P: Tensor, F: Tensor, Q: Tensor, c: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Gaussian predict: x' = F x + c + w, w ~ N(0, Q).

    Args:
        m: (*, n) mean, P: (*, n, n) covariance, F: (*, n, n), Q: (*, n, n), c: (*, n) or None.

    Returns:
        m' (*, n) and P' (*, n, n).
    """
    m_new = mv(F, m)
    if c is not None:
        m_new = m_new + c
    return m_new, symmetrize(F @ P @ F.mT + Q)


def update(
    m: Tensor,
    P: Tensor,
    y: Tensor,
    H: Tensor,
    R: Tensor,
    d: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Condition N(m, P) on y = H x + d + v, v ~ N(0, R), in Joseph form.

    Args:
        m: (*, n), P: (*, n, n) prior; y: (*, o); H: (*, o, n); R: (*, o, o); d: (*, o) or None;
        mask: (*, o) bool, True where y is observed (None: all observed).

    Returns:
        m' (*, n), P' (*, n, n) and the log-likelihood log N(y_obs; H_obs m + d_obs, S_obs) (*).
    """
    if d is not None:
        y = y - d  # the offset joins y; mask_observation zeroes both where y is missing
    y, H, R = mask_observation(y, H, R, mask)
    v = y - mv(H, m)  # (*, o)
    K, LS = kalman_gain(P, H, R)
    m_new = m + mv(K, v)
    eye = torch.eye(m.shape[-1], dtype=P.dtype, device=P.device)
    IKH = eye - K @ H
    P_new = symmetrize(IKH @ P @ IKH.mT + K @ R @ K.mT)
    return m_new, P_new, _gauss_loglik(v, LS, mask)


def kalman_gain(P: Tensor, H: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    """K = P H^T S^{-1} (*, n, o) and the Cholesky factor L_S (*, o, o) of S = H P H^T + R."""
    HP = H @ P  # (*, o, n)
    S = symmetrize(HP @ H.mT + R)
    LS = cholesky(S, "the innovation covariance S = H P H^T + R")
    if S.shape[-1] == 1:  # scalar S: a division (no per-matrix LAPACK call)
        return (HP / S).mT, LS
    return torch.cholesky_solve(HP, LS).mT, LS


def diffuse_update_scalar(
    a: Tensor, P_star: Tensor, P_inf: Tensor, v: Tensor, z: Tensor, F_star: Tensor, F_inf: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact diffuse update by one scalar observation with F_inf > 0 (Durbin & Koopman 2012,
    sec. 5.2; univariate form of Koopman & Durbin 2000): the limit kappa -> inf of the update
    of N(a, P_star + kappa P_inf).

    Args:
        a: (*, n); P_star, P_inf: (*, n, n); v: (*) innovation y - z^T a - d; z: (*, n) the
        emission row; F_star = z^T P_star z + r and F_inf = z^T P_inf z > 0: (*).

    Returns:
        a', P_star', P_inf' and the diffuse log-likelihood term -(log 2 pi + log F_inf) / 2.
    """
    M_inf = mv(P_inf, z)  # (*, n)
    M_star = mv(P_star, z)
    f = F_inf.unsqueeze(-1)
    a_new = a + M_inf / f * v.unsqueeze(-1)
    outer_inf = M_inf.unsqueeze(-1) * M_inf.unsqueeze(-2)
    cross = M_star.unsqueeze(-1) * M_inf.unsqueeze(-2)
    ff = f.unsqueeze(-1)
    P_star_new = P_star + outer_inf * (F_star.unsqueeze(-1).unsqueeze(-1) / ff**2)
    P_star_new = symmetrize(P_star_new - (cross + cross.mT) / ff)
    P_inf_new = symmetrize(P_inf - outer_inf / ff)
    return a_new, P_star_new, P_inf_new, -0.5 * (LOG_2PI + torch.log(F_inf))


def _gauss_loglik(v: Tensor, LS: Tensor, mask: Tensor | None) -> Tensor:
    """log N(v; 0, L L^T) with the 2 pi constant counted over observed entries only."""
    if LS.shape[-1] == 1:
        w = v / LS[..., 0]
    else:
        w = torch.linalg.solve_triangular(LS, v.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(LS, dim1=-2, dim2=-1).abs()).sum(-1)
    n_obs = v.shape[-1] if mask is None else mask.sum(-1).to(v.dtype)
    return -0.5 * ((w * w).sum(-1) + logdet + n_obs * LOG_2PI)


def sqrt_predict(
    m: Tensor, L: Tensor, F: Tensor, LQ: Tensor, c: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Square-root predict: (m, L) with P = L L^T to (m', L') with P' = F P F^T + L_Q L_Q^T.

    Args:
        m: (*, n), L: (*, n, n), F: (*, n, n), LQ: (*, n, n) any factor of Q, c: (*, n) or None.
    """
    m_new = mv(F, m)
    if c is not None:
        m_new = m_new + c
    FL = F @ L
    return m_new, tria(torch.cat([FL, LQ.expand_as(FL)], -1))


def sqrt_update(
    m: Tensor,
    L: Tensor,
    y: Tensor,
    H: Tensor,
    LR: Tensor,
    d: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Square-root update by triangularising [[L_R, H L], [0, L]].

    Args:
        m: (*, n), L: (*, n, n) with P = L L^T; y: (*, o); H: (*, o, n); LR: (*, o, o) a factor
        of R; d: (*, o) or None; mask: (*, o) bool or None (True = observed).

    Returns:
        m' (*, n), L' (*, n, n) lower triangular, and the log-likelihood (*), as :func:`update`.
    """
    if d is not None:
        y = y - d  # as in update: masked together with y
    if mask is not None:
        R = LR @ LR.mT
        y, H, R = mask_observation(y, H, R, mask)
        LR = psd_factor(R)
    o, n = H.shape[-2], H.shape[-1]
    v = y - mv(H, m)
    HL = H @ L  # (*, o, n)
    batch = torch.broadcast_shapes(HL.shape[:-2], LR.shape[:-2], L.shape[:-2])
    top = torch.cat([LR.expand(*batch, o, o), HL.expand(*batch, o, n)], -1)
    bottom = torch.cat([L.new_zeros(*batch, n, o), L.expand(*batch, n, n)], -1)
    post = tria(torch.cat([top, bottom], -2))  # (*, o + n, o + n)
    LS, Kb, L_new = post[..., :o, :o], post[..., o:, :o], post[..., o:, o:]
    w = torch.linalg.solve_triangular(LS, v.unsqueeze(-1), upper=False)  # (*, o, 1)
    m_new = m + (Kb @ w).squeeze(-1)
    return m_new, L_new, _gauss_loglik(v, LS, mask)


def smooth_step(
    m: Tensor,
    P: Tensor,
    m_pred: Tensor,
    P_pred: Tensor,
    m_s_next: Tensor,
    P_s_next: Tensor,
    F: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Rauch-Tung-Striebel step backwards.

    Args:
        m, P: (*, n), (*, n, n) filtered moments at t; m_pred, P_pred: predicted moments at
        t + 1 (P_pred = F P F^T + Q); m_s_next, P_s_next: smoothed moments at t + 1; F: (*, n, n)
        the transition from t to t + 1.

    Returns:
        m_s (*, n), P_s (*, n, n) smoothed at t, and the gain G (*, n, n) (the smoothed
        cross-covariance Cov(x_t, x_{t+1} | all data) is G P_s_next).
    """
    L = cholesky(P_pred, "the predicted covariance")
    G = torch.cholesky_solve(F @ P, L).mT  # P F^T P_pred^{-1}
    m_s = m + mv(G, (m_s_next - m_pred))
    P_s = symmetrize(P + G @ (P_s_next - P_pred) @ G.mT)
    return m_s, P_s, G
