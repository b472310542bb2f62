"""latent/dmm.py: the ELBO against a closed form, masks, batch = items, gradients, training."""

import math

import pytest
import torch
from torch import nn

from ssmkit.latent import (
    DeepMarkovModel,
    DMMConfig,
    LatentTrainConfig,
    gaussian_log_prob,
    make_nonlinear_sequences,
    train_dmm,
)

F64 = torch.float64


def _model(likelihood="gaussian", x_dim=3, z_dim=2, seed=0):
    torch.manual_seed(seed)
    cfg = DMMConfig(
        x_dim=x_dim, z_dim=z_dim, transition_dim=8, emission_dim=8, rnn_dim=6, likelihood=likelihood
    )
    return DeepMarkovModel(cfg).double()


class _PosteriorIsPrior(nn.Module):
    """An inference network whose q(z_t | z_{t-1}, x) is the prior p(z_t | z_{t-1})."""

    def __init__(self, transition):
        super().__init__()
        self.transition = transition

    def forward(self, z_prev, h_right):
        return self.transition(z_prev)


class _LinearGaussianEmission(nn.Module):
    def __init__(self, H, R):
        super().__init__()
        self.H, self.R = H, R

    def log_prob(self, x, z):
        return gaussian_log_prob(x, z @ self.H.T, self.R.expand(x.shape))


def test_elbo_with_posterior_equal_to_prior_matches_closed_form():
    # Gate closed, linear mean A z, constant variance v: the prior is the linear Gaussian chain
    # z_t = A z_{t-1} + w_t, w_t ~ N(0, diag v), z_0 fixed. With q = p the KL vanishes and
    # ELBO = sum_t E_p[log N(x_t; H z_t, R)]
    #      = sum_t log N(x_t; H m_t, R) - tr(R^{-1} H P_t H^T) / 2.
    model = _model()
    tr = model.transition
    A = torch.tensor([[0.9, -0.3], [0.2, 0.7]], dtype=F64)
    b_s = torch.tensor([-2.0, -1.0], dtype=F64)
    with torch.no_grad():
        for p in tr.gate[-1].parameters():
            p.zero_()
        tr.gate[-1].bias.fill_(-1e4)  # sigmoid(-1e4) == 0 exactly: mean = A z
        tr.lin.weight.copy_(A)
        tr.lin.bias.zero_()
        tr.var.weight.zero_()
        tr.var.bias.copy_(b_s)
        model.z_0.copy_(torch.tensor([1.0, -2.0]))
        model.z_q_0.copy_(model.z_0)
    H = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.0, 1.0]], dtype=F64)
    R = torch.tensor([2.0, 3.0, 4.0], dtype=F64)
    model.combiner = _PosteriorIsPrior(tr)
    model.emission = _LinearGaussianEmission(H, R)
    T, N = 5, 20000
    x = torch.randn(1, T, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        terms = model.elbo(x.expand(N, T, 3), generator=torch.Generator().manual_seed(4))
    assert float(terms.kl.abs().max()) < 1e-12  # KL(q || p) = 0 when q = p

    v = torch.nn.functional.softplus(b_s) + model.config.min_var
    m, P, exact, trace_terms = model.z_0.detach(), torch.zeros(2, 2, dtype=F64), 0.0, 0.0
    for t in range(T):
        m, P = A @ m, A @ P @ A.T + torch.diag(v)
        exact += float(gaussian_log_prob(x[0, t], H @ m, R))
        trace_terms += 0.5 * float(torch.trace(torch.diag(1 / R) @ H @ P @ H.T))
    exact -= trace_terms
    mc, se = float(terms.elbo.mean()), float(terms.elbo.std() / math.sqrt(N))
    assert trace_terms > 10 * se  # the check can tell the expectation from the plug-in value
    assert abs(mc - exact) < 4 * se, (mc, exact, se)


def test_padded_steps_do_not_change_the_elbo():
    model = _model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 3, generator=g, dtype=F64)
    eps = torch.randn(1, 9, 2, generator=g, dtype=F64)
    ref = model.elbo(x, eps=eps[:, :6])
    for pad in (float("nan"), 1e6, 0.0):
        x_pad = torch.cat([x, torch.full((1, 3, 3), pad, dtype=F64)], 1)
        mask = torch.arange(9)[None] < 6
        got = model.elbo(x_pad, mask, eps=eps)
        for name in ("elbo", "log_lik", "kl", "n_steps"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-12, atol=0)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_batch_equals_items(likelihood):
    model = _model(likelihood)
    g = torch.Generator().manual_seed(1)
    lengths = [7, 4, 9, 1]
    x = torch.randn(4, 9, 3, generator=g, dtype=F64)
    if likelihood == "bernoulli":
        x = (x > 0).double()
    eps = torch.randn(4, 9, 2, generator=g, dtype=F64)
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    batch = model.elbo(x, mask, kl_weight=0.3, eps=eps)
    for i, L in enumerate(lengths):
        one = model.elbo(x[i : i + 1, :L], kl_weight=0.3, eps=eps[i : i + 1, :L])
        for name in ("elbo", "objective", "log_lik", "kl"):
            torch.testing.assert_close(getattr(batch, name)[i : i + 1], getattr(one, name))


