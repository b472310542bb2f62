"""Bootstrap particle filter and forward-filtering backward-simulation (FFBSi) smoother.

For x_1 ~ p(x_1), x_{t+1} ~ p(x_{t+1} | x_t), y_t ~ p(y_t | x_t), the bootstrap filter of
Gordon, Salmond & Smith (1993) (notation of Doucet & Johansen 2009, "A tutorial on particle
filtering and smoothing", sec. 4) keeps N weighted particles per series:

    resample (only when ESS = 1 / sum_i W_i^2 < ess_threshold * N), then propagate
    x_t^i ~ p(x_t | x_{t-1}^{a_i}); weight log w_t^i = log W_{t-1}^{a_i} + log p(y_t | x_t^i);
    log p(y_t | y_{1:t-1}) ~= logsumexp_i log w_t^i  (W normalised, so the sum is the increment)

and ``log_likelihood`` = sum_t of the increments (the log of an unbiased estimate of
p(y_{1:T})). Resampling draws ancestors by inverting the cumulative weights at N uniforms:
one shared offset (U + i) / N ("systematic", Kitagawa 1996) or N independent ones
("multinomial"). FFBSi (Godsill, Doucet & West 2004) draws smoothed trajectories backwards with
weights W_t^i p(x~_{t+1} | x_t^i).

A model is either a ``LinearGaussianSSM`` (wrapped by ``LinearGaussianParticleModel``) or any
object with the four methods of ``ParticleModel``. Missing observations: a step whose y_t is
all NaN adds nothing (the weights carry over); partly missing vectors are handed to the model
(the linear Gaussian wrapper marginalises the missing entries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ssmkit.core.checks import check_choice, check_int, check_tensor
from ssmkit.core.gaussian import _gauss_loglik, cholesky, mask_observation, mv, psd_factor
from ssmkit.probabilistic.model import LinearGaussianSSM, check_observations, prepare

Tensor = torch.Tensor
RESAMPLING = ("systematic", "multinomial")


@runtime_checkable
class ParticleModel(Protocol):
    """What ``particle_filter`` needs of a state space model (axes: b series, N particles,
    n state size, o observation size; ``t`` is the 0-based step index).

    * ``sample_initial(b, N, generator) -> (b, N, n)``: draws of x_1.
    * ``sample_transition(x, t, generator) -> (b, N, n)``: x_{t+1} ~ p(. | x_t = x), x (b, N, n).
    * ``transition_log_prob(x_next, x, t) -> (*)``: log p(x_{t+1} = x_next | x_t = x) for
      tensors broadcasting to (*, n) (FFBSi passes (b, M, 1, n) and (b, 1, N, n)).
    * ``observation_log_prob(y, x, t) -> (b, N)``: log p(y_t = y | x_t = x), y (b, o), x (b, N, n);
      y may hold NaN at missing entries when some but not all of y_t is missing.

    Draw all randomness with ``generator`` (it may be None) to make runs reproducible.
    """

    def sample_initial(self, b: int, N: int, generator: torch.Generator | None) -> Tensor: ...

    def sample_transition(self, x: Tensor, t: int, generator: torch.Generator | None) -> Tensor: ...

    def transition_log_prob(self, x_next: Tensor, x: Tensor, t: int) -> Tensor: ...

    def observation_log_prob(self, y: Tensor, x: Tensor, t: int) -> Tensor: ...


def _randn(shape, generator, like: Tensor) -> Tensor:
    dev = like.device if generator is None else generator.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


def _rand(shape, generator, like: Tensor) -> Tensor:
    dev = like.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


class LinearGaussianParticleModel:
    """A ``LinearGaussianSSM`` as a ``ParticleModel`` (for tests against the Kalman filter).

    Args:
        model: the SSM; y (b, l, o) fixes the broadcast of its matrices (inputs u are not
            supported, and the diffuse part of the prior is ignored).
    """

    def __init__(self, model: LinearGaussianSSM, y: Tensor) -> None:
        if model.B is not None or model.D is not None:
            raise ValueError("particle_filter: a LinearGaussianSSM with inputs (B or D) is not "
                             "supported; fold B u into a time-varying model instead")  # fmt: skip
        p = prepare(model, y)
        self.p = p
        self.LQ, self.L0 = psd_factor(p.Q), psd_factor(p.P0)  # (b, l, n, n), (b, n, n)

    def sample_initial(self, b: int, N: int, generator: torch.Generator | None) -> Tensor:
        eps = _randn((b, N, self.p.m0.shape[-1]), generator, self.p.m0)
        return self.p.m0[:, None] + eps @ self.L0.mT  # (b, N, n)

    def sample_transition(self, x: Tensor, t: int, generator: torch.Generator | None) -> Tensor:
        eps = _randn(x.shape, generator, x)
        return x @ self.p.F[:, t].mT + eps @ self.LQ[:, t].mT  # (b, N, n)

    def transition_log_prob(self, x_next: Tensor, x: Tensor, t: int) -> Tensor:
        F, Q = self.p.F[:, t], self.p.Q[:, t]  # (b, n, n)
        extra = x.ndim - 2  # particle axes between b and n
        F, Q = (
            F.reshape(F.shape[:1] + (1,) * extra + F.shape[1:]),
            Q.reshape(Q.shape[:1] + (1,) * extra + Q.shape[1:]),
        )
        L = cholesky(Q, "Q (FFBSi needs a positive definite process noise)")
        v = x_next - mv(F, x)  # (b, *, n)
        return _gauss_loglik(v, L.expand(v.shape[:-1] + L.shape[-2:]), None)

    def observation_log_prob(self, y: Tensor, x: Tensor, t: int) -> Tensor:
        H, R = self.p.H[:, t, None], self.p.R[:, t, None]  # (b, 1, o, n), (b, 1, o, o)
        nan = torch.isnan(y)
        mask = None if not bool(nan.any()) else ~nan[:, None].expand(-1, x.shape[1], -1)
        y = y[:, None].expand(-1, x.shape[1], -1)  # (b, N, o)
        Hx = mv(H, x)  # (b, N, o)
        y0, _, R0 = mask_observation(y, H.expand(Hx.shape + H.shape[-1:]), R, mask)
        Hx0 = Hx if mask is None else Hx * mask.to(Hx.dtype)
        L = cholesky(R0, "R")
        return _gauss_loglik(y0 - Hx0, L.expand(Hx.shape + L.shape[-1:]), mask)


@dataclass(frozen=True)
class ParticleFilterResult:
    """Output of ``particle_filter``.

    Attributes:
        log_likelihood: (b,) log of the unbiased estimate of p(y_{1:l}).
        loglik: (b, l) per-step increments log p^(y_t | y_{1:t-1}).
        particles: (b, l, N, n) x_t^i after propagation (before any resampling at t+1).
        log_weights: (b, l, N) normalised filtered log-weights log W_t^i.
        ancestors: (b, l, N) index at t-1 of each particle's parent (arange at t = 0).
        resampled: (b, l) bool, True where step t resampled before propagating.
        ess: (b, l) effective sample size 1 / sum_i W_t^i^2 after weighting.
    """

    log_likelihood: Tensor
    loglik: Tensor
    particles: Tensor
    log_weights: Tensor
    ancestors: Tensor
    resampled: Tensor
    ess: Tensor

    def filtered_mean(self) -> Tensor:
        """E[x_t | y_{1:t}] ~= sum_i W_t^i x_t^i: (b, l, n)."""
        return (self.log_weights.exp().unsqueeze(-1) * self.particles).sum(-2)


def resample(log_weights: Tensor, method: str, generator: torch.Generator | None) -> Tensor:
    """Ancestor indices (b, N) drawn from normalised log-weights (b, N).

    "systematic": uniforms (U_b + i) / N with one U_b per series; "multinomial": N iid uniforms.
    Index i is chosen where the cumulative weight first reaches the uniform.
    """
    check_choice("resampling", method, RESAMPLING)
    b, N = log_weights.shape
    if method == "systematic":
        u = (_rand((b, 1), generator, log_weights) + torch.arange(N, device=log_weights.device)) / N
    else:
        u = _rand((b, N), generator, log_weights)
    cdf = torch.cumsum(log_weights.exp(), -1)  # (b, N)
    cdf = cdf / cdf[:, -1:]  # the last entry is exactly 1: no index past N - 1
    return torch.searchsorted(cdf, u.contiguous()).clamp_max(N - 1)


def _normalise(logw: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """(log W normalised (b, N), log-sum (b,)); raise on degenerate or NaN weights."""
    if bool(torch.isnan(logw).any()):
        raise ValueError(f"particle_filter: NaN log-weight at step t = {t} (check the model's "
                         "observation_log_prob)")  # fmt: skip
    lse = torch.logsumexp(logw, -1)  # (b,)
    if not bool(torch.isfinite(lse).all()):
        bad = [int(i) for i in torch.nonzero(~torch.isfinite(lse)).flatten()[:5]]
        raise ValueError(
            f"particle_filter: degenerate weights at step t = {t} for series {bad}: every "
            "particle has log-weight -inf (or the sum overflowed); the observation is impossible "
            "under all particles: use more particles or a wider observation density"
        )
    return logw - lse[:, None], lse


def particle_filter(
    model: ParticleModel | LinearGaussianSSM,
    y: Tensor,
    n_particles: int,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> ParticleFilterResult:
    """Bootstrap particle filter, batched over series (see the module docstring).

    Args:
        model: a ``ParticleModel`` or a ``LinearGaussianSSM``.
        y: (b, l, o) observations, NaN where missing (a fully missing step adds nothing).
        n_particles: N >= 1 particles per series.
        resampling: "systematic" or "multinomial".
        ess_threshold: resample when ESS < ess_threshold * N (0: never; 1: whenever the
            weights are not all equal).
        generator: random generator for reproducible runs (any device; draws are moved to y's).

    Returns:
        ``ParticleFilterResult`` (``log_likelihood`` has shape (b,)).
    """
    check_int("n_particles", n_particles, minimum=1)
    check_choice("resampling", resampling, RESAMPLING)
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, int | float):
        raise TypeError(f"ess_threshold must be a number in [0, 1], got {ess_threshold!r}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
    check_tensor("y", y)
    if y.ndim != 3:
        raise ValueError(f"y must have shape (b, l, o), got shape {tuple(y.shape)}")
    check_observations(y, y.shape[-1])
    if isinstance(model, LinearGaussianSSM):
        model = LinearGaussianParticleModel(model, y)
    elif not isinstance(model, ParticleModel):
        raise TypeError(
            "model must be a LinearGaussianSSM or implement the ParticleModel protocol "
            f"(sample_initial, sample_transition, transition_log_prob, observation_log_prob), "
            f"got {type(model).__name__}"
        )
    b, l, _ = y.shape
    N = n_particles
    missing = torch.isnan(y).all(-1)  # (b, l) steps without any observation
    arange = torch.arange(N, device=y.device).expand(b, N)
    logW = torch.full((b, N), -math.log(N), dtype=y.dtype, device=y.device)
    xs, lws, ancs, res, esss, lls = [], [], [], [], [], []
    x = None
    for t in range(l):
        if t == 0:
            x = model.sample_initial(b, N, generator)
            anc, do = arange, torch.zeros(b, dtype=torch.bool, device=y.device)
        else:
            ess = 1.0 / logW.exp().pow(2).sum(-1)  # (b,)
            do = ess < ess_threshold * N
            if bool(do.any()):
                anc = torch.where(do[:, None], resample(logW, resampling, generator), arange)
                logW = torch.where(do[:, None], torch.full_like(logW, -math.log(N)), logW)
                x = torch.gather(x, 1, anc[..., None].expand_as(x))
            else:
                anc = arange
            x = model.sample_transition(x, t - 1, generator)
        if x.shape[:2] != (b, N):
            raise ValueError(f"the model returned particles of shape {tuple(x.shape)}, "
                             f"expected (b, N, n) = ({b}, {N}, n)")  # fmt: skip
        obs_ll = model.observation_log_prob(y[:, t], x, t)  # (b, N)
        obs_ll = torch.where(missing[:, t, None], torch.zeros_like(obs_ll), obs_ll)
        logW, lse = _normalise(logW + obs_ll, t)
        xs.append(x)
        lws.append(logW)
        ancs.append(anc)
        res.append(do)
        esss.append(1.0 / logW.exp().pow(2).sum(-1))
        lls.append(lse)
    loglik = torch.stack(lls, 1)  # (b, l)
    return ParticleFilterResult(
        log_likelihood=loglik.sum(-1), loglik=loglik, particles=torch.stack(xs, 1),
        log_weights=torch.stack(lws, 1), ancestors=torch.stack(ancs, 1),
        resampled=torch.stack(res, 1), ess=torch.stack(esss, 1),
    )  # fmt: skip


def ffbsi_smoother(
    model: ParticleModel | LinearGaussianSSM,
    y: Tensor,
    filtered: ParticleFilterResult,
    n_trajectories: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Forward-filtering backward-simulation: smoothed trajectories from a filter run.

    At t = l-1 draw index j ~ W_{l-1}; then for t = l-2, ..., 0 draw j ~
    W_t^i p(x~_{t+1} | x_t^i) for each trajectory (cost O(M N l)).

    Args:
        model: the model the filter ran on; y: its (b, l, o) observations.
        filtered: the ``particle_filter`` result.
        n_trajectories: M >= 1 trajectories per series.
        generator: random generator.

    Returns:
        (b, M, l, n) draws from p(x_{1:l} | y_{1:l}) (approximately).
    """
    check_int("n_trajectories", n_trajectories, minimum=1)
    if not isinstance(filtered, ParticleFilterResult):
        raise TypeError(f"filtered must be a ParticleFilterResult, got {type(filtered).__name__}")
    if isinstance(model, LinearGaussianSSM):
        model = LinearGaussianParticleModel(model, y)
    X, logW = filtered.particles, filtered.log_weights  # (b, l, N, n), (b, l, N)
    b, l, N, n = X.shape
    M = n_trajectories

    def draw(logp: Tensor) -> Tensor:  # (b, M, N) unnormalised -> (b, M) indices
        flat = logp.reshape(b * M, N)
        flat = flat - torch.logsumexp(flat, -1, keepdim=True)
        return resample(flat, "multinomial", generator)[:, 0].reshape(b, M)

    j = draw(logW[:, -1, None].expand(b, M, N))
    x_next = torch.gather(X[:, -1], 1, j[..., None].expand(b, M, n))  # (b, M, n)
    out = [x_next]
    for t in range(l - 2, -1, -1):
        logp = logW[:, t, None] + model.transition_log_prob(
            x_next[:, :, None], X[:, t, None], t
        )  # (b, M, N)
        if not bool(torch.isfinite(torch.logsumexp(logp, -1)).all()):
            raise ValueError(f"ffbsi_smoother: no particle at t = {t} can reach the trajectory")
        j = draw(logp)
        x_next = torch.gather(X[:, t], 1, j[..., None].expand(b, M, n))
        out.append(x_next)
    return torch.stack(out[::-1], 2)  # (b, M, l, n)


__all__ = [
    "LinearGaussianParticleModel",
    "ParticleFilterResult",
    "ParticleModel",
    "ffbsi_smoother",
    "particle_filter",
    "resample",
]
