"""Timing and peak-memory measurement for benchmarks (never used in tests as a pass/fail gate).

CPU peak memory is the rise of the process's resident-set high-water mark (Linux: VmHWM,
reset through /proc/self/clear_refs) over the resident set just before the call. It is exact
only when freed memory goes back to the OS at once, so ``ssmkit bench`` runs with glibc's
``MALLOC_MMAP_THRESHOLD_`` lowered (see :func:`malloc_env`). On CUDA the allocator's own peak
counter is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Blocks of 1 MiB and more are mmapped, so freeing them returns memory at once and VmHWM
# sees every large temporary; smaller ones stay on the heap, which keeps the many small
# allocations of the step-by-step references cheap (a lower threshold slows those 10x+).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def malloc_env() -> dict[str, str]:
    """Environment variables that make CPU peak-memory readings exact."""
    return dict(MALLOC_ENV)


def _status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _trim_heap() -> None:
    """Return free heap pages to the OS (glibc), so the baseline is what is really in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str = "cpu") -> float | None:
    """Extra peak memory (MiB) used while ``fn()`` runs, or None where it cannot be read."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    gc.collect()  # garbage of earlier runs must not be freed inside fn and hide its peak
    _trim_heap()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None or not _reset_cpu_peak():
        return None
    base = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if base is None or peak is None:
        return None
    return max(peak - base, 0) / 1024


def time_ms(
    fn: Callable[[], object], repeat: int = 3, warmup: int = 1, device: torch.device | str = "cpu"
) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` runs after ``warmup``."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
