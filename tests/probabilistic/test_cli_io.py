"""``ssmkit fit`` / ``ssmkit forecast`` and the CSV reader."""

import argparse
import csv

import pytest
import torch

from ssmkit.cli import kalman
from ssmkit.probabilistic.io import load_nile, read_csv


def run(argv):
    parser = argparse.ArgumentParser(prog="ssmkit")
    kalman.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


def _csv(path, rows):
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _series(tmp_path, n=30):
    g = torch.Generator().manual_seed(0)
    level = torch.cumsum(torch.randn(n, generator=g, dtype=torch.float64), 0)
    y = level + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    rows = [["date", "sales", "price"]]
    for t in range(n):
        rows.append([f"2020-{t:02d}", "" if t == 7 else f"{float(y[t]):.6f}", f"{t * 1.5}"])
    return _csv(tmp_path / "data.csv", rows)


@pytest.mark.slow
def test_fit_bundled_nile(tmp_path, capsys):
    assert run(["fit", "--example", "nile", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in ("sigma2.irregular", "sigma2.level", "Log Likelihood", "AIC", "BIC", "HQIC"):
        assert text in out
    assert "-633.465" in out  # statsmodels' exact diffuse optimum: -633.4646
    for text in ("Model:", "local level", "Ljung-Box (L1) (Q):", "Jarque-Bera (JB):"):
        assert text in out
    est = {
        line.split()[0]: float(line.split()[1])
        for line in out.splitlines()
        if line.startswith("sigma2")
    }
    assert est["sigma2.irregular"] == pytest.approx(15099, rel=0.01)  # Durbin & Koopman
    assert est["sigma2.level"] == pytest.approx(1469.1, rel=0.01)
    rows = list(csv.reader((tmp_path / "smoothed_states.csv").open()))
    assert rows[0] == ["year", "y", "state0", "state0_sd"] and rows[1][0] == "1871"
    assert len(rows) == 101
    assert (tmp_path / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "diagnostics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_and_forecast_tmp_csv(tmp_path, capsys):
    path = _series(tmp_path)
    assert (
        run(
            [
                "fit",
                str(path),
                "--column",
                "sales",
                "--out",
                str(tmp_path / "o"),
                "--diffuse",
                "approximate",
                "--horizon",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "series 'sales', 29 observations (30 time steps, 1 missing)" in out
    assert "Missing values:" in out and "Prob(H) (two-sided):" in out
    assert (tmp_path / "o" / "diagnostics.png").is_file()
    rows = list(csv.reader((tmp_path / "o" / "smoothed_states.csv").open()))
    assert rows[0][0] == "date" and len(rows) == 31 and rows[8][1] == "nan"
    assert (
        run(
            [
                "forecast",
                str(path),
                "--column",
                "sales",
                "--horizon",
                "4",
                "--level",
                "0.8",
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "80% lower" in out
    fc = list(csv.reader((tmp_path / "f" / "forecast.csv").open()))
    assert fc[0] == ["step", "mean", "lower", "upper"] and len(fc) == 5
    lo, mid, hi = (float(fc[1][i]) for i in (2, 1, 3))
    assert lo < mid < hi


def test_cli_errors(tmp_path, capsys):
    path = _csv(tmp_path / "bad.csv", [["t", "y"], ["1", "3.5"], ["2", "oops"], ["3", "1"]])
    assert run(["fit", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "line 3, column 'y': 'oops' is not a number" in err
    two = _series(tmp_path)
    assert run(["fit", str(two)]) == 2
    assert "choose one of the columns" in capsys.readouterr().err
    assert run(["forecast"]) == 2
    assert "either a CSV file or --example" in capsys.readouterr().err
    assert run(["fit", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_read_csv(tmp_path):
    path = _csv(tmp_path / "a.csv", [["year", "a", "b"], ["1", "1.5", "NA"], ["2", "", "4"]])
    s = read_csv(path)
    assert s.columns == ("a", "b") and s.index == ("1", "2") and s.index_name == "year"
    assert torch.isnan(s.y[0, 1]) and torch.isnan(s.y[1, 0]) and float(s.y[1, 1]) == 4
    assert read_csv(path, ["b"]).y.shape == (2, 1)
    with pytest.raises(ValueError, match="no column 'c'"):
        read_csv(path, ["c"])
    ragged = _csv(tmp_path / "r.csv", [["a", "b"], ["1"]])
    with pytest.raises(ValueError, match="1 cells, header has 2"):
        read_csv(ragged)
    with pytest.raises(ValueError, match="infinite"):
        read_csv(_csv(tmp_path / "i.csv", [["a"], ["inf"]]))
    nile = load_nile()
    assert nile.y.shape == (100, 1) and nile.index[0] == "1871" and float(nile.y[0, 0]) == 1120


def test_fit_approximate_diffuse_burns_like_statsmodels(tmp_path, capsys):
    """--diffuse approximate leaves one step per diffuse state out of the likelihood, as
    statsmodels' UnobservedComponents does (its default fit of the Nile: llf -632.538)."""
    argv = ["fit", "--example", "nile", "--diffuse", "approximate", "--out", str(tmp_path)]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "Log Likelihood                -632.538" in out
    assert "Diffuse init.:            approximate" in out


def _seasonal(tmp_path, n=48, period=12):
    g = torch.Generator().manual_seed(3)
    t = torch.arange(n, dtype=torch.float64)
    y = 10 + 0.2 * t + 3 * torch.sin(2 * torch.pi * t / period)
    y = y + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    rows = [["month", "sales"]] + [[f"m{i}", f"{float(v):.6f}"] for i, v in enumerate(y)]
    return _csv(tmp_path / "data.csv", rows)


def _means(out: str) -> list[float]:
    rows = [line.split() for line in out.splitlines() if line.split()[:1] != ["step"]]
    return [float(r[1]) for r in rows if len(r) == 4 and r[0].isdigit()]


def test_readme_fit_then_forecast_follows_the_seasonal_model(tmp_path, capsys, monkeypatch):
    """The README's example, run as written (at this size): a seasonal forecast, not a line."""
    _seasonal(tmp_path)
    monkeypatch.chdir(tmp_path)
    fit = "fit data.csv --column sales --model local-linear-trend --seasonal 12 --out out/"
    assert run(fit.split()) == 0
    assert "fit.json" in capsys.readouterr().out
    assert (
        run(["forecast", "--fit", "out/", "--horizon", "12", "--level", "0.9", "--out", "out/"])
        == 0
    )
    out = capsys.readouterr().out
    seasonal = _means(out)
    assert len(seasonal) == 12 and "forecast written to out/forecast.csv" in out
    # the seasonal swing (amplitude 3) is in the forecast; the same options given by hand agree
    assert max(seasonal) - min(seasonal) > 4
    explicit = "forecast data.csv --column sales --model local-linear-trend --seasonal 12"
    assert run([*explicit.split(), "--horizon", "12", "--level", "0.9"]) == 0
    assert _means(capsys.readouterr().out) == pytest.approx(seasonal, rel=1e-6)
    # without them forecast fits a local level: a flat line (what the old README printed)
    assert run(["forecast", "data.csv", "--column", "sales", "--horizon", "12"]) == 0
    flat = _means(capsys.readouterr().out)
    assert max(flat) - min(flat) < 1e-6
    fc = list(csv.reader((tmp_path / "out" / "forecast.csv").open()))
    assert [float(r[1]) for r in fc[1:]] == pytest.approx(seasonal, rel=1e-5)


def test_forecast_fit_errors(tmp_path, capsys):
    path = _seasonal(tmp_path)
    assert run(["forecast", "--fit", str(tmp_path / "none")]) == 2
    assert "no " + str(tmp_path / "none" / "fit.json") in capsys.readouterr().err
    assert run(["forecast", str(path), "--fit", str(tmp_path), "--seasonal", "4"]) == 2
    err = capsys.readouterr().err
    assert (
        "reuses the data and model saved by `ssmkit fit`; leave out the CSV file, --seasonal" in err
    )
    (tmp_path / "fit.json").write_text('{"model": "local-level"}')
    assert run(["forecast", "--fit", str(tmp_path)]) == 2
    assert "must hold exactly the fields" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "match"),
    [
        (["--level", "1.5"], "--level must be in (0, 1), got 1.5"),
        (["--level", "0"], "--level must be in (0, 1), got 0.0"),
        (["--horizon", "0"], "--horizon must be >= 1, got 0"),
        (["--seasonal", "-4"], "--seasonal and --ar must be >= 0, got -4 and 0"),
    ],
)
@pytest.mark.parametrize("command", ["fit", "forecast"])
def test_options_are_checked_before_the_fit(tmp_path, capsys, monkeypatch, command, option, match):
    import ssmkit.probabilistic.fit as fit_module

    def no_fit(*a, **k):
        raise AssertionError("the fit started before the options were checked")

    monkeypatch.setattr(fit_module, "fit_mle", no_fit)
    assert run([command, "--example", "nile", "--out", str(tmp_path), *option]) == 2
    assert match in capsys.readouterr().err
