"""Linear Gaussian state space models: filtering, smoothing, likelihood, fitting, forecasting."""

from ssmkit.probabilistic.em import fit_em
from ssmkit.probabilistic.filters import (
    FilterResult,
    SmootherResult,
    kalman_filter,
    log_likelihood,
    rts_smoother,
)
from ssmkit.probabilistic.model import LinearGaussianSSM, sample
from ssmkit.probabilistic.particle import ParticleFilterResult, ParticleModel, particle_filter

__all__ = [
    "FilterResult",
    "LinearGaussianSSM",
    "ParticleFilterResult",
    "ParticleModel",
    "SmootherResult",
    "fit_em",
    "kalman_filter",
    "log_likelihood",
    "particle_filter",
    "rts_smoother",
    "sample",
]
