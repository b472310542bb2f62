"""Reading time series from CSV files, and the bundled data sets.

A CSV file has a header row; each selected column is one observed series (one entry of
y_t). Empty cells and NA / NaN / nan are missing values. An index column (dates, years) is
kept as text labels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

Tensor = torch.Tensor
MISSING = {"", "na", "nan", "n/a", "null", "."}
INDEX_NAMES = {"date", "time", "year", "month", "quarter", "period", "index", "t"}
DATASETS = Path(__file__).resolve().parent / "datasets"


@dataclass(frozen=True)
class Series:
    """Columns of a CSV file as a tensor."""

    y: Tensor  # (l, o) float64 values, NaN where missing
    columns: tuple[str, ...]  # names of the o columns
    index: tuple[str, ...] | None  # (l,) labels from the index column, if any
    index_name: str | None  # name of the index column


def read_csv(
    path: str | Path, columns: list[str] | None = None, index_column: str | None = None
) -> Series:
    """Read numeric columns of a CSV file.

    Args:
        path: the file.
        columns: names of the columns to read; default all columns except the index.
        index_column: name of a label column; by default the first column when it is
            called date, time, year, month, quarter, period, index or t.

    Raises:
        ValueError: unknown column names, ragged rows, no data rows, or a cell that is
            neither a number nor a missing marker (the message names file, line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file {str(path)!r} does not exist")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if index_column is None and header[0].lower() in INDEX_NAMES and len(header) > 1:
        index_column = header[0]
    if index_column is not None and index_column not in header:
        raise ValueError(f"{path}: no index column {index_column!r}; columns are {header}")
    if columns is None:
        columns = [h for h in header if h != index_column]
    for c in columns:
        if c not in header:
            raise ValueError(f"{path}: no column {c!r}; columns are {header}")
    cols = [header.index(c) for c in columns]
    values = []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}, line {lineno}: {len(row)} cells, header has {len(header)}")
        values.append([_number(row[j], path, lineno, header[j]) for j in cols])
    index = None
    if index_column is not None:
        k = header.index(index_column)
        index = tuple(r[k].strip() for r in rows[1:])
    y = torch.tensor(values, dtype=torch.float64).reshape(len(values), len(cols))
    return Series(y, tuple(columns), index, index_column)


def _number(cell: str, path: Path, lineno: int, column: str) -> float:
    text = cell.strip()
    if text.lower() in MISSING:
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {lineno}, column {column!r}: {cell!r} is not a number "
            "(missing values may be left empty or written NA)"
        ) from None
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{path}, line {lineno}, column {column!r}: infinite value {cell!r}")
    return value


def nile_path() -> Path:
    """The bundled Nile series: annual flow of the Nile at Aswan, 1871-1970 (100 values,
    10^8 m^3; Cobb 1978, Durbin & Koopman 2012), CSV with columns year, flow."""
    return DATASETS / "nile.csv"


def load_nile() -> Series:
    """The Nile series as a :class:`Series` of shape (100, 1)."""
    return read_csv(nile_path())
