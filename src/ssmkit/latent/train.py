"""Training loops of the latent models and the numbers they report.

* ``train_dmm``: Adam on the annealed sequential ELBO; reports the held-out NLL bound in nats
  per time step (-ELBO / valid steps, averaged over posterior samples) next to the iid baseline.
* ``train_latent_ode``: Adam on the ELBO of every observation of the training series (the
  encoder sees a subset of the early points); reports interpolation and extrapolation MSE on
  held-out series next to linear interpolation / last value carried forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_int
from ssmkit.latent.data import (
    IrregularSeries,
    SequenceSet,
    iid_baseline_nll,
    linear_interp_baseline,
    masked_mse,
    split_interp_extrap,
)
from ssmkit.latent.dmm import DeepMarkovModel
from ssmkit.latent.elbo import kl_anneal
from ssmkit.latent.latent_ode import LatentODE

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LatentTrainConfig:
    """Optimisation settings shared by both models."""

    epochs: int = 30  # passes over the training set
    batch_size: int = 32  # sequences per Adam step
    lr: float = 3e-3  # Adam learning rate
    kl_warmup_epochs: int = 5  # KL annealing: beta rises linearly to 1 over these epochs
    kl_start: float = 0.1  # beta at epoch 0
    grad_clip: float = 10.0  # max global gradient norm
    eval_samples: int = 4  # posterior samples averaged in the held-out DMM bound
    seed: int = 0  # seed of initialisation order, batching and sampling

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_samples"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("kl_warmup_epochs", self.kl_warmup_epochs, minimum=0)
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.kl_start <= 1:
            raise ValueError(f"kl_start must be in [0, 1], got {self.kl_start!r}")


@dataclass(frozen=True)
class DMMResult:
    """What ``train_dmm`` measured (NLL values in nats per time step)."""

    test_nll_bound: float  # -ELBO per valid step on the held-out set (upper bound on the NLL)
    baseline_nll: float  # NLL per step of the iid per-step fit (``iid_baseline_nll``)
    train_history: tuple[float, ...]  # training -ELBO per step after each epoch
    seconds: float  # wall-clock training time


@dataclass(frozen=True)
class LatentODEResult:
    """What ``train_latent_ode`` measured (mean squared errors on held-out series)."""

    interp_mse: float  # at held-out points inside the observed window
    extrap_mse: float  # at points after t_split
    baseline_interp_mse: float  # linear interpolation of the encoder's points
    baseline_extrap_mse: float  # last observed value carried forward
    train_history: tuple[float, ...]  # training -ELBO per observation after each epoch
    seconds: float  # wall-clock training time


def _step(model, opt, loss: torch.Tensor, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


@torch.no_grad()
def dmm_nll_bound(model: DeepMarkovModel, data: SequenceSet, samples: int, seed: int = 0) -> float:
    """-ELBO per valid time step on ``data``, averaged over ``samples`` posterior draws."""
    g = torch.Generator(device=data.x.device).manual_seed(seed)
    vals = [
        float(model.elbo(data.x, data.mask, generator=g).nll_per_step()) for _ in range(samples)
    ]
    return sum(vals) / len(vals)


def train_dmm(
    model: DeepMarkovModel,
    train: SequenceSet,
    test: SequenceSet,
    config: LatentTrainConfig = LatentTrainConfig(),
    progress: Progress | None = None,
) -> DMMResult:
    """Fit a DMM by maximising the annealed ELBO; report the held-out NLL bound."""
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = train.x.shape[0]
    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        beta = kl_anneal(epoch, config.kl_warmup_epochs, config.kl_start)
        model.train()
        total, steps = 0.0, 0.0
        for idx in torch.randperm(n, generator=g).split(config.batch_size):
            terms = model.elbo(train.x[idx], train.mask[idx], kl_weight=beta, generator=g)
            _step(model, opt, -terms.objective.sum() / terms.n_steps.sum(), config.grad_clip)
            total += float(-terms.elbo.detach().sum())
            steps += float(terms.n_steps.sum())
        history.append(total / steps)
        if progress is not None:
            progress(f"epoch {epoch + 1:3d}/{config.epochs}  beta {beta:.2f}  "
                     f"train -ELBO/step {history[-1]:.4f}")  # fmt: skip
    seconds = time.perf_counter() - start
    model.eval()
    return DMMResult(
        test_nll_bound=dmm_nll_bound(model, test, config.eval_samples, config.seed),
        baseline_nll=iid_baseline_nll(train, test, model.config.likelihood),
        train_history=tuple(history),
        seconds=seconds,
    )


def evaluate_latent_ode(
    model: LatentODE, data: IrregularSeries, t_split: float, seed: int = 0
) -> dict[str, float]:
    """Interpolation / extrapolation MSE of the model and of the baselines on ``data``."""
    enc, interp, extrap = split_interp_extrap(data, t_split, seed=seed)
    model.eval()
    pred = model.predict(data.times, data.values, enc, data.times)  # (b, u, d)
    base = linear_interp_baseline(data.times, data.values, enc)
    return {
        "interp_mse": masked_mse(pred, data.values, interp),
        "extrap_mse": masked_mse(pred, data.values, extrap),
        "baseline_interp_mse": masked_mse(base, data.values, interp),
        "baseline_extrap_mse": masked_mse(base, data.values, extrap),
    }


def fit_irregular(
    model: nn.Module,
    train: IrregularSeries,
    t_split: float,
    config: LatentTrainConfig,
    progress: Progress | None = None,
) -> tuple[list[float], float]:
    """The training loop of the models of irregular series (latent ODE and SDE, CDSSM, GP-VAE:
    ``model.elbo(times, values, mask, encoder_mask=, kl_weight=, generator=)``): Adam on the
    annealed ELBO; the encoder sees a random half of the points at t <= t_split, a new draw
    every epoch. Returns the training -ELBO per observation of each epoch and the seconds."""
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = train.values.shape[0]
    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        beta = kl_anneal(epoch, config.kl_warmup_epochs, config.kl_start)
        enc, _, _ = split_interp_extrap(train, t_split, seed=config.seed + 1 + epoch)
        model.train()
        total, count = 0.0, 0.0
        for idx in torch.randperm(n, generator=g).split(config.batch_size):
            terms = model.elbo(
                train.times, train.values[idx], train.mask[idx], encoder_mask=enc[idx],
                kl_weight=beta, generator=g,
            )  # fmt: skip
            _step(model, opt, -terms.objective.sum() / terms.n_steps.sum(), config.grad_clip)
            total += float(-terms.elbo.detach().sum())
            count += float(terms.n_steps.sum())
        history.append(total / count)
        if progress is not None:
            progress(f"epoch {epoch + 1:3d}/{config.epochs}  beta {beta:.2f}  "
                     f"train -ELBO/obs {history[-1]:.4f}")  # fmt: skip
    return history, time.perf_counter() - start


def train_latent_ode(
    model: LatentODE,
    train: IrregularSeries,
    test: IrregularSeries,
    t_split: float,
    config: LatentTrainConfig = LatentTrainConfig(),
    progress: Progress | None = None,
) -> LatentODEResult:
    """Fit a latent ODE; the encoder sees a random half of the points at t <= t_split (a new
    draw every epoch) and the likelihood covers every observation, so the model learns both to
    interpolate and to extrapolate. Evaluated on ``test`` with ``evaluate_latent_ode``."""
    history, seconds = fit_irregular(model, train, t_split, config, progress)
    m = evaluate_latent_ode(model, test, t_split, seed=config.seed)
    return LatentODEResult(**m, train_history=tuple(history), seconds=seconds)


__all__ = [
    "DMMResult",
    "LatentODEResult",
    "LatentTrainConfig",
    "dmm_nll_bound",
    "evaluate_latent_ode",
    "train_dmm",
    "train_latent_ode",
]
