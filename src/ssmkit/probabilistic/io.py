"""Reading time series from CSV files, and the bundled data sets.

A CSV file has a header row; each selected column is one observed series (one entry of
y_t). After the header every line is one time step: empty cells and NA / NaN / nan are
missing values, an empty line is a missing value in a one-column file and a row of missing
values otherwise, so a gap never shifts the later observations in time. Only blank lines at
the very end of the file are skipped, and the reader says so (:attr:`Series.notes` and a
warning). A UTF-8 byte order mark is ignored. An index column (dates, years) is kept as text
labels.
"""

from __future__ import annotations

import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch

from ssmkit.core.csvrows import RowStream, number, skipped_note

Tensor = torch.Tensor
INDEX_NAMES = {"date", "time", "year", "month", "quarter", "period", "index", "t"}
DATASETS = Path(__file__).resolve().parent / "datasets"


@dataclass(frozen=True)
class Series:
    """Columns of a CSV file as a tensor."""

    y: Tensor  # (l, o) float64 values, NaN where missing
    columns: tuple[str, ...]  # names of the o columns
    index: tuple[str, ...] | None  # (l,) labels from the index column, if any
    index_name: str | None  # name of the index column
    notes: tuple[str, ...] = ()  # what the reader changed (skipped trailing blank lines)

    @property
    def n_steps(self) -> int:
        """l: the number of time steps (rows after the header), missing ones included."""
        return self.y.shape[0]

    @property
    def n_observed(self) -> int:
        """Observed cells: l * o minus the missing ones."""
        return int((~torch.isnan(self.y)).sum())


def read_csv(
    path: str | Path, columns: list[str] | None = None, index_column: str | None = None
) -> Series:
    """Read numeric columns of a CSV file, one row per time step.

    Args:
        path: the file (UTF-8, with or without a byte order mark).
        columns: names of the columns to read; default all columns except the index.
        index_column: name of a label column; by default the first column when it is
            called date, time, year, month, quarter, period, index or t.

    Returns:
        A :class:`Series` with y of shape (l, o), l = the number of lines after the header
        less the blank lines at the end of the file (counted in ``notes``).

    Raises:
        ValueError: unknown or repeated column names, ragged rows, no data rows, a cell that
            is neither a finite number nor a missing marker (the message names file, line and
            column), or a selected column without any observed value.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file {str(path)!r} does not exist")
    stream = RowStream(path)  # one row at a time: a few bytes per value, not ~30x the file
    header = stream.header
    if not any(header):
        raise ValueError(f"{path}: line 1 must be the header row (column names), got {header}")
    if index_column is None and header[0].lower() in INDEX_NAMES and len(header) > 1:
        index_column = header[0]
    if index_column is not None and index_column not in header:
        raise ValueError(f"{path}: no index column {index_column!r}; columns are {header}")
    if columns is None:
        columns = [h for h in header if h != index_column]
    for c in columns:
        if c not in header:
            raise ValueError(f"{path}: no column {c!r}; columns are {header}")
        if header.count(c) > 1:
            raise ValueError(f"{path}: the header names column {c!r} {header.count(c)} times")
    cols = [header.index(c) for c in columns]
    k_index = None if index_column is None else header.index(index_column)
    values, labels, n, last = array("d"), [], 0, 1
    for line, row in stream:
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} cells, header has {len(header)}")
        values.extend([number(row[j], path, line, header[j]) for j in cols])
        if k_index is not None:
            labels.append(row[k_index].strip())
        n, last = n + 1, line
    notes = ()
    if stream.skipped:
        hint = " (write a missing last value as NA)" if len(header) == 1 else ""
        notes = (skipped_note(path, stream.skipped) + hint,)
        warnings.warn(notes[0], stacklevel=2)
    if n == 0:
        raise ValueError(f"{path}: needs a header row and at least one data row")
    y = torch.frombuffer(values, dtype=torch.float64).clone().reshape(n, len(cols))  # (l, o)
    for k, c in enumerate(columns):
        if bool(torch.isnan(y[:, k]).all()):
            raise ValueError(
                f"{path}, column {c!r}: all {n} values are missing (lines 2-{last}); there is "
                "nothing to model"
            )
    index = None if k_index is None else tuple(labels)
    return Series(y, tuple(columns), index, index_column, notes)


def nile_path() -> Path:
    """The bundled Nile series: annual flow of the Nile at Aswan, 1871-1970 (100 values,
    10^8 m^3; Cobb 1978, Durbin & Koopman 2012), CSV with columns year, flow."""
    return DATASETS / "nile.csv"


def load_nile() -> Series:
    """The Nile series as a :class:`Series` of shape (100, 1)."""
    return read_csv(nile_path())


def sunspots_path() -> Path:
    """The bundled yearly sunspot numbers, 1700-2008 (309 values; the copy distributed with
    statsmodels as ``sm.datasets.sunspots``, from NOAA's National Geophysical Data Center,
    public domain), CSV with columns year, sunactivity."""
    return DATASETS / "sunspots.csv"


def load_sunspots() -> Series:
    """The sunspot series as a :class:`Series` of shape (309, 1)."""
    return read_csv(sunspots_path())
