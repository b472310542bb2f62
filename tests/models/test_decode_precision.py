"""Decoding with bfloat16 / int8 weights, and torch.compile of the decode step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmkit.layers import fused_step
from ssmkit.models import MambaConfig, MambaLM
from ssmkit.models.decoding import MambaDecoder
from ssmkit.models.quantize import BF16Linear, Int8Linear, decode_linear, quantize_int8

V = 50
needs_numba = pytest.mark.skipif(not fused_step.available(), reason="needs numba (extra 'fast')")


def make(version: int) -> MambaLM:
    torch.manual_seed(0)
    extra = {"headdim": 16} if version == 2 else {}
    cfg = MambaConfig(d_model=32, n_layer=2, vocab_size=V, version=version, d_state=8, **extra)
    return MambaLM(cfg).eval()


def test_int8_quantisation_error_is_at_most_half_a_step_per_entry():
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    w[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (24,)
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())
    assert bool((q[3] == 0).all())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("k", [40, 64])
def test_int8_linear_packed_kernel_equals_dequantised_form(bias, k):
    """k = 64 takes the packed kernel; k = 40 (not a multiple of 16, where the kernel is
    wrong on AVX-512 CPUs) the dequantised form."""
    lin = nn.Linear(k, 24, bias=bias)
    x = torch.randn(3, k)
    packed, plain = Int8Linear(lin.weight, lin.bias), Int8Linear(lin.weight, lin.bias, False)
    assert packed.packed == (k % 16 == 0 and hasattr(torch, "_weight_int8pack_mm"))
    ref = plain(x)  # float32 activations and dequantised weights
    torch.testing.assert_close(ref, x @ plain.dequantized().T + (lin.bias if bias else 0))
    # the packed kernel rounds activations and scales to bfloat16: a few bf16 ulps
    tol = 2e-2 * float(ref.abs().max())
    torch.testing.assert_close(packed(x), ref, atol=tol, rtol=0)
    assert float((ref - lin(x)).abs().max()) < 0.05  # and both are near the float32 layer


def test_bf16_linear_is_near_float32_and_decode_linear_shares_fp32_weights():
    lin = nn.Linear(40, 24)
    x = torch.randn(3, 40)
    y = BF16Linear(lin.weight, lin.bias)(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, lin(x), atol=3e-2, rtol=2e-2)
    assert decode_linear(lin, "fp32").weight.data_ptr() == lin.weight.data_ptr()
    with pytest.raises(ValueError, match=r"unknown precision 'int4'; expected one of"):
        decode_linear(lin, "int4")


@needs_numba
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_decoders_track_float32_and_keep_ssm_state_float32(version, precision):
    model = make(version)
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, state = model(ids, return_state=True)
        fp32, low = MambaDecoder(model, state), MambaDecoder(model, state, precision)
        token, worst, scale = ids[:, -1], 0.0, 0.0
        for _ in range(20):  # teacher-forced on the float32 greedy path
            ref = fp32.step(token)
            worst = max(worst, float((low.step(token) - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
            token = ref.argmax(-1)
    assert 0 < worst < 0.05 * scale  # weight rounding shows, but stays small
    assert all(s.ssm.dtype == torch.float32 and s.conv.dtype == torch.float32 for s in low.state())
    assert model.lm_head.weight.dtype == torch.float32  # the model itself is untouched


@needs_numba
def test_generate_with_precision_option_runs_and_prompt_stays():
    model = make(1)
    ids = torch.tensor([[1, 2, 3]])
    out = model.generate(ids, 6, greedy=True, precision="int8")
    assert out.shape == (1, 9) and torch.equal(out[:, :3], ids)


@pytest.mark.slow  # inductor compiles C++ for each version: tens of seconds
@pytest.mark.parametrize("version", [1, 2])
def test_compiled_decode_step_has_no_graph_break_and_matches_eager(version):
    torch._dynamo.reset()
    model = make(version)
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, state = model(ids, return_state=True)
        compiled = torch.compile(model.decode_step, fullgraph=True)  # raises on a graph break
        token = ids[:, -1]
        for _ in range(3):
            ref, ref_state = model.decode_step(token, state)
            got, state = compiled(token, state)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            for a, b in zip(state, ref_state, strict=True):
                torch.testing.assert_close(a.ssm, b.ssm, atol=1e-5, rtol=1e-5)
            token = ref.argmax(-1)
        out = model.generate(ids, 4, greedy=True, decode="compile")
    assert torch.equal(out, model.generate(ids, 4, greedy=True, decode="step"))
