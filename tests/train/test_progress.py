"""Progress output: a redrawn bar on terminals, one line per epoch otherwise."""

import io

import pytest

from ssmkit.train.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_shows_loss_throughput_and_eta():
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
