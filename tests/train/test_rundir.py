"""The run directory: one place that names its files, reads and writes its config and spec,
builds its model; the one atomic write."""

import os

import pytest
import torch

from ssmkit import data
from ssmkit.train import checkpoint as ckpt
from ssmkit.train import rundir as rd
from ssmkit.train.config import apply_overrides, default_run
from ssmkit.train.loop import train
from tests.train.conftest import tiny_run


def _run():
    return apply_overrides(default_run("adding", "s4d"), [("length", "12"), ("d_model", "8")])


def test_config_and_spec_round_trip_and_build_the_same_model(tmp_path):
    run = _run()
    spec = data.build_task(run.task, run.task_config).spec
    rd.write_config(tmp_path, run)
    rd.write_spec(tmp_path, spec)
    assert rd.read_config(tmp_path) == run and rd.read_spec(tmp_path) == spec
    a = rd.build_model(rd.read_config(tmp_path), rd.read_spec(tmp_path))
    b = rd.build_model(run, spec)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "task.json"]


def test_missing_and_invalid_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"is not an ssmkit run directory \(no config\.json\)"):
        rd.read_config(tmp_path)
    rd.RunDir(tmp_path).config.write_text('{"task": "adding"}')
    with pytest.raises(ValueError, match=r"config.json is not a valid run configuration"):
        rd.read_config(tmp_path)
    assert rd.read_spec(tmp_path) is None  # a run saved before task.json
    rd.RunDir(tmp_path).task.mkdir()
    with pytest.raises(ValueError, match=r"task.json must be a regular file"):
        rd.read_spec(tmp_path)


def test_metrics_records_append_and_a_torn_line_is_skipped(tmp_path):
    rd.append_record(tmp_path, {"split": "train", "step": 1})
    rd.append_record(tmp_path, {"split": "val", "step": 1})
    with open(rd.RunDir(tmp_path).metrics, "a") as f:
        f.write('{"split": "tr')  # a write cut short
    assert rd.read_metrics(tmp_path) == [{"split": "train", "step": 1}, {"split": "val", "step": 1}]
    assert rd.read_metrics(tmp_path / "none") == []


def test_atomic_replace_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "summary.json"
    ckpt.atomic_replace(path, lambda tmp: tmp.write_text("old"))

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        ckpt.atomic_replace(path, half_then_fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]


def test_a_trained_run_holds_exactly_the_files_run_dir_names(tmp_path):
    root = tmp_path / "r"
    summary = train(tiny_run(epochs=1), root, progress="off", log=lambda _: None)
    files = rd.RunDir(root)
    named = [files.config, files.task, files.metrics, files.best, files.summary, files.index]
    tensors = ckpt.read_index(root)["tensors"]
    assert sorted(p.name for p in root.iterdir()) == sorted([p.name for p in named] + [tensors])
    assert rd.read_config(root) == tiny_run(epochs=1)
    splits = [r["split"] for r in rd.read_metrics(root)]
    assert splits[-2:] == ["val", "test"] and summary["metric"] == "loss"
