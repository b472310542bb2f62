"""Losses and metrics as sums: they match torch's means and add up across batches."""

import pytest
import torch
import torch.nn.functional as F

from ssmkit.data import IGNORE
from ssmkit.train.objectives import batch_sums, better, finalize, primary_metric


def _mean(kind, out, y, lengths):
    s = batch_sums(kind, out, y, lengths)
    return float(s["loss"] / s["count"]), s


def test_classification_matches_cross_entropy_and_accuracy():
    out, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, s = _mean("classification", out, y, torch.full((6,), 5))
    assert loss == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)
    m = finalize("classification", {k: float(v) for k, v in s.items()})
    assert m["accuracy"] == pytest.approx(float((out.argmax(-1) == y).float().mean()))


def test_tokens_ignore_unscored_positions_and_count_whole_sequences():
    out = torch.randn(2, 5, 7)
    y = torch.full((2, 5), IGNORE)
    y[0, 3:] = out[0, 3:].argmax(-1)  # item 0: both scored tokens right
    y[1, 4] = (out[1, 4].argmax(-1) + 1) % 7  # item 1: its one scored token wrong
    loss, s = _mean("tokens", out, y, torch.full((2,), 5))
    scored = y != IGNORE
    assert loss == pytest.approx(float(F.cross_entropy(out[scored], y[scored])), rel=1e-6)
    m = finalize("tokens", {k: float(v) for k, v in s.items()})
    assert m["accuracy"] == pytest.approx(2 / 3) and m["seq_accuracy"] == pytest.approx(0.5)


def test_forecast_masks_steps_past_the_length():
    out, y = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    lengths = torch.tensor([6, 2])
    loss, _ = _mean("forecast", out, y, lengths)
    err = torch.cat([(out[0] - y[0]).flatten(), (out[1, :2] - y[1, :2]).flatten()])
    assert loss == pytest.approx(float(err.square().mean()), rel=1e-6)


def test_sums_add_up_across_batches():
    out, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    whole = batch_sums("classification", out, y, torch.ones(8))
    halves = [batch_sums("classification", out[i::2], y[i::2], torch.ones(4)) for i in (0, 1)]
    for k in whole:
        torch.testing.assert_close(whole[k], halves[0][k] + halves[1][k])


def test_regression_and_selection_rules():
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    loss, s = _mean("regression", out, y, torch.ones(2))
    assert loss == pytest.approx(2.5)
    assert finalize("regression", {k: float(v) for k, v in s.items()})["rmse"] == pytest.approx(
        2.5**0.5
    )
    assert primary_metric("classification") == "accuracy" and primary_metric("forecast") == "loss"
    assert (
        better("accuracy", 0.9, 0.8) and better("loss", 0.1, 0.2) and not better("loss", 0.3, 0.2)
    )
    with pytest.raises(ValueError, match="unknown task kind"):
        batch_sums("ranking", out, y, torch.ones(2))
