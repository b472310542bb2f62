"""Benchmark suites ``selective`` and ``ssd``: backends against their loop definitions.

Also times mambapy's parallel scan (``pscan``) on the same problem when mambapy is installed
(it materialises the (b, l, d, n) decays and inputs, as its Mamba does), and prints a floor:
the time to stream the inputs and outputs once at the machine's measured copy bandwidth.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from unittest import mock

import torch

from ssmkit.bench.rows import Row, Settings, measure_row, with_speedups
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
            rows.append(measure_row("selective", case, name, fn, inputs, s))
        pscan = _mambapy_pscan()
        if pscan is not None:
            fn = partial(_run_mambapy, pscan, u, dt, A, B, C, D)
            rows.append(measure_row("selective", case, "mambapy pscan", fn, inputs, s))
            rows[-1].note = "peer library"
        rows = with_speedups(rows)
        rows.append(_floor_row(case, [u, dt, B, C], s))  # bounds, not implementations
        rows.append(_exp_floor_row(case, b * l * d * n, s))
        yield rows


def ssd_cases(s: Settings) -> Iterator[list[Row]]:
    """Mamba-2's SSD: the backends against the loop definition and mamba_ssm's ``ssd_minimal``.

    The peer row loads ``mamba_ssm/modules/ssd_minimal.py`` from the checkout named by the
    environment variable ``SSMKIT_PEER_MAMBA`` (it needs einops); without it the last row's
    note says why it was skipped.
    """
    shapes = {
        "tiny": [(1, 64, 2, 8, 8)],
        "default": [(1, 1024, 24, 64, 128)],
        "full": [(1, 4096, 24, 64, 128)],
    }[s.size]
    peer, why = _peer_ssd_minimal()
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
            rows.append(measure_row("ssd", case, name, fn, [x, dt, A, B, C], s))
        if peer is None:  # no row without a time: the reason goes on the last row
            rows[-1].note = f"{PEER} row {why}"
        else:
            fn = partial(_run_ssd_minimal, peer, x, dt, A, B, C)
            rows.append(measure_row("ssd", case, PEER, fn, [x, dt, A, B, C], s))
            rows[-1].note = "peer: " + _versus(rows[-1], rows[-2])
        yield with_speedups(rows)


PEER = "mamba_ssm ssd_minimal"
SSD_CHUNK = 64  # chunk size of every SSD row, ours and the peer's


def _run_ssd(backend: str, x, dt, A, B, C) -> Tensor:
    return ssd(x, dt, A, B, C, chunk_size=SSD_CHUNK, dt_softplus=True, backend=backend)


def _run_ssd_minimal(ssd_minimal: Callable, x, dt, A, B, C) -> Tensor:
    """The same problem through mamba_ssm's reference: it takes delta x and delta A, and B, C
    per head (expanded views of the shared group)."""
    delta = torch.nn.functional.softplus(dt)  # (b, l, h)
    heads = (*x.shape[:3], B.shape[-1])
    y, _ = ssd_minimal(
        x * delta.unsqueeze(-1), A * delta, B.expand(heads), C.expand(heads), SSD_CHUNK
    )
    return y


def _versus(peer: Row, ours: Row) -> str:
    """How many times faster ``ours`` is than the peer, forward and forward+backward."""
    pairs = (("fwd", peer.fwd_ms, ours.fwd_ms), ("fwd+bwd", peer.fwd_bwd_ms, ours.fwd_bwd_ms))
    ratios = [f"{what} {a / b:.1f}x" for what, a, b in pairs if a and b]
    return f"{ours.impl} speed-up over it: " + ", ".join(ratios)


def _peer_ssd_minimal() -> tuple[Callable | None, str]:
    """``ssd_minimal_discrete`` from the mamba checkout at $SSMKIT_PEER_MAMBA, or why not.

    The file imports mamba_ssm's Triton kernel at module level, for its own self-test only;
    it is loaded by path with a placeholder for that one module, so neither Triton nor the
    mamba_ssm package (CUDA extensions) is needed. The placeholder is removed afterwards.
    """
    root = os.environ.get("SSMKIT_PEER_MAMBA")
    if not root:
        return None, "skipped: set SSMKIT_PEER_MAMBA"
    path = Path(root) / "mamba_ssm" / "modules" / "ssd_minimal.py"
    if not path.is_file():
        return None, f"skipped: no {path}"
    if importlib.util.find_spec("einops") is None:
        return None, "skipped: ssd_minimal needs einops"
    kernel = "mamba_ssm.ops.triton.ssd_combined"
    placeholder = types.ModuleType(kernel)
    placeholder.mamba_chunk_scan_combined = None  # the GPU kernel, unused here
    spec = importlib.util.spec_from_file_location("_ssmkit_peer_ssd_minimal", path)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(sys.modules, {kernel: placeholder}):
        spec.loader.exec_module(module)
    fn = getattr(module, "ssd_minimal_discrete", None)
    return (fn, "") if fn is not None else (None, f"skipped: no ssd_minimal_discrete in {path}")


def _run(backend: str, u, dt, A, B, C, D) -> Tensor:
    return selective_scan(u, dt, A, B, C, D=D, dt_softplus=True, backend=backend)


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
