"""Missing values in real files: every line after the header is a time step, a gap stays a
NaN at its step (never dropped, never shifted), and the likelihood, the observation count
and the CLI see the same series as statsmodels does."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ssmkit.cli import main
from ssmkit.probabilistic.filters import log_likelihood
from ssmkit.probabilistic.fit import fit_mle
from ssmkit.probabilistic.io import read_csv
from ssmkit.probabilistic.spec import structural_spec
from ssmkit.probabilistic.structural import local_level, structural_model

NAN = math.nan
GAPS = [4, 5, 17, 30, 31, 32, 58]  # 0-based steps left empty in the gappy file


def _write(path, text: str, newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def _values(s) -> list[float]:
    return [float(v) for v in s.y.reshape(-1)]


def _same(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want, strict=True)
    )


def _level_series(n: int = 60) -> np.ndarray:
    """A local level path with noise, values rounded to what the file holds, NaN at GAPS."""
    g = np.random.default_rng(3)
    y = np.round(10 + np.cumsum(g.normal(size=n)) + 0.7 * g.normal(size=n), 6)
    y[GAPS] = np.nan
    return y


def _one_column_file(path, y: np.ndarray, trailing: str = "\n"):
    """Header 'y', one value per line, an empty line for each gap."""
    lines = ["y"] + ["" if np.isnan(v) else repr(float(v)) for v in y]
    return _write(path, "\n".join(lines) + trailing)


# ----------------------------------------------------------------------------------------------
# The reader


def test_empty_lines_in_a_one_column_file_are_missing_values(tmp_path):
    s = read_csv(_write(tmp_path / "a.csv", "y\n1\n\n3\n\n\n6\n"))
    assert _same(_values(s), [1, NAN, 3, NAN, NAN, 6])
    assert s.n_steps == 6 and s.n_observed == 3 and s.notes == ()


@pytest.mark.parametrize("marker", ["", "NA", "na", "NaN", "nan", "N/A", "null", ".", '""', " "])
def test_missing_markers_next_to_an_empty_line(tmp_path, marker):
    s = read_csv(_write(tmp_path / "m.csv", f"y\n1\n{marker}\n\n4\n"))
    assert _same(_values(s), [1, NAN, NAN, 4])


def test_multi_column_file_with_empty_cells_and_empty_lines(tmp_path):
    text = "date,a,b\n2020-01,1,2\n,,\n2020-03,,4\n\n2020-05,5,NA\n"
    s = read_csv(_write(tmp_path / "m.csv", text))
    assert s.columns == ("a", "b") and s.index_name == "date"
    assert s.index == ("2020-01", "", "2020-03", "", "2020-05")
    assert _same(_values(s), [1, 2, NAN, NAN, NAN, 4, NAN, NAN, 5, NAN])
    assert s.n_steps == 5 and s.n_observed == 4
    assert _same(_values(read_csv(tmp_path / "m.csv", ["b"])), [2, NAN, 4, NAN, NAN])


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_one_trailing_newline_is_no_row_and_no_note(tmp_path, newline):
    s = read_csv(_write(tmp_path / "t.csv", "y\n1\n\n3\n", newline))
    assert _same(_values(s), [1, NAN, 3]) and s.notes == ()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_several_trailing_blank_lines_are_skipped_and_reported(tmp_path, newline):
    path = _write(tmp_path / "t.csv", "y\n1\n\n3\n\n\n  \n", newline)
    with pytest.warns(UserWarning, match=r"skipped 3 blank line\(s\) at the end") as rec:
        s = read_csv(path)
    assert len(rec) == 1
    assert _same(_values(s), [1, NAN, 3])
    assert len(s.notes) == 1 and "skipped 3 blank line(s)" in s.notes[0]
    assert "write a missing last value as NA" in s.notes[0]
    last_missing = read_csv(_write(tmp_path / "na.csv", "y\n1\n\n3\nNA\n", newline))
    assert _same(_values(last_missing), [1, NAN, 3, NAN]) and last_missing.notes == ()


def test_crlf_file_with_gaps_and_dates(tmp_path):
    path = _write(tmp_path / "c.csv", "year,flow\n1871,1120\n1872,\n\n1874,963\n", "\r\n")
    s = read_csv(path)
    assert s.index == ("1871", "1872", "", "1874") and s.columns == ("flow",)
    assert _same(_values(s), [1120, NAN, NAN, 963])


def test_byte_order_mark_is_stripped(tmp_path):
    path = _write(tmp_path / "b.csv", "\ufeffdate,sales\n2020-01,1.5\n2020-02,\n")
    s = read_csv(path)
    assert s.index_name == "date" and s.columns == ("sales",)
    assert s.index == ("2020-01", "2020-02") and _same(_values(s), [1.5, NAN])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("y\n1\n\nabc\n", r"b\.csv, line 4, column 'y': 'abc' is not a number"),
        ("y\n1\n\n-Infinity\n", r"b\.csv, line 4, column 'y': infinite value '-Infinity'"),
        ("t,y\n1,2\n\n3,inf\n", r"b\.csv, line 4, column 'y': infinite value 'inf'"),
        ("t,a,b\n1,2,\n2,3,NA\n\n", r"b\.csv, column 'b': all 2 values are missing"),
        ("\ny\n1\n", r"b\.csv: line 1 must be the header row"),
    ],
)
def test_bad_files_name_file_line_and_column(tmp_path, text, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            read_csv(_write(tmp_path / "b.csv", text))


def test_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("caf\xe9\n1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"l\.csv: not UTF-8 text"):
        read_csv(path)


# ----------------------------------------------------------------------------------------------
# The likelihood sees the gaps where they are


def test_local_level_loglik_on_gappy_file_equals_tensor_and_statsmodels(tmp_path):
    y = _level_series()
    s = read_csv(_one_column_file(tmp_path / "g.csv", y))
    assert s.n_steps == len(y) and s.n_observed == len(y) - len(GAPS)
    np.testing.assert_array_equal(s.y[:, 0].numpy(), y)  # NaN at the same steps
    sigma2_irregular, sigma2_level = 0.49, 1.2
    model = structural_model(local_level(sigma2_level), sigma2_obs=sigma2_irregular)
    tensor = torch.tensor(y, dtype=torch.float64).view(1, -1, 1)  # (1, l, 1)
    from_file = s.y.unsqueeze(0)  # (1, l, 1)
    for diffuse in ("exact", "approximate"):
        ll_file = float(log_likelihood(model, from_file, diffuse=diffuse, burn=1))
        ll_tensor = float(log_likelihood(model, tensor, diffuse=diffuse, burn=1))
        assert ll_file == ll_tensor
    import statsmodels.api as sm  # a dev dependency: never skipped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sm.tsa.UnobservedComponents(y, "local level")
        sm_ll = ref.loglike(np.array([sigma2_irregular, sigma2_level]))
    ours = float(
        log_likelihood(model, from_file, diffuse="approximate", burn=ref.loglikelihood_burn)
    )
    np.testing.assert_allclose(ours, sm_ll, rtol=1e-6)
    assert ref.nobs == s.n_steps  # statsmodels counts time steps, gaps included


# ----------------------------------------------------------------------------------------------
# Too little data for the model


def test_fit_rejects_too_few_observations_and_infinite_values():
    y = torch.tensor([1.0, NAN, NAN, 2.0, NAN], dtype=torch.float64).view(1, -1, 1)
    with pytest.raises(ValueError, match=r"series 0 has 2 observed step\(s\) of 5 time steps"):
        fit_mle(structural_spec(y), y)
    short = torch.arange(8, dtype=torch.float64).view(1, -1, 1)
    with pytest.raises(ValueError, match=r"3 parameter\(s\), 12 diffuse state\(s\)"):
        fit_mle(structural_spec(short, seasonal_period=12), short)
    bad = short.clone()
    bad[0, 3, 0] = math.inf
    with pytest.raises(
        ValueError, match=r"y must be finite or NaN \(missing\); y\[0, 3, 0\] = inf"
    ):
        fit_mle(structural_spec(short), bad)
    with pytest.raises(ValueError, match=r"y must have shape \(b, l, o\)"):
        fit_mle(structural_spec(short), short[0])


# ----------------------------------------------------------------------------------------------
# The command line


def test_cli_fit_counts_observations_of_a_gappy_file(tmp_path, capsys):
    y = _level_series()
    path = _one_column_file(tmp_path / "g.csv", y, trailing="\n\n\n")
    out = tmp_path / "o"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI prints the note instead of warning
        assert main(["fit", str(path), "--out", str(out), "--horizon", "2"]) == 0
    captured = capsys.readouterr()
    n, k = len(y), len(GAPS)
    assert f"series 'y', {n - k} observations ({n} time steps, {k} missing)" in captured.out
    assert "note:" in captured.err and "skipped 2 blank line(s)" in captured.err
    rows = (out / "smoothed_states.csv").read_text().splitlines()
    assert len(rows) == n + 1
    assert [i for i, r in enumerate(rows[1:]) if r.split(",")[1] == "nan"] == GAPS


def test_cli_fit_rejects_a_seasonal_period_longer_than_the_series(tmp_path, capsys):
    path = _write(tmp_path / "s.csv", "y\n" + "".join(f"{v}\n" for v in range(10)))
    assert main(["fit", str(path), "--seasonal", "12", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--seasonal 12 is longer than the series (10 time steps)" in err
    short = _write(tmp_path / "short.csv", "y\n1\n\n\n2\n")
    assert main(["forecast", str(short)]) == 2
    assert "too short for the model: series 0 has 2 observed step(s)" in capsys.readouterr().err
