"""Training and evaluation of the latent SDE, and its comparison with the latent ODE.

``train_latent_sde`` mirrors ``latent.train.train_latent_ode``: Adam on the annealed ELBO of
every observation, the encoder seeing a random half of the points at t <= t_split (redrawn each
epoch). ``heldout_elbo`` gives -ELBO per observation on held-out series (encoder sees every
point) for either model, averaged over draws; ``iid_gaussian_nll`` is the time-blind baseline
of that number. Interpolation / extrapolation errors use ``latent.data.split_interp_extrap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_int
from ssmkit.latent.data import (
    IrregularSeries,
    linear_interp_baseline,
    masked_mse,
    split_interp_extrap,
)
from ssmkit.latent.latent_ode import LatentODE
from ssmkit.latent.latent_sde import LatentSDE
from ssmkit.latent.train import LatentTrainConfig, Progress, fit_irregular


@dataclass(frozen=True)
class LatentSDEResult:
    """What ``train_latent_sde`` measured on held-out series."""

    heldout_nelbo: float  # -ELBO per observation (encoder sees all points)
    interp_mse: float  # posterior predictive mean at held-out points inside the window
    extrap_mse: float  # after t_split (forecast by the prior SDE)
    baseline_interp_mse: float  # linear interpolation of the encoder's points
    baseline_extrap_mse: float  # last observed value carried forward
    train_history: tuple[float, ...]  # training -ELBO per observation after each epoch
    seconds: float  # wall-clock training time


@torch.no_grad()
def heldout_elbo(model: LatentSDE | LatentODE, data: IrregularSeries, samples: int = 4,
                 seed: int = 0) -> float:  # fmt: skip
    """-ELBO per observed value-vector on ``data`` (encoder sees all), mean over draws."""
    check_int("samples", samples, minimum=1)
    g = torch.Generator().manual_seed(seed)
    model.eval()
    vals = [
        model.elbo(data.times, data.values, data.mask, generator=g).nll_per_step()
        for _ in range(samples)
    ]
    return sum(vals) / len(vals)


def iid_gaussian_nll(train: IrregularSeries, test: IrregularSeries) -> float:
    """NLL per observation of an iid Gaussian per channel fitted to the training points."""
    xs, xt = train.values[train.mask].double(), test.values[test.mask].double()  # (n, d)
    mean, var = xs.mean(0), xs.var(0, unbiased=False).clamp_min(1e-12)
    ll = -0.5 * (math.log(2 * math.pi) + var.log() + (xt - mean) ** 2 / var).sum(-1)
    return float(-ll.mean())


def evaluate_latent_sde(
    model: LatentSDE, data: IrregularSeries, t_split: float, samples: int = 8, seed: int = 0
) -> dict[str, float]:
    """Interpolation / extrapolation MSE of the model and of the baselines on ``data``."""
    enc, interp, extrap = split_interp_extrap(data, t_split, seed=seed)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    pred = model.predict(data.times, data.values, enc, data.times, samples, g)  # (b, u, d)
    base = linear_interp_baseline(data.times, data.values, enc)
    return {
        "interp_mse": masked_mse(pred, data.values, interp),
        "extrap_mse": masked_mse(pred, data.values, extrap),
        "baseline_interp_mse": masked_mse(base, data.values, interp),
        "baseline_extrap_mse": masked_mse(base, data.values, extrap),
    }


def train_latent_sde(
    model: LatentSDE,
    train: IrregularSeries,
    test: IrregularSeries,
    t_split: float,
    config: LatentTrainConfig | None = None,
    progress: Progress | None = None,
) -> LatentSDEResult:
    """Fit a latent SDE by maximising the annealed ELBO; evaluate on ``test``.

    ``config`` None means ``LatentTrainConfig()``.
    """
    config = LatentTrainConfig() if config is None else config
    history, seconds = fit_irregular(model, train, t_split, config, progress)
    m = evaluate_latent_sde(model, test, t_split, config.eval_samples * 2, config.seed)
    return LatentSDEResult(
        heldout_nelbo=heldout_elbo(model, test, config.eval_samples, config.seed), **m,
        train_history=tuple(history), seconds=seconds,
    )  # fmt: skip


__all__ = [
    "LatentSDEResult",
    "evaluate_latent_sde",
    "heldout_elbo",
    "iid_gaussian_nll",
    "train_latent_sde",
]
