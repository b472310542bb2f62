"""Sign-constrained S_C^T S_B (Vo et al.): the construction, its spectrum, the Mamba option."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.layers.mamba import Mamba
from ssmkit.layers.selective_params import (
    MARGIN,
    bc_from_raw,
    input_output_matrix,
    x_proj_weight,
)
from ssmkit.models.mamba_lm import MambaConfig, MambaLM
from ssmkit.testing import assert_close, randn

F64 = torch.float64


def spectrum(bc_param: str, n: int, d: int, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw_B = scale * torch.randn(n, d, generator=g, dtype=F64)
    raw_C = scale * torch.randn(n, d, generator=g, dtype=F64)
    S_B, S_C = bc_from_raw(raw_B, raw_C, bc_param)
    M = input_output_matrix(S_B, S_C)
    assert_close(M, M.T)  # U^T diag(d) U is symmetric
    return torch.linalg.eigvalsh(M)


sizes = st.tuples(st.integers(1, 6), st.integers(0, 10))  # (n, d_inner - n)
seeds = st.integers(0, 2**31 - 1)
scales = st.floats(0.01, 10.0)


@settings(max_examples=40, deadline=None)
@given(sizes, seeds, scales)
def test_positive_has_no_negative_eigenvalue(size, seed, scale):
    n, extra = size
    eig = spectrum("positive", n, n + extra, seed, scale)
    tol = 1e-9 * float(eig.abs().max())
    assert float(eig.min()) >= -tol


@settings(max_examples=40, deadline=None)
@given(sizes, seeds, scales)
def test_negative_has_no_positive_eigenvalue(size, seed, scale):
    n, extra = size
    eig = spectrum("negative", n, n + extra, seed, scale)
    tol = 1e-9 * float(eig.abs().max())
    assert float(eig.max()) <= tol


@pytest.mark.parametrize("n, extra", [(1, 0), (4, 0), (4, 12), (5, 3)])
def test_inertia_n_nonzero_eigenvalues_with_the_signs_of_d(n, extra):
    """Sylvester's law of inertia: U has full row rank n (well conditioned at this scale)."""
    for bc_param, pos in (("positive", n), ("negative", 0), ("mixed", n // 2)):
        if bc_param == "mixed" and n < 2:
            continue
        eig = spectrum(bc_param, n, n + extra, seed=n + extra, scale=0.3)
        tol = 1e-9 * float(eig.abs().max())
        assert int((eig > tol).sum()) == pos and int((eig < -tol).sum()) == n - pos, bc_param


def test_construction_matches_the_formula():
    raw_B, raw_C = randn(3, 5, seed=1), randn(3, 5, seed=2)
    S_B, S_C = bc_from_raw(raw_B, raw_C, "positive")
    U = torch.triu(raw_B, 1) + torch.eye(3, 5, dtype=F64)
    d = torch.nn.functional.softplus(raw_C[:, 0]) + MARGIN
    assert_close(S_C, U)
    assert_close(input_output_matrix(S_B, S_C), U.T @ torch.diag(d) @ U)
    assert bool((d >= MARGIN).all())
    # "none" is the identity: the stored weight is used as it is
    W = randn(2 + 6, 5, seed=3)
    assert x_proj_weight(W, 2, 3, "none") is W
    eff = x_proj_weight(W, 2, 3, "negative")
    assert_close(eff[:2], W[:2])


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="unknown bc_param"):
        bc_from_raw(randn(2, 4), randn(2, 4), "definite")
    with pytest.raises(ValueError, match="d_state <= d_inner"):
        bc_from_raw(randn(5, 4), randn(5, 4), "positive")
    with pytest.raises(ValueError, match="both signs"):
        bc_from_raw(randn(1, 4), randn(1, 4), "mixed")
    with pytest.raises(ValueError, match="unknown bc_param"):
        Mamba(4, d_state=2, bc_param="pos")
    with pytest.raises(ValueError, match="d_state <= d_inner"):
        Mamba(2, d_state=8, expand=2, bc_param="positive")


def test_default_layer_is_unchanged_and_names_are_kept():
    torch.manual_seed(0)
    plain = Mamba(8, d_state=4, backend="ref")
    torch.manual_seed(0)
    positive = Mamba(8, d_state=4, backend="ref", bc_param="positive")
    assert list(plain.state_dict()) == list(positive.state_dict())
    shapes = [
        (v.shape, w.shape)
        for v, w in zip(*(m.state_dict().values() for m in (plain, positive)), strict=True)
    ]
    assert all(a == b for a, b in shapes)
    assert plain.x_proj_weight() is plain.x_proj.weight
    x = randn(2, 6, 8, dtype=torch.float32)
    y0, _ = plain(x)
    y1, _ = positive(x)
    assert not torch.allclose(y0, y1)  # the option changes the layer...
    positive.load_state_dict(plain.state_dict())  # ...and checkpoints load both ways
    with torch.no_grad():
        S_B, S_C = positive.bc_matrices()
    eig = torch.linalg.eigvalsh(input_output_matrix(S_B.double(), S_C.double()))
    assert float(eig.min()) > -1e-6


def test_positive_layer_streams_and_gradients_flow():
    torch.manual_seed(1)
    m = Mamba(8, d_state=4, d_conv=3, backend="ref", bc_param="positive").double()
    x = randn(2, 9, 8, dtype=F64, seed=4)
    y, s = m(x, return_state=True)
    state, ys = m.initial_state(2), []
    for t in range(9):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    assert_close(state.ssm, s.ssm)
    y.square().sum().backward()
    g = m.x_proj.weight.grad  # U from the B rows' strict upper triangle, d from C's column 0
    n, r = 4, m.dt_rank
    assert float(g[r : r + n].triu(1).abs().sum()) > 0 and float(g[r + n :, 0].abs().sum()) > 0
    assert float(g[r : r + n].tril().abs().sum()) == 0  # unused raw entries get no gradient


def test_mamba_lm_config_passes_the_option_through():
    cfg = MambaConfig(d_model=8, n_layer=2, vocab_size=11, d_state=4, bc_param="negative")
    model = MambaLM(cfg, backend="ref")
    assert all(layer.mixer.bc_param == "negative" for layer in model.backbone.layers)
    with pytest.raises(ValueError, match="Mamba-1 options"):
        MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=11, version=2, headdim=4,
                            bc_param="positive"))  # fmt: skip
