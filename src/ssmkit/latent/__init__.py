"""Deep latent state space models: deep Markov model and latent ODE, with the shared ELBO.

* ``elbo``: the sequential ELBO (masks, KL annealing) and the Gaussian/Bernoulli densities.
* ``dmm``: deep Markov model / deep Kalman filter with a structured inference network.
* ``latent_ode``: latent ODE with an ODE-RNN encoder for irregularly sampled series.
* ``data``: generated data sets and the baselines; ``train``: training loops and metrics.
"""

from ssmkit.latent.data import (
    IrregularSeries,
    SequenceSet,
    iid_baseline_nll,
    linear_interp_baseline,
    make_nonlinear_sequences,
    make_spirals,
    masked_mse,
    split_interp_extrap,
    to_union_grid,
)
from ssmkit.latent.dmm import DeepMarkovModel, DMMConfig
from ssmkit.latent.elbo import (
    ElboTerms,
    bernoulli_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    kl_anneal,
    sequential_elbo,
)
from ssmkit.latent.latent_ode import LatentODE, LatentODEConfig
from ssmkit.latent.train import (
    DMMResult,
    LatentODEResult,
    TrainConfig,
    evaluate_latent_ode,
    train_dmm,
    train_latent_ode,
)

__all__ = [
    "DMMConfig",
    "DMMResult",
    "DeepMarkovModel",
    "ElboTerms",
    "IrregularSeries",
    "LatentODE",
    "LatentODEConfig",
    "LatentODEResult",
    "SequenceSet",
    "TrainConfig",
    "bernoulli_log_prob",
    "evaluate_latent_ode",
    "gaussian_kl",
    "gaussian_log_prob",
    "iid_baseline_nll",
    "kl_anneal",
    "linear_interp_baseline",
    "make_nonlinear_sequences",
    "make_spirals",
    "masked_mse",
    "sequential_elbo",
    "split_interp_extrap",
    "to_union_grid",
    "train_dmm",
    "train_latent_ode",
]
