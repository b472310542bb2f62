"""A run directory: the names of its files, its configuration and task spec, its model.

=====================  ===========================================================  ==========
file                   holds                                                        written
=====================  ===========================================================  ==========
``config.json``        the :class:`RunConfig` (task, model, train)                  at start
``task.json``          the trained :class:`TaskSpec` (vocabulary, classes, stats)   at start
``metrics.jsonl``      one JSON record per line: train, val and test                appended
``checkpoint.json``    the checkpoint's index (:mod:`ssmkit.train.checkpoint`)      atomically
``checkpoint-N...``    its tensors (weights, optimiser moments)                     atomically
``best.safetensors``   the weights of the best validation so far                    atomically
``summary.json``       the run's results                                            at the end
=====================  ===========================================================  ==========

The trainer writes these files and the readers (``ssmkit eval``, ``generate``, ``plot``,
:func:`ssmkit.train.run.load_run`) read them through this module only, so a name is spelled
once. JSON files are replaced atomically (:func:`ssmkit.train.checkpoint.atomic_replace`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ssmkit import data
from ssmkit.data.base import spec_from_json, spec_to_json
from ssmkit.models.sequence import IOSpec, SequenceModel
from ssmkit.train import checkpoint as ckpt
from ssmkit.train.config import RunConfig

# The file names of a run directory (attribute of RunDir -> name).
FILES = {
    "config": "config.json",
    "task": "task.json",
    "metrics": "metrics.jsonl",
    "best": "best.safetensors",
    "summary": "summary.json",
    "index": ckpt.INDEX,
}


@dataclass(frozen=True, init=False)
class RunDir:
    """The paths of a run's files (see the module docstring); nothing is read or created."""

    root: Path  # the run directory
    config: Path  # the RunConfig, as JSON
    task: Path  # the trained TaskSpec, as JSON
    metrics: Path  # one JSON record per line
    best: Path  # the weights of the best validation
    summary: Path  # the results, as JSON
    index: Path  # the checkpoint's index (its tensor file is named there)

    def __init__(self, root: Path | str) -> None:
        root = Path(root)
        object.__setattr__(self, "root", root)
        for attr, name in FILES.items():
            object.__setattr__(self, attr, root / name)


def read_config(run_dir: Path) -> RunConfig:
    """The :class:`RunConfig` saved in ``run_dir/config.json``, every field type-checked.

    A data file it names (``task.path``) must be a regular file: the readers never open a
    device, a pipe or a folder that a config they did not write points them to.

    Raises:
        ValueError: no ``config.json``, or one that is not a valid run configuration.
    """
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ValueError(f"{run_dir} is not an ssmkit run directory (no config.json)")
    try:
        run = RunConfig.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid run configuration: {e}") from None
    data_path = getattr(run.task_config, "path", None)
    if data_path is not None and Path(data_path).exists() and not Path(data_path).is_file():
        raise ValueError(f"{path}: task.path must name a regular data file, got {data_path!r}")
    return run


def write_config(run_dir: Path, run: RunConfig) -> None:
    """Save ``run`` as ``run_dir/config.json``, atomically."""
    ckpt.atomic_write_json(RunDir(run_dir).config, run.to_json())


def resolve_paths(run: RunConfig) -> RunConfig:
    """``run`` with a relative ``task.path`` made absolute (against the current directory), so
    that the saved run reads the same file from anywhere."""
    path = getattr(run.task_config, "path", None)
    if not isinstance(path, str) or Path(path).is_absolute():
        return run
    task_config = dataclasses.replace(run.task_config, path=str(Path(path).resolve()))
    return dataclasses.replace(run, task_config=task_config)


def read_spec(run_dir: Path) -> data.TaskSpec | None:
    """The :class:`TaskSpec` saved in ``run_dir/task.json`` (None: a run saved before it was).

    Raises:
        ValueError: the file is not a valid spec (naming the file).
    """
    path = RunDir(run_dir).task
    if not path.exists():
        return None
    if not path.is_file():
        raise ValueError(f"{path} must be a regular file")
    try:
        return spec_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid task spec: {e}") from None


def write_spec(run_dir: Path, spec: data.TaskSpec) -> None:
    """Save ``spec`` as ``run_dir/task.json``, atomically."""
    ckpt.atomic_write_json(RunDir(run_dir).task, spec_to_json(spec))


def append_record(run_dir: Path, record: dict) -> None:
    """Append one record as a line of ``run_dir/metrics.jsonl``."""
    with open(RunDir(run_dir).metrics, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a half-written last line is skipped)."""
    path = RunDir(run_dir).metrics
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def io_spec(spec: data.TaskSpec) -> IOSpec:
    """The model's inputs and outputs for a task."""
    tokens = spec.input == "tokens"
    return IOSpec(
        head=spec.kind,
        n_outputs=spec.n_outputs,
        vocab_size=spec.vocab_size if tokens else None,
        d_input=None if tokens else spec.d_input,
        max_length=spec.max_length,
        causal=spec.causal,
    )


def build_model(run: RunConfig, spec: data.TaskSpec) -> SequenceModel:
    """The model of ``run``, initialised from its seed."""
    torch.manual_seed(run.train.seed)
    return SequenceModel(run.model, io_spec(spec))
