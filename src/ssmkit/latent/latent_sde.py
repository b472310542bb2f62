"""Variational latent SDE for irregularly sampled series with missing values.

Li, Wong, Chen & Duvenaud, "Scalable Gradients for Stochastic Differential Equations"
(AISTATS 2020, arXiv 2001.01328, sec. 5): a prior SDE and an approximate posterior SDE that
share the diffusion g,

    prior      dz = f_p(t, z) dt + g(t, z) dW,            z(t_0) ~ N(0, I)
    posterior  dz = f_q(t, z, ctx) dt + g(t, z) dW,       z(t_0) ~ q(z_0 | x)
    x(t_i) ~ N(dec(z(t_i)), obs_std^2 I),

and by Girsanov's theorem KL(Q || P) over paths = E_Q int 1/2 |u(t)|^2 dt with
u = (f_q - f_p) / g (eq. 9 there). We parameterise the posterior drift as f_q = f_p + g * u
with a control network u(t, z, ctx), so the KL rate is exactly 1/2 |u|^2 (no division by a
small g), and integrate it as an extra state component alongside z. The context ctx(t) comes
from a GRU run backwards over the observations (it summarises the data after t); after a
series' last encoder observation the control is switched off, so forecasts follow the prior.

The prior is one of the three stable neural SDE classes of Oh, Lim & Kim (ICLR 2024,
"Stable Neural SDEs in Analyzing Irregular Time Series Data", sec. 3.2), discussed in the
review (arXiv 2412.11211):

* ``"langevin"`` (LSDE): dz = gamma(z) dt + sigma(t) dW (additive noise);
* ``"linear_noise"`` (LNSDE): dz = gamma(t, z) dt + sigma(t) z dW;
* ``"geometric"`` (GSDE): dz = gamma(t, z) z dt + sigma(t) z dW (dz / z = gamma dt + sigma dW),

with sigma(t) = softplus(MLP(t)) > 0. The ELBO is ``latent.elbo.sequential_elbo`` with two KL
terms per series (z_0 and the path); SDEs are solved by ``ssmkit.core.sde.sdeint``.
Batch format as the latent ODE: a shared sorted grid ``times`` (u,), values (b, u, d) and a
mask (b, u); unobserved entries are masked out, never dropped or imputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_int, check_tensor
from ssmkit.core.sde import SDE_METHODS, BrownianTree, sdeint
from ssmkit.latent.elbo import ElboTerms, gaussian_kl, gaussian_log_prob, sequential_elbo
from ssmkit.latent.encoders import ENCODERS, SequenceEncoder
from ssmkit.latent.latent_ode import check_irregular

Tensor = torch.Tensor
PRIORS = ("langevin", "linear_noise", "geometric")


@dataclass(frozen=True)
class LatentSDEConfig:
    """Sizes, prior class and solver of a latent SDE (names after Li et al. 2020)."""

    obs_dim: int = 2  # observation size, dim(x)
    latent_dim: int = 4  # size of the latent state z(t)
    context_dim: int = 16  # size of the backward GRU's hidden state (the context ctx)
    hidden: int = 32  # hidden units of the drift, control, diffusion and decoder MLPs
    prior: str = "langevin"  # stable SDE class of the prior: langevin, linear_noise, geometric
    obs_std: float = 0.1  # fixed observation noise standard deviation of p(x | z)
    method: str = "euler"  # SDE scheme: euler (Euler-Maruyama) or milstein
    step_size: float = 0.1  # maximum solver step
    brownian_levels: int = 12  # depth of the Brownian tree (exact at 2^-levels of the window)
    encoder: str = "gru"  # context encoder: "gru" (Li et al.) or an ssmkit layer: s4d, lru, mamba

    def __post_init__(self) -> None:
        for name in ("obs_dim", "latent_dim", "context_dim", "hidden"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("brownian_levels", self.brownian_levels, minimum=1)
        check_choice("prior", self.prior, PRIORS)
        check_choice("method", self.method, SDE_METHODS)
        check_choice("encoder", self.encoder, ENCODERS)
        for name in ("obs_std", "step_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")


def girsanov_kl_rate(u: Tensor) -> Tensor:
    """d/dt KL(Q || P) of two SDEs with one diffusion g: 1/2 |u|^2, u = (f_q - f_p) / g.

    Args:
        u: (b, z) the drift difference divided by the diffusion.

    Returns:
        (b, 1) the KL rate (kept 2-D to be integrated as a state component).
    """
    return 0.5 * (u * u).sum(-1, keepdim=True)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, d_out),
    )  # fmt: skip


class StableSDEPrior(nn.Module):
    """Prior drift f_p(t, z) and diffusion g(t, z) of one stable SDE class (module docstring)."""

    def __init__(self, kind: str, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.kind = check_choice("prior", kind, PRIORS)
        d_in = latent_dim if kind == "langevin" else latent_dim + 1
        self.gamma = _mlp(d_in, hidden, latent_dim)
        self.sigma = _mlp(1, hidden, latent_dim)

    def drift(self, t: Tensor, z: Tensor) -> Tensor:
        """f_p(t, z): (b, z)."""
        if self.kind == "langevin":
            return self.gamma(z)
        gamma = self.gamma(torch.cat([z, t.expand(z.shape[0], 1)], -1))
        return gamma * z if self.kind == "geometric" else gamma

    def diffusion(self, t: Tensor, z: Tensor) -> Tensor:
        """g(t, z): (b, z) (diagonal noise); sigma(t) > 0 by a softplus."""
        sigma = nn.functional.softplus(self.sigma(t.reshape(1, 1))).expand_as(z)
        return sigma if self.kind == "langevin" else sigma * z


class LatentSDE(nn.Module):
    """Latent SDE: backward-GRU context encoder, stable-SDE prior, controlled posterior."""

    def __init__(self, config: LatentSDEConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        if c.encoder == "gru":
            self.gru = nn.GRUCell(c.obs_dim + 2, c.context_dim)  # input [x, observed, dt]
        else:  # an ssmkit layer reads the same inputs backwards over the whole grid
            self.seq = SequenceEncoder(c.encoder, c.obs_dim + 2, c.context_dim, "backward")
        self.to_z0 = nn.Linear(c.context_dim, 2 * c.latent_dim)
        self.prior = StableSDEPrior(c.prior, c.latent_dim, c.hidden)
        self.control = _mlp(c.latent_dim + 1 + c.context_dim, c.hidden, c.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(c.latent_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.obs_dim)
        )

    def encode(self, times: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Context per grid time and q(z_0 | x).

        Args:
            times: (u,) grid; values: (b, u, d) with anything where unobserved; mask: (b, u).

        Returns:
            ctx (b, u, c): the encoder's state after reading the observations at times >= t_i
            (backwards: the GRU of Li et al., or ``encoder``'s ssmkit layer); q_mean, q_var
            (b, z) at t_0.
        """
        check_irregular(times, values, mask, self.config.obs_dim)
        x = torch.where(mask[..., None], values, torch.zeros_like(values))
        b, u, _ = x.shape
        gaps = torch.diff(times, append=times[-1:]).to(x.dtype)  # (u,) time to the next point
        if self.config.encoder != "gru":  # every grid step read, unobserved ones flagged 0
            inp = torch.cat(
                [x, mask[..., None].to(x.dtype), gaps[None, :, None].expand(b, u, 1)], -1
            )
            ctx_t = self.seq(inp)  # (b, u, c): the features after reading steps >= i backwards
        else:
            h = x.new_zeros(b, self.config.context_dim)
            ctx = []
            for i in reversed(range(u)):
                obs = mask[:, i : i + 1]  # (b, 1)
                inp = torch.cat([x[:, i], obs.to(x.dtype), gaps[i].expand(b, 1)], -1)
                h = torch.where(obs, self.gru(inp, h), h)
                ctx.append(h)
            ctx_t = torch.stack(ctx[::-1], 1)  # (b, u, c)
        mean, raw = self.to_z0(ctx_t[:, 0]).chunk(2, -1)
        return ctx_t, mean, nn.functional.softplus(raw) + 1e-6

    def _solve(
        self, z0: Tensor, times: Tensor, ctx: Tensor, t_last: Tensor, grid: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        """Posterior SDE from z(grid[0]) = z0: z at ``grid`` (b, q, z) and the path KL (b,)."""
        c = self.config
        b, zd = z0.shape
        ctx_times = times.to(z0.dtype)

        def parts(t: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            z = y[:, :zd]
            # context of the first grid time strictly after t: what the data ahead say
            i = torch.searchsorted(ctx_times, t.reshape(1), right=True).clamp_max(ctx.shape[1] - 1)
            ctx_t = ctx[:, int(i)]  # (b, c)
            active = (t < t_last).to(z.dtype)[:, None]  # (b, 1): no control after the data
            u = active * self.control(torch.cat([z, t.expand(b, 1), ctx_t], -1))  # (b, z)
            return z, u, self.prior.diffusion(t, z)

        def f(t: Tensor, y: Tensor) -> Tensor:
            z, u, g = parts(t, y)
            return torch.cat([self.prior.drift(t, z) + g * u, girsanov_kl_rate(u)], -1)

        def g(t: Tensor, y: Tensor) -> Tensor:
            z = y[:, :zd]
            return torch.cat([self.prior.diffusion(t, z), z.new_zeros(b, 1)], -1)

        y0 = torch.cat([z0, z0.new_zeros(b, 1)], -1)  # (b, z + 1): state and accumulated KL
        t0, t1 = float(grid[0]), float(grid[-1])
        bm = BrownianTree(t0, max(t1, t0 + 1e-6), (b, zd + 1), seed, c.brownian_levels,
                          z0.dtype, z0.device)  # fmt: skip
        sol = sdeint(f, g, y0, grid.to(z0.dtype), bm, c.method, c.step_size)  # (q, b, z + 1)
        return sol.y[..., :zd].transpose(0, 1), sol.y[-1, :, zd]

    @staticmethod
    def _seed(generator: torch.Generator | None) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=generator))

    def elbo(
        self,
        times: Tensor,
        values: Tensor,
        mask: Tensor,
        encoder_mask: Tensor | None = None,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> ElboTerms:
        """Single-sample ELBO of each series.

        Args:
            times: (u,) shared sorted grid; z_0 lives at times[0].
            values: (b, u, d) observations (anything, NaN included, where not observed).
            mask: (b, u) bool, the targets of the likelihood term.
            encoder_mask: (b, u) bool, what the encoder sees; None = ``mask``.
            kl_weight: KL annealing factor of ``objective``.
            generator: source of z_0's noise and of the Brownian path's seed.

        Returns:
            ``ElboTerms`` of (b,) tensors; ``kl`` = KL(q(z_0) || N(0, I)) + path KL.
        """
        enc_mask = mask if encoder_mask is None else encoder_mask
        check_irregular(times, values, mask, self.config.obs_dim)
        ctx, q_mean, q_var = self.encode(times, values, enc_mask)
        eps = torch.randn(q_mean.shape, generator=generator, dtype=q_mean.dtype)
        z0 = q_mean + q_var.sqrt() * eps.to(q_mean.device)
        z, kl_path = self._solve(z0, times, ctx, self._last_times(times, enc_mask), times,
                                 self._seed(generator))  # fmt: skip
        x_mean = self.decoder(z)  # (b, u, d)
        target = torch.where(mask[..., None], values, torch.zeros_like(values))
        log_lik = gaussian_log_prob(target, x_mean, torch.full_like(x_mean, self.config.obs_std**2))
        kl0 = gaussian_kl(q_mean, q_var, torch.zeros_like(q_mean), torch.ones_like(q_var))
        return sequential_elbo(log_lik, torch.stack([kl0, kl_path], 1), mask, kl_weight=kl_weight)

    @staticmethod
    def _last_times(times: Tensor, mask: Tensor) -> Tensor:
        """(b,) the time of each series' last observation."""
        last = mask.shape[1] - 1 - mask.flip(1).to(torch.int64).argmax(1)
        return times[last]

    @torch.no_grad()
    def predict(
        self,
        times: Tensor,
        values: Tensor,
        mask: Tensor,
        query_times: Tensor,
        n_samples: int = 8,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Posterior predictive mean at ``query_times`` (>= times[0]), over ``n_samples`` paths.

        Args:
            times: (u,) grid of the observations; values (b, u, d); mask (b, u) observed.
            query_times: (q,) strictly increasing, inside or beyond the observed window.

        Returns:
            (b, q, d) the mean of the decoded paths (forecasts follow the prior SDE).
        """
        check_int("n_samples", n_samples, minimum=1)
        check_tensor("query_times", query_times)
        if query_times.ndim != 1 or query_times.numel() < 1:
            raise ValueError(f"query_times must have shape (q,), got {tuple(query_times.shape)}")
        if query_times.numel() > 1 and not bool((query_times[1:] > query_times[:-1]).all()):
            raise ValueError("query_times must be strictly increasing")
        t0 = float(times[0])
        if not float(query_times[0]) >= t0:
            raise ValueError(f"query_times must start at or after times[0] = {t0}, got "
                             f"{float(query_times[0])}")  # fmt: skip
        ctx, q_mean, q_var = self.encode(times, values, mask)
        b, S = q_mean.shape[0], n_samples
        qt = query_times.to(q_mean.dtype)
        prepend = float(qt[0]) > t0
        grid = torch.cat([qt.new_tensor([t0]), qt]) if prepend else qt
        eps = torch.randn((S, *q_mean.shape), generator=generator, dtype=q_mean.dtype)
        z0 = (q_mean + q_var.sqrt() * eps.to(q_mean.device)).reshape(S * b, -1)
        rep = ctx.expand(S, *ctx.shape).reshape(S * b, *ctx.shape[1:])
        t_last = self._last_times(times, mask).repeat(S)
        z, _ = self._solve(z0, times, rep, t_last, grid, self._seed(generator))
        z = z[:, 1:] if prepend else z  # (S b, q, z)
        return self.decoder(z).reshape(S, b, qt.numel(), -1).mean(0)


__all__ = ["PRIORS", "LatentSDE", "LatentSDEConfig", "StableSDEPrior", "girsanov_kl_rate"]
