"""The command line: train, eval, generate, plot, dynamics, ablate; signals; torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssmkit.cli import main
from ssmkit.train.run import load_run

SMALL = ["--d_model", "8", "--n_layers", "1", "--d_state", "4", "--batch_size", "16",
         "--epochs", "1"]  # fmt: skip
TINY = [*SMALL, "--progress", "lines", "--no-plot"]
TEXT = ["--task", "text", "--length", "24", "--stride", "24"]


def test_train_eval_generate_plot_round_trip(tmp_path, capsys):
    run = tmp_path / "lm"
    argv = ["train", *TEXT, "--model", "s4d", "--out", str(run), *TINY, "--max_steps", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and str(run) in out
    assert {"config.json", "metrics.jsonl", "summary.json", "checkpoint.json"} <= {
        p.name for p in run.iterdir()
    }
    assert main(["eval", str(run), "--split", "val"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["split"] == "val" and 0 <= metrics["accuracy"] <= 1
    assert main(["generate", str(run), "--prompt", "The ", "--max-new-tokens", "12"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("The ") and len(text) == 4 + 12
    assert main(["plot", str(run)]) == 0
    pngs = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert pngs
    for png in pngs:
        with open(png, "rb") as f:
            assert f.read(4) == b"\x89PNG"


def test_errors_name_the_valid_choices(tmp_path, capsys):
    assert main(["train", "--task", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "selective-copying" in capsys.readouterr().err
    assert main(["train", "--d_modl", "8", "--out", str(tmp_path / "b")]) == 2
    assert "model.d_model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "gru"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not an ssmkit run directory" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path / "c")]) == 2
    assert "lacks the entries" in capsys.readouterr().err


def test_dynamics_and_ablation_commands(tmp_path, capsys):
    run = tmp_path / "m"
    argv = ["train", "--task", "digits", "--model", "mamba", "--out", str(run), *TINY,
            "--max_steps", "2"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["dynamics", str(run), "--items", "2", "--plot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    layer_rows = [line for line in lines if line.strip().startswith("0 ")]
    assert len(layer_rows) == 1  # one Mamba layer
    assert layer_rows[0].split()[-3] in ("divergent", "convergent")
    assert (run / "plots" / "token_norms.png").exists()
    out = tmp_path / "ab"
    argv = ["ablate", "--task", "digits", "--seeds", "0", "1", "--variants", "baseline",
            "positive", "--out", str(out), *SMALL, "--max_steps", "2"]  # fmt: skip
    assert main(argv) == 0
    table = (out / "ablation.md").read_text()
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert "baseline" in table and "positive" in table
    rows = json.loads((out / "ablation.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in rows) == [
        ("baseline", 0),
        ("baseline", 1),
        ("positive", 0),
        ("positive", 1),
    ]


def _cli(*args, env=None):
    return [sys.executable, "-m", "ssmkit", *args]


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "r"
    argv = _cli("train", "--task", "digits", "--out", str(run), *SMALL, "--epochs", "50",
                "--checkpoint_every", "1000", "--threads", "1", "--progress", "lines")  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text():
            break  # the first train records are written: training is under way
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "resume with: ssmkit train --resume" in out
    step = json.loads((run / "checkpoint.json").read_text())["meta"]["step"]
    assert step > 0
    done = subprocess.run(_cli("train", "--resume", str(run), "--progress", "lines", "--no-plot"),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming {run} at step {step}" in done.stdout
    assert json.loads((run / "summary.json").read_text())["epochs"] == 50


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    common = ["--task", "adding", "--length", "12", "--n_train", "64", "--n_val", "16",
              "--n_test", "16", "--model", "s4d", "--d_model", "8", "--n_layers", "1",
              "--batch_size", "16", "--epochs", "2", "--progress", "off", "--no-plot"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_cli("train", *common, "--out", str(tmp_path / "one")), env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--standalone", "-m", "ssmkit", "train", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    a = load_run(tmp_path / "one", "last").model.state_dict()
    b = load_run(tmp_path / "two", "last").model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    la = [r["loss"] for r in map(json.loads, (tmp_path / "one/metrics.jsonl").open())]
    lb = [r["loss"] for r in map(json.loads, (tmp_path / "two/metrics.jsonl").open())]
    assert la == pytest.approx(lb, rel=1e-4)
