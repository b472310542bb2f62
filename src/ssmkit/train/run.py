"""Reading a run directory back: its configuration, its task and its trained model.

The files of a run directory and their readers are in :mod:`ssmkit.train.rundir`;
``read_config`` and ``read_metrics`` are also importable from here.
"""

from __future__ import annotations

from pathlib import Path

from ssmkit import data
from ssmkit.models.sequence import SequenceModel
from ssmkit.train import checkpoint as ckpt
from ssmkit.train.config import RunConfig, available_device
from ssmkit.train.rundir import RunDir, build_model, read_config, read_metrics, read_spec

__all__ = ["LoadedRun", "load_run", "read_config", "read_metrics", "rebuild_task"]
WEIGHTS = ("best", "last")


class LoadedRun:
    """A trained run: its config, the spec it was trained on, its model and (built when first
    used) its task data.

    Attributes:
        run_dir: the run directory.
        config: its :class:`RunConfig`.
        spec: the :class:`TaskSpec` the model was trained on (vocabulary, classes, statistics).
        model: the model with the chosen weights, in eval mode.
        task: the task's splits, read from the data only when asked for (``generate`` never
            is), with the trained spaces and the ``task_overrides`` of :func:`load_run`.
    """

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        spec: data.TaskSpec,
        model: SequenceModel,
        overrides: dict[str, object] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.spec = spec
        self.model = model
        self.overrides = dict(overrides or {})
        self._task: data.TaskData | None = None

    @property
    def task(self) -> data.TaskData:
        if self._task is None:
            self._task = rebuild_task(self.config, self.spec, self.overrides)
        return self._task


# What a task's spec says about the model's input and output spaces: a rebuilt task must keep
# all of these, or the trained weights do not apply to it (its length may change).
SPACE_FIELDS = (
    "kind", "input", "vocab_size", "d_input", "n_outputs", "causal", "pad_id", "itos",
    "classes", "mean", "std",
)  # fmt: skip


def load_run(
    run_dir: Path,
    weights: str = "best",
    device: str = "cpu",
    task_overrides: dict[str, object] | None = None,
) -> LoadedRun:
    """The run's config, task and model with the ``best`` (by validation) or ``last`` weights.

    ``best`` falls back to the last checkpoint when no validation improved yet.
    The model is built from the spec saved in ``task.json`` (runs written before it existed:
    from the rebuilt task), so loading never reads the training data; the task's splits are
    read when :attr:`LoadedRun.task` is first used, with the saved vocabulary.
    ``task_overrides`` (field -> value or string) rebuilds the task with other fields (another
    length, seed, split size or data file); the model is still the one trained.

    Every weight file is verified against its recorded SHA-256 before it is used.

    Raises:
        ValueError: an override names an unknown field or changes the model's input/output
            spaces (vocabulary, classes, features, normalisation); a device that is not
            ``cpu``/``cuda[:K]`` or not on this machine.
        CheckpointError: (a ValueError) a weight file that is missing, corrupted or foreign.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    target = available_device(device, "device")
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    spec = read_spec(run_dir)
    if spec is None:  # a run saved before task.json: its spec comes from its data
        spec = data.build_task(config.task, config.task_config).spec
    model = build_model(config, spec)
    loaded = LoadedRun(run_dir, config, spec, model, task_overrides)
    if task_overrides:
        loaded.task  # noqa: B018  (check the overrides now, before the weights are read)
    best = RunDir(run_dir).best
    if weights == "best" and best.exists():
        ckpt.load_weights(best, model)
    else:
        ckpt.load_checkpoint(run_dir, model)
    model.to(target).eval()
    return loaded


def rebuild_task(
    config: RunConfig, trained: data.TaskSpec, overrides: dict[str, object]
) -> data.TaskData:
    """The run's task rebuilt with ``overrides`` inside the ``trained`` spec's spaces (a text
    task reads any file with the trained vocabulary); refused when the spaces still change."""
    new_config = data.override_config(config.task_config, overrides)
    task = data.build_task(config.task, new_config, trained)
    changed = [
        f for f in SPACE_FIELDS if getattr(task.spec, f) != getattr(trained, f)
    ]  # fmt: skip
    if changed:
        what = "; ".join(
            f"{f}: {_short(getattr(trained, f))} -> {_short(getattr(task.spec, f))}"
            for f in changed
        )
        fields = ", ".join(f"--task.{k}" for k in overrides)
        raise ValueError(
            f"{fields} would change the model's input/output spaces ({what}); a model trained "
            f"on {config.task!r} can only be evaluated with the same vocabulary, classes and "
            "features (change length, seed or split sizes instead)"
        )
    return task


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
