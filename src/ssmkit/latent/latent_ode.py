"""Latent ODE with an ODE-RNN encoder for irregularly sampled series.

Rubanova, Chen & Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series" (NeurIPS 2019,
arXiv 1907.03907), building on Chen et al. 2018 (arXiv 1806.07366):

    encoder (ODE-RNN, run backwards in time): between observations the hidden state follows
        h' = f_enc(h); at an observation x_i it jumps h <- GRU([x_i, 1], h). The final state at
        t_0 gives q(z_0 | x) = N(mu(h), diag sigma^2(h)). ``encoder="s4d"|"lru"|"mamba"``
        replaces it by an ssmkit layer reading the grid backwards (``latent.encoders``).
    generative model: z_0 ~ N(0, I),  z' = f_dec(z),  x(t_i) ~ N(g(z(t_i)), obs_std^2 I).

The ELBO is ``latent.elbo.sequential_elbo`` with one KL term, KL(q(z_0|x) || N(0, I)), and the
likelihood at every target observation. Series share one sorted time grid ``times`` (u,) with a
mask (b, u) marking where each series is observed (``latent.data.to_union_grid`` builds it).
All ODEs are solved by ``ssmkit.core.ode.solve_ivp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_int, check_shape, check_tensor
from ssmkit.core.ode import METHODS, solve_ivp
from ssmkit.latent.elbo import ElboTerms, gaussian_kl, gaussian_log_prob, sequential_elbo
from ssmkit.latent.encoders import ENCODERS, GridEncoder

Tensor = torch.Tensor


@dataclass(frozen=True)
class LatentODEConfig:
    """Sizes and solvers of a latent ODE (names after Rubanova et al. 2019)."""

    obs_dim: int = 2  # observation size, dim(x)
    latent_dim: int = 6  # size of the latent state z(t)
    rec_dim: int = 24  # size of the ODE-RNN encoder's hidden state h
    ode_hidden: int = 32  # hidden units of the MLPs f_enc and f_dec (ODE right-hand sides)
    decoder_hidden: int = 32  # hidden units of the emission MLP g
    obs_std: float = 0.1  # fixed observation noise standard deviation of p(x | z)
    encoder_method: str = "euler"  # solver between observations in the encoder
    encoder_step: float = 0.1  # its (maximum) step size
    decoder_method: str = "rk4"  # solver of the latent trajectory z(t)
    decoder_step: float = 0.1  # its (maximum) step size ("dopri5": only the first step)
    rtol: float = 1e-5  # dopri5 relative tolerance
    atol: float = 1e-6  # dopri5 absolute tolerance
    encoder: str = "gru"  # "gru": the ODE-RNN above; "s4d", "lru", "mamba": an ssmkit layer

    def __post_init__(self) -> None:
        for name in ("obs_dim", "latent_dim", "rec_dim", "ode_hidden", "decoder_hidden"):
            check_int(name, getattr(self, name), minimum=1)
        check_choice("encoder_method", self.encoder_method, METHODS)
        check_choice("decoder_method", self.decoder_method, METHODS)
        check_choice("encoder", self.encoder, ENCODERS)
        for name in ("obs_std", "encoder_step", "decoder_step", "rtol", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")


class ODEFunc(nn.Module):
    """Autonomous right-hand side f(t, y) = MLP(y) with tanh activations."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, dim),
        )  # fmt: skip

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y)


