"""The linear Gaussian state space model and the normalised form every algorithm runs on.

    x_1 ~ N(m0, P0)                                  (plus kappa * P0_diffuse, kappa -> inf)
    x_{t+1} = F_t x_t + B_t u_t + w_t,   w_t ~ N(0, Q_t)
    y_t     = H_t x_t + D_t u_t + v_t,   v_t ~ N(0, R_t)

(Durbin & Koopman 2012, eq. 3.1 numbering: ``m0, P0`` are the prior of the FIRST state, so a
filter starts with an update.) Axes: ``b`` series, ``l`` time steps, ``n`` state size, ``o``
observation size, ``m`` inputs. Every matrix may carry leading axes that broadcast against
``(b, l)`` right-aligned: ``F`` of shape (n, n) is time-invariant, (l, n, n) time-varying,
(b, l, n, n) per series and step, (b, 1, n, n) per series only. ``F_t`` maps x_t to x_{t+1},
so ``F[..., l-1, :, :]`` is only used by forecasts. ``m0`` is (n,) or (b, n); ``P0`` (n, n) or
(b, n, n).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ssmkit.core.checks import check_finite, check_tensor
from ssmkit.core.gaussian import check_psd, psd_factor

Tensor = torch.Tensor


@dataclass(frozen=True)
class LinearGaussianSSM:
    """Parameters of a linear Gaussian SSM (see the module docstring for shapes)."""

    F: Tensor  # (*, n, n) transition F_t: x_t -> x_{t+1}
    H: Tensor  # (*, o, n) emission H_t
    Q: Tensor  # (*, n, n) process noise covariance Q_t (PSD)
    R: Tensor  # (*, o, o) observation noise covariance R_t (PSD)
    m0: Tensor  # (n,) or (b, n) prior mean of the first state x_1
    P0: Tensor  # (n, n) or (b, n, n) prior covariance of x_1 (the proper part P_star)
    B: Tensor | None = None  # (*, n, m) control matrix B_t, or None
    D: Tensor | None = None  # (*, o, m) feed-through matrix D_t, or None
    P0_diffuse: Tensor | None = None  # (n, n) P_inf: x_1 has extra covariance kappa P_inf

    @property
    def n(self) -> int:
        """State size."""
        return self.F.shape[-1]

    @property
    def o(self) -> int:
        """Observation size."""
        return self.H.shape[-2]

    def with_diffuse(self, initialization: str, kappa: float = 1e6) -> LinearGaussianSSM:
        """The model with its diffuse part made explicit.

        ``"approximate_diffuse"`` folds kappa * P0_diffuse into P0 (statsmodels' default
        kappa = 1e6) and drops P0_diffuse; ``"exact_diffuse"`` and ``"known"`` return self.
        """
        if initialization == "approximate_diffuse" and self.P0_diffuse is not None:
            return replace(self, P0=self.P0 + kappa * self.P0_diffuse, P0_diffuse=None)
        return self


@dataclass(frozen=True)
class Prepared:
    """A model and data broadcast to (b, l, ...), missing entries marked (no copies made)."""

    F: Tensor  # (b, l, n, n)
    Q: Tensor  # (b, l, n, n)
    H: Tensor  # (b, l, o, n)
    R: Tensor  # (b, l, o, o)
    c: Tensor | None  # (b, l, n) B_t u_t, or None
    d: Tensor | None  # (b, l, o) D_t u_t, or None
    y: Tensor  # (b, l, o) observations, NaN replaced by 0
    mask: Tensor | None  # (b, l, o) bool, True where observed; None when nothing is missing
    m0: Tensor  # (b, n)
    P0: Tensor  # (b, n, n)


def _mat(name: str, x: Tensor, rows: int, cols: int, b: int, l: int, dtype) -> Tensor:
    check_tensor(name, x)
    if x.ndim < 2 or x.shape[-2:] != (rows, cols) or x.ndim > 4:
        raise ValueError(
            f"{name} must have shape ([b,] [l,] {rows}, {cols}), got shape {tuple(x.shape)}"
        )
    try:
        return x.to(dtype).expand(b, l, rows, cols)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast against (b, l) = ({b}, {l})"
        ) from None


def check_observations(y: Tensor, o: int) -> Tensor:
    """Validate y (b, l, o): floating, right size, no inf, and at least one observed entry."""
    check_tensor("y", y)
    if y.ndim != 3 or y.shape[-1] != o:
        raise ValueError(f"y must have shape (b, l, o) with o = {o}, got shape {tuple(y.shape)}")
    if not y.is_floating_point():
        raise TypeError(f"y must be a floating tensor, got {y.dtype}")
    if bool(torch.isinf(y).any()):
        raise ValueError("y must not hold inf; mark missing entries with NaN")
    if y.shape[1] == 0:
        raise ValueError("y must have at least one time step")
    observed = (~torch.isnan(y)).flatten(1).any(1)
    if not bool(observed.all()):
        bad = [int(i) for i in torch.nonzero(~observed).flatten()[:5]]
        raise ValueError(f"y: series {bad} have no observed entries (all NaN)")
    return y


def prepare(
    model: LinearGaussianSSM, y: Tensor, u: Tensor | None = None, validate: bool = True
) -> Prepared:
    """Check shapes and covariances, and broadcast everything to (b, l, ...).

    Args:
        model: the SSM.
        y: (b, l, o) observations, NaN where missing.
        u: (b, l, m) inputs, required when the model has B or D.
        validate: check that F, H, m0, B, D are finite and Q, R, P0 PSD (skip it inside
            optimisation loops).
    """
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"model must be a LinearGaussianSSM, got {type(model).__name__}")
    n, o = model.n, model.o
    check_observations(y, o)
    b, l = y.shape[:2]
    dtype = y.dtype
    F = _mat("F", model.F, n, n, b, l, dtype)
    Q = _mat("Q", model.Q, n, n, b, l, dtype)
    H = _mat("H", model.H, o, n, b, l, dtype)
    R = _mat("R", model.R, o, o, b, l, dtype)
    m0 = check_tensor("m0", model.m0)
    P0 = check_tensor("P0", model.P0)
    if m0.shape not in ((n,), (b, n)):
        raise ValueError(f"m0 must have shape (n,) or (b, n) = ({b}, {n}), got {tuple(m0.shape)}")
    if P0.shape not in ((n, n), (b, n, n)):
        raise ValueError(f"P0 must have shape (n, n) or (b, n, n), got {tuple(P0.shape)}")
    if validate:  # F, H, m0, B, D finite (a NaN would pass silently into every step)
        for name, x in (("F", model.F), ("H", model.H), ("m0", m0), ("B", model.B)):
            if x is not None:
                check_finite(name, x)
        if model.D is not None:
            check_finite("D", model.D)
        for name, x in (("Q", model.Q), ("R", model.R), ("P0", model.P0)):
            check_psd(name, x)
    c = d = None
    if model.B is not None or model.D is not None:
        if u is None:
            raise ValueError("u is required: the model has a control matrix B or D")
        check_tensor("u", u)
        if u.ndim != 3 or u.shape[:2] != (b, l):
            raise ValueError(f"u must have shape (b, l, m) = ({b}, {l}, m), got {tuple(u.shape)}")
        u = u.to(dtype)
        k = u.shape[-1]
        if model.B is not None:
            c = (_mat("B", model.B, n, k, b, l, dtype) @ u.unsqueeze(-1)).squeeze(-1)
        if model.D is not None:
            d = (_mat("D", model.D, o, k, b, l, dtype) @ u.unsqueeze(-1)).squeeze(-1)
    elif u is not None:
        raise ValueError("u was given but the model has neither B nor D")
    nan = torch.isnan(y)
    mask = None if not bool(nan.any()) else ~nan
    y0 = y if mask is None else torch.where(mask, y, torch.zeros((), dtype=dtype))
    return Prepared(
        F, Q, H, R, c, d, y0, mask, m0.to(dtype).expand(b, n), P0.to(dtype).expand(b, n, n)
    )


def sample(
    model: LinearGaussianSSM,
    batch: int,
    length: int,
    u: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Draw state and observation paths (the diffuse part of the prior is ignored).

    Args:
        model: the SSM; its matrices broadcast against (batch, length).
        batch, length: number of series and of time steps.
        u: (batch, length, m) inputs when the model has B or D.
        generator: torch random generator (CPU) for reproducibility.

    Returns:
        x: (batch, length, n) states and y: (batch, length, o) observations.
    """
    device = model.F.device
    dummy = torch.zeros(batch, length, model.o, dtype=dtype, device=device)
    p = prepare(model, dummy, u)
    LQ, LR, L0 = psd_factor(p.Q), psd_factor(p.R), psd_factor(p.P0)

    def noise(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    x = p.m0 + (L0 @ noise((batch, model.n, 1))).squeeze(-1)
    w = (LQ @ noise((batch, length, model.n, 1))).squeeze(-1)  # (b, l, n)
    v = (LR @ noise((batch, length, model.o, 1))).squeeze(-1)  # (b, l, o)
    xs = []
    for t in range(length):
        xs.append(x)
        x = (p.F[:, t] @ x.unsqueeze(-1)).squeeze(-1) + w[:, t]
        if p.c is not None:
            x = x + p.c[:, t]
    X = torch.stack(xs, 1)  # (b, l, n)
    Y = (p.H @ X.unsqueeze(-1)).squeeze(-1) + v
    if p.d is not None:
        Y = Y + p.d
    return X, Y
