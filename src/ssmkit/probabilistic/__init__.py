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
from ssmkit.probabilistic.simsmoother import simulation_smoother
from ssmkit.probabilistic.sqrt_smoother import SqrtSmootherResult, sqrt_rts_smoother

__all__ = [
    "FilterResult",
    "LinearGaussianSSM",
    "ParticleFilterResult",
    "ParticleModel",
    "SmootherResult",
    "SqrtSmootherResult",
    "fit_em",
    "kalman_filter",
    "log_likelihood",
    "particle_filter",
    "rts_smoother",
    "sample",
    "simulation_smoother",
    "sqrt_rts_smoother",
]
