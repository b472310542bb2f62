"""SSD test problem builder shared by the interpreter and the CUDA tests (no side effects)."""

from __future__ import annotations

import torch

from ssmkit.testing import randn


def problem(b=2, l=13, h=4, p=3, n=5, g=2, dtype=torch.float64, seed=0):
    x = randn(b, l, h, p, dtype=dtype, seed=seed)
    dt = randn(b, l, h, dtype=dtype, seed=seed + 1) * 0.5 - 1
    A = -torch.rand(h, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 2 - 0.1
    B = randn(b, l, g, n, dtype=dtype, seed=seed + 2)
    C = randn(b, l, g, n, dtype=dtype, seed=seed + 3)
    D = randn(h, dtype=dtype, seed=seed + 4)
    z = randn(b, l, h, p, dtype=dtype, seed=seed + 5)
    bias = randn(h, dtype=dtype, seed=seed + 6)
    h0 = randn(b, h, p, n, dtype=dtype, seed=seed + 7)
    return [x, dt, A, B, C, D, z, bias, h0]
