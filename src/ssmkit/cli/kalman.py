"""``ssmkit fit`` and ``ssmkit forecast``: structural time series models on a CSV column.

    ssmkit fit data.csv --model local-level [--column flow] [--out DIR]
    ssmkit fit --example nile --model local-linear-trend --seasonal 4 --ar 1
    ssmkit fit --example sunspots --model arima --order 2 0 0 --trend c
    ssmkit fit data.csv --column sales --model arima --order 1 1 0 --exog price,promo
    ssmkit forecast --example nile --horizon 10 [--level 0.9] [--out DIR]

``fit`` estimates the variances (and AR coefficients) by maximum likelihood and prints a
statsmodels-style summary: estimates with standard errors, z, p-values and 95% intervals,
log-likelihood, AIC, BIC, HQIC, the number of observations (time steps less missing values;
empty cells, NA and, in a one-column file, empty lines are missing values kept at their time
step) and residual tests (Ljung-Box, Jarque-Bera, heteroskedasticity). It writes the smoothed
states (``smoothed_states.csv``), a plot of data, smoothed level and forecast
(``forecast.png``) and the residual diagnostics (``diagnostics.png``; plots need matplotlib).
With ``--diffuse approximate`` the first step per diffuse state is left out of the
likelihood (statsmodels' ``loglikelihood_burn``). ``forecast`` fits the same way, then
prints and writes (``forecast.csv``) the mean and prediction interval of the next
``--horizon`` values. ``fit --out DIR`` also saves its data source and model options as
``DIR/fit.json``; ``forecast --fit DIR`` fits that same model to that same data (instead of
repeating the options), so a forecast follows the model fitted just before it.
``--exog`` (ARIMA only, ``fit`` only) adds regressors from other columns of the CSV file, as
statsmodels' ``SARIMAX(exog=...)``; a forecast would need their future values, so none is made.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path


def _load(args: argparse.Namespace):
    from ssmkit.probabilistic.io import load_nile, load_sunspots, read_csv

    if (args.csv is None) == (args.example is None):
        raise ValueError("give either a CSV file or --example nile|sunspots (not both)")
    if args.example and args.column:
        raise ValueError("--column applies to a CSV file, not to --example")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notes are printed below instead
        examples = {"nile": load_nile, "sunspots": load_sunspots}
        series = examples[args.example]() if args.example else read_csv(args.csv, args.column)
    for note in series.notes:
        print(f"ssmkit {args.command}: note: {note}", file=sys.stderr)
    if series.y.shape[1] != 1:
        raise ValueError(
            f"the model is univariate; choose one of the columns {list(series.columns)} "
            "with --column"
        )
    return series


# What ``fit`` saves in fit.json and ``forecast --fit`` reads back: the data and the model.
SAVED = ("csv", "example", "column", "model", "order", "seasonal_order", "trend", "seasonal",
         "ar", "diffuse", "exog")  # fmt: skip
FIT_FILE = "fit.json"


def _save_fit(args: argparse.Namespace, out: Path) -> Path:
    """Write the data source (an absolute CSV path) and model options of ``fit`` to fit.json."""
    saved = {k: getattr(args, k) for k in SAVED}
    if saved["csv"] is not None:
        saved["csv"] = str(Path(saved["csv"]).resolve())
    path = out / FIT_FILE
    path.write_text(json.dumps(saved, indent=2) + "\n")
    return path


def _use_saved_fit(args: argparse.Namespace, defaults: dict[str, object]) -> None:
    """Replace the data and model options of ``args`` with those saved in ``args.fit``.

    Raises:
        ValueError: a data or model option given too, or a fit.json that is missing or not
            written by ``ssmkit fit``.
    """
    given = [k for k in SAVED if getattr(args, k) != defaults[k]]
    if given:
        flags = ", ".join("the CSV file" if k == "csv" else "--" + k.replace("_", "-")
                          for k in given)  # fmt: skip
        raise ValueError(
            f"--fit {args.fit} reuses the data and model saved by `ssmkit fit`; leave out {flags}"
        )
    path = Path(args.fit) / FIT_FILE
    if not path.is_file():
        raise ValueError(f"--fit: no {path} (write one with `ssmkit fit ... --out {args.fit}`)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"--fit: {path} is not valid JSON: {e}") from None
    if isinstance(saved, dict):  # written before --exog existed: a fit without regressors
        saved.setdefault("exog", None)
    if not isinstance(saved, dict) or set(saved) != set(SAVED):
        raise ValueError(f"--fit: {path} must hold exactly the fields {list(SAVED)}")
    for k in SAVED:
        setattr(args, k, saved[k])


def _check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range options before the (possibly long) fit starts."""
    if not 0 < args.level < 1:
        raise ValueError(f"--level must be in (0, 1), got {args.level}")
    if args.horizon < 1:
        raise ValueError(f"--horizon must be >= 1, got {args.horizon}")
    if args.seasonal < 0 or args.ar < 0:
        raise ValueError(f"--seasonal and --ar must be >= 0, got {args.seasonal} and {args.ar}")


