"""The compiled log-likelihood (method="numba") against the reference filter: values and ALL
gradients (by autograd through the reference loop), steady state, gradcheck, bad inputs."""

import pytest
import torch

from ssmkit.probabilistic import LinearGaussianSSM, log_likelihood, sample
from ssmkit.probabilistic import kalman_numba as kn
from ssmkit.probabilistic.fast_filter import NumbaLoglik, numba_log_likelihood, numba_supports
from ssmkit.probabilistic.io import load_nile
from ssmkit.probabilistic.spec import ar_spec, structural_spec

pytest.importorskip("numba")
D = torch.float64


def _leaves(n, o, seed, batch=None, diffuse=False):
    """Free tensors and a builder: Q = A A^T + 0.1 I, P0 = B B^T, R = diag(exp(r))."""
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch, 1)
    lead0 = () if batch is None else (batch,)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=D)

    leaves = {
        "F": 0.9 * torch.linalg.qr(rnd(*lead, n, n)).Q * 0.9,
        "H": rnd(*lead, o, n),
        "A": rnd(*lead, n, n) / n**0.5,
        "r": rnd(*lead, o) * 0.3,
        "m0": rnd(*lead0, n),
        "B": rnd(*lead0, n, n) / n**0.5,
    }
    leaves = {k: v.requires_grad_(True) for k, v in leaves.items()}
    Pd = None
    if diffuse:
        Pd = torch.diag(torch.tensor([1.0] * (n - 1) + [0.0], dtype=D))

    def build():
        eye = torch.eye(n, dtype=D)
        x = leaves
        return LinearGaussianSSM(
            F=x["F"],
            H=x["H"],
            Q=x["A"] @ x["A"].mT + 0.1 * eye,
            R=torch.diag_embed(torch.exp(x["r"])),
            m0=x["m0"],
            P0=x["B"] @ x["B"].mT,
            P0_diffuse=Pd,
        )

    return leaves, build


def _data(build, b, l, missing, seed=1):
    with torch.no_grad():
        m = build()
        plain = LinearGaussianSSM(m.F, m.H, m.Q, m.R, m.m0, m.P0 + 0.0)
        _, y = sample(plain, b, l, generator=torch.Generator().manual_seed(seed))
    drop = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed + 1)) < missing
    drop[:, 0] = False  # every series observed at least once
    return y.masked_fill(drop, float("nan"))


def _compare(leaves, build, y, diffuse, burn=0, steady_tol=1e-12):
    ref = log_likelihood(build(), y, method="sequential", diffuse=diffuse, burn=burn)
    g_ref = torch.autograd.grad(ref.sum(), list(leaves.values()), allow_unused=True)
    got = numba_log_likelihood(build(), y, diffuse, burn=burn, steady_tol=steady_tol)
    g_got = torch.autograd.grad(got.sum(), list(leaves.values()), allow_unused=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-9)
    for name, a, b in zip(leaves, g_got, g_ref, strict=True):
        if b is None:
            assert a is None or bool((a == 0).all()), name
            continue
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8, msg=f"gradient of {name}")


@pytest.mark.parametrize("l", [1, 7, 63, 201])
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_values_and_gradients_match_reference(l, missing):
    """Multivariate y (o = 2, partly missing vectors), known prior."""
    leaves, build = _leaves(3, 2, seed=l)
    y = _data(build, 3, l, missing)
    _compare(leaves, build, y, "approximate")


@pytest.mark.parametrize("diffuse", ["exact", "approximate"])
@pytest.mark.parametrize("l", [1, 7, 63])
def test_diffuse_multivariate_per_series(diffuse, l):
    """Per-series matrices (b, 1, ., .), a diffuse block, partly missing o = 2 vectors."""
    leaves, build = _leaves(3, 2, seed=10 + l, batch=2, diffuse=True)
    y = _data(build, 2, l, 0.25)
    _compare(leaves, build, y, diffuse, burn=0)


