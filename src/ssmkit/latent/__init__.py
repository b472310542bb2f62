"""Deep latent state space models: deep Markov model and latent ODE, with the shared ELBO.

* ``elbo``: the sequential ELBO (masks, KL annealing) and the Gaussian/Bernoulli densities.
* ``dmm``: deep Markov model / deep Kalman filter with a structured inference network.
* ``latent_ode``: latent ODE with an ODE-RNN encoder for irregularly sampled series.
* ``latent_sde``: variational latent SDE (Li et al. 2020) with stable SDE priors.
* ``cd_ssm``: continuous-discrete linear SDE filtering and the NCDSSM-style model.
* ``gpvae``: Matern GPs as linear SDEs and the Markovian GP-VAE.
* ``encoders``: ssmkit sequence layers (S4D, LRU, Mamba) as inference networks.
* ``data``: generated data sets and the baselines; ``train``: training loops and metrics.
"""

from ssmkit.latent.cd_ssm import CDSSM, CDSSMConfig, cd_kalman_filter, cd_rts_smoother
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
from ssmkit.latent.encoders import SequenceEncoder
from ssmkit.latent.gpvae import GPVAE, GPVAEConfig, matern_sde
from ssmkit.latent.latent_ode import LatentODE, LatentODEConfig
from ssmkit.latent.latent_sde import LatentSDE, LatentSDEConfig
from ssmkit.latent.train import (
    DMMResult,
    LatentODEResult,
    LatentTrainConfig,
    evaluate_latent_ode,
    train_dmm,
    train_latent_ode,
)

__all__ = [
    "CDSSM",
    "GPVAE",
    "CDSSMConfig",
    "DMMConfig",
    "DMMResult",
    "DeepMarkovModel",
    "ElboTerms",
    "GPVAEConfig",
    "IrregularSeries",
    "LatentODE",
    "LatentODEConfig",
    "LatentODEResult",
    "LatentSDE",
    "LatentSDEConfig",
    "LatentTrainConfig",
    "SequenceEncoder",
    "SequenceSet",
    "bernoulli_log_prob",
    "cd_kalman_filter",
    "cd_rts_smoother",
    "evaluate_latent_ode",
    "gaussian_kl",
    "gaussian_log_prob",
    "iid_baseline_nll",
    "kl_anneal",
    "linear_interp_baseline",
    "make_nonlinear_sequences",
    "make_spirals",
    "masked_mse",
    "matern_sde",
    "sequential_elbo",
    "split_interp_extrap",
    "to_union_grid",
    "train_dmm",
    "train_latent_ode",
]
