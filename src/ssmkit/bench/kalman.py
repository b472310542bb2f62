"""Benchmark suite ``kalman``: batched Kalman filtering against a loop over statsmodels, the
parallel-in-time filter against the sequential one as the series grow longer, and maximum
likelihood fits against statsmodels.

Every filtering row filters a random stable model with state size 4 and one observed entry per step,
in float64, and returns the log-likelihoods. The statsmodels row filters one series at a
time (its filter is not batched); it is timed on a subset of the series and scaled up to
all of them, as the row's note says.

The fit rows:

* one series: the weekly Mauna Loa CO2 record bundled with statsmodels (2,284 steps, 59
  missing) with a local level, a local linear trend plus a seasonal of period 12 (both
  ``UnobservedComponents``, exact diffuse), and an AR(2) on its demeaned differences
  (``SARIMAX(order=(2, 0, 0))``). Each row times a whole fit with standard errors
  (statsmodels: ``cov_type="approx"``, a numerical Hessian), after one warm-up fit; the note
  gives the relative gap between the two maximised log-likelihoods.
* many series: b local-level series of l steps, each with its own parameters:
  ``fit_mle(..., per_series=True)`` against a loop of statsmodels fits timed on a subset and
  scaled up, as the filtering rows do.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import torch

from ssmkit.bench.rows import Row, Settings, measure_row, with_speedups
from ssmkit.probabilistic import LinearGaussianSSM, log_likelihood, sample
from ssmkit.probabilistic.fast_filter import numba_supports
from ssmkit.probabilistic.fit import fit_mle
from ssmkit.probabilistic.spec import ar_spec, structural_spec
from ssmkit.probabilistic.structural import local_level, structural_model

Tensor = torch.Tensor
N_STATE = 4


def _model(device: str, seed: int = 0) -> LinearGaussianSSM:
    g = torch.Generator().manual_seed(seed)
    D = torch.float64
    Qr = torch.linalg.qr(torch.randn(N_STATE, N_STATE, generator=g, dtype=D)).Q
    F = 0.95 * Qr * torch.rand(1, N_STATE, generator=g, dtype=D)
    A = torch.randn(N_STATE, N_STATE, generator=g, dtype=D)
    return LinearGaussianSSM(
        F=F.to(device),
        H=torch.randn(1, N_STATE, generator=g, dtype=D).to(device),
        Q=(A @ A.T / N_STATE + 0.1 * torch.eye(N_STATE, dtype=D)).to(device),
        R=torch.ones(1, 1, dtype=D, device=device),
        m0=torch.zeros(N_STATE, dtype=D, device=device),
        P0=torch.eye(N_STATE, dtype=D, device=device),
    )


def _data(model: LinearGaussianSSM, b: int, l: int) -> Tensor:
    cpu = LinearGaussianSSM(
        **{k: (v.cpu() if v is not None else None) for k, v in model.__dict__.items()}
    )
    _, y = sample(cpu, b, l, generator=torch.Generator().manual_seed(1))
    return y.to(model.F.device)


def _ours(model: LinearGaussianSSM, y: Tensor, method: str) -> Tensor:
    return log_likelihood(model, y, method=method, validate=False)


def _statsmodels_row(model: LinearGaussianSSM, y: Tensor, case: str, subset: int, s: Settings):
    try:
        from statsmodels.tsa.statespace.kalman_filter import KalmanFilter
    except ImportError:
        return None
    F, H, Q, R = (x.cpu().numpy() for x in (model.F, model.H, model.Q, model.R))
    m0, P0 = model.m0.cpu().numpy(), model.P0.cpu().numpy()
    ys = y[:subset].cpu().numpy()

    def loop() -> list[float]:
        out = []
        for series in ys:
            kf = KalmanFilter(k_endog=1, k_states=N_STATE, k_posdef=N_STATE)
            kf.bind(series.copy())
            kf["design"], kf["obs_cov"], kf["transition"] = H, R, F
            kf["selection"], kf["state_cov"] = torch.eye(N_STATE).numpy(), Q
            kf.initialize_known(m0, P0)
            out.append(float(kf.loglike()))
        return out

    loop()  # warm-up
    times = []
    for _ in range(max(1, s.repeat)):
        start = time.perf_counter()
        loop()
        times.append(time.perf_counter() - start)
    per_series = sorted(times)[len(times) // 2] / subset
    b = y.shape[0]
    row = Row("kalman", case, "ref: statsmodels loop", per_series * b * 1e3, None, None)
    row.note = f"timed on {subset} of {b} series, scaled x{b / subset:g}; CPU"
    return row


def batched_cases(s: Settings) -> Iterator[list[Row]]:
    """b series x l steps: statsmodels one series at a time vs our batched filters."""
    b, l, subset, methods = {
        "tiny": (4, 32, 2, ("sequential", "sqrt", "parallel")),
        "default": (1000, 1000, 20, ("sequential", "sqrt")),
        "full": (1000, 1000, 100, ("sequential", "sqrt", "parallel")),
    }[s.size]
    case = f"b={b} l={l} n={N_STATE} o=1 f64"
    model = _model(s.device)
    y = _data(model, b, l)
    rows = []
    ref = _statsmodels_row(model, y, case, subset, s)
    if ref is not None:
        rows.append(ref)
    for method in methods:
        fn = partial(_ours, model, y, method)
        rows.append(measure_row("kalman", case, f"ssmkit {method}", fn, [], s))
    rows[-len(methods)].note = "no NaN, shared model: covariances computed once"
    # with a few missing values every series has its own covariances: the general path
    y_nan = y.clone()
    y_nan[::10, ::50] = float("nan")
    fn = partial(_ours, model, y_nan, "sequential")
    rows.append(measure_row("kalman", case, "ssmkit sequential, 0.2% NaN", fn, [], s))
    rows[-1].note = "per-series covariances"
    if numba_supports(model):
        fn = partial(_ours, model, y_nan, "numba")
        fn()  # load the compiled kernels before timing
        rows.append(measure_row("kalman", case, "ssmkit numba, 0.2% NaN", fn, [], s))
        rows[-1].note = "per-series covariances, compiled filter"
    yield with_speedups(rows)


def parallel_cases(s: Settings) -> Iterator[list[Row]]:
    """The associative-scan filter vs the sequential loop as l grows (b fixed)."""
    b, lengths = {
        "tiny": (2, (16, 64)),
        "default": (8, (128, 1024, 4096)),
        "full": (8, (256, 1024, 4096, 16384)),
    }[s.size]
    model = _model(s.device)
    for l in lengths:
        case = f"b={b} l={l} n={N_STATE} o=1 f64"
        y = _data(model, b, l)
        rows = [
            measure_row(
                "kalman", case, "ref: sequential", partial(_ours, model, y, "sequential"), [], s
            ),
            measure_row(
                "kalman",
                case,
                "parallel (assoc. scan)",
                partial(_ours, model, y, "parallel"),
                [],
                s,
            ),
        ]
        yield with_speedups(rows)


def _median_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up (statsmodels' first call and our compiled kernels load once)
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3, out


def _single_cases(sm, s: Settings) -> Iterator[list[Row]]:
    co2 = sm.datasets.co2.load_pandas().data["co2"].to_numpy().astype(float)
    l = {"tiny": 300}.get(s.size, len(co2))
    co2 = co2[:l]
    y = torch.tensor(co2, dtype=torch.float64).view(1, -1, 1)
    dy = torch.diff(y, dim=1)
    dy = dy - dy.nanmean()
    cases = [
        ("local level", y, structural_spec(y), dict(level="llevel")),
        (
            "local linear trend + seasonal 12",
            y,
            structural_spec(y, "local-linear-trend", 12),
            dict(level="lltrend", seasonal=12),
        ),
        ("AR(2) of the differences", dy, ar_spec(dy, 2), None),
    ]
    for name, yt, spec, kw in cases:
        x = yt[0, :, 0].numpy()
        if kw is None:
            model = sm.tsa.SARIMAX(x, order=(2, 0, 0))
            ref_name = "ref: statsmodels SARIMAX.fit"
        else:
            model = sm.tsa.UnobservedComponents(x, use_exact_diffuse=True, **kw)
            ref_name = "ref: statsmodels UnobservedComponents.fit"

        def ref_fit(model=model):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return model.fit(disp=False, cov_type="approx")

        ref_ms, ref = _median_time(ref_fit, s.repeat)
        ours_ms, res = _median_time(lambda spec=spec, yt=yt: fit_mle(spec, yt), s.repeat)
        case = f"fit CO2 weekly l={yt.shape[1]} ({int(torch.isnan(yt).sum())} NaN): {name}"
        gap = (res.loglik - ref.llf) / abs(ref.llf)
        rows = [
            Row("kalman", case, ref_name, ref_ms, None, None),
            Row("kalman", case, "ssmkit fit_mle (numba, exact diffuse)", ours_ms, None, None),
        ]
        rows[1].note = f"loglik {res.loglik:.6f} vs {ref.llf:.6f} (rel. gap {gap:+.1e})"
        yield with_speedups(rows)


def _many_series(b: int, l: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    ys = []
    for _ in range(b):
        s2 = 0.1 + 2 * torch.rand(2, generator=g, dtype=torch.float64)
        model = structural_model(local_level(s2[0]), sigma2_obs=s2[1])
        ys.append(sample(model, 1, l, generator=g)[1])
    y = torch.cat(ys)  # (b, l, 1)
    y[::3, ::37] = float("nan")
    return y


def _per_series_cases(sm, s: Settings) -> Iterator[list[Row]]:
    b, l, subset = {"tiny": (8, 100, 2), "default": (1000, 500, 10), "full": (1000, 500, 50)}[
        s.size
    ]
    y = _many_series(b, l)
    xs = y[:subset, :, 0].numpy()

    def loop():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [
                sm.tsa.UnobservedComponents(x, "llevel", use_exact_diffuse=True)
                .fit(disp=False, cov_type="approx")
                .llf
                for x in xs
            ]

    ref_ms, llf = _median_time(loop, s.repeat)
    spec = structural_spec(y)
    ours_ms, res = _median_time(lambda: fit_mle(spec, y, per_series=True), s.repeat)
    case = f"fit b={b} l={l} local level, own parameters per series (NaN in 1/3)"
    gap = max(abs(float(res.loglik_series[i]) - llf[i]) / abs(llf[i]) for i in range(subset))
    rows = [
        Row("kalman", case, "ref: statsmodels fit loop", ref_ms * b / subset, None, None),
        Row("kalman", case, "ssmkit fit_mle per_series", ours_ms, None, None),
    ]
    rows[0].note = f"timed on {subset} of {b} series, scaled x{b / subset:g}"
    rows[1].note = f"max rel. loglik gap on those {subset}: {gap:.1e}"
    yield with_speedups(rows)


def fit_cases(s: Settings) -> Iterator[list[Row]]:
    """Single-series and per-series fits against statsmodels (skipped without it)."""
    try:
        import statsmodels.api as sm
    except ImportError:
        return
    yield from _single_cases(sm, s)
    yield from _per_series_cases(sm, s)


def kalman_cases(s: Settings) -> Iterator[list[Row]]:
    """All parts of the ``kalman`` suite."""
    yield from batched_cases(s)
    yield from parallel_cases(s)
    yield from fit_cases(s)
