"""User CSV / NPZ loaders: round trips through temporary files and clear errors on bad files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ssmkit.data import build_task, task_config
from ssmkit.data.user import denormalize, read_series
from tests.data.conftest import write_classification_csv, write_series_csv


def _cls_config(path, **changes):
    return dataclasses.replace(task_config("csv-classification"), path=str(path), **changes)


def _fc_config(path, **changes):
    return dataclasses.replace(task_config("csv-forecast"), path=str(path), **changes)


def test_csv_classification_round_trip(tmp_path):
    f = tmp_path / "seqs.csv"
    labels, rows = write_classification_csv(f, n_rows=30, n_values=12)
    data = build_task("csv-classification", _cls_config(f, features=2, normalize=False))
    spec = data.spec
    assert spec.classes == ("a", "b") and spec.d_input == 2 and spec.max_length == 6
    assert [len(s) for s in data.splits().values()] == [24, 3, 3]
    by_values = {tuple(np.float32(v) for v in r): lab for r, lab in zip(rows, labels, strict=True)}
    seen = 0
    for split in data.splits().values():
        for x, y, n in zip(split.x, split.y, split.lengths, strict=True):
            values = tuple(x[: int(n)].reshape(-1).numpy())
            assert by_values[values] == spec.classes[int(y)]
            assert bool((x[int(n) :] == 0).all())
            seen += 1
    assert seen == 30
    assert sorted(int(n) for s in data.splits().values() for n in s.lengths) == sorted(
        len(r) // 2 for r in rows
    )


def test_csv_classification_normalises_with_train_statistics(tmp_path):
    f = tmp_path / "seqs.csv"
    write_classification_csv(f, n_rows=30, n_values=12)
    raw = build_task("csv-classification", _cls_config(f, normalize=False))
    data = build_task("csv-classification", _cls_config(f))
    valid = torch.arange(12)[None, :] < data.train.lengths[:, None]
    seen = data.train.x[valid].double()
    assert float(seen.mean()) == pytest.approx(0, abs=1e-6)
    assert float(seen.std(correction=0)) == pytest.approx(1, abs=1e-5)
    back = denormalize(data.spec, data.test.x) * (
        torch.arange(12)[None, :, None] < data.test.lengths[:, None, None]
    )
    torch.testing.assert_close(back, raw.test.x, atol=1e-5, rtol=1e-5)


def test_integer_labels_are_class_ids(tmp_path):
    f = tmp_path / "ints.csv"
    f.write_text("x1,x2,label\n" + "".join(f"{i},{i + 1},{i % 3}\n" for i in range(20)))
    data = build_task("csv-classification", _cls_config(f, normalize=False))
    assert data.spec.classes == ("0", "1", "2")
    for s in data.splits().values():
        assert torch.equal(s.y, s.x[:, 0, 0].long() % 3)


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 9, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=20)
    lengths = rng.integers(1, 10, size=20)
    x[np.arange(9)[None, :] >= lengths[:, None]] = 0.0
    f = tmp_path / "seqs.npz"
    np.savez(f, x=x, y=y, lengths=lengths)
    data = build_task("csv-classification", _cls_config(f, normalize=False))
    got = {
        tuple(s.x[i].reshape(-1).tolist()): (int(s.y[i]), int(s.lengths[i]))
        for s in data.splits().values()
        for i in range(len(s))
    }
    for i in range(20):
        assert got[tuple(x[i].reshape(-1).tolist())] == (y[i], lengths[i])
    np.savez(tmp_path / "bad.npz", x=x, y=y.astype(np.float64))
    with pytest.raises(ValueError, match="y must be integer"):
        build_task("csv-classification", _cls_config(tmp_path / "bad.npz"))
    np.savez(tmp_path / "nox.npz", y=y)
    with pytest.raises(ValueError, match=r"missing arrays \['x'\]"):
        build_task("csv-classification", _cls_config(tmp_path / "nox.npz"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("label,a,b\n1,0.5,abc\n", r"line 2, column 'b': 'abc' is not a number"),
        ("label,a,b\n1,0.5,1\n0,2\n", r"line 3: 2 fields, but the header has 3"),
        ("label,a,b\n1,0.5,1,7\n", r"line 2: 4 fields, but the header has 3"),
        ("y,a,b\n1,0.5,1\n", r"no label column 'label'; the columns are \['y', 'a', 'b'\]"),
        ("label,a,b\n1,,1\n", r"line 2, column 'a': missing value '' inside the sequence"),
        ("label,a,b\n,1,1\n", r"line 2, column 'label': empty label"),
        ("label,a,b\n1,nan,1\n", r"column 'a': missing value 'nan' inside the sequence"),
        ("label,a,b\n1,1,2\n\n0,3,4\n", r"line 3: empty line; every line after the header"),
        ("label,a,b\n", r"no data rows"),
        ("", r"empty file"),
    ],
)
def test_bad_classification_csv_gives_clear_errors(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        build_task("csv-classification", _cls_config(f))
    assert "bad.csv" in str(info.value)


def test_classification_features_must_divide_the_columns(tmp_path):
    f = tmp_path / "odd.csv"
    f.write_text("label,a,b,c\n1,1,2,3\n")
    with pytest.raises(ValueError, match="3 value columns is not a positive multiple"):
        build_task("csv-classification", _cls_config(f, features=2))


def test_missing_path_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"CSVClassificationConfig\.path is required"):
        build_task("csv-classification")
    with pytest.raises(ValueError, match=r"CSVForecastConfig\.path: no such file"):
        build_task("csv-forecast", _fc_config(tmp_path / "nope.csv"))


# ----------------------------------------------------------------------------------------------
# Forecasting


def test_csv_forecast_round_trip(tmp_path):
    f = tmp_path / "series.csv"
    values = write_series_csv(f, n=300)
    c = _fc_config(f, time_column="time", window=20, horizon=2, stride=5, normalize=False)
    data = build_task("csv-forecast", c)
    assert data.spec.kind == "forecast" and data.spec.d_input == data.spec.n_outputs == 2
    bounds = {"train": (0, 210), "val": (210, 240), "test": (240, 300)}  # 70 / 10 / 20 %
    for name, split in data.splits().items():
        a, e = bounds[name]
        starts = list(range(a, e - 22 + 1, 5))
        assert len(split) == len(starts)
        for s, x, y in zip(starts, split.x, split.y, strict=True):
            np.testing.assert_allclose(x.numpy(), values[s : s + 20], atol=1e-6)
            np.testing.assert_allclose(y.numpy(), values[s + 2 : s + 22], atol=1e-6)


def test_csv_forecast_normalises_with_train_statistics_only(tmp_path):
    f = tmp_path / "series.csv"
    values = write_series_csv(f, n=300)
    c = _fc_config(f, time_column="time", window=10)
    data = build_task("csv-forecast", c)
    np.testing.assert_allclose(data.spec.mean, values[:210].mean(0), atol=1e-9)
    np.testing.assert_allclose(data.spec.std, values[:210].std(0), atol=1e-9)
    raw = build_task("csv-forecast", dataclasses.replace(c, normalize=False))
    torch.testing.assert_close(
        denormalize(data.spec, data.test.y), raw.test.y, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(
    ("text", "time_column", "match"),
    [
        ("t,a\n0,1\n1,x1\n", "t", r"line 3, column 'a': 'x1' is not a number"),
        ("t,a\n0,1\n1,\n", "t", r"line 3, column 'a': missing value"),
        ("t,a\n0,1\n1\n", "t", r"line 3: 1 fields, but the header has 2"),
        ("t,a\n0,1\n", "time", r"no time column 'time'; the columns are \['t', 'a'\]"),
        (
            "a\n" + "1\n" * 20,
            None,
            r"the train part has 14 steps, fewer than window \+ horizon = 65",
        ),
    ],
)
def test_bad_series_csv_gives_clear_errors(tmp_path, text, time_column, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        build_task("csv-forecast", _fc_config(f, time_column=time_column))
    assert "bad.csv" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Missing values, blank lines, byte order marks: nothing dropped, nothing shifted


def test_read_series_keeps_missing_values_at_their_step(tmp_path):
    f = tmp_path / "gaps.csv"
    f.write_bytes(b"t,a,b\r\n0,1,2\r\n1,,3\r\n\r\n3,4,NA\r\n")
    table = read_series(f, "t")
    want = torch.tensor([[1, 2], [np.nan, 3], [np.nan, np.nan], [4, np.nan]], dtype=torch.float64)
    torch.testing.assert_close(table.values, want, equal_nan=True)
    assert table.names == ["a", "b"] and table.lines == [2, 3, 4, 5]
    assert table.labels == ["0", "1", "", "3"]


@pytest.mark.parametrize(
    ("gap", "match"),
    [
        ("", r"gaps\.csv, line 12, column 'a': missing value \(step 10; 2 missing cell"),
        ("NA", r"gaps\.csv, line 12, column 'a': missing value \(step 10; 1 missing cell"),
    ],
)
def test_csv_forecast_refuses_a_gap_instead_of_shifting_time(tmp_path, gap, match):
    f = tmp_path / "gaps.csv"
    values = write_series_csv(f, n=300)
    lines = f.read_text().splitlines()
    lines[11] = "" if not gap else f"10,{gap},{values[10, 1]}"  # step 10 is line 12
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        build_task("csv-forecast", _fc_config(f, time_column="time", window=10))


def test_csv_forecast_all_missing_column_is_an_error(tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("t,a,b\n0,1,\n1,2,NA\n2,3,\n")
    with pytest.raises(ValueError, match=r"empty\.csv, column 'b': every value is missing"):
        build_task("csv-forecast", _fc_config(f, time_column="t", window=1))


def test_csv_forecast_bom_and_trailing_blank_lines(tmp_path):
    f = tmp_path / "series.csv"
    values = write_series_csv(f, n=300)
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes() + b"\n\n")
    c = _fc_config(f, time_column="time", window=20, normalize=False)
    with pytest.warns(UserWarning, match=r"skipped 2 blank line\(s\) at the end"):
        data = build_task("csv-forecast", c)
    assert data.spec.d_input == 2 and "(300 steps)" in data.spec.description
    np.testing.assert_allclose(data.test.y[-1, -1].numpy(), values[-1], atol=1e-6)


def test_csv_classification_bom_and_trailing_blank_lines(tmp_path):
    f = tmp_path / "seqs.csv"
    write_classification_csv(f, n_rows=30, n_values=6)
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes() + b"\n \n")
    with pytest.warns(UserWarning, match=r"skipped 2 blank line\(s\) at the end"):
        data = build_task("csv-classification", _cls_config(f))
    assert sum(len(s) for s in data.splits().values()) == 30


@pytest.mark.parametrize("marker", ["NA", "nan", "null"])
def test_csv_classification_missing_feature_is_an_error(tmp_path, marker):
    """A marked gap is never dropped nor read as a shorter sequence, even in the last column."""
    f = tmp_path / "cls.csv"
    for line, where in ((f"0,1,{marker},3", "b"), (f"0,1,3,{marker}", "c")):
        f.write_text(f"label,a,b,c\n1,0.5,1,2\n{line}\n")
        match = rf"cls\.csv, line 3, column '{where}': missing value '{marker}' inside the seq"
        with pytest.raises(ValueError, match=match):
            build_task("csv-classification", _cls_config(f))
