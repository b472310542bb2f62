"""User data: sequence classification from a CSV/NPZ file, forecasting from a CSV time series.

``csv-classification`` reads a *wide* CSV: a header, then one sequence per row; the
``label_column`` holds the class (integers >= 0 are used as class ids, anything else is
mapped to ids in sorted order) and every other column is a value of the sequence, in order.
With ``features = d > 1`` the values of a row are read as time steps of d features
(``t0f0, t0f1, ..., t1f0, ...``). Trailing empty cells make a row shorter: sequences are
right-padded and ``lengths`` say where each ends; an empty or NA cell before a later value,
and an empty line, are errors naming the line and column. A ``.npz`` file with arrays ``x``
((b, l) or (b, l, d)), ``y`` ((b,) int) and optionally ``lengths`` ((b,)) works too.

``csv-forecast`` reads a *long* CSV: a header, one row per time step, one column per variable
(an optional ``time_column`` is dropped). Every line after the header is a step: a missing
value (empty cell, NA, an empty line) is read as NaN at its step by :func:`read_series`, and
the task then refuses it with the line and column, since its models take no gaps and
dropping the line would shift time. In both files a UTF-8 byte order mark is ignored and
blank lines at the end are skipped with a warning. The series is cut chronologically into
train / val / test parts; windows of ``window`` steps inside each part have per-step targets
``y[t] = series[t + horizon]``. Values are standardised with the training part's mean and
std, stored in ``TaskSpec.mean`` / ``TaskSpec.std`` (:func:`denormalize` undoes it).
"""

from __future__ import annotations

import warnings
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssmkit.core.csvrows import RowStream, is_missing, number, skipped_note
from ssmkit.data.base import (
    Split,
    TaskConfig,
    TaskData,
    TaskSpec,
    full_lengths,
    register,
    require,
    require_fraction,
    require_min,
    split_rows,
)

Tensor = torch.Tensor


def _path(config: object) -> Path:
    path = config.path
    if path is None:
        raise ValueError(f"{type(config).__name__}.path is required: the data file to read")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{type(config).__name__}.path: no such file {str(p)!r}")
    return p


def read_csv(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header and an iterator over (line number, cells) of every line after it.

    The row rules (every line is a row, blank lines at the end skipped with a warning that
    counts them, byte order mark ignored) are :class:`ssmkit.core.csvrows.RowStream`; the
    rows come one at a time (callers convert each as it comes), a ragged row or a file
    without data rows is a ValueError raised by the iteration.
    """
    stream = RowStream(path)
    if not any(stream.header):
        raise ValueError(f"{path}: empty file (a header line is required)")
    return stream.header, _checked_rows(path, stream)


def _checked_rows(path: Path, stream: RowStream) -> Iterator[tuple[int, list[str]]]:
    header, n = stream.header, 0
    for line, row in stream:
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {line}: {len(row)} fields, but the header has "
                f"{len(header)} ({header})"
            )
        n += 1
        yield line, row
    if stream.skipped:
        warnings.warn(skipped_note(path, stream.skipped), stacklevel=2)
    if not n:
        raise ValueError(f"{path}: no data rows after the header")


def _standardize(x: Tensor, lengths: Tensor, n_train: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x - mean) / std per feature, statistics over the valid steps of the first n_train rows;
    padded steps stay 0. Returns (x, mean (d,), std (d,))."""
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]  # (b, l)
    seen = x[:n_train][valid[:n_train]].double()  # (steps, d)
    mean, std = seen.mean(0), seen.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = ((x.double() - mean) / std).float() * valid[..., None]
    return x, mean, std


def denormalize(spec: TaskSpec, values: Tensor) -> Tensor:
    """Undo the standardisation of a task: ``values * std + mean`` on the last axis."""
    if spec.mean is None or spec.std is None:
        return values
    std = torch.tensor(spec.std, dtype=values.dtype)
    return values * std + torch.tensor(spec.mean, dtype=values.dtype)


