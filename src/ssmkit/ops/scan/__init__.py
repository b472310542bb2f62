"""The diagonal linear recurrence h_t = a_t * h_{t-1} + b_t with registered backends.

Backends: ``ref`` (the loop, :mod:`.ref`), ``chunked`` (two-level, default on every device),
``associative`` (log-depth). Fast backends share one custom backward (:mod:`.autograd`).
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_finite, check_tensor
from ssmkit.ops import registry
from ssmkit.ops.scan.associative import scan_associative
from ssmkit.ops.scan.autograd import LinearScan
from ssmkit.ops.scan.chunked import scan_chunked
from ssmkit.ops.scan.ref import scan_ref

Tensor = torch.Tensor

__all__ = ["scan", "scan_associative", "scan_chunked", "scan_ref"]


def _fast(kernel):
    def run(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        return LinearScan.apply(a, b, h0, kernel, False)

    return run


registry.register(
    "scan", "ref", scan_ref, priority=0, description="sequential loop (definition)", traceable=True
)
registry.register(
    "scan",
    "chunked",
    _fast(scan_chunked),
    priority=10,
    description="two-level chunked, O(l)",
    traceable=True,
)
registry.register(
    "scan",
    "associative",
    _fast(scan_associative),
    priority=5,
    description="Hillis-Steele log-depth, O(l log l)",
    traceable=True,
)


def scan(
    a: Tensor,
    b: Tensor,
    *,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t over the length axis.

    Args:
        a: (b, l, *s) per-step decay, or any shape that broadcasts to ``b`` (e.g. (1, 1, *s)
            for a time-invariant system). Real or complex.
        b: (b, l, *s) per-step input. Real or complex; the two are promoted to a common dtype.
        initial_state: (b, *s) h_{-1}; zeros when omitted. Differentiable.
        return_final_state: also return the final state h_{l-1}.
        backend: "auto", "ref" or a registered name (see ``ssmkit.ops.registry.backends``).

    Returns:
        h: (b, l, *s) all states; ``(h, final_state)`` with final_state (b, *s) when
        ``return_final_state`` (the rule of every op, see :mod:`ssmkit.ops`).
    """
    check_tensor("a", a)
    check_tensor("b", b)
    if b.ndim < 2:
        raise ValueError(f"b must have shape (b, l, *s), got shape {tuple(b.shape)}")
    if b.shape[1] < 1:
        raise ValueError(f"b must have length l >= 1 (axis 1), got shape {tuple(b.shape)}")
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        shape = None
    if shape != b.shape:
        raise ValueError(
            f"a must broadcast to the shape of b (b, l, *s) = {tuple(b.shape)}, "
            f"got shape {tuple(a.shape)}"
        )
    for name, x in (("a", a), ("b", b)):
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{name} must be a floating-point or complex tensor, got {x.dtype}")
        check_finite(name, x, hot=True)
    dtype = torch.promote_types(a.dtype, b.dtype)
    state_shape = (b.shape[0], *b.shape[2:])
    if initial_state is None:
        h0 = b.new_zeros(state_shape, dtype=dtype)
    else:
        check_tensor("initial_state", initial_state)
        if tuple(initial_state.shape) != state_shape:
            raise ValueError(
                f"initial_state must have shape (b, *s) = {state_shape}, "
                f"got shape {tuple(initial_state.shape)}"
            )
        check_finite("initial_state", initial_state, hot=True)
        h0 = initial_state.to(dtype)
    impl = registry.resolve("scan", backend, b.device)
    h = impl.fn(a.to(dtype).expand(b.shape), b.to(dtype), h0)
    return (h, h[:, -1]) if return_final_state else h