def test_encoder_equals_gru_over_each_flipped_sequence():
    # slow twin of the in-place reversal trick: run the GRU on every item's own reversed steps
    model = _model()
    g = torch.Generator().manual_seed(2)
    lengths = [5, 8, 2]
    x = torch.randn(3, 8, 3, generator=g, dtype=F64)
    mask = torch.arange(8)[None] < torch.tensor(lengths)[:, None]
    h = model.encode(torch.where(mask[..., None], x, 0.0), mask)
    for i, L in enumerate(lengths):
        out, _ = model.encoder.rnn(x[i : i + 1, :L].flip(1))
        torch.testing.assert_close(h[i, :L], out[0].flip(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_gradients_reach_every_parameter(likelihood):
    model = _model(likelihood)
    x = torch.rand(3, 5, 3, dtype=F64)
    if likelihood == "bernoulli":
        x = x.round()
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    model.elbo(x, mask, kl_weight=0.5).objective.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, name


def test_sample_shapes_and_elbo_is_a_bound_of_the_right_sign():
    model = _model("bernoulli")
    z, x = model.sample(4, 6, torch.Generator().manual_seed(0))
    assert z.shape == (4, 6, 2) and x.shape == (4, 6, 3)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    terms = model.elbo(x)
    assert bool((terms.elbo <= 0).all())  # log p(x) <= 0 for discrete x, so is any lower bound
    assert terms.elbo.shape == (4,)


def test_training_beats_the_iid_baseline():
    train = make_nonlinear_sequences(128, 25, min_length=15, seed=0)
    test = make_nonlinear_sequences(64, 25, min_length=15, seed=1)
    torch.manual_seed(0)
    model = DeepMarkovModel(
        DMMConfig(x_dim=6, z_dim=2, transition_dim=16, emission_dim=16, rnn_dim=16)
    )
    lines = []
    cfg = LatentTrainConfig(epochs=15, batch_size=32, lr=1e-2, kl_warmup_epochs=3)
    res = train_dmm(model, train, test, cfg, progress=lines.append)
    assert len(lines) == 15 and "epoch" in lines[0]
    assert res.train_history[-1] < res.train_history[0]
    assert res.test_nll_bound < res.baseline_nll - 1.0, res


def test_bad_inputs():
    model = _model()
    x = torch.zeros(2, 4, 3, dtype=F64)
    with pytest.raises(ValueError, match="x must be a floating-point tensor of shape"):
        model.elbo(torch.zeros(2, 4, 5, dtype=F64))
    with pytest.raises(ValueError, match="x must be a floating-point tensor of shape"):
        model.elbo(torch.zeros(2, 4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch"):
        model.elbo([[0.0]])
    with pytest.raises(ValueError, match="prefix"):
        model.elbo(x, torch.tensor([[True, False, True, True], [True] * 4]))
    with pytest.raises(ValueError, match="at least one valid step"):
        model.elbo(x, torch.tensor([[False] * 4, [True] * 4]))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        model.elbo(x, torch.ones(2, 4))
    bad = x.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        model.elbo(bad)
    with pytest.raises(ValueError, match="eps must have shape"):
        model.elbo(x, eps=torch.zeros(2, 4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _model("bernoulli").elbo(x + 2)
    with pytest.raises(ValueError, match="unknown likelihood"):
        DMMConfig(x_dim=2, likelihood="poisson")
    with pytest.raises(ValueError, match="z_dim must be >= 1"):
        DMMConfig(x_dim=2, z_dim=0)
    with pytest.raises(TypeError, match="x_dim must be an int"):
        DMMConfig(x_dim=2.0)
