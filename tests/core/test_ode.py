"""core/ode.py: exact solutions, convergence order, blow-up detection, gradients, bad inputs."""

import itertools
import math

import pytest
import torch

from ssmkit.core.ode import solve_ivp

F64 = torch.float64


def _decay(a):
    return lambda t, y: a * y


def _oscillator(t, y):
    # y = (position, velocity): x'' = -x, solution x = cos t from (1, 0)
    return torch.stack([y[..., 1], -y[..., 0]], dim=-1)


@pytest.mark.parametrize(
    ("method", "step", "tol"), [("euler", 1e-3, 1e-3), ("rk4", 0.05, 1e-7), ("dopri5", None, 1e-7)]
)
def test_exponential_decay_exact(method, step, tol):
    t = torch.linspace(0, 2, 9, dtype=F64)
    y0 = torch.tensor([1.0, -3.0], dtype=F64)
    sol = solve_ivp(_decay(-0.7), y0, t, method=method, step_size=step, rtol=1e-9, atol=1e-12)
    exact = y0 * torch.exp(-0.7 * t)[:, None]
    assert sol.status == "success" and sol.t_stop == 2.0
    assert sol.y.shape == (9, 2)
    torch.testing.assert_close(sol.t, t)
    assert (sol.y - exact).abs().max() < tol


@pytest.mark.parametrize(
    ("method", "step", "tol"), [("euler", 1e-3, 5e-3), ("rk4", 0.05, 1e-6), ("dopri5", None, 1e-8)]
)
def test_harmonic_oscillator_exact(method, step, tol):
    t = torch.tensor([0.0, 0.3, 1.7, 3.0, 2 * math.pi], dtype=F64)  # uneven spans
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    sol = solve_ivp(_oscillator, y0, t, method=method, step_size=step, rtol=1e-10, atol=1e-12)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], dim=-1)
    assert (sol.y - exact).abs().max() < tol


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("rk4", 4)])
def test_fixed_step_convergence_order(method, order):
    t = torch.tensor([0.0, 2.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    exact = torch.tensor([math.cos(2.0), -math.sin(2.0)], dtype=F64)
    errs = []
    for h in (0.1, 0.05, 0.025):
        sol = solve_ivp(_oscillator, y0, t, method=method, step_size=h)
        errs.append(float((sol.y[-1] - exact).abs().max()))
        assert sol.n_steps == round(2.0 / h)
    for e_big, e_small in itertools.pairwise(errs):
        ratio = e_big / e_small
        assert 2**order * 0.8 < ratio < 2**order * 1.25, (errs, ratio)


def test_dopri5_error_tracks_tolerance_and_steps_grow_with_it():
    t = torch.tensor([0.0, 10.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    exact = torch.tensor([math.cos(10.0), -math.sin(10.0)], dtype=F64)
    errs, steps = [], []
    for rtol in (1e-4, 1e-7, 1e-10):
        sol = solve_ivp(_oscillator, y0, t, rtol=rtol, atol=rtol * 1e-2)
        errs.append(float((sol.y[-1] - exact).abs().max()))
        steps.append(sol.n_steps)
        assert errs[-1] < 100 * rtol
    assert errs[0] > errs[1] > errs[2]
    assert steps[0] < steps[1] < steps[2]


@pytest.mark.parametrize(("method", "step"), [("dopri5", None), ("rk4", 1e-3)])
def test_blowup_of_y_squared_detected_near_one_over_y0(method, step):
    # y' = y^2, y(0) = 2  =>  y = 1 / (1/2 - t): blows up at t = 1/y0 = 0.5
    t_eval = torch.tensor([0.0, 0.2, 0.45, 0.6, 1.0], dtype=F64)
    sol = solve_ivp(
        lambda t, y: y**2,
        torch.tensor([2.0], dtype=F64),
        t_eval,
        method=method,
        step_size=step,
        max_norm=1e4,
    )
    assert sol.status == "blowup"
    assert abs(sol.t_stop - 0.5) < 2e-3  # y > 1e4 only after t = 0.5 - 1e-4
    assert sol.t_stop <= 0.5 + (step or 0.0) + 1e-12  # a fixed step may pass the pole
    torch.testing.assert_close(sol.t, t_eval[:3])  # the prefix reached before the blow-up
    torch.testing.assert_close(sol.y[:, 0], 1 / (0.5 - t_eval[:3]), rtol=1e-4, atol=0)


def test_blowup_without_max_norm_found_by_step_size_underflow():
    sol = solve_ivp(lambda t, y: y**2, torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 2.0]))
    assert sol.status == "blowup"
    assert abs(sol.t_stop - 1.0) < 1e-6
    assert sol.y.shape == (1, 1)


def test_euler_overflow_to_inf_counts_as_blowup():
    sol = solve_ivp(
        lambda t, y: y**3, torch.tensor([1e30]), torch.tensor([0.0, 1.0]), "euler", step_size=0.5
    )
    assert sol.status == "blowup" and sol.n_steps == 1


def test_max_steps_status():
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    sol = solve_ivp(_decay(-1.0), torch.ones(1, dtype=F64), t, "rk4", step_size=0.1, max_steps=15)
    assert sol.status == "max_steps" and sol.n_steps == 15
    assert abs(sol.t_stop - 1.5) < 1e-12
    assert sol.y.shape == (2, 1)
    sol = solve_ivp(_oscillator, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 50.0]), max_steps=5)
    assert sol.status == "max_steps" and sol.n_steps == 5 and 0 < sol.t_stop < 50


