"""The row rules of every CSV reader in ssmkit, in one place.

A file has a header row; after it, every line is one row, so nothing is dropped or shifted:

* an empty line (or one of blanks only) is a row of empty cells: in a one-column file that
  is one missing value, in a wider file a row of missing values;
* only blank lines at the very end of the file are skipped; :attr:`CSVRows.skipped` counts
  them and :func:`skipped_note` words the note the readers report;
* a UTF-8 byte order mark is ignored; a file that is not UTF-8 text, or that the csv module
  cannot parse, is a ``ValueError`` naming the file (and line).

What a cell means (a number, a missing marker, a label) is the caller's business, and so are
the checks on the table's shape (header present, at least one row, no ragged rows), whose
messages each reader words for its own users.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CSVRows:
    """A CSV file cut into a header and rows."""

    header: list[str]  # column names, stripped of surrounding blanks
    rows: list[tuple[int, list[str]]]  # (line number, cells) of every row after the header
    skipped: int  # blank lines dropped at the end of the file


def read_rows(path: str | Path) -> CSVRows:
    """Header and (line number, cells) of every line after it, by the module's rules.

    Args:
        path: the file (UTF-8, with or without a byte order mark).

    Returns:
        A :class:`CSVRows`; a blank row is ``[""] * len(header)``.

    Raises:
        ValueError: the file is not UTF-8 text or not parseable CSV (names file and line).
    """
    path = Path(path)
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        line = reader.line_num if reader is not None else 1
        raise ValueError(f"{path}, line {line}: {err}") from None
    blank = [not row or (len(row) == 1 and row[0].isspace()) for _, row in rows]
    n = len(rows)
    while n and blank[n - 1]:
        n -= 1
    pairs = zip(rows[:n], blank[:n], strict=True)
    kept = [(line, [""] * len(header) if b else row) for (line, row), b in pairs]
    return CSVRows(header, kept, len(rows) - n)


def skipped_note(path: str | Path, skipped: int) -> str:
    """The note a reader reports for ``skipped`` blank lines at the end of ``path``."""
    return f"{path}: skipped {skipped} blank line(s) at the end of the file"