def _fit(args: argparse.Namespace):
    import torch

    _check_options(args)

    from ssmkit.probabilistic.fit import fit_mle
    from ssmkit.probabilistic.spec import structural_spec

    series = _load(args)
    y = series.y.unsqueeze(0)  # (1, l, 1)
    if args.seasonal > series.n_steps:
        raise ValueError(
            f"--seasonal {args.seasonal} is longer than the series ({series.n_steps} time "
            "steps): a seasonal pattern needs at least one full period of data"
        )
    if args.model == "arima":
        exog, names = _exog(args)
        spec = _arima_spec(args, y, exog, names)
        return series, y, fit_mle(spec, y, exog, diffuse=args.diffuse)
    if args.exog is not None:
        raise ValueError("--exog needs --model arima")
    if args.order is not None or args.seasonal_order is not None or args.trend is not None:
        raise ValueError("--order, --seasonal-order and --trend need --model arima")
    spec = structural_spec(y, args.model, args.seasonal, args.ar)
    burn = 0
    if args.diffuse == "approximate":  # statsmodels' burn: one step per diffuse state
        with torch.no_grad():
            Pd = spec.build(spec.theta0).P0_diffuse
        burn = 0 if Pd is None else int(torch.linalg.matrix_rank(Pd))
    return series, y, fit_mle(spec, y, diffuse=args.diffuse, burn=burn)


