"""latent/latent_sde.py, sde_data.py, sde_train.py and ``ssmkit latent sde``."""

import argparse
import json
import math

import pytest
import torch

from ssmkit.cli import latent as latent_cli
from ssmkit.latent import LatentTrainConfig, make_spirals, to_union_grid
from ssmkit.latent.latent_sde import PRIORS, LatentSDE, LatentSDEConfig, StableSDEPrior
from ssmkit.latent.sde_data import make_stochastic_spirals
from ssmkit.latent.sde_train import heldout_elbo, iid_gaussian_nll, train_latent_sde

F64 = torch.float64


def _model(prior="langevin", method="euler", seed=0):
    torch.manual_seed(seed)
    cfg = LatentSDEConfig(latent_dim=3, context_dim=5, hidden=8, prior=prior, method=method,
                          step_size=0.2, brownian_levels=8)  # fmt: skip
    return LatentSDE(cfg).double()


def _irregular_batch():
    g = torch.Generator().manual_seed(0)
    times = [torch.sort(torch.rand(k, generator=g, dtype=F64) * 3).values for k in (4, 7, 1)]
    values = [torch.randn(t.numel(), 2, generator=g, dtype=F64) for t in times]
    return to_union_grid(times, values)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_elbo_shapes_gradients_and_masking(prior, method):
    model = _model(prior, method)
    times, values, mask = _irregular_batch()
    terms = model.elbo(times, values, mask, kl_weight=0.5, generator=torch.Generator())
    assert terms.elbo.shape == (3,) and bool(torch.isfinite(terms.elbo).all())
    torch.testing.assert_close(terms.n_steps, torch.tensor([4.0, 7.0, 1.0], dtype=F64))
    assert bool((terms.kl >= 0).all())
    terms.objective.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    # unobserved entries (NaN here) are masked, never read: junk there changes nothing
    junk = torch.where(mask[..., None], values, torch.full_like(values, 1e3))
    a = model.elbo(times, values, mask, generator=torch.Generator().manual_seed(3))
    b = model.elbo(times, junk, mask, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.elbo, b.elbo, rtol=0, atol=0)


