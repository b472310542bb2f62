"""Training and evaluation of :class:`~ssmkit.models.sequence.SequenceModel` on ssmkit tasks."""

from ssmkit.train.checkpoint import CheckpointError
from ssmkit.train.config import RunConfig, TrainConfig, apply_overrides, default_run
from ssmkit.train.loop import TrainingInterruptedError, evaluate, train

__all__ = [
    "CheckpointError",
    "RunConfig",
    "TrainConfig",
    "TrainingInterruptedError",
    "apply_overrides",
    "default_run",
    "evaluate",
    "train",
]
