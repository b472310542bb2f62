"""Progress reporting: a live bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """Reports steps of one epoch.

    Args:
        mode: "bar" (redraws one line; for terminals), "lines" (only epoch summaries), "off",
            or "auto" (bar when ``out`` is a terminal).
        out: the stream (default stderr).
    """

    def __init__(self, mode: str = "auto", out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        if mode == "auto":
            mode = "bar" if self.out.isatty() else "lines"
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress must be auto, bar, lines or off, got {mode!r}")
        self.mode = mode
        self._t0 = time.perf_counter()
        self._last = 0.0

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        self.epoch, self.epochs, self.total, self.done = epoch, epochs, total, done
        self._start_done = done
        self._t0 = time.perf_counter()

    def update(self, loss: float, items: int) -> None:
        self.done += 1
        self.items = getattr(self, "items", 0) + items
        now = time.perf_counter()
        if self.mode != "bar" or (now - self._last < 0.2 and self.done < self.total):
            return
        self._last = now
        elapsed = now - self._t0
        rate = (self.done - self._start_done) / max(elapsed, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        width = 24
        fill = int(width * self.done / max(self.total, 1))
        bar = "#" * fill + "." * (width - fill)
        line = (
            f"\repoch {self.epoch}/{self.epochs} [{bar}] {self.done}/{self.total} "
            f"loss {loss:.4f} {rate:.1f} it/s {self.items / max(elapsed, 1e-9):.0f} items/s "
            f"ETA {_clock(eta)}"
        )
        self.out.write(line)
        self.out.flush()

    def end_epoch(self, summary: str) -> None:
        self.items = 0
        if self.mode == "off":
            return
        if self.mode == "bar":
            self.out.write("\r\033[K")
        self.out.write(summary + "\n")
        self.out.flush()
