"""Long inputs: chunked (state-passing) evaluation = whole-sequence evaluation for every layer;
tasks rebuilt at other lengths keep their meaning; eval --task.FIELD and extrapolate."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ssmkit import data
from ssmkit.cli import main
from ssmkit.data.synthetic import BLANK, MARKER, AddingConfig
from ssmkit.models.sequence import LAYERS, IOSpec, ModelConfig, SequenceModel
from ssmkit.train.config import default_run
from ssmkit.train.extrapolate import evaluate_chunked, extrapolate, length_field
from ssmkit.train.loop import build_model, evaluate
from ssmkit.train.run import LoadedRun, load_run, rebuild_task

SMALL = dict(n_layers=2, d_model=8, d_state=4, headdim=4, chunk_size=4)


def _model(layer: str, io: IOSpec, **extra) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(layer=layer, **SMALL, **extra), io).eval()


def _padded_split(b: int, l: int, vocab: int, kind: str, n_out: int) -> data.Split:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, l + 1, (b,), generator=g)
    lengths[0] = l
    x = torch.randint(vocab, (b, l), generator=g)
    if kind == "tokens":
        y = torch.randint(n_out, (b, l), generator=g)
        y[torch.rand(b, l, generator=g) < 0.3] = data.IGNORE
        y[torch.arange(l) >= lengths[:, None]] = data.IGNORE
    else:
        y = torch.randint(n_out, (b,), generator=g)
    return data.Split(x, y, lengths)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("chunk", [1, 7, 63])
def test_chunked_outputs_equal_whole_per_step_head(layer, chunk):
    io = IOSpec(head="tokens", n_outputs=11, vocab_size=11, max_length=63)
    model = _model(layer, io)
    x = torch.randint(11, (3, 63))
    with torch.no_grad():
        whole = model(x)
        pieces = list(model.forward_chunks(x, chunk=chunk))
    assert [s for s, _ in pieces] == list(range(0, 63, chunk))
    torch.testing.assert_close(torch.cat([o for _, o in pieces], 1), whole, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_chunked_pooled_head_with_padding_equals_whole(layer, pooling):
    io = IOSpec(head="classification", n_outputs=5, vocab_size=9, max_length=40, causal=False)
    model = _model(layer, io, pooling=pooling)
    split = _padded_split(6, 40, 9, "classification", 5)
    with torch.no_grad():
        whole = model(split.x, lengths=split.lengths)
        (start, out), *rest = list(model.forward_chunks(split.x, split.lengths, chunk=7))
    assert start == 0 and not rest
    torch.testing.assert_close(out, whole, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("layer", LAYERS)
def test_evaluate_chunked_metrics_equal_evaluate(layer):
    io = IOSpec(head="tokens", n_outputs=7, vocab_size=7, max_length=45)
    model = _model(layer, io)
    split = _padded_split(10, 45, 7, "tokens", 7)
    whole = evaluate(model, split, "tokens", 4, "cpu")
    chunked = evaluate_chunked(model, split, "tokens", 4, 8, "cpu")
    assert whole.keys() == chunked.keys()
    for k in whole:
        assert chunked[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-6), k


def test_evaluate_chunked_classification_and_regression_equal_evaluate():
    io = IOSpec(head="classification", n_outputs=4, vocab_size=9, max_length=30, causal=False)
    model = _model("s4d", io)
    split = _padded_split(9, 30, 9, "classification", 4)
    whole = evaluate(model, split, "classification", 4, "cpu")
    chunked = evaluate_chunked(model, split, "classification", 4, 6, "cpu")
    for k in whole:
        assert chunked[k] == pytest.approx(whole[k], rel=1e-5), k
    io = IOSpec(head="regression", n_outputs=1, d_input=2, max_length=30)
    model = _model("mamba", io)
    task = data.build_task("adding", AddingConfig(length=30, n_train=4, n_val=0, n_test=8))
    whole = evaluate(model, task.test, "regression", 3, "cpu")
    chunked = evaluate_chunked(model, task.test, "regression", 3, 4, "cpu")
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_non_recurrent_models_are_refused():
    io = IOSpec(head="classification", n_outputs=3, vocab_size=5, max_length=16, causal=False)
    x = torch.randint(5, (2, 16))
    for extra in ({"layer": "s4d", "bidirectional": True}, {"layer": "mamba", "reorder": True}):
        cfg = {**SMALL, **extra}
        layer = cfg.pop("layer")
        model = SequenceModel(ModelConfig(layer=layer, **cfg), io)
        with pytest.raises(ValueError, match="not recurrent"):
            next(model.forward_chunks(x, chunk=4))
    model = _model("s4d", io)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        next(model.forward_chunks(x, chunk=0))


def _answer_after_first_trigger(x: torch.Tensor, trigger: int) -> torch.Tensor:
    """Independent solver: for each row, the token after the first trigger."""
    out = []
    for row in x.tolist():
        p = row.index(trigger)
        out.append(row[p + 1])
    return torch.tensor(out)


def test_rebuilt_task_keeps_vocabulary_and_label_semantics():
    run = default_run("induction-heads", "mamba")
    trained = data.build_task(run.task, run.task_config).spec
    task = rebuild_task(run, trained, {"length": "1000", "n_test": "8", "seed": "5"})
    assert task.spec.max_length == 1000
    assert task.spec.vocab_size == trained.vocab_size and task.spec.itos == trained.itos
    y = task.test.y[:, -1]
    assert torch.equal(y, _answer_after_first_trigger(task.test.x, trained.vocab_size - 1))
    assert (task.test.y[:, :-1] == data.IGNORE).all()

    run = default_run("selective-copying", "s4d")
    trained = data.build_task(run.task, run.task_config).spec
    task = rebuild_task(run, trained, {"length": "500", "n_test": "4"})
    c = run.task_config
    for x, y in zip(task.test.x, task.test.y, strict=True):
        body = x[:500]
        tokens = body[body != BLANK]
        assert (x[500:] == MARKER).all() and torch.equal(y[500:], tokens)
        assert len(tokens) == c.n_data


def test_rebuild_refuses_changed_spaces_and_a_new_seed_gives_new_sequences():
    run = default_run("induction-heads", "s4d")
    trained = data.build_task(run.task, run.task_config).spec
    with pytest.raises(ValueError, match=r"--task.n_symbols .*vocab_size: 17 -> 33"):
        rebuild_task(run, trained, {"n_symbols": "32"})
    with pytest.raises(ValueError, match="unknown field"):
        rebuild_task(run, trained, {"vocab": "3"})
    a = rebuild_task(run, trained, {"n_test": "16", "seed": "1"}).test.x
    b = rebuild_task(run, trained, {"n_test": "16", "seed": "2"}).test.x
    c = rebuild_task(run, trained, {"n_test": "16", "seed": "1"}).test.x
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_length_field_and_refusal():
    assert length_field("copying", data.task_config("copying")) == "delay"
    assert length_field("mqar", data.task_config("mqar")) == "length"
    with pytest.raises(ValueError, match=r"no length setting.*induction-heads"):
        length_field("digits", data.task_config("digits"))


def _train_tiny(tmp_path, layer="mamba"):
    run_dir = tmp_path / layer
    argv = ["train", "--task", "induction-heads", "--model", layer, "--length", "16",
            "--n_train", "32", "--n_val", "8", "--n_test", "8", "--d_model", "8",
            "--n_layers", "1", "--d_state", "4", "--batch_size", "16", "--epochs", "1",
            "--out", str(run_dir), "--progress", "off", "--no-plot"]  # fmt: skip
    assert main(argv) == 0
    return run_dir


def test_cli_eval_with_task_overrides_and_chunks(tmp_path, capsys):
    run_dir = _train_tiny(tmp_path)
    capsys.readouterr()
    argv = ["eval", str(run_dir), "--task.length", "200", "--task.n_test", "6", "--task.seed", "3"]
    assert main(argv) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main([*argv, "--chunk", "32"]) == 0
    chunked = json.loads(capsys.readouterr().out)
    assert whole["task"] == {"length": "200", "n_test": "6", "seed": "3"}
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert chunked["accuracy"] == whole["accuracy"]
    assert main(["eval", str(run_dir), "--task.n_symbols", "4"]) == 2
    assert "input/output spaces" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--model.d_model", "4"]) == 2
    assert "--task.FIELD VALUE" in capsys.readouterr().err


def test_cli_extrapolate_writes_the_report(tmp_path, capsys):
    run_dir = _train_tiny(tmp_path, "s4d")
    out = tmp_path / "report"
    argv = ["extrapolate", str(run_dir), "--lengths", "16", "64", "--n", "4", "--chunk", "8",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "length       64: accuracy" in printed
    report = json.loads((out / "extrapolation.json").read_text())
    assert report["trained_length"] == 16 and report["seed"] == 1
    assert [r["length"] for r in report["results"]] == [16, 64]
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 4 for r in report["results"])
    assert "| 64 | 64 | 4 |" in (out / "extrapolation.md").read_text()
    assert (out / "extrapolation.png").read_bytes()[:4] == b"\x89PNG"
    # the same sweep through the Python API gives the same numbers
    again = extrapolate(load_run(run_dir), [64], n=4, chunk=64, log=lambda s: None)
    assert again["results"][0]["loss"] == pytest.approx(report["results"][1]["loss"], rel=1e-5)


def test_extrapolate_refuses_tasks_without_generated_lengths(tmp_path):
    run = default_run("digits", "s4d")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, **SMALL))
    task = data.build_task(run.task, run.task_config)
    loaded = LoadedRun(tmp_path, run, task.spec, build_model(run, task.spec))
    with pytest.raises(ValueError, match="no length setting"):
        extrapolate(loaded, [64], n=2)


def test_cli_extrapolate_compare_tables_several_reports(tmp_path, capsys):
    paths = []
    for layer in ("s4d", "mamba"):
        run_dir = _train_tiny(tmp_path, layer)
        out = tmp_path / f"rep-{layer}"
        assert main(["extrapolate", str(run_dir), "--lengths", "16", "32", "--n", "2",
                     "--chunk", "16", "--out", str(out), "--no-plot"]) == 0  # fmt: skip
        paths.append(str(out / "extrapolation.json"))
    out = tmp_path / "cmp"
    assert main(["extrapolate-compare", *paths, "--out", str(out)]) == 0
    table = (out / "comparison.md").read_text().splitlines()
    assert table[2] == "| model | trained at | 16 | 32 |"
    assert table[4].startswith("| s4d | 16 | ") and table[5].startswith("| mamba | 16 | ")
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    other = json.loads(Path(paths[0]).read_text())
    other["task"] = "mqar"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(other))
    assert main(["extrapolate-compare", paths[1], str(bad), "--out", str(out)]) == 2
    assert "cannot be compared" in capsys.readouterr().err
