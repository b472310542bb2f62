"""Equivalent forms of every LTI layer agree: conv = scan = step, split = whole, padded = alone."""

from __future__ import annotations

import pytest
import torch

from ssmkit.testing import assert_close, randn
from tests.layers.conftest import CONV_NAMES, D_MODEL, NAMES, make, modes, run_steps


def with_mode(layer, mode):
    layer.mode = mode
    return layer


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("L", [1, 7, 63])
def test_conv_scan_and_step_agree(name, L):
    layer = make(name)
    x = randn(2, L, D_MODEL, dtype=torch.float64, seed=L)
    y_step, s_step = run_steps(layer, x)
    for mode in modes(name):
        y, s = with_mode(layer, mode)(x, return_state=True)
        assert_close(y, y_step)
        assert_close(s, s_step)


@pytest.mark.parametrize("name", CONV_NAMES)
def test_bidirectional_conv_equals_scan(name):
    layer = make(name, bidirectional=True)
    x = randn(2, 19, D_MODEL, dtype=torch.float64)
    y_conv, _ = with_mode(layer, "conv")(x)
    y_scan, _ = with_mode(layer, "scan")(x)
    assert_close(y_conv, y_scan)
    # the anti-causal half is really used: the last output depends on the first input ...
    x2 = x.clone()
    x2[:, -1] += 1.0
    y2, _ = layer(x2)
    assert (y2[:, 0] - y_scan[:, 0]).abs().max() > 1e-6  # ... and the first on the last


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 6])
def test_split_with_state_equals_whole(name, k):
    layer = make(name)
    x = randn(2, 13, D_MODEL, dtype=torch.float64, seed=3)
    for mode in modes(name):
        with_mode(layer, mode)
        y, s = layer(x, return_state=True)
        y1, s1 = layer(x[:, :k], return_state=True)
        y2, s2 = layer(x[:, k:], state=s1, return_state=True)
        assert_close(torch.cat([y1, y2], dim=1), y)
        assert_close(s2, s)
        # the state is not ignored: a different one changes the continuation
        y3, _ = layer(x[:, k:], state=s1 + 1.0)
        assert (y3 - y2).abs().max() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_items_one_by_one(name):
    layer = make(name)
    x = randn(3, 11, D_MODEL, dtype=torch.float64, seed=4)
    for mode in modes(name):
        y, s = with_mode(layer, mode)(x, return_state=True)
        for i in range(3):
            yi, si = layer(x[i : i + 1], return_state=True)
            assert_close(y[i : i + 1], yi)
            assert_close(s[i : i + 1], si)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_equals_unpadded_items(name, bidirectional):
    layer = make(name, bidirectional=bidirectional)
    lengths = torch.tensor([13, 6, 1])
    x = randn(3, 13, D_MODEL, dtype=torch.float64, seed=5)
    x_padded = x.clone()
    for i, n in enumerate(lengths):
        x_padded[i, n:] = 1e3  # garbage in the padding must not leak
    for mode in modes(name):
        with_mode(layer, mode)
        want_state = not bidirectional
        y, s = layer(x_padded, lengths=lengths, return_state=want_state)
        for i, n in enumerate(lengths.tolist()):
            yi, si = layer(x[i : i + 1, :n], return_state=want_state)
            assert_close(y[i : i + 1, :n], yi)
            assert bool((y[i, n:] == 0).all())
            if want_state:
                assert_close(s[i : i + 1], si)


@pytest.mark.parametrize("name", [n for n in NAMES if n in CONV_NAMES])
def test_conv_with_initial_state_and_lengths(name):
    """Conv mode's free response and power-sum state, with a padded batch and a start state."""
    layer = make(name)
    x = randn(2, 9, D_MODEL, dtype=torch.float64, seed=6)
    lengths = torch.tensor([9, 4])
    s0 = layer(randn(2, 5, D_MODEL, dtype=torch.float64, seed=7), return_state=True)[1]
    results = {}
    for mode in modes(name):
        results[mode] = with_mode(layer, mode)(x, state=s0, lengths=lengths, return_state=True)
    assert_close(results["conv"][0], results["scan"][0])
    assert_close(results["conv"][1], results["scan"][1])
