"""Progress reporting: a live bar on a terminal, one line per epoch otherwise.

The bar is redrawn in place, so its line must never be wider than the terminal (a wrapped line
cannot be redrawn: every update would leave a stale half-line). Each redraw reads the width
(it may change while training) and drops the least useful fields, then narrows the bar, to fit.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO

BAR_WIDTH = 24  # characters of the bar when the terminal has room
MIN_BAR_WIDTH = 8  # below this the bar is left out
CLEAR_TO_END = "\033[K"  # erases what a longer previous line left (zero width)


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def terminal_columns(out: TextIO) -> int:
    """Columns of the terminal ``out`` writes to: ``$COLUMNS`` if set, else the size of
    ``out``'s terminal, else :func:`shutil.get_terminal_size`'s answer (80 when unknown)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(out.fileno()).columns or shutil.get_terminal_size().columns
    except (AttributeError, OSError, ValueError):  # no fileno (a StringIO), not a terminal
        return shutil.get_terminal_size().columns


def fit_line(head: str, fields: list[str], drop_order: list[int], fraction: float,
             columns: int) -> str:  # fmt: skip
    """``head [####....] fields...`` in at most ``columns - 1`` characters.

    Args:
        head: always shown first (e.g. ``epoch 2/10``).
        fields: shown after the bar, in this order.
        drop_order: indices into ``fields``, the least useful first, left out one by one
            until the line fits with a bar of at least :data:`MIN_BAR_WIDTH`.
        fraction: the share of the bar to fill, in [0, 1].
        columns: the terminal width (the last column is kept free: writing into it makes
            some terminals wrap).
    """
    limit = max(columns - 1, 1)
    dropped: set[int] = set()
    for i in [None, *drop_order]:
        if i is not None:
            dropped.add(i)
        rest = " ".join(f for k, f in enumerate(fields) if k not in dropped)
        width = min(BAR_WIDTH, limit - len(head) - len(rest) - 4)  # " [" + "] "
        if width >= MIN_BAR_WIDTH:
            fill = int(width * min(max(fraction, 0.0), 1.0))
            return f"{head} [{'#' * fill}{'.' * (width - fill)}] {rest}"
    return f"{head} {rest}"[:limit]


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
        fields = [
            f"{self.done}/{self.total}",
            f"loss {loss:.4f}",
            f"{rate:.1f} it/s",
            f"{self.items / max(elapsed, 1e-9):.0f} items/s",
            f"ETA {_clock(eta)}",
        ]
        line = fit_line(
            f"epoch {self.epoch}/{self.epochs}", fields, [3, 2, 4, 0],
            self.done / max(self.total, 1), terminal_columns(self.out),
        )  # fmt: skip
        line = f"\r{line}{CLEAR_TO_END}"
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
