"""Helpers for testing ssmkit and code built on it: tolerances, seeded inputs, gradients.

Used by ssmkit's own test suite and meant for users who add a backend or a layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor

# (rtol, atol) per real dtype; complex dtypes use their real counterpart.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) used by :func:`assert_close` for ``dtype``."""
    if dtype.is_complex:
        dtype = torch.float64 if dtype == torch.complex128 else torch.float32
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


def assert_close(
    actual: Tensor,
    expected: Tensor,
    rtol: float | None = None,
    atol: float | None = None,
    msg: str = "",
) -> None:
    """``torch.testing.assert_close`` with ssmkit's per-dtype tolerances and a scaled atol.

    The absolute tolerance is scaled by the largest magnitude of ``expected`` so that tensors
    with large entries (long kernels, unnormalised states) are compared relatively.
    """
    d_rtol, d_atol = tolerance(expected.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    scale = float(expected.detach().abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=rtol,
        atol=atol * max(1.0, scale),
        msg=(lambda m: f"{msg}\n{m}") if msg else None,
    )


def generator(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def randn(
    *shape: int, dtype: torch.dtype = torch.float64, seed: int = 0, requires_grad: bool = False
) -> Tensor:
    """Seeded standard normal tensor (complex dtypes get independent real and imaginary parts)."""
    g = generator(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    return x.requires_grad_(requires_grad)


def grads(
    fn: Callable[..., Tensor | Sequence[Tensor]], inputs: Sequence[Tensor], seed: int = 1
) -> list[Tensor | None]:
    """Gradients of a random projection of ``fn(*inputs)`` with respect to ``inputs``.

    The same seed gives the same projection, so two implementations of one function can be
    compared gradient for gradient.
    """
    outs = fn(*inputs)
    outs = [outs] if isinstance(outs, torch.Tensor) else [o for o in outs if o is not None]
    total = 0
    for i, o in enumerate(outs):
        w = randn(*o.shape, dtype=o.dtype, seed=seed + i)
        total = total + (o * w.conj()).real.sum() if o.is_complex() else total + (o * w).sum()
    wanted = [x for x in inputs if x.requires_grad]
    got = iter(torch.autograd.grad(total, wanted, allow_unused=True, materialize_grads=True))
    return [next(got) if x.requires_grad else None for x in inputs]
