"""SequenceModel.forward: the layer protocol's argument order, lengths validated once."""

import pytest
import torch

from ssmkit.layers import base
from ssmkit.models.sequence import IOSpec, ModelConfig, SequenceModel

CLASSIFY = IOSpec("classification", 3, d_input=2, max_length=32, causal=False)
TOKENS = IOSpec("tokens", 7, vocab_size=7, max_length=32, causal=True)


def _model(layer: str, io: IOSpec = CLASSIFY) -> SequenceModel:
    cfg = ModelConfig(layer=layer, d_model=8, n_layers=3, d_state=4, headdim=4, chunk_size=4)
    return SequenceModel(cfg, io).eval()


def _count_value_checks(monkeypatch, target: torch.Tensor) -> list[int]:
    """Count the value checks that read ``target`` (check_lengths asks values_checked)."""
    seen = []
    original = base.values_checked

    def counting(x, hot=False):
        if x is target:
            seen.append(1)
        return original(x, hot)

    monkeypatch.setattr(base, "values_checked", counting)
    return seen


@pytest.mark.parametrize("layer", ["s4d", "mamba", "mamba2"])
def test_lengths_are_checked_once_per_model_not_once_per_layer(monkeypatch, layer):
    model = _model(layer)
    x = torch.randn(2, 9, 2)
    lengths = torch.tensor([9, 4])  # int64: the checked tensor is this very object
    seen = _count_value_checks(monkeypatch, lengths)
    with torch.no_grad():
        out = model(x, lengths=lengths)
    assert len(seen) == 1  # the model's check; its 3 layers trust it
    with torch.no_grad():  # a public layer call outside the model still checks
        model.blocks[0].layer(torch.randn(2, 9, 8), lengths=lengths)
    assert len(seen) == 2
    with torch.no_grad():
        items = [model(x[i : i + 1, : int(n)]) for i, n in enumerate(lengths)]
    torch.testing.assert_close(out, torch.cat(items), atol=1e-5, rtol=1e-5)


def test_bad_lengths_are_named_by_the_model():
    model = _model("s4d")
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 9\]"):
        model(torch.randn(2, 9, 2), lengths=torch.tensor([10, 3]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\) = \(2,\)"):
        model(torch.randn(2, 9, 2), lengths=torch.tensor([9]))


def test_forward_takes_the_layer_protocol_order():
    model = _model("s4d", TOKENS)
    x = torch.randint(0, 7, (2, 6))
    lengths = torch.tensor([6, 2])
    with torch.no_grad():
        want, s_want = model(x, state=None, lengths=lengths, return_state=True)
        got, s_got = model(x, None, lengths, True)  # forward(x, state, lengths, return_state)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(s_got, s_want)
    with pytest.raises(TypeError, match="state must be a list of block states, got Tensor"):
        model(x, lengths)  # lengths in state's place: a clear error, not a silent misuse


def test_trusted_lengths_trust_only_that_tensor():
    lengths = torch.tensor([3, 1])
    with base.trusted_lengths(lengths):
        assert base.check_lengths(lengths, 2, 9) is lengths
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, 9\]"):
            base.check_lengths(torch.tensor([3, 10]), 2, 9)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 2\]"):
        base.check_lengths(lengths, 2, 2)  # outside the block: checked again
