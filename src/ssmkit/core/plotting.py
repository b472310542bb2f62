"""The one way ssmkit gets matplotlib: imported when a plot is drawn, never at import time."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend; ValueError naming the extra when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'ssmkit[plot]'") from None
    return plt


def plain_log_axis(ax, axis: str = "y") -> None:
    """Tick labels of a log-scaled axis as plain numbers (0.01, 2.3), not 2.3 x 10^0.

    Over less than a decade the axis has no major tick inside the range, so the minor ticks
    carry the labels; over more, only the powers of ten are labelled.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    target.set_major_formatter(plain)
    narrow = lo > 0 and hi / lo < 10
    target.set_minor_formatter(plain if narrow else NullFormatter())


def integer_ticks(ax, axis: str = "x") -> None:
    """Ticks only at whole numbers (epochs, layers, steps)."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))
