"""Batched ragged generation, per-row stopping, logits processors, streaming, prefix caching."""

from __future__ import annotations

import pytest
import torch

from ssmkit.models import MambaConfig, MambaLM
from ssmkit.models.generation import PromptState
from ssmkit.models.sequence import LAYERS, IOSpec, ModelConfig, SequenceModel

V = 13
KINDS = (*LAYERS, "lm1", "lm2")  # every layer with a step mode, and both Mamba LMs


def make(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind in ("lm1", "lm2"):
        extra = {"version": 2, "headdim": 8, "chunk_size": 4} if kind == "lm2" else {}
        return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=V, d_state=4, **extra)).eval()
    cfg = ModelConfig(layer=kind, d_model=8, n_layers=2, d_state=4, headdim=4, chunk_size=4)
    return SequenceModel(
        cfg, IOSpec(head="tokens", n_outputs=V, vocab_size=V, max_length=64)
    ).eval()


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    l = max(map(len, prompts))
    ids = torch.tensor([[pad] * (l - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (l - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def prompts_1_7_63() -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in (7, 1, 63)]


def alone(model, prompt: list[int], n: int, **kw) -> torch.Tensor:
    return model.generate(torch.tensor([prompt]), n, greedy=True, **kw)[0, len(prompt) :]


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_greedy_rows_equal_each_prompt_alone(kind):
    model = make(kind)
    prompts = prompts_1_7_63()
    want = [alone(model, p, 6) for p in prompts]
    for pad in (0, 9):  # what stands in the padding must not matter
        ids, mask = left_pad(prompts, pad)
        out = model.generate(ids, 6, greedy=True, attention_mask=mask)
        assert torch.equal(out[:, : ids.shape[1]], ids)
        for i in range(len(prompts)):
            assert torch.equal(out[i, ids.shape[1] :], want[i]), (kind, pad, i)


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_state_continues_like_the_full_prompt(kind):
    model = make(kind)
    head, tails = [3, 1, 4, 1, 5], [[9, 2, 6], [5], [3, 5, 8, 9, 7, 9, 3]]
    prefix = model.prefill(torch.tensor([head]))
    for _ in range(2):  # continuing twice: the saved state is not consumed
        cont = model.generate(torch.tensor([tails[0]]), 5, greedy=True, prefix=prefix)
        assert torch.equal(cont[0, len(tails[0]) :], alone(model, head + tails[0], 5))
    # no continuation tokens: decode straight from the prefix
    assert torch.equal(
        model.generate(None, 5, greedy=True, prefix=prefix)[0], alone(model, head, 5)
    )
    # fork one prefix into a ragged batch of continuations
    ids, mask = left_pad(tails, pad=4)
    out = model.generate(ids, 5, greedy=True, attention_mask=mask, prefix=prefix)
    for i, tail in enumerate(tails):
        assert torch.equal(out[i, ids.shape[1] :], alone(model, head + tail, 5)), (kind, i)


def test_rows_stop_independently_at_eos():
    model = make("lm1")
    prompts = prompts_1_7_63()
    free = [alone(model, p, 8) for p in prompts]
    eos = int(free[0][2])  # row 0 produces it at its third new token
    ids, mask = left_pad(prompts)
    out = model.generate(ids, 8, greedy=True, attention_mask=mask, eos_token_id=eos)
    new = out[:, ids.shape[1] :]
    for i, f in enumerate(free):
        hits = (f == eos).nonzero().flatten().tolist()
        end = hits[0] + 1 if hits else len(f)
        assert torch.equal(new[i, :end], f[:end])  # the same tokens up to its own EOS
        assert bool((new[i, end:] == eos).all())  # then padding with EOS
    assert new.shape[1] == 8 or all((f == eos).any() for f in free)


def test_stop_sequences_min_new_tokens_and_pad_token():
    model = make("lm1")
    prompt = [2, 7, 1]
    free = alone(model, prompt, 8)
    stop = [int(free[2]), int(free[3])]
    out = model.generate(torch.tensor([prompt]), 8, greedy=True, stop=[stop], pad_token_id=0)
    new = out[0, 3:]
    first = next(i for i in range(1, 8) if free[i - 1 : i + 1].tolist() == stop) + 1
    assert torch.equal(new, free[:first])  # stops after the sequence, kept in the output
    eos = int(free[0])
    suppressed = model.generate(torch.tensor([prompt]), 6, greedy=True, eos_token_id=eos,
                                min_new_tokens=3)  # fmt: skip
    assert bool((suppressed[0, 3:6] != eos).all())
    immediate = model.generate(torch.tensor([prompt]), 6, greedy=True, eos_token_id=eos)
    assert immediate.shape == (1, 4) and int(immediate[0, 3]) == eos


def test_repetition_penalty_matches_the_rollout_definition():
    model = make("lm2")
    ids, p = torch.tensor([[1, 2, 3, 1, 2]]), 1.7
    out = model.generate(ids, 7, greedy=True, repetition_penalty=p)
    seq = ids
    for _ in range(7):  # the definition: rerun the sequence, penalise every token seen so far
        with torch.no_grad():
            logits = model(seq)[0][0, -1]
        seen = torch.zeros(V, dtype=torch.bool)
        seen[seq[0]] = True
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
        seq = torch.cat([seq, logits.argmax().view(1, 1)], 1)
    assert torch.equal(out, seq)
    assert not torch.equal(out, model.generate(ids, 7, greedy=True))  # the penalty did act


def test_sampling_per_row_is_seeded_and_top_k_1_is_greedy():
    model = make("mamba")
    ids, mask = left_pad(prompts_1_7_63())
    a = model.generate(ids, 6, attention_mask=mask, generator=torch.Generator().manual_seed(1))
    b = model.generate(ids, 6, attention_mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    greedy = model.generate(ids, 6, greedy=True, attention_mask=mask)
    top1 = model.generate(ids, 6, top_k=1, attention_mask=mask, generator=torch.Generator())
    assert torch.equal(top1, greedy)


def test_streaming_callback_and_iterator_give_the_tokens_in_order():
    model = make("s4d")
    ids, mask = left_pad([[1, 2, 3], [4]])
    seen: list[torch.Tensor] = []
    out = model.generate(ids, 5, greedy=True, attention_mask=mask, streamer=seen.append)
    assert torch.equal(torch.stack(seen, 1), out[:, 3:])
    streamed = list(model.stream(ids, 5, greedy=True, attention_mask=mask))
    assert torch.equal(torch.stack(streamed, 1), out[:, 3:])


def test_prefix_state_expand_and_batch_mismatch():
    model = make("lru")
    prefix = model.prefill(torch.tensor([[1, 2], [3, 4]]))
    assert isinstance(prefix, PromptState) and prefix.batch == 2
    with pytest.raises(ValueError, match="prefix has batch 2; it must be 1 or equal"):
        model.generate(torch.tensor([[1], [2], [3]]), 2, greedy=True, prefix=prefix)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.generate(torch.zeros(2, 0, dtype=torch.long), 3), "input_ids is empty"),
        (lambda m: m.generate(torch.tensor([[1, 2]]), 3, attention_mask=torch.ones(1, 3)),
         r"attention_mask must have the shape of input_ids \(1, 2\), got \(1, 3\)"),
        (lambda m: m.generate(torch.tensor([[1, 2]]), 3, attention_mask=torch.tensor([[1, 2]])),
         "only 0 .padding. and 1"),
        (lambda m: m.generate(torch.tensor([[1, 2]]), 3, attention_mask=torch.tensor([[1, 0]])),
         "must be left-padded"),
        (lambda m: m.generate(torch.tensor([[1, 2], [3, 4]]), 3,
                              attention_mask=torch.tensor([[1, 1], [0, 0]])),
         r"empty prompt: rows \[1\]"),
        (lambda m: m.generate(torch.tensor([[1, V]]), 3), rf"token ids must lie in \[0, {V}\)"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, stop=[[2]]), "need pad_token_id or eos"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, stop=[[]], eos_token_id=1), "at least one"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, stop=torch.tensor([1])), "list of token-id"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, min_new_tokens=4), r"min_new_tokens \(4\)"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, repetition_penalty=0.0),
         "repetition_penalty must be > 0"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, eos_token_id=V),
         rf"eos_token_id must be a token id in \[0, {V}\), got {V}"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, stop=[[1, -1]], eos_token_id=0),
         r"stop\[0\] must be a token id"),
        (lambda m: m.generate(None, 3), "give input_ids, a prefix"),
        (lambda m: m.generate(torch.tensor([[1]]), -1), "max_new_tokens must be an int >= 0"),
    ],
)  # fmt: skip
def test_bad_generation_arguments_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call(make("lm1"))
