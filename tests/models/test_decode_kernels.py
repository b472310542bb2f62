"""The float32 decode kernels (numba GEMV, vectorised exp) against their twins, and generate's
lean per-token path against its general one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers import fused_step
from ssmkit.models import MambaConfig, MambaLM
from ssmkit.models.decoding import GemvLinear

pytestmark = pytest.mark.skipif(not fused_step.available(), reason="needs numba (extra 'fast')")

V = 60


def make(version: int) -> MambaLM:
    torch.manual_seed(0)
    extra = {"headdim": 16} if version == 2 else {}
    cfg = MambaConfig(d_model=32, n_layer=2, vocab_size=V, version=version, d_state=8, **extra)
    model = MambaLM(cfg).eval()
    with torch.no_grad():  # non-trivial SSM parameters: D != 1, varied A
        for block in model.backbone.layers:
            block.mixer.D.uniform_(-1, 1)
            block.mixer.A_log.add_(torch.rand_like(block.mixer.A_log))
    return model


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("b", "m", "k"), [(1, 1, 1), (1, 7, 63), (3, 63, 7), (2, 301, 129), (9, 17, 5)]
)
def test_gemv_equals_linear(b, m, k, bias):
    g = torch.Generator().manual_seed(m * k)
    linear = nn.Linear(k, m, bias=bias)
    x = torch.randn(b, k, generator=g)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(m, k, generator=g))
        expected = F.linear(x, linear.weight, linear.bias)
    gemv = GemvLinear(linear)
    assert gemv.weight.data_ptr() == linear.weight.data_ptr()  # shared, not copied
    torch.testing.assert_close(gemv(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gemv(x.t().contiguous().t()), expected, atol=1e-5, rtol=1e-5)


def test_gemv_takes_a_transposed_weight_through_a_contiguous_copy():
    linear = nn.Linear(5, 9, bias=False)
    with torch.no_grad():
        linear.weight = nn.Parameter(torch.randn(5, 9).t())  # (9, 5), not contiguous
    x = torch.randn(2, 5)
    torch.testing.assert_close(GemvLinear(linear)(x), F.linear(x, linear.weight.detach()))


def test_vectorised_exp_is_within_a_few_ulp_and_keeps_the_special_values():
    x = torch.cat([torch.linspace(-87, 88, 20001), -torch.rand(5000) * 20]).float()
    out = np.empty(x.numel(), np.float32)
    fused_step.exp_into(x.numpy(), out, np.empty(x.numel(), np.int32))
    ref = torch.exp(x.double())
    torch.testing.assert_close(torch.from_numpy(out).double(), ref, rtol=1e-6, atol=0)
    special = np.array([np.nan, -np.inf, np.inf, -1e3, 1e3, 0.0, -100.0], np.float32)
    got = np.empty_like(special)
    fused_step.exp_into(special, got, np.empty(special.size, np.int32))
    assert math.isnan(got[0])
    assert got[1:].tolist() == [0.0, math.inf, 0.0, math.inf, 1.0, 0.0]


@pytest.mark.parametrize("version", [1, 2])
def test_sampled_generate_fused_equals_step_with_a_fixed_seed(version):
    model = make(version)
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(3))
    outs = [
        model.generate(ids, 24, temperature=0.8, top_k=20, top_p=0.9, decode=mode,
                       generator=torch.Generator().manual_seed(7))
        for mode in ("step", "fused")
    ]  # fmt: skip
    assert outs[0].shape == (2, 29)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("version", [1, 2])
def test_lean_greedy_path_equals_the_path_that_tracks_finished_rows(version):
    """No EOS (nothing can finish: no per-token bookkeeping) vs an EOS that never comes."""
    model = make(version)
    ids = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(4))
    lean = model.generate(ids, 21, greedy=True)
    unused = next(t for t in range(V) if not bool((lean[:, 4:] == t).any()))
    tracked = model.generate(ids, 21, greedy=True, eos_token_id=unused)
    reference = model.generate(ids, 21, greedy=True, decode="step")
    assert torch.equal(lean, tracked) and torch.equal(lean, reference)
    assert lean.dtype == torch.long and lean.is_contiguous()


def test_generate_output_when_rows_stop_early_or_no_token_is_asked():
    model = make(1)
    ids = torch.randint(0, V, (1, 3), generator=torch.Generator().manual_seed(5))
    free = model.generate(ids, 12, greedy=True)
    eos = int(free[0, 6])  # stops at the first occurrence of this token
    first = 3 + int((free[0, 3:] == eos).nonzero()[0, 0])
    stopped = model.generate(ids, 12, greedy=True, eos_token_id=eos)
    assert torch.equal(stopped, free[:, : first + 1]) and stopped.is_contiguous()
    none = model.generate(ids, 0)
    assert torch.equal(none, ids) and none.data_ptr() != ids.data_ptr()
    prefix = model.prefill(ids)
    assert model.generate(None, 0, prefix=prefix).shape == (1, 0)
    assert torch.equal(model.generate(None, 12, greedy=True, prefix=prefix), free[:, 3:])
