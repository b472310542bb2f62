"""latent/data.py: generated sets follow their stated processes; baselines against NumPy."""

import math

import numpy as np
import pytest
import torch

from ssmkit.core.ode import solve_ivp
from ssmkit.latent import (
    SequenceSet,
    iid_baseline_nll,
    linear_interp_baseline,
    make_nonlinear_sequences,
    make_spirals,
    masked_mse,
    split_interp_extrap,
    to_union_grid,
)

F64 = torch.float64


def test_nonlinear_sequences_shapes_padding_and_seeds():
    a = make_nonlinear_sequences(20, 12, x_dim=5, min_length=4, seed=3)
    assert a.x.shape == (20, 12, 5) and a.mask.shape == (20, 12) and a.z.shape == (20, 12, 2)
    assert bool(a.mask[:, :4].all()) and bool((a.mask[:, 1:] <= a.mask[:, :-1]).all())
    assert float(a.x[~a.mask].abs().sum()) == 0.0
    b = make_nonlinear_sequences(20, 12, x_dim=5, min_length=4, seed=3)
    torch.testing.assert_close(a.x, b.x)
    bern = make_nonlinear_sequences(6, 8, likelihood="bernoulli", seed=0)
    assert set(bern.x.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="min_length"):
        make_nonlinear_sequences(2, 5, min_length=6)


def test_nonlinear_sequences_follow_the_stated_process():
    # x = W phi(z) + noise with one W for every seed: regress x on phi(z) across two sets
    sets = [make_nonlinear_sequences(200, 10, x_dim=3, obs_std=0.01, seed=s, dtype=F64)
            for s in (0, 1)]  # fmt: skip
    Ws = []
    for s in sets:
        z, x = s.z[s.mask], s.x[s.mask]
        phi = torch.stack([z[:, 0], z[:, 1], z[:, 0] * z[:, 1], torch.sin(2 * z[:, 0])], -1)
        W = torch.linalg.lstsq(phi, x).solution.T  # (x, 4)
        assert float((x - phi @ W.T).std()) < 0.02  # residual = the observation noise
        Ws.append(W)
    torch.testing.assert_close(Ws[0], Ws[1], atol=5e-3, rtol=0)


def test_iid_baseline_is_the_gaussian_entropy_on_its_own_training_set():
    s = make_nonlinear_sequences(50, 10, x_dim=4, seed=0, dtype=F64)
    var = s.x[s.mask].var(0, unbiased=False)
    expected = float(0.5 * (torch.log(2 * math.pi * var) + 1).sum())
    assert iid_baseline_nll(s, s) == pytest.approx(expected, rel=1e-10)
    bern = make_nonlinear_sequences(50, 10, x_dim=4, likelihood="bernoulli", seed=0)
    p = bern.x[bern.mask].double().mean(0)
    h = float(-(p * p.log() + (1 - p) * (1 - p).log()).sum())
    assert iid_baseline_nll(bern, bern, "bernoulli") == pytest.approx(h, rel=1e-6)


def test_spirals_are_the_stated_linear_ode_observed_irregularly():
    d = make_spirals(6, n_grid=40, n_obs=12, t_max=4.0, damping=0.2, omega=1.3, seed=5, dtype=F64)
    assert d.times.shape == (40,) and d.values.shape == (6, 40, 2) and d.mask.shape == (6, 40)
    assert d.mask.sum(1).tolist() == [12] * 6
    assert bool(torch.isnan(d.values[~d.mask]).all())
    assert bool(torch.isfinite(d.values[d.mask]).all())
    # clean paths solve z' = [[-a, -s w], [s w, -a]] z for a direction s = +-1 per series
    for k in range(6):
        c = d.clean[k]
        s = 1.0 if float(c[0, 0] * c[1, 1] - c[0, 1] * c[1, 0]) > 0 else -1.0
        A = torch.tensor([[-0.2, -s * 1.3], [s * 1.3, -0.2]], dtype=F64)
        sol = solve_ivp(lambda t, z, A=A: z @ A.T, c[0], d.times, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sol.y, c, rtol=1e-7, atol=1e-7)
    noise = (d.values - d.clean)[d.mask]
    assert 0.05 < float(noise.std()) < 0.15


def test_to_union_grid_round_trip():
    times = [torch.tensor([0.5, 1.0, 3.0]), torch.tensor([0.2, 1.0]), torch.tensor([2.5])]
    values = [torch.arange(6.0).reshape(3, 2), -torch.ones(2, 2), torch.full((1, 2), 7.0)]
    grid, vals, mask = to_union_grid(times, values)
    torch.testing.assert_close(grid, torch.tensor([0.2, 0.5, 1.0, 2.5, 3.0]))
    assert mask.tolist() == [[False, True, True, False, True], [True, False, True, False, False],
                             [False, False, False, True, False]]  # fmt: skip
    for i in range(3):
        torch.testing.assert_close(grid[mask[i]], times[i])
        torch.testing.assert_close(vals[i, mask[i]], values[i])
    assert bool(torch.isnan(vals[~mask]).all())
    with pytest.raises(ValueError, match="strictly increasing"):
        to_union_grid([torch.tensor([1.0, 0.5])], [torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="must be"):
        to_union_grid([torch.tensor([1.0, 2.0])], [torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="equally long"):
        to_union_grid([], [])


def test_linear_interp_baseline_equals_numpy_interp():
    d = make_spirals(5, n_grid=30, n_obs=9, seed=2, dtype=F64)
    pred = linear_interp_baseline(d.times, d.values, d.mask)
    for i in range(5):
        t_obs = d.times[d.mask[i]].numpy()
        for c in range(2):
            ref = np.interp(d.times.numpy(), t_obs, d.values[i, d.mask[i], c].numpy())
            np.testing.assert_allclose(pred[i, :, c].numpy(), ref, rtol=1e-12, atol=1e-12)


def test_split_interp_extrap_masks():
    d = make_spirals(8, n_grid=30, n_obs=15, seed=0)
    enc, interp, extrap = split_interp_extrap(d, t_split=3.0, seed=1)
    assert not bool((enc & interp).any() | (enc & extrap).any() | (interp & extrap).any())
    assert bool(((enc | interp | extrap) == d.mask).all())
    assert bool((enc.sum(1) >= 2).all())
    assert bool((d.times[None].expand_as(extrap)[extrap] > 3.0).all())
    assert masked_mse(d.values, d.values, d.mask) == 0.0
    with pytest.raises(ValueError, match="selects no entries"):
        masked_mse(d.values, d.values, torch.zeros_like(d.mask))
    with pytest.raises(ValueError, match=">= 2 observations"):
        split_interp_extrap(d, t_split=0.0)
    assert isinstance(make_nonlinear_sequences(2, 3), SequenceSet)