def test_path_kl_is_girsanov_for_a_constant_control():
    # u = c everywhere while data lie ahead: KL = 1/2 |c|^2 (t_last - t_0), 0 for the prior
    model = _model()
    times, values, mask = _irregular_batch()
    last = model.control[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.3, -0.2, 0.5], dtype=F64))
    ctx, q_mean, _ = model.encode(times, values, mask)
    t_last = model._last_times(times, mask)
    grid = torch.linspace(float(times[0]), float(times[-1]), 9, dtype=F64)
    grid = torch.unique(torch.cat([grid, t_last]))
    _, kl = model._solve(q_mean, times, ctx, t_last, grid, seed=0)
    expect = 0.5 * (0.09 + 0.04 + 0.25) * (t_last - times[0])
    torch.testing.assert_close(kl, expect, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        last.bias.zero_()
    _, kl0 = model._solve(q_mean, times, ctx, t_last, grid, seed=0)
    assert torch.equal(kl0, torch.zeros(3, dtype=F64))


def test_stable_prior_classes():
    t = torch.tensor(0.4, dtype=F64)
    z = torch.randn(5, 3, dtype=F64)
    zero = torch.zeros(5, 3, dtype=F64)
    for kind in PRIORS:
        torch.manual_seed(0)
        p = StableSDEPrior(kind, 3, 8).double()
        g = p.diffusion(t, z)
        sigma = p.diffusion(t, torch.ones_like(z))  # sigma(t) itself for the z-scaled classes
        assert bool((sigma > 0).all())
        if kind == "langevin":  # additive noise; drift does not depend on t
            torch.testing.assert_close(g, sigma)
            torch.testing.assert_close(p.drift(t, z), p.drift(t + 1, z))
        else:  # linear noise: g = sigma(t) z
            torch.testing.assert_close(g, sigma * z)
        if kind == "geometric":  # dz / z = gamma dt + sigma dW: z = 0 is a fixed point
            assert torch.equal(p.drift(t, zero), zero)


def test_predict_interpolates_and_forecasts():
    model = _model("linear_noise")
    times, values, mask = _irregular_batch()
    query = torch.tensor([0.2, 1.0, 2.5, 4.0, 6.0], dtype=F64) + float(times[0])
    g = torch.Generator().manual_seed(0)
    pred = model.predict(times, values, mask, query, n_samples=3, generator=g)
    assert pred.shape == (3, 5, 2) and bool(torch.isfinite(pred).all())
    again = model.predict(times, values, mask, query, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(pred, again, rtol=0, atol=0)


def test_bad_input_is_named():
    model = _model()
    times, values, mask = _irregular_batch()
    with pytest.raises(ValueError, match="times must be sorted strictly increasing"):
        model.elbo(times.flip(0), values, mask)
    bad = values.clone()
    bad[mask] = float("nan")
    with pytest.raises(ValueError, match="values must be finite where mask is True"):
        model.elbo(times, bad, mask)
    with pytest.raises(ValueError, match="unknown prior 'ou'"):
        LatentSDEConfig(prior="ou")
    with pytest.raises(ValueError, match=r"step_size must be a number > 0, got -0\.1"):
        LatentSDEConfig(step_size=-0.1)
    with pytest.raises(ValueError, match="query_times must be strictly increasing"):
        model.predict(times, values, mask, torch.tensor([1.0, 0.5], dtype=F64))
    with pytest.raises(ValueError, match=r"diffusion must be >= 0, got -0\.2"):
        make_stochastic_spirals(4, diffusion=-0.2)
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        make_stochastic_spirals(4, noise_std=-1.0)


def test_stochastic_spirals():
    d = make_stochastic_spirals(6, n_grid=30, n_obs=10, seed=1, dtype=F64)
    assert d.values.shape == (6, 30, 2) and d.mask.shape == (6, 30)
    assert torch.equal(d.mask.sum(1), torch.full((6,), 10))
    assert bool(torch.isnan(d.values[~d.mask]).all()) and bool(torch.isfinite(d.clean).all())
    again = make_stochastic_spirals(6, n_grid=30, n_obs=10, seed=1, dtype=F64)
    assert torch.equal(again.clean, d.clean)
    # without forcing the path is a deterministic spiral: the same law as make_spirals
    still = make_stochastic_spirals(6, n_grid=30, n_obs=10, diffusion=0.0, dtype=F64)
    r = still.clean.norm(dim=-1)  # (b, u): r0 exp(-damping t) up to the Euler error
    decay = r / r[:, :1]
    torch.testing.assert_close(
        decay, torch.exp(-0.15 * still.times)[None].expand_as(decay), atol=0.02, rtol=0
    )
    # with forcing the paths leave the spiral: the radius no longer decays deterministically
    assert float((d.clean.norm(dim=-1) / d.clean.norm(dim=-1)[:, :1]
                  - torch.exp(-0.15 * d.times)).abs().max()) > 0.05  # fmt: skip


def test_short_training_improves_the_bound_and_beats_the_untrained_model():
    train = make_stochastic_spirals(24, n_grid=16, n_obs=8, seed=0)
    test = make_stochastic_spirals(8, n_grid=16, n_obs=8, seed=1)
    cfg = LatentSDEConfig(latent_dim=3, context_dim=8, hidden=16, step_size=0.25)
    torch.manual_seed(0)
    model = LatentSDE(cfg)
    before = heldout_elbo(model, test, samples=2)
    res = train_latent_sde(
        model, train, test, 3.5, LatentTrainConfig(epochs=4, batch_size=8, lr=1e-2)
    )
    assert res.heldout_nelbo < before and len(res.train_history) == 4
    assert res.train_history[-1] < res.train_history[0]
    assert math.isfinite(res.interp_mse) and math.isfinite(res.extrap_mse)
    assert iid_gaussian_nll(train, test) > 0


def test_latent_sde_command(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ssmkit")
    latent_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["latent", "sde", "--epochs", "1", "--n-train", "8", "--n-test",
                              "4", "--n-grid", "12", "--n-obs", "8", "--hidden", "8",
                              "--prior", "geometric", "--out", str(tmp_path)])  # fmt: skip
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert out.count("epoch ") == 2 and "latent SDE (geometric)" in out and "latent ODE" in out
    res = json.loads((tmp_path / "latent-sde.json").read_text())["results"]
    assert len(res) == 3
    for row in res.values():
        assert set(row) == {"heldout_nelbo", "interp_mse", "extrap_mse", "cpu_seconds"}


def test_spirals_of_both_generators_share_the_batch_format():
    a = make_spirals(3, n_grid=10, n_obs=4)
    b = make_stochastic_spirals(3, n_grid=10, n_obs=4)
    assert a.values.shape == b.values.shape and a.values.dtype == b.values.dtype
    torch.testing.assert_close(a.times, b.times)


@pytest.mark.parametrize("encoder", ["s4d", "lru", "mamba"])
def test_layer_encoders_read_the_data_after_t_and_ignore_unobserved_values(encoder):
    """ssmkit layers as the context encoder: ctx at grid time i depends only on the data at
    times >= i (read backwards), junk at unobserved entries changes nothing, and every
    parameter gets a gradient from the ELBO."""
    torch.manual_seed(0)
    data = make_stochastic_spirals(3, n_grid=12, n_obs=6)
    model = LatentSDE(LatentSDEConfig(encoder=encoder)).double()
    times, values, mask = data.times.double(), data.values.double(), data.mask
    ctx, _, _ = model.encode(times, values, mask)
    changed = values.clone()
    changed[:, 0] = torch.where(mask[:, 0, None], changed[:, 0] + 1.0, changed[:, 0])
    ctx2, _, _ = model.encode(times, changed, mask)
    torch.testing.assert_close(ctx2[:, 1:], ctx[:, 1:])  # steps after 0 do not see step 0
    assert mask[:, 0].any() and not torch.allclose(ctx2[:, 0], ctx[:, 0])
    junk = torch.where(mask[..., None], values, torch.full_like(values, 1e6))
    torch.testing.assert_close(model.encode(times, junk, mask)[0], ctx)
    terms = model.elbo(times, values, mask)
    (-terms.objective.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
