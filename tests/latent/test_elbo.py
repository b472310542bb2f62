"""latent/elbo.py: closed-form densities and KL against torch.distributions, masks, annealing."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from ssmkit.latent.elbo import (
    bernoulli_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    kl_anneal,
    sequential_elbo,
)

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_kl_matches_torch_distributions_and_is_zero_when_equal():
    g = _gen()
    qm = torch.randn(3, 4, 5, generator=g, dtype=F64)
    pm = torch.randn(3, 4, 5, generator=g, dtype=F64)
    qv = torch.rand(3, 4, 5, generator=g, dtype=F64) + 0.1
    pv = torch.rand(3, 4, 5, generator=g, dtype=F64) + 0.1
    ours = gaussian_kl(qm, qv, pm, pv)
    q, p = Independent(Normal(qm, qv.sqrt()), 1), Independent(Normal(pm, pv.sqrt()), 1)
    ref = kl_divergence(q, p)
    assert ours.shape == (3, 4)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert bool((ours > 0).all())
    assert float(gaussian_kl(qm, qv, qm, qv).abs().max()) == 0.0


def test_log_probs_match_torch_distributions():
    g = _gen(1)
    x = torch.randn(2, 7, 3, generator=g, dtype=F64)
    m = torch.randn(2, 7, 3, generator=g, dtype=F64)
    v = torch.rand(2, 7, 3, generator=g, dtype=F64) + 0.05
    torch.testing.assert_close(
        gaussian_log_prob(x, m, v), Normal(m, v.sqrt()).log_prob(x).sum(-1), rtol=1e-12, atol=1e-12
    )
    xb = torch.bernoulli(torch.full((2, 7, 3), 0.4, dtype=F64), generator=g)
    logits = torch.randn(2, 7, 3, generator=g, dtype=F64) * 3
    torch.testing.assert_close(
        bernoulli_log_prob(xb, logits), Bernoulli(logits=logits).log_prob(xb).sum(-1)
    )


def test_sequential_elbo_sums_masks_and_anneals():
    ll = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -0.5, -0.5]], dtype=F64)
    kl = torch.tensor([[0.25, 0.5, float("inf")], [0.1, 0.1, 0.1]], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    terms = sequential_elbo(ll, kl, mask=mask, kl_mask=mask, kl_weight=0.5)
    torch.testing.assert_close(terms.log_lik, torch.tensor([-3.0, -1.5], dtype=F64))
    torch.testing.assert_close(terms.kl, torch.tensor([0.75, 0.3], dtype=F64))
    torch.testing.assert_close(terms.elbo, terms.log_lik - terms.kl)
    torch.testing.assert_close(terms.objective, terms.log_lik - 0.5 * terms.kl)
    torch.testing.assert_close(terms.n_steps, torch.tensor([2.0, 3.0], dtype=F64))
    assert math.isclose(float(terms.nll_per_step()), (3.75 + 1.8) / 5, rel_tol=1e-12)
    # a single KL term per sequence (latent ODE) and no masks
    t2 = sequential_elbo(ll[1:], torch.tensor([0.2], dtype=F64))
    assert math.isclose(float(t2.elbo), -1.7, rel_tol=1e-12)


def test_masked_nan_does_not_reach_gradients_of_valid_terms():
    ll = torch.tensor([[-1.0, -2.0, 5.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    sequential_elbo(ll, torch.zeros(1, 3, dtype=F64), mask=mask).elbo.sum().backward()
    torch.testing.assert_close(ll.grad, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64))


def test_kl_anneal_schedule():
    assert kl_anneal(0, 4, 0.2) == pytest.approx(0.2)
    assert kl_anneal(2, 4, 0.2) == pytest.approx(0.6)
    assert kl_anneal(4, 4, 0.2) == 1.0 and kl_anneal(9, 4, 0.2) == 1.0
    assert kl_anneal(0, 0) == 1.0


def test_sequential_elbo_bad_inputs():
    ll = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="log_lik must have shape"):
        sequential_elbo(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="kl must have shape"):
        sequential_elbo(ll, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        sequential_elbo(ll, torch.zeros(2), mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        sequential_elbo(ll, torch.zeros(2), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="kl_weight"):
        sequential_elbo(ll, torch.zeros(2), kl_weight=-1.0)
    with pytest.raises(TypeError, match="log_lik must be a torch"):
        sequential_elbo([[0.0]], torch.zeros(1))