# ----------------------------------------------------------------------------------------------
# Classification


@dataclass(frozen=True)
class CSVClassificationConfig(TaskConfig):
    """Sequence classification from a wide CSV (one sequence per row) or an .npz file."""

    path: str | None = None  # .csv (header; one sequence per row) or .npz (x, y[, lengths])
    label_column: str = "label"  # CSV column holding the class of each row
    features: int = 1  # d: values per time step (a row is t0f0, t0f1, ..., t1f0, ...)
    normalize: bool = True  # standardise each feature with training statistics
    val_fraction: float = 0.1  # share of the rows for validation
    test_fraction: float = 0.1  # share of the rows for testing
    seed: int = 0  # shuffle of the rows before the split

    def validate(self) -> None:
        require_min(self, 1, "features")
        require_fraction(self, "val_fraction", "test_fraction")


def _read_classification_csv(
    path: Path, c: CSVClassificationConfig
) -> tuple[Tensor, list[str], Tensor]:
    header, rows = read_csv(path)
    if c.label_column not in header:
        raise ValueError(f"{path}: no label column {c.label_column!r}; the columns are {header}")
    li = header.index(c.label_column)
    value_cols = [j for j in range(len(header)) if j != li]
    if not value_cols or len(value_cols) % c.features:
        raise ValueError(
            f"{path}: {len(value_cols)} value columns is not a positive multiple of "
            f"CSVClassificationConfig.features = {c.features}"
        )
    L = len(value_cols) // c.features
    values, lengths, labels = array("d"), array("q"), []  # a few bytes per value
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            raise ValueError(
                f"{path}, line {line}: empty line; every line after the header must be a "
                "sequence (label and values), so remove it"
            )
        label = row[li].strip()
        if not label:
            raise ValueError(f"{path}, line {line}, column {c.label_column!r}: empty label")
        labels.append(label)
        cells = [row[j].strip() for j in value_cols]
        n = len(cells)
        while n and not cells[n - 1]:
            n -= 1
        for j in range(n):
            if is_missing(cells[j]):
                raise ValueError(
                    f"{path}, line {line}, column {header[value_cols[j]]!r}: missing value "
                    f"{cells[j]!r} inside the sequence (only empty cells at the end of a row may "
                    "shorten a sequence; fill or interpolate gaps inside it)"
                )
        values.extend([number(cells[j], path, line, header[value_cols[j]]) for j in range(n)])
        values.extend([0.0] * (len(cells) - n))  # padding after a shorter sequence
        if n == 0 or n % c.features:
            raise ValueError(
                f"{path}, line {line}: {n} values is not a positive multiple of "
                f"features = {c.features}"
            )
        lengths.append(n // c.features)
    x = _tensor(values, torch.float64).view(len(labels), L, c.features)  # (b, L, features)
    return x, labels, _tensor(lengths, torch.int64)


def _read_npz(path: Path, c: CSVClassificationConfig) -> tuple[Tensor, list[str], Tensor]:
    with np.load(path, allow_pickle=False) as z:
        missing = {"x", "y"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}; found {z.files}")
        x, y = np.asarray(z["x"]), np.asarray(z["y"])
        lengths = np.asarray(z["lengths"]) if "lengths" in z.files else None
    if x.ndim == 2:
        if x.shape[1] % c.features:
            raise ValueError(f"{path}: x has {x.shape[1]} columns, not a multiple of features")
        x = x.reshape(x.shape[0], -1, c.features)
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: x must be numeric (b, l) or (b, l, d), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: y must be integer ({x.shape[0]},), got {y.dtype} {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: x holds NaN or inf")
    if lengths is None:
        lengths = np.full(x.shape[0], x.shape[1])
    if lengths.shape != (x.shape[0],) or (lengths < 1).any() or (lengths > x.shape[1]).any():
        raise ValueError(f"{path}: lengths must be ({x.shape[0]},) in [1, {x.shape[1]}]")
    return torch.from_numpy(x).double(), [str(v) for v in y], torch.from_numpy(lengths).long()


def _class_ids(labels: list[str]) -> tuple[Tensor, tuple[str, ...]]:
    """Integer labels >= 0 are their own ids; otherwise ids follow the sorted label names."""
    if all(s.isdigit() for s in labels):
        ids = torch.tensor([int(s) for s in labels], dtype=torch.int64)
        return ids, tuple(str(i) for i in range(int(ids.max()) + 1))
    names = tuple(sorted(set(labels)))
    index = {s: i for i, s in enumerate(names)}
    return torch.tensor([index[s] for s in labels], dtype=torch.int64), names


def build_csv_classification(c: CSVClassificationConfig) -> TaskData:
    """Shapes: x (b, l, features) float32, zero past each length; y (b,) class ids."""
    path = _path(c)
    read = _read_npz if path.suffix == ".npz" else _read_classification_csv
    x, labels, lengths = read(path, c)
    x = x * (torch.arange(x.shape[1])[None, :, None] < lengths[:, None, None])  # zero padding
    y, classes = _class_ids(labels)
    b = len(y)
    order = torch.from_numpy(np.random.default_rng(c.seed).permutation(b))
    x, y, lengths = x[order], y[order], lengths[order]
    n_test, n_val = round(b * c.test_fraction), round(b * c.val_fraction)
    n_train = b - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{path}: {b} rows leave no training rows after val/test fractions")
    mean = std = None
    if c.normalize:
        x, m, s = _standardize(x, lengths, n_train)
        mean, std = tuple(m.tolist()), tuple(s.tolist())
    x = x.float()
    splits = split_rows(x, y, lengths, n_train, n_val)
    spec = TaskSpec(
        name="csv-classification",
        kind="classification",
        input="features",
        vocab_size=None,
        d_input=x.shape[2],
        n_outputs=len(classes),
        max_length=x.shape[1],
        causal=False,
        pad_id=None,
        description=f"sequence classification from {path.name} ({b} sequences)",
        classes=classes,
        mean=mean,
        std=std,
    )
    return TaskData(spec, *splits)


# ----------------------------------------------------------------------------------------------
# Forecasting


@dataclass(frozen=True)
class CSVForecastConfig(TaskConfig):
    """Per-step forecasting on a CSV time series (rows = time steps, columns = variables)."""

    path: str | None = None  # CSV with a header; one row per time step
    time_column: str | None = None  # column of timestamps to drop; None: all columns are data
    window: int = 64  # input steps per window (l)
    horizon: int = 1  # steps ahead of each target: y[t] = series[t + horizon]
    stride: int = 1  # steps between consecutive window starts
    normalize: bool = True  # standardise each variable with training-part statistics
    val_fraction: float = 0.1  # share of the steps (after train) for validation
    test_fraction: float = 0.2  # share of the steps (at the end) for testing
    seed: int = 0  # unused: the split is chronological and windows are not shuffled

    def validate(self) -> None:
        require_min(self, 1, "window", "horizon", "stride")
        require_fraction(self, "val_fraction", "test_fraction")
        require(self, "time_column", self.time_column != "", "a column name or None")


@dataclass(frozen=True)
class SeriesTable:
    """A long CSV read by :func:`read_series`: one row per line after the header."""

    values: Tensor  # (steps, variables) float64, NaN where a cell is missing
    names: list[str]  # the variables' column names
    lines: list[int]  # (steps,) line number of each step in the file
    labels: list[str] | None  # (steps,) cells of the time column, if one was named


def read_series(path: Path, time_column: str | None) -> SeriesTable:
    """Every line after the header is a time step; empty cells and NA / NaN markers are NaN
    at their step (never dropped, never shifted); non-numbers and infinities are errors, and
    so is a variable without any value."""
    header, rows = read_csv(path)
    if time_column is not None and time_column not in header:
        raise ValueError(f"{path}: no time column {time_column!r}; the columns are {header}")
    cols = [j for j, h in enumerate(header) if h != time_column]
    if not cols:
        raise ValueError(f"{path}: no value columns besides the time column")
    k_time = None if time_column is None else header.index(time_column)
    values, lines, labels = array("d"), [], None if k_time is None else []
    for line, row in rows:
        for j in cols:
            values.append(number(row[j], path, line, header[j]))  # NaN where missing
        lines.append(line)
        if labels is not None:
            labels.append(row[k_time].strip())
    series = _tensor(values, torch.float64).view(len(lines), len(cols))  # (steps, v)
    for k, j in enumerate(cols):
        if bool(series[:, k].isnan().all()):
            raise ValueError(f"{path}, column {header[j]!r}: every value is missing")
    return SeriesTable(series, [header[j] for j in cols], lines, labels)


def _tensor(values: array, dtype: torch.dtype) -> Tensor:
    """A tensor copy of a typed array (no per-element Python conversion)."""
    return (
        torch.frombuffer(values, dtype=dtype).clone()
        if len(values)
        else torch.zeros(0, dtype=dtype)
    )


def _require_complete(path: Path, table: SeriesTable) -> None:
    """csv-forecast models take no missing values: name the first one instead of filling it
    with a fake value or dropping its step (which would shift every later step in time)."""
    gaps = table.values.isnan()  # (steps, v)
    if bool(gaps.any()):
        i, k = (int(v) for v in torch.nonzero(gaps)[0])
        raise ValueError(
            f"{path}, line {table.lines[i]}, column {table.names[k]!r}: missing value (step "
            f"{i}; {int(gaps.sum())} missing cell(s) in all). csv-forecast cannot train on "
            "gaps: fill or interpolate them in the file (dropping the line would shift time)"
        )


def build_csv_forecast(c: CSVForecastConfig) -> TaskData:
    """Shapes: x (b, window, v) float32, y (b, window, v) with y[:, t] = series[s + t + horizon]."""
    path = _path(c)
    table = read_series(path, c.time_column)
    _require_complete(path, table)
    series, names = table.values, table.names
    n, v = series.shape
    n_test, n_val = int(n * c.test_fraction), int(n * c.val_fraction)
    n_train = n - n_val - n_test
    mean = std = None
    if c.normalize:
        m = series[:n_train].mean(0)
        s = series[:n_train].std(0, correction=0)
        s = torch.where(s > 0, s, torch.ones_like(s))
        series = (series - m) / s
        mean, std = tuple(m.tolist()), tuple(s.tolist())
    series = series.float()
    need = c.window + c.horizon
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n - n_test, n)}
    splits = {}
    for name, (a, e) in bounds.items():
        if e - a < need and (name == "train" or e > a):
            raise ValueError(
                f"{path}: the {name} part has {e - a} steps, fewer than window + horizon = "
                f"{need}; lower CSVForecastConfig.window or change the fractions"
            )
        starts = torch.arange(a, e - need + 1, c.stride)  # (b,)
        idx = starts[:, None] + torch.arange(c.window)[None, :]  # (b, l)
        lengths = full_lengths(len(starts), c.window)
        splits[name] = Split(series[idx], series[idx + c.horizon], lengths)
    spec = TaskSpec(
        name="csv-forecast",
        kind="forecast",
        input="features",
        vocab_size=None,
        d_input=v,
        n_outputs=v,
        max_length=c.window,
        causal=True,
        pad_id=None,
        description=f"{c.horizon}-step-ahead forecast of {names} from {path.name} ({n} steps)",
        mean=mean,
        std=std,
    )
    return TaskData(spec, splits["train"], splits["val"], splits["test"])


register(
    "csv-classification",
    CSVClassificationConfig,
    build_csv_classification,
    "your sequences: one per CSV row (or .npz), label column",
)
register("csv-forecast", CSVForecastConfig, build_csv_forecast, "your CSV time series, per-step")
