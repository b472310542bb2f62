"""Benchmark suite ``selective``: the selective scan's backends against its loop definition.

Also times mambapy's parallel scan (``pscan``) on the same problem when mambapy is installed
(it materialises the (b, l, d, n) decays and inputs, as its Mamba does), and prints a floor:
the time to stream the inputs and outputs once at the machine's measured copy bandwidth.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import torch

from ssmkit.bench.suites import Row, Settings, _measure, _with_speedups
from ssmkit.ops import registry, selective_scan, ssd

Tensor = torch.Tensor


def selective_cases(s: Settings) -> Iterator[list[Row]]:
    shapes = {
        "tiny": [(1, 64, 16, 4)],
        "default": [(1, 2048, 768, 16)],
        "full": [(1, 4096, 1536, 16)],
    }[s.size]
    for b, l, d, n in shapes:
        case = f"b={b} l={l} d={d} n={n}"
        g = torch.Generator().manual_seed(0)
        u = torch.randn(b, l, d, generator=g).to(s.device)
        dt = (torch.randn(b, l, d, generator=g) * 0.5 - 3).to(s.device)
        A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1).to(s.device)
        B = torch.randn(b, l, n, generator=g).to(s.device)
        C = torch.randn(b, l, n, generator=g).to(s.device)
        D = torch.ones(d, device=s.device)
        inputs = [u, dt, A, B, C]
        rows = []
        for backend in [x.name for x in reversed(registry.backends("selective_scan", s.device))]:
            fn = partial(_run, backend, u, dt, A, B, C, D)
            name = "ref: sequential loop" if backend == "ref" else backend
            rows.append(_measure("selective", case, name, fn, inputs, s))
        pscan = _mambapy_pscan()
        if pscan is not None:
            fn = partial(_run_mambapy, pscan, u, dt, A, B, C, D)
            rows.append(_measure("selective", case, "mambapy pscan", fn, inputs, s))
            rows[-1].note = "peer library"
        rows = _with_speedups(rows)
        rows.append(_floor_row(case, [u, dt, B, C], s))  # bounds, not implementations
        rows.append(_exp_floor_row(case, b * l * d * n, s))
        yield rows


def ssd_cases(s: Settings) -> Iterator[list[Row]]:
    """Mamba-2's SSD: the chunked algorithm against its loop definition."""
    shapes = {
        "tiny": [(1, 64, 2, 8, 8)],
        "default": [(1, 1024, 24, 64, 128)],
        "full": [(1, 4096, 24, 64, 128)],
    }[s.size]
    for b, l, h, p, n in shapes:
        case = f"b={b} l={l} h={h} p={p} n={n}"
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, l, h, p, generator=g).to(s.device)
        dt = (torch.randn(b, l, h, generator=g) * 0.5 - 3).to(s.device)
        A = -torch.linspace(1, 16, h).to(s.device)
        B = torch.randn(b, l, 1, n, generator=g).to(s.device)
        C = torch.randn(b, l, 1, n, generator=g).to(s.device)
        rows = []
        for backend in [x.name for x in reversed(registry.backends("ssd", s.device))]:
            fn = partial(_run_ssd, backend, x, dt, A, B, C)
            name = "ref: sequential loop" if backend == "ref" else backend
            rows.append(_measure("ssd", case, name, fn, [x, dt, A, B, C], s))
        yield _with_speedups(rows)


def _run_ssd(backend: str, x, dt, A, B, C) -> Tensor:
    return ssd(x, dt, A, B, C, 64, dt_softplus=True, backend=backend)


def _run(backend: str, u, dt, A, B, C, D) -> Tensor:
    return selective_scan(u, dt, A, B, C, D, dt_softplus=True, backend=backend)


def _mambapy_pscan():
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None
    return pscan


def _run_mambapy(pscan, u, dt, A, B, C, D) -> Tensor:
    delta = torch.nn.functional.softplus(dt).unsqueeze(-1)  # (b, l, d, 1)
    h = pscan(torch.exp(delta * A), delta * B.unsqueeze(2) * u.unsqueeze(-1))  # (b, l, d, n)
    return (h @ C.unsqueeze(-1)).squeeze(-1) + D * u


def _exp_floor_row(case: str, count: int, s: Settings) -> Row:
    """The forward needs one exp(delta A) per (step, channel, state): that many exps at the
    rate torch's vectorised exp reaches on this machine."""
    probe = -torch.rand(2**24, device=s.device)
    out = torch.empty_like(probe)
    torch.exp(probe, out=out)
    start = time.perf_counter()
    for _ in range(3):
        torch.exp(probe, out=out)
    per_exp = (time.perf_counter() - start) / (3 * probe.numel())
    row = Row("selective", case, "floor: one exp per state", count * per_exp * 1e3, None, None)
    row.note = f"{count / 1e6:.0f}M exps at {1e-9 / per_exp:.2f} G/s"
    return row


def _floor_row(case: str, inputs: list[Tensor], s: Settings) -> Row:
    """Reading the inputs and writing y once, at the measured memory copy bandwidth."""
    nbytes = sum(x.numel() * x.element_size() for x in inputs) + inputs[0].numel() * 4
    probe = torch.empty(64 * 2**20 // 4, device=s.device)
    start = time.perf_counter()
    for _ in range(5):
        probe.clone()
    bandwidth = 5 * 2 * probe.numel() * 4 / (time.perf_counter() - start)  # bytes/s, r + w
    row = Row("selective", case, "floor: inputs+outputs once", nbytes / bandwidth * 1e3, None, None)
    row.note = f"{bandwidth / 1e9:.1f} GB/s copy bandwidth, {nbytes / 2**20:.0f} MiB"
    return row