@pytest.mark.parametrize(("method", "step"), [("euler", 1e-3), ("rk4", 0.01), ("dopri5", None)])
def test_gradients_match_analytic_derivative(method, step):
    # y(T) = y0 exp(a T): dy/da = T y(T), dy/dy0 = exp(a T)
    a = torch.tensor(-0.8, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=F64, requires_grad=True)
    T = 1.3
    sol = solve_ivp(
        lambda t, y: a * y,
        y0,
        torch.tensor([0.0, T], dtype=F64),
        method,
        step_size=step,
        rtol=1e-10,
        atol=1e-12,
    )
    ga, gy0 = torch.autograd.grad(sol.y[-1].sum(), (a, y0))
    tol = 5e-3 if method == "euler" else 1e-7
    assert abs(float(ga) - T * 1.5 * math.exp(-0.8 * T)) < tol
    assert abs(float(gy0) - math.exp(-0.8 * T)) < tol


def test_batched_y0_equals_items():
    A = torch.tensor([[-0.2, 1.0], [-1.0, -0.1]], dtype=F64)
    y0 = torch.randn(4, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 0.5, 1.4, 3.0], dtype=F64)

    def f(t, y):
        return y @ A.T + 0.1 * torch.sin(y)

    for method, step in (("rk4", 0.01), ("dopri5", None)):
        full = solve_ivp(f, y0, t, method, step_size=step, rtol=1e-10, atol=1e-12)
        assert full.y.shape == (4, 4, 3, 2)
        for i in range(4):
            one = solve_ivp(f, y0[i], t, method, step_size=step, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(full.y[:, i], one.y, rtol=1e-8, atol=1e-9)


def test_single_time_returns_y0_and_time_argument_is_a_tensor():
    y0 = torch.tensor([1.0, 2.0])
    sol = solve_ivp(_decay(1.0), y0, torch.tensor([3.0]))
    assert sol.status == "success" and sol.n_steps == 0 and sol.t_stop == 3.0
    torch.testing.assert_close(sol.y, y0[None])
    # non-autonomous: y' = 2 t, y(1) = 0 => y(3) = 8; t arrives as a 0-d tensor of y's dtype
    seen = []

    def f(t, y):
        seen.append((t.dtype, t.ndim))
        return 2 * t * torch.ones_like(y)

    sol = solve_ivp(f, torch.zeros(1, dtype=F64), torch.tensor([1.0, 3.0], dtype=F64))
    assert abs(float(sol.y[-1, 0]) - 8.0) < 1e-9
    assert set(seen) == {(F64, 0)}


def test_bad_inputs():
    y0 = torch.ones(2)
    t = torch.tensor([0.0, 1.0])
    f = _decay(-1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        solve_ivp(f, y0, torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        solve_ivp(f, y0, torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="t_eval must have shape"):
        solve_ivp(f, y0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="t_eval must be finite"):
        solve_ivp(f, y0, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="unknown method"):
        solve_ivp(f, y0, t, method="rk45")
    with pytest.raises(ValueError, match="step_size"):
        solve_ivp(f, y0, t, method="euler")
    with pytest.raises(ValueError, match="step_size"):
        solve_ivp(f, y0, t, method="rk4", step_size=-0.1)
    with pytest.raises(ValueError, match="y0 must be finite"):
        solve_ivp(f, torch.tensor([float("nan")]), t)
    with pytest.raises(TypeError, match="floating-point"):
        solve_ivp(f, torch.ones(2, dtype=torch.int64), t)
    with pytest.raises(TypeError, match="callable"):
        solve_ivp("f", y0, t)
    with pytest.raises(ValueError, match="rtol"):
        solve_ivp(f, y0, t, rtol=0.0)
    with pytest.raises(ValueError, match="max_norm"):
        solve_ivp(f, y0, t, max_norm=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        solve_ivp(f, y0, t, max_steps=0)
    with pytest.raises(ValueError, match="y's shape"):
        solve_ivp(lambda t, y: y.sum(), y0, t)
