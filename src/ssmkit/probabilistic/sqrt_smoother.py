"""Square-root Rauch-Tung-Striebel smoother: every covariance carried as a Cholesky factor.

Forward, the square-root filter (:func:`ssmkit.core.gaussian.sqrt_predict` and
:func:`~ssmkit.core.gaussian.sqrt_update`) keeps the filtered factors L_t (P_t = L_t L_t^T).
Backward, one step (the Rauch-Tung-Striebel step in factor form; cf. Park & Kailath 1996)
triangularises

    [[F L_t, L_Q], [L_t, 0]] = [[X11, 0], [X21, X22]]  (lower triangular, by QR)

so that X11 X11^T = P_{t+1|t} = F P_t F^T + Q, the smoother gain is G = X21 X11^{-1}
(= P_t F^T P_{t+1|t}^{-1}) and X22 X22^T = P_t - G P_{t+1|t} G^T; then

    m_s = m_t + G (m_s' - m_{t+1|t}),   L_s = tria([X22, G L_s'])

which is a factor of P_s = P_t + G (P_s' - P_{t+1|t}) G^T, the plain RTS covariance
(:func:`ssmkit.core.gaussian.smooth_step`). P_s is formed as a sum of two Gram matrices and is
positive semi-definite by construction, where the plain recursion subtracts and can lose
definiteness by rounding on ill-conditioned problems. A diffuse part of the prior is folded
in as P0 + kappa P0_diffuse (approximate diffuse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_positive
from ssmkit.core.gaussian import mv, psd_factor, sqrt_predict, sqrt_update, tria
from ssmkit.probabilistic.filters import FilterResult
from ssmkit.probabilistic.model import LinearGaussianSSM, prepare

Tensor = torch.Tensor


@dataclass(frozen=True)
class SqrtSmootherResult:
    """Output of :func:`sqrt_rts_smoother`: smoothed moments with covariance factors."""

    m: Tensor  # (b, l, n) smoothed mean E[x_t | y_1..l]
    L: Tensor  # (b, l, n, n) lower-triangular factor of the smoothed covariance: P = L L^T
    P_cross: Tensor  # (b, l-1, n, n) Cov[x_t, x_{t+1} | y]
    filtered: FilterResult  # the forward pass (covariances formed from its factors)
    L_filtered: Tensor  # (b, l, n, n) factors of the filtered covariances

    @property
    def P(self) -> Tensor:
        """(b, l, n, n) smoothed covariance L L^T (PSD by construction)."""
        return self.L @ self.L.mT


def sqrt_smooth_step(
    m: Tensor, L: Tensor, m_pred: Tensor, m_s_next: Tensor, L_s_next: Tensor, F: Tensor, LQ: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One square-root RTS step backwards (see the module docstring).

    Args:
        m, L: (*, n), (*, n, n) filtered mean and covariance factor at t; m_pred: (*, n) the
        predicted mean at t + 1; m_s_next, L_s_next: smoothed mean and factor at t + 1;
        F: (*, n, n) the transition t -> t + 1; LQ: (*, n, n) a factor of its noise Q.

    Returns:
        m_s (*, n), L_s (*, n, n) lower triangular, and the gain G (*, n, n).
    """
    n = m.shape[-1]
    FL = F @ L  # (*, n, n)
    batch = torch.broadcast_shapes(FL.shape[:-2], LQ.shape[:-2])
    top = torch.cat([FL.expand(*batch, n, n), LQ.expand(*batch, n, n)], -1)
    bottom = torch.cat([L.expand(*batch, n, n), L.new_zeros(*batch, n, n)], -1)
    X = tria(torch.cat([top, bottom], -2))  # (*, 2n, 2n)
    X11, X21, X22 = X[..., :n, :n], X[..., n:, :n], X[..., n:, n:]
    G = torch.linalg.solve_triangular(X11, X21, upper=False, left=False)  # G X11 = X21
    m_s = m + mv(G, m_s_next - m_pred)
    L_s = tria(torch.cat([X22, G @ L_s_next], -1))
    return m_s, L_s, G


def sqrt_rts_smoother(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None = None,
    kappa: float = 1e6,
    validate: bool = True,
) -> SqrtSmootherResult:
    """Square-root filter and RTS smoother on Cholesky factors.

    Args:
        model: the SSM (matrices broadcast against (b, l)); a diffuse part of the prior is
            taken as P0 + kappa P0_diffuse.
        y: (b, l, o) observations, NaN where missing (partly observed vectors allowed).
        u: (b, l, m) inputs when the model has B or D.
        kappa: the large variance of the approximate diffuse prior.
        validate: check shapes and that Q, R, P0 are PSD.

    Returns:
        A :class:`SqrtSmootherResult`; its moments equal :func:`.filters.rts_smoother`'s
        (``diffuse="approximate"``) up to rounding.
    """
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"model must be a LinearGaussianSSM, got {type(model).__name__}")
    check_positive("kappa", kappa)
    p = prepare(model.with_diffuse("approximate_diffuse", kappa), y, u, validate)
    b, l = p.y.shape[:2]
    # factor Q and R once, or once per step (vectorised) when they vary over time
    LQ = psd_factor(p.Q if p.Q.stride(1) != 0 else p.Q[:, :1]).expand_as(p.Q)  # (b, l, n, n)
    LR = psd_factor(p.R if p.R.stride(1) != 0 else p.R[:, :1]).expand_as(p.R)  # (b, l, o, o)
    m, L = p.m0, psd_factor(p.P0)
    mp, Lp, mf, Lf, ll = [], [], [], [], []
    for t in range(l):
        mp.append(m)
        Lp.append(L)
        d = None if p.d is None else p.d[:, t]
        mask = None if p.mask is None else p.mask[:, t]
        m, L, llt = sqrt_update(m, L, p.y[:, t], p.H[:, t], LR[:, t], d, mask)
        mf.append(m)
        Lf.append(L)
        ll.append(llt.expand(b))
        m, L = sqrt_predict(m, L, p.F[:, t], LQ[:, t], None if p.c is None else p.c[:, t])
    ms, Ls, Gs = [mf[-1]], [Lf[-1]], []
    for t in range(l - 2, -1, -1):
        m_s, L_s, G = sqrt_smooth_step(mf[t], Lf[t], mp[t + 1], ms[-1], Ls[-1], p.F[:, t], LQ[:, t])
        Gs.append(G @ Ls[-1] @ Ls[-1].mT)  # Cov[x_t, x_{t+1} | y] = G P_s'
        ms.append(m_s)
        Ls.append(L_s)
    n = m.shape[-1]
    Lf_all = torch.stack(Lf, 1).expand(b, l, n, n)
    Lp_all = torch.stack(Lp, 1).expand(b, l, n, n)
    filt = FilterResult(
        torch.stack(mp, 1),
        Lp_all @ Lp_all.mT,
        torch.stack(mf, 1),
        Lf_all @ Lf_all.mT,
        torch.stack(ll, 1),
        m,
        (L @ L.mT).expand(b, n, n),
    )
    cross = torch.stack(Gs[::-1], 1) if Gs else p.m0.new_zeros(b, 0, n, n)
    L_s_all = torch.stack(Ls[::-1], 1).expand(b, l, n, n)
    return SqrtSmootherResult(torch.stack(ms[::-1], 1), L_s_all, cross, filt, Lf_all)