@pytest.mark.parametrize("exact", [True, False])
def test_structural_models_with_gaps_match_reference(exact):
    """Trend + seasonal + AR on the Nile with gaps, through spec.build (theta gradients)."""
    y = load_nile().y.view(1, -1, 1).clone()
    y[0, [3, 10, 11, 50]] = float("nan")
    spec = structural_spec(y, "local-linear-trend", 4, 2)
    theta = (spec.theta0 + 0.3 * torch.arange(spec.theta0.numel(), dtype=D).sin()).requires_grad_()
    diffuse, burn = ("exact", 0) if exact else ("approximate", 5)
    ref = log_likelihood(spec.build(theta), y, diffuse=diffuse, burn=burn)
    (g_ref,) = torch.autograd.grad(ref.sum(), theta)
    got = log_likelihood(spec.build(theta), y, method="numba", diffuse=diffuse, burn=burn)
    (g_got,) = torch.autograd.grad(got.sum(), theta)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-7, atol=1e-9)


def _steady_steps(model, y, tol):
    m = model
    arrays = [
        x.detach().expand(1, *x.shape).contiguous().numpy()
        for x in (m.F, m.H, m.Q, torch.diagonal(m.R), m.m0, m.P0, m.P0_diffuse)
    ]
    _, saved = kn.loglik_forward(*arrays, y.numpy(), True, 0, tol, True)
    return int((saved[3] >= 0).sum())


