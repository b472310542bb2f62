"""One rule for numeric CSV cells (ssmkit.core.csvrows.number), shared by every reader."""

import math

import pytest

from ssmkit.core.csvrows import MISSING, is_missing, number


@pytest.mark.parametrize("cell", ["", " ", "NA", "na", "NaN", "nan", "N/A", "null", ".", " NA "])
def test_missing_markers_read_as_nan(cell):
    assert is_missing(cell)
    assert math.isnan(number(cell, "f.csv", 3, "y"))


@pytest.mark.parametrize(("cell", "value"), [("1.5", 1.5), (" -2e3 ", -2000.0), ("0", 0.0)])
def test_numbers_read_as_floats(cell, value):
    assert not is_missing(cell)
    assert number(cell, "f.csv", 3, "y") == value


@pytest.mark.parametrize(
    ("cell", "match"),
    [
        ("abc", r"f\.csv, line 3, column 'y': 'abc' is not a number \(missing values may"),
        ("-nan", r"line 3, column 'y': '-nan' is not a number"),
        ("inf", r"f\.csv, line 3, column 'y': infinite value 'inf'"),
        ("-Infinity", r"infinite value '-Infinity'"),
    ],
)
def test_other_text_is_an_error_naming_file_line_and_column(cell, match):
    with pytest.raises(ValueError, match=match):
        number(cell, "f.csv", 3, "y")


def test_the_markers_are_lower_case():
    assert all(m == m.lower().strip() for m in MISSING)
