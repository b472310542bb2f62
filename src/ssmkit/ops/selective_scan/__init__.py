"""The selective scan of Mamba (S6) with registered backends.

Backends: ``ref`` (the loop, :mod:`.ref`), ``chunked`` (pure PyTorch, chunk by chunk with
recomputation), ``numba`` (fused CPU kernels, when numba is installed: extra ``fast``),
``triton`` (fused GPU kernels, when triton is installed: extra ``gpu``; preferred by ``"auto"``
on CUDA, and on CPU tensors reached only by name under ``TRITON_INTERPRET=1``, for tests).
``"auto"`` runs ``ref`` (small problems) or ``chunked`` until the numba kernels for the dtype
are compiled, which it starts in a background thread on its first call
(:func:`cpu_numba.warm_up`; call it with ``wait=True`` to have them before timing anything).
The public function handles dt_bias/softplus, D and the z gate once, for every backend.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_bool_mask, check_finite, check_tensor, values_checked
from ssmkit.ops import registry, triton_support
from ssmkit.ops.selective_scan import cpu_numba, triton_backend
from ssmkit.ops.selective_scan.chunked import selective_scan_chunked
from ssmkit.ops.selective_scan.ref import delta_of, finish, selective_scan_ref

Tensor = torch.Tensor

__all__ = ["selective_scan", "selective_scan_chunked", "selective_scan_ref"]

# "auto" before the numba kernels are ready: the loop up to this many l * b * d * n (its
# backward keeps every state: 16 MiB in float32), chunked beyond
COLD_REF_MAX = 2**22

registry.register(
    "selective_scan",
    "ref",
    selective_scan_ref,
    priority=0,
    description="loop (definition)",
    traceable=True,
)
registry.register(
    "selective_scan",
    "chunked",
    selective_scan_chunked,
    priority=10,
    description="pure PyTorch, chunked two-level scan with recomputation",
    traceable=True,
)
registry.register(
    "selective_scan",
    "numba",
    cpu_numba.selective_scan_numba,
    devices=("cpu",),
    priority=20,
    description="fused CPU kernels (numba), recomputing backward",
    is_available=cpu_numba.available,
    traceable=True,  # a torch.library custom op: one node in a compiled graph
)
triton_support.register(
    "selective_scan",
    triton_backend.selective_scan_triton,
    30,
    "fused GPU kernels (Triton), recomputing backward",
)


def selective_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    reset: Tensor | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective SSM over a sequence (see :mod:`.ref` for the equations).

    Args:
        u: (b, l, d) input. dt: (b, l, d) raw step sizes.
        A: (d, n) real, <= 0 (Mamba: -exp(A_log)).
        B, C: (b, l, n), or (b, l, g, n) with g groups dividing d.
        D: (d,) skip. z: (b, l, d) gate (y * silu(z)). dt_bias: (d,) added to dt.
        dt_softplus: delta = softplus(dt + dt_bias) instead of dt + dt_bias.
        initial_state: (b, d, n) state before the first step; differentiable.
        return_final_state: also return the (b, d, n) state after the last step.
        reset: (b, l) bool, True where a packed sequence starts: the state is zeroed before
            that step (``initial_state`` applies until the first reset).
        backend: "auto", "ref", "chunked", "numba", "triton" (see ``ssmkit.ops.registry``).

    Returns:
        y: (b, l, d); ``(y, final_state)`` with final_state (b, d, n) when
        ``return_final_state`` (the rule of every op, see :mod:`ssmkit.ops`).
    """
    b, _, d, n = _check(u, dt, A, B, C, D, z, dt_bias, initial_state)
    dtype = u.dtype
    B4 = B if B.ndim == 4 else B.unsqueeze(2)  # (b, l, g, n)
    C4 = C if C.ndim == 4 else C.unsqueeze(2)
    h0 = initial_state if initial_state is not None else u.new_zeros(b, d, n)
    delta = delta_of(dt, dt_bias, dt_softplus)
    impl = registry.resolve("selective_scan", backend, u.device)
    compiling = torch.compiler.is_compiling()  # the graph holds the op: no cold-start swap
    if backend == "auto" and impl.name == "numba" and not compiling and not cpu_numba.ready(dtype):
        cpu_numba.warm_up(dtype, wait=False)  # compile in the background (cold start)
        # meanwhile: the loop for small problems (chunked's checkpointing imports dynamo, s)
        small = u.shape[1] * b * d * n <= COLD_REF_MAX
        impl = registry.resolve("selective_scan", "ref" if small else "chunked", u.device)
    keep = None if reset is None else ~check_bool_mask("reset", reset, (b, u.shape[1]))
    args = [x.to(dtype) for x in (u, delta, A, B4, C4, h0)]
    y, h_last = impl.fn(*args, None if keep is None else keep.to(dtype))
    y = finish(y, u, D, z)
    return (y, h_last) if return_final_state else y


def _check(u, dt, A, B, C, D, z, dt_bias, initial_state) -> tuple[int, int, int, int]:
    check_tensor("u", u)
    if u.ndim != 3 or not u.is_floating_point():
        raise ValueError(f"u must be a real float tensor of shape (b, l, d), got {tuple(u.shape)}")
    b, l, d = u.shape
    if l < 1:
        raise ValueError(f"u must have length l >= 1, got shape {tuple(u.shape)}")
    check_tensor("A", A)
    if A.ndim != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(f"A must be real with shape (d, n) = ({d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    check_finite("A", A, hot=True)
    if values_checked(A, hot=True) and bool((A > 0).any()):
        raise ValueError(f"A must be <= 0 (a stable decay), got max {float(A.max()):.4g}")
    _same("dt", dt, (b, l, d))
    check_finite("u", u, hot=True)
    check_finite("dt", dt, hot=True)
    for name, M in (("B", B), ("C", C)):
        check_tensor(name, M)
        ok = M.shape[:2] == (b, l) and M.shape[-1] == n and M.ndim in (3, 4)
        if not ok or (M.ndim == 4 and d % M.shape[2]):
            raise ValueError(
                f"{name} must have shape (b, l, n) = ({b}, {l}, {n}) or (b, l, g, n) with g "
                f"dividing d = {d}, got {tuple(M.shape)}"
            )
        check_finite(name, M, hot=True)
    if B.ndim != C.ndim or B.shape != C.shape:
        raise ValueError(
            f"B and C must have the same shape, got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    for name, t, shape in (("D", D, (d,)), ("dt_bias", dt_bias, (d,)), ("z", z, (b, l, d))):
        if t is not None:
            _same(name, t, shape)
            check_finite(name, t, hot=True)
    if initial_state is not None:
        _same("initial_state", initial_state, (b, d, n))
        check_finite("initial_state", initial_state, hot=True)
    return b, l, d, n


def _same(name: str, x: Tensor, shape: tuple[int, ...]) -> None:
    check_tensor(name, x)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got shape {tuple(x.shape)}")
