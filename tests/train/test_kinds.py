"""The table of task kinds: one entry read by the data checks, the model, training and the
chunked evaluation; sums of pieces equal sums of whole sequences."""

import dataclasses

import pytest
import torch

from ssmkit.core.kinds import IGNORE, TASK_KINDS, TaskKind, batch_sums, piece_sums, task_kind
from ssmkit.data.base import KINDS, Split, TaskSpec, check_split
from ssmkit.models.sequence import HEADS, IOSpec, ModelConfig, SequenceModel
from ssmkit.train.objectives import better, finalize, primary_metric


def _batch(kind: TaskKind, b=3, l=7, o=4, seed=0):
    """Random outputs and targets of ``kind`` with lengths 1, 5 and 7 (some steps padded)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 5, 7])[:b]
    shape = (b, l, o) if kind.per_step else (b, o)
    out = torch.randn(shape, generator=g)
    if kind.class_targets:
        y = torch.randint(0, o, kind.y_shape(b, l, o), generator=g)
        if kind.unscored is not None:
            y[torch.rand(y.shape, generator=g) < 0.4] = kind.unscored
            y[0, 0] = 1  # every item has a scored position ...
            y[1, :] = out[1].argmax(-1)  # ... and item 1 is all right
    else:
        y = torch.randn(kind.y_shape(b, l, o), generator=g)
    return out, y, lengths


def test_the_kinds_are_the_specs_and_the_heads():
    assert set(TASK_KINDS) == set(KINDS) == set(HEADS)
    for name, kind in TASK_KINDS.items():
        assert kind.name == name and kind.metric in finalize(kind, _sums(kind))
        assert primary_metric(name) == kind.metric
        assert (kind.item_counts is None) == (kind.sequence_sums is None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            kind.metric = "loss"  # type: ignore[misc]


def _sums(kind: TaskKind) -> dict[str, float]:
    return {k: float(v) for k, v in batch_sums(kind, *_batch(kind)).items()}


def test_unknown_kinds_are_named():
    with pytest.raises(ValueError, match=r"unknown task kind 'ranking'; expected one of"):
        task_kind("ranking")
    with pytest.raises(ValueError, match="unknown task kind"):
        batch_sums("ranking", torch.zeros(2, 3), torch.zeros(2), torch.ones(2))
    assert task_kind(TASK_KINDS["tokens"]) is TASK_KINDS["tokens"]


@pytest.mark.parametrize("name", list(TASK_KINDS))
def test_names_and_kinds_give_the_same_sums(name):
    out, y, lengths = _batch(TASK_KINDS[name])
    by_name, by_kind = (
        batch_sums(name, out, y, lengths),
        batch_sums(task_kind(name), out, y, lengths),
    )
    assert list(by_name) == list(by_kind) and list(by_name)[:2] == ["loss", "count"]
    for k in by_name:
        assert torch.equal(by_name[k], by_kind[k])


@pytest.mark.parametrize("name", [k for k, v in TASK_KINDS.items() if v.per_step])
@pytest.mark.parametrize("piece", [1, 2, 3])
def test_pieces_of_a_sequence_add_up_to_the_whole(name, piece):
    kind = TASK_KINDS[name]
    out, y, lengths = _batch(kind)
    whole = batch_sums(kind, out, y, lengths)
    total: dict[str, torch.Tensor] = {}
    counts = None
    for start in range(0, out.shape[1], piece):
        part, c = piece_sums(
            kind, out[:, start : start + piece], y[:, start:], (lengths - start).clamp(min=0)
        )
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
        if c is not None:
            counts = c if counts is None else tuple(a + b for a, b in zip(counts, c, strict=True))
    if counts is not None:
        total |= kind.sequence_sums(*counts)
    assert set(total) == set(whole)
    for k in whole:
        torch.testing.assert_close(total[k], whole[k], rtol=1e-6, atol=1e-5)


def test_token_sums_count_whole_sequences_right():
    kind = TASK_KINDS["tokens"]
    out, y, lengths = _batch(kind)
    s = {k: float(v) for k, v in batch_sums(kind, out, y, lengths).items()}
    scored = y != IGNORE
    assert s["count"] == float(scored.sum()) and s["items"] == 3.0
    assert s["seq_correct"] >= 1.0  # item 1 is right at every step
    m = finalize(kind, s)
    assert m["accuracy"] == pytest.approx(s["correct"] / s["count"])
    assert list(m) == ["loss", "accuracy", "seq_accuracy", "perplexity"]


def test_the_primary_metric_direction():
    for kind in TASK_KINDS.values():
        lo, hi = 0.2, 0.8
        assert kind.better(hi, lo) is kind.higher_is_better
        assert better(kind.metric, hi, lo) is kind.higher_is_better
        assert kind.better(lo, None) and better(kind.metric, lo, None)
    assert TASK_KINDS["classification"].metric == "accuracy"
    assert TASK_KINDS["forecast"].metric == "loss" and not TASK_KINDS["forecast"].higher_is_better


@pytest.mark.parametrize("name", list(TASK_KINDS))
def test_check_split_reads_the_targets_shape_and_dtype_from_the_table(name):
    kind = TASK_KINDS[name]
    b, L, o = 2, 5, 3
    spec = TaskSpec("t", name, "features", None, 2, o, L, True, None)
    y = torch.zeros(kind.y_shape(b, L, o), dtype=kind.y_dtype)
    split = Split(torch.zeros(b, L, 2), y, torch.full((b,), L))
    check_split(spec, "train", split)
    wrong = torch.float32 if kind.class_targets else torch.int64
    bad = Split(split.x, y.to(wrong), split.lengths)
    with pytest.raises(ValueError, match=rf"y must be {kind.y_dtype} \(.*\), got {wrong}"):
        check_split(spec, "train", bad)
    if kind.class_targets:
        with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
            check_split(spec, "train", Split(split.x, y + o, split.lengths))
    else:
        with pytest.raises(ValueError, match="NaN or inf"):
            check_split(spec, "train", Split(split.x, y + float("nan"), split.lengths))


@pytest.mark.parametrize("name", list(TASK_KINDS))
def test_the_model_head_follows_the_kind(name):
    kind = TASK_KINDS[name]
    torch.manual_seed(0)
    tokens = kind.token_outputs
    io = IOSpec(head=name, n_outputs=5, vocab_size=5 if tokens else None,
                d_input=None if tokens else 2, max_length=7)  # fmt: skip
    model = SequenceModel(ModelConfig(layer="s4d", d_model=8, n_layers=1, d_state=4), io)
    x = torch.randint(0, 5, (2, 7)) if tokens else torch.randn(2, 7, 2)
    out = model(x, lengths=torch.tensor([7, 3]))
    assert out.shape == ((2, 7, 5) if kind.per_step else (2, 5))
    assert model.kind is kind and model.tied is tokens and model.streams is kind.per_step
