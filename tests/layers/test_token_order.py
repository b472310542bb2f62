"""SoftSort token reordering: the permutation, its limit, padding, and the Mamba option."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.mamba import Mamba
from ssmkit.layers.token_order import hard_sort, soft_sort
from ssmkit.models.mamba_lm import MambaConfig, MambaLM
from ssmkit.testing import assert_close, randn

F64 = torch.float64


def test_rows_sum_to_one_and_definition():
    s = randn(3, 7, seed=0)
    P = soft_sort(s, tau=1.0)
    assert P.shape == (3, 7, 7) and bool((P > 0).all())
    assert_close(P.sum(-1), torch.ones(3, 7, dtype=F64))
    ranked = s.sort(-1).values
    i, j = 2, 5
    expected = torch.softmax(-(ranked[1, i] - s[1]).abs(), dim=-1)[j]
    assert_close(P[1, i, j], expected)


@pytest.mark.parametrize("descending", [False, True])
def test_low_temperature_approaches_the_hard_sort(descending):
    s = torch.randperm(9, generator=torch.Generator().manual_seed(2)).double().reshape(1, 9)
    H = hard_sort(s, descending=descending)
    errs = [float((soft_sort(s, tau, descending) - H).abs().max()) for tau in (1.0, 0.3, 0.05)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8
    x = randn(1, 9, 4, seed=3)
    order = s[0].argsort(descending=descending)
    assert_close(H @ x, x[:, order])


def test_gradients_reach_the_scores():
    s = randn(2, 5, seed=4, requires_grad=True)
    x = randn(2, 5, 3, seed=5)
    (soft_sort(s) @ x).square().sum().backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_padding_stays_out_of_the_sort():
    s = randn(2, 6, seed=6)
    lengths = torch.tensor([6, 3])
    P = soft_sort(s, lengths=lengths)
    assert_close(P.sum(-1), torch.ones(2, 6, dtype=F64))
    assert float(P[1, :3, 3:].abs().max()) == 0.0  # valid rows never read padding
    assert_close(P[1, 3:, 3:], torch.eye(3, dtype=F64))  # padded rows are identity rows
    assert_close(P[1, :3, :3], soft_sort(s[1:, :3])[0])
    H = hard_sort(s, lengths=lengths)
    assert_close(H[1, :3, :3], hard_sort(s[1:, :3])[0])
    assert_close(H[1, 3:, 3:], torch.eye(3, dtype=F64))


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        soft_sort(torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        soft_sort(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="tau"):
        soft_sort(torch.zeros(1, 3), tau=0.0)
    with pytest.raises(ValueError, match="lengths"):
        soft_sort(torch.zeros(1, 3), lengths=torch.tensor([4]))


# --------------------------------------------------------------------------- the Mamba option
def reorder_layer(seed=0):
    torch.manual_seed(seed)
    return Mamba(8, d_state=4, d_conv=3, backend="ref", reorder=True, causal=False).double()


def test_causal_models_refuse_reordering():
    msg = "token reordering breaks causality; use it only in non-causal"
    with pytest.raises(ValueError, match=msg):
        Mamba(8, reorder=True)
    with pytest.raises(ValueError, match=msg):
        MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=5, reorder=True))
    with pytest.raises(TypeError, match="reorder must be a bool"):
        Mamba(8, reorder=1, causal=False)


def test_streaming_is_refused():
    m = reorder_layer()
    x = randn(1, 5, 8)
    with pytest.raises(ValueError, match="step"):
        m.step(x[:, 0], m.initial_state(1))
    with pytest.raises(ValueError, match="state"):
        m(x, state=m.initial_state(1))
    with pytest.raises(ValueError, match="return_state"):
        m(x, return_state=True)


def test_gradients_reach_K_and_the_layer_reorders():
    m = reorder_layer()
    x = randn(2, 7, 8, seed=1)
    y, _ = m(x)
    y.square().sum().backward()
    assert m.K.grad is not None and float(m.K.grad.abs().sum()) > 0
    # a hard permutation: scan in importance order, then back to the input order
    with torch.no_grad():
        xs = torch.nn.functional.silu(m.conv1d(m.in_proj(x).chunk(2, -1)[0])[0])
        P = m.soft_permutation(xs)
    assert P.shape == (2, 7, 7)
    assert_close(P.sum(-1), torch.ones(2, 7, dtype=F64))


def test_reordered_layer_handles_padding_like_single_items():
    m = reorder_layer(3)
    x = randn(2, 9, 8, seed=2)
    lengths = torch.tensor([9, 4])
    padded = x.clone()
    padded[1, 4:] = 30.0
    y, _ = m(padded, lengths=lengths)
    y1, _ = m(x[1:, :4])
    assert_close(y[1:, :4], y1)
    assert float(y[1, 4:].detach().abs().max()) == 0.0


def test_reorder_with_hard_sort_equals_scanning_the_sorted_sequence():
    """With a near-hard permutation the layer = scan of the sorted tokens, mapped back."""
    m = reorder_layer(4)
    with torch.no_grad():
        m.K.mul_(1e4)  # scores far apart: SoftSort at tau = 1 is a permutation
    x = randn(1, 6, 8, seed=3)
    y, _ = m(x)
    xs, z = m.in_proj(x).chunk(2, -1)
    xs = torch.nn.functional.silu(m.conv1d(xs)[0])
    H = m.soft_permutation(xs).round()
    assert_close(H.sum(-1), torch.ones(1, 6, dtype=F64))
    delta, B, C = m._selection(H @ xs)
    y_sorted, _ = m._scan(H @ xs, delta, B, C, H @ z, None)
    assert_close(y, m.out_proj(H.transpose(-1, -2) @ y_sorted), rtol=1e-6, atol=1e-8)