def check_irregular(
    times: object, values: object, mask: object, obs_dim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate an irregular batch; returns values with 0 where unobserved.

    Raises ``ValueError`` for unsorted or non-finite times, shape mismatches, a non-bool mask,
    a series without observations or a non-finite observed value.
    """
    check_tensor("times", times)
    check_tensor("values", values)
    check_tensor("mask", mask)
    if times.ndim != 1 or times.numel() < 1:
        raise ValueError(f"times must have shape (u,) with u >= 1, got {tuple(times.shape)}")
    if not bool(torch.isfinite(times).all()):
        raise ValueError("times must be finite")
    if times.numel() > 1 and not bool((times[1:] > times[:-1]).all()):
        raise ValueError("times must be sorted strictly increasing (one shared grid)")
    u = times.numel()
    if values.ndim != 3 or values.shape[1:] != (u, obs_dim) or not values.is_floating_point():
        raise ValueError(
            f"values must be a floating-point tensor of shape (b, u, obs_dim) = (?, {u}, "
            f"{obs_dim}), got {values.dtype} {tuple(values.shape)}"
        )
    b = values.shape[0]
    if mask.dtype != torch.bool or tuple(mask.shape) != (b, u):
        raise ValueError(
            f"mask must be a bool tensor of shape (b, u) = {(b, u)}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    if not bool(mask.any(1).all()):
        raise ValueError("mask: every series needs at least one observation")
    if not bool(torch.isfinite(values)[mask].all()):
        raise ValueError("values must be finite where mask is True (NaN/inf at an observation)")
    return times, values, mask


class ODERNNEncoder(nn.Module):
    """ODE-RNN run backwards in time; returns q(z_0 | x) at the first grid time."""

    def __init__(self, config: LatentODEConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.f = ODEFunc(c.rec_dim, c.ode_hidden)
        self.gru = nn.GRUCell(c.obs_dim + 1, c.rec_dim)
        self.to_z0 = nn.Linear(c.rec_dim, 2 * c.latent_dim)

    def _evolve(self, h: Tensor, t_from: float, t_to: float) -> Tensor:
        # Backwards in time: with s = -t, dh/ds = -f(h), integrated over s in [-t_from, -t_to].
        s = torch.tensor([-t_from, -t_to], dtype=h.dtype, device=h.device)
        sol = solve_ivp(
            lambda s_, y: -self.f(s_, y), h, s, self.config.encoder_method,
            step_size=self.config.encoder_step,
        )  # fmt: skip
        return sol.y[-1]

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """times (u,), values (b, u, d) (0 where unobserved), mask (b, u) -> mean, var (b, z)."""
        b, u, _ = values.shape
        ts = times.tolist()
        h = values.new_zeros(b, self.config.rec_dim)
        seen = torch.zeros(b, 1, dtype=torch.bool, device=values.device)
        for i in reversed(range(u)):
            if i < u - 1 and bool(seen.any()):
                # series with no observation yet keep h = 0: the grid of others cannot move it
                h = torch.where(seen, self._evolve(h, ts[i + 1], ts[i]), h)
            obs = mask[:, i : i + 1]  # (b, 1)
            inp = torch.cat([values[:, i], obs.to(values.dtype)], -1)  # (b, d + 1)
            h = torch.where(obs, self.gru(inp, h), h)
            seen = seen | obs
        mean, raw = self.to_z0(h).chunk(2, -1)
        return mean, nn.functional.softplus(raw) + 1e-6


class LatentODE(nn.Module):
    """Latent ODE: ODE-RNN encoder, neural-ODE latent dynamics, MLP emission."""

    def __init__(self, config: LatentODEConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.encoder: nn.Module = (
            ODERNNEncoder(c) if c.encoder == "gru"
            else GridEncoder(c.encoder, c.obs_dim, c.rec_dim, c.latent_dim)
        )  # fmt: skip
        self.dynamics = ODEFunc(c.latent_dim, c.ode_hidden)
        self.decoder = nn.Sequential(
            nn.Linear(c.latent_dim, c.decoder_hidden), nn.ReLU(),
            nn.Linear(c.decoder_hidden, c.obs_dim),
        )  # fmt: skip

    def decode(self, z0: Tensor, t0: float, query_times: Tensor) -> Tensor:
        """Latent trajectory from z(t0) = z0, emitted at ``query_times``.

        Args:
            z0: (b, z) latent state at time t0.
            t0: start time, <= query_times[0].
            query_times: (q,) strictly increasing.

        Returns:
            (b, q, obs_dim) means of p(x(t) | z(t)).
        """
        check_tensor("query_times", query_times)
        if query_times.ndim != 1 or query_times.numel() < 1:
            raise ValueError(f"query_times must have shape (q,), got {tuple(query_times.shape)}")
        if query_times.numel() > 1 and not bool((query_times[1:] > query_times[:-1]).all()):
            raise ValueError("query_times must be strictly increasing")
        if not float(query_times[0]) >= t0:
            first = float(query_times[0])
            raise ValueError(f"query_times must start at or after t0 = {t0}, got {first}")
        qt = query_times.to(z0.dtype)
        prepend = float(qt[0]) > t0
        grid = torch.cat([qt.new_tensor([t0]), qt]) if prepend else qt
        c = self.config
        sol = solve_ivp(
            self.dynamics, z0, grid, c.decoder_method, rtol=c.rtol, atol=c.atol,
            step_size=c.decoder_step,
        )  # fmt: skip
        if sol.status != "success":
            raise RuntimeError(
                f"latent ODE solve stopped early ({sol.status}) at t = {sol.t_stop:.4g}"
            )
        z = sol.y[1:] if prepend else sol.y  # (q, b, z)
        return self.decoder(z.transpose(0, 1))

    def posterior(self, times: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """q(z_0 | x) at t0 = times[0]: mean, variance (b, z)."""
        check_irregular(times, values, mask, self.config.obs_dim)
        filled = torch.where(mask[..., None], values, torch.zeros_like(values))
        return self.encoder(times, filled, mask)

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
        """Single-sample ELBO of each series.

        Args:
            times: (u,) shared sorted grid; z_0 lives at times[0].
            values: (b, u, d) observations (anything, NaN included, where not observed).
            mask: (b, u) bool, the targets of the likelihood term.
            encoder_mask: (b, u) bool, what the encoder sees; None = ``mask``.
            kl_weight: KL annealing factor of ``objective``.
            eps: (b, z) standard normal noise for z_0; drawn when None.
            generator: random generator used when ``eps`` is None.

        Returns:
            ``ElboTerms`` of (b,) tensors; ``n_steps`` counts the target observations.
        """
        enc_mask = mask if encoder_mask is None else encoder_mask
        check_irregular(times, values, mask, self.config.obs_dim)
        q_mean, q_var = self.posterior(times, values, enc_mask)
        b, zd = q_mean.shape
        if eps is None:
            eps = torch.randn(b, zd, generator=generator, dtype=q_mean.dtype, device=q_mean.device)
        check_shape("eps", eps, (b, zd), "(b, z)")
        z0 = q_mean + q_var.sqrt() * eps
        x_mean = self.decode(z0, float(times[0]), times)  # (b, u, d)
        target = torch.where(mask[..., None], values, torch.zeros_like(values))
        var = torch.full_like(x_mean, self.config.obs_std**2)
        log_lik = gaussian_log_prob(target, x_mean, var)  # (b, u)
        kl = gaussian_kl(q_mean, q_var, torch.zeros_like(q_mean), torch.ones_like(q_var))  # (b,)
        return sequential_elbo(log_lik, kl, mask=mask, kl_weight=kl_weight)

    @torch.no_grad()
    def predict(self, times: Tensor, values: Tensor, mask: Tensor, query_times: Tensor) -> Tensor:
        """Posterior-mean reconstruction / extrapolation at arbitrary times >= times[0].

        Args:
            times: (u,) grid of the observations; values (b, u, d); mask (b, u) observed.
            query_times: (q,) strictly increasing, inside or beyond the observed window.

        Returns:
            (b, q, d) predicted means.
        """
        q_mean, _ = self.posterior(times, values, mask)
        return self.decode(q_mean, float(times[0]), query_times)


__all__ = ["LatentODE", "LatentODEConfig", "ODEFunc", "ODERNNEncoder", "check_irregular"]
