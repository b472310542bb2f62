"""Initial value problems y'(t) = f(t, y): THE ODE solvers of ssmkit.

One entry point, ``solve_ivp``, with the integration rule as a named choice:

* ``"euler"``: forward Euler, order 1, fixed step.
* ``"rk4"``: the classical four-stage Runge-Kutta rule, order 4, fixed step.
* ``"dopri5"``: Dormand-Prince 5(4) (Dormand & Prince 1980), order 5 with an embedded order-4
  solution whose difference estimates the local error; the step size follows the standard
  controller h_new = h * clip(0.9 * err^(-1/5), 0.2, 10) (Hairer, Norsett & Wanner, Solving
  ODEs I, section II.4). Steps are clipped so that every time of ``t_eval`` is hit exactly.

Fixed-step rules split each interval [t_i, t_{i+1}] of ``t_eval`` into the fewest equal steps
no longer than ``step_size``, so the output times are exact as well.

Everything is plain differentiable torch arithmetic (no in-place updates), so gradients flow
from the solution back to ``y0`` and to the parameters used inside ``f`` (backpropagation
through the solver's operations, "discretise then optimise"). Step-size decisions are taken
on detached Python floats and are not differentiated.

Finite-time blow-up: the solve stops with status ``"blowup"`` as soon as an accepted step gives
max|y| > ``max_norm`` or a non-finite value, or when the adaptive step size shrinks below the
floating-point spacing of t (a singularity ahead). ``t_stop`` is where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_choice, check_finite, check_int, check_tensor

Tensor = torch.Tensor
METHODS = ("euler", "rk4", "dopri5")
STATUSES = ("success", "blowup", "max_steps")

# Dormand-Prince 5(4) Butcher tableau. Rows of A give the stage weights; B5 (the 5th-order
# solution, equal to the last row of A: "first same as last") and B4 (embedded 4th order).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


@dataclass
class OdeSolution:
    """Result of ``solve_ivp``.

    Attributes:
        t: (T,) the times reached: all of ``t_eval`` on success, a prefix when it stopped early.
        y: (T, *y0.shape) the solution at those times.
        status: "success", "blowup" (max|y| > max_norm, non-finite values or step-size
            underflow) or "max_steps" (the step budget ran out).
        t_stop: time where integration stopped (``t_eval[-1]`` on success).
        n_steps: number of accepted steps.
    """

    t: Tensor
    y: Tensor
    status: str
    t_stop: float
    n_steps: int


def _check_t_eval(t_eval: object) -> list[float]:
    check_tensor("t_eval", t_eval)
    if t_eval.ndim != 1 or t_eval.numel() < 1:
        raise ValueError(
            f"t_eval must have shape (T,) with T >= 1, got shape {tuple(t_eval.shape)}"
        )
    if t_eval.is_complex():
        raise TypeError("t_eval must be real, got a complex tensor")
    check_finite("t_eval", t_eval)
    ts = [float(v) for v in t_eval.detach().cpu().tolist()]
    for i in range(len(ts) - 1):
        if not ts[i + 1] > ts[i]:
            raise ValueError(
                f"t_eval must be strictly increasing, got t_eval[{i}] = {ts[i]!r} "
                f"and t_eval[{i + 1}] = {ts[i + 1]!r}"
            )
    return ts


def _check_scalar(name: str, value: object, allow_zero: bool = False, allow_inf: bool = False):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = (value >= 0 if allow_zero else value > 0) and not math.isnan(value)
    if not ok or (math.isinf(value) and not allow_inf):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _euler_step(f, t: float, y: Tensor, h: float, tt) -> Tensor:
    return y + h * f(tt(t), y)


def _rk4_step(f, t: float, y: Tensor, h: float, tt) -> Tensor:
    k1 = f(tt(t), y)
    k2 = f(tt(t + h / 2), y + (h / 2) * k1)
    k3 = f(tt(t + h / 2), y + (h / 2) * k2)
    k4 = f(tt(t + h), y + h * k3)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def _blown_up(y: Tensor, max_norm: float) -> bool:
    y = y.detach()
    if not bool(torch.isfinite(y).all()):
        return True
    return y.numel() > 0 and float(y.abs().max()) > max_norm


def _solve_fixed(f, y0, ts, method, step_size, max_steps, max_norm, tt):
    step = _euler_step if method == "euler" else _rk4_step
    ys, y, n_steps, t = [y0], y0, 0, ts[0]
    for i in range(len(ts) - 1):
        span = ts[i + 1] - ts[i]
        # fewest equal steps <= step_size; the tolerance keeps 1.0 / 0.1 from becoming 11 steps
        n = max(1, math.ceil(span / step_size * (1 - 1e-10)))
        h = span / n
        for j in range(n):
            if n_steps >= max_steps:
                return ys, "max_steps", t, n_steps
            y = step(f, t, y, h, tt)
            n_steps += 1
            t = ts[i] + (j + 1) * h if j < n - 1 else ts[i + 1]
            if _blown_up(y, max_norm):
                return ys, "blowup", t, n_steps
        ys.append(y)
    return ys, "success", ts[-1], n_steps


def _error_norm(err: Tensor, y: Tensor, y_new: Tensor, rtol: float, atol: float) -> float:
    """RMS of the local error scaled by atol + rtol * max(|y|, |y_new|) (HNW eq. II.4.11)."""
    scale = atol + rtol * torch.maximum(y.detach().abs(), y_new.detach().abs())
    return float(torch.sqrt(torch.mean((err.detach() / scale) ** 2))) if err.numel() else 0.0


def _initial_step(f, t0, y0, f0, rtol, atol, tt) -> float:
    """Starting step size of Hairer, Norsett & Wanner (section II.4, 'starting step size')."""
    if y0.numel() == 0:
        return 1.0
    y0d, f0d = y0.detach(), f0.detach()
    scale = atol + rtol * y0d.abs()
    d0 = float(torch.sqrt(torch.mean((y0d / scale) ** 2)))
    d1 = float(torch.sqrt(torch.mean((f0d / scale) ** 2)))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 or not math.isfinite(d1) else 0.01 * d0 / d1
    with torch.no_grad():
        f1 = f(tt(t0 + h0), y0d + h0 * f0d)
    d2 = float(torch.sqrt(torch.mean(((f1 - f0d) / scale) ** 2))) / h0
    if not math.isfinite(d2):
        return h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def _solve_dopri5(f, y0, ts, rtol, atol, step_size, max_steps, max_norm, tt):
    t, y = ts[0], y0
    k1 = f(tt(t), y)
    if len(ts) == 1:
        return [y0], "success", ts[0], 0
    h = step_size if step_size is not None else _initial_step(f, t, y, k1, rtol, atol, tt)
    h = min(h, ts[-1] - ts[0])
    ys, n_steps, i_next = [y0], 0, 1
    while i_next < len(ts):
        if n_steps >= max_steps:
            return ys, "max_steps", t, n_steps
        target = ts[i_next]
        clipped = t + h >= target
        h_try = target - t if clipped else h
        if h_try <= 16 * math.ulp(max(abs(t), abs(target))):
            # The controller keeps shrinking the step: a singularity lies just ahead.
            return ys, "blowup", t, n_steps
        k = [k1]
        for s in range(1, 7):
            incr = sum(a * ks for a, ks in zip(_A[s], k, strict=False) if a != 0.0)
            k.append(f(tt(t + _C[s] * h_try), y + h_try * incr))
        y_new = y + h_try * sum(b * ks for b, ks in zip(_B5, k, strict=True) if b != 0.0)
        err = h_try * sum((b5 - b4) * ks for b5, b4, ks in zip(_B5, _B4, k, strict=True))
        err_norm = _error_norm(err, y, y_new, rtol, atol)
        if not math.isfinite(err_norm):
            h = h_try * _MIN_FACTOR  # overflow inside the trial step: retry with a smaller one
            continue
        if err_norm <= 1.0:
            t = target if clipped else t + h_try
            y, k1 = y_new, k[6]  # FSAL: the last stage is f at the new point
            n_steps += 1
            if _blown_up(y, max_norm):
                return ys, "blowup", t, n_steps
            if clipped:
                ys.append(y)
                i_next += 1
        factor = _MAX_FACTOR if err_norm == 0 else _SAFETY * err_norm ** (-1 / 5)
        factor = min(_MAX_FACTOR, max(_MIN_FACTOR, factor))
        if err_norm > 1.0:
            factor = min(1.0, factor)
        # A step shortened only to land on t_eval does not shrink the proposal after it.
        h = max(h_try * factor, h) if clipped and err_norm <= 1.0 else h_try * factor
    return ys, "success", ts[-1], n_steps


def solve_ivp(
    f: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t_eval: Tensor,
    method: str = "dopri5",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    step_size: float | None = None,
    max_steps: int = 100_000,
    max_norm: float = float("inf"),
) -> OdeSolution:
    """Solve y'(t) = f(t, y), y(t_eval[0]) = y0, and return y at every time of ``t_eval``.

    Args:
        f: right-hand side ``f(t, y) -> dy/dt``; ``t`` is a 0-d tensor of y0's dtype and
            device, ``y`` and the result have y0's shape. Leading axes of y0 may be a batch
            (one shared step size for the whole tensor).
        y0: (*s) initial state, floating point, finite.
        t_eval: (T,) strictly increasing output times, ``t_eval[0]`` the initial time.
        method: "euler", "rk4" (fixed step, need ``step_size``) or "dopri5" (adaptive).
        rtol: relative tolerance of the dopri5 error control.
        atol: absolute tolerance of the dopri5 error control.
        step_size: the (maximum) step of "euler"/"rk4"; for "dopri5" an optional first step.
        max_steps: budget of accepted steps; status "max_steps" when it runs out.
        max_norm: status "blowup" as soon as max|y| exceeds it (finite-time blow-up detection).

    Returns:
        ``OdeSolution`` with ``t`` (T',), ``y`` (T', *s), ``status``, ``t_stop``, ``n_steps``;
        T' = T on success, fewer when the solve stopped early.

    Raises:
        TypeError: f not callable, y0/t_eval not tensors, y0 not floating point.
        ValueError: bad t_eval, unknown method, missing or bad step_size, bad tolerances.
    """
    if not callable(f):
        raise TypeError(f"f must be callable f(t, y) -> dy/dt, got {type(f).__name__}")
    check_choice("method", method, METHODS)
    check_tensor("y0", y0)
    if not y0.is_floating_point():
        raise TypeError(f"y0 must be a real floating-point tensor, got dtype {y0.dtype}")
    check_finite("y0", y0)
    ts = _check_t_eval(t_eval)
    _check_scalar("rtol", rtol)
    _check_scalar("atol", atol, allow_zero=True)
    check_int("max_steps", max_steps, minimum=1)
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0:
        raise ValueError(f"max_norm must be a number > 0 (inf allowed), got {max_norm!r}")
    if step_size is None and method != "dopri5":
        raise ValueError(f"method {method!r} is fixed-step: pass step_size > 0")
    if step_size is not None:
        step_size = _check_scalar("step_size", step_size)

    def tt(t: float) -> Tensor:
        return torch.tensor(t, dtype=y0.dtype, device=y0.device)

    def f_checked(t: Tensor, y: Tensor) -> Tensor:
        dy = f(t, y)
        if not isinstance(dy, torch.Tensor) or dy.shape != y.shape:
            got = tuple(dy.shape) if isinstance(dy, torch.Tensor) else type(dy).__name__
            raise ValueError(
                f"f(t, y) must return a tensor of y's shape {tuple(y.shape)}, got {got}"
            )
        return dy

    if method == "dopri5":
        ys, status, t_stop, n = _solve_dopri5(
            f_checked, y0, ts, rtol, atol, step_size, max_steps, max_norm, tt
        )
    else:
        ys, status, t_stop, n = _solve_fixed(
            f_checked, y0, ts, method, step_size, max_steps, max_norm, tt
        )
    return OdeSolution(
        t=t_eval[: len(ys)], y=torch.stack(ys), status=status, t_stop=t_stop, n_steps=n
    )


__all__ = ["METHODS", "OdeSolution", "solve_ivp"]
