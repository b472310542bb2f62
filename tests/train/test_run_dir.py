"""A run directory holds what evaluating and generating need: moved elsewhere, its training
file deleted or changed, it still evaluates on a given file and generates with its vocabulary."""

import json
import shutil

import numpy as np
import pytest

from ssmkit.cli import main
from ssmkit.data.base import spec_from_json
from ssmkit.data.text import UNK
from ssmkit.train.run import load_run

TINY = ["--d_model", "8", "--n_layers", "1", "--d_state", "4", "--batch_size", "16",
        "--epochs", "1", "--max_steps", "3", "--progress", "off", "--no-plot"]  # fmt: skip


def _text(seed: int, alphabet: str, n: int = 2000) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(alphabet), n))


def _generate(run, capsys, prompt="ab") -> str:
    argv = ["generate", str(run), "--prompt", prompt, "--max-new-tokens", "20", "--greedy"]
    assert main(argv) == 0
    return capsys.readouterr().out.rstrip("\n")


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys):
    """A tiny text run trained on ``work/train.txt`` given as a relative --task.path."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.txt").write_text(_text(0, "abcdefgh \n"))
    monkeypatch.chdir(work)
    argv = ["train", "--task", "text", "--task.path", "train.txt", "--length", "24",
            "--stride", "24", "--model", "s4d", "--out", "run", *TINY]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    return work / "run"


def test_run_saves_its_spec_and_an_absolute_data_path(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["task_config"]["path"] == str(trained.parent / "train.txt")
    spec = spec_from_json(json.loads((trained / "task.json").read_text()))
    assert spec.itos == (UNK, *sorted(set("abcdefgh \n")))
    assert spec.vocab_size == spec.n_outputs == 11


def test_moved_run_without_its_training_file_evaluates_and_generates(
    trained, tmp_path, monkeypatch, capsys
):
    before = _generate(trained, capsys)
    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(str(trained), str(moved))
    (tmp_path / "work" / "train.txt").unlink()
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    # "z" and "Q" are outside the trained vocabulary: read as <unk>, not a new vocabulary
    (other_dir / "held_out.txt").write_text(_text(1, "abcdefgh \nzQ", 1200))
    monkeypatch.chdir(other_dir)

    assert _generate(moved, capsys) == before
    assert set(before) <= set("abcdefgh \n")
    argv = ["eval", str(moved), "--task.path", "held_out.txt", "--split", "test"]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["accuracy"] <= 1 and np.isfinite(metrics["loss"])
    loaded = load_run(moved, task_overrides={"path": "held_out.txt"})
    assert loaded.task.spec.itos == loaded.spec.itos
    assert int((loaded.task.test.x == 0).sum()) > 0  # the unknown characters became <unk>
    # without a data file to read, eval names the missing training file
    with pytest.raises(ValueError, match="no such file"):
        load_run(moved).task  # noqa: B018


def test_changed_training_file_keeps_the_saved_vocabulary(trained, capsys):
    before = _generate(trained, capsys)
    # the same number of symbols, other characters: a rebuilt vocabulary would decode wrongly
    (trained.parent / "train.txt").write_text(_text(0, "ABCDEFGH \n"))
    assert _generate(trained, capsys) == before
    assert main(["eval", str(trained), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0


def test_run_saved_before_task_json_still_loads(trained):
    spec = load_run(trained).spec
    (trained / "task.json").unlink()
    assert load_run(trained).spec == spec


def test_a_corrupt_task_json_is_named(trained):
    (trained / "task.json").write_text('{"name": "text"}')
    with pytest.raises(ValueError, match=r"task\.json is not a valid task spec.*missing fields"):
        load_run(trained)
