"""The fused CPU decoder (MambaDecoder) against its slow twin, MambaLM.step."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers import fused_step
from ssmkit.models import MambaConfig, MambaLM
from ssmkit.models.decoding import MambaDecoder

pytestmark = pytest.mark.skipif(not fused_step.available(), reason="needs numba (extra 'fast')")

V = 50
CONFIGS = {
    "v1": {"version": 1, "d_state": 8},
    "v1 bc_param, no conv bias": {"version": 1, "d_state": 4, "bc_param": "positive",
                                   "conv_bias": False, "dt_rank": 3},
    "v2": {"version": 2, "d_state": 8, "headdim": 16},
    "v2 groups, dt_limit": {"version": 2, "d_state": 4, "headdim": 8, "ngroups": 2,
                            "dt_limit": (0.05, 0.2), "d_conv": 3},
}  # fmt: skip


def make(name: str, dtype: torch.dtype = torch.float32) -> MambaLM:
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=32, n_layer=2, vocab_size=V, **CONFIGS[name])
    model = MambaLM(cfg, dtype=dtype).eval()
    with torch.no_grad():  # non-trivial SSM parameters: D != 1, varied A
        for block in model.backbone.layers:
            block.mixer.D.uniform_(-1, 1)
            block.mixer.A_log.add_(torch.rand_like(block.mixer.A_log))
    return model


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("prompt_len", [1, 7])
def test_fused_greedy_rollout_matches_step(name, prompt_len):
    """>= 20 greedy tokens: same tokens, logits within 1e-5, same final states."""
    model = make(name)
    ids = torch.randint(0, V, (3, prompt_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, state = model(ids, return_state=True)
        fused = MambaDecoder(model, state)
        ref_tok = fused_tok = ids[:, -1]
        for _ in range(24):
            ref_logits, state = model.step(ref_tok, state)
            fused_logits = fused.step(fused_tok)
            torch.testing.assert_close(fused_logits, ref_logits, atol=1e-5, rtol=1e-5)
            ref_tok, fused_tok = ref_logits.argmax(-1), fused_logits.argmax(-1)
            assert torch.equal(fused_tok, ref_tok)
    for ours, theirs in zip(fused.state(), state, strict=True):
        assert type(ours) is type(theirs)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["v1", "v2 groups, dt_limit"])
def test_generate_fused_equals_step_on_a_ragged_batch_and_keeps_the_prefix(name):
    model = make(name)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, V, (3, 63), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :56], mask[1, :62] = 0, 0  # prompts of 7, 1 and 63 tokens, left-padded
    prefix = model.prefill(ids, attention_mask=mask)
    before = [t.clone() for s in prefix.state for t in s]
    outs = {
        mode: model.generate(None, 21, greedy=True, prefix=prefix, decode=mode)
        for mode in ("step", "fused", "auto")
    }
    assert torch.equal(outs["fused"], outs["step"]) and torch.equal(outs["auto"], outs["step"])
    after = [t for s in prefix.state for t in s]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # not in place


def test_fused_decoder_handles_huge_and_tiny_activations_without_nan():
    """silu of very negative pre-activations needs exp(large) = inf (no fastmath ninf)."""
    model = make("v1")
    state = model.initial_state(1)
    with torch.no_grad():
        state[0].conv.fill_(1e4)
        state[1].conv.fill_(-1e4)
        ref, _ = model.step(torch.tensor([3]), state)
        ours = MambaDecoder(model, state).step(torch.tensor([3]))
    assert bool(torch.isfinite(ours).all())
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_auto_falls_back_to_step_where_the_fused_decoder_cannot_run():
    model = make("v2", dtype=torch.float64)
    out = model.generate(torch.tensor([[1, 2]]), 5, greedy=True)  # auto: the layers' step
    assert torch.equal(out, model.generate(torch.tensor([[1, 2]]), 5, greedy=True, decode="step"))
    with pytest.raises(ValueError, match=r"decode='fused' is not available: .*float32 CPU model"):
        model.generate(torch.tensor([[1, 2]]), 5, decode="fused")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.generate(torch.tensor([[1]]), 3, decode="fast"),
         r"unknown decode 'fast'; expected one of .*'fused'"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, precision="fp16"),
         r"unknown precision 'fp16'; expected one of .*'bf16'"),
        (lambda m: m.generate(torch.tensor([[1]]), 3, precision="bf16", decode="step"),
         "precision='bf16' needs a model with a fused decoder"),
        (lambda m: MambaDecoder(m, m.initial_state(1)[:1]),
         "state must be a list of 2 per-layer states, got list of length 1"),
        (lambda m: m.generate(torch.tensor([[1.0, 2.0]]), 3), "must be an integer tensor"),
        (lambda m: m.generate(torch.tensor([[-1, 2]]), 3), r"token ids must lie in \[0, 50\)"),
    ],
)  # fmt: skip
def test_bad_decoding_arguments_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call(make("v1"))


def test_fused_state_shape_error_names_the_field():
    model = make("v1")
    state = model.initial_state(2)
    state[1] = state[1]._replace(ssm=torch.zeros(2, 64, 3))
    with pytest.raises(ValueError, match=r"state.ssm must have shape \(2, 64, 8\)"):
        MambaDecoder(model, state)
