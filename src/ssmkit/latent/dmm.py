"""Deep Markov model (deep Kalman filter) with a structured inference network.

Krishnan, Shalit & Sontag, "Structured Inference Networks for Nonlinear State Space Models"
(AAAI 2017, arXiv 1609.09869). Generative model, for t = 1..T:

    z_t ~ N(mu_t, diag sigma_t^2),  (mu_t, sigma_t^2) = transition(z_{t-1}),  z_0 learned
    x_t ~ p(x_t | emission(z_t))     Gaussian (mean, variance) or Bernoulli (logits)

Gated transition (section 5): gate g = sigmoid(MLP(z)), proposal h = MLP(z),
mu = (1 - g) * (W z + b) + g * h with W initialised to I, sigma^2 = softplus(W_s relu(h) + b_s).

Inference network "ST-R": a GRU reads x_{t:T} backwards (h^right_t; ``encoder`` swaps in an
ssmkit layer, ``encoder_direction="bidirectional"`` gives ST-LR); the combiner merges it
with the sampled z_{t-1}: h_comb = (tanh(W z_{t-1} + b) + h^right_t) / 2,
q(z_t | z_{t-1}, x_{t:T}) = N(W_mu h_comb + b_mu, softplus(W_s h_comb + b_s)).

Padded sequences: ``mask`` (b, l) marks the valid steps, a prefix of each row. The backward
GRU reads each sequence from its own last valid step, so padding never reaches the valid steps,
and the ELBO counts valid steps only (``latent.elbo.sequential_elbo``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_finite, check_int, check_shape, check_tensor
from ssmkit.latent.elbo import (
    ElboTerms,
    bernoulli_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    sequential_elbo,
)
from ssmkit.latent.encoders import DIRECTIONS, ENCODERS, SequenceEncoder

Tensor = torch.Tensor
LIKELIHOODS = ("gaussian", "bernoulli")


@dataclass(frozen=True)
class DMMConfig:
    """Sizes of a deep Markov model (names after Krishnan et al. 2017)."""

    x_dim: int  # observation size, dim(x_t)
    z_dim: int = 4  # latent state size, dim(z_t)
    transition_dim: int = 32  # hidden units of the gated transition MLPs
    emission_dim: int = 32  # hidden units of the emission MLP
    rnn_dim: int = 32  # feature size of the inference network's encoder (h^right)
    encoder: str = "gru"  # layer of the inference network: "gru", "s4d", "lru" or "mamba"
    encoder_direction: str = "backward"  # "backward": q(z_t | z_{t-1}, x_{t:T}) (ST-R);
    # "bidirectional": q(z_t | z_{t-1}, x_{1:T}) (ST-LR, the smoothing posterior)
    likelihood: str = "gaussian"  # p(x_t | z_t): "gaussian" (mean, variance) or "bernoulli"
    min_var: float = 1e-4  # floor added to every predicted variance (numerical safety)

    def __post_init__(self) -> None:
        for name in ("x_dim", "z_dim", "transition_dim", "emission_dim", "rnn_dim"):
            check_int(name, getattr(self, name), minimum=1)
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_choice("encoder", self.encoder, ENCODERS)
        check_choice("encoder_direction", self.encoder_direction, DIRECTIONS)
        if not (isinstance(self.min_var, int | float) and self.min_var > 0):
            raise ValueError(f"min_var must be a number > 0, got {self.min_var!r}")


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, d_out),
    )  # fmt: skip


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}) = N(mu, diag sigma^2) with the gated mean of Krishnan et al. (sec. 5)."""

    def __init__(self, z_dim: int, hidden: int, min_var: float = 1e-4) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.proposal = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.lin = nn.Linear(z_dim, z_dim)  # the linear path W z + b, starts as the identity
        self.var = nn.Linear(z_dim, z_dim)
        self.min_var = min_var
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(z_dim))
            self.lin.bias.zero_()

    def forward(self, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """(*, z) -> mean (*, z), variance (*, z)."""
        g = torch.sigmoid(self.gate(z_prev))
        h = self.proposal(z_prev)
        mean = (1 - g) * self.lin(z_prev) + g * h
        var = nn.functional.softplus(self.var(torch.relu(h))) + self.min_var
        return mean, var


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, x_{t:T}) from the sampled z_{t-1} and the backward-RNN state."""

    def __init__(self, z_dim: int, rnn_dim: int, min_var: float = 1e-4) -> None:
        super().__init__()
        self.z_to_h = nn.Linear(z_dim, rnn_dim)
        self.mean = nn.Linear(rnn_dim, z_dim)
        self.var = nn.Linear(rnn_dim, z_dim)
        self.min_var = min_var

    def forward(self, z_prev: Tensor, h_right: Tensor) -> tuple[Tensor, Tensor]:
        """z_prev (*, z), h_right (*, r) -> mean (*, z), variance (*, z)."""
        h = 0.5 * (torch.tanh(self.z_to_h(z_prev)) + h_right)
        return self.mean(h), nn.functional.softplus(self.var(h)) + self.min_var


class GaussianEmission(nn.Module):
    """p(x_t | z_t) = N(mean(z_t), diag var(z_t)), both from one MLP."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int, min_var: float = 1e-4) -> None:
        super().__init__()
        self.net = _mlp(z_dim, hidden, 2 * x_dim)
        self.min_var = min_var

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(*, z) -> mean (*, x), variance (*, x)."""
        mean, raw = self.net(z).chunk(2, dim=-1)
        return mean, nn.functional.softplus(raw) + self.min_var

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z): x (*, x), z (*, z) -> (*)."""
        return gaussian_log_prob(x, *self(z))

    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, var = self(z)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + var.sqrt() * noise


