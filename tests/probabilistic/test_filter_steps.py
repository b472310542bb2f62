"""The step strategies of the sequential filter, the typed diffuse result, and the offset d
masked together with y (issue 19, item 2)."""

import pytest
import torch

from ssmkit.core.gaussian import psd_factor, sqrt_update, update
from ssmkit.probabilistic import LinearGaussianSSM, kalman_filter, rts_smoother
from ssmkit.probabilistic.diffuse import DiffuseFilterResult, diffuse_filter
from ssmkit.probabilistic.filter_steps import (
    FilterResult,
    PlainSteps,
    SquareRootSteps,
    run_steps,
)
from ssmkit.probabilistic.model import prepare
from tests.probabilistic.brute import random_model


def _y(b, l, o, seed=0, missing=True):
    y = torch.randn(b, l, o, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if missing:
        y[0, min(2, l - 1), 0] = float("nan")  # one entry of a vector
        if l > 1:  # a whole step (at l = 1 that series would have no observation)
            y[-1, -1] = float("nan")
    return y


@pytest.mark.parametrize("l", [1, 7])
def test_plain_and_square_root_steps_agree(l):
    """The two strategies of the one loop give the same moments (with missing entries)."""
    model = random_model(n=3, o=2, seed=1)
    p = prepare(model, _y(2, l, 2), None, True)
    plain = PlainSteps.of(p).finish(run_steps(PlainSteps.of(p)))
    root = SquareRootSteps.of(p).finish(run_steps(SquareRootSteps.of(p)))
    assert isinstance(plain, FilterResult) and isinstance(root, FilterResult)
    for name in ("m_pred", "P_pred", "m", "P", "loglik", "m_next", "P_next"):
        torch.testing.assert_close(getattr(root, name), getattr(plain, name), rtol=1e-9, atol=1e-9)
    assert plain.P.shape == (2, l, 3, 3) and plain.loglik.shape == (2, l)


def test_exact_diffuse_result_is_typed():
    """diffuse_filter returns a dataclass with the filter's result and per-entry records."""
    n, o, b, l = 2, 2, 2, 7
    base = random_model(n=n, o=o, seed=2)
    model = LinearGaussianSSM(
        F=base.F,
        H=base.H,
        Q=base.Q,
        R=torch.diag(torch.diagonal(base.R)),
        m0=base.m0,
        P0=torch.zeros(n, n, dtype=torch.float64),
        P0_diffuse=torch.eye(n, dtype=torch.float64),
    )
    y = _y(b, l, o, seed=3)
    res = diffuse_filter(prepare(model, y, None, True), model.P0_diffuse)
    assert isinstance(res, DiffuseFilterResult)
    assert res.P_inf_pred.shape == (b, l, n, n)
    assert res.entries.v.shape == (b, l, o) and res.entries.M_inf.shape == (b, l, o, n)
    assert float(res.entries.F_star[0, 2, 0]) == 0.0  # the missing entry is marked
    assert torch.equal(res.P_inf_pred[:, 0], torch.eye(n, dtype=torch.float64).expand(b, n, n))
    filt = kalman_filter(model, y)
    torch.testing.assert_close(filt.loglik, res.filtered.loglik, rtol=0, atol=0)
    assert rts_smoother(model, y).P_cross is None


@pytest.mark.parametrize("form", ["joseph", "sqrt"])
def test_offset_at_a_missing_entry_changes_nothing(form):
    """d enters only through the masked observation: its value at a missing entry changes
    no moment and gets a zero gradient."""
    g = torch.Generator().manual_seed(4)
    n, o = 3, 2
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    P = A @ A.mT + torch.eye(n, dtype=torch.float64)
    R = torch.eye(o, dtype=torch.float64) * 0.5
    H = torch.randn(o, n, generator=g, dtype=torch.float64)
    m = torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.tensor([0.3, float("nan")], dtype=torch.float64)
    mask = torch.tensor([True, False])

    def run(d):
        if form == "joseph":
            return update(m, P, y, H, R, d, mask)
        m1, L1, ll = sqrt_update(m, psd_factor(P), y, H, psd_factor(R), d, mask)
        return m1, L1 @ L1.mT, ll

    d = torch.tensor([0.1, 5.0], dtype=torch.float64, requires_grad=True)
    base = run(d)
    other = run(torch.tensor([0.1, -7.0], dtype=torch.float64))
    for a, b in zip(base, other, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(base[0].sum() + base[2], d)
    assert float(grad[1]) == 0.0 and float(grad[0]) != 0.0
