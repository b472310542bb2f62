"""Progress output: a redrawn bar on terminals, one line per epoch otherwise."""

import fcntl
import io
import os
import re
import struct
import termios

import pytest

from ssmkit.train.progress import Progress, fit_line

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_shows_loss_throughput_and_eta(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = Terminal()
    bar = Progress("auto", out)
    assert bar.mode == "bar"
    bar.start_epoch(1, 3, total=2)
    bar.update(0.5, 16)
    bar.update(0.25, 16)  # the last step always redraws
    bar.end_epoch("epoch 1/3 done")
    text = out.getvalue()
    assert "\repoch 1/3 [" in text and "2/2 loss 0.2500" in text
    assert "it/s" in text and "items/s" in text and "ETA" in text
    assert text.endswith("epoch 1/3 done\n")


def test_lines_when_not_a_terminal_and_off():
    out = io.StringIO()
    bar = Progress("auto", out)
    assert bar.mode == "lines"
    bar.start_epoch(1, 1, total=5)
    for _ in range(5):
        bar.update(1.0, 8)
    bar.end_epoch("epoch 1/1 val_accuracy 0.9")
    assert out.getvalue() == "epoch 1/1 val_accuracy 0.9\n"
    quiet = io.StringIO()
    off = Progress("off", quiet)
    off.start_epoch(1, 1, total=1)
    off.update(1.0, 1)
    off.end_epoch("x")
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError, match="progress must be"):
        Progress("fancy")


def _redraws(text: str) -> list[str]:
    """The visible lines a bar drew: pieces between carriage returns, escapes removed."""
    return [ANSI.sub("", p) for p in re.split(r"[\r\n]+", text) if ANSI.sub("", p)]


def _run_epoch(out, steps: int = 3) -> None:
    bar = Progress("auto", out)
    assert bar.mode == "bar"
    bar.start_epoch(12, 100, total=steps)
    for i in range(steps):
        bar._last = 0.0  # draw every update
        bar.update(123.456789 / (i + 1), 1024)
    bar.end_epoch("epoch 12/100 val_loss 1.2345")


@pytest.mark.parametrize("columns", [60, 80])
def test_bar_fits_a_faked_terminal_width(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    out = Terminal()
    _run_epoch(out)
    lines = _redraws(out.getvalue())
    assert lines[-1] == "epoch 12/100 val_loss 1.2345"
    bars = lines[:-1]
    assert len(bars) == 3 and all(len(line) <= columns - 1 for line in bars), bars
    assert all(line.startswith("epoch 12/100 [") and " loss " in line for line in bars)
    assert "3/3 loss 41.1523" in bars[-1] and "ETA 0:00" in bars[-1]
    assert "\x1b[K" in out.getvalue()  # each redraw clears what a longer line left


@pytest.mark.parametrize("columns", [60, 80])
def test_bar_fits_a_pseudo_terminal(monkeypatch, columns):
    monkeypatch.delenv("COLUMNS", raising=False)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        with os.fdopen(slave, "w", closefd=False) as out:
            _run_epoch(out)
        os.set_blocking(master, False)
        text = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            text += chunk
    finally:
        os.close(slave)
        os.close(master)
    lines = _redraws(text.decode())
    assert lines[-1] == "epoch 12/100 val_loss 1.2345"
    assert len(lines) == 4 and all(len(line) <= columns - 1 for line in lines[:-1]), lines


def test_fit_line_drops_fields_then_the_bar_then_cuts():
    fields = ["3/3", "loss 0.5000", "9.0 it/s", "900 items/s", "ETA 0:00"]
    order = [3, 2, 4, 0]
    wide = fit_line("epoch 1/2", fields, order, 0.5, 200)
    assert wide == "epoch 1/2 [" + "#" * 12 + "." * 12 + "] " + " ".join(fields)
    mid = fit_line("epoch 1/2", fields, order, 1.0, 50)
    assert mid == "epoch 1/2 [" + "#" * 12 + "] 3/3 loss 0.5000 ETA 0:00" and len(mid) == 49
    assert fit_line("epoch 1/2", fields, order, 0.0, 33) == "epoch 1/2 [........] loss 0.5000"
    assert fit_line("epoch 1/2", fields, order, 0.0, 32) == "epoch 1/2 loss 0.5000"
    assert fit_line("epoch 1/2", fields, order, 0.0, 20) == "epoch 1/2 loss 0.50"
    assert fit_line("epoch 1/2", fields, order, 0.0, 1) == "e"
