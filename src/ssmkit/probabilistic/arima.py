"""Seasonal ARIMA(p, d, q)(P, D, Q, s) as a state space model, fitted like statsmodels' SARIMAX.

The model is phi(L) Phi(L^s) w_t = c + theta(L) Theta(L^s) eta_t, eta_t ~ N(0, sigma2), on
w_t = (1 - L)^d (1 - L^s)^D y_t, with lag polynomials phi(L) = 1 - phi_1 L - ... - phi_p L^p,
theta(L) = 1 + theta_1 L + ... + theta_q L^q (Box & Jenkins; Durbin & Koopman 2012, sec. 3.4).
The state (Harvey 1989, sec. 3.4.1) is

    alpha_t = [y_{t-1}, ..., y_{t-k}, a_t (r), mu]        k = d + s D, r = max(p*, q* + 1)

where p* = p + s P and q* = q + s Q are the degrees of the multiplied polynomials:
a_{t+1} = T a_t + R eta_t with T's first column (phi*_1, ..., phi*_p*) and ones above the
diagonal, R = (1, theta*_1, ..., theta*_{r-1}); y_t = sum_j delta_j y_{t-j} + a_t[0] + mu
with (1 - L)^d (1 - L^s)^D = 1 - sum_j delta_j L^j. The lags of y get an exactly diffuse
prior, a_t the stationary one (discrete Lyapunov equation), and the constant state mu =
c / phi*(1) (present with ``trend="c"``, which needs d = D = 0) is known given the parameters.
statsmodels keeps other (unimodular) combinations of the lagged y in its state, which gives
the same exact diffuse likelihood.

Exogenous regressors (SARIMAX's ``exog`` with its default ``mle_regression=True``): y_t =
beta^T x_t + z_t with z_t the SARIMA process above; the state tracks z, and beta^T x_t enters the
observation as D u_t with D = beta^T and u_t = x_t (so fits pass ``u=exog``).

Parameters, named and ordered as in SARIMAX: intercept, the exog coefficients (x1.. or the
given names), ar.L1.., ma.L1.., ar.S.L{s}.., ma.S.L{s}.., sigma2. AR polynomials are kept
stationary and MA polynomials invertible by partial autocorrelations x / sqrt(1 + x^2) mapped
by :func:`.spec.pacf_to_ar` (as SARIMAX's ``enforce_stationarity`` and
``enforce_invertibility``; Monahan 1984).
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_choice, check_int, check_tensor
from ssmkit.probabilistic.fit import ParametricModel
from ssmkit.probabilistic.model import LinearGaussianSSM
from ssmkit.probabilistic.spec import pacf_to_ar
from ssmkit.probabilistic.structural import stationary_covariance

Tensor = torch.Tensor


def poly_mul(a: Tensor, b: Tensor) -> Tensor:
    """Coefficients (len a + len b - 1,) of the product of two polynomials in L (a[j] and
    b[j] multiply L^j); differentiable."""
    i = torch.arange(a.shape[0]).unsqueeze(1) + torch.arange(b.shape[0])  # (len a, len b)
    out = torch.zeros(a.shape[0] + b.shape[0] - 1, dtype=a.dtype, device=a.device)
    return out.index_add(0, i.flatten(), torch.outer(a, b).flatten())


def lag_polynomial(coef: Tensor, step: int, sign: float) -> Tensor:
    """1 + sign (c_1 L^step + c_2 L^{2 step} + ...) as coefficients in L."""
    out = torch.zeros(step * coef.shape[0] + 1, dtype=coef.dtype, device=coef.device)
    out = out.index_put((torch.tensor([0]),), torch.ones(1, dtype=coef.dtype))
    idx = step * torch.arange(1, coef.shape[0] + 1)
    return out.index_put((idx,), sign * coef)


def differencing(d: int, D: int, s: int) -> Tensor:
    """delta (k,): (1 - L)^d (1 - L^s)^D = 1 - sum_j delta_j L^j, k = d + s D."""
    poly = torch.ones(1, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    for _ in range(d):
        poly = poly_mul(poly, lag_polynomial(one, 1, -1.0))
    for _ in range(D):
        poly = poly_mul(poly, lag_polynomial(one, s, -1.0))
    return -poly[1:]


def sarima_model(
    phi: Tensor,
    theta: Tensor,
    Phi: Tensor,
    Theta: Tensor,
    sigma2: Tensor,
    s: int = 0,
    d: int = 0,
    D: int = 0,
    intercept: Tensor | None = None,
    check: bool = True,
    beta: Tensor | None = None,
) -> LinearGaussianSSM:
    """The state space form of one SARIMA model (see the module docstring).

    Args:
        phi: (p,) AR, theta: (q,) MA, Phi: (P,) seasonal AR, Theta: (Q,) seasonal MA
            coefficients; sigma2: () innovation variance; s: seasonal period (0 or >= 2).
        d, D: orders of ordinary and seasonal differencing.
        intercept: () the constant c of the ARMA equation (needs d = D = 0), or None.
        check: test stationarity (the fitting transform guarantees it; its line search
            may reach a root at 1 up to rounding, which only makes the likelihood low).
        beta: (k,) coefficients of exogenous regressors (the model then has D = beta^T and
            takes u = exog (b, l, k)), or None.

    Raises:
        ValueError: the AR polynomial is not stationary, or an intercept with differencing.
    """
    dtype = sigma2.dtype
    for x in (phi, theta, Phi, Theta):
        dtype = torch.promote_types(dtype, x.dtype)
    phi, theta, Phi, Theta, sigma2 = (x.to(dtype) for x in (phi, theta, Phi, Theta, sigma2))
    ar = poly_mul(lag_polynomial(phi, 1, -1.0), lag_polynomial(Phi, max(s, 1), -1.0))
    ma = poly_mul(lag_polynomial(theta, 1, 1.0), lag_polynomial(Theta, max(s, 1), 1.0))
    p_star, q_star = ar.shape[0] - 1, ma.shape[0] - 1
    r = max(p_star, q_star + 1)
    T = torch.diag(torch.ones(r - 1, dtype=dtype), 1)
    T = T.index_put((torch.arange(p_star), torch.zeros(p_star, dtype=torch.long)), -ar[1:])
    R = torch.cat([ma, torch.zeros(r - q_star - 1, dtype=dtype)])  # (r,)
    Q_a = sigma2 * torch.outer(R, R)
    if check and p_star and float(torch.linalg.eigvals(T.detach()).abs().max()) >= 1:
        raise ValueError("the AR polynomial is not stationary (a root inside the unit circle)")
    P_a = stationary_covariance(T, Q_a)  # (r, r)
    delta = differencing(d, D, s).to(dtype)  # (k,)
    k = delta.shape[0]
    if intercept is not None and k:
        raise ValueError(f"an intercept needs d = D = 0, got d = {d}, D = {D}")
    c = 1 if intercept is not None else 0
    n = k + r + c
    e_a = torch.zeros(r, dtype=dtype).index_put((torch.tensor([0]),), torch.ones(1, dtype=dtype))
    H = torch.cat([delta, e_a, torch.ones(c, dtype=dtype)]).unsqueeze(0)  # (1, n)
    F = torch.zeros(n, n, dtype=dtype)
    F = F.index_put((torch.arange(k, k + r).unsqueeze(1), torch.arange(k, k + r)), T)
    if k:
        F = F.index_put((torch.zeros(n, dtype=torch.long), torch.arange(n)), H[0])
        shift = torch.arange(1, k)
        F = F.index_put((shift, shift - 1), torch.ones(k - 1, dtype=dtype))
    if c:
        F = F.index_put((torch.tensor([n - 1]), torch.tensor([n - 1])), torch.ones(1, dtype=dtype))
    Q = torch.zeros(n, n, dtype=dtype)
    Q = Q.index_put((torch.arange(k, k + r).unsqueeze(1), torch.arange(k, k + r)), Q_a)
    P0 = torch.zeros(n, n, dtype=dtype)
    P0 = P0.index_put((torch.arange(k, k + r).unsqueeze(1), torch.arange(k, k + r)), P_a)
    m0 = torch.zeros(n, dtype=dtype)
    if c:
        mu = intercept / ar.sum()  # the mean c / phi*(1)
        m0 = m0.index_put((torch.tensor([n - 1]),), mu.reshape(1))
    Pd = None
    if k:
        Pd = torch.diag(torch.cat([torch.ones(k, dtype=dtype), torch.zeros(r + c, dtype=dtype)]))
    R_obs = torch.zeros(1, 1, dtype=dtype)
    D_obs = None if beta is None else beta.to(dtype).reshape(1, -1)  # (1, k)
    return LinearGaussianSSM(F=F, H=H, Q=Q, R=R_obs, m0=m0, P0=P0, D=D_obs, P0_diffuse=Pd)


def _difference(x: Tensor, delta: Tensor) -> Tensor:
    """(1 - L)^d (1 - L^s)^D applied along time: x (b, l, j) -> (b, l - k, j)."""
    k = delta.shape[0]
    if not k:
        return x
    lagged = torch.stack([x[:, k - j : x.shape[1] - j] for j in range(1, k + 1)], -1)
    return x[:, k:] - lagged @ delta.to(x.dtype)


def _check_exog(exog: Tensor, y: Tensor, names: tuple[str, ...] | None) -> tuple[str, ...]:
    check_tensor("exog", exog)
    if exog.ndim != 3 or exog.shape[:2] != y.shape[:2] or exog.shape[2] == 0:
        raise ValueError(
            f"exog must have shape (b, l, k) = ({y.shape[0]}, {y.shape[1]}, k >= 1) like y, "
            f"got {tuple(exog.shape)}"
        )
    if not bool(torch.isfinite(exog).all()):
        b, t, j = (int(i) for i in torch.nonzero(~torch.isfinite(exog))[0])
        raise ValueError(
            f"exog must be finite (regressors cannot be missing); exog[{b}, {t}, {j}] = "
            f"{float(exog[b, t, j])}"
        )
    k = exog.shape[2]
    names = tuple(f"x{i}" for i in range(1, k + 1)) if names is None else tuple(names)
    if len(names) != k:
        raise ValueError(f"exog_names must name the {k} exog column(s), got {len(names)}")
    return names


def sarima_spec(
    y: Tensor,
    order: tuple[int, int, int],
    seasonal_order: tuple[int, int, int, int] = (0, 0, 0, 0),
    trend: str = "n",
    exog: Tensor | None = None,
    exog_names: tuple[str, ...] | None = None,
) -> ParametricModel:
    """The SARIMA family with free coefficients and variance, for :func:`.fit.fit_mle`.

    Args:
        y: (b, l, 1) data (starting values only: sigma2 from the variance of the differenced
            series, the intercept from its mean, the exog coefficients by least squares on the
            differenced series).
        order: (p, d, q).
        seasonal_order: (P, D, Q, s); s >= 2 when P, D or Q > 0.
        trend: "n" (none) or "c" (a constant; only without differencing).
        exog: (b, l, k) exogenous regressors (no missing values), or None. Pass the same
            tensor as ``u`` to :func:`.fit.fit_mle`.
        exog_names: names of the k regressors (default x1, x2, ... as SARIMAX on arrays).

    Returns:
        A :class:`ParametricModel` named as statsmodels' SARIMAX parameters. Fit it with
        ``diffuse="exact"`` (the lags of y are diffuse when d or D > 0).
    """
    check_tensor("y", y)
    if y.ndim != 3 or y.shape[-1] != 1:
        raise ValueError(f"y must have shape (b, l, 1), got {tuple(y.shape)}")
    if len(order) != 3:
        raise ValueError(f"order must be (p, d, q), got {order}")
    if len(seasonal_order) != 4:
        raise ValueError(f"seasonal_order must be (P, D, Q, s), got {seasonal_order}")
    p, d, q = (check_int(n, v, 0) for n, v in zip(("p", "d", "q"), order, strict=True))
    P, D, Q, s = (
        check_int(n, v, 0) for n, v in zip(("P", "D", "Q", "s"), seasonal_order, strict=True)
    )
    check_choice("trend", trend, ("n", "c"))
    if (P or D or Q) and s < 2:
        raise ValueError(f"a seasonal part (P, D, Q) = {(P, D, Q)} needs a period s >= 2, got {s}")
    if trend == "c" and (d or D):
        raise ValueError(f"trend='c' needs d = D = 0 (no differencing), got d = {d}, D = {D}")
    if exog is None and exog_names is not None:
        raise ValueError("exog_names was given without exog")
    xnames = () if exog is None else _check_exog(exog, y, exog_names)
    c, kx = int(trend == "c"), len(xnames)
    names = ["intercept"] * c + list(xnames) + [f"ar.L{i}" for i in range(1, p + 1)]
    names += [f"ma.L{i}" for i in range(1, q + 1)]
    names += [f"ar.S.L{s * i}" for i in range(1, P + 1)]
    names += [f"ma.S.L{s * i}" for i in range(1, Q + 1)]
    names.append("sigma2")
    sizes = [c, kx, p, q, P, Q, 1]

    delta = differencing(d, D, max(s, 1)).to(y.dtype)
    w = _difference(y, delta)[..., 0]  # (b, l - k) the differenced series
    if w.shape[1] < 2:
        raise ValueError(
            f"y is too short for d = {d}, D = {D}, s = {s}: {y.shape[1]} time steps leave "
            f"{w.shape[1]} differenced value(s)"
        )
    # the intercept is optimised in units of the data's spread, so that one step of the
    # optimiser moves it about as far as the other parameters; each exog coefficient in
    # units of spread(w) / spread(its differenced regressor), so that a unit step moves
    # beta^T x by about spread(w). The spread is the standard deviation with an intercept
    # (which absorbs the mean), else the root mean square: without an intercept a regressor
    # that differencing makes constant (a time trend under d = 1) acts as one, with std 0
    # (rounding noise, which put ~1e9 units in one step) but rms |constant|.
    scale = float(torch.nan_to_num(w.flatten()[~torch.isnan(w.flatten())].std(), nan=1.0))
    scale = scale if scale > 0 else 1.0
    beta0 = torch.zeros(kx, dtype=y.dtype)
    beta_scale = torch.ones(kx, dtype=y.dtype)
    if kx:
        xd = _difference(exog.to(y.dtype), delta)  # (b, l - k, kx)
        rms = xd.flatten(0, 1).square().mean(0).sqrt()  # (kx,)
        spread = xd.flatten(0, 1).std(0).nan_to_num(0.0) if c else rms
        spread = torch.where(spread > 1e-8 * rms, spread, rms)  # constant: its size
        beta_scale = scale / torch.where(spread > 0, spread, torch.ones_like(spread))
        ok = ~torch.isnan(w.flatten())
        X = xd.flatten(0, 1)[ok]
        if c:
            X = torch.cat([torch.ones(X.shape[0], 1, dtype=y.dtype), X], 1)
        coef = torch.linalg.lstsq(X, w.flatten()[ok].unsqueeze(-1)).solution[:, 0]
        beta0 = coef[c:]
        w = w - xd @ beta0  # the starting values below come from the regression residuals

    def pacf(x: Tensor) -> Tensor:  # R -> (-1, 1) as x / sqrt(1 + x^2): no rounding to 1
        return x / torch.sqrt(1 + x * x)

    def natural(theta: Tensor) -> Tensor:
        cst, bx, a, m, sa, sm, v = torch.split(theta, sizes)
        return torch.cat(
            [
                scale * cst,
                beta_scale.to(theta.dtype) * bx,
                pacf_to_ar(pacf(a)),
                -pacf_to_ar(pacf(m)),
                pacf_to_ar(pacf(sa)),
                -pacf_to_ar(pacf(sm)),
                torch.exp(v),
            ]
        )

    def build(theta: Tensor) -> LinearGaussianSSM:
        cst, bx, a, m, sa, sm, v = torch.split(natural(theta), sizes)
        icpt = cst[0] if c else None
        return sarima_model(a, m, sa, sm, v[0], s, d, D, icpt, check=False, beta=bx if kx else None)

    def start(w: Tensor) -> Tensor:  # (b, l') -> (b, k)
        mean = torch.nanmean(w, 1, keepdim=True).nan_to_num(0.0)
        var = torch.nanmean((w - mean) ** 2, 1, keepdim=True).nan_to_num(1.0).clamp_min(1e-8)
        zeros = torch.zeros(w.shape[0], p + q + P + Q, dtype=w.dtype)
        bx = (beta0 / beta_scale).expand(w.shape[0], kx)
        return torch.cat([mean[:, :c] / scale, bx, zeros, var.log()], 1)

    theta0 = start(w.reshape(1, -1))[0]
    return ParametricModel(build, natural, tuple(names), theta0, None, start(w), s)
