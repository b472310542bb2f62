"""The sequential evidence lower bound of latent-variable SSMs, written once.

For a latent sequence z_{1:T} with prior p(z_t | z_{t-1}), emission p(x_t | z_t) and a
structured posterior q(z_t | z_{t-1}, x) (Krishnan, Shalit & Sontag 2017, eq. 6):

    log p(x_{1:T}) >= ELBO = sum_t E_q[log p(x_t | z_t)]
                             - sum_t E_q(z_{t-1})[ KL(q(z_t | z_{t-1}, x) || p(z_t | z_{t-1})) ]

estimated with reparameterised samples of z and the KL in closed form for Gaussians. The
latent ODE (Rubanova et al. 2019) is the special case with one KL term, KL(q(z_0|x) || p(z_0)),
and a likelihood term at every observed time. Both models hand their per-step terms to
``sequential_elbo``, which applies the masks (padded or unobserved steps count nothing) and the
KL annealing factor (beta in ``log_lik - beta * kl``, raised from small to 1 during training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_bool_mask, check_tensor
from ssmkit.core.gaussian import LOG_2PI

Tensor = torch.Tensor


def gaussian_kl(q_mean: Tensor, q_var: Tensor, p_mean: Tensor, p_var: Tensor) -> Tensor:
    """KL(N(q_mean, diag q_var) || N(p_mean, diag p_var)), summed over the last axis.

    KL = 1/2 sum_i [ log(p_var_i / q_var_i) + (q_var_i + (q_mean_i - p_mean_i)^2) / p_var_i - 1 ]

    Args:
        q_mean, q_var, p_mean, p_var: (*, k) means and variances (> 0); broadcastable.

    Returns:
        (*) the divergence in nats, >= 0 and exactly 0 when the two Gaussians are equal.
    """
    term = torch.log(p_var) - torch.log(q_var) + (q_var + (q_mean - p_mean) ** 2) / p_var - 1
    return 0.5 * term.sum(-1)


def gaussian_log_prob(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """log N(x; mean, diag var), summed over the last axis: (*, k) -> (*)."""
    return -0.5 * (LOG_2PI + torch.log(var) + (x - mean) ** 2 / var).sum(-1)


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) for x in [0, 1], summed over the last axis."""
    return -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(
        -1
    )


@dataclass(frozen=True)
class ElboTerms:
    """Per-sequence terms of the bound; every field has shape (b,).

    Attributes:
        elbo: the bound itself, ``log_lik - kl`` (no annealing): a lower bound on log p(x).
        objective: the training objective ``log_lik - kl_weight * kl`` (to be maximised).
        log_lik: the reconstruction term, summed over unmasked steps.
        kl: the KL term, summed over unmasked steps.
        n_steps: number of unmasked likelihood steps (the per-step normaliser).
    """

    elbo: Tensor
    objective: Tensor
    log_lik: Tensor
    kl: Tensor
    n_steps: Tensor

    def nll_per_step(self) -> float:
        """Upper bound on the negative log-likelihood in nats per time step, over the batch."""
        return float(-self.elbo.detach().sum() / self.n_steps.sum())


def sequential_elbo(
    log_lik: Tensor,
    kl: Tensor,
    mask: Tensor | None = None,
    kl_mask: Tensor | None = None,
    kl_weight: float = 1.0,
) -> ElboTerms:
    """Assemble the sequential ELBO from per-step terms.

    Args:
        log_lik: (b, l) log p(x_t | z_t) per step (already summed over observation channels).
        kl: (b, k) KL terms per latent step (k = l for a DMM, k = 1 for a latent ODE), or (b,).
        mask: (b, l) bool, True where ``log_lik`` counts; None = all steps.
        kl_mask: (b, k) bool, True where ``kl`` counts; None = all terms.
        kl_weight: annealing factor beta >= 0 of the KL in ``objective`` (``elbo`` uses 1).

    Returns:
        ``ElboTerms`` with (b,) tensors. Masked entries are removed with ``torch.where``
        (not multiplied by 0), so a NaN or inf there cannot leak into the bound.
    """
    check_tensor("log_lik", log_lik)
    check_tensor("kl", kl)
    if log_lik.ndim != 2:
        raise ValueError(f"log_lik must have shape (b, l), got shape {tuple(log_lik.shape)}")
    if kl.ndim == 1:
        kl = kl[:, None]
    if kl.ndim != 2 or kl.shape[0] != log_lik.shape[0]:
        raise ValueError(
            f"kl must have shape (b, k) or (b,) with b = {log_lik.shape[0]}, "
            f"got shape {tuple(kl.shape)}"
        )
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, int | float) or not kl_weight >= 0:
        raise ValueError(f"kl_weight must be a number >= 0, got {kl_weight!r}")
    if mask is None:
        mask = torch.ones(log_lik.shape, dtype=torch.bool, device=log_lik.device)
    check_bool_mask("mask", mask, log_lik.shape)
    if kl_mask is not None:
        check_bool_mask("kl_mask", kl_mask, kl.shape)
        kl = torch.where(kl_mask, kl, torch.zeros_like(kl))
    ll = torch.where(mask, log_lik, torch.zeros_like(log_lik)).sum(-1)  # (b,)
    kl_sum = kl.sum(-1)  # (b,)
    return ElboTerms(
        elbo=ll - kl_sum,
        objective=ll - kl_weight * kl_sum,
        log_lik=ll,
        kl=kl_sum,
        n_steps=mask.sum(-1).to(log_lik.dtype),
    )


def kl_anneal(epoch: int, warmup_epochs: int, start: float = 0.1) -> float:
    """Linear KL annealing: beta rises from ``start`` at epoch 0 to 1 at ``warmup_epochs``."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, start + (1.0 - start) * epoch / warmup_epochs)


__all__ = [
    "ElboTerms",
    "bernoulli_log_prob",
    "gaussian_kl",
    "gaussian_log_prob",
    "kl_anneal",
    "sequential_elbo",
]
