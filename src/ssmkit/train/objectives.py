"""Loss and metrics of each task kind, as sums so that batches and processes add up exactly.

``batch_sums(kind, out, y, lengths)`` returns a dict of summed quantities and their counts;
the loss to minimise is ``sums["loss"] / sums["count"]`` over a batch (or over a global
batch split across processes), and :func:`finalize` turns accumulated sums into metrics.

* classification: cross-entropy, accuracy;
* regression: mean squared error over items and outputs, RMSE;
* tokens: cross-entropy over the scored positions (targets != IGNORE), token accuracy,
  sequence accuracy (every scored token right) and perplexity;
* forecast: mean squared error over valid steps and outputs, mean absolute error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmkit.data import IGNORE

Tensor = torch.Tensor


PRIMARY = {"classification": "accuracy", "regression": "loss", "tokens": "accuracy"}
HIGHER_IS_BETTER = {"accuracy": True, "seq_accuracy": True, "loss": False}


def primary_metric(kind: str) -> str:
    """The metric that selects the best checkpoint (higher is better for accuracies)."""
    return PRIMARY.get(kind, "loss")


def batch_sums(kind: str, out: Tensor, y: Tensor, lengths: Tensor) -> dict[str, Tensor]:
    """Summed loss and metric numerators with their denominators for one batch.

    Args:
        kind: the task kind.
        out: model outputs, (b, n_outputs) or (b, l, n_outputs).
        y: targets as the task defines them (see :mod:`ssmkit.data`).
        lengths: (b,) valid lengths (forecast masks the steps past them).
    """
    out = out.float()
    if kind == "classification":
        loss = F.cross_entropy(out, y, reduction="sum")
        n = torch.tensor(float(y.shape[0]), device=out.device)
        correct = (out.argmax(-1) == y).sum().float()
        return {"loss": loss, "count": n, "correct": correct, "items": n}
    if kind == "regression":
        err = out - y.to(out.dtype).reshape(out.shape)
        n = torch.tensor(float(err.numel()), device=out.device)
        return {"loss": err.square().sum(), "count": n}
    if kind == "tokens":
        y = y[:, : out.shape[1]]
        loss = F.cross_entropy(out.transpose(1, 2), y, ignore_index=IGNORE, reduction="sum")
        right, scored = token_counts(out, y)
        return {
            "loss": loss,
            "count": scored.sum(),
            "correct": right.sum(),
            "seq_correct": ((right == scored) & (scored > 0)).sum().float(),
            "items": (scored > 0).sum().float(),
        }
    if kind == "forecast":
        y = y[:, : out.shape[1]].to(out.dtype)
        steps = torch.arange(out.shape[1], device=out.device)
        mask = (steps < lengths.to(out.device).unsqueeze(1)).unsqueeze(-1).to(out.dtype)
        err = (out - y) * mask
        n = mask.sum() * out.shape[-1]
        return {"loss": err.square().sum(), "count": n, "abs": err.abs().sum()}
    raise ValueError(f"unknown task kind {kind!r}")


def token_counts(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per item, the right and the scored positions of a token task: two (b,) float tensors.

    They add up over pieces of a sequence, so a sequence evaluated in chunks gets the same
    token and sequence accuracy as evaluated whole.
    """
    scored = y != IGNORE  # (b, l)
    right = (out.argmax(-1) == y) & scored
    return right.sum(1).float(), scored.sum(1).float()


def finalize(kind: str, sums: dict[str, float]) -> dict[str, float]:
    """Metrics from sums accumulated over batches (and processes)."""
    count = max(sums["count"], 1.0)
    metrics = {"loss": sums["loss"] / count}
    if kind == "classification":
        metrics["accuracy"] = sums["correct"] / max(sums["items"], 1.0)
    elif kind == "regression":
        metrics["rmse"] = math.sqrt(metrics["loss"])
    elif kind == "tokens":
        metrics["accuracy"] = sums["correct"] / count
        metrics["seq_accuracy"] = sums["seq_correct"] / max(sums["items"], 1.0)
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    elif kind == "forecast":
        metrics["mae"] = sums["abs"] / count
    return metrics


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` for ``metric``."""
    if old is None:
        return True
    return new > old if HIGHER_IS_BETTER.get(metric, False) else new < old
