"""Benchmark suite ``kalman``: batched Kalman filtering against a loop over statsmodels, and
the parallel-in-time filter against the sequential one as the series grow longer.

Every row filters a random stable model with state size 4 and one observed entry per step,
in float64, and returns the log-likelihoods. The statsmodels row filters one series at a
time (its filter is not batched); it is timed on a subset of the series and scaled up to
all of them, as the row's note says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import torch

from ssmkit.bench.suites import Row, Settings, _measure, _with_speedups
from ssmkit.probabilistic import LinearGaussianSSM, log_likelihood, sample

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
        rows.append(_measure("kalman", case, f"ssmkit {method}", fn, [], s))
    rows[-len(methods)].note = "no NaN, shared model: covariances computed once"
    # with a few missing values every series has its own covariances: the general path
    y_nan = y.clone()
    y_nan[::10, ::50] = float("nan")
    fn = partial(_ours, model, y_nan, "sequential")
    rows.append(_measure("kalman", case, "ssmkit sequential, 0.2% NaN", fn, [], s))
    rows[-1].note = "per-series covariances"
    yield _with_speedups(rows)


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
            _measure(
                "kalman", case, "ref: sequential", partial(_ours, model, y, "sequential"), [], s
            ),
            _measure(
                "kalman",
                case,
                "parallel (assoc. scan)",
                partial(_ours, model, y, "parallel"),
                [],
                s,
            ),
        ]
        yield _with_speedups(rows)


def kalman_cases(s: Settings) -> Iterator[list[Row]]:
    """Both parts of the ``kalman`` suite."""
    yield from batched_cases(s)
    yield from parallel_cases(s)
