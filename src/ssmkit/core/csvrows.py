"""The row rules of every CSV reader in ssmkit, in one place.

A file has a header row; after it, every line is one row, so nothing is dropped or shifted:

* an empty line (or one of blanks only) is a row of empty cells: in a one-column file that
  is one missing value, in a wider file a row of missing values;
* only blank lines at the very end of the file are skipped; :attr:`CSVRows.skipped` counts
  them and :func:`skipped_note` words the note the readers report;
* :class:`RowStream` applies these rules one row at a time (readers convert each row as it
  comes, so memory stays a few bytes per value); :func:`read_rows` keeps them all;
* a UTF-8 byte order mark is ignored; a file that is not UTF-8 text, or that the csv module
  cannot parse, is a ``ValueError`` naming the file (and line).

A numeric cell is read by :func:`number` (one rule for every reader): blanks around it are
ignored, the markers in :data:`MISSING` are a missing value, NaN; any other text that is not
a finite number (``-nan``, ``inf``, ``abc``) is an error naming the file, line and column. Whether a
missing value is allowed where it stands, and the checks on the table's shape (header
present, at least one row, no ragged rows), are the caller's business, worded for its users.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MISSING = frozenset({"", "na", "nan", "n/a", "null", "."})  # missing-value cells, lower case


@dataclass(frozen=True)
class CSVRows:
    """A CSV file cut into a header and rows."""

    header: list[str]  # column names, stripped of surrounding blanks
    rows: list[tuple[int, list[str]]]  # (line number, cells) of every row after the header
    skipped: int  # blank lines dropped at the end of the file


class RowStream:
    """The rows of a CSV file one at a time, by the module's rules, in O(one row) memory.

    ``header`` is read on construction; iterating yields ``(line number, cells)`` of every row
    after it (a blank row as ``[""] * len(header)``, held back until a non-blank row shows it
    is not at the end); after the iteration ``skipped`` counts the blank lines at the end.
    A stream can be iterated once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped = 0
        self._used = False
        with self._reader() as reader:
            self.header = [h.strip() for h in next(reader, [])]

    @contextmanager
    def _reader(self) -> Iterator[Any]:
        """An open csv reader; decoding and parsing errors become ValueErrors naming the line."""
        reader = None
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                yield reader
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{self.path}: not UTF-8 text ({err.reason} at byte {err.start})"
            ) from None
        except csv.Error as err:
            line = reader.line_num if reader is not None else 1
            raise ValueError(f"{self.path}, line {line}: {err}") from None

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        if self._used:
            raise RuntimeError(f"the rows of {self.path} were already read (one pass only)")
        self._used = True
        blank_row = [""] * len(self.header)
        with self._reader() as reader:
            next(reader, None)  # the header
            pending: list[int] = []  # line numbers of blank rows not yet known to be inside
            for row in reader:
                if not row or (len(row) == 1 and row[0].isspace()):
                    pending.append(reader.line_num)
                    continue
                for line in pending:
                    yield line, list(blank_row)
                pending.clear()
                yield reader.line_num, row
            self.skipped = len(pending)


def read_rows(path: str | Path) -> CSVRows:
    """Header and (line number, cells) of every line after it, by the module's rules.

    Holds every cell as a Python string (about 30x the file size): readers of large files
    iterate a :class:`RowStream` instead and convert each row as it comes.

    Args:
        path: the file (UTF-8, with or without a byte order mark).

    Returns:
        A :class:`CSVRows`; a blank row is ``[""] * len(header)``.

    Raises:
        ValueError: the file is not UTF-8 text or not parseable CSV (names file and line).
    """
    stream = RowStream(path)
    rows = list(stream)
    return CSVRows(stream.header, rows, stream.skipped)


def skipped_note(path: str | Path, skipped: int) -> str:
    """The note a reader reports for ``skipped`` blank lines at the end of ``path``."""
    return f"{path}: skipped {skipped} blank line(s) at the end of the file"


def is_missing(cell: str) -> bool:
    """Whether ``cell`` is a missing-value marker (see :data:`MISSING`), blanks ignored."""
    return cell.strip().lower() in MISSING


def number(cell: str, path: str | Path, line: int, column: str) -> float:
    """The value of a numeric cell: a float, or NaN for a missing value.

    Args:
        cell: the cell's text (blanks around it are ignored).
        path, line, column: where it stands, for the error message.

    Raises:
        ValueError: the cell is neither a finite number nor a missing marker.
    """
    text = cell.strip()
    if text.lower() in MISSING:
        return math.nan
    try:
        value = float(text)
        if math.isnan(value):  # a NaN spelled otherwise than a marker (-nan, +NaN)
            raise ValueError(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}, column {column!r}: {cell!r} is not a number "
            "(missing values may be left empty or written NA)"
        ) from None
    if math.isinf(value):
        raise ValueError(f"{path}, line {line}, column {column!r}: infinite value {cell!r}")
    return value
