"""Linear Gaussian state space models: filtering, smoothing, likelihood, fitting, forecasting."""

from ssmkit.probabilistic.filters import (
    FilterResult,
    SmootherResult,
    kalman_filter,
    log_likelihood,
    rts_smoother,
)
from ssmkit.probabilistic.model import LinearGaussianSSM, sample

__all__ = [
    "FilterResult",
    "LinearGaussianSSM",
    "SmootherResult",
    "kalman_filter",
    "log_likelihood",
    "rts_smoother",
    "sample",
]
