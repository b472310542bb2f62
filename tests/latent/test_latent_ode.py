"""latent/latent_ode.py: shapes on irregular grids, masks, batch = items, gradients, training."""

import pytest
import torch

from ssmkit.latent import (
    LatentODE,
    LatentODEConfig,
    LatentTrainConfig,
    make_spirals,
    masked_mse,
    split_interp_extrap,
    to_union_grid,
    train_latent_ode,
)

F64 = torch.float64
CFG = LatentODEConfig(latent_dim=3, rec_dim=5, ode_hidden=8, decoder_hidden=8, encoder_step=0.2)


def _model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return LatentODE(cfg).double()


def _irregular_batch():
    g = torch.Generator().manual_seed(0)
    times = [torch.sort(torch.rand(k, generator=g, dtype=F64) * 3).values for k in (4, 7, 2)]
    values = [torch.randn(t.numel(), 2, generator=g, dtype=F64) for t in times]
    return to_union_grid(times, values)


def test_elbo_and_prediction_shapes_on_irregular_grids():
    model = _model()
    times, values, mask = _irregular_batch()
    assert times.shape == (13,) and values.shape == (3, 13, 2) and int(mask.sum()) == 13
    terms = model.elbo(times, values, mask, kl_weight=0.5)
    assert terms.elbo.shape == (3,)
    torch.testing.assert_close(terms.n_steps, torch.tensor([4.0, 7.0, 2.0], dtype=F64))
    query = torch.tensor([0.1, 0.35, 2.0, 4.5, 7.25], dtype=F64) + float(times[0])  # past the data
    pred = model.predict(times, values, mask, query)
    assert pred.shape == (3, 5, 2) and bool(torch.isfinite(pred).all())
    # predicting at the observation times through decode() equals predict() on that grid
    q_mean, _ = model.posterior(times, values, mask)
    torch.testing.assert_close(
        model.decode(q_mean, float(times[0]), times), model.predict(times, values, mask, times)
    )


def test_unobserved_entries_do_not_matter_and_batch_equals_items():
    model = _model()
    times, values, mask = _irregular_batch()
    eps = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = model.elbo(times, values, mask, eps=eps)  # NaN where unobserved
    junk = torch.where(mask[..., None], values, torch.full_like(values, 1e3))
    got = model.elbo(times, junk, mask, eps=eps)
    torch.testing.assert_close(got.elbo, ref.elbo, rtol=1e-12, atol=0)
    for i in range(3):  # each series alone on the same grid
        one = model.elbo(times, values[i : i + 1], mask[i : i + 1], eps=eps[i : i + 1])
        torch.testing.assert_close(one.elbo, ref.elbo[i : i + 1], rtol=1e-10, atol=1e-10)


def test_encoder_state_of_a_series_ignores_grid_points_after_its_last_observation():
    # a series observed at its own times, alone on its grid and padded with later grid points
    model = _model()
    t = torch.tensor([0.0, 0.4, 1.1], dtype=F64)
    v = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    q_alone = model.posterior(t, v[None], torch.ones(1, 3, dtype=torch.bool))
    t_long = torch.cat([t, torch.tensor([1.5, 2.7], dtype=F64)])
    v_long = torch.cat([v, torch.full((2, 2), float("nan"), dtype=F64)])[None]
    m_long = torch.tensor([[True, True, True, False, False]])
    q_long = model.posterior(t_long, v_long, m_long)
    torch.testing.assert_close(q_long[0], q_alone[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q_long[1], q_alone[1], rtol=1e-12, atol=1e-12)


def test_gradients_reach_every_parameter_and_encoder_mask_is_used():
    model = _model(LatentODEConfig(latent_dim=3, rec_dim=5, ode_hidden=8, decoder_hidden=8,
                                   decoder_method="dopri5"))  # fmt: skip
    times, values, mask = _irregular_batch()
    enc = mask.clone()
    enc[1, mask[1].nonzero()[-1]] = False  # hide one point from the encoder
    a = model.elbo(times, values, mask, encoder_mask=enc, eps=torch.zeros(3, 3, dtype=F64))
    b = model.elbo(times, values, mask, eps=torch.zeros(3, 3, dtype=F64))
    diff = (a.elbo - b.elbo).detach().abs()
    assert float(diff[1]) > 0 and float(diff[0]) == 0
    a.objective.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, name


@pytest.mark.slow
def test_training_tracks_the_spirals_beyond_the_data():
    # ~15 s of CPU: 30 epochs on 64 series; extrapolation must beat both the last observed
    # value and the zero predictor (what a model that only learned the decay would output)
    train = make_spirals(64, n_grid=50, n_obs=20, seed=0)
    test = make_spirals(32, n_grid=50, n_obs=20, seed=1)
    torch.manual_seed(0)
    cfg = LatentODEConfig(latent_dim=4, rec_dim=32, ode_hidden=32, decoder_hidden=32)
    res = train_latent_ode(
        LatentODE(cfg), train, test, t_split=3.5,
        config=LatentTrainConfig(epochs=30, batch_size=16, lr=1e-2, kl_warmup_epochs=2),
    )  # fmt: skip
    _, _, extrap = split_interp_extrap(test, 3.5)
    zero_mse = masked_mse(torch.zeros_like(test.values), test.values, extrap)
    assert res.train_history[-1] < 0.5 * res.train_history[0]
    assert res.extrap_mse < 0.5 * zero_mse, (res, zero_mse)
    assert res.extrap_mse < 0.3 * res.baseline_extrap_mse, res
    assert res.interp_mse < 0.5 * zero_mse, (res, zero_mse)


def test_bad_inputs():
    model = _model()
    times, values, mask = _irregular_batch()
    with pytest.raises(ValueError, match="strictly increasing"):
        model.elbo(times.flip(0), values, mask)
    with pytest.raises(ValueError, match="times must have shape"):
        model.elbo(times[None], values, mask)
    with pytest.raises(ValueError, match="values must be a floating-point tensor of shape"):
        model.elbo(times, values[:, :-1], mask)
    with pytest.raises(ValueError, match="values must be a floating-point tensor of shape"):
        model.elbo(times, torch.zeros(3, 13, 3, dtype=F64), mask)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        model.elbo(times, values, mask.double())
    bad = values.clone()
    bad[0, mask[0].nonzero()[0]] = float("nan")
    with pytest.raises(ValueError, match="finite where mask"):
        model.elbo(times, bad, mask)
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match="at least one observation"):
        model.elbo(times, values, empty)
    with pytest.raises(ValueError, match="times must be finite"):
        model.elbo(torch.full_like(times, float("nan")), values, mask)
    with pytest.raises(ValueError, match="eps must have shape"):
        model.elbo(times, values, mask, eps=torch.zeros(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="query_times must start at or after"):
        model.predict(times, values, mask, times - 1)
    with pytest.raises(ValueError, match="query_times must be strictly increasing"):
        model.predict(times, values, mask, times.flip(0))
    with pytest.raises(ValueError, match="unknown decoder_method"):
        LatentODEConfig(decoder_method="midpoint")
    with pytest.raises(ValueError, match="obs_std must be a number > 0"):
        LatentODEConfig(obs_std=0.0)
