"""A task spec saved as JSON reads back equal; a text task rebuilt inside a trained vocabulary
keeps its ids; bad saved specs and foreign specs are refused with the field named."""

import json

import pytest

from ssmkit.data import build_task
from ssmkit.data.base import TaskSpec, spec_from_json, spec_to_json
from ssmkit.data.text import UNK, TextConfig, encode, rebuild_text


@pytest.mark.parametrize("name", ["text", "digits", "adding"])
def test_spec_round_trips_through_json(name):
    spec = build_task(name).spec
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec


def test_spec_with_classes_and_statistics_round_trips():
    spec = TaskSpec("csv", "classification", "features", None, 2, 3, 5, False, None,
                    classes=("a", "b", "c"), mean=(0.5, 1), std=(2.0, 3.0))  # fmt: skip
    back = spec_from_json(json.loads(json.dumps(spec_to_json(spec))))
    assert back == spec and back.mean == (0.5, 1.0) and isinstance(back.classes, tuple)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"vocab_size": "11"}, "vocab_size must be"),
        ({"causal": 1}, "causal must be"),
        ({"itos": ["a", 3]}, "itos must be"),
        ({"mean": "0.5"}, "mean must be"),
        ({"colour": "red"}, r"unknown fields \['colour'\]"),
    ],
)
def test_bad_saved_spec_names_the_field(change, match):
    obj = {**spec_to_json(build_task("text").spec), **change}
    with pytest.raises(ValueError, match=match):
        spec_from_json(obj)
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        spec_from_json([1])


def test_rebuilt_text_uses_the_trained_vocabulary(tmp_path):
    trained = build_task("text").spec
    path = tmp_path / "new.txt"
    path.write_text("~~ zebra quiz ~~\n" * 60)  # "~" is not in Coriolanus
    task = build_task("text", TextConfig(path=str(path), length=16, stride=1), trained)
    assert task.spec.itos == trained.itos and task.spec.vocab_size == trained.vocab_size
    ids = encode("~~ zebra quiz ~~\n", trained.itos)
    assert int(ids[0]) == trained.itos.index(UNK) == 0
    assert task.train.x[0].tolist() == ids.repeat(2)[:16].tolist()
    # without a trained spec the vocabulary is the new file's own
    own = build_task("text", TextConfig(path=str(path), length=16, stride=16)).spec.itos
    assert own == (UNK, *sorted(set("~~ zebra quiz ~~\n")))


def test_rebuild_text_refuses_a_spec_without_a_vocabulary():
    with pytest.raises(ValueError, match="rebuild_text needs the spec of a text task"):
        rebuild_text(TextConfig(), build_task("digits").spec)
