"""The selective step size of Mamba and Mamba-2: the one place its equation is written.

A selective SSM computes a positive step size per token and channel (or head) from a raw,
unconstrained projection of the input (Mamba, Gu and Dao 2023, section 3.2 and algorithm 2:
Delta = tau_Delta(Parameter + s_Delta(x)) with tau_Delta = softplus; Mamba-2, Dao and Gu 2024,
keeps it and optionally clamps it to an interval ``dt_limit``):

    dt = clamp(softplus(dt_raw + dt_bias), low, high)

softplus(z) = log(1 + e^z) > 0, so dt > 0 whatever the projection says; the clamp applies only
when a limit is given. Mamba-1 folds ``dt_bias`` into its ``dt_proj`` linear layer and calls
this without a bias; Mamba-2 keeps ``dt_bias`` as a separate parameter of shape (h,). The
sequence operators (``selective_scan``, ``ssd``) take the positive ``dt`` the layers compute,
or apply this same function themselves under their ``dt_softplus=True`` option.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmkit.core.checks import check_tensor

Tensor = torch.Tensor


def check_limit(limit: object) -> tuple[float, float]:
    """Validate a step-size interval: (low, high) real numbers with 0 <= low <= high."""
    ok = isinstance(limit, (tuple, list)) and len(limit) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in limit)
    if not ok or math.isnan(limit[0]) or math.isnan(limit[1]) or not 0 <= limit[0] <= limit[1]:
        raise ValueError(
            f"dt_limit must be a pair (low, high) of numbers with 0 <= low <= high (high may "
            f"be math.inf), got {limit!r}"
        )
    return float(limit[0]), float(limit[1])


def step_size(
    dt_raw: Tensor, bias: Tensor | None = None, limit: tuple[float, float] | None = None
) -> Tensor:
    """dt = clamp(softplus(dt_raw + bias), *limit): the positive step size of a selective SSM.

    Args:
        dt_raw: (..., c) raw step sizes (the projection of the input), c channels or heads.
        bias: (c,) the learned bias b_Delta, or None (already inside ``dt_raw``).
        limit: (low, high) with 0 <= low <= high, or None (no clamp): Mamba-2's ``dt_limit``.

    Returns:
        dt: (..., c) > 0 (>= low with a limit), in the dtype of ``dt_raw`` (and ``bias``).
    """
    check_tensor("dt_raw", dt_raw)
    if bias is not None:
        check_tensor("dt_bias", bias)
        if bias.shape != dt_raw.shape[-1:]:
            raise ValueError(
                f"dt_bias must have shape {tuple(dt_raw.shape[-1:])} (the last axis of dt_raw), "
                f"got {tuple(bias.shape)}"
            )
        dt_raw = dt_raw + bias  # (..., c)
    dt = F.softplus(dt_raw)  # (..., c)
    if limit is not None:
        dt = dt.clamp(*check_limit(limit))
    return dt


__all__ = ["check_limit", "step_size"]
