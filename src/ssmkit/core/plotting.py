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
