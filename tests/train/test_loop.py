"""The training loop: every layer on every kind of task, bit-for-bit resume, signals."""

import json
import signal

import pytest
import torch

from ssmkit import data
from ssmkit.models.sequence import LAYERS
from ssmkit.train import TrainingInterruptedError, train
from ssmkit.train.checkpoint import load_checkpoint
from ssmkit.train.config import TrainConfig, apply_overrides, default_run
from ssmkit.train.loop import _seed, build_model, lr_factor
from ssmkit.train.run import load_run, read_metrics
from tests.train.conftest import tiny_run

KIND_TASKS = {"classification": "listops", "regression": "adding", "tokens": "selective-copying"}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("kind", sorted(KIND_TASKS))
def test_every_layer_trains_on_every_kind_of_task(layer, kind, tmp_path):
    run = tiny_run(KIND_TASKS[kind], layer, epochs=1, max_steps=2)
    summary = train(run, tmp_path / "run", progress="off", log=lambda s: None)
    assert summary["steps"] == 2 and summary["test"]
    assert all(v == v for v in summary["test"].values())  # no NaN


@pytest.mark.parametrize("layer", LAYERS)
def test_forecast_task_from_a_csv(layer, tmp_path):
    t = torch.arange(200, dtype=torch.float64)
    rows = ["a,b"] + [f"{float(torch.sin(v / 5)):.5f},{float(torch.cos(v / 7)):.5f}" for v in t]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    run = apply_overrides(
        default_run("csv-forecast", layer),
        [("path", str(tmp_path / "s.csv")), ("window", "16"), ("d_model", "8"), ("n_layers", "1"),
         ("headdim", "4"), ("batch_size", "8"), ("epochs", "1"), ("max_steps", "3")],
    )  # fmt: skip
    summary = train(run, tmp_path / "run", progress="off", log=lambda s: None)
    assert set(summary["test"]) == {"loss", "mae"}


def _weights(run_dir):
    loaded = load_run(run_dir, "last")
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def _losses(run_dir):
    return [(r["split"], r["step"], r.get("loss")) for r in read_metrics(run_dir)]


def test_resume_after_a_signal_equals_the_uninterrupted_run(tmp_path):
    run = tiny_run("adding", "s4d", dropout=0.25)
    run = type(run)(
        run.task,
        run.task_config,
        type(run.model)(**{**run.model.__dict__, "dropout": 0.25}),
        run.train,
    )
    train(run, tmp_path / "whole", progress="off", log=lambda s: None)

    def stop_at_3(step, record):
        if step == 3 and record["split"] == "train":
            signal.raise_signal(signal.SIGTERM)  # handled by the loop: checkpoint, then stop

    with pytest.raises(TrainingInterruptedError):
        train(run, tmp_path / "cut", progress="off", callbacks=[stop_at_3], log=lambda s: None)
    meta = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["meta"]
    assert meta["step"] == 3
    train(run, tmp_path / "cut", resume=True, progress="off", log=lambda s: None)
    whole, cut = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "cut")


def test_a_killed_run_loses_at_most_one_checkpoint_interval(tmp_path):
    run = tiny_run("adding", "lru", checkpoint_every=2, epochs=3)

    class KilledError(Exception):
        pass

    def die_at_5(step, record):
        if step == 5:
            raise KilledError  # no handler runs: like SIGKILL between steps

    with pytest.raises(KilledError):
        train(run, tmp_path / "r", progress="off", callbacks=[die_at_5], log=lambda s: None)
    model = build_model(run, data.build_task(run.task, run.task_config).spec)
    assert load_checkpoint(tmp_path / "r", model)["step"] == 4


def test_starting_twice_in_one_directory_is_refused(tmp_path):
    run = tiny_run(epochs=1, max_steps=1)
    train(run, tmp_path / "r", progress="off", log=lambda s: None)
    with pytest.raises(ValueError, match="already holds a run"):
        train(run, tmp_path / "r", progress="off", log=lambda s: None)


def test_schedule():
    cfg = TrainConfig(warmup_steps=4)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.25)
    assert lr_factor(4, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(50, 100, TrainConfig(schedule="constant")) == 1.0


def test_resume_from_the_last_batch_of_an_epoch_writes_its_validation_once(tmp_path):
    # 3 steps per epoch and a checkpoint every 3 steps: the in-loop checkpoint lands on the
    # epoch's last batch, before its validation; a kill right after that record is redone
    run = tiny_run("adding", "lru", checkpoint_every=3, epochs=2)
    train(run, tmp_path / "whole", progress="off", log=lambda s: None)

    class KilledError(Exception):
        pass

    def die_after_first_val(step, record):
        if record["split"] == "val":
            raise KilledError

    with pytest.raises(KilledError):
        train(run, tmp_path / "cut", progress="off", callbacks=[die_after_first_val],
              log=lambda s: None)  # fmt: skip
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["meta"]["batch"] == 3
    train(run, tmp_path / "cut", resume=True, progress="off", log=lambda s: None)
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "cut")


def test_summary_counts_training_tokens_and_time(tmp_path):
    run = tiny_run("listops", "s4d")  # padded: tokens are the valid steps, not b * l
    summary = train(run, tmp_path / "r", progress="off", log=lambda s: None)
    task = data.build_task(run.task, run.task_config)
    order_tokens = 0
    per_epoch = len(task.train) // run.train.batch_size
    for epoch in range(run.train.epochs):
        g = torch.Generator().manual_seed(_seed(run.train.seed, epoch))
        order = torch.randperm(len(task.train), generator=g)
        used = order[: per_epoch * run.train.batch_size]
        order_tokens += int(task.train.lengths[used].sum())
    assert summary["train_tokens"] == order_tokens
    assert order_tokens < summary["steps"] * run.train.batch_size * task.spec.max_length
    assert 0 < summary["train_s"] <= summary["time_s"]
    # train_s is rounded to 0.01 s in the summary; tokens_per_s uses the unrounded time
    low, high = summary["train_s"] - 0.005, summary["train_s"] + 0.005
    assert order_tokens / high - 1 <= summary["tokens_per_s"] <= order_tokens / max(low, 1e-9) + 1


def test_init_from_starts_from_another_runs_weights(tmp_path):
    first = tiny_run("selective-copying", "mamba")
    train(first, tmp_path / "a", progress="off", log=lambda s: None)
    changes = [("length", "20"), ("init_from", str(tmp_path / "a")), ("lr", "1e-12"),
               ("max_steps", "1"), ("weight_decay", "0")]  # fmt: skip
    longer = apply_overrides(first, changes)
    train(longer, tmp_path / "b", progress="off", log=lambda s: None)
    a, b = load_run(tmp_path / "a").model, load_run(tmp_path / "b", "last").model
    fresh = build_model(longer, data.build_task(longer.task, longer.task_config).spec)
    assert not torch.equal(fresh.head.weight, a.head.weight)  # a new init differs (trained a)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, atol=1e-6, rtol=0, msg=name)
    bad = apply_overrides(first, [("init_from", str(tmp_path / "missing"))])
    with pytest.raises(ValueError, match="neither a weight file nor a run directory"):
        train(bad, tmp_path / "c", progress="off", log=lambda s: None)
