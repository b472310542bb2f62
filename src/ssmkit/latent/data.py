"""Generated data sets for the latent models, and the simple baselines they must beat.

* ``make_nonlinear_sequences``: sequences from a known nonlinear state space model with
  variable lengths (right padded), for the deep Markov model.
* ``make_spirals``: noisy 2-D spirals observed at irregular times (each series at its own
  random subset of a time grid), clockwise and counter-clockwise, as in the latent-ODE
  experiment of Chen et al. 2018 (arXiv 1806.07366), for the latent ODE.
* ``to_union_grid``: series with arbitrary, different timestamps -> one sorted time grid with
  an observation mask (the batch format of the latent ODE, Rubanova et al. 2019).
* Baselines: an iid per-step fit (``iid_baseline_nll``) for the DMM's NLL bound; linear
  interpolation with the last value held beyond the data (``linear_interp_baseline``) for the
  latent ODE's interpolation / extrapolation error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_choice, check_finite, check_int, check_tensor

Tensor = torch.Tensor


@dataclass(frozen=True)
class SequenceSet:
    """Right-padded sequences with their true latent states.

    Attributes:
        x: (b, l, x) observations, 0 at padded steps.
        mask: (b, l) bool, True at valid steps (a prefix of each row).
        z: (b, l, 2) the latent states that generated x.
    """

    x: Tensor
    mask: Tensor
    z: Tensor


def make_nonlinear_sequences(
    n_seq: int,
    length: int,
    x_dim: int = 6,
    likelihood: str = "gaussian",
    min_length: int | None = None,
    process_std: float = 0.1,
    obs_std: float = 0.1,
    seed: int = 0,
    process_seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SequenceSet:
    """Sample sequences of a 2-D nonlinear state space model with a known generative process.

    z_1 ~ N(0, I);  z_t = 1.2 R(0.4) tanh(z_{t-1}) + process_std * w_t  (R: rotation matrix),
    features phi(z) = (z_1, z_2, z_1 z_2, sin(2 z_1));  x_t = W phi(z_t) + obs_std * v_t
    (Gaussian) or x_t ~ Bernoulli(sigmoid(3 W phi(z_t))) (Bernoulli), with W (x_dim, 4)
    drawn from ``process_seed`` (keep it fixed across train and test sets). The tanh map has
    a stable limit cycle, so the series oscillate with a phase the previous steps reveal:
    structure an iid model cannot capture.

    Args:
        n_seq: number of sequences b.
        length: padded length l.
        x_dim: observation size.
        likelihood: "gaussian" or "bernoulli".
        min_length: lengths are uniform in [min_length, length]; None = all of length l.
        process_std, obs_std: noise standard deviations of the transition and emission.
        seed: seed of the states, noise and lengths.
        process_seed: seed of the emission matrix W (the generative process itself).
        dtype: floating dtype of the outputs.

    Returns:
        ``SequenceSet`` with x (b, l, x_dim), mask (b, l), z (b, l, 2).
    """
    check_int("n_seq", n_seq, minimum=1)
    check_int("length", length, minimum=1)
    check_int("x_dim", x_dim, minimum=1)
    check_choice("likelihood", likelihood, ("gaussian", "bernoulli"))
    lo = length if min_length is None else check_int("min_length", min_length, minimum=1)
    if lo > length:
        raise ValueError(f"min_length must be <= length = {length}, got {min_length}")
    gw = torch.Generator().manual_seed(process_seed)
    W = torch.randn(x_dim, 4, generator=gw, dtype=torch.float64) / 2
    g = torch.Generator().manual_seed(seed)
    c, s = math.cos(0.4), math.sin(0.4)
    R = 1.2 * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    z = torch.empty(n_seq, length, 2, dtype=torch.float64)
    z_t = torch.randn(n_seq, 2, generator=g, dtype=torch.float64)
    for t in range(length):
        if t > 0:
            z_t = torch.tanh(z_t) @ R.T + process_std * torch.randn(n_seq, 2, generator=g).double()
        z[:, t] = z_t
    phi = torch.stack([z[..., 0], z[..., 1], z[..., 0] * z[..., 1], torch.sin(2 * z[..., 0])], -1)
    mean = phi @ W.T  # (b, l, x)
    if likelihood == "gaussian":
        x = mean + obs_std * torch.randn(mean.shape, generator=g, dtype=torch.float64)
    else:
        x = torch.bernoulli(torch.sigmoid(3 * mean), generator=g)
    lengths = torch.randint(lo, length + 1, (n_seq,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]  # (b, l)
    x = torch.where(mask[..., None], x, torch.zeros_like(x))
    return SequenceSet(x=x.to(dtype), mask=mask, z=z.to(dtype))


def iid_baseline_nll(train: SequenceSet, test: SequenceSet, likelihood: str = "gaussian") -> float:
    """NLL in nats per time step of an iid per-step model fitted to the valid training steps.

    Gaussian: independent N(mean_i, var_i) per channel (maximum likelihood); Bernoulli: a
    frequency per channel (clamped to [1e-3, 1 - 1e-3]). Ignores time entirely: the number a
    sequence model has to beat.
    """
    check_choice("likelihood", likelihood, ("gaussian", "bernoulli"))
    xs = train.x[train.mask].double()  # (n, x)
    xt = test.x[test.mask].double()
    if likelihood == "gaussian":
        mean, var = xs.mean(0), xs.var(0, unbiased=False).clamp_min(1e-12)
        ll = -0.5 * (math.log(2 * math.pi) + var.log() + (xt - mean) ** 2 / var).sum(-1)
    else:
        p = xs.mean(0).clamp(1e-3, 1 - 1e-3)
        ll = (xt * p.log() + (1 - xt) * (1 - p).log()).sum(-1)
    return float(-ll.mean())


@dataclass(frozen=True)
class IrregularSeries:
    """Irregularly observed series on one shared, sorted time grid.

    Attributes:
        times: (u,) strictly increasing time grid (the union of all observation times).
        values: (b, u, d) observations, NaN where a series has no observation.
        mask: (b, u) bool, True where a series is observed.
        clean: (b, u, d) the noise-free values (generated data; NaN where unknown).
    """

    times: Tensor
    values: Tensor
    mask: Tensor
    clean: Tensor


def make_spirals(
    n_series: int,
    n_grid: int = 100,
    n_obs: int = 40,
    t_max: float = 5.0,
    noise_std: float = 0.1,
    damping: float = 0.15,
    omega: float = 1.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> IrregularSeries:
    """Noisy 2-D spirals, half clockwise and half counter-clockwise, irregularly sampled.

    Series k follows z' = [[-damping, -s_k omega], [s_k omega, -damping]] z, i.e.
    z(t) = r_k exp(-damping t) (cos(s_k omega t + phi_k), sin(s_k omega t + phi_k)) with a random
    direction s_k = +-1, radius r_k ~ U(1, 2) and phase phi_k ~ U(0, 2 pi), observed at its own
    ``n_obs`` random points of an ``n_grid``-point grid on [0, t_max] plus N(0, noise_std^2) noise.

    Returns:
        ``IrregularSeries`` with times (n_grid,), values/clean (b, n_grid, 2), mask (b, n_grid).
    """
    check_int("n_series", n_series, minimum=1)
    check_int("n_grid", n_grid, minimum=2)
    check_int("n_obs", n_obs, minimum=2)
    if n_obs > n_grid:
        raise ValueError(f"n_obs must be <= n_grid = {n_grid}, got {n_obs}")
    g = torch.Generator().manual_seed(seed)
    times = torch.linspace(0, t_max, n_grid, dtype=torch.float64)
    sign = torch.where(torch.rand(n_series, generator=g) < 0.5, -1.0, 1.0).double()
    radius = 1 + torch.rand(n_series, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n_series, generator=g, dtype=torch.float64)
    angle = sign[:, None] * omega * times[None] + phase[:, None]  # (b, u)
    r = radius[:, None] * torch.exp(-damping * times[None])
    clean = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1)  # (b, u, 2)
    noisy = clean + noise_std * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    keys = torch.rand(n_series, n_grid, generator=g)
    chosen = keys.argsort(1)[:, :n_obs]
    mask = torch.zeros(n_series, n_grid, dtype=torch.bool).scatter(1, chosen, True)
    nan = torch.full_like(noisy, float("nan"))
    values = torch.where(mask[..., None], noisy, nan)
    return IrregularSeries(times.to(dtype), values.to(dtype), mask, clean.to(dtype))


def to_union_grid(
    times: Sequence[Tensor], values: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Put series with their own timestamps on the sorted union of all timestamps.

    Args:
        times: b tensors (l_i,), each strictly increasing.
        values: b tensors (l_i, d).

    Returns:
        times (u,), values (b, u, d) with NaN where unobserved, mask (b, u).
    """
    if len(times) != len(values) or len(times) == 0:
        raise ValueError(f"times and values must be equally long non-empty lists, got "
                         f"{len(times)} and {len(values)}")  # fmt: skip
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        check_tensor(f"times[{i}]", t)
        check_tensor(f"values[{i}]", v)
        if (
            t.ndim != 1
            or v.ndim != 2
            or v.shape[0] != t.shape[0]
            or v.shape[1] != values[0].shape[1]
        ):
            raise ValueError(
                f"times[{i}] must be (l,) and values[{i}] (l, d) with d = {values[0].shape[1]}, "
                f"got {tuple(t.shape)} and {tuple(v.shape)}"
            )
        check_finite(f"times[{i}]", t)
        if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
            raise ValueError(f"times[{i}] must be strictly increasing")
    grid = torch.unique(torch.cat(list(times)))  # sorted
    b, u, d = len(times), grid.numel(), values[0].shape[1]
    out = torch.full((b, u, d), float("nan"), dtype=values[0].dtype)
    mask = torch.zeros(b, u, dtype=torch.bool)
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        idx = torch.searchsorted(grid, t.to(grid.dtype))
        out[i, idx] = v
        mask[i, idx] = True
    return grid, out, mask


