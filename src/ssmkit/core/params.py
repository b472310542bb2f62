"""Optimiser hints for SSM parameters, in one format, and the parameter groups built from them.

The S4 family trains the SSM parameters (A, dt, and B where the paper says so) with a
smaller learning rate and no weight decay (S4, appendix; S4D, section 4). A layer marks such
a parameter once with :func:`ssm_parameter`; :func:`param_groups` turns the marks into
optimiser groups, so no training script keeps its own list of parameter names.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ssmkit.core.checks import check_positive

HINT = "_ssmkit_optim"  # attribute holding {"lr": float | None, "weight_decay": float}
SSM_LR = 1e-3  # the papers' learning rate for A and dt (capped: min(lr, SSM_LR))


def ssm_parameter(
    param: torch.nn.Parameter, lr: float | None = SSM_LR, weight_decay: float = 0.0
) -> torch.nn.Parameter:
    """Mark ``param`` as an SSM parameter: learning rate ``min(lr, base lr)``, given decay."""
    if not isinstance(param, torch.nn.Parameter):
        raise TypeError(f"param must be a torch.nn.Parameter, got {type(param).__name__}")
    if lr is not None:
        check_positive("lr", lr)
    setattr(param, HINT, {"lr": lr, "weight_decay": float(weight_decay)})
    return param


def param_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, ssm_lr: float | None = None
) -> list[dict]:
    """Optimiser parameter groups: SSM parameters, decayed weights, undecayed vectors.

    Args:
        model: any module; parameters marked by :func:`ssm_parameter` get their own group.
        lr: base learning rate.
        weight_decay: decay of weight matrices (ndim >= 2); biases, norms and other
            vectors get none.
        ssm_lr: overrides the marked learning rate of every SSM parameter.

    Returns:
        A list of dicts for ``torch.optim.AdamW(groups)``; empty groups are left out.
    """
    check_positive("lr", lr)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    buckets: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for param in _unique(model.parameters()):
        if not param.requires_grad:
            continue
        hint = getattr(param, HINT, None)
        if hint is not None:
            group_lr = ssm_lr if ssm_lr is not None else min(lr, hint["lr"] or lr)
            key = (group_lr, hint["weight_decay"])
        else:
            key = (lr, weight_decay if param.ndim >= 2 else 0.0)
        buckets.setdefault(key, []).append(param)
    return [{"params": ps, "lr": k[0], "weight_decay": k[1]} for k, ps in buckets.items()]


def _unique(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