class BernoulliEmission(nn.Module):
    """p(x_t | z_t) = prod_i Bernoulli(x_i; sigmoid(logits_i(z_t)))."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = _mlp(z_dim, hidden, x_dim)

    def forward(self, z: Tensor) -> Tensor:
        """(*, z) -> logits (*, x)."""
        return self.net(z)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z): x (*, x) in [0, 1], z (*, z) -> (*)."""
        return bernoulli_log_prob(x, self(z))

    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p = torch.sigmoid(self(z))
        return torch.bernoulli(p, generator=generator)


def check_prefix_mask(mask: Tensor | None, b: int, l: int, device: torch.device) -> Tensor:
    """Return a (b, l) bool mask of valid steps; each row must be True...True False...False."""
    if mask is None:
        return torch.ones(b, l, dtype=torch.bool, device=device)
    check_tensor("mask", mask)
    if mask.dtype != torch.bool or tuple(mask.shape) != (b, l):
        raise ValueError(
            f"mask must be a bool tensor of shape (b, l) = {(b, l)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if not bool(mask[:, 0].all()):
        raise ValueError("mask: every sequence needs at least one valid step (mask[:, 0] True)")
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError(
            "mask must mark a prefix of each row (right padding): True...True False..."
        )
    return mask


class DeepMarkovModel(nn.Module):
    """Deep Markov model with the structured (backward RNN + combiner) inference network."""

    def __init__(self, config: DMMConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.transition = GatedTransition(c.z_dim, c.transition_dim, c.min_var)
        if c.likelihood == "gaussian":
            self.emission: nn.Module = GaussianEmission(c.x_dim, c.z_dim, c.emission_dim, c.min_var)
        else:
            self.emission = BernoulliEmission(c.x_dim, c.z_dim, c.emission_dim)
        self.encoder = SequenceEncoder(c.encoder, c.x_dim, c.rnn_dim, c.encoder_direction)
        self.combiner = Combiner(c.z_dim, c.rnn_dim, c.min_var)
        self.z_0 = nn.Parameter(torch.zeros(c.z_dim))  # z_0 of the prior p(z_1 | z_0)
        self.z_q_0 = nn.Parameter(torch.zeros(c.z_dim))  # z_0 fed to the combiner at t = 1

    def _check_x(self, x: object) -> Tensor:
        check_tensor("x", x)
        if x.ndim != 3 or x.shape[-1] != self.config.x_dim or not x.is_floating_point():
            raise ValueError(
                f"x must be a floating-point tensor of shape (b, l, x_dim) with "
                f"x_dim = {self.config.x_dim}, got {x.dtype} {tuple(x.shape)}"
            )
        return x

    def encode(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encoder states h^right_t: summaries of x_{t:T_b} (or x_{1:T_b}, bidirectional).

        Args:
            x: (b, l, x) observations, zero at padded steps.
            mask: (b, l) prefix mask of valid steps.

        Returns:
            (b, l, r) states; rows past a sequence's end hold states of the padding (unused).
        """
        return self.encoder(x, mask.sum(1))  # each row read inside its own length

    def elbo(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        kl_weight: float = 1.0,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ElboTerms:
        """Single-sample estimate of the sequential ELBO of each sequence.

        Args:
            x: (b, l, x) observations (in [0, 1] for the Bernoulli likelihood); may hold any
                value, NaN included, at padded steps.
            mask: (b, l) bool prefix mask of valid steps; None = all valid.
            kl_weight: KL annealing factor beta of ``objective``.
            eps: (b, l, z) standard normal noise of the reparameterised samples; drawn when None.
            generator: random generator used when ``eps`` is None.

        Returns:
            ``ElboTerms`` of (b,) tensors: elbo, objective, log_lik, kl, n_steps.
        """
        self._check_x(x)
        b, l, _ = x.shape
        mask = check_prefix_mask(mask, b, l, x.device)
        x = torch.where(mask[..., None], x, torch.zeros_like(x))
        check_finite("x (at valid steps)", x)
        if self.config.likelihood == "bernoulli" and bool(((x < 0) | (x > 1)).any()):
            raise ValueError("x must lie in [0, 1] for the Bernoulli likelihood")
        zd = self.config.z_dim
        if eps is None:
            eps = torch.randn(b, l, zd, generator=generator, dtype=x.dtype, device=x.device)
        check_shape("eps", eps, (b, l, zd), "(b, l, z)")

        h_right = self.encode(x, mask)  # (b, l, r)
        z_prev = self.z_q_0.expand(b, zd)
        q_means, q_vars, zs = [], [], []
        for t in range(l):  # ancestral sampling from q(z_t | z_{t-1}, x_{t:T})
            q_mean, q_var = self.combiner(z_prev, h_right[:, t])
            z_prev = q_mean + q_var.sqrt() * eps[:, t]
            q_means.append(q_mean)
            q_vars.append(q_var)
            zs.append(z_prev)
        z = torch.stack(zs, 1)  # (b, l, z)
        z_before = torch.cat([self.z_0.expand(b, 1, zd), z[:, :-1]], 1)  # (b, l, z)
        p_mean, p_var = self.transition(z_before)  # (b, l, z) each
        kl = gaussian_kl(torch.stack(q_means, 1), torch.stack(q_vars, 1), p_mean, p_var)
        log_lik = self.emission.log_prob(x, z)  # (b, l)
        return sequential_elbo(log_lik, kl, mask=mask, kl_mask=mask, kl_weight=kl_weight)

    @torch.no_grad()
    def sample(
        self, batch: int, length: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw (z, x) from the generative model: z (b, l, z), x (b, l, x)."""
        check_int("batch", batch, minimum=1)
        check_int("length", length, minimum=1)
        p = self.z_0
        z_prev = p.expand(batch, -1)
        zs = []
        for _ in range(length):
            mean, var = self.transition(z_prev)
            noise = torch.randn(mean.shape, generator=generator, dtype=p.dtype, device=p.device)
            z_prev = mean + var.sqrt() * noise
            zs.append(z_prev)
        z = torch.stack(zs, 1)
        return z, self.emission.sample(z, generator)


__all__ = [
    "LIKELIHOODS",
    "BernoulliEmission",
    "Combiner",
    "DMMConfig",
    "DeepMarkovModel",
    "GatedTransition",
    "GaussianEmission",
    "check_prefix_mask",
]
