"""Reading a run directory back: its configuration, its task and its trained model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ssmkit import data
from ssmkit.models.sequence import SequenceModel
from ssmkit.train import checkpoint as ckpt
from ssmkit.train.config import RunConfig
from ssmkit.train.loop import build_model

WEIGHTS = ("best", "last")


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    task: data.TaskData
    model: SequenceModel


def read_config(run_dir: Path) -> RunConfig:
    """The :class:`RunConfig` saved in ``run_dir/config.json``."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not an ssmkit run directory (no config.json)")
    try:
        return RunConfig.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a valid run configuration: {e}") from None


def load_run(run_dir: Path, weights: str = "best", device: str = "cpu") -> LoadedRun:
    """The run's config, task and model with the ``best`` (by validation) or ``last`` weights.

    ``best`` falls back to the last checkpoint when no validation improved yet.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    task = data.build_task(config.task, config.task_config)
    model = build_model(config, task.spec)
    best = run_dir / "best.safetensors"
    if weights == "best" and best.exists():
        ckpt.load_weights(best, model)
    else:
        ckpt.load_checkpoint(run_dir, model)
    model.to(torch.device(device)).eval()
    return LoadedRun(run_dir, config, task, model)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a half-written last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
