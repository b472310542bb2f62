"""The text summary of an :class:`~ssmkit.probabilistic.results.MLEResult`, laid out like
statsmodels' ``MLEResults.summary()``: a two-column header with the fit statistics, the
parameter table (estimate, standard error, z, P>|z|, 95% interval) and the residual tests.
Numbers are formatted as statsmodels does (4 decimals, or 4 significant digits outside
[1e-4, 1e4), for estimates; 3 for the rest)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ssmkit.probabilistic.results import MLEResult

WIDTH = 78


def _num(x: float, prec: int = 3) -> str:
    """statsmodels' ``forg``: fixed decimals, or significant digits for very large/small."""
    if math.isnan(x):
        return "nan"
    if abs(x) >= 1e4 or abs(x) < 1e-4:
        return f"{x:.{prec}g}"
    return f"{x:.{prec}f}"


def _pair(label: str, value: str, width: int) -> str:
    return f"{label}{value:>{max(1, width - len(label))}}"


def _two_columns(left: list[tuple[str, str]], right: list[tuple[str, str]]) -> list[str]:
    rows = max(len(left), len(right))
    left = left + [("", "")] * (rows - len(left))
    right = right + [("", "")] * (rows - len(right))
    half = WIDTH // 2 - 2
    return [
        (_pair(a, b, half) + "   " + _pair(c, d, WIDTH - half - 3)).rstrip()
        for (a, b), (c, d) in zip(left, right, strict=True)
    ]


def _stats(res: MLEResult, i: int) -> tuple[float, float, float, float]:
    """(loglik, AIC, BIC, HQIC) of series i (its own with per-series parameters)."""
    from ssmkit.probabilistic.results import information_criteria

    if not res.per_series or res.loglik_series is None:
        return res.loglik, res.aic, res.bic, res.hqic
    k = res.df_model // res.params.shape[0]
    n = int((~torch.isnan(res.y[i])).any(-1).sum()) - res.burn
    ll = float(res.loglik_series[i])
    return ll, *information_criteria(ll, k, n)


def _parameter_table(res: MLEResult, i: int) -> list[str]:
    sel = (lambda x: x[i]) if res.per_series else (lambda x: x)
    params, se = sel(res.params).tolist(), sel(res.se).tolist()
    z, p = sel(res.zvalues).tolist(), sel(res.pvalues).tolist()
    ci = sel(res.conf_int(0.05)).tolist()
    stub = max(16, *(len(n) + 2 for n in res.names))
    head = ["coef", "std err", "z", "P>|z|", "[0.025", "0.975]"]
    width = stub + 11 * len(head)
    lines = ["=" * width, " " * stub + "".join(f"{h:>11}" for h in head), "-" * width]
    for k, name in enumerate(res.names):
        cells = [_num(params[k], 4), _num(se[k]), _num(z[k]), f"{p[k]:#6.3f}"]
        cells += [_num(ci[k][0]), _num(ci[k][1])]
        lines.append(f"{name:<{stub}}" + "".join(f"{c:>11}" for c in cells))
    return lines


def format_summary(res: MLEResult, i: int, model_name: str, y_name: str) -> str:
    """The summary of series i as text (see the module docstring)."""
    y = res.y
    b, l, o = y.shape
    ll, aic, bic, hqic = _stats(res, i)
    observed = int((~torch.isnan(y[i])).sum())
    d = int(res.skipped[i])
    left = [
        ("Dep. Variable:", y_name),
        ("Model:", model_name),
        ("Sample:", f"0 - {l}"),
        ("Diffuse init.:", res.diffuse if res.model.P0_diffuse is not None else "none"),
        ("Covariance Type:", "approx (Hessian)"),
    ]
    if b > 1:
        left.insert(1, ("Series:", f"{i} of {b}"))
    right = [
        ("No. Observations:", str(observed)),
        ("Log Likelihood", f"{ll:#5.3f}"),
        ("AIC", f"{aic:#5.3f}"),
        ("BIC", f"{bic:#5.3f}"),
        ("HQIC", f"{hqic:#5.3f}"),
    ]
    if observed != l * o:
        right.insert(1, ("Missing values:", str(l * o - observed)))
    title = "State Space Model Results"
    lines = [f"{title:^{WIDTH}}".rstrip(), "=" * WIDTH, *_two_columns(left, right)]
    lines += _parameter_table(res, i)
    tests = [res.residual_tests(i, j) for j in range(o)]
    lag1 = [res.residual_tests(i, j, lags=1) for j in range(o)]

    def join(values) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    k = tests[0].lags[-1]
    diag_left = [
        ("Ljung-Box (L1) (Q):", join(t.ljung_box[0] for t in lag1)),
        ("Prob(Q):", join(t.ljung_box_pvalue[0] for t in lag1)),
        (f"Ljung-Box (L{k}) (Q):", join(t.ljung_box[-1] for t in tests)),
        (f"Prob(Q({k})):", join(t.ljung_box_pvalue[-1] for t in tests)),
        ("Heteroskedasticity (H):", join(t.heteroskedasticity for t in tests)),
        ("Prob(H) (two-sided):", join(t.heteroskedasticity_pvalue for t in tests)),
    ]
    diag_right = [
        ("Jarque-Bera (JB):", join(t.jarque_bera for t in tests)),
        ("Prob(JB):", join(t.jarque_bera_pvalue for t in tests)),
        ("Skew:", join(t.skewness for t in tests)),
        ("Kurtosis:", join(t.kurtosis for t in tests)),
        ("Residuals used:", ", ".join(str(t.n) for t in tests)),
    ]
    lines += ["=" * WIDTH, *_two_columns(diag_left, diag_right), "=" * WIDTH]
    lines += [
        "",
        "Notes:",
        "[1] Standard errors from the inverse Hessian of the log-likelihood (delta method).",
        f"[2] Residual tests on the standardised one-step forecast errors after the first {d}",
        "    step(s) (max(burn, diffuse periods)); missing values left out.",
    ]
    return "\n".join(lines)
