"""Run configs: overrides from the command line, JSON round trip, clear errors."""

import json

import pytest

from ssmkit.train.config import RunConfig, TrainConfig, apply_overrides, default_run


def test_overrides_plain_and_qualified_names():
    run = apply_overrides(
        default_run("adding", "lru"),
        [("lr", "0.01"), ("d_model", "32"), ("task.seed", "3"), ("train.seed", "4"),
         ("length", "17"), ("ssm_lr", "none"), ("bidirectional", "false")],
    )  # fmt: skip
    assert run.train.lr == 0.01 and run.model.d_model == 32 and run.model.layer == "lru"
    assert run.task_config.seed == 3 and run.train.seed == 4 and run.task_config.length == 17
    assert run.train.ssm_lr is None and run.model.bidirectional is False


def test_json_round_trip():
    run = apply_overrides(default_run("selective-copying", "mamba"), [("n_data", "4")])
    again = RunConfig.from_json(json.loads(json.dumps(run.to_json())))
    assert again == run


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("seed", "1"), "ambiguous; use --task.seed or --train.seed"),
        (("nope", "1"), "unknown option --nope; valid options: .*model.d_model"),
        (("model.nope", "1"), "unknown model option 'nope'; valid: .*d_state"),
        (("lr", "fast"), "--lr must be float, got 'fast'"),
        (("epochs", "1.5"), "--epochs must be int, got '1.5'"),
        (("bidirectional", "maybe"), r"--bidirectional must be bool \(true/false\), got 'maybe'"),
        (("layer", "gru"), "unknown layer .gru.; expected one of"),
        (("epochs", "0"), "epochs must be >= 1"),
        (("bogus.lr", "1"), "unknown config section 'bogus'"),
    ],
)
def test_bad_overrides_name_the_valid_choices(pair, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(default_run("adding", "s4d"), [pair])


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="selective-copying"):
        default_run("no-such-task")


def test_config_file_with_unknown_fields_is_rejected():
    obj = default_run("adding").to_json()
    obj["train"]["learning_rate"] = 1.0
    with pytest.raises(ValueError, match="learning_rate"):
        RunConfig.from_json(obj)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_recommended_settings_per_task_and_layer():
    assert default_run("digits", "s4d").train.lr == 1e-2
    assert default_run("digits", "lru").train.lr == 1e-3
    assert default_run("adding", "lru").train.lr == TrainConfig().lr
