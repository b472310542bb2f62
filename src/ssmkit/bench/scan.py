"""The ``scan`` suite: the diagonal scan's backends against the sequential loop."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from ssmkit.bench.rows import Row, Settings, measure_row, with_speedups
from ssmkit.ops import scan

Tensor = torch.Tensor


def _scan_states(a: Tensor, x: Tensor, backend: str) -> Tensor:
    return scan(a, x, backend=backend)


def scan_cases(s: Settings) -> Iterator[list[Row]]:
    """Scan backends vs the sequential loop at a Mamba-like shape (real decays)."""
    shapes = {
        "tiny": [(2, 33, 8, 4)],
        "default": [(1, 1024, 256, 16), (8, 1024, 64, 16)],
        "full": [(1, 4096, 1536, 16), (8, 1024, 256, 16)],
    }[s.size]
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        b, l, d, n = shape
        case = f"b={b} l={l} d={d} n={n}"
        a = torch.rand(*shape, generator=gen).to(s.device) * 0.5 + 0.5
        x = torch.randn(*shape, generator=gen).to(s.device)
        rows = []
        for backend in ("ref", "chunked", "associative"):
            rows.append(
                measure_row(
                    "scan", case, backend if backend != "ref" else "ref: sequential loop",
                    partial(_scan_states, a, x, backend), [a, x], s,
                )
            )  # fmt: skip
        yield with_speedups(rows)