@pytest.mark.parametrize("gaps", [False, True])
def test_steady_state_is_exact_within_tolerance(gaps):
    """Reusing the gain once P has converged changes value and gradient by < 1e-9 relative,
    and it does kick in (also again after a gap)."""
    y = load_nile().y.view(1, -1, 1).repeat(1, 5, 1).clone()  # 500 steps
    if gaps:
        y[0, [120, 121, 300]] = float("nan")
    spec = structural_spec(y, "local-linear-trend")
    theta = spec.theta0.clone().requires_grad_(True)
    vals, grads = [], []
    for tol in (-1.0, 1e-12):
        ll = numba_log_likelihood(spec.build(theta), y, steady_tol=tol)
        vals.append(ll)
        grads.append(torch.autograd.grad(ll.sum(), theta)[0])
    torch.testing.assert_close(vals[1], vals[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        model = spec.build(theta)
    assert _steady_steps(model, y, -1.0) == 0
    assert _steady_steps(model, y, 1e-12) > 300
    # against the reference filter too
    ref = log_likelihood(spec.build(theta.detach()), y)
    torch.testing.assert_close(vals[1].detach(), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("diffuse", ["exact", "approximate"])
def test_gradcheck(diffuse):
    """torch.autograd.gradcheck of the Function on a tiny model (n = 2, o = 2, l = 5)."""
    g = torch.Generator().manual_seed(0)
    n, o, l = 2, 2, 5
    F = (0.5 * torch.randn(1, n, n, generator=g, dtype=D)).requires_grad_()
    H = torch.randn(1, o, n, generator=g, dtype=D).requires_grad_()
    A = torch.randn(1, n, n, generator=g, dtype=D)
    Q = (A @ A.mT + 0.5 * torch.eye(n, dtype=D)).requires_grad_()
    R = (0.5 + torch.rand(1, o, generator=g, dtype=D)).requires_grad_()
    m0 = torch.randn(1, n, generator=g, dtype=D).requires_grad_()
    P0 = (0.3 * torch.eye(n, dtype=D)).unsqueeze(0).requires_grad_()
    # exact: a full-rank P_inf, so that no perturbation flips a step's diffuse/regular choice
    Pinf = torch.eye(n, dtype=D) if diffuse == "exact" else torch.diag(torch.tensor([1.0, 0.0]))
    Pinf = Pinf.to(D).unsqueeze(0).requires_grad_()
    y = torch.randn(1, l, o, generator=g, dtype=D)
    y[0, 2, 1] = float("nan")
    exact = diffuse == "exact"

    def fn(F, H, Q, R, m0, P0, Pinf):
        sym = [0.5 * (x + x.mT) for x in (Q, P0, Pinf)]  # the filter reads symmetric matrices
        return NumbaLoglik.apply(F, H, sym[0], R, m0, sym[1], sym[2], y, exact, 1, -1.0)

    assert torch.autograd.gradcheck(fn, (F, H, Q, R, m0, P0, Pinf), atol=1e-6, rtol=1e-5)


def test_auto_takes_numba_and_falls_back():
    _, build = _leaves(2, 1, seed=0)
    y = _data(build, 2, 9, 0.2)
    with torch.no_grad():
        model = build()
        assert numba_supports(model)
        auto = log_likelihood(model, y, method="auto")
        torch.testing.assert_close(auto, log_likelihood(model, y, method="numba"), rtol=0, atol=0)
        tv = LinearGaussianSSM(
            model.F.expand(9, 2, 2), model.H, model.Q, model.R, model.m0, model.P0
        )
        assert not numba_supports(tv)
        torch.testing.assert_close(
            log_likelihood(tv, y, method="auto"), log_likelihood(tv, y), rtol=0, atol=0
        )


def test_bad_inputs_name_the_argument():
    _, build = _leaves(2, 2, seed=0)
    y = _data(build, 1, 6, 0.0)
    with torch.no_grad():
        m = build()
    tv = LinearGaussianSSM(m.F.repeat(6, 1, 1), m.H, m.Q, m.R, m.m0, m.P0)
    with pytest.raises(
        ValueError, match=r"time-invariant F \(no l axis\), got F of shape \(6, 2, 2\)"
    ):
        log_likelihood(tv, y, method="numba")
    full_R = LinearGaussianSSM(m.F, m.H, m.Q, m.R + 0.1, m.m0, m.P0)
    with pytest.raises(ValueError, match="needs a diagonal R"):
        log_likelihood(full_R, y, method="numba")
    with pytest.raises(ValueError, match="u must be None"):
        log_likelihood(m, y, torch.zeros(1, 6, 1, dtype=D), method="numba")
    with pytest.raises(ValueError, match="method"):
        log_likelihood(m, y, method="fast")
    with pytest.raises(ValueError, match="diffuse"):
        log_likelihood(m, y, method="numba", diffuse="none")
    with pytest.raises(ValueError, match="burn"):
        log_likelihood(m, y, method="numba", burn=6)


def test_ar_spec_matches_sarimax():
    sm = pytest.importorskip("statsmodels.api")
    y = load_nile().y.view(1, -1, 1)
    x = (y - y.mean()) / 100
    spec = ar_spec(x, 2)
    params = torch.tensor([0.5, 0.2, 1.3], dtype=D)
    theta = torch.cat(
        [torch.atanh(torch.tensor([0.5 / (1 - 0.2), 0.2], dtype=D)), params[2:].log()]
    )
    torch.testing.assert_close(spec.natural(theta), params)
    model = sm.tsa.SARIMAX(x[0, :, 0].numpy(), order=(2, 0, 0))
    assert spec.names == tuple(model.param_names)
    ll = log_likelihood(spec.build(theta), x, method="numba")
    torch.testing.assert_close(float(ll), float(model.loglike(params.numpy())), rtol=1e-10, atol=0)


@pytest.mark.slow
def test_batch_equals_series_one_by_one():
    """A batch large enough for the parallel kernels equals its series run one at a time
    (values and gradients); per-series matrices and exact diffuse."""
    b = kn.PARALLEL_MIN
    leaves, build = _leaves(3, 2, seed=5, batch=b, diffuse=True)
    y = _data(build, b, 40, 0.2)
    ll = numba_log_likelihood(build(), y)
    grads = torch.autograd.grad(ll.sum(), list(leaves.values()))
    with torch.no_grad():
        full = build()
    for i in (0, b // 2, b - 1):
        one = {k: v[i : i + 1].detach().clone().requires_grad_(True) for k, v in leaves.items()}
        model = LinearGaussianSSM(
            F=one["F"],
            H=one["H"],
            Q=one["A"] @ one["A"].mT + 0.1 * torch.eye(3, dtype=D),
            R=torch.diag_embed(torch.exp(one["r"])),
            m0=one["m0"],
            P0=one["B"] @ one["B"].mT,
            P0_diffuse=full.P0_diffuse,
        )
        li = numba_log_likelihood(model, y[i : i + 1])
        gi = torch.autograd.grad(li.sum(), list(one.values()))
        torch.testing.assert_close(li[0], ll[i], rtol=1e-13, atol=0)
        for g_all, g_one in zip(grads, gi, strict=True):
            torch.testing.assert_close(g_one[0], g_all[i], rtol=1e-12, atol=1e-14)
