"""MambaLM: Hugging Face checkpoint import (logits match), decoding, generation."""

from __future__ import annotations

import json

import pytest
import torch

from ssmkit.models import MambaConfig, MambaLM, load_pretrained
from ssmkit.testing import assert_close

transformers = pytest.importorskip("transformers")


def hf_checkpoint(tmp_path, **overrides):
    cfg = dict(
        vocab_size=97, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
        conv_kernel=4, use_mambapy=False,
    )  # fmt: skip
    cfg.update(overrides)
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(**cfg)).eval()
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_bias": True, "tie_word_embeddings": False, "time_step_rank": 5}],
)
def test_load_pretrained_matches_transformers_logits(tmp_path, overrides):
    hf = hf_checkpoint(tmp_path, **overrides)
    ours = load_pretrained(tmp_path)
    ids = torch.randint(0, 97, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got, _ = ours(ids)
    assert (got - want).abs().max() < 1e-4


def test_decoding_step_by_step_equals_forward(tmp_path):
    hf_checkpoint(tmp_path)
    model = load_pretrained(tmp_path, backend="ref")
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(ids)
        _, state = model(ids[:, :4], return_state=True)  # chunked prefill, then steps
        for t in range(4, 11):
            logits, state = model.step(ids[:, t], state)
            assert_close(logits, full[:, t], rtol=1e-4, atol=1e-4)


def test_generate_greedy_matches_argmax_rollout_and_stops_at_eos():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=31, d_state=4)).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = model.generate(prompt, max_new_tokens=6, greedy=True)
    assert out.shape == (2, 9)
    ids = prompt
    for _ in range(6):  # the definition: re-run the whole sequence, take the argmax
        with torch.no_grad():
            nxt = model(ids)[0][:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    assert torch.equal(out, ids)
    eos = int(out[0, 4])
    stopped = model.generate(prompt, max_new_tokens=6, greedy=True, eos_token_id=eos)
    assert int(stopped[0, 4]) == eos and bool((stopped[0, 4:] == eos).all())
    top1 = model.generate(prompt, max_new_tokens=6, top_k=1, generator=torch.Generator())
    assert torch.equal(top1, out)
    nucleus = model.generate(prompt, max_new_tokens=6, top_p=1e-6, generator=torch.Generator())
    assert torch.equal(nucleus, out)
    g = torch.Generator().manual_seed(3)
    sampled = model.generate(prompt, max_new_tokens=20, temperature=1.5, generator=g)
    assert sampled.shape == (2, 23) and int(sampled.max()) < 31


def test_state_size_does_not_grow_with_decoding():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=31, d_state=4)).eval()
    state = model.initial_state(1)
    sizes = [sum(t.numel() for s in state for t in s)]
    token = torch.tensor([1])
    with torch.no_grad():
        for _ in range(50):
            logits, state = model.step(token, state)
            token = logits.argmax(-1)
    sizes.append(sum(t.numel() for s in state for t in s))
    assert sizes[0] == sizes[1]


def test_bad_checkpoints_and_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        load_pretrained(tmp_path)
    hf_checkpoint(tmp_path / "m")
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        load_pretrained(tmp_path / "m")
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=31, d_state=4))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 31\)"):
        model(torch.tensor([[3, 31]]))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.tensor([[1]]), 2, temperature=0.0)


def test_load_pretrained_mamba2_matches_transformers_logits(tmp_path):
    cfg = transformers.Mamba2Config(
        vocab_size=97, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
        conv_kernel=4, head_dim=8, num_heads=8, n_groups=2, chunk_size=16,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.cfg.version == 2
    ids = torch.randint(0, 97, (2, 45), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got, state = ours(ids[:, :30], return_state=True)
        assert (got - want[:, :30]).abs().max() < 1e-4
        for t in range(30, 45):  # decode the rest one token at a time
            logits, state = ours.step(ids[:, t], state)
            assert (logits - want[:, t]).abs().max() < 1e-4
