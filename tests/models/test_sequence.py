"""SequenceModel: every layer type with every head; streaming = whole; padding = items."""

import math

import pytest
import torch

from ssmkit.models.sequence import LAYERS, IOSpec, ModelConfig, SequenceModel

TOKENS = IOSpec("tokens", 11, vocab_size=11, max_length=32, causal=True)
FORECAST = IOSpec("forecast", 2, d_input=3, max_length=32, causal=True)
CLASSIFY = IOSpec("classification", 5, d_input=1, max_length=32, causal=False)
REGRESS = IOSpec("regression", 1, vocab_size=7, max_length=32, causal=True)


def small(layer: str, **kw) -> ModelConfig:
    return ModelConfig(
        layer=layer, d_model=16, n_layers=2, d_state=8, headdim=8, chunk_size=8, **kw
    )


def inputs(io: IOSpec, b: int, l: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if io.vocab_size is not None:
        return torch.randint(0, io.vocab_size, (b, l), generator=g)
    return torch.randn(b, l, io.d_input, generator=g)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("io", [TOKENS, FORECAST, CLASSIFY, REGRESS], ids=lambda io: io.head)
def test_shapes_and_gradients_reach_every_parameter(layer, io):
    model = SequenceModel(small(layer), io)
    out = model(inputs(io, 3, 13), lengths=torch.tensor([13, 9, 1]))
    per_step = io.head in ("tokens", "forecast")
    assert out.shape == ((3, 13, io.n_outputs) if per_step else (3, io.n_outputs))
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("io", [TOKENS, FORECAST], ids=lambda io: io.head)
def test_step_by_step_and_split_with_state_equal_the_whole(layer, io):
    model = SequenceModel(small(layer), io).eval()
    x = inputs(io, 2, 11)
    with torch.no_grad():
        whole = model(x)
        state, outs = model.initial_state(2), []
        for t in range(x.shape[1]):
            y, state = model.step(x[:, t], state)
            outs.append(y)
        first, s = model(x[:, :4], return_state=True)
        second, _ = model(x[:, 4:], state=s, return_state=True)
    torch.testing.assert_close(torch.stack(outs, 1), whole, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "layer", ["s4d", "s5", "lru", "mamba", "mamba2", "h3", "gss", "longconv", "spacetime"]
)
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padded_batch_equals_items(layer, pooling):
    model = SequenceModel(small(layer, pooling=pooling), CLASSIFY).eval()
    x = inputs(CLASSIFY, 3, 12)
    lengths = torch.tensor([12, 7, 3])
    with torch.no_grad():
        batch = model(x, lengths=lengths)
        items = torch.cat([model(x[i : i + 1, : int(n)]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batch, items, atol=1e-5, rtol=1e-5)


def test_tied_embeddings_and_greedy_generation_equals_repeated_argmax():
    model = SequenceModel(small("mamba"), TOKENS).eval()
    assert model.head.weight is model.encoder.weight
    prompt = inputs(TOKENS, 2, 5)
    got = model.generate(prompt, 6, greedy=True)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):  # the slow twin: a full forward per new token
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, ids)


def test_sampling_is_reproducible_and_respects_top_k():
    model = SequenceModel(small("s4d"), TOKENS).eval()
    prompt = inputs(TOKENS, 1, 4)
    a = model.generate(prompt, 8, top_k=1, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 8, greedy=True)
    assert torch.equal(a, b)  # top-1 sampling is greedy


def test_bad_configs_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="layer"):
        ModelConfig(layer="rnn")
    with pytest.raises(ValueError, match="bidirectional"):
        SequenceModel(small("s4d", bidirectional=True), TOKENS)
    with pytest.raises(ValueError, match="bidirectional"):
        ModelConfig(layer="mamba", bidirectional=True)
    model = SequenceModel(small("s4d"), CLASSIFY)
    with pytest.raises(ValueError, match="causal per-step"):
        model.initial_state(1)
    with pytest.raises(ValueError, match=r"\(batch, length, 1\)"):
        model(torch.randn(2, 5, 3))
    lm = SequenceModel(small("s4d"), TOKENS)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        lm(torch.full((1, 3), 11))
    with pytest.raises(TypeError, match="int64"):
        lm(torch.randn(1, 3))
    with pytest.raises(ValueError, match="exactly one"):
        IOSpec("tokens", 3, vocab_size=3, d_input=2)


def test_bidirectional_model_sees_the_future_and_causal_does_not():
    x = inputs(CLASSIFY, 1, 10)
    y = x.clone()
    y[:, -1] += 1.0
    for bidirectional, changes_first in ((False, False), (True, True)):
        model = SequenceModel(small("s4d", bidirectional=bidirectional), CLASSIFY).eval()
        h = [model.norm_f(model.blocks[0](model.encoder(v))[0]) for v in (x, y)]
        assert bool((h[0][:, 0] - h[1][:, 0]).abs().max() > 1e-6) == changes_first


def test_tied_language_model_starts_near_the_uniform_loss():
    io = IOSpec("tokens", 200, vocab_size=200, max_length=32, causal=True)
    model = SequenceModel(ModelConfig(layer="s4d", d_model=128, n_layers=2, d_state=8), io)
    x, y = inputs(io, 4, 16, seed=0), inputs(io, 4, 16, seed=1)  # targets unrelated to x
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert abs(loss.item() - math.log(200)) < 0.5  # log(vocab) = 5.3
