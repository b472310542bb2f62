"""EM with inputs (B u_t, D u_t) and partly observed vectors: the likelihood never decreases,
and EM's fixed point is the maximum likelihood estimate."""

import pytest
import torch

from ssmkit.probabilistic import LinearGaussianSSM, log_likelihood, sample
from ssmkit.probabilistic.em import em_step, fit_em
from ssmkit.probabilistic.fit import ParametricModel, fit_mle
from tests.probabilistic.brute import random_model

DT = torch.float64


def _true():
    """One state, two observed series, one input."""

    def t(x):
        return torch.tensor(x, dtype=DT)

    return LinearGaussianSSM(
        F=t([[0.8]]),
        B=t([[0.5]]),
        H=t([[1.0], [0.5]]),
        D=t([[0.3], [-0.2]]),
        Q=t([[0.5]]),
        R=t([[0.3, 0.1], [0.1, 0.4]]),
        m0=t([0.0]),
        P0=t([[1.0]]),
    )


def _data(model, b, l, seed, missing=0.3):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, l, 1, generator=g, dtype=DT)
    _, y = sample(model, b, l, u=u, generator=g)
    drop = torch.rand(y.shape, generator=g) < missing
    drop[:, :, 1] &= ~drop[:, :, 0]  # mostly partly observed steps, a few empty ones
    drop[:, 5] = True  # one whole missing step per series
    return y.masked_fill(drop, float("nan")), u


def _start():
    m = _true()
    return LinearGaussianSSM(
        F=0.3 * m.F, B=0 * m.B, H=m.H, D=0 * m.D, Q=2 * m.Q, R=torch.eye(2, dtype=DT),
        m0=m.m0, P0=m.P0,
    )  # fmt: skip


def _mle_spec():
    """F, B, D, Q, R free (H, m0, P0 fixed as in EM below); natural = model entries."""
    base = _true()

    def unpack(theta):
        F, B, D1, D2, logq, l11, l21, l22 = theta
        LR = torch.stack([torch.stack([l11.exp(), 0 * l11]), torch.stack([l21, l22.exp()])])
        return F, B, torch.stack([D1, D2]), logq.exp(), LR @ LR.mT

    def build(theta):
        F, B, D, q, R = unpack(theta)
        return LinearGaussianSSM(
            F=F.reshape(1, 1), B=B.reshape(1, 1), H=base.H, D=D.reshape(2, 1),
            Q=q.reshape(1, 1), R=R, m0=base.m0, P0=base.P0,
        )  # fmt: skip

    def natural(theta):
        F, B, D, q, R = unpack(theta)
        return torch.cat([F[None], B[None], D, q[None], R[0, :1], R[1]])

    names = ("F", "B", "D1", "D2", "Q", "R11", "R21", "R22")
    theta0 = torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=DT)
    return ParametricModel(build, natural, names, theta0)


def _natural(m):
    R = m.R
    return torch.stack([m.F[0, 0], m.B[0, 0], m.D[0, 0], m.D[1, 0], m.Q[0, 0], R[0, 0],
                        R[1, 0], R[1, 1]])  # fmt: skip


def _model_at(params):
    F, B, D1, D2, q, R11, R21, R22 = params
    m = _true()
    t = torch.stack
    return LinearGaussianSSM(
        F=F.reshape(1, 1), B=B.reshape(1, 1), H=m.H, D=t([D1, D2]).reshape(2, 1),
        Q=q.reshape(1, 1), R=t([t([R11, R21]), t([R21, R22])]), m0=m.m0, P0=m.P0,
    )  # fmt: skip


@pytest.mark.slow
def test_em_inputs_partly_observed_monotone_and_mle_is_its_fixed_point():
    """From a poor start the likelihood rises at every step and stays below the maximum; from
    the maximum likelihood estimate (fitted by L-BFGS) EM does not move: the MLE is a fixed
    point, which a wrong E-step for the missing entries or the inputs would break."""
    y, u = _data(_true(), 4, 100, seed=0)
    assert bool((torch.isnan(y).any(-1) & ~torch.isnan(y).all(-1)).any())  # partly observed
    est = ("F", "B", "D", "Q", "R")
    res = fit_em(_start(), y, u, iterations=25, estimate=est)
    lls = torch.tensor(res.logliks, dtype=DT)
    assert bool((lls.diff() >= -1e-9 * lls.abs()[1:]).all()), lls.diff().min()
    assert float(lls[-1] - lls[0]) > 10.0
    mle = fit_mle(_mle_spec(), y, u, method="sequential")
    assert float(log_likelihood(res.model, y, u).sum()) <= mle.loglik + 1e-6
    at_mle = _model_at(mle.params)
    torch.testing.assert_close(_natural(at_mle), mle.params)
    again = fit_em(at_mle, y, u, iterations=3, estimate=est)
    assert again.logliks[0] == pytest.approx(mle.loglik, abs=1e-8)
    assert max(again.logliks) - again.logliks[0] < 1e-6
    torch.testing.assert_close(_natural(again.model), mle.params, rtol=0, atol=2e-5)
    moved = _natural(em_step(res.model, y, u, est)[0]) - _natural(res.model)
    assert float(moved.abs().max()) > 1e-4  # away from the optimum EM does move


@pytest.mark.parametrize("l", [2, 7, 63])
def test_every_em_step_raises_the_likelihood_all_parameters(l):
    """All of F, B, H, D, Q, R, m0, P0 free, two states, three partly observed series."""
    model = random_model(2, 3, seed=l, inputs=2)
    y, u = _data_random(model, l)
    start = random_model(2, 3, seed=100 + l, inputs=2)
    res = fit_em(start, y, u, iterations=6)
    lls = torch.tensor(res.logliks, dtype=DT)
    assert bool((lls.diff() >= -1e-9 * lls.abs()[1:]).all()), lls
    assert float(lls[-1]) > float(lls[0])
    torch.testing.assert_close(
        log_likelihood(start, y, u).sum(), torch.tensor(res.logliks[0], dtype=DT)
    )


def _data_random(model, l):
    g = torch.Generator().manual_seed(l)
    u = torch.randn(3, l, 2, generator=g, dtype=DT)
    _, y = sample(model, 3, l, u=u, generator=g)
    drop = torch.rand(y.shape, generator=g) < 0.3
    drop[:, 0, 0] = False
    return y.masked_fill(drop, float("nan")), u


def test_bad_inputs():
    y, u = _data(_true(), 1, 7, seed=1)
    m = _true()
    with pytest.raises(ValueError, match="unknown parameter 'A'"):
        fit_em(m, y, u, estimate=("A",))
    no_b = LinearGaussianSSM(**{**m.__dict__, "B": None})
    with pytest.raises(ValueError, match="estimate names 'B' but the model has no B"):
        fit_em(no_b, y, u, estimate=("B",))
    with pytest.raises(ValueError, match="u is required"):
        fit_em(m, y)
    with pytest.raises(ValueError, match="at least 2 time steps"):
        em_step(m, y[:, :1], u[:, :1])
    tv = LinearGaussianSSM(**{**m.__dict__, "D": m.D.expand(7, 2, 1)})
    with pytest.raises(ValueError, match=r"time-invariant, unbatched D .* got shape \(7, 2, 1\)"):
        fit_em(tv, y, u)
