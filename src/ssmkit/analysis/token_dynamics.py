"""Token dynamics of deep selective SSMs in continuous depth (Vo et al., arXiv 2410.03292).

Read a deep Mamba as continuous time t (depth), share the weights across layers and keep only
the S6 scan with its residual (conv, gate and norm dropped). Tokens x_1..x_L in R^d then follow

    dx_l/dt = sum_{j <= l} P_lj * x_j,
    P_lj = (x_l^T S_C^T S_B x_j) * Delta_j * exp(-a * sum_{k=j+1..l} Delta_k),
    Delta_j = softplus(S_Delta x_j + b_Delta),

where S_B, S_C are (n, d), S_Delta is (k, d) with k = 1 (one step size shared by all channels)
or k = d (one per channel, as in Mamba), and the products with P_lj are per channel. In 1-D
(mu = S_C^T S_B, s = S_Delta) the paper proves: mu < 0: every token converges to 0 at rate
O(t^-1/2); mu > 0 and s x_l(0) < 0 for all l: slow divergence, x_l = O((ln t)^l); mu > 0 and
s x_l(0) > 0 for some l: blow-up in finite time. In higher dimensions its 2-D figure shows
divergence when S_C^T S_B has a positive eigenvalue and convergence when all are negative.

ODEs are solved by :func:`ssmkit.core.ode.solve_ivp` (adaptive Dormand-Prince with blow-up
detection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssmkit.core.checks import check_finite, check_tensor
from ssmkit.core.ode import OdeSolution, solve_ivp
from ssmkit.layers.selective_params import input_output_matrix

Tensor = torch.Tensor

SCENARIOS_1D = ("convergent", "slow_divergence", "fast_divergence", "stationary")
SCENARIOS = ("convergent", "divergent", "undetermined")


@dataclass(frozen=True)
class TokenODE:
    """Parameters of the continuous-depth token dynamics.

    The tensors are shared by every layer (the paper's weight sharing across depth).
    """

    S_B: Tensor  # (n, d) input projection S_B
    S_C: Tensor  # (n, d) output projection S_C
    S_Delta: Tensor  # (k, d) step-size projection S_Delta; k = 1 (shared) or d (per channel)
    a: Tensor  # (k,) decay rates a > 0 (A = -a)
    b_Delta: Tensor | None = None  # noqa: N815  (k,) step-size bias b_Delta, None: no bias

    def __post_init__(self) -> None:
        for name in ("S_B", "S_C", "S_Delta", "a"):
            check_tensor(name, getattr(self, name))
            check_finite(name, getattr(self, name))
        n, d = self.S_B.shape if self.S_B.ndim == 2 else (None, None)
        if n is None or self.S_C.shape != (n, d):
            raise ValueError(
                f"S_B and S_C must both have shape (n, d), got {tuple(self.S_B.shape)} and "
                f"{tuple(self.S_C.shape)}"
            )
        if self.S_Delta.ndim != 2 or self.S_Delta.shape[1] != d or self.S_Delta.shape[0] not in (
            1, d,
        ):  # fmt: skip
            raise ValueError(
                f"S_Delta must have shape (1, {d}) or ({d}, {d}), got {tuple(self.S_Delta.shape)}"
            )
        k = self.S_Delta.shape[0]
        if self.a.shape != (k,) or not bool((self.a > 0).all()):
            raise ValueError(f"a must have shape ({k},) with a > 0, got {self.a.tolist()}")
        if self.b_Delta is not None and self.b_Delta.shape != (k,):
            raise ValueError(f"b_Delta must have shape ({k},), got {tuple(self.b_Delta.shape)}")

    @property
    def d(self) -> int:
        """Token dimension d."""
        return self.S_B.shape[1]

    @property
    def M(self) -> Tensor:
        """S_C^T S_B, (d, d)."""
        return input_output_matrix(self.S_B, self.S_C)

    @classmethod
    def one_d(cls, mu: float, s: float, a: float = 1.0, dtype=torch.float64) -> TokenODE:
        """The 1-D system with S_C^T S_B = mu and S_Delta = s."""
        t = lambda v: torch.tensor([[float(v)]], dtype=dtype)  # noqa: E731
        return cls(S_B=t(mu), S_C=t(1.0), S_Delta=t(s), a=t(a)[0])

    @classmethod
    def from_matrix(
        cls, M: Tensor, S_Delta: Tensor, a: float | Tensor = 1.0, b_Delta: Tensor | None = None
    ) -> TokenODE:
        """A system with S_C = I and S_B = M (so S_C^T S_B = M), M (d, d)."""
        check_tensor("M", M)
        if M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise ValueError(f"M must be square (d, d), got shape {tuple(M.shape)}")
        k = S_Delta.shape[0] if S_Delta.ndim == 2 else 1
        a_t = torch.as_tensor(a, dtype=M.dtype).reshape(-1).expand(k).clone()
        return cls(M, torch.eye(M.shape[0], dtype=M.dtype), S_Delta, a_t, b_Delta)

    def rhs(self, t: Tensor, x: Tensor) -> Tensor:
        """dx/dt for tokens x (..., L, d); ``t`` is unused (autonomous system)."""
        return token_rhs(x, self)


def _causal_mask(L: int, device: torch.device) -> Tensor:
    """(L, L) bool, True where j <= l. (Built by comparison: tril/triu start a parallel region
    per call, which costs milliseconds on a busy machine inside an ODE right-hand side.)"""
    idx = torch.arange(L, device=device)
    return idx[:, None] >= idx[None, :]


def step_sizes(x: Tensor, system: TokenODE) -> Tensor:
    """Delta_j = softplus(S_Delta x_j + b_Delta): x (..., L, d) -> (..., L, k)."""
    pre = x @ system.S_Delta.transpose(0, 1).to(x.dtype)
    if system.b_Delta is not None:
        pre = pre + system.b_Delta.to(x.dtype)
    return F.softplus(pre)


def hidden_attention(x: Tensor, system: TokenODE) -> Tensor:
    """P_lj per step-size channel: x (..., L, d) -> (..., L, L, k), zero above the diagonal."""
    L = x.shape[-2]
    delta = step_sizes(x, system)  # (..., L, k)
    gram = x @ system.M.to(x.dtype) @ x.transpose(-1, -2)  # (..., L, L): x_l^T M x_j
    cs = delta.cumsum(dim=-2)  # (..., L, k)
    causal = _causal_mask(L, x.device)  # (l, j): j <= l
    gap = cs.unsqueeze(-2) - cs.unsqueeze(-3)  # (..., l, j, k): sum_{k=j+1..l} Delta_k
    gap = gap.masked_fill(~causal[..., None], 0.0)  # no exp overflow above the diagonal
    decay = torch.exp(-system.a.to(x.dtype) * gap)  # (..., L, L, k)
    P = gram.unsqueeze(-1) * delta.unsqueeze(-3) * decay
    return P * causal[..., None]


def token_rhs(x: Tensor, system: TokenODE) -> Tensor:
    """dx_l/dt = sum_j P_lj * x_j (per channel), x (..., L, d) -> (..., L, d)."""
    P = hidden_attention(x, system)  # (..., L, L, k); k = 1 broadcasts over the d channels
    return (P * x.unsqueeze(-3)).sum(dim=-2)


def token_rhs_1d(x: Tensor, mu: Tensor, s: Tensor, a: Tensor) -> Tensor:
    """The 1-D right-hand side in closed form, batched over systems.

    dx_l/dt = mu x_l sum_{j <= l} x_j^2 Delta_j exp(-a (c_l - c_j)), Delta = softplus(s x),
    c = cumsum(Delta). x (..., L); mu, s, a broadcast against x[..., 0] (one system per item).
    """
    mu, s, a = (torch.as_tensor(v, dtype=x.dtype).unsqueeze(-1) for v in (mu, s, a))
    delta = F.softplus(s * x)  # (..., L)
    cs = delta.cumsum(-1)
    causal = _causal_mask(x.shape[-1], x.device)  # (l, j): j <= l
    gap = (cs.unsqueeze(-1) - cs.unsqueeze(-2)) * causal  # (..., l, j), zero above the diagonal
    w = torch.exp(-a.unsqueeze(-1) * gap) * causal  # (..., l, j)
    return mu * x * (w * (x * x * delta).unsqueeze(-2)).sum(-1)


def simulate(
    system: TokenODE,
    x0: Tensor,
    t_eval: Tensor,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    max_norm: float = 1e8,
    max_steps: int = 20_000,
) -> OdeSolution:
    """Integrate the token ODE from x0 (L, d) (or batched (..., L, d)) over ``t_eval``.

    Returns the solver's ``OdeSolution``: ``y`` (T, ..., L, d); ``status`` "blowup" when a
    token exceeds ``max_norm`` (finite-time blow-up) before ``t_eval[-1]``.
    """
    check_tensor("x0", x0)
    if x0.ndim < 2 or x0.shape[-1] != system.d:
        raise ValueError(f"x0 must have shape (..., L, {system.d}), got {tuple(x0.shape)}")
    return solve_ivp(system.rhs, x0, t_eval, rtol=rtol, atol=atol, max_norm=max_norm,
                     max_steps=max_steps)  # fmt: skip


def simulate_1d(
    mu: Tensor | float,
    s: Tensor | float,
    x0: Tensor,
    t_eval: Tensor,
    a: Tensor | float = 1.0,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    max_norm: float = 1e8,
    max_steps: int = 20_000,
) -> OdeSolution:
    """Integrate a batch of 1-D systems: x0 (..., L), mu/s/a (...,) or scalars.

    Zero tokens stay zero and do not act on the others, so sequences of different lengths can
    share a batch with zeros appended at the end.
    """
    check_tensor("x0", x0)
    if x0.ndim < 1 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a float tensor of shape (..., L), got {tuple(x0.shape)}")
    mu, s, a = (torch.as_tensor(v, dtype=x0.dtype) for v in (mu, s, a))
    if not bool((a > 0).all()):
        raise ValueError(f"a must be > 0, got {a.tolist()}")
    f = lambda t, x: token_rhs_1d(x, mu, s, a)  # noqa: E731
    return solve_ivp(f, x0, t_eval, rtol=rtol, atol=atol, max_norm=max_norm, max_steps=max_steps)


@dataclass(frozen=True)
class BatchSolution:
    """Result of :func:`simulate_1d_batch`: many 1-D systems, each on its own clock."""

    t: Tensor  # (T, B) depth reached by each system at each output point (increasing)
    y: Tensor  # (T, B, L) tokens at those depths
    escaped: Tensor  # (B,) bool: max_l |x_l| passed escape_norm before t_end (a blow-up)
    escape_time: Tensor  # (B,) depth at the first output point past escape_norm, inf if none
    status: str  # the solver's status for the whole batch


def simulate_1d_batch(
    mu: Tensor,
    s: Tensor,
    x0: Tensor,
    t_end: Tensor,
    a: Tensor | float = 1.0,
    escape_norm: float = 1e4,
    n_points: int = 41,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    max_steps: int = 50_000,
) -> BatchSolution:
    """Integrate B independent 1-D systems in one solve, with per-system blow-up detection.

    One solve over a batch would stop at the first blow-up. Instead each system follows its
    own reparameterised clock sigma (the same trajectory, traversed at another speed). With
    tau = t / t_end and F = t_end f (the ODE in tau):

        dx/dsigma = w F(x),  dtau/dsigma = w,  w = (1 - tau) / (1 + |F(x)| / (1 + |x|)) / p,

    with p = 1 + (|x| / (4 escape_norm))^2 so that escaped systems park instead of growing
    without end. |x| grows at most like exp(sigma), a finite-time blow-up at t* is approached
    as sigma -> infinity with t -> t*, and a system without blow-up approaches t_end smoothly
    (1 - tau <= exp(-sigma) once it moves slowly). sigma runs to 40 + 3 ln(escape_norm); a
    system whose max_l |x_l| passes ``escape_norm`` has escaped (the depth where it did is
    below its blow-up time).

    Args:
        mu, s: (B,) per-system S_C^T S_B and S_Delta.
        x0: (B, L) tokens; append zeros to shorter sequences (zero tokens never move nor act
            on the others).
        t_end: (B,) horizon of each system, > 0; a (B,) or scalar decay rates > 0.
        escape_norm: blow-up threshold on max_l |x_l|.
        n_points: output points (in sigma).
    """
    check_tensor("x0", x0)
    if x0.ndim != 2 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a float tensor of shape (B, L), got {tuple(x0.shape)}")
    B, L = x0.shape
    mu, s, a, t_end = (torch.as_tensor(v, dtype=x0.dtype).expand(B) for v in (mu, s, a, t_end))
    if not bool((t_end > 0).all()) or not bool((a > 0).all()):
        raise ValueError("t_end and a must be > 0 for every system")

    def f(sigma: Tensor, z: Tensor) -> Tensor:
        x, tau = z[:, :L], z[:, L]
        dx = t_end[:, None] * token_rhs_1d(x, mu, s, a)  # (B, L), d/dtau
        size = x.norm(dim=-1)
        speed = dx.norm(dim=-1) / (1 + size)
        park = 1 + (size / (4 * escape_norm)) ** 2  # escaped systems slow down: cheap steps
        w = (1 - tau).clamp_min(0) / ((1 + speed) * park)  # (B,)
        return torch.cat([w[:, None] * dx, w[:, None]], dim=-1)

    sigma_end = 40 + 3 * math.log(max(escape_norm, math.e))
    grid = torch.linspace(0, sigma_end, n_points, dtype=x0.dtype)
    z0 = torch.cat([x0, torch.zeros(B, 1, dtype=x0.dtype)], dim=-1)
    sol = solve_ivp(f, z0, grid, rtol=rtol, atol=atol, max_steps=max_steps)
    y, t = sol.y[..., :L], sol.y[..., L] * t_end  # (T, B, L), (T, B)
    over = y.abs().amax(-1) > escape_norm  # (T, B)
    first = over.float().argmax(0)  # (B,)
    t_first = t.gather(0, first[None])[0]
    escape_time = torch.where(over.any(0), t_first, torch.full_like(t_first, math.inf))
    return BatchSolution(t, y, over.any(0), escape_time, sol.status)


@dataclass(frozen=True)
class Prediction:
    """What the theory predicts for a system and its initial tokens."""

    scenario: str  # 1-D: SCENARIOS_1D; d-D: SCENARIOS
    rate: str  # the predicted rate, in words
    blowup_time_bound: float | None  # upper bound on the blow-up time (1-D fast divergence)
    eigenvalues: tuple[float, ...]  # of the symmetric part of S_C^T S_B, ascending


def classify_1d(mu: float, s: float, x0: Tensor | list[float], a: float = 1.0) -> Prediction:
    """The 1-D criterion of Vo et al. for x0 (L,) tokens.

    Zero tokens never move and are ignored. For fast divergence the returned bound follows from
    d|x_l|/dt >= mu |x_l|^3 softplus(s x_l) with softplus(z) >= max(ln 2, z) for z >= 0:
    t* <= min over such l of min(1 / (2 mu ln2 x_l^2), 1 / (3 mu |s| |x_l|^3)).
    """
    x = torch.as_tensor(x0, dtype=torch.float64).reshape(-1)
    mu, s = float(mu), float(s)
    if not (math.isfinite(mu) and math.isfinite(s) and a > 0):
        raise ValueError(f"mu and s must be finite and a > 0, got mu={mu}, s={s}, a={a}")
    eig = (mu,)
    moving = x[x != 0]
    if mu == 0 or moving.numel() == 0:
        return Prediction("stationary", "no motion (dx/dt = 0)", None, eig)
    if mu < 0:
        return Prediction("convergent", "|x_l(t)| = O(t^-1/2) for every token", None, eig)
    fast = moving[s * moving >= 0]
    if fast.numel() == 0:
        return Prediction("slow_divergence", "x_l(t) = O((ln t)^l) for token l", None, eig)
    bounds = 1 / (2 * mu * math.log(2) * fast**2)
    if s != 0:
        bounds = torch.minimum(bounds, 1 / (3 * mu * abs(s) * fast.abs() ** 3))
    bound = float(bounds.min())
    return Prediction("fast_divergence", f"blow-up in finite time t* <= {bound:.4g}", bound, eig)


def classify(system: TokenODE, x0: Tensor, tol: float = 1e-9) -> Prediction:
    """Predicted scenario for tokens x0 (L, d).

    d = 1: :func:`classify_1d`. d > 1: the sign of the quadratic form x^T S_C^T S_B x decides
    (the paper's 2-D figure): a positive eigenvalue of the symmetric part -> "divergent", none
    positive and some negative -> "convergent" (see :func:`spectral_scenario`). For the
    non-symmetric M only the symmetric part enters x^T M x; it equals M when M is symmetric.
    """
    check_tensor("x0", x0)
    if x0.ndim != 2 or x0.shape[-1] != system.d:
        raise ValueError(f"x0 must have shape (L, {system.d}), got {tuple(x0.shape)}")
    if system.d == 1:
        a = float(system.a[0])
        return classify_1d(float(system.M[0, 0]), float(system.S_Delta[0, 0]), x0[:, 0], a)
    M = system.M.double()
    eig = torch.linalg.eigvalsh((M + M.T) / 2)
    return Prediction(spectral_scenario(eig, tol), _RATES[spectral_scenario(eig, tol)], None,
                      tuple(eig.tolist()))  # fmt: skip


_RATES = {
    "convergent": "tokens converge to 0 (O(t^-1/2) in 1-D)",
    "divergent": "tokens diverge (slowly or in finite time, as in 1-D)",
    "undetermined": "the symmetric part of S_C^T S_B vanishes: the criterion does not decide",
}


def spectral_scenario(eigenvalues: Tensor, tol: float = 1e-9) -> str:
    """Scenario from the eigenvalues of the symmetric part of S_C^T S_B.

    "divergent": some eigenvalue > tol * max|eig| (a direction where x^T M x > 0);
    "convergent": none positive and some negative (negative semi-definite: a real layer's M has
    rank n <= d_inner, its null directions neither grow nor shrink at first order);
    "undetermined": all within tolerance of zero.
    """
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    if scale == 0.0:
        return "undetermined"
    if float(eigenvalues.max()) > tol * scale:
        return "divergent"
    return "convergent" if float(eigenvalues.min()) < -tol * scale else "undetermined"


def paper_2d_cases(dtype=torch.float64) -> dict[str, tuple[TokenODE, Tensor]]:
    """The three 2-D cases of the paper's figure: S_C^T S_B with two positive eigenvalues,
    one positive and one negative, two negative; S_Delta = I (per-channel steps), a = 1, and
    the same five tokens. Returns name -> (system, x0 (5, 2))."""
    x0 = torch.tensor(
        [[0.6, 0.4], [-0.5, 0.7], [0.3, -0.8], [-0.7, -0.3], [0.8, 0.1]], dtype=dtype
    )  # fmt: skip
    R = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=dtype)  # a rotation: non-diagonal M
    eye = torch.eye(2, dtype=dtype)
    cases = {}
    for name, lam in (("two_positive", (1.0, 0.5)), ("one_positive", (1.0, -0.5)),
                      ("two_negative", (-1.0, -0.5))):  # fmt: skip
        M = R @ torch.diag(torch.tensor(lam, dtype=dtype)) @ R.T
        cases[name] = (TokenODE.from_matrix(M, eye, 1.0), x0)
    return cases


__all__ = [
    "SCENARIOS",
    "SCENARIOS_1D",
    "BatchSolution",
    "Prediction",
    "TokenODE",
    "classify",
    "classify_1d",
    "hidden_attention",
    "paper_2d_cases",
    "simulate",
    "simulate_1d",
    "simulate_1d_batch",
    "spectral_scenario",
    "step_sizes",
    "token_rhs",
    "token_rhs_1d",
]