def _exog(args: argparse.Namespace):
    """(1, l, k) regressors and their names from ``--exog A,B`` (None, None without it)."""
    from ssmkit.probabilistic.io import read_csv

    if args.exog is None:
        return None, None
    if args.command != "fit":
        raise ValueError("--exog applies to `ssmkit fit` only: a forecast needs future regressors")
    if args.csv is None:
        raise ValueError("--exog names columns of a CSV file; it does not apply to --example")
    names = [c.strip() for c in args.exog.split(",")]
    if not all(names):
        raise ValueError(f"--exog must be comma-separated column names, got {args.exog!r}")
    if args.column and set(names) & set(args.column):
        raise ValueError(f"--exog {args.exog}: a column cannot be both the series and a regressor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes about the file were printed by _load
        x = read_csv(args.csv, names).y  # (l, k)
    return x.unsqueeze(0), tuple(names)


def _arima_spec(args: argparse.Namespace, y, exog=None, names=None):
    from ssmkit.probabilistic.arima import sarima_spec

    if args.order is None:
        raise ValueError("--model arima needs --order p d q")
    if args.seasonal or args.ar:
        raise ValueError("--seasonal and --ar apply to structural models; use --seasonal-order")
    seasonal_order = tuple(args.seasonal_order) if args.seasonal_order else (0, 0, 0, 0)
    return sarima_spec(y, tuple(args.order), seasonal_order, args.trend or "n", exog, names)


def model_name(args: argparse.Namespace) -> str:
    """'local level + seasonal(12) + AR(2)' or 'ARIMA(2, 0, 0) + constant'."""
    if args.model == "arima":
        name = "ARIMA({}, {}, {})".format(*args.order)
        if args.seasonal_order and any(args.seasonal_order[:3]):
            name += "({}, {}, {}, {})".format(*args.seasonal_order)
        return name + (" + constant" if args.trend == "c" else "")
    parts = [args.model.replace("-", " ")]
    if args.seasonal:
        parts.append(f"seasonal({args.seasonal})")
    if args.ar:
        parts.append(f"AR({args.ar})")
    return " + ".join(parts)


def observation_count(series) -> str:
    """'N observations', with the time steps and missing values when some are missing."""
    n, l = series.n_observed, series.n_steps * series.y.shape[1]
    if n == l:
        return f"{n} observations"
    return f"{n} observations ({series.n_steps} time steps, {l - n} missing)"


def _report(args: argparse.Namespace, series, res) -> None:
    print(res.summary(model_name=model_name(args), y_name=series.columns[0]))
    print(f"series {series.columns[0]!r}, {observation_count(series)}")


def _cmd_fit(args: argparse.Namespace) -> int:
    from ssmkit.probabilistic.plots import plot_forecast, pyplot, time_axis

    try:
        series, y, res = _fit(args)
    except ValueError as err:
        print(f"ssmkit fit: error: {err}", file=sys.stderr)
        return 2
    _report(args, series, res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sm = res.smoothed
    path = out / "smoothed_states.csv"
    n = sm.m.shape[-1]
    labels = series.index or tuple(str(t) for t in range(y.shape[1]))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [series.index_name or "t", "y"]
            + [f"state{i}" for i in range(n)]
            + [f"state{i}_sd" for i in range(n)]
        )
        sd = sm.P.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
        for t in range(y.shape[1]):
            w.writerow(
                [labels[t], f"{float(y[0, t, 0]):.10g}"]
                + [f"{float(v):.10g}" for v in sm.m[0, t]]
                + [f"{float(v):.10g}" for v in sd[0, t]]
            )
    print(f"smoothed states written to {path}")
    print(f"data and model options written to {_save_fit(args, out)} (for forecast --fit)")
    if args.exog is not None:
        print("no forecast plot: a forecast with --exog needs the regressors' future values")
        try:
            pyplot()
        except ValueError as err:
            print(f"no plots written: {err}")
            return 0
        print(
            f"residual diagnostics plot written to {res.plot_diagnostics(out / 'diagnostics.png')}"
        )
        return 0
    fc = res.forecast(args.horizon, args.level)
    try:
        pyplot()
    except ValueError as err:
        print(f"no plots written: {err}")
        return 0
    signal = sm.m[0] @ res.model.H.reshape(-1, sm.m.shape[-1])[0]  # (l,) H x_t
    png = plot_forecast(
        y[0, :, 0], signal.detach(), fc.mean[0, :, 0], fc.lower[0, :, 0], fc.upper[0, :, 0],
        time_axis(series.index, series.index_name, args.horizon, y.shape[1]), out / "forecast.png",
        f"{model_name(args)} model of {series.columns[0]}", series.columns[0], args.level,
    )  # fmt: skip
    print(f"plot written to {png}")
    png = res.plot_diagnostics(out / "diagnostics.png")
    print(f"residual diagnostics plot written to {png}")
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from ssmkit.probabilistic.plots import time_axis

    try:
        if args.fit is not None:
            _use_saved_fit(args, args.saved_defaults)
        series, _, res = _fit(args)
    except ValueError as err:
        print(f"ssmkit forecast: error: {err}", file=sys.stderr)
        return 2
    dates = time_axis(series.index, series.index_name, args.horizon).labels
    fc = res.forecast(args.horizon, args.level)
    pct = f"{100 * args.level:g}%"
    print(f"{'step':>4} {'mean':>14} {pct + ' lower':>14} {pct + ' upper':>14}")
    rows = []
    for k in range(args.horizon):
        row = (k + 1, float(fc.mean[0, k, 0]), float(fc.lower[0, k, 0]), float(fc.upper[0, k, 0]))
        rows.append(row)
        print(f"{row[0]:4d} {row[1]:14.6g} {row[2]:14.6g} {row[3]:14.6g}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "forecast.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            # the CSV's own index (dates, years) continued, when it is regular
            first = [series.index_name] if dates else []
            w.writerow([*first, "step", "mean", "lower", "upper"])
            for k, r in enumerate(rows):
                w.writerow([*([dates[k]] if dates else []), r[0], *(f"{v:.10g}" for v in r[1:])])
        print(f"forecast written to {path}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("csv", nargs="?", help="CSV file with a header row (or use --example)")
    p.add_argument("--example", choices=["nile", "sunspots"], help="use a bundled data set instead")
    p.add_argument("--column", action="append", help="column to model (default: the only one)")
    p.add_argument(
        "--model", default="local-level", choices=["local-level", "local-linear-trend", "arima"]
    )
    p.add_argument("--order", type=int, nargs=3, metavar=("P", "D", "Q"), help="ARIMA order")
    p.add_argument(
        "--seasonal-order",
        type=int,
        nargs=4,
        metavar=("P", "D", "Q", "S"),
        help="seasonal ARIMA order and period",
    )
    p.add_argument("--trend", choices=["n", "c"], help="ARIMA constant: c (needs d = D = 0)")
    p.add_argument("--exog", metavar="COLUMNS", help="ARIMA regressors: comma-separated columns")
    p.add_argument("--seasonal", type=int, default=0, help="add a seasonal of this period")
    p.add_argument("--ar", type=int, default=0, help="add an AR component of this order")
    p.add_argument(
        "--diffuse",
        default="exact",
        choices=["exact", "approximate"],
        help="initialisation of the nonstationary states (default exact)",
    )
    p.add_argument("--horizon", type=int, default=10, help="forecast steps (default 10)")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage (default 0.95)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``fit`` and ``forecast`` to the ``ssmkit`` command."""
    fit = sub.add_parser(
        "fit", help="fit a structural or (seasonal) ARIMA model by maximum likelihood"
    )
    _common(fit)
    fit.add_argument("--out", default="ssmkit-out", help="output directory (default ssmkit-out)")
    fit.set_defaults(fn=_cmd_fit)
    fc = sub.add_parser(
        "forecast", help="fit a structural or ARIMA model, then forecast with intervals"
    )
    _common(fc)
    fc.add_argument("--out", default=None, help="also write forecast.csv to this directory")
    fc.add_argument(
        "--fit", metavar="DIR",
        help="forecast with the data and model of `ssmkit fit ... --out DIR` (its fit.json)",
    )  # fmt: skip
    defaults = {k: fc.get_default(k) for k in SAVED}
    fc.set_defaults(fn=_cmd_forecast, saved_defaults=defaults)
