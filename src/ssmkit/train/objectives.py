"""Loss and metrics of the training loop: the task kinds' sums, and the best-checkpoint rule.

Each kind's loss and metrics live in :data:`ssmkit.core.kinds.TASK_KINDS` (one table, one
place to add a kind). ``batch_sums(kind, out, y, lengths)`` returns a dict of summed
quantities and their counts; the loss to minimise is ``sums["loss"] / sums["count"]`` over a
batch (or over a global batch split across processes), and ``finalize`` turns accumulated
sums into metrics.
"""

from __future__ import annotations

from ssmkit.core.kinds import TASK_KINDS, batch_sums, finalize, piece_sums, task_kind

__all__ = ["batch_sums", "better", "finalize", "piece_sums", "primary_metric"]


def primary_metric(kind: str) -> str:
    """The metric that selects the best checkpoint (``TaskKind.metric``).

    Raises:
        ValueError: an unknown kind.
    """
    return task_kind(kind).metric


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` for ``metric``, a kind's primary metric: higher is
    better where that kind says so (the accuracies), lower otherwise (the losses)."""
    if old is None:
        return True
    higher = any(k.higher_is_better for k in TASK_KINDS.values() if k.metric == metric)
    return new > old if higher else new < old
