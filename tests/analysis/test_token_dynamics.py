"""Token dynamics of deep selective SSMs: the ODE, its 1-D theory, the 2-D cases, the probe."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.analysis.ablation import AblationRun, ablation_table, summarize_ablation
from ssmkit.analysis.token_dynamics import (
    TokenODE,
    classify,
    classify_1d,
    hidden_attention,
    paper_2d_cases,
    simulate,
    simulate_1d,
    simulate_1d_batch,
    token_rhs,
    token_rhs_1d,
)
from ssmkit.analysis.token_probe import format_report, io_spectrum, io_spectrum_ref, layer_report
from ssmkit.layers.mamba import Mamba
from ssmkit.models.mamba_lm import MambaConfig, MambaLM
from ssmkit.testing import assert_close

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: extra threads only contend for the CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rhs_loop(x: torch.Tensor, system: TokenODE) -> torch.Tensor:
    """dx_l/dt = sum_{j<=l} P_lj x_j written token by token (the definition)."""
    L = x.shape[0]
    delta = torch.nn.functional.softplus(x @ system.S_Delta.T)  # (L, k)
    M = system.S_C.T @ system.S_B
    out = torch.zeros_like(x)
    for l in range(L):
        for j in range(l + 1):
            decay = torch.exp(-system.a * delta[j + 1 : l + 1].sum(0))  # (k,)
            out[l] += (x[l] @ M @ x[j]) * delta[j] * decay * x[j]
    return out


# --------------------------------------------------------------------------- the ODE itself
@pytest.mark.parametrize("k", [1, 3])
def test_rhs_matches_token_by_token_definition(k):
    g = torch.Generator().manual_seed(k)
    S_B, S_C = torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)
    system = TokenODE(S_B, S_C, torch.randn(k, 3, generator=g, dtype=F64),
                      torch.rand(k, generator=g, dtype=F64) + 0.5)  # fmt: skip
    x = torch.randn(5, 3, generator=g, dtype=F64)
    assert_close(token_rhs(x, system), rhs_loop(x, system))
    P = hidden_attention(x, system)
    assert P.shape == (5, 5, k)
    assert bool((P.permute(2, 0, 1).triu(1) == 0).all())  # causal: token l reads j <= l


def test_1d_closed_form_equals_general_rhs_batched():
    g = torch.Generator().manual_seed(0)
    mu, s, a = torch.tensor([-1.3, 0.7]), torch.tensor([0.4, -2.0]), torch.tensor([0.5, 1.5])
    x = torch.randn(2, 6, generator=g, dtype=F64)
    fast = token_rhs_1d(x, mu.double(), s.double(), a.double())
    for b in range(2):
        system = TokenODE.one_d(float(mu[b]), float(s[b]), float(a[b]))
        assert_close(fast[b], token_rhs(x[b, :, None], system)[:, 0])


def test_bad_systems_are_rejected():
    with pytest.raises(ValueError, match="S_Delta"):
        TokenODE.from_matrix(torch.eye(2, dtype=F64), torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="a must"):
        TokenODE.from_matrix(torch.eye(2, dtype=F64), torch.eye(2, dtype=F64), a=-1.0)
    with pytest.raises(ValueError, match="x0"):
        simulate(TokenODE.one_d(1.0, 1.0), torch.zeros(3, 2, dtype=F64), torch.tensor([0.0, 1]))
    with pytest.raises(ValueError, match="mu and s"):
        classify_1d(float("nan"), 1.0, [1.0])


# --------------------------------------------------------------------------- 1-D theory
def test_convergent_tokens_decay_with_slope_minus_half():
    t_eval = torch.cat([torch.zeros(1, dtype=F64), torch.logspace(2, 5, 13, dtype=F64)])
    x0 = torch.tensor([1.0, -0.5, 0.8, 0.3], dtype=F64)
    sol = simulate_1d(-1.0, 1.0, x0, t_eval, a=1.0, rtol=1e-8)
    assert sol.status == "success"
    assert classify_1d(-1.0, 1.0, x0).scenario == "convergent"
    late = t_eval >= 1e3
    A = torch.stack([t_eval[late].log(), torch.ones(int(late.sum()), dtype=F64)], 1)
    slopes = torch.linalg.lstsq(A, sol.y[late].abs().log()).solution[0]  # (L,)
    assert bool(((slopes + 0.5).abs() < 0.05).all()), slopes


def test_slow_divergence_grows_without_blow_up():
    x0 = torch.tensor([0.5, 0.3, 0.9], dtype=F64)  # s x < 0 for every token
    pred = classify_1d(1.0, -1.0, x0)
    assert pred.scenario == "slow_divergence" and pred.blowup_time_bound is None
    t_eval = torch.tensor([0.0, 10.0, 1e3, 1e5], dtype=F64)
    sol = simulate_1d(1.0, -1.0, x0, t_eval)
    assert sol.status == "success"
    growth = sol.y.abs().diff(dim=0)
    assert bool((growth > 0).all())
    # logarithmic growth: the last two decades add less than the first one
    assert bool(((sol.y[3] - sol.y[2]).abs() < 2 * (sol.y[2] - sol.y[1]).abs()).all())


def test_fast_divergence_blows_up_before_the_bound():
    x0 = torch.tensor([0.5, -0.3], dtype=F64)  # s x_1 > 0
    pred = classify_1d(1.0, 1.0, x0)
    assert pred.scenario == "fast_divergence"
    sol = simulate_1d(1.0, 1.0, x0, torch.tensor([0.0, pred.blowup_time_bound], dtype=F64))
    assert sol.status == "blowup" and sol.t_stop < pred.blowup_time_bound


def test_classify_agrees_with_simulation_on_240_random_draws():
    g = torch.Generator().manual_seed(7)
    B, L = 240, 4

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64)

    def signs(*shape):
        return torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()

    mu, s, a = uniform(0.2, 2, B) * signs(B), uniform(0.2, 2, B) * signs(B), uniform(0.5, 2, B)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    x0 = uniform(0.2, 1.5, B, L) * signs(B, L) * (torch.arange(L) < lengths[:, None])
    # make the rare scenario common: a third of the draws with s x_l < 0 for every token
    x0[: B // 3] = -torch.sign(s[: B // 3, None]) * x0[: B // 3].abs()
    preds = [classify_1d(float(mu[b]), float(s[b]), x0[b], float(a[b])) for b in range(B)]
    kinds = [p.scenario for p in preds]
    assert min(kinds.count(k) for k in ("convergent", "slow_divergence", "fast_divergence")) > 20
    bound = torch.tensor([p.blowup_time_bound or math.inf for p in preds], dtype=F64)
    t_end = torch.where(bound.isfinite(), 2 * bound, torch.full_like(bound, 4.0))
    res = simulate_1d_batch(mu, s, x0, t_end, a)
    assert res.status == "success"
    norms = res.y.abs()  # (T, B, L)
    moving = x0 != 0
    for b, kind in enumerate(kinds):
        n, m = norms[:, b][:, moving[b]], moving[b].sum()
        if kind == "fast_divergence":
            assert bool(res.escaped[b]) and float(res.escape_time[b]) <= float(bound[b]), b
            continue
        assert not bool(res.escaped[b]) and float(res.t[-1, b]) > 0.99 * float(t_end[b]), b
        step = n.diff(dim=0)
        if kind == "convergent":
            assert bool((step <= 1e-12).all()) and bool((n[-1] < n[0]).all()), b
        else:  # slow divergence: every token grows, none escapes
            assert bool((step >= -1e-12).all()) and bool((n[-1] > n[0]).all()) and m > 0, b


# --------------------------------------------------------------------------- the 2-D figure
def test_paper_2d_cases_behave_as_described():
    t_eval = torch.linspace(0, 60, 121, dtype=F64)
    for name, (system, x0) in paper_2d_cases().items():
        pred = classify(system, x0)
        sol = simulate(system, x0, t_eval, max_norm=1e6)
        norms = sol.y.norm(dim=-1)  # (T, L)
        if name == "two_negative":
            assert pred.scenario == "convergent" and sol.status == "success"
            assert bool((norms.diff(dim=0) <= 1e-12).all())
            assert bool((norms[-1] < 0.2 * norms[0]).all())
        else:  # a positive eigenvalue: the tokens leave every bounded set (finite-time blow-up)
            assert pred.scenario == "divergent", name
            assert sol.status == "blowup" and sol.t_stop < 1.0, name
            eig = torch.tensor(pred.eigenvalues)
            assert (name == "two_positive") == bool((eig > 0).all())
    # with two positive eigenvalues every token grows along the way (x^T M x > 0 everywhere)
    system, x0 = paper_2d_cases()["two_positive"]
    sol = simulate(system, x0, torch.linspace(0, 0.5, 11, dtype=F64))
    assert bool((sol.y.norm(dim=-1).diff(dim=0) > 0).all())


# --------------------------------------------------------------------------- the model probe
def test_io_spectrum_low_rank_equals_direct():
    g = torch.Generator().manual_seed(3)
    for n, d in ((3, 20), (4, 8), (5, 6)):
        S_B, S_C = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        assert_close(io_spectrum(S_B, S_C), io_spectrum_ref(S_B, S_C), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "bc, scenario", [("positive", "divergent"), ("negative", "convergent"), ("mixed", "divergent")]
)
def test_probe_reads_a_small_random_mamba_lm(bc, scenario):
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=8, n_layer=3, vocab_size=20, d_state=4, bc_param=bc)
    model = MambaLM(cfg, backend="ref")
    report = layer_report(model, torch.randint(0, 20, (2, 7)))
    assert [r.index for r in report] == [0, 1, 2]
    assert report[0].name == "backbone.layers.0.mixer"
    for r in report:
        assert r.scenario == scenario and r.stream
        assert r.eigenvalues.shape == (16,)
        assert r.n_positive == {"positive": 4, "negative": 0, "mixed": 2}[bc]
        assert r.norm_in.shape == r.norm_out.shape == (7,)
    # the residual stream: what leaves layer i enters layer i + 1
    assert_close(report[1].norm_in, report[0].norm_out)
    text = format_report(report)
    assert "backbone.layers.2.mixer" in text and scenario in text


def test_probe_on_a_bare_layer_and_errors():
    layer = Mamba(8, d_state=4, backend="ref")
    report = layer_report(layer, torch.randn(2, 5, 8))
    assert len(report) == 1 and not report[0].stream
    with pytest.raises(ValueError, match="no ssmkit Mamba"):
        layer_report(torch.nn.Linear(2, 2), torch.randn(1, 2))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        layer_report("model", torch.randn(1, 2))


def test_plots_write_pngs(tmp_path):
    from ssmkit.analysis.token_plots import (
        plot_paper_2d_cases,
        plot_token_norms,
        plot_trajectories_1d,
    )

    sol = simulate_1d(-1.0, 1.0, torch.tensor([1.0, -0.5], dtype=F64),
                      torch.linspace(0, 5, 20, dtype=F64))  # fmt: skip
    plot_trajectories_1d(sol, str(tmp_path / "a.png"))
    predicted = plot_paper_2d_cases(str(tmp_path / "b.png"), t_end=2.0, n_points=40)
    assert predicted["two_negative"] == "convergent"
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=8, n_layer=2, vocab_size=20, d_state=4), backend="ref")
    plot_token_norms(layer_report(model, torch.randint(0, 20, (1, 6))), str(tmp_path / "c.png"))
    for name in "abc":
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- ablation summary
def test_ablation_summary_and_table():
    runs = [
        AblationRun("baseline", seed, 1.0 + 0.1 * seed, (2.0, 1.5, 1.0 + 0.1 * seed), 0.5 + seed)
        for seed in range(3)
    ] + [AblationRun("positive", 0, 0.8, (1.9, 1.2, 0.8), 0.7)]
    base, pos = summarize_ablation(runs)
    assert base.variant == "baseline" and base.seeds == (0, 1, 2)
    assert math.isclose(base.loss_mean, 1.1) and math.isclose(base.loss_std, 0.1)
    assert math.isclose(base.accuracy_mean, 1.5) and math.isclose(base.accuracy_std, 1.0)
    assert_close(base.curve_mean, torch.tensor([2.0, 1.5, 1.1], dtype=F64))
    assert math.isnan(pos.loss_std)
    table = ablation_table([base, pos])
    assert "| baseline | 3 | 1.1000 ± 0.1000 | 1.5000 ± 1.0000 |" in table
    with pytest.raises(ValueError, match="repeated seeds"):
        summarize_ablation([*runs, runs[0]])
    with pytest.raises(ValueError, match="equal length"):
        summarize_ablation([runs[0], AblationRun("baseline", 9, 1.0, (1.0,), 0.5)])
    with pytest.raises(ValueError, match="empty"):
        summarize_ablation([])
