"""Simulation smoother: draws of the states from p(x_1..x_l | y) (Durbin & Koopman 2002).

The mean-corrected algorithm (Durbin & Koopman 2002, sec. 2.3; Durbin & Koopman 2012,
sec. 4.9.3):

1. draw x+ and y+ from the model with a zero mean (no inputs, m0 = 0), with y+ missing
   wherever y is;
2. smooth both: x_hat = E[x | y] (with the model's inputs and mean) and x_hat+ = E[x+ | y+];
3. x_tilde = x_hat + (x+ - x_hat+).

x+ - x_hat+ is the smoothing error of a path drawn from the model; it is independent of y
and has covariance Var(x | y) (the posterior covariance of a linear Gaussian model does not
depend on the data), so x_tilde ~ p(x | y). Only the smoother's means are needed: no
disturbance smoother or backward sampling is written here, the RTS smoother is called.
Draws are batched: the s draws of each of the b series go through one smoother run on
b * s series. A diffuse part of the prior is handled as the smoother handles it (the
smoothing error does not depend on the value of the diffuse states, so x+ starts from
the proper part of the prior only).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ssmkit.core.checks import check_int
from ssmkit.probabilistic.filters import rts_smoother
from ssmkit.probabilistic.model import LinearGaussianSSM, check_observations, sample

Tensor = torch.Tensor


def _repeat_series(model: LinearGaussianSSM, b: int, s: int) -> LinearGaussianSSM:
    """The model for b * s series (series-major: series i is rows i*s .. i*s + s - 1)."""

    def rep(x: Tensor | None, series_ndim: int) -> Tensor | None:
        if x is None or x.ndim < series_ndim or x.shape[0] == 1:  # shared: broadcasts
            return x
        return x.repeat_interleave(s, 0)

    return replace(
        model,
        F=rep(model.F, 4),
        H=rep(model.H, 4),
        Q=rep(model.Q, 4),
        R=rep(model.R, 4),
        B=rep(model.B, 4),
        D=rep(model.D, 4),
        m0=rep(model.m0, 2),
        P0=rep(model.P0, 3),
    )


def simulation_smoother(
    model: LinearGaussianSSM,
    y: Tensor,
    draws: int,
    u: Tensor | None = None,
    generator: torch.Generator | None = None,
    method: str = "sequential",
    diffuse: str = "exact",
    kappa: float = 1e6,
) -> Tensor:
    """Draws x_tilde ~ p(x_1..x_l | y_1..y_l), the mean-corrected simulation smoother.

    Args:
        model: the SSM; matrices broadcast against (b, l) (see :mod:`.model`).
        y: (b, l, o) observations, NaN where missing (partly observed vectors allowed).
        draws: s, the number of draws per series (>= 1).
        u: (b, l, m) inputs when the model has B or D.
        generator: a seeded ``torch.Generator`` (CPU) for reproducible draws.
        method, diffuse, kappa: the smoother used, as in :func:`.filters.rts_smoother`.

    Returns:
        (b, s, l, n) draws of the state paths; their mean over s tends to the RTS smoothed
        mean and their covariance at each t to the smoothed covariance.
    """
    check_int("draws", draws, 1)
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"model must be a LinearGaussianSSM, got {type(model).__name__}")
    check_observations(y, model.o)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    b, l, _ = y.shape
    n = model.n
    x_hat = rts_smoother(model, y, u, method, diffuse, kappa).m  # (b, l, n); checks shapes
    zero_mean = replace(model, B=None, D=None, m0=torch.zeros(n, dtype=y.dtype, device=y.device))
    plus = _repeat_series(zero_mean, b, draws)
    x_plus, y_plus = sample(plus, b * draws, l, generator=generator, dtype=y.dtype)
    missing = torch.isnan(y).repeat_interleave(draws, 0)  # (b s, l, o)
    y_plus = y_plus.masked_fill(missing, float("nan"))
    x_hat_plus = rts_smoother(plus, y_plus, None, method, diffuse, kappa, validate=False).m
    error = (x_plus - x_hat_plus).reshape(b, draws, l, n)  # (b, s, l, n)
    return x_hat.unsqueeze(1) + error
