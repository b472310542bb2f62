"""What every benchmark suite shares: the row of a table, the settings, one measurement.

A case yields rows (one per implementation) with forward time, forward+backward time where it
applies, peak extra memory, and the speed-up over the reference row of the same case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssmkit.bench.measure import peak_memory_mb, time_ms
from ssmkit.core.discretize import discretize_diag
from ssmkit.core.init import log_uniform_dt, s4d_init

Tensor = torch.Tensor


@dataclass
class Row:
    suite: str  # a key of ssmkit.bench.suites.SUITES
    case: str  # shape description
    impl: str  # implementation name; "ref" is the baseline
    fwd_ms: float
    fwd_bwd_ms: float | None
    peak_mb: float | None
    speedup: float | None = None  # ref fwd time / this fwd time (same case)
    speedup_bwd: float | None = None  # ref fwd+bwd time / this fwd+bwd time (same case)
    note: str = ""


SIZES = ("tiny", "default", "full")


@dataclass(frozen=True)
class Settings:
    size: str  # "tiny" (smoke test), "default" (a minute on 2 cores), "full" (issue sizes)
    repeat: int  # timed runs per measurement (median)
    device: str


def measure_row(
    suite: str, case: str, impl: str, fwd: Callable[[], Tensor], inputs: list[Tensor], s: Settings
) -> Row:
    with torch.no_grad():
        fwd_ms = time_ms(fwd, repeat=s.repeat, device=s.device)
        peak = peak_memory_mb(fwd, s.device)
    fwd_bwd_ms = None
    if inputs:

        def fwd_bwd() -> None:
            for x in inputs:
                x.grad = None
            fwd().real.sum().backward()

        for x in inputs:
            x.requires_grad_(True)
        fwd_bwd_ms = time_ms(fwd_bwd, repeat=s.repeat, device=s.device)
        for x in inputs:
            x.requires_grad_(False)
            x.grad = None
    return Row(suite, case, impl, fwd_ms, fwd_bwd_ms, peak)


def with_speedups(rows: list[Row]) -> list[Row]:
    ref = next((r for r in rows if r.impl.startswith("ref")), None)
    for r in rows:
        if ref is not None:
            r.speedup = ref.fwd_ms / r.fwd_ms
            if ref.fwd_bwd_ms and r.fwd_bwd_ms:
                r.speedup_bwd = ref.fwd_bwd_ms / r.fwd_bwd_ms
    return rows


def diag_system(h: int, n: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    A = s4d_init("lin", 2 * n, dtype=torch.complex64).to(device).expand(h, n)  # (h, n)
    dt = log_uniform_dt(h, generator=torch.Generator().manual_seed(0)).to(device)  # (h,)
    B = torch.ones(h, n, dtype=torch.complex64, device=device)
    C = torch.randn(h, n, dtype=torch.complex64, device=device)
    A_bar, B_bar = discretize_diag(A, B, dt, "zoh")
    return A_bar, B_bar, C
