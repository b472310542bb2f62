"""Resuming a run written before a config field existed: the new field reads as its default."""

from __future__ import annotations

import json

import pytest

from ssmkit import __version__
from ssmkit.data import task_config
from ssmkit.models.sequence import ModelConfig
from ssmkit.train.config import RunConfig, TrainConfig
from ssmkit.train.resume import check_resume


def _run(**model) -> RunConfig:
    return RunConfig("adding", task_config("adding"), ModelConfig(**model), TrainConfig())


def _older(run: RunConfig, drop: str) -> dict:
    """``run``'s JSON as a version without the model field ``drop`` wrote it."""
    obj = run.to_json()
    del obj["model"][drop]
    return obj


def test_a_field_added_since_the_checkpoint_reads_as_its_default(tmp_path):
    run = _run()
    (tmp_path / "config.json").write_text(json.dumps(_older(run, "r_max")))
    index = {"config": _older(run, "r_max"), "ssmkit_version": __version__}
    saved = check_resume(run, tmp_path, index, log=lambda _: None)
    assert saved["model"]["r_max"] == ModelConfig().r_max


def test_a_real_change_is_still_refused(tmp_path):
    run = _run()
    (tmp_path / "config.json").write_text(json.dumps(run.to_json()))
    index = {"config": _older(_run(d_model=32), "r_max"), "ssmkit_version": __version__}
    with pytest.raises(ValueError, match=r"model.d_model 32 -> 64"):
        check_resume(run, tmp_path, index, log=lambda _: None)
