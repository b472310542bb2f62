"""The compiled log-likelihood as a differentiable torch function (``method="numba"``).

:func:`numba_log_likelihood` checks that the model fits the compiled filter (time-invariant
F, H, Q, R, each shared or per series; diagonal R; no inputs), moves everything to float64
numpy arrays with a leading series axis, and runs :mod:`.kalman_numba` inside a
``torch.autograd.Function`` whose backward is the kernel's adjoint pass. So a parameter
transform ``theta -> spec.build(theta)`` stays differentiable by autograd in front of it.
The reference it is tested against is ``log_likelihood(..., method="sequential")``.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_int, check_tensor
from ssmkit.core.gaussian import check_psd
from ssmkit.probabilistic import kalman_numba, kalman_numba_grad
from ssmkit.probabilistic.model import LinearGaussianSSM, check_observations

Tensor = torch.Tensor
STEADY_TOL = 1e-12  # relative change of P below which the gain is reused (< 0: never)


def _np(x: Tensor):
    return x.detach().to(torch.float64).cpu().contiguous().numpy()


class NumbaLoglik(torch.autograd.Function):
    """ll (b,) from per-series F (b, n, n), H (b, o, n), Q (b, n, n), R diagonal (b, o),
    m0 (b, n), P0 (b, n, n), P_inf (b, n, n) and y (b, l, o) (NaN = missing)."""

    @staticmethod
    def forward(ctx, F, H, Q, R, m0, P0, Pinf, y, exact: bool, burn: int, steady_tol: float):
        arrays = [_np(x) for x in (F, H, Q, R, m0, P0, Pinf, y)]
        store = any(ctx.needs_input_grad[:7])
        ll, saved = kalman_numba.loglik_forward(*arrays, exact, burn, steady_tol, store)
        ctx.arrays, ctx.saved_state, ctx.burn = arrays, saved, burn
        return torch.from_numpy(ll).to(device=F.device, dtype=F.dtype)

    @staticmethod
    def backward(ctx, g):
        F, H, Q, R, _, _, _, y = ctx.arrays
        grads = kalman_numba_grad.loglik_backward(F, H, Q, R, y, ctx.burn, ctx.saved_state, _np(g))
        out = [torch.from_numpy(x).to(device=g.device, dtype=g.dtype) for x in grads]
        return (*out, None, None, None, None)


def _time_invariant(x: Tensor) -> bool:
    """True for a matrix without an l axis: (r, c), or (b, 1, r, c)."""
    return x.ndim == 2 or (x.ndim == 4 and x.shape[1] == 1)


def numba_supports(model: LinearGaussianSSM, u: Tensor | None = None) -> bool:
    """Whether ``method="numba"`` can run this model: numba installed, no inputs, F, H, Q, R
    without an l axis, R diagonal."""
    if not isinstance(model, LinearGaussianSSM) or not kalman_numba.available():
        return False
    if u is not None or model.B is not None or model.D is not None:
        return False
    mats = (model.F, model.H, model.Q, model.R)
    if not all(isinstance(x, Tensor) and _time_invariant(x) for x in mats):
        return False
    R = model.R.detach()
    return bool((torch.diag_embed(torch.diagonal(R, dim1=-2, dim2=-1)) == R).all())


def numba_log_likelihood(
    model: LinearGaussianSSM,
    y: Tensor,
    diffuse: str = "exact",
    kappa: float = 1e6,
    burn: int = 0,
    validate: bool = True,
    steady_tol: float = STEADY_TOL,
) -> Tensor:
    """log p(y_{burn+1..l} | y_{1..burn}) per series (b,), by the compiled filter.

    Args:
        model: a time-invariant SSM (no l axis on F, H, Q, R; a leading b axis of size b
            or 1 is allowed as (b, 1, ., .)) with diagonal R and without B, D.
        y: (b, l, o) observations, NaN where missing.
        diffuse: "exact" or "approximate" treatment of ``model.P0_diffuse``.
        kappa: the variance scale of the approximate diffuse prior.
        burn: leading steps whose terms are left out.
        validate: check PSD covariances, and that y has no inf and no series without
            observations (skip both inside optimisation loops, on data checked once).
        steady_tol: relative tolerance of the steady-state test (negative: never).

    Returns:
        (b,) log-likelihoods, differentiable in every model tensor.
    """
    if not kalman_numba.available():
        raise RuntimeError("method='numba' needs numba (pip install 'ssmkit[fast]')")
    if model.B is not None or model.D is not None:
        raise ValueError("method='numba' supports models without inputs (B and D must be None)")
    check_int("burn", burn, 0)
    exact = diffuse == "exact" and model.P0_diffuse is not None
    Pinf = model.P0_diffuse
    if not exact:
        model = model.with_diffuse("approximate_diffuse", kappa)
    if validate:
        check_observations(y, model.o)
    elif y.ndim != 3 or y.shape[-1] != model.o or not y.is_floating_point():
        check_observations(y, model.o)  # raises the shape or dtype error
    b, dtype = y.shape[0], y.dtype
    n, o = model.n, model.o
    F, H, Q, R = (
        _series_matrix(name, getattr(model, name), r, c, b, dtype)
        for name, r, c in (("F", n, n), ("H", o, n), ("Q", n, n), ("R", o, o))
    )  # (b, ., .) each: no (b, l, ., .) views, whose backward would sum over l
    m0, P0 = check_tensor("m0", model.m0), check_tensor("P0", model.P0)
    if m0.shape not in ((n,), (b, n)):
        raise ValueError(f"m0 must have shape (n,) or (b, n) = ({b}, {n}), got {tuple(m0.shape)}")
    if P0.shape not in ((n, n), (b, n, n)):
        raise ValueError(f"P0 must have shape (n, n) or (b, n, n), got {tuple(P0.shape)}")
    if validate:
        for name, x in (("Q", model.Q), ("R", model.R), ("P0", model.P0)):
            check_psd(name, x)
    Rd = torch.diagonal(R, dim1=-2, dim2=-1)  # (b, o)
    if bool((torch.diag_embed(Rd) != R).any()):
        raise ValueError("method='numba' processes y entry by entry and needs a diagonal R")
    m0, P0 = m0.to(dtype).expand(b, n), P0.to(dtype).expand(b, n, n)
    Pinf = Pinf.to(dtype).expand(b, n, n) if exact else P0.new_zeros(()).expand(b, n, n)
    return NumbaLoglik.apply(F, H, Q, Rd, m0, P0, Pinf, y, exact, burn, steady_tol)


def _series_matrix(name: str, x: Tensor, rows: int, cols: int, b: int, dtype) -> Tensor:
    """A model matrix ((r, c), (l, r, c) or (b', l, r, c) with l = 1 or repeated by a
    stride-0 view) as (b, r, c); a matrix that changes over time is an error."""
    check_tensor(name, x)
    if x.ndim < 2 or x.shape[-2:] != (rows, cols) or x.ndim > 4:
        raise ValueError(
            f"{name} must have shape ([b,] [l,] {rows}, {cols}), got shape {tuple(x.shape)}"
        )
    if x.ndim > 2:
        if x.shape[-3] > 1 and x.stride(-3) != 0:
            raise ValueError(
                f"method='numba' needs a time-invariant {name} (no l axis), got "
                f"{name} of shape {tuple(x.shape)}"
            )
        x = x[..., 0, :, :]
    try:
        return x.to(dtype).expand(b, rows, cols)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast against b = {b} series"
        ) from None
