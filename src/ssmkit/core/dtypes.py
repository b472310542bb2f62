"""dtype helpers that ``torch.compile`` can trace (``torch.dtype.to_real`` is a graph break)."""

from __future__ import annotations

import contextlib

import torch

_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of the same precision: complex64 -> float32; real dtypes unchanged."""
    return _REAL.get(dtype, dtype)


def full_precision(device: torch.device):
    """A context that turns autocast off on ``device`` (the SSM runs in its own precision);
    a no-op on devices without autocast (``meta``: shape inference)."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
