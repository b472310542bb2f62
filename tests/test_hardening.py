"""Issue 16 replayed: run directories, checkpoints and the command line under bad files,
edited configs, a full disk and interrupted writes. Each test fails without its fix."""

import json

import pytest
import torch

import ssmkit.train
from ssmkit.cli import main
from ssmkit.models import load_pretrained
from ssmkit.train import TrainingInterruptedError, train
from ssmkit.train import checkpoint as ckpt
from ssmkit.train.run import load_run, read_config, read_metrics
from tests.train.conftest import tiny_run

QUIET = {"progress": "off", "log": lambda s: None}
TINY_CLI = ["--task", "adding", "--length", "12", "--n_train", "48", "--n_val", "16",
            "--n_test", "16", "--model", "lru", "--d_model", "8", "--n_layers", "1",
            "--d_state", "4", "--batch_size", "16", "--epochs", "1", "--progress", "off",
            "--no-plot"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (1 epoch, 3 steps); tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    train(tiny_run(epochs=1), run_dir, **QUIET)
    return run_dir


@pytest.fixture
def run_dir(finished, tmp_path):
    import shutil

    return shutil.copytree(finished, tmp_path / "run")


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


# --- 1: paths read from JSON files ssmkit did not get from the user ---


def test_eval_last_refuses_a_checkpoint_naming_a_file_outside_the_run(run_dir, capsys):
    index = json.loads((run_dir / ckpt.INDEX).read_text())
    outside = run_dir.parent / "elsewhere.safetensors"
    (run_dir / index["tensors"]).rename(outside)
    index["tensors"] = f"../{outside.name}"
    (run_dir / ckpt.INDEX).write_text(json.dumps(index))
    rc = main(["eval", str(run_dir), "--weights", "last"])
    _one_line_error(capsys, rc, "plain file name inside the run directory")
    with pytest.raises(ckpt.CheckpointError, match="plain file name"):
        train(read_config(run_dir), run_dir, resume=True, **QUIET)
    assert outside.exists()


def test_pretrained_shard_index_may_name_only_files_in_the_directory(tmp_path):
    config = {"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps(config))
    weight_map = {"backbone.embeddings.weight": "../shard.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="plain file names inside"):
        load_pretrained(tmp_path)


def test_a_run_config_naming_a_device_as_data_file_is_refused(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["task"], cfg["task_config"] = "text", {"path": "/dev/zero"}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="regular data file"):
        read_config(run_dir)


# --- 2: a torn metrics line, a resumed finished run ---


def test_resume_repairs_a_torn_metrics_line_and_writes_one_test_record(run_dir):
    before = read_metrics(run_dir)
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(b'{"split": "train", "step": 9, "lo')  # the disk filled mid-line
    summary = train(read_config(run_dir), run_dir, resume=True, **QUIET)
    train(read_config(run_dir), run_dir, resume=True, **QUIET)  # resumed twice
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is a complete record
    assert records == before
    assert [r["split"] for r in records].count("test") == 1
    assert summary["steps"] == 3


# --- 3: best.safetensors is verified wherever it is loaded ---


def test_a_flipped_bit_in_best_fails_eval_generate_and_plot(run_dir, capsys):
    best = run_dir / "best.safetensors"
    raw = bytearray(best.read_bytes())
    raw[-2] ^= 0x7F
    best.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        load_run(run_dir)  # what eval, generate and plot load by default
    _one_line_error(capsys, main(["eval", str(run_dir)]), "best.safetensors is corrupted")
    load_run(run_dir, "last")  # the checkpoint is intact


# --- 4: resume notices edited configs; --epochs extends explicitly ---


def test_resume_refuses_an_edited_config_and_lists_the_fields(run_dir, capsys):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["train"]["lr"], cfg["train"]["seed"] = 0.5, 7
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"train\.lr 0\.003 -> 0\.5, train\.seed 0 -> 7"):
        train(read_config(run_dir), run_dir, resume=True, **QUIET)
    _one_line_error(capsys, main(["train", "--resume", str(run_dir)]), "train.lr")


def test_resume_refuses_another_ssmkit_version(run_dir, monkeypatch):
    from ssmkit.train import resume

    monkeypatch.setattr(resume, "__version__", "99.0")
    with pytest.raises(ValueError, match=r"ssmkit version .* -> 99\.0"):
        train(read_config(run_dir), run_dir, resume=True, **QUIET)


def test_resume_with_epochs_extends_the_run(run_dir, capsys):
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0
    capsys.readouterr()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 6
    assert read_config(run_dir).train.epochs == 2  # config.json follows the extension
    assert [r["split"] for r in read_metrics(run_dir)].count("test") == 1
    rc = main(["train", "--resume", str(run_dir), "--lr", "0.1"])
    _one_line_error(capsys, rc, "only --epochs N and --max_steps N")
    with pytest.raises(ValueError, match=r"would end .* before the 2 epochs"):
        train(tiny_run(epochs=1), run_dir, resume=True, **QUIET)


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [("train", "epochs", 12.5, "train.epochs must be int, got 12.5"),
     ("train", "lr", "0.1", "train.lr must be float, got '0.1'"),
     ("model", "d_model", True, "model.d_model must be int, got True"),
     ("train", "ssm_lr", [1], "train.ssm_lr must be float or null")],
)  # fmt: skip
def test_config_types_are_checked_when_read(run_dir, section, field, value, message):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg[section][field] = value
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        read_config(run_dir)


# --- 5 (in part): divergence is reported as such and the last good checkpoint is kept ---


class _NaNGradient(torch.autograd.Function):
    """Identity whose gradient is NaN: a finite loss with a poisoned backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_divergence_is_reported_and_the_last_good_checkpoint_kept(tmp_path, monkeypatch):
    from ssmkit.train import loop

    real, calls = loop.batch_sums, []

    def poisoned(kind, out, y, lengths):
        calls.append(1)
        sums = real(kind, out, y, lengths)
        if len(calls) == 3:  # the third training step
            sums["loss"] = _NaNGradient.apply(sums["loss"])
        return sums

    monkeypatch.setattr(loop, "batch_sums", poisoned)
    run_dir = tmp_path / "r"
    with pytest.raises(
        FloatingPointError, match=r"diverged at step 3 \(loss .*, gradient norm nan\)"
    ):
        train(tiny_run(epochs=1, checkpoint_every=1), run_dir, **QUIET)
    kept = load_run(run_dir, "last").model
    assert json.loads((run_dir / ckpt.INDEX).read_text())["meta"]["step"] == 2
    assert all(torch.isfinite(p).all() for p in kept.parameters())


# --- 7: the command line's error contract ---


def test_out_that_is_a_file_or_below_a_file_is_one_line_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(capsys, main(["train", *TINY_CLI, "--out", str(afile)]), "is a file")
    rc = main(["train", *TINY_CLI, "--out", str(afile / "run")])
    _one_line_error(capsys, rc, "cannot create the run directory")


def test_bad_devices_and_batch_size_are_one_line_exit_2(run_dir, tmp_path, capsys, monkeypatch):
    rc = main(["train", *TINY_CLI, "--device", "gpu0", "--out", str(tmp_path / "x")])
    _one_line_error(capsys, rc, "device must be cpu, cuda or cuda:K, got 'gpu0'")
    _one_line_error(capsys, main(["eval", str(run_dir), "--device", "tpu"]), "device must be")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["eval", str(run_dir), "--device", "cuda"])
    _one_line_error(capsys, rc, "CUDA is not available")
    rc = main(["eval", str(run_dir), "--batch-size", "-1"])
    _one_line_error(capsys, rc, "--batch-size must be >= 1")


def test_a_full_disk_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    def full(*args, **kw):
        raise OSError(28, "No space left on device", str(tmp_path / "r" / "checkpoint.json"))

    monkeypatch.setattr(ckpt, "save_checkpoint", full)
    rc = main(["train", *TINY_CLI, "--out", str(tmp_path / "r")])
    _one_line_error(capsys, rc, "No space left on device")


def test_the_interrupt_message_goes_to_stderr(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kw):
        raise TrainingInterruptedError(5, 15)

    monkeypatch.setattr(ssmkit.train, "train", interrupted)
    assert main(["train", *TINY_CLI, "--out", str(tmp_path / "r")]) == 130
    out, err = capsys.readouterr()
    assert "resume with: ssmkit train --resume" in err and "resume with" not in out


def test_stale_temporary_files_are_cleaned_on_the_next_start(run_dir):
    stale = run_dir / f".checkpoint.json.tmp-{999_999_999}"
    stale.write_bytes(b"{half")
    train(read_config(run_dir), run_dir, resume=True, **QUIET)
    assert not stale.exists()
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]
