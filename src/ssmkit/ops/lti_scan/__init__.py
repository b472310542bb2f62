"""A time-invariant diagonal SSM from input to output, x_t = A_bar x_{t-1} + B_bar u_t,
y_t = s Re(C x_t), with registered backends.

Backends: ``ref`` (inject, the diagonal :func:`~ssmkit.ops.scan` keeping every state,
readout: :mod:`.ref`) and ``numba`` (fused CPU kernels that keep no (b, l, h, n) history,
when numba is installed: :mod:`.cpu_numba`) and ``triton`` (the same fusion as GPU kernels,
when triton is installed: :mod:`.triton_backend`; preferred by ``"auto"`` on CUDA, and on CPU
tensors reached only by name under ``TRITON_INTERPRET=1``, for tests). The public function
validates once, for every backend.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_finite, check_tensor, values_checked
from ssmkit.core.dtypes import real_dtype
from ssmkit.ops import registry, triton_support
from ssmkit.ops.lti_scan import cpu_numba, triton_backend
from ssmkit.ops.lti_scan.ref import inject, lti_scan_ref, readout

Tensor = torch.Tensor

__all__ = ["inject", "lti_scan", "lti_scan_ref", "readout"]

registry.register(
    "lti_scan",
    "ref",
    lti_scan_ref,
    priority=0,
    description="inject, scan (all states), readout",
    traceable=True,
)
registry.register(
    "lti_scan",
    "numba",
    cpu_numba.lti_scan_numba,
    devices=("cpu",),
    priority=20,
    description="fused CPU kernels (numba), recomputing backward",
    is_available=cpu_numba.available,
    traceable=True,  # a torch.library custom op: one node in a compiled graph
)
triton_support.register(
    "lti_scan",
    triton_backend.lti_scan_triton,
    30,
    "fused GPU kernels (Triton), recomputing backward",
)


def lti_scan(
    u: Tensor,
    A_bar: Tensor,
    B_bar: Tensor,
    C: Tensor,
    *,
    conj: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    lengths: Tensor | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Run a discretised diagonal LTI system over a sequence (see :mod:`.ref` for the equations).

    SISO or MIMO follows from ``A_bar``: (h, n) is one n-mode system per channel (S4D, DSS;
    state (h, n)), (n,) one system driven by all channels (S5, LRU; state (n,)).

    Args:
        u: (b, l, h) real input, float32 or float64.
        A_bar: SISO (h, n) or MIMO (n,) diagonal transition, real or complex of u's precision.
        B_bar: SISO (h, n) or MIMO (n, h) input matrix, same precision.
        C: (h, n) output matrix, same precision.
        conj: every stored mode stands for a conjugate pair: y = 2 Re(C x), else Re(C x).
        initial_state: (b, *s) state before the first step, of dtype promote(A_bar, B_bar);
            zeros when omitted. Differentiable.
        return_final_state: also return the final state.
        lengths: (b,) valid steps of a right-padded batch; the returned state is the one after
            each item's last valid step (y is computed at every step).
        backend: "auto", "ref", "numba", "triton" (see ``ssmkit.ops.registry``).

    Returns:
        y: (b, l, h) in u's dtype; ``(y, final_state)`` with final_state (b, *s) when
        ``return_final_state`` (the rule of every op, see :mod:`ssmkit.ops`).
    """
    b, length, mimo = _check(u, A_bar, B_bar, C, conj)
    dtype = torch.promote_types(A_bar.dtype, B_bar.dtype)
    state_shape = (b, *((A_bar.shape[0],) if mimo else A_bar.shape))
    if initial_state is None:
        x0 = u.new_zeros(state_shape, dtype=dtype)
    else:
        check_tensor("initial_state", initial_state)
        if tuple(initial_state.shape) != state_shape or initial_state.dtype != dtype:
            raise ValueError(
                f"initial_state must have shape (b, *s) = {state_shape} and dtype {dtype}, "
                f"got shape {tuple(initial_state.shape)} and dtype {initial_state.dtype}"
            )
        x0 = check_finite("initial_state", initial_state, hot=True)
    last = _last_steps(lengths, b, length, u.device)
    impl = registry.resolve("lti_scan", backend, u.device)
    y, final_state = impl.fn(u, A_bar, B_bar, C, x0, conj, last)
    return (y, final_state) if return_final_state else y


def _check(u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, conj: bool) -> tuple[int, int, bool]:
    check_tensor("u", u)
    if u.ndim != 3 or u.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"u must be a float32 or float64 tensor of shape (b, l, h), got {u.dtype} "
            f"of shape {tuple(u.shape)}"
        )
    b, length, h = u.shape
    if length < 1:
        raise ValueError(f"u must have length l >= 1, got shape {tuple(u.shape)}")
    check_tensor("A_bar", A_bar)
    if A_bar.ndim not in (1, 2) or (A_bar.ndim == 2 and A_bar.shape[0] != h):
        raise ValueError(
            f"A_bar must have shape (h, n) = ({h}, n) (SISO) or (n,) (MIMO), "
            f"got shape {tuple(A_bar.shape)}"
        )
    mimo = A_bar.ndim == 1
    n = A_bar.shape[-1]
    shapes = {"B_bar": (n, h) if mimo else (h, n), "C": (h, n)}
    for name, M in (("B_bar", B_bar), ("C", C)):
        check_tensor(name, M)
        if tuple(M.shape) != shapes[name]:
            kind = "(n, h) (MIMO)" if mimo and name == "B_bar" else "(h, n)"
            raise ValueError(
                f"{name} must have shape {kind} = {shapes[name]}, got shape {tuple(M.shape)}"
            )
    for name, M in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        if not (M.is_floating_point() or M.is_complex()) or real_dtype(M.dtype) != u.dtype:
            raise TypeError(
                f"{name} must be real or complex of u's precision ({u.dtype}), got {M.dtype}"
            )
    if not isinstance(conj, bool):
        raise TypeError(f"conj must be a bool, got {type(conj).__name__}")
    for name, x in (("u", u), ("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        check_finite(name, x, hot=True)
    return b, length, mimo


def _last_steps(lengths: Tensor | None, b: int, length: int, device: torch.device) -> Tensor:
    """(b,) int64: the step whose state each item returns, lengths - 1 (default l - 1)."""
    if lengths is None:
        return torch.full((b,), length - 1, dtype=torch.int64, device=device)
    check_tensor("lengths", lengths)
    if tuple(lengths.shape) != (b,) or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(
            f"lengths must be an integer tensor of shape (b,) = ({b},), got {lengths.dtype} "
            f"of shape {tuple(lengths.shape)}"
        )
    bad = values_checked(lengths, hot=True) and bool((lengths < 1).any() | (lengths > length).any())
    if lengths.dtype == torch.bool or bad:
        raise ValueError(
            f"lengths must be integers in [1, {length}] (the input length), got {lengths.tolist()}"
        )
    return lengths.to(device=device, dtype=torch.int64) - 1
