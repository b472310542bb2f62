"""The task kinds: what a task's targets mean, which head reads them, how they are scored.

Every kind is one frozen :class:`TaskKind` in :data:`TASK_KINDS`: whether its targets have a
length axis (a per-step head) or one target per sequence (a head on the pooled steps), the
shape and dtype of its targets, its primary metric and that metric's direction, and its loss
and metrics as sums (so that batches, processes and pieces of a sequence add up exactly).

=================  ========  ==============  =============================================
kind               per step  y               loss; metrics (primary first)
=================  ========  ==============  =============================================
classification     no        (b,) int64      cross-entropy; accuracy
regression         no        (b, o) float32  MSE over items and outputs; loss, rmse
tokens             yes       (b, l) int64    cross-entropy over scored positions (y !=
                                             IGNORE); accuracy, seq_accuracy, perplexity
forecast           yes       (b, l, o) f32   MSE over valid steps and outputs; loss, mae
=================  ========  ==============  =============================================

**Adding a kind touches this file only**: write its ``sums`` and ``metrics`` functions and add
its :class:`TaskKind` to :data:`TASK_KINDS`. The task specs (``ssmkit.data``), the model's head
(``ssmkit.models``), training, evaluation, chunked evaluation and the selection of the best
checkpoint (``ssmkit.train``) read everything they need from the table.

This module lives in ``core`` because both ``data`` and ``models`` read it, and neither may
import the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Sums = dict[str, Tensor]

IGNORE = -100  # token target of a position that is not scored


@dataclass(frozen=True)
class TaskKind:
    """What one kind of task means to the data checks, the model and the training loop.

    Attributes:
        name: the kind's name (``TaskSpec.kind``, ``IOSpec.head``).
        per_step: targets and outputs have a length axis (a per-step head); otherwise the head
            reads the valid steps pooled into one vector per sequence.
        y_axes: the targets' shape as axis letters: b batch, l length, o ``n_outputs``.
        class_targets: targets are int64 class ids in [0, n_outputs) (else float32 values,
            which must be finite).
        token_outputs: outputs are logits over a vocabulary at every step (a language model:
            generation, and tied embeddings when the input vocabulary is the same).
        unscored: the target value of a position that is not scored (None: all are scored).
        metric: the primary metric, which selects the best checkpoint.
        higher_is_better: the direction of ``metric``.
        sums: ``(out, y, lengths) -> sums`` of the loss (key ``loss``) and of the metrics'
            numerators and denominators (``count``: the loss's); ``out`` is float32,
            (b, o) or (b, l, o) with ``y`` cut to its length. They add up over batches and
            over pieces of a sequence.
        item_counts: ``(out, y) -> (b,) tensors`` per item that add up over pieces of a
            sequence (None: the kind has no whole-sequence metric).
        sequence_sums: sums from the ``item_counts`` of whole sequences (merged into the sums).
        metrics: ``(sums, count, loss) -> metrics`` besides ``loss``, from accumulated sums
            (``count`` is the loss's denominator, at least 1).
    """

    name: str
    per_step: bool
    y_axes: tuple[str, ...]
    class_targets: bool
    token_outputs: bool
    unscored: int | None
    metric: str
    higher_is_better: bool
    sums: Callable[[Tensor, Tensor, Tensor], Sums]
    metrics: Callable[[dict[str, float], float, float], dict[str, float]]
    item_counts: Callable[[Tensor, Tensor], tuple[Tensor, ...]] | None = None
    sequence_sums: Callable[..., Sums] | None = None

    @property
    def y_dtype(self) -> torch.dtype:
        """The dtype of the targets."""
        return torch.int64 if self.class_targets else torch.float32

    def y_shape(self, b: int, l: int, n_outputs: int) -> tuple[int, ...]:
        """The targets' shape for ``b`` items of length ``l``."""
        sizes = {"b": b, "l": l, "o": n_outputs}
        return tuple(sizes[a] for a in self.y_axes)

    def better(self, new: float, old: float | None) -> bool:
        """Whether ``new`` improves on ``old`` (None: nothing yet) for :attr:`metric`."""
        if old is None:
            return True
        return new > old if self.higher_is_better else new < old


# ----------------------------------------------------------------------------------------------
# Loss and metrics of each kind, as sums.


def _count(out: Tensor, n: int | float) -> Tensor:
    return torch.tensor(float(n), device=out.device)


def _classification_sums(out: Tensor, y: Tensor, lengths: Tensor) -> Sums:
    n = _count(out, y.shape[0])
    correct = (out.argmax(-1) == y).sum().float()
    return {"loss": F.cross_entropy(out, y, reduction="sum"), "count": n, "correct": correct,
            "items": n}  # fmt: skip


def _classification_metrics(sums: dict[str, float], count: float, loss: float) -> dict:
    return {"accuracy": sums["correct"] / max(sums["items"], 1.0)}


def _regression_sums(out: Tensor, y: Tensor, lengths: Tensor) -> Sums:
    err = out - y.to(out.dtype).reshape(out.shape)  # (b, o)
    return {"loss": err.square().sum(), "count": _count(out, err.numel())}


def _regression_metrics(sums: dict[str, float], count: float, loss: float) -> dict:
    return {"rmse": math.sqrt(loss)}


def _tokens_sums(out: Tensor, y: Tensor, lengths: Tensor) -> Sums:
    # the count and the accuracies come from token_counts (sequence_sums), which add over pieces
    return {"loss": F.cross_entropy(out.transpose(1, 2), y, ignore_index=IGNORE, reduction="sum")}


def token_counts(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per item, the right and the scored positions of a token task: two (b,) float tensors.

    They add up over pieces of a sequence, so a sequence evaluated in chunks gets the same
    token and sequence accuracy as evaluated whole.
    """
    scored = y != IGNORE  # (b, l)
    right = (out.argmax(-1) == y) & scored
    return right.sum(1).float(), scored.sum(1).float()


def _tokens_sequence_sums(right: Tensor, scored: Tensor) -> Sums:
    return {
        "count": scored.sum(),
        "correct": right.sum(),
        "seq_correct": ((right == scored) & (scored > 0)).sum().float(),
        "items": (scored > 0).sum().float(),
    }


def _tokens_metrics(sums: dict[str, float], count: float, loss: float) -> dict:
    return {
        "accuracy": sums["correct"] / count,
        "seq_accuracy": sums["seq_correct"] / max(sums["items"], 1.0),
        "perplexity": math.exp(min(loss, 50.0)),
    }


def _forecast_sums(out: Tensor, y: Tensor, lengths: Tensor) -> Sums:
    steps = torch.arange(out.shape[1], device=out.device)
    mask = (steps < lengths.to(out.device).unsqueeze(1)).unsqueeze(-1).to(out.dtype)  # (b, l, 1)
    err = (out - y.to(out.dtype)) * mask  # (b, l, o)
    return {"loss": err.square().sum(), "count": mask.sum() * out.shape[-1],
            "abs": err.abs().sum()}  # fmt: skip


def _forecast_metrics(sums: dict[str, float], count: float, loss: float) -> dict:
    return {"mae": sums["abs"] / count}


TASK_KINDS: dict[str, TaskKind] = {
    k.name: k
    for k in (
        TaskKind("classification", per_step=False, y_axes=("b",), class_targets=True,
                 token_outputs=False, unscored=None, metric="accuracy", higher_is_better=True,
                 sums=_classification_sums, metrics=_classification_metrics),
        TaskKind("regression", per_step=False, y_axes=("b", "o"), class_targets=False,
                 token_outputs=False, unscored=None, metric="loss", higher_is_better=False,
                 sums=_regression_sums, metrics=_regression_metrics),
        TaskKind("tokens", per_step=True, y_axes=("b", "l"), class_targets=True,
                 token_outputs=True, unscored=IGNORE, metric="accuracy", higher_is_better=True,
                 sums=_tokens_sums, metrics=_tokens_metrics, item_counts=token_counts,
                 sequence_sums=_tokens_sequence_sums),
        TaskKind("forecast", per_step=True, y_axes=("b", "l", "o"), class_targets=False,
                 token_outputs=False, unscored=None, metric="loss", higher_is_better=False,
                 sums=_forecast_sums, metrics=_forecast_metrics),
    )
}  # fmt: skip


def task_kind(kind: str | TaskKind) -> TaskKind:
    """The :class:`TaskKind` named ``kind`` (a TaskKind is returned as it is).

    Raises:
        ValueError: an unknown name (the message lists the kinds).
    """
    if isinstance(kind, TaskKind):
        return kind
    if not isinstance(kind, str) or kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {tuple(TASK_KINDS)}")
    return TASK_KINDS[kind]


def piece_sums(
    kind: str | TaskKind, out: Tensor, y: Tensor, lengths: Tensor
) -> tuple[Sums, tuple[Tensor, ...] | None]:
    """The sums of a batch, or of one piece of its sequences, and the per-item counts.

    The sums add up over batches, processes and pieces; the counts ((b,) tensors, None for a
    kind without them) add up over the pieces of the same sequences, and
    ``TaskKind.sequence_sums`` of their totals completes the sums (see :func:`batch_sums`).

    Args:
        kind: the task kind (a name or a :class:`TaskKind`).
        out: model outputs, (b, n_outputs) or (b, l, n_outputs).
        y: targets as the kind defines them; per-step targets are cut to ``out``'s length.
        lengths: (b,) valid lengths from the piece's first step (forecast masks the steps
            past them).

    Raises:
        ValueError: an unknown kind.
    """
    k = task_kind(kind)
    out = out.float()
    if k.per_step:
        y = y[:, : out.shape[1]]  # (b, l) or (b, l, o)
    counts = None if k.item_counts is None else k.item_counts(out, y)
    return k.sums(out, y, lengths), counts


def batch_sums(kind: str | TaskKind, out: Tensor, y: Tensor, lengths: Tensor) -> Sums:
    """Summed loss and metric numerators with their denominators for whole sequences.

    The loss to minimise is ``sums["loss"] / sums["count"]``; sums add up over batches (and
    processes), and :func:`finalize` turns accumulated sums into metrics. Arguments as in
    :func:`piece_sums`.

    Raises:
        ValueError: an unknown kind.
    """
    sums, counts = piece_sums(kind, out, y, lengths)
    if counts is not None:
        sums |= task_kind(kind).sequence_sums(*counts)
    return sums


def finalize(kind: str | TaskKind, sums: dict[str, float]) -> dict[str, float]:
    """Metrics (``loss`` first) from sums accumulated over batches, processes or pieces.

    Raises:
        ValueError: an unknown kind.
    """
    k = task_kind(kind)
    count = max(sums["count"], 1.0)
    loss = sums["loss"] / count
    return {"loss": loss, **k.metrics(sums, count, loss)}
