"""Resuming a run safely: the configuration it was trained with, its metrics, its folder.

A checkpoint records the run's resolved configuration and the ssmkit version that wrote it
(:mod:`ssmkit.train.checkpoint`). On resume, :func:`check_resume` refuses any difference
(listing the fields) except :data:`EXTENDABLE`, which may change to extend a run;
:func:`truncate_metrics` repairs ``metrics.jsonl`` so that it holds exactly the complete
records up to the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ssmkit import __version__
from ssmkit.train import checkpoint as ckpt
from ssmkit.train.config import RunConfig
from ssmkit.train.rundir import read_config

EXTENDABLE = ("train.epochs", "train.max_steps")  # may change on resume, to extend a run


def truncate_metrics(path: Path, step: int, after_eval: bool) -> int:
    """Keep the complete records written up to the checkpoint we resume from.

    Dropped: records after the checkpoint, lines that are not a complete record (a write cut
    by a full disk or a kill) and ``test`` records (the end of the run writes its one again).
    ``after_eval``: the checkpoint was taken at an epoch's end, after its validation record;
    otherwise a validation record at the checkpoint's step will be written again on resume.
    Returns the number of unreadable lines dropped.
    """
    if not path.exists():
        return 0
    keep, torn = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            at, split = rec["step"], rec["split"]
            done = at < step or (at == step and (after_eval or split == "train"))
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        if done and split != "test":
            keep.append(line)
    ckpt.atomic_write_bytes(path, b"".join(k + b"\n" for k in keep))
    return torn


def config_changes(before: dict, after: dict) -> dict[str, tuple[object, object]]:
    """``section.field -> (before, after)`` for the fields two ``RunConfig.to_json()`` differ in.

    Sections are named as on the command line: ``task`` (its name), ``task.*``, ``model.*``,
    ``train.*``.
    """

    def flat(cfg: dict) -> dict[str, object]:
        out = {"task": cfg.get("task")}
        for section, name in (("task_config", "task"), ("model", "model"), ("train", "train")):
            values = cfg.get(section)
            for k, v in (values if isinstance(values, dict) else {}).items():
                out[f"{name}.{k}"] = v
        return out

    a, b = flat(before), flat(after)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def check_resume(run: RunConfig, run_dir: Path, index: dict, log: Callable[[str], None]) -> dict:
    """Refuse to resume when the configuration changed since the checkpoint.

    ``config.json`` and ``run`` must equal the configuration recorded in the checkpoint
    (``index``, from :func:`~ssmkit.train.checkpoint.read_index`), except :data:`EXTENDABLE`;
    the ssmkit version must be the one that wrote it. Returns the recorded configuration.

    Raises:
        ValueError: listing every changed field, as ``section.field old -> new``.
    """
    on_disk = read_config(run_dir).to_json()
    saved = index.get("config")
    if saved is None:  # a version-1 checkpoint, or saved without one: nothing recorded
        log(f"note: {run_dir}'s checkpoint records no configuration; comparing with config.json")
        saved = on_disk
    # fields added to a config since the checkpoint was written read as their defaults; a
    # record that does not parse is compared as it is (the differences are listed below)
    with contextlib.suppress(ValueError, TypeError):
        saved = RunConfig.from_json(saved).to_json()
    problems = []
    written_by = index.get("ssmkit_version", __version__)
    if written_by != __version__:
        problems.append(f"ssmkit version {written_by} -> {__version__}")
    for where, cfg in (("config.json", on_disk), ("the given configuration", run.to_json())):
        changes = {k: v for k, v in config_changes(saved, cfg).items() if k not in EXTENDABLE}
        if changes:
            listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            problems.append(f"{where}: {listed}")
    if problems:
        raise ValueError(
            f"cannot resume {run_dir}: changed since its checkpoint: {'; '.join(problems)}. "
            "Restore them or start a new run; only --epochs and --max_steps may change on "
            "resume (to extend a run)"
        )
    return saved


def prepare_dir(run_dir: Path) -> None:
    """Create ``run_dir``; a clear ValueError when it is a file or cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the run directory {run_dir}: {e.strerror}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ValueError(f"run directory {run_dir} is not writable")
