"""Exact diffuse initialisation: filter and smoother (Durbin & Koopman 2012, ch. 5; the
univariate treatment of Koopman & Durbin 2000, which processes the entries of y_t one at a
time and so needs a diagonal R_t).

The first state is N(m0, P_star + kappa P_inf) with kappa -> inf. While P_inf != 0 an entry
with F_inf = z^T P_inf z > 0 updates by the limit equations
(:func:`ssmkit.core.gaussian.diffuse_update_scalar`) and adds -(log 2 pi + log F_inf) / 2 to the
log-likelihood; every other entry takes the ordinary update (:func:`ssmkit.core.gaussian.update`).
The smoother runs the backward recursions for r^(0), r^(1), N^(0), N^(1), N^(2) (D&K 5.3):

    a_hat = a + P_star r0 + P_inf r1
    V     = P_star - P_star N0 P_star - P_inf N1 P_star - P_star N1 P_inf - P_inf N2 P_inf
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ssmkit.core.gaussian import diffuse_update_scalar, mv, predict, symmetrize, update
from ssmkit.probabilistic.filter_steps import FilterResult, Trace, at, run_steps
from ssmkit.probabilistic.model import Prepared

Tensor = torch.Tensor
TOL = 1e-8  # F_inf at or below this counts as zero (statsmodels' tolerance_diffuse)


def _check_diagonal_R(R: Tensor) -> None:
    off = R - torch.diag_embed(torch.diagonal(R, dim1=-2, dim2=-1))
    if bool((off != 0).any()):
        raise ValueError(
            "diffuse='exact' processes y entry by entry and needs a diagonal R; "
            "use diffuse='approximate' for a correlated R"
        )


class DiffuseCov(NamedTuple):
    """The covariance state of the exact diffuse filter: Cov = P_star + kappa P_inf."""

    P_star: Tensor  # (b, n, n)
    P_inf: Tensor  # (b, n, n)


class EntryRecords(NamedTuple):
    """What the smoother needs of each entry y_t,i (stacked: (b, l, o) and (b, l, o, n)).
    F_inf = 0 marks a regular entry, F_star = 0 a missing one."""

    v: Tensor  # (b, o) innovation y - z^T a - d
    F_star: Tensor  # (b, o) z^T P_star z + r
    F_inf: Tensor  # (b, o) z^T P_inf z
    M_star: Tensor  # (b, o, n) P_star z
    M_inf: Tensor  # (b, o, n) P_inf z


@dataclass(frozen=True)
class DiffuseFilterResult:
    """Output of :func:`diffuse_filter`: the filter's moments and the smoother's records."""

    filtered: FilterResult  # P_pred, P, P_next hold P_star; P_inf the filtered diffuse part
    P_inf_pred: Tensor  # (b, l, n, n) predicted diffuse part
    entries: EntryRecords  # per entry, (b, l, o) and (b, l, o, n)


@dataclass(frozen=True)
class DiffuseSteps:
    """The exact diffuse step strategy for :func:`ssmkit.probabilistic.filter_steps.run_steps`:
    the entries of y_t are processed one at a time; an entry with F_inf > TOL takes the limit
    update, every other one the ordinary update."""

    p: Prepared
    P_inf0: Tensor  # (n, n) or (b, n, n)

    @property
    def length(self) -> int:
        return self.p.y.shape[1]

    def start(self) -> tuple[Tensor, DiffuseCov]:
        b, n = self.p.m0.shape
        return self.p.m0, DiffuseCov(self.p.P0, self.P_inf0.expand(b, n, n))

    def update(
        self, a: Tensor, S: DiffuseCov, t: int
    ) -> tuple[Tensor, DiffuseCov, Tensor, EntryRecords]:
        p = self.p
        b, _, o = p.y.shape
        Ps, Pi = S
        ll = torch.zeros(b, dtype=a.dtype, device=a.device)
        rows = []
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        active = bool(Pi.any())  # one host sync per step; skips the diffuse branch later on
        for i in range(o):
            z = p.H[:, t, i]  # (b, n)
            r = p.R[:, t, i, i]  # (b,)
            d = at(p.d, t)
            obs = torch.ones(b, dtype=torch.bool) if p.mask is None else p.mask[:, t, i]
            obs = obs.to(a.device)
            Mi, Ms = mv(Pi, z), mv(Ps, z)
            Fi, Fs = (z * Mi).sum(-1), (z * Ms).sum(-1) + r
            v = p.y[:, t, i] - (z * a).sum(-1) - (0 if d is None else d[:, i])
            is_diffuse = obs & (Fi > TOL)
            a_r, Ps_r, ll_r = update(
                a,
                Ps,
                p.y[:, t, i : i + 1],
                z.unsqueeze(1),
                r[:, None, None],
                None if d is None else d[:, i : i + 1],
                obs.unsqueeze(1),
            )
            if active:
                Fi_safe = torch.where(is_diffuse, Fi, torch.ones_like(Fi))
                a_d, Ps_d, Pi_d, ll_d = diffuse_update_scalar(a, Ps, Pi, v, z, Fs, Fi_safe)
                sel = is_diffuse.unsqueeze(-1)
                a = torch.where(sel, a_d, a_r)
                Ps = torch.where(sel.unsqueeze(-1), Ps_d, Ps_r)
                Pi = torch.where(sel.unsqueeze(-1), Pi_d, Pi)
                ll = ll + torch.where(is_diffuse, ll_d, ll_r)
            else:  # the diffuse phase is over for every series: ordinary updates only
                a, Ps, ll = a_r, Ps_r, ll + ll_r
            rows.append(
                EntryRecords(
                    torch.where(obs, v, zero),
                    torch.where(obs, Fs, zero),
                    torch.where(is_diffuse, Fi, zero),
                    Ms,
                    Mi,
                )
            )
        # a P_inf left with rounding noise only has ended the diffuse phase
        done = Pi.abs().flatten(1).amax(1) <= TOL
        Pi = torch.where(done[:, None, None], torch.zeros_like(Pi), Pi)
        entries = EntryRecords(*(torch.stack(f, 1) for f in zip(*rows, strict=True)))
        return a, DiffuseCov(Ps, Pi), ll, entries

    def predict(self, a: Tensor, S: DiffuseCov, t: int) -> tuple[Tensor, DiffuseCov]:
        F = self.p.F[:, t]
        a, Ps = predict(a, S.P_star, F, self.p.Q[:, t], at(self.p.c, t))
        return a, DiffuseCov(Ps, symmetrize(F @ S.P_inf @ F.mT))

    def finish(self, tr: Trace) -> DiffuseFilterResult:
        filtered = FilterResult(
            tr.m_pred,
            tr.S_pred.P_star,
            tr.m,
            tr.S.P_star,
            tr.loglik,
            tr.m_next,
            tr.S_next.P_star,
            tr.S.P_inf,
        )
        return DiffuseFilterResult(filtered, tr.S_pred.P_inf, tr.extra)


def diffuse_filter(p: Prepared, P_inf0: Tensor) -> DiffuseFilterResult:
    """The exact diffuse filter; returns the moments and what the smoother needs."""
    _check_diagonal_R(p.R)
    steps = DiffuseSteps(p, P_inf0)
    return steps.finish(run_steps(steps))


def diffuse_smoother(p: Prepared, f: DiffuseFilterResult) -> tuple[Tensor, Tensor]:
    """Smoothed means (b, l, n) and covariances (b, l, n, n) under exact diffuse init."""
    b, l, o = p.y.shape
    n = p.m0.shape[-1]
    eye = torch.eye(n, dtype=p.y.dtype, device=p.y.device).expand(b, n, n)
    r0 = p.y.new_zeros(b, n)
    r1 = torch.zeros_like(r0)
    N0 = p.y.new_zeros(b, n, n)
    N1, N2 = torch.zeros_like(N0), torch.zeros_like(N0)
    ms, Vs = [], []
    for t in range(l - 1, -1, -1):
        if t < l - 1:
            Ft = p.F[:, t]
            r0, r1 = mv(Ft.mT, r0), mv(Ft.mT, r1)
            N0, N1, N2 = (Ft.mT @ N @ Ft for N in (N0, N1, N2))
        for i in range(o - 1, -1, -1):
            z = p.H[:, t, i]
            v, Fs, Fi, Ms, Mi = (x[:, t, i] for x in f.entries)
            diff, obs = Fi > 0, Fs > 0
            reg = obs & ~diff
            zz = z.unsqueeze(-1) * z.unsqueeze(-2)
            # regular entry: L = I - K z^T with K = M_star / F_star
            Fs_safe = torch.where(reg, Fs, torch.ones_like(Fs))
            Lr = eye - (Ms / Fs_safe.unsqueeze(-1)).unsqueeze(-1) * z.unsqueeze(-2)
            r0_r = z * (v / Fs_safe).unsqueeze(-1) + mv(Lr.mT, r0)
            N0_r = zz / Fs_safe[:, None, None] + Lr.mT @ N0 @ Lr
            # diffuse entry: L0 = I - K0 z^T, L1 = -K1 z^T (D&K 5.3)
            Fi_safe = torch.where(diff, Fi, torch.ones_like(Fi))
            K0 = Mi / Fi_safe.unsqueeze(-1)
            K1 = Ms / Fi_safe.unsqueeze(-1) - Mi * (Fs / Fi_safe**2).unsqueeze(-1)
            L0 = eye - K0.unsqueeze(-1) * z.unsqueeze(-2)
            L1 = -K1.unsqueeze(-1) * z.unsqueeze(-2)
            r0_d = mv(L0.mT, r0)
            r1_d = z * (v / Fi_safe).unsqueeze(-1) + mv(L0.mT, r1) + mv(L1.mT, r0)
            fi = Fi_safe[:, None, None]
            N0_d = L0.mT @ N0 @ L0
            N1_d = zz / fi + L0.mT @ N1 @ L0 + L1.mT @ N0 @ L0 + L0.mT @ N0 @ L1
            N2_d = (
                -zz * (Fs[:, None, None] / fi**2)
                + L0.mT @ N2 @ L0
                + L0.mT @ N1 @ L1
                + L1.mT @ N1 @ L0
                + L1.mT @ N0 @ L1
            )
            sd, sr = diff[:, None], reg[:, None]
            r0 = torch.where(sd, r0_d, torch.where(sr, r0_r, r0))
            r1 = torch.where(sd, r1_d, torch.where(sr, mv(Lr.mT, r1), r1))
            sd3, sr3 = sd.unsqueeze(-1), sr.unsqueeze(-1)
            N0 = torch.where(sd3, N0_d, torch.where(sr3, N0_r, N0))
            N1 = torch.where(sd3, N1_d, torch.where(sr3, Lr.mT @ N1 @ Lr, N1))
            N2 = torch.where(sd3, N2_d, torch.where(sr3, Lr.mT @ N2 @ Lr, N2))
        a, Ps, Pi = f.filtered.m_pred[:, t], f.filtered.P_pred[:, t], f.P_inf_pred[:, t]
        ms.append(a + mv(Ps, r0) + mv(Pi, r1))
        PiN1Ps = Pi @ N1 @ Ps
        Vs.append(symmetrize(Ps - Ps @ N0 @ Ps - PiN1Ps - PiN1Ps.mT - Pi @ N2 @ Pi))
    return torch.stack(ms[::-1], 1), torch.stack(Vs[::-1], 1)
