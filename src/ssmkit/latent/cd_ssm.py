"""Continuous-discrete linear Gaussian SSMs: exact filtering at irregular times, and deep
latent models whose prior is such an SSM (an NCDSSM-style model).

Latent state, observed at t_1 < t_2 < ... < t_l (Jazwinski 1970; Sarkka & Solin 2019, ch. 10):

    ds = F_c s dt + dW,  Cov(dW) = Q_c dt,   s(t_1) ~ N(m0, P0)
    y_k = H s(t_k) + v_k,  v_k ~ N(0, R_k)

Each interval is discretised exactly with Van Loan's matrix exponential
(:func:`ssmkit.core.van_loan.van_loan`), so filtering is exact, not an ODE approximation of the
moment equations; the predict / update / RTS steps are those of :mod:`ssmkit.core.gaussian`.

Deep model (after Ansari et al., "Neural Continuous-Discrete State Space Models for
Irregularly-Sampled Time Series", ICML 2023, arXiv 2301.11308, with the Gaussian-site
posterior of Zhu et al., "Markovian Gaussian Process Variational Autoencoders", ICML 2023,
arXiv 2207.05543): the auxiliary variable a_k = H s(t_k) drives a neural decoder
p(x_k | a_k); a neural encoder turns each observed x_k into a Gaussian site
N(a~_k; H s(t_k), V~_k). The posterior is the prior times the sites,

    q(s) = p(s) prod_k N(a~_k; H s(t_k), V~_k) / Z,   Z = p(a~) (a Kalman-filter likelihood),

so its marginals come from one filter + RTS pass (linear in l) and the KL is exact:

    KL(q || p) = sum_k E_q[log N(a~_k; H s(t_k), V~_k)] - log Z.

Missing steps carry no site (they are masked, not dropped): the posterior still has a
marginal there, which is the interpolation / forecast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_finite, check_int, check_shape, check_tensor
from ssmkit.core.gaussian import LOG_2PI, check_psd, mv, predict, psd_factor, smooth_step, update
from ssmkit.core.van_loan import van_loan
from ssmkit.latent.dmm import GaussianEmission, _mlp
from ssmkit.latent.elbo import ElboTerms, sequential_elbo
from ssmkit.latent.latent_ode import check_irregular

Tensor = torch.Tensor


def check_times(times: object, name: str = "times") -> Tensor:
    """Validate (l,) or (b, l) finite float timestamps, strictly increasing along the last axis."""
    check_tensor(name, times)
    if times.ndim not in (1, 2) or times.shape[-1] < 1 or not times.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor of shape (l,) or (b, l) with l >= 1, "
            f"got {times.dtype} {tuple(times.shape)}"
        )
    check_finite(name, times)
    bad = (times.reshape(-1, times.shape[-1]).diff(dim=-1) <= 0).nonzero()  # (k, 2)
    if bad.numel():
        row, k = int(bad[0, 0]), int(bad[0, 1])
        t = times.reshape(-1, times.shape[-1])[row]
        raise ValueError(
            f"{name} must be strictly increasing, got {float(t[k + 1]):.6g} after "
            f"{float(t[k]):.6g} (row {row}, position {k + 1})"
        )
    return times


def check_diffusion(Q_c: object) -> Tensor:
    """Validate the diffusion (spectral density) matrix Q_c (*, n, n): symmetric PSD."""
    check_tensor("Q_c", Q_c)
    if Q_c.ndim >= 2 and Q_c.shape[-1] == Q_c.shape[-2]:
        diag = torch.diagonal(Q_c.detach(), dim1=-2, dim2=-1)
        if bool((diag < 0).any()):
            raise ValueError(
                f"Q_c (the diffusion) must be positive semi-definite, got a negative diagonal "
                f"entry {float(diag.min()):.4g}"
            )
    check_psd("Q_c (the diffusion)", Q_c)
    return Q_c


def transitions(F_c: Tensor, Q_c: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
    """Exact transitions between consecutive observation times.

    Args:
        F_c: (n, n) or (b, n, n) drift; Q_c: (n, n) or (b, n, n) diffusion.
        times: (l,) or (b, l) strictly increasing.

    Returns:
        F, Q: (*, l, n, n); entry k maps s(t_{k-1}) to s(t_k); entry 0 is (I, 0) (dt = 0).
    """
    dt = torch.cat([torch.zeros_like(times[..., :1]), times.diff(dim=-1)], -1)  # (*, l)
    return van_loan(F_c.unsqueeze(-3), Q_c.unsqueeze(-3), dt)


@dataclass(frozen=True)
class CDFilterResult:
    """Output of :func:`cd_kalman_filter` (moments of s(t_k))."""

    m_pred: Tensor  # (b, l, n) E[s(t_k) | y_1..k-1]
    P_pred: Tensor  # (b, l, n, n)
    m: Tensor  # (b, l, n) filtered E[s(t_k) | y_1..k]
    P: Tensor  # (b, l, n, n)
    loglik: Tensor  # (b, l) log p(y_k | y_1..k-1) over the observed entries
    F: Tensor  # (*, l, n, n) transitions, entry k: t_{k-1} -> t_k


def _per_step(name: str, x: Tensor, b: int, l: int, rows: int, cols: int) -> Tensor:
    """(rows, cols) shared or (b, l, rows, cols) per series and step -> broadcastable 4-D."""
    check_tensor(name, x)
    if tuple(x.shape) == (rows, cols):
        return x[None, None]
    if tuple(x.shape) == (b, l, rows, cols):
        return x
    raise ValueError(
        f"{name} must have shape ({rows}, {cols}) or (b, l, {rows}, {cols}) = "
        f"({b}, {l}, {rows}, {cols}), got {tuple(x.shape)}"
    )


def _observation_mask(y: Tensor, mask: Tensor | None) -> Tensor:
    """(b, l, o) bool mask of observed entries; y must be finite there."""
    b, l, o = y.shape
    if mask is None:
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y has NaN/inf entries; mark missing entries with mask (False)")
        return torch.ones(b, l, o, dtype=torch.bool, device=y.device)
    check_tensor("mask", mask)
    if mask.dtype != torch.bool or tuple(mask.shape) not in ((b, l), (b, l, o)):
        raise ValueError(
            f"mask must be a bool tensor of shape (b, l) or (b, l, o) = {(b, l, o)}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    mask = mask[..., None].expand(b, l, o) if mask.ndim == 2 else mask
    if not bool(torch.isfinite(y[mask]).all()):
        raise ValueError("y must be finite where mask is True (NaN/inf at an observed entry)")
    return mask


def cd_kalman_filter(
    F_c: Tensor,
    Q_c: Tensor,
    H: Tensor,
    R: Tensor,
    m0: Tensor,
    P0: Tensor,
    times: Tensor,
    y: Tensor,
    mask: Tensor | None = None,
) -> CDFilterResult:
    """Exact Kalman filter of the continuous-discrete model at irregular times.

    Args:
        F_c: (n, n) or (b, n, n) drift; Q_c: same shape, diffusion (PSD).
        H: (o, n) or (b, l, o, n); R: (o, o) or (b, l, o, o) observation noise covariance.
        m0: (n,) or (b, n), P0: (n, n) or (b, n, n): the prior of s(t_1).
        times: (l,) or (b, l) strictly increasing observation times.
        y: (b, l, o) observations; any value (NaN included) where ``mask`` is False.
        mask: (b, l) or (b, l, o) bool, True where observed; None = all observed.

    Returns:
        A :class:`CDFilterResult`; ``loglik.sum(1)`` is log p(y) of each series.
    """
    check_times(times)
    check_tensor("y", y)
    if y.ndim != 3 or not y.is_floating_point():
        raise ValueError(f"y must be a float tensor of shape (b, l, o), got {tuple(y.shape)}")
    b, l, o = y.shape
    if times.shape[-1] != l or (times.ndim == 2 and times.shape[0] != b):
        raise ValueError(f"times must have shape ({l},) or ({b}, {l}), got {tuple(times.shape)}")
    n = F_c.shape[-1]
    check_diffusion(Q_c)
    H4, R4 = _per_step("H", H, b, l, o, n), _per_step("R", R, b, l, o, o)
    mask = _observation_mask(y, mask)
    y0 = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
    F, Q = transitions(F_c, Q_c, times.to(F_c.dtype))  # (*, l, n, n)
    m, P = m0.expand(b, n), P0.expand(b, n, n)
    out: dict[str, list[Tensor]] = {k: [] for k in ("mp", "Pp", "m", "P", "ll")}
    for k in range(l):
        m, P = predict(m, P, F[..., k, :, :], Q[..., k, :, :])  # identity at k = 0
        out["mp"].append(m)
        out["Pp"].append(P)
        H_k, R_k = H4[:, min(k, H4.shape[1] - 1)], R4[:, min(k, R4.shape[1] - 1)]
        m, P, ll = update(m, P, y0[:, k], H_k, R_k, mask=mask[:, k])
        out["m"].append(m)
        out["P"].append(P)
        out["ll"].append(ll)
    s = {key: torch.stack(v, 1) for key, v in out.items()}
    return CDFilterResult(s["mp"], s["Pp"], s["m"], s["P"], s["ll"], F)


def cd_rts_smoother(filt: CDFilterResult) -> tuple[Tensor, Tensor]:
    """Smoothed moments E[s(t_k) | y], Cov[s(t_k) | y]: (b, l, n), (b, l, n, n)."""
    l = filt.m.shape[1]
    ms, Ps = [filt.m[:, -1]], [filt.P[:, -1]]
    for k in range(l - 2, -1, -1):
        m_s, P_s, _ = smooth_step(
            filt.m[:, k], filt.P[:, k], filt.m_pred[:, k + 1], filt.P_pred[:, k + 1],
            ms[-1], Ps[-1], filt.F[..., k + 1, :, :],
        )  # fmt: skip
        ms.append(m_s)
        Ps.append(P_s)
    return torch.stack(ms[::-1], 1), torch.stack(Ps[::-1], 1)


@dataclass(frozen=True)
class SitePosterior:
    """q(s) = p(s) prod_k N(a~_k; H s(t_k), V~_k) / Z, summarised at the grid times."""

    mean: Tensor  # (b, l, o) E_q[H s(t_k)]
    cov: Tensor  # (b, l, o, o) Cov_q[H s(t_k)]
    kl: Tensor  # (b,) KL(q || p) over the whole path
    log_evidence: Tensor  # (b,) log Z = log p(a~) under the prior


def _expected_site_loglik(site_mean, site_var, mask, mean, cov) -> Tensor:
    """sum_k E_q[log N(a~_k; a_k, diag V~_k)] over observed sites: (b,)."""
    var_q = torch.diagonal(cov, dim1=-2, dim2=-1)  # (b, l, o)
    term = LOG_2PI + torch.log(site_var) + ((site_mean - mean) ** 2 + var_q) / site_var
    return -0.5 * torch.where(mask, term, torch.zeros_like(term)).sum((1, 2))


def _check_sites(site_mean: Tensor, site_var: Tensor, mask: Tensor | None) -> Tensor:
    check_tensor("site_mean", site_mean)
    check_tensor("site_var", site_var)
    if site_mean.ndim != 3 or site_var.shape != site_mean.shape:
        raise ValueError(
            f"site_mean and site_var must have one shape (b, l, o), got "
            f"{tuple(site_mean.shape)} and {tuple(site_var.shape)}"
        )
    mask = _observation_mask(site_mean, mask)
    if not bool((site_var[mask] > 0).all()):
        raise ValueError("site_var must be > 0 at every observed site")
    return mask


def site_posterior(
    F_c: Tensor,
    Q_c: Tensor,
    H: Tensor,
    m0: Tensor,
    P0: Tensor,
    times: Tensor,
    site_mean: Tensor,
    site_var: Tensor,
    mask: Tensor | None = None,
) -> SitePosterior:
    """Posterior marginals of a = H s and KL(q || p) by one filter + RTS pass (O(l)).

    Args:
        F_c, Q_c, m0, P0, times: the prior, as in :func:`cd_kalman_filter`; H: (o, n).
        site_mean, site_var: (b, l, o) the sites N(a~_k; H s(t_k), diag V~_k).
        mask: (b, l) or (b, l, o) bool, True where a site exists; None = everywhere.
    """
    mask = _check_sites(site_mean, site_var, mask)
    var = torch.where(mask, site_var, torch.ones_like(site_var))
    filt = cd_kalman_filter(F_c, Q_c, H, torch.diag_embed(var), m0, P0, times, site_mean, mask)
    m_s, P_s = cd_rts_smoother(filt)
    mean = m_s @ H.mT  # (b, l, o)
    cov = H @ P_s @ H.mT  # (b, l, o, o)
    log_z = filt.loglik.sum(1)
    kl = _expected_site_loglik(site_mean, var, mask, mean, cov) - log_z
    return SitePosterior(mean, cov, kl, log_z)


def site_posterior_dense(
    F_c: Tensor,
    Q_c: Tensor,
    H: Tensor,
    m0: Tensor,
    P0: Tensor,
    times: Tensor,
    site_mean: Tensor,
    site_var: Tensor,
    mask: Tensor | None = None,
) -> SitePosterior:
    """Reference of :func:`site_posterior`: the joint Gaussian over all l n states, O((l n)^3).

    Builds the prior mean and covariance of s(t_1..t_l) (Cov(s_k, s_j) = F_k..F_{j+1} P_j),
    conditions on the observed sites and takes the closed-form Gaussian KL.
    """
    mask = _check_sites(site_mean, site_var, mask)
    b, l, o = site_mean.shape
    n = F_c.shape[-1]
    F, Q = transitions(F_c, Q_c, times.to(F_c.dtype))
    F, Q = F.expand(b, l, n, n), Q.expand(b, l, n, n)
    means, rows, Pk = [m0.expand(b, n)], [[P0.expand(b, n, n)]], P0.expand(b, n, n)
    for k in range(1, l):
        means.append((means[-1].unsqueeze(-2) @ F[:, k].mT).squeeze(-2))
        Pk = F[:, k] @ Pk @ F[:, k].mT + Q[:, k]
        rows.append([F[:, k] @ c for c in rows[-1]] + [Pk])  # Cov(s_k, s_j), j <= k
    mu = torch.cat(means, -1)  # (b, l n)
    S = site_mean.new_zeros(b, l * n, l * n)
    for k in range(l):
        for j in range(k + 1):
            S[:, k * n : (k + 1) * n, j * n : (j + 1) * n] = rows[k][j]
            S[:, j * n : (j + 1) * n, k * n : (k + 1) * n] = rows[k][j].mT
    G = torch.block_diag(*[H] * l)  # (l o, l n)
    out = {key: [] for key in ("mean", "cov", "kl", "z")}
    for i in range(b):
        sel = mask[i].reshape(-1)
        Gi, Si, mui = G[sel], S[i], mu[i]
        St = Gi @ Si @ Gi.T + torch.diag(site_var[i].reshape(-1)[sel])
        r = site_mean[i].reshape(-1)[sel] - Gi @ mui
        K = torch.linalg.solve(St, Gi @ Si).T  # (l n, k)
        mq, Sq = mui + K @ r, Si - K @ Gi @ Si
        Si_inv = torch.linalg.inv(Si)
        d = mui - mq
        kl = 0.5 * (
            torch.trace(Si_inv @ Sq) + d @ Si_inv @ d - l * n
            + torch.logdet(Si) - torch.logdet(Sq)
        )  # fmt: skip
        z = -0.5 * (r @ torch.linalg.solve(St, r) + torch.logdet(St) + int(sel.sum()) * LOG_2PI)
        out["mean"].append((G @ mq).reshape(l, o))
        out["cov"].append(torch.stack([H @ Sq[k * n:(k + 1) * n, k * n:(k + 1) * n] @ H.T
                                       for k in range(l)]))  # fmt: skip
        out["kl"].append(kl)
        out["z"].append(z)
    s = {key: torch.stack(v) for key, v in out.items()}
    return SitePosterior(s["mean"], s["cov"], s["kl"], s["z"])


class SiteVAE(nn.Module):
    """Encoder -> Gaussian sites -> linear-SSM posterior -> decoder: the part shared by
    :class:`CDSSM` and :class:`ssmkit.latent.gpvae.GPVAE`; a subclass defines :meth:`prior`.

    Same interface as :class:`ssmkit.latent.LatentODE` (``elbo``, ``predict`` on a shared grid
    ``times`` (u,), values (b, u, d), mask (b, u)), so the same training loop fits it.
    """

    def __init__(self, obs_dim: int, aux_dim: int, hidden: int, min_var: float) -> None:
        super().__init__()
        self.obs_dim, self.aux_dim, self.min_var = obs_dim, aux_dim, min_var
        self.site_net = _mlp(obs_dim, hidden, 2 * aux_dim)  # x_k -> (a~_k, V~_k)
        self.emission = GaussianEmission(obs_dim, aux_dim, hidden, min_var)  # p(x_k | a_k)

    def prior(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(F_c (n, n), Q_c (n, n), H (aux, n), m0 (n,), P0 (n, n)) of the latent SDE."""
        raise NotImplementedError

    def posterior(self, times: Tensor, values: Tensor, mask: Tensor) -> SitePosterior:
        """q(s | x) from the sites of the observed steps; marginals at every grid time."""
        check_irregular(times, values, mask, self.obs_dim)
        filled = torch.where(mask[..., None], values, torch.zeros_like(values))
        site_mean, raw = self.site_net(filled).chunk(2, -1)  # (b, u, aux) each
        site_var = nn.functional.softplus(raw) + self.min_var
        F_c, Q_c, H, m0, P0 = self.prior()
        return site_posterior(F_c, Q_c, H, m0, P0, times, site_mean, site_var, mask)

    def elbo(
        self,
        times: Tensor,
        values: Tensor,
        mask: Tensor,
        encoder_mask: Tensor | None = None,
        kl_weight: float = 1.0,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ElboTerms:
        """Single-sample ELBO: sum_k E_q log p(x_k | a_k) - KL(q || p) (the KL is exact).

        Args:
            times: (u,) strictly increasing grid; values: (b, u, d); mask: (b, u) the
                likelihood targets; encoder_mask: (b, u) the steps that get a site (None: mask).
            kl_weight: annealing factor of ``objective``.
            eps: (b, u, aux) standard normal noise for a_k; drawn when None.
            generator: random generator used when ``eps`` is None.
        """
        check_irregular(times, values, mask, self.obs_dim)
        post = self.posterior(times, values, mask if encoder_mask is None else encoder_mask)
        b, u, k = post.mean.shape
        if eps is None:
            eps = torch.randn(b, u, k, generator=generator, dtype=values.dtype,
                              device=values.device)  # fmt: skip
        check_shape("eps", eps, (b, u, k), "(b, u, aux)")
        a = post.mean + mv(psd_factor(post.cov), eps)  # (b, u, aux) from the marginals
        target = torch.where(mask[..., None], values, torch.zeros_like(values))
        log_lik = self.emission.log_prob(target, a)  # (b, u)
        return sequential_elbo(log_lik, post.kl, mask=mask, kl_weight=kl_weight)

    @torch.no_grad()
    def predict(self, times: Tensor, values: Tensor, mask: Tensor, query_times: Tensor) -> Tensor:
        """Decoder mean at the posterior mean of a(t) for any query times: (b, q, d)."""
        check_times(query_times, "query_times")
        grid, inv = torch.unique(torch.cat([times, query_times.to(times.dtype)]),
                                 sorted=True, return_inverse=True)  # fmt: skip
        u = times.numel()
        b, _, d = values.shape
        vals = values.new_zeros(b, grid.numel(), d)
        vals[:, inv[:u]] = torch.where(mask[..., None], values, torch.zeros_like(values))
        obs = torch.zeros(b, grid.numel(), dtype=torch.bool, device=mask.device)
        obs[:, inv[:u]] = mask
        post = self.posterior(grid, vals, obs)
        return self.emission(post.mean)[0][:, inv[u:]]


@dataclass(frozen=True)
class CDSSMConfig:
    """Sizes of the continuous-discrete deep SSM (names after Ansari et al. 2023)."""

    obs_dim: int = 2  # dim(x_k)
    state_dim: int = 6  # m: size of the latent linear SDE state s(t) (NCDSSM's z)
    aux_dim: int = 2  # size of the auxiliary variable a_k = H s(t_k)
    hidden: int = 32  # hidden units of the encoder and decoder MLPs
    min_var: float = 1e-4  # floor of every predicted variance

    def __post_init__(self) -> None:
        for name in ("obs_dim", "state_dim", "aux_dim", "hidden"):
            check_int(name, getattr(self, name), minimum=1)
        if not (isinstance(self.min_var, int | float) and self.min_var > 0):
            raise ValueError(f"min_var must be a number > 0, got {self.min_var!r}")


class CDSSM(SiteVAE):
    """NCDSSM-style model with a learned linear time-invariant latent SDE.

    F_c = (K - K^T) - W W^T - 0.01 I: its symmetric part is negative definite, so every
    mode decays (a stable prior whatever the parameters); Q_c = diag(softplus(q)) >= 0.
    """

    def __init__(self, config: CDSSMConfig) -> None:
        c = config
        super().__init__(c.obs_dim, c.aux_dim, c.hidden, c.min_var)
        self.config = c
        n = c.state_dim
        self.K = nn.Parameter(torch.randn(n, n) / n**0.5)  # rotation (skew part of F_c)
        self.W = nn.Parameter(0.3 * torch.randn(n, n) / n**0.5)  # dissipation
        self.q = nn.Parameter(torch.full((n,), -2.0))  # Q_c = diag(softplus(q))
        self.H = nn.Parameter(torch.randn(c.aux_dim, n) / n**0.5)
        self.m0 = nn.Parameter(torch.zeros(n))
        self.p0 = nn.Parameter(torch.full((n,), 0.55))  # P0 = diag(softplus(p0)) ~ I

    def prior(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        eye = torch.eye(self.config.state_dim, dtype=self.K.dtype, device=self.K.device)
        F_c = self.K - self.K.mT - self.W @ self.W.mT - 0.01 * eye
        Q_c = torch.diag(nn.functional.softplus(self.q))
        P0 = torch.diag(nn.functional.softplus(self.p0))
        return F_c, Q_c, self.H, self.m0, P0


__all__ = [
    "CDSSM",
    "CDFilterResult",
    "CDSSMConfig",
    "SitePosterior",
    "SiteVAE",
    "cd_kalman_filter",
    "cd_rts_smoother",
    "check_diffusion",
    "check_times",
    "site_posterior",
    "site_posterior_dense",
    "transitions",
]
