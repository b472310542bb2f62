"""Mamba-2's SSD operator (scalar A per head, grouped B/C) with registered backends.

Backends: ``ref`` (the loop, :mod:`.ref`, differentiable any number of times), ``chunked``
(the SSD chunked algorithm with a hand-written backward, :mod:`.chunked`, differentiable once),
``numba`` (the recurrence as fused CPU kernels, :mod:`.cpu_numba`, differentiable once, float32
and float64, the skip D x added inside them; "auto" picks it on CPU once its kernels are
compiled, ``chunked`` until then and for other dtypes) and ``triton`` (:mod:`.triton_backend`,
the chunked algorithm as Triton kernels; "auto" picks it on CUDA when triton is installed, on
CPU only an explicit name reaches it, under TRITON_INTERPRET=1). The public function applies
dt_bias/softplus, D and the z gate once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.core.checks import (
    check_bool_mask,
    check_finite,
    check_int,
    check_tensor,
    values_checked,
)
from ssmkit.ops import registry, triton_support
from ssmkit.ops.selective_scan.ref import delta_of
from ssmkit.ops.ssd import cpu_numba
from ssmkit.ops.ssd.chunked import ssd_chunked
from ssmkit.ops.ssd.ref import ssd_ref
from ssmkit.ops.ssd.triton_backend import ssd_triton

Tensor = torch.Tensor

__all__ = ["ssd", "ssd_chunked", "ssd_ref"]

registry.register(
    "ssd", "ref", ssd_ref, priority=0, description="loop (definition)", traceable=True
)
registry.register(
    "ssd",
    "chunked",
    ssd_chunked,
    priority=10,
    description="SSD chunked algorithm: batched matmuls, hand-written backward",
    traceable=True,
)
registry.register(
    "ssd",
    "numba",
    cpu_numba.ssd_numba,
    devices=("cpu",),
    priority=15,
    description="fused CPU kernels (numba): the recurrence per head, recomputing backward",
    is_available=cpu_numba.available,
    needs="numba (extra 'fast')",
)
triton_support.register(
    "ssd", ssd_triton, 20, "SSD chunked algorithm as Triton kernels (tl.dot), forward and backward"
)


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    chunk_size: int = 64,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    reset: Tensor | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-2's selective SSM with scalar A per head (see :mod:`.ref`).

    Args:
        x: (b, l, h, p) inputs by head. dt: (b, l, h) raw step sizes.
        A: (h,) real, <= 0. B, C: (b, l, g, n) with g dividing h.
        chunk_size: steps per chunk, passed to every backend (``ref`` ignores it).
        D: (h,) or (h, p) skip. z: (b, l, h, p) gate (y * silu(z)). dt_bias: (h,).
        dt_softplus: delta = softplus(dt + dt_bias).
        initial_state: (b, h, p, n); differentiable.
        return_final_state: also return the (b, h, p, n) final state.
        reset: (b, l) bool, True where a packed sequence starts (state zeroed before it).
        backend: "auto", "ref", "chunked", "numba" or "triton".

    Returns:
        y: (b, l, h, p); ``(y, final_state)`` with final_state (b, h, p, n) when
        ``return_final_state`` (the rule of every op, see :mod:`ssmkit.ops`).
    """
    b, _, h, p, n = _check(x, dt, A, B, C, D, z, dt_bias, initial_state)
    check_int("chunk_size", chunk_size, minimum=1)
    delta = delta_of(dt, dt_bias, dt_softplus)
    h0 = initial_state if initial_state is not None else x.new_zeros(b, h, p, n)
    impl = registry.resolve("ssd", backend, x.device)
    if impl.name == "numba":
        impl = _numba_or_chunked(impl, backend, x.dtype)
    if b == 0:  # an empty batch: the loop handles it, the chunked reshapes cannot
        impl = registry.resolve("ssd", "ref", x.device)
    keep = None if reset is None else ~check_bool_mask("reset", reset, (b, x.shape[1]))
    args = [t.to(x.dtype) for t in (x, delta, A, B, C, h0)]
    keep = None if keep is None else keep.to(x.dtype)
    if impl.name == "numba":  # its kernels add the skip D x (no (b, l, h, p) temporaries)
        y, last = impl.fn(*args, keep, chunk_size, D=D)
    else:
        y, last = impl.fn(*args, keep, chunk_size)  # every backend: the same arguments
        if D is not None:
            y = y + (D.unsqueeze(-1) if D.ndim == 1 else D) * x
    if z is not None:
        y = y * F.silu(z)
    return (y, last) if return_final_state else y


def _numba_or_chunked(impl: registry.Backend, backend: str, dtype: torch.dtype):
    """The numba kernels take float32 and float64, and compile on first use: "auto" runs
    ``chunked`` for other dtypes and while they compile (in a background thread)."""
    if dtype not in cpu_numba.DTYPES:
        if backend == "auto":
            return registry.resolve("ssd", "chunked", "cpu")
        raise ValueError(f"backend 'numba' of 'ssd' takes float32 or float64 x, got {dtype}")
    if backend == "auto" and not torch.compiler.is_compiling() and not cpu_numba.ready(dtype):
        cpu_numba.warm_up(dtype, wait=False)
        return registry.resolve("ssd", "chunked", "cpu")
    return impl


def _check(x, dt, A, B, C, D, z, dt_bias, initial_state):
    check_tensor("x", x)
    if x.ndim != 4 or not x.is_floating_point() or x.shape[1] < 1:
        raise ValueError(f"x must be a float tensor of shape (b, l, h, p), got {tuple(x.shape)}")
    b, l, h, p = x.shape
    check_finite("x", x, hot=True)
    for name, t, shape in (("dt", dt, (b, l, h)), ("A", A, (h,))):
        check_tensor(name, t)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        check_finite(name, t, hot=True)
    if values_checked(A, hot=True) and bool((A > 0).any()):
        raise ValueError(f"A must be <= 0 (a stable decay), got max {float(A.max()):.4g}")
    for name, M in (("B", B), ("C", C)):
        check_tensor(name, M)
        if M.ndim != 4 or M.shape[:2] != (b, l) or h % M.shape[2]:
            raise ValueError(
                f"{name} must have shape (b, l, g, n) = ({b}, {l}, g, n) with g dividing "
                f"h = {h}, got {tuple(M.shape)}"
            )
        check_finite(name, M, hot=True)
    if B.shape != C.shape:
        raise ValueError(
            f"B and C must have the same shape, got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    n = B.shape[-1]
    if D is not None and tuple(check_tensor("D", D).shape) not in ((h,), (h, p)):
        raise ValueError(f"D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if dt_bias is not None and tuple(check_tensor("dt_bias", dt_bias).shape) != (h,):
        raise ValueError(f"dt_bias must have shape ({h},), got {tuple(dt_bias.shape)}")
    if z is not None and check_tensor("z", z).shape != x.shape:
        raise ValueError(f"z must have shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state)
    if initial_state is not None and tuple(initial_state.shape) != (b, h, p, n):
        raise ValueError(
            f"initial_state must have shape {(b, h, p, n)}, got {tuple(initial_state.shape)}"
        )
    for name, t in (("D", D), ("z", z), ("dt_bias", dt_bias), ("initial_state", initial_state)):
        if t is not None:
            check_finite(name, t, hot=True)
    return b, l, h, p, n
