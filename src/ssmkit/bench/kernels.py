"""The ``kernels`` suite: LTI convolution kernels (Vandermonde, Cauchy) against dense powering
of the same SSM, an S4 layer per kernel backend, and the official S4 kernel when a checkout is
named by $SSMKIT_PEER_S4."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from functools import partial

import torch

from ssmkit.bench.rows import Row, Settings, diag_system, measure_row, with_speedups
from ssmkit.core.discretize import discretize_dense, dplr_to_dense
from ssmkit.core.init import log_uniform_dt, s4d_init
from ssmkit.core.kernels import kernel_dense, kernel_diag, kernel_dplr
from ssmkit.layers.s4 import S4

Tensor = torch.Tensor


def kernel_cases(s: Settings) -> Iterator[list[Row]]:
    """Vandermonde (S4D) and Cauchy (S4) kernels vs dense powering of the same SSM."""
    sizes = {
        "tiny": [(8, 4, 64)],
        "default": [(256, 32, 1024), (256, 32, 16384)],
        "full": [(256, 32, 1024), (1024, 32, 1024), (256, 32, 16384), (1024, 32, 16384)],
    }[s.size]
    for h, n, L in sizes:
        case = f"h={h} N={2 * n} L={L}"
        A_bar, B_bar, C = diag_system(h, n, s.device)
        dense_A = torch.diag_embed(A_bar)
        rows = []
        if L <= 1024 or s.size == "full":
            rows.append(
                measure_row(
                    "kernels", case, "ref: dense powering",
                    partial(_real_kernel, kernel_dense, 2.0, dense_A, B_bar, C, L), [], s,
                )
            )  # fmt: skip
        rows.append(
            measure_row(
                "kernels", case, "diag: blocked Vandermonde",
                partial(kernel_diag, A_bar, B_bar, C, L), [C], s,
            )
        )  # fmt: skip
        rows.append(
            measure_row(
                "kernels", case, "diag: materialised (h,n,L)",
                partial(_vandermonde_materialised, A_bar, B_bar, C, L), [C], s,
            )
        )  # fmt: skip
        rows[-1].note = "what the reference S4D code does"
        yield with_speedups(rows)
    for h, n, L in sizes:
        yield with_speedups(_dplr_rows(h, n, L, s))
    for h, L in {
        "tiny": [(8, 64)],
        "default": [(256, 1024)],
        "full": [(1024, 1024), (1024, 16384)],
    }[s.size]:
        yield with_speedups(_s4_layer_rows(h, L, s))


def _dplr_rows(h: int, n: int, L: int, s: Settings) -> list[Row]:
    """kernel_dplr's three backends (the first is the baseline), dense powering, the peer."""
    case = f"h={h} N={2 * n} L={L} (DPLR)"
    Lam = s4d_init("legs", 2 * n, dtype=torch.complex64).to(s.device).expand(h, n).contiguous()
    P = 0.1 * torch.randn(h, 1, n, dtype=torch.complex64, device=s.device)
    B = torch.ones(h, n, dtype=torch.complex64, device=s.device)
    Ct = torch.randn(h, n, dtype=torch.complex64, device=s.device)
    dt = log_uniform_dt(h, generator=torch.Generator().manual_seed(0)).to(s.device)
    rows = []
    for backend, impl in (
        ("ref", "ref: dplr autograd+checkpoint"),
        ("adjoint", "dplr: adjoint"),
        ("roots", "dplr: roots (default)"),
    ):
        rows.append(
            measure_row(
                "kernels", case, impl,
                partial(kernel_dplr, Lam, P, P, B, Ct, dt, L, backend=backend),
                [Lam, P, B, Ct, dt], s,
            )
        )  # fmt: skip
    if L <= 1024:
        full = lambda x: torch.cat([x, x.conj()], -1)  # noqa: E731
        Ad, Bd = discretize_dense(
            dplr_to_dense(full(Lam), full(P), full(P)), full(B).unsqueeze(-1), dt, "bilinear"
        )
        Bd = Bd.squeeze(-1)
        rows.append(
            measure_row(
                "kernels", case, "dense powering",
                partial(_real_kernel, kernel_dense, 1.0, Ad, Bd, full(Ct), L), [], s,
            )
        )  # fmt: skip
    peer = _peer_s4_row(case, h, 2 * n, L, s)
    if isinstance(peer, Row):
        rows.append(peer)
    else:  # no row without a measurement: the note goes on the adjoint's row
        rows[1].note = f"peer row skipped: {peer}"
    return rows


def _s4_layer_rows(h: int, L: int, s: Settings) -> list[Row]:
    """An S4 layer (N = 64, bilinear, GLU block) in conv mode, batch 1, per kernel backend."""
    case = f"S4 conv b=1 h={h} N=64 L={L}"
    torch.manual_seed(0)
    x = torch.randn(1, L, h, device=s.device)
    rows = []
    state = None
    for backend in ("ref", "adjoint", "roots"):
        layer = S4(h, N=64, l_max=L, kernel_backend=backend).to(s.device)
        if state is None:
            state = layer.state_dict()
        layer.load_state_dict(state)  # the same parameters for both rows
        impl = f"{'ref: ' if backend == 'ref' else ''}S4 kernel backend={backend}"
        rows.append(
            measure_row(
                "kernels", case, impl, partial(_layer_output, layer, x), [*layer.parameters()], s
            )
        )
    return rows


def _layer_output(layer: S4, x: Tensor) -> Tensor:
    return layer(x)[0]


PEER_ENV = "SSMKIT_PEER_S4"  # path of a state-spaces/s4 checkout (never vendored in ssmkit)
PEER_MAX_GIB = 4.0  # its naive Cauchy builds (4, h, N, L/2 + 1) complex64 at once


def _peer_s4_row(case: str, h: int, N: int, L: int, s: Settings) -> Row | str:
    """state-spaces/s4's DPLR kernel (pure-torch cauchy_naive path), or why it was skipped."""
    root = os.environ.get(PEER_ENV)
    if not root:
        return f"set {PEER_ENV} to a state-spaces/s4 checkout"
    gib = 4 * h * N * (L // 2 + 1) * 8 / 2**30
    if gib > PEER_MAX_GIB:
        return f"its Cauchy matrix would take {gib:.0f} GiB"
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        from models.s4.s4 import SSMKernelDPLR  # the peer's standalone file
    except ImportError as e:
        return f"cannot import models.s4.s4 from {root}: {e}"
    kernel = SSMKernelDPLR(
        d_model=h, d_state=N, l_max=L, disc="bilinear", backend="naive", verbose=False
    ).to(s.device)
    impl = "peer: state-spaces/s4 naive"
    row = measure_row(
        "kernels", case, impl, partial(_peer_kernel, kernel, L), [*kernel.parameters()], s
    )
    row.note = "its pure-torch path; HiPPO-LegS init, same shapes"
    return row


def _peer_kernel(kernel: torch.nn.Module, L: int) -> Tensor:
    return kernel(L=L)[0]


def _real_kernel(fn: Callable[..., Tensor], scale: float, *args: object) -> Tensor:
    return scale * fn(*args).real


def _vandermonde_materialised(A_bar: Tensor, B_bar: Tensor, C: Tensor, L: int) -> Tensor:
    """The naive kernel: builds the whole (h, n, L) power table (for comparison only)."""
    powers = torch.exp(torch.log(A_bar).unsqueeze(-1) * torch.arange(L, device=A_bar.device))
    return 2 * torch.einsum("hn,hnl->hl", C * B_bar, powers).real
