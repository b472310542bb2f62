"""latent/encoders.py: every encoder reads what its direction promises (x_{t:T} or x_{1:T}),
padding never reaches a valid step, the default GRU keeps the DMM's old inference network,
and the DMM and latent ODE train with every encoder."""

import pytest
import torch

from ssmkit.latent import DeepMarkovModel, DMMConfig, LatentODE, LatentODEConfig
from ssmkit.latent.encoders import DIRECTIONS, ENCODERS, GridEncoder, SequenceEncoder
from ssmkit.testing import assert_close, randn

F64 = torch.float64


def _encoder(kind, direction):
    torch.manual_seed(0)
    return SequenceEncoder(kind, 3, 8, direction, d_state=4).double()


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", ENCODERS)
def test_dependence_and_padding(kind, direction):
    enc = _encoder(kind, direction)
    x = randn(2, 7, 3, seed=1)
    h = enc(x)
    assert h.shape == (2, 7, 8)
    j = 3  # perturb step j: backward features at t > j must not move, t <= j must
    x2 = x.clone()
    x2[:, j] += 1.0
    moved = (enc(x2) - h).abs().amax((0, 2)) > 1e-9  # (l,)
    assert bool(moved[: j + 1].all())
    assert bool(moved[j + 1 :].any()) == (direction == "bidirectional")
    # right padding: a padded batch equals its items alone on their valid steps
    lengths = torch.tensor([7, 4])
    padded = x.clone()
    padded[1, 4:] = 5.0
    hp = enc(padded, lengths)
    assert_close(hp[1, :4], enc(x[1:2, :4])[0])
    assert_close(hp[0], h[0])


def test_default_gru_is_the_backward_gru_of_the_dmm():
    torch.manual_seed(0)
    cfg = DMMConfig(x_dim=3, z_dim=2, transition_dim=8, emission_dim=8, rnn_dim=6)
    model = DeepMarkovModel(cfg).double()
    x = randn(2, 5, 3, seed=2)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    h = model.encode(x, mask)
    gru = model.encoder.rnn
    for i, L in enumerate([5, 3]):
        out, _ = gru(x[i : i + 1, :L].flip(1))
        assert_close(h[i, :L], out[0].flip(0))


@pytest.mark.parametrize(
    "kind, direction", [("s4d", "bidirectional"), ("lru", "backward"), ("mamba", "backward")]
)
def test_dmm_with_layer_encoders(kind, direction):
    torch.manual_seed(0)
    cfg = DMMConfig(x_dim=3, z_dim=2, transition_dim=8, emission_dim=8, rnn_dim=8,
                    encoder=kind, encoder_direction=direction)  # fmt: skip
    model = DeepMarkovModel(cfg).double()
    x = randn(3, 6, 3, seed=3)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    terms = model.elbo(x, mask, eps=randn(3, 6, 2, seed=4))
    assert torch.isfinite(terms.elbo).all()
    terms.objective.sum().backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_latent_ode_with_a_layer_encoder():
    torch.manual_seed(0)
    cfg = LatentODEConfig(obs_dim=2, latent_dim=2, rec_dim=8, ode_hidden=8, decoder_hidden=8,
                          encoder="s4d")  # fmt: skip
    model = LatentODE(cfg).double()
    assert isinstance(model.encoder, GridEncoder)
    times = torch.linspace(0, 1, 7, dtype=F64)
    values = randn(2, 7, 2, seed=5)
    mask = torch.rand(2, 7, generator=torch.Generator().manual_seed(0)) < 0.6
    mask[:, 0] = True
    terms = model.elbo(times, torch.where(mask[..., None], values, torch.nan), mask)
    assert torch.isfinite(terms.elbo).all()
    terms.objective.sum().backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_encoder_options_are_refused():
    with pytest.raises(ValueError, match="encoder"):
        DMMConfig(x_dim=2, encoder="transformer")
    with pytest.raises(ValueError, match="encoder_direction"):
        DMMConfig(x_dim=2, encoder_direction="forward")
    with pytest.raises(ValueError, match="encoder"):
        LatentODEConfig(encoder="lstm")
    with pytest.raises(ValueError, match=r"x must have shape \(b, l, d_in\) with d_in = 3"):
        _encoder("gru", "backward")(torch.zeros(1, 4, 2, dtype=F64))
