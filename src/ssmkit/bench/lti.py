"""Benchmark suite ``lti-scan``: a SISO diagonal LTI system (S4D-Lin) run three ways.

* ``ref``: inject, the diagonal scan keeping all (b, L, h, n) states, readout (the old scan
  mode; :func:`ssmkit.ops.lti_scan` with ``backend="ref"``);
* every other registered ``lti_scan`` backend (``numba``: fused, no history kept);
* conv mode: the Vandermonde kernel and one FFT convolution (no state in or out).

The same system also runs inside an S4D layer in conv and scan mode. Each case notes the
size of the op's inputs and outputs (u and y), the yardstick of its peak memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from ssmkit.bench.rows import Row, Settings, diag_system, measure_row, with_speedups
from ssmkit.core.fftconv import fftconv
from ssmkit.core.kernels import kernel_diag
from ssmkit.layers import S4D
from ssmkit.ops import lti_scan, registry

Tensor = torch.Tensor


def lti_scan_cases(s: Settings) -> Iterator[list[Row]]:
    """(b, h, N, L): N real state size (N/2 complex modes)."""
    shapes = {
        "tiny": [(1, 8, 8, 64)],
        "default": [(1, 256, 64, 2048)],
        "full": [(1, 256, 64, 16384)],
    }[s.size]
    for b, h, N, L in shapes:
        case = f"b={b} h={h} N={N} L={L}"
        A_bar, B_bar, C = diag_system(h, N // 2, s.device)
        u = torch.randn(b, L, h, generator=torch.Generator().manual_seed(0)).to(s.device)
        inputs = [u, A_bar, B_bar, C]
        rows = []
        for backend in [x.name for x in reversed(registry.backends("lti_scan", s.device))]:
            name = "ref: scan, all states" if backend == "ref" else f"{backend}: fused scan"
            fn = partial(_scan, backend, u, A_bar, B_bar, C)
            rows.append(measure_row("lti-scan", case, name, fn, inputs, s))
        rows.append(
            measure_row("lti-scan", case, "conv: kernel + FFT", partial(_conv, *inputs), inputs, s)
        )
        torch.manual_seed(0)
        layer = S4D(h, N=N, init="lin").to(s.device)
        for mode in ("conv", "scan"):
            layer.mode = mode
            fn = partial(_layer, layer, u)
            rows.append(measure_row("lti-scan", case, f"S4D layer, {mode} mode", fn, [u], s))
        rows = with_speedups(rows)
        rows[0].note = f"u and y: {2 * u.numel() * u.element_size() / 2**20:.0f} MiB"
        yield rows


def _scan(backend: str, u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor) -> Tensor:
    return lti_scan(u, A_bar, B_bar, C, conj=True, backend=backend)


def _conv(u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor) -> Tensor:
    return fftconv(u, kernel_diag(A_bar, B_bar, C, u.shape[1], conj=True))


def _layer(layer: S4D, u: Tensor) -> Tensor:
    return layer(u)[0]
