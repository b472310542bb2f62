"""Forecast and residual diagnostic plots (matplotlib, imported only when a plot is drawn),
and the time axis they share with ``forecast.csv``: the CSV's index column as dates or years
when it holds regular ones."""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ssmkit.core.checks import check_int
from ssmkit.core.plotting import integer_ticks, pyplot
from ssmkit.probabilistic.diagnostics import autocorrelations

Tensor = torch.Tensor


def plot_diagnostics(e: Tensor, path: Path, lags: int = 10, start: int = 0) -> Path:
    """Four panels of standardised residuals: the series (x axis from ``start``), a histogram
    with the N(0, 1) density, a normal Q-Q plot, and the correlogram with +-1.96 / sqrt(n).

    Args:
        e: (l - d,) standardised residuals, NaN where missing.
        path: the PNG to write (its folder must exist).
        lags: correlogram lags, 1 <= lags < number of observed residuals.
        start: time index of e[0] (the d steps left out).

    Returns:
        path.
    """
    check_int("lags", lags, 1)
    obs = e[~torch.isnan(e)].to(torch.float64)
    n = obs.shape[0]
    if n < 3 or lags >= n:
        raise ValueError(f"lags must be < the number of observed residuals ({n}), got {lags}")
    plt = pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    t = torch.arange(start, start + e.shape[0])
    ax[0, 0].plot(t, e, lw=0.8)
    ax[0, 0].axhline(0, color="0.5", lw=0.6)
    ax[0, 0].set_title("Standardised residuals")
    ax[0, 0].set_xlabel("time step")
    ax[0, 0].set_ylabel("standardised residual")
    ax[0, 1].hist(obs, bins="auto", density=True, alpha=0.6, label="residuals")
    grid = torch.linspace(min(-4.0, float(obs.min())), max(4.0, float(obs.max())), 200)
    ax[0, 1].plot(grid, torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi), label="N(0,1)")
    ax[0, 1].set_title("Histogram and normal density")
    ax[0, 1].set_xlabel("standardised residual")
    ax[0, 1].set_ylabel("density")
    ax[0, 1].legend()
    probs = (torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n
    theory = torch.special.ndtri(probs)
    ax[1, 0].plot(theory, torch.sort(obs).values, ".", ms=3)
    lim = float(theory.abs().max())
    ax[1, 0].plot([-lim, lim], [-lim, lim], color="r", lw=0.8)
    ax[1, 0].set_title("Normal Q-Q")
    ax[1, 0].set_xlabel("theoretical quantiles")
    ax[1, 0].set_ylabel("sample quantiles")
    r = autocorrelations(obs, lags)
    ax[1, 1].vlines(range(1, lags + 1), 0, r)
    ax[1, 1].plot(range(1, lags + 1), r, "o", ms=4)
    band = 1.96 / math.sqrt(n)
    ax[1, 1].axhspan(-band, band, alpha=0.2)
    ax[1, 1].axhline(0, color="0.5", lw=0.6)
    ax[1, 1].set_title("Correlogram")
    ax[1, 1].set_xlabel("lag (time steps)")
    ax[1, 1].set_ylabel("autocorrelation")
    integer_ticks(ax[1, 1], "x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class TimeAxis:
    """Positions of the observed and the forecast steps on a plot's x axis."""

    past: list  # (l,) dates, years or step numbers
    future: list  # (horizon,) the same kind, continuing the past
    labels: list[str] | None  # (horizon,) the forecast steps' index labels, None without them
    name: str  # the x axis label


def time_axis(
    index: Sequence[str] | None, name: str | None, horizon: int, length: int | None = None
) -> TimeAxis:
    """The index column of a CSV (``Series.index``) continued ``horizon`` steps ahead.

    Integers (years) with a constant step continue by that step; ISO dates (YYYY-MM-DD or
    YYYY-MM) continue by a constant number of months when every date falls on the same day (at
    most the 28th) of its month (monthly, quarterly, yearly data), else by a constant number
    of days (daily, weekly). Anything else
    (no index, text labels, an irregular spacing) gives step numbers 0, 1, ... and no labels;
    ``length`` is the number of past steps when there is no index (default ``len(index)``).
    """
    n = len(index) if index else (length or 0)
    past = _parse(index) if index and n >= 2 else None
    future = None if past is None else _continue(past, horizon)
    if future is None:
        return TimeAxis(list(range(n)), list(range(n, n + horizon)), None, "time step")
    if isinstance(past[0], int):
        labels = [str(t) for t in future]
    else:
        month_only = all(len(t) == 7 for t in index)
        labels = [t.strftime("%Y-%m") if month_only else t.isoformat() for t in future]
    return TimeAxis(past, future, labels, name or "time")


def _parse(index: Sequence[str]) -> list | None:
    """Integers, or dates (YYYY-MM as the first of the month); None for anything else."""
    try:
        return [int(t) for t in index]
    except ValueError:
        pass
    try:
        if all(len(t) == 7 and t[4] == "-" for t in index):
            return [dt.date(int(t[:4]), int(t[5:]), 1) for t in index]
        return [dt.date.fromisoformat(t) for t in index]
    except ValueError:
        return None


def _continue(past: list, horizon: int) -> list | None:
    """``horizon`` more values at the constant spacing of ``past``; None if it has none."""
    pairs = list(itertools.pairwise(past))
    if isinstance(past[0], int):
        gaps = {b - a for a, b in pairs}
        step = gaps.pop() if len(gaps) == 1 else 0
        return [past[-1] + step * k for k in range(1, horizon + 1)] if step > 0 else None
    months = {12 * (b.year - a.year) + b.month - a.month for a, b in pairs}
    day = {t.day for t in past}
    if len(day) == 1 and day.pop() <= 28 and len(months) == 1 and (step := months.pop()) > 0:
        last = past[-1].year * 12 + past[-1].month - 1  # months since year 0
        return [
            past[-1].replace(year=(last + step * k) // 12, month=(last + step * k) % 12 + 1)
            for k in range(1, horizon + 1)
        ]
    days = {(b - a).days for a, b in pairs}
    if len(days) == 1 and (step := days.pop()) > 0:
        return [past[-1] + dt.timedelta(days=step * k) for k in range(1, horizon + 1)]
    return None


def plot_forecast(
    y: Tensor,
    signal: Tensor,
    mean: Tensor,
    lower: Tensor,
    upper: Tensor,
    axis: TimeAxis,
    path: Path,
    title: str,
    y_name: str,
    level: float,
) -> Path:
    """Data, smoothed signal and forecast with its interval against dates, years or steps.

    Args:
        y: (l,) observations (NaN where missing).
        signal: (l,) smoothed signal H m_t.
        mean, lower, upper: (horizon,) forecast mean and interval bounds.
        axis: the x positions (:func:`time_axis`).
        path: the PNG to write.
        title: the plot title.
        y_name: the series' name (the y axis label).
        level: the interval's coverage, in (0, 1).

    Returns:
        path.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(axis.past, y, ".", color="0.4", label="data")
    ax.plot(axis.past, signal, label="smoothed signal")
    ax.plot(axis.future, mean, label="forecast")
    ax.fill_between(axis.future, lower, upper, alpha=0.3, label=f"{100 * level:g}% interval")
    ax.set_title(title)
    ax.set_xlabel(axis.name)
    ax.set_ylabel(y_name)
    if not isinstance(axis.past[0], dt.date):
        integer_ticks(ax, "x")  # steps and years are whole numbers
    ax.legend()
    if isinstance(axis.past[0], dt.date):
        fig.autofmt_xdate()  # slanted date labels do not overlap
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
