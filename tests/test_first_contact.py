"""What a new user meets first (issue 22): the lean install, the CLI's edges, the pictures'
labels and dates, the compile note, the docs' files."""

import csv
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ssmkit
from ssmkit.cli import main
from ssmkit.core.plotting import pyplot
from ssmkit.probabilistic.plots import time_axis

ROOT = Path(__file__).resolve().parents[1]


class Capture:
    """pyplot, except that ``close`` keeps the figure for the test to read."""

    def __init__(self) -> None:
        self.plt, self.figures = pyplot(), []

    def __getattr__(self, name):
        return getattr(self.plt, name)

    def close(self, fig) -> None:
        self.figures.append(fig)


def _tick_texts(axis) -> list[str]:
    axis.figure.canvas.draw()
    ticks = axis.get_majorticklabels() + axis.get_minorticklabels()
    return [t.get_text() for t in ticks if t.get_text()]


# ---------------------------------------------------------------- install and docs


def _make_n(*args: str) -> str:
    if shutil.which("make") is None:
        raise AssertionError("make is needed to check the Makefile")
    out = subprocess.run(
        ["make", "-n", "-B", *args, "VENV=/nonexistent-venv"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def test_make_demo_installs_runtime_and_plot_only_and_torch_is_a_variable():
    demo = _make_n("demo")
    assert '-e ".[plot]"' in demo and "[dev" not in demo
    assert '"torch==2.13.0"' in demo and "--index-url" not in demo
    test = _make_n("test")
    assert '-e ".[dev,plot]"' in test
    chosen = _make_n("demo", "TORCH=torch>=2.2", "TORCH_INDEX=https://example.org/cpu")
    assert '--index-url https://example.org/cpu "torch>=2.2"' in chosen


def test_license_version_and_fit_em_export(capsys):
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "ssmkit authors" in text
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ssmkit {ssmkit.__version__}"
    from ssmkit.probabilistic import fit_em
    from ssmkit.probabilistic.em import fit_em as original

    assert fit_em is original


# ---------------------------------------------------------------- CLI edges


@pytest.mark.parametrize("device", ["mps", "gpu", "cuda:99"])
def test_unavailable_device_is_one_line_exit_2(device, tmp_path, capsys):
    for argv in (
        ["bench", "--device", device, "--no-reexec"],
        ["train", "--device", device, "--out", str(tmp_path / "run")],
    ):
        assert main(argv) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and device in err[0], err
        assert "run directory" not in captured.out  # refused before anything is made
    assert not (tmp_path / "run").exists()


def test_closed_pipe_ends_quietly():
    """`ssmkit list | head`: the reader goes away; no traceback, no error line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssmkit", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before ssmkit writes anything
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["hippo", "--length", "0"],
        ["hippo", "--N", "8", "-1"],
        ["bench", "--repeat", "0"],
        ["bench", "--threads", "-1"],
        ["dynamics", "run", "--items", "0"],
        ["extrapolate", "run", "--threads", "-2"],
        ["latent", "dmm", "--threads", "-1"],
    ],
)
def test_bad_option_values_stop_at_parsing(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "must be >=" in capsys.readouterr().err


def test_values_checked_before_the_long_work(monkeypatch, capsys):
    import ssmkit.latent
    import ssmkit.probabilistic.fit

    def never(*args, **kwargs):
        raise AssertionError("the work started before the options were checked")

    monkeypatch.setattr(ssmkit.probabilistic.fit, "fit_mle", never)
    monkeypatch.setattr(ssmkit.latent, "train_latent_ode", never)
    monkeypatch.setattr(ssmkit.latent, "make_spirals", never)
    assert main(["fit", "--example", "nile", "--level", "1.5"]) == 2
    assert "--level must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["latent", "ode", "--t-max", "5", "--t-split", "9"]) == 2
    assert "--t-split must lie in (0, --t-max = 5.0), got 9.0" in capsys.readouterr().err


def test_train_help_shows_what_plain_train_uses(capsys):
    from ssmkit.train.config import default_run

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    plain = default_run()
    train_line = next(line for line in text.splitlines() if "train options:" in line)
    for name, value in vars(plain.train).items():
        assert f"{name}={value}" in train_line
    assert "epochs=30" in train_line and "lr=0.01" in train_line  # digits' measured settings
    assert "--task induction-heads:" in text and "task text: path=None" in text


# ---------------------------------------------------------------- compile note


def test_compile_note_once_and_only_for_slow_compiles(monkeypatch, capfd):
    from ssmkit.ops import numba_compile

    monkeypatch.setattr(numba_compile, "_NOTED", [])
    monkeypatch.setattr(numba_compile, "NOTE_AFTER_S", 5.0)
    with numba_compile.compiling_note():
        pass  # a load from the disk cache: quick, no note
    assert capfd.readouterr().err == ""
    monkeypatch.setattr(numba_compile, "NOTE_AFTER_S", 0.01)
    for _ in range(2):
        with numba_compile.compiling_note():
            time.sleep(0.3)
    err = capfd.readouterr().err
    assert (
        err == "ssmkit: compiling the CPU kernels, once (numba keeps them on disk for later runs)\n"
    )


def test_warm_up_and_lti_kernels_show_the_note(monkeypatch, capfd):
    from numba.core import types

    from ssmkit.ops import numba_compile
    from ssmkit.ops.lti_scan import cpu_numba as lti
    from ssmkit.ops.selective_scan import cpu_numba as sel

    monkeypatch.setattr(numba_compile, "NOTE_AFTER_S", 0.01)
    # warm_up (what training waits for): the compile runs under the note
    monkeypatch.setattr(numba_compile, "_NOTED", [])
    monkeypatch.setattr(sel, "ready", lambda dtype: False)
    monkeypatch.setattr(sel, "_tiny_run", lambda dtype: time.sleep(0.3))
    monkeypatch.setattr(numba_compile, "_WARMING", {})
    sel.warm_up(torch.float16, wait=True)
    assert "compiling the CPU kernels, once" in capfd.readouterr().err

    class Kernel:  # a dispatcher: its compiled signatures, a slow first call
        def __init__(self, signatures):
            self.signatures, self.calls = signatures, 0

        def __call__(self, *args):
            self.calls += 1
            time.sleep(0.3)

    x = np.zeros(3, dtype=np.float32)
    monkeypatch.setattr(numba_compile, "_NOTED", [])
    compiled = Kernel([(types.Array(types.float32, 1, "C"),)])
    lti._call(compiled, x)
    assert capfd.readouterr().err == "" and compiled.calls == 1
    lti._call(Kernel([(types.Array(types.float64, 1, "C"),)]), x)  # float32 not compiled yet
    assert "compiling the CPU kernels, once" in capfd.readouterr().err
    assert threading.active_count() < 50


# ---------------------------------------------------------------- pictures


def test_time_axis_continues_regular_dates_and_years():
    years = time_axis(("1969", "1970"), "year", 2)
    assert years.future == [1971, 1972] and years.labels == ["1971", "1972"]
    monthly = time_axis(("2021-11-01", "2021-12-01"), "date", 2)
    assert monthly.labels == ["2022-01-01", "2022-02-01"] and monthly.name == "date"
    assert time_axis(("2021-10", "2022-01"), "month", 1).labels == ["2022-04"]  # quarterly
    weekly = time_axis(("2024-02-19", "2024-02-26"), "date", 1)
    assert weekly.labels == ["2024-03-04"] and isinstance(weekly.past[0], dt.date)
    for index in (("m0", "m1"), ("2020-00", "2020-01"), ("2021-01-31", "2021-02-28", "2021-03-31"),
                  ("1", "2", "4"), None):  # fmt: skip
        axis = time_axis(index, "t", 2)
        n = len(index or ())
        assert axis.labels is None and axis.name == "time step"
        assert axis.past == list(range(n)) and axis.future == [n, n + 1]


def test_forecast_csv_and_plot_carry_the_dates(tmp_path, monkeypatch, capsys):
    import ssmkit.probabilistic.plots as pplots

    rows = [["date", "sales"]] + [
        [f"{2020 + i // 12}-{i % 12 + 1:02d}-01", f"{10 + (i % 5) * 0.3:.2f}"] for i in range(30)
    ]
    with (tmp_path / "s.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    assert (
        main(["forecast", str(tmp_path / "s.csv"), "--horizon", "3", "--out", str(tmp_path)]) == 0
    )
    table = list(csv.reader((tmp_path / "forecast.csv").open()))
    assert table[0] == ["date", "step", "mean", "lower", "upper"]
    assert [r[0] for r in table[1:]] == ["2022-07-01", "2022-08-01", "2022-09-01"]
    assert [r[1] for r in table[1:]] == ["1", "2", "3"]
    assert "date" not in capsys.readouterr().out.splitlines()[0]  # printed table unchanged

    cap = Capture()
    monkeypatch.setattr(pplots, "pyplot", lambda: cap)
    axis = time_axis(tuple(r[0] for r in rows[1:]), "date", 3)
    y = torch.arange(30.0)
    f = torch.zeros(3)
    pplots.plot_forecast(y, y, f, f - 1, f + 1, axis, tmp_path / "f.png", "t", "sales", 0.9)
    ax = cap.figures[0].axes[0]
    assert ax.get_xlabel() == "date" and ax.get_ylabel() == "sales"
    assert ax.lines[0].get_xdata()[0] == dt.date(2020, 1, 1)
    assert any("2021" in t for t in _tick_texts(ax.xaxis))
    assert ax.get_legend_handles_labels()[1][-1] == "90% interval"


def _fake_run(tmp_path: Path, kind: str = "classification") -> SimpleNamespace:
    records = []
    for epoch, (loss, acc) in enumerate([(2.34, 0.1), (2.31, 0.3), (2.295, 0.5), (2.29, 0.4)]):
        records.append({"split": "train", "step": 10 * epoch + 5, "epoch": epoch, "loss": loss})
        records.append(
            {
                "split": "val",
                "step": 10 * (epoch + 1),
                "epoch": epoch,
                "loss": loss,
                "accuracy": acc,
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = SimpleNamespace(task="digits", model=SimpleNamespace(layer="s4d"))
    return SimpleNamespace(run_dir=tmp_path, spec=SimpleNamespace(kind=kind), config=config)


def test_curves_epochs_best_epoch_plain_log_ticks(tmp_path):
    from ssmkit.train.plots import _curves, best_epoch
    from ssmkit.train.run import read_metrics

    run = _fake_run(tmp_path)
    cap = Capture()
    _curves(cap, run, tmp_path / "curves.png")
    loss_ax, val_ax = cap.figures[0].axes
    assert loss_ax.get_xlabel() == "epoch" and "cross-entropy" in loss_ax.get_ylabel()
    assert val_ax.get_ylabel() == "accuracy"
    labels = _tick_texts(loss_ax.yaxis)
    assert labels and all(re.fullmatch(r"[0-9.]+", t) for t in labels), labels  # no 10^0
    assert all(float(t.replace("\u2212", "-")).is_integer() for t in _tick_texts(loss_ax.xaxis))
    assert best_epoch(read_metrics(tmp_path), "classification") == 3
    for ax in (loss_ax, val_ax):
        assert "best (epoch 3)" in ax.get_legend_handles_labels()[1]
        assert [
            line.get_xdata()[0] for line in ax.lines if line.get_label().startswith("best")
        ] == [3]
    assert val_ax.lines[0].get_xdata().tolist() == [1, 2, 3, 4]  # validation at each epoch's end


def test_step_size_histograms_are_told_apart(tmp_path):
    from ssmkit.train.plots import _step_size_histograms

    g = torch.Generator().manual_seed(0)
    steps = [(i, torch.exp(torch.empty(16).uniform_(-7, -2, generator=g))) for i in range(3)]
    cap = Capture()
    _step_size_histograms(cap, steps, tmp_path / "s.png")
    ax = cap.figures[0].axes[0]
    patches = ax.patches
    assert len(patches) == 3
    styles = {(p.get_edgecolor(), p.get_linestyle()) for p in patches}
    assert len({c for c, _ in styles}) == 3 and len({s for _, s in styles}) == 3
    assert not any(p.get_fill() for p in patches)  # outlines: overlapping bars stay visible
    assert ax.get_xscale() == "log" and "dt" in ax.get_xlabel() and ax.get_ylabel()
    assert all("10^" not in t and "times" not in t for t in _tick_texts(ax.xaxis))


def test_token_norms_labels_complete_and_inside(tmp_path, monkeypatch):
    import ssmkit.analysis.token_plots as tp

    names = ["convergent", "divergent", "mixed: some tokens diverge"]
    report = [
        SimpleNamespace(norm_in=torch.rand(5) + 1, norm_out=torch.rand(5) + 1, scenario=s)
        for s in names
    ]
    cap = Capture()
    monkeypatch.setattr(tp, "_pyplot", lambda: cap)
    tp.plot_token_norms(report, str(tmp_path / "t.png"))
    fig = cap.figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == names  # whole names, not "dive"
    box = fig.bbox
    renderer = fig.canvas.get_renderer()
    for text in ax.texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and extent.y1 <= box.y1
    assert all(a.get_xlabel() and a.get_ylabel() for a in fig.axes[:2])
    assert fig.axes[2].get_ylabel() == "token position"  # the colour bar
    assert all(float(t.replace("\u2212", "-")).is_integer() for t in _tick_texts(ax.xaxis))
