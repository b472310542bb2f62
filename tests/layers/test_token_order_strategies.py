"""The token-dynamics options of Mamba as strategies: the B/C selection object and the
ReorderedMamba subclass, with the parameter names and outputs of the former flag code."""

from __future__ import annotations

import copy

import pytest
import torch

from ssmkit.layers.mamba import Mamba
from ssmkit.layers.selective_params import RawBC, SignedBC, bc_selection, x_proj_weight
from ssmkit.layers.token_order import ReorderedMamba
from ssmkit.testing import assert_close, randn

F64 = torch.float64
NAMES = [
    "A_log", "D", "conv1d.bias", "conv1d.weight", "dt_proj.bias", "dt_proj.weight",
    "in_proj.weight", "out_proj.weight", "x_proj.weight",
]  # fmt: skip

# Recorded with the code before the strategies (git 9eff9b9, flags inside Mamba): for
# torch.manual_seed(0); Mamba(8, d_state=4, d_conv=3, backend="ref", **options).double() on
# randn(2, 7, 8, seed=11) with lengths (7, 5): y.sum(), y.square().sum(), y[1, 4, 3], y[0, 0, 0].
# The initialisation draws its random numbers in the same order, so the same seed gives the
# same parameters: equal numbers mean the old state dicts load and compute the same function.
RECORDED = [
    (
        {"bc_param": "none"},
        [0.35964256592983, 0.11495870953977, -0.14452808504086, -0.02435322458055],
    ),
    (
        {"bc_param": "positive"},
        [0.36208099098923, 0.11626261725797, -0.14508581008376, -0.02429855289613],
    ),
    (
        {"bc_param": "negative"},
        [0.35427819130222, 0.11380017969246, -0.14393431341982, -0.02441556534623],
    ),
    (
        {"bc_param": "mixed"},
        [0.36297862724412, 0.11587007951699, -0.14499781658824, -0.02438618336154],
    ),
    (
        {"reorder": True, "causal": False},
        [0.06472614810231, 0.00231966417588, 0.00271104639314, -0.00085284586507],
    ),
    (
        {"bc_param": "positive", "reorder": True, "causal": False},
        [0.06472019974938, 0.00234178778019, 0.00271847548433, -0.00087712348223],
    ),
]


def build(options: dict, seed: int = 0) -> Mamba:
    torch.manual_seed(seed)
    return Mamba(8, d_state=4, d_conv=3, backend="ref", **options).double()


@pytest.mark.parametrize(("options", "numbers"), RECORDED)
def test_names_and_outputs_match_the_flag_code(options, numbers):
    m = build(options)
    names = sorted(NAMES + (["K"] if options.get("reorder") else []))
    assert sorted(m.state_dict()) == names
    x = randn(2, 7, 8, seed=11)
    y, _ = m(x, lengths=torch.tensor([7, 5]))
    got = torch.stack([y.sum(), y.square().sum(), y[1, 4, 3], y[0, 0, 0]]).detach()
    assert_close(got, torch.tensor(numbers, dtype=F64), rtol=1e-9, atol=1e-12)
    # a state dict of one build loads into a fresh, differently seeded one: same outputs
    other = build(options, seed=5)
    assert not torch.equal(other(x)[0], m(x)[0])
    other.load_state_dict(m.state_dict())
    assert_close(other(x)[0], m(x)[0], rtol=0, atol=0)


def test_reorder_builds_the_subclass_and_the_plain_mixer_has_no_K():
    r = build({"reorder": True, "causal": False})
    assert type(r) is ReorderedMamba and r.reorder and isinstance(r, Mamba)
    plain = build({})
    assert type(plain) is Mamba and not plain.reorder and not hasattr(plain, "K")
    torch.manual_seed(0)
    direct = ReorderedMamba(8, d_state=4, d_conv=3, backend="ref", causal=False).double()
    x = randn(1, 6, 8, seed=2)
    assert_close(direct(x)[0], r(x)[0], rtol=0, atol=0)  # same draws, same layer
    # positional reorder (13th argument) picks the subclass too
    torch.manual_seed(0)
    pos = Mamba(8, 4, 3, 2, "auto", 1e-3, 1e-1, 1e-4, False, True, "ref", "none", True, False)
    assert type(pos) is ReorderedMamba
    copied = copy.deepcopy(r)  # pickling-style reconstruction keeps the class and the values
    assert type(copied) is ReorderedMamba
    assert_close(copied(x)[0], r(x)[0], rtol=0, atol=0)


def test_reorder_arguments_are_checked():
    with pytest.raises(ValueError, match="token reordering breaks causality"):
        ReorderedMamba(8)
    with pytest.raises(
        ValueError, match="ReorderedMamba always has reorder=True, got reorder=False"
    ):
        ReorderedMamba(8, reorder=False, causal=False)
    with pytest.raises(TypeError, match="reorder must be a bool, got str"):
        Mamba(8, reorder="yes", causal=False)
    with pytest.raises(ValueError, match="cu_seqlens"):
        build({"reorder": True, "causal": False})(randn(1, 5, 8), cu_seqlens=torch.tensor([0, 5]))
    r = build({"reorder": True, "causal": False})
    with pytest.raises(ValueError, match="step"):
        r._step_unchecked(randn(1, 8), r.initial_state(1))


def test_selection_strategies():
    raw = randn(2 + 2 * 3, 6, seed=1)
    none = bc_selection("none", 2, 3, 6)
    assert isinstance(none, RawBC) and none.bc_param == "none" and none.weight(raw) is raw
    signed = bc_selection("mixed", 2, 3, 6)
    assert isinstance(signed, SignedBC) and signed.bc_param == "mixed"
    assert_close(signed.weight(raw), x_proj_weight(raw, 2, 3, "mixed"))
    lin = torch.nn.Linear(6, 8, bias=False).double()
    xs = randn(2, 5, 6, seed=2)
    assert_close(none.project(xs, lin), lin(xs))
    assert_close(signed.project(xs, lin), xs @ x_proj_weight(lin.weight, 2, 3, "mixed").T)
    with pytest.raises(ValueError, match="bc_param"):
        bc_selection("pos", 2, 3, 6)
    with pytest.raises(ValueError, match="d_state <= d_inner"):
        bc_selection("positive", 2, 7, 6)
    m = build({"bc_param": "negative"})
    assert m.bc_param == "negative" and isinstance(m.selection, SignedBC)


@pytest.mark.parametrize("l", [1, 7, 63])
def test_reordered_gradients_equal_the_explicit_permutation(l):
    """ReorderedMamba = P^T Mamba_ssm(P x) with its soft permutation P: values and gradients."""
    m = build({"bc_param": "positive", "reorder": True, "causal": False}, seed=l)
    x = randn(2, l, 8, seed=l, requires_grad=True)
    y, _ = m(x)
    xs, z = m.in_proj(x).chunk(2, -1)
    xs = torch.nn.functional.silu(m.conv1d(xs)[0])
    P = m.soft_permutation(xs)
    y_sorted, _ = Mamba._ssm(m, P @ xs, P @ z, None, None, None)  # the plain mixer's ssm
    expected = m.out_proj(P.transpose(-1, -2) @ y_sorted)
    assert_close(y, expected)
    params = [x, *m.parameters()]
    g = randn(*y.shape, seed=4)
    for a, b in zip(
        torch.autograd.grad((y * g).sum(), params),
        torch.autograd.grad((expected * g).sum(), params),
        strict=True,
    ):
        assert_close(a, b)
