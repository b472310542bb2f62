"""The value-check modes: set_checks / checks ("off", "cheap", "full", default)."""

from __future__ import annotations

import pytest
import torch

import ssmkit
from ssmkit.core import checks as checks_mod
from ssmkit.core.checks import check_finite, get_checks, values_checked
from ssmkit.layers import S4D


def _nan_input() -> torch.Tensor:
    x = torch.randn(2, 7, 3)
    x[1, 4, 2] = float("nan")
    return x


def test_a_nan_input_raises_under_full_and_passes_under_off():
    layer = S4D(3, N=4)
    with ssmkit.checks("full"), pytest.raises(ValueError, match="x must be finite, got 1"):
        layer(_nan_input())
    with ssmkit.checks("off"):
        y, _ = layer(_nan_input())
    assert torch.isnan(y).any()


def test_cheap_skips_hot_checks_and_keeps_entry_checks():
    x = torch.tensor([1.0, float("inf")])
    with ssmkit.checks("cheap"):
        assert check_finite("x", x, hot=True) is x  # a layer/operator check: skipped
        with pytest.raises(ValueError, match="x must be finite"):
            check_finite("x", x)  # an entry-point check: kept
        S4D(3, N=4)(_nan_input())  # no error from the layer forward


def test_the_default_is_full_on_cpu_and_never_reads_meta_values():
    assert checks_mod._mode is None and get_checks("cpu") == "full"
    assert get_checks("cuda") == "cheap" and get_checks("meta") == "cheap"
    assert values_checked(torch.zeros(1), hot=True)
    assert not values_checked(torch.zeros(1, device="meta"))
    with pytest.raises(ValueError, match="x must be finite"):
        S4D(3, N=4)(_nan_input())


def test_the_context_manager_restores_the_mode_even_after_an_error():
    ssmkit.set_checks("cheap")
    try:
        with pytest.raises(RuntimeError), ssmkit.checks("off"):
            assert get_checks("cpu") == "off"
            raise RuntimeError
        assert get_checks("cpu") == "cheap"
    finally:
        ssmkit.set_checks(None)
    assert get_checks("cpu") == "full"


def test_an_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown checks mode 'fast'; expected one of \['off'"):
        ssmkit.set_checks("fast")
    with pytest.raises(TypeError, match="mode must be a str or None, got int"):
        ssmkit.set_checks(1)
    assert checks_mod._mode is None