def split_interp_extrap(
    data: IrregularSeries, t_split: float, encoder_fraction: float = 0.5, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Masks for the interpolation / extrapolation evaluation of Rubanova et al. (sec. 4).

    Points at t <= t_split are split at random into what the encoder sees (at least 2 per
    series) and interpolation targets; points at t > t_split are extrapolation targets.

    Returns:
        encoder_mask, interp_mask, extrap_mask: (b, u) bool each, disjoint.
    """
    if not 0 < encoder_fraction < 1:
        raise ValueError(f"encoder_fraction must be in (0, 1), got {encoder_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    early = data.mask & (data.times <= t_split)[None]  # (b, u)
    if bool((early.sum(1) < 2).any()):
        raise ValueError(f"every series needs >= 2 observations at t <= t_split = {t_split}")
    keep = torch.rand(data.mask.shape, generator=g) < encoder_fraction
    enc = early & keep
    # guarantee two encoder points per series: its first and last early observation
    first = early.float().argmax(1)
    last = early.shape[1] - 1 - early.flip(1).float().argmax(1)
    rows = torch.arange(early.shape[0])
    enc[rows, first] = True
    enc[rows, last] = True
    return enc, early & ~enc, data.mask & ~early


def linear_interp_baseline(times: Tensor, values: Tensor, obs_mask: Tensor) -> Tensor:
    """Per series, linear interpolation of the observed points; constant beyond them.

    Beyond the last observation this is the last value carried forward (the extrapolation
    baseline), before the first one the first value.

    Args:
        times: (u,) grid. values: (b, u, d), used where ``obs_mask``. obs_mask: (b, u).

    Returns:
        (b, u, d) predictions at every grid time.
    """
    out = torch.empty_like(values)
    for i in range(values.shape[0]):
        t_obs, v_obs = times[obs_mask[i]], values[i, obs_mask[i]]  # (k,), (k, d)
        if t_obs.numel() == 0:
            raise ValueError(f"series {i} has no observation to interpolate")
        j = torch.searchsorted(t_obs, times).clamp(1, max(t_obs.numel() - 1, 1))  # (u,)
        t0, t1 = t_obs[j - 1], t_obs[j.clamp(max=t_obs.numel() - 1)]
        w = ((times - t0) / (t1 - t0).clamp_min(1e-12)).clamp(0, 1)  # (u,)
        v0, v1 = v_obs[j - 1], v_obs[j.clamp(max=t_obs.numel() - 1)]
        out[i] = v0 + w[:, None] * (v1 - v0)
        out[i, times < t_obs[0]] = v_obs[0]
    return out


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """Mean squared error over the entries of the (b, u) ``mask`` (all channels)."""
    diff = (pred - target)[mask]  # (n, d)
    if diff.numel() == 0:
        raise ValueError("masked_mse: the mask selects no entries")
    return float((diff.double() ** 2).mean())


__all__ = [
    "IrregularSeries",
    "SequenceSet",
    "iid_baseline_nll",
    "linear_interp_baseline",
    "make_nonlinear_sequences",
    "make_spirals",
    "masked_mse",
    "split_interp_extrap",
    "to_union_grid",
]
