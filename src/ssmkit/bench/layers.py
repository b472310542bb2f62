"""Benchmark suite ``layers``: every LTI layer in conv and scan mode, and its step latency.

The reference row of a case is the layer's own definition run token by token (``step``); its
time is the measured per-token latency times L. Scan mode runs the fused LTI
scan (no state history) where numba is installed; where it keeps all (b, L, h, n) states
(S4's dense transition, or without numba), cases that would not fit a budget are reported as
skipped rather than run out of memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial

import torch

from ssmkit.bench.rows import Row, Settings, measure_row, with_speedups
from ssmkit.layers import DSS, LRU, S4, S4D, S5, LTILayer
from ssmkit.ops import registry

Tensor = torch.Tensor
N = 64
SCAN_BUDGET_BYTES = 6 * 2**30  # states + their gradients must fit in this
STEPS_TIMED = 128

BUILDERS: dict[str, Callable[[int, int], LTILayer]] = {
    "S4": lambda h, n: S4(h, N=n),
    "S4D": lambda h, n: S4D(h, N=n),
    "DSS": lambda h, n: DSS(h, N=n),
    "S5": lambda h, n: S5(h, N=n),
    "LRU": lambda h, n: LRU(h, N=n),
}


def layer_cases(s: Settings) -> Iterator[list[Row]]:
    """Each layer at (h, N=64, L): conv, scan, and the token-by-token reference."""
    sizes = {
        "tiny": [(8, 64)],
        "default": [(256, 1024)],
        "full": [(256, 1024), (1024, 1024), (256, 16384), (1024, 16384)],
    }[s.size]
    n = 8 if s.size == "tiny" else N
    for h, L in sizes:
        for name, build in BUILDERS.items():
            torch.manual_seed(0)
            layer = build(h, n).to(s.device)
            case = f"{name} h={h} N={n} L={L}"
            x = torch.randn(1, L, h, device=s.device)
            per_token = _step_latency_ms(layer, x, s)
            ref = Row("layers", case, "ref: step loop", per_token * L, None, None)
            ref.note = f"{per_token:.3f} ms/token over {min(L, STEPS_TIMED)} steps, times L"
            rows = [ref]
            for mode in ("conv", "scan"):
                if mode == "conv" and "conv" not in _modes(layer):
                    continue
                layer.mode = mode
                need = _scan_bytes(layer, L, s.device) if mode == "scan" else 0
                if need > SCAN_BUDGET_BYTES:
                    rows.append(Row("layers", case, f"{mode} mode", float("nan"), None, None))
                    rows[-1].note = f"skipped: all states need {need / 2**30:.1f} GiB"
                    continue
                rows.append(
                    measure_row("layers", case, f"{mode} mode", partial(_y, layer, x), [x], s)
                )
            yield with_speedups(rows)


def _y(layer: LTILayer, x: Tensor) -> Tensor:
    return layer(x)[0]


def _modes(layer: LTILayer) -> tuple[str, ...]:
    return ("scan",) if isinstance(layer, (S5, LRU)) else ("conv", "scan")


def _scan_bytes(layer: LTILayer, L: int, device: str) -> int:
    """Memory of scan mode's state history: none for the fused LTI scan (numba), else all
    (b, L, *s) states (S4's dense transition, or the reference backend)."""
    with torch.no_grad():
        sys = layer.system()
    if not sys.dense and registry.resolve("lti_scan", "auto", device).name != "ref":
        return 0
    numel = L * int(torch.tensor(sys.state_shape).prod())
    return 4 * numel * 8  # states, inputs B u and both their gradients, complex64


def _step_latency_ms(layer: LTILayer, x: Tensor, s: Settings) -> float:
    steps = min(x.shape[1], STEPS_TIMED)
    sync = torch.cuda.synchronize if torch.device(s.device).type == "cuda" else (lambda: None)
    with torch.no_grad():
        state = layer.initial_state(1)
        layer.step(x[:, 0], state)  # warm-up (fills the step cache)
        sync()
        start = time.perf_counter()
        for t in range(steps):
            _, state = layer.step(x[:, t], state)
        sync()
    return (time.perf_counter() - start) * 1e3 / steps
