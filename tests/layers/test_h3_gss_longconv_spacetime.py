"""H3, GSS, long convolutions and SpaceTime (issue 21): forms agree, definitions, AR(p) recovery,
long convolutions refuse streaming, the kernel regularisers. SpaceTime also runs in the LTI
matrix of ``conftest.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ssmkit.cli import main
from ssmkit.core.fftconv import conv_bidirectional_ref, conv_ref
from ssmkit.core.kernels import kernel_dense
from ssmkit.layers.gss import GSS
from ssmkit.layers.h3 import H3, H3State
from ssmkit.layers.longconv import LongConv, squash_smooth
from ssmkit.layers.lti import BlockConfig
from ssmkit.layers.spacetime import SpaceTime, companion, kernel_companion
from ssmkit.models.sequence import ALL_LAYERS, LAYERS, IOSpec, ModelConfig, SequenceModel
from ssmkit.testing import assert_close, randn
from tests.layers.conftest import run_steps

BARE = BlockConfig(activation="identity", output="none")


def _perturbed(layer, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer.double()


def _h3(head_dim=1):
    torch.manual_seed(0)
    return _perturbed(H3(4, N=4, shift_size=3, head_dim=head_dim))


def _gss():
    torch.manual_seed(0)
    return _perturbed(GSS(4, d_ssm=3, expand=2, N=4))


STATEFUL = {"h3": _h3, "h3-heads2": lambda: _h3(2), "gss": _gss}


# -- H3 and GSS: conv = scan = step, split = whole, padded = items, gradients --------------------


@pytest.mark.parametrize("name", STATEFUL)
@pytest.mark.parametrize("L", [1, 7, 63, 129])
def test_conv_scan_and_step_agree(name, L):
    layer = STATEFUL[name]()
    x = randn(2, L, 4, dtype=torch.float64, seed=L)
    y_step, s_step = run_steps(layer, x)
    for mode in ("conv", "scan"):
        layer.mode = mode
        y, s = layer(x, return_state=True)
        assert_close(y, y_step)
        for got, want in zip(
            s if isinstance(s, tuple) else [s],
            s_step if isinstance(s, tuple) else [s_step],
            strict=True,
        ):
            assert_close(got, want)


@pytest.mark.parametrize("name", STATEFUL)
@pytest.mark.parametrize("k", [1, 6])
def test_split_with_state_equals_whole(name, k):
    layer = STATEFUL[name]()
    x = randn(2, 13, 4, dtype=torch.float64, seed=3)
    y, _ = layer(x, return_state=True)
    y1, s1 = layer(x[:, :k], return_state=True)
    y2, _ = layer(x[:, k:], state=s1, return_state=True)
    assert_close(torch.cat([y1, y2], dim=1), y)


@pytest.mark.parametrize("name", STATEFUL)
def test_padded_batch_equals_items(name):
    layer = STATEFUL[name]()
    lengths = torch.tensor([13, 6, 1])
    x = randn(3, 13, 4, dtype=torch.float64, seed=5)
    x_pad = x.clone()
    for i, n in enumerate(lengths):
        x_pad[i, n:] = 1e3
    y, s = layer(x_pad, lengths=lengths, return_state=True)
    for i, n in enumerate(lengths.tolist()):
        yi, si = layer(x[i : i + 1, :n], return_state=True)
        assert_close(y[i : i + 1, :n], yi)
        assert bool((y[i, n:] == 0).all())
        for got, want in zip(
            s if isinstance(s, tuple) else [s], si if isinstance(si, tuple) else [si], strict=True
        ):
            assert_close(got[i : i + 1], want)


@pytest.mark.parametrize("name", STATEFUL)
def test_gradients_reach_every_parameter_and_gradcheck(name):
    layer = STATEFUL[name]()
    for mode in ("conv", "scan"):
        layer.mode = mode
        layer.zero_grad()
        y, _ = layer(randn(2, 9, 4, dtype=torch.float64))
        (y * randn(*y.shape, dtype=y.dtype, seed=1)).sum().backward()
        for pname, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().max() > 0, (pname, mode)
    params = dict(layer.named_parameters())
    x = randn(1, 5, 4, dtype=torch.float64, seed=2).requires_grad_(True)

    def f(x, *values):
        return functional_call(layer, dict(zip(params, values, strict=True)), (x,))[0]

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params.values()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_h3_equals_its_definition():
    """O_h = Q_h^T SSM_diag(K'_h V_h^T), K' = shift SSM of K, by direct sums (conv_ref)."""
    layer = _h3(head_dim=2)
    x = randn(2, 11, 4, dtype=torch.float64, seed=8)
    q, k, v = layer.W_Q(x), layer.W_K(x), layer.W_V(x)
    taps = layer.shift.weight[:, 0].flip(-1)  # (d, m): tap j weighs k_{t-j}
    k = conv_ref(k, taps)
    H, dh = layer.heads, layer.head_dim
    k, v, q = (t.unflatten(-1, (H, dh)) for t in (k, v, q))  # (b, l, H, d_h)
    kv = torch.einsum("blhi,blhj->blhij", k, v)
    K_diag = layer.diag.kernel(11)[0]  # (H, l)
    s = torch.zeros_like(kv)
    for i in range(dh):
        for j in range(dh):
            s[..., i, j] = conv_ref(kv[..., i, j], K_diag, layer.diag.D)
    o = torch.einsum("blhi,blhij->blhj", q, s).flatten(-2)
    assert_close(layer(x)[0], layer.W_O(o))


def test_h3_and_gss_bad_inputs():
    with pytest.raises(ValueError, match="divisible by head_dim"):
        H3(6, head_dim=4)
    with pytest.raises(ValueError, match="d_ssm must be >= 1"):
        GSS(4, d_ssm=0)
    layer = _h3()
    with pytest.raises(TypeError, match="state must be a H3State"):
        layer(randn(2, 3, 4, dtype=torch.float64), state=torch.zeros(2, 4))
    bad = H3State(torch.zeros(2, 4, 5, dtype=torch.float64), layer.initial_state(2).diag)
    with pytest.raises(ValueError, match=r"shift must have shape \(2, 4, 2\)"):
        layer.step(randn(2, 4, dtype=torch.float64), bad)


# -- long convolutions ---------------------------------------------------------------------------


def test_squash_and_smooth_by_hand():
    K = torch.tensor([[0.5, -0.002, 0.3, -0.4, 0.001]], dtype=torch.float64)
    sq = torch.tensor([0.49, 0.0, 0.29, -0.39, 0.0], dtype=torch.float64)
    assert_close(squash_smooth(K, 0.01, 1)[0], sq)
    want = torch.stack(
        [sq[:2].mean(), sq[:3].mean(), sq[1:4].mean(), sq[2:5].mean(), sq[3:].mean()]
    )
    assert_close(squash_smooth(K, 0.01, 3)[0], want)
    assert torch.equal(squash_smooth(K, 0.0, 1), K)


def test_smoothing_regulariser_lowers_roughness_and_squash_sparsifies():
    K = torch.randn(4, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tv = lambda k: (k[..., 1:] - k[..., :-1]).abs().sum()  # noqa: E731
    assert tv(squash_smooth(K, 0.0, 5)) < 0.5 * tv(K)
    high = lambda k: torch.fft.rfft(k)[..., 64:].abs().square().sum()  # noqa: E731
    assert high(squash_smooth(K, 0.0, 7)) < 0.1 * high(K)  # a low-pass filter
    zeros = (squash_smooth(K, 0.5, 1) == 0).float().mean()
    assert 0.3 < zeros < 0.5  # P(|N(0, 1)| < 0.5) = 0.383


def _longconv_ref(layer: LongConv, x):
    """The definition by direct sums: y = post(K * x + D x)."""
    K = layer.kernel(x.shape[1])
    y = conv_bidirectional_ref(x, K[0], K[1]) if layer.bidirectional else conv_ref(x, K[0])
    return layer._post(y + layer.D * x)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("L", [1, 7, 63, 101])
def test_longconv_fft_equals_direct_sum_with_gradients(L, bidirectional):
    torch.manual_seed(0)
    layer = _perturbed(LongConv(3, l_max=40, smooth=5, bidirectional=bidirectional))
    x = randn(2, L, 3, dtype=torch.float64, seed=L).requires_grad_(True)
    g = randn(2, L, 3, dtype=torch.float64, seed=1)
    y, _ = layer(x)
    grads = torch.autograd.grad((y * g).sum(), [x, *layer.parameters()])
    y_ref = _longconv_ref(layer, x)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), [x, *layer.parameters()])
    assert_close(y, y_ref)
    for (pname, _), a, b in zip(
        [("x", x), *layer.named_parameters()], grads, grads_ref, strict=True
    ):
        assert_close(a, b), pname
        assert a.abs().max() > 0, pname


def test_longconv_gradcheck_padding_and_batch():
    torch.manual_seed(0)
    layer = _perturbed(LongConv(3, l_max=6, lam=0.01, smooth=3))
    params = dict(layer.named_parameters())
    x = randn(1, 8, 3, dtype=torch.float64, seed=2).requires_grad_(True)

    def f(x, *values):
        return functional_call(layer, dict(zip(params, values, strict=True)), (x,))[0]

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params.values()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)
    lengths = torch.tensor([9, 4, 1])
    x = randn(3, 9, 3, dtype=torch.float64, seed=5)
    x_pad = x.clone()
    x_pad[1, 4:] = x_pad[2, 1:] = 1e3
    y, _ = layer(x_pad, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        assert_close(y[i : i + 1, :n], layer(x[i : i + 1, :n])[0])
        assert bool((y[i, n:] == 0).all())


def test_longconv_refuses_streaming_with_a_clear_error():
    layer = LongConv(3, l_max=8)
    x = torch.randn(2, 5, 3)
    for call in (
        lambda: layer.step(x[:, 0], torch.zeros(2, 3)),
        lambda: layer.initial_state(2),
        lambda: layer(x, return_state=True),
        lambda: layer(x, state=torch.zeros(2, 3)),
    ):
        with pytest.raises(ValueError, match="LongConv has no recurrent state"):
            call()
    for kw, match in [({"smooth": 4}, "smooth must be an odd"), ({"lam": -1.0}, "lam must be"),
                      ({"l_max": 0}, "l_max must be >= 1")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            LongConv(3, **kw)


def test_longconv_model_trains_and_refuses_step_and_chunks(tmp_path):
    io = IOSpec("tokens", 7, vocab_size=7, max_length=16)
    model = SequenceModel(ModelConfig(layer="longconv", d_model=8, n_layers=2), io)
    x = torch.randint(7, (2, 16))
    out = model(x, lengths=torch.tensor([16, 5]))
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    assert not model.streams
    with pytest.raises(ValueError, match="layer='longconv'"):
        model.initial_state(2)
    with pytest.raises(ValueError, match="no recurrent state"):
        next(model.forward_chunks(x, chunk=4))


@pytest.mark.parametrize("name", ["h3", "gss", "longconv", "spacetime"])
def test_cli_train_model_name(name, tmp_path):
    assert name in ALL_LAYERS and (name in LAYERS) == (name != "longconv")
    args = ["train", "--task", "selective-copying", "--model", name, "--out", str(tmp_path / name),
            "--length", "12", "--n_data", "3", "--n_train", "16", "--n_val", "8", "--n_test", "8",
            "--d_model", "8", "--n_layers", "1", "--d_state", "4", "--batch_size", "8",
            "--epochs", "1", "--max_steps", "2", "--progress", "off", "--no-plot"]  # fmt: skip
    assert main(args) == 0


# -- SpaceTime ------------------------------------------------------------------------------------


def test_companion_matrix_is_shift_plus_last_column():
    a = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert_close(companion(a) @ x, torch.tensor([0.3, 1.6, 2.9], dtype=torch.float64))


@pytest.mark.parametrize("N, L", [(1, 1), (4, 1), (4, 7), (5, 63), (8, 3), (3, 301)])
def test_companion_fft_kernel_equals_powering_with_gradients(N, L):
    g = torch.Generator().manual_seed(N * 1000 + L)
    a = (0.3 * torch.randn(3, N, generator=g, dtype=torch.float64)).requires_grad_(True)
    B = torch.randn(3, N, generator=g, dtype=torch.float64).requires_grad_(True)
    C = torch.randn(2, 3, N, generator=g, dtype=torch.float64).requires_grad_(True)
    w = torch.randn(2, 3, L, generator=g, dtype=torch.float64)
    K = kernel_companion(a, B, C, L)
    K_ref = kernel_dense(companion(a), B, C, L)
    assert_close(K, K_ref)
    grads = torch.autograd.grad((K * w).sum(), [a, B, C])
    grads_ref = torch.autograd.grad((K_ref * w).sum(), [a, B, C], materialize_grads=True)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want)
    if N == 4 and L == 7:
        assert torch.autograd.gradcheck(lambda *t: kernel_companion(*t, L), (a, B, C))


def _ar_impulse(phi: torch.Tensor, L: int) -> torch.Tensor:
    psi = torch.zeros(L, dtype=phi.dtype)
    psi[0] = 1.0
    for t in range(1, L):
        for i in range(1, min(t, len(phi)) + 1):
            psi[t] += phi[i - 1] * psi[t - i]
    return psi


def _spacetime_ar(phi, N):
    layer = SpaceTime(1, N=N, block=BARE).double()
    p = len(phi)
    with torch.no_grad():
        layer.a.zero_()
        layer.a[0, N - p :] = phi.flip(0)  # a_{N-i} = phi_i
        layer.B.zero_()
        layer.B[0, 0] = 1.0
        layer.C[0, 0] = _ar_impulse(phi, N)
        layer.D.zero_()
    return layer


def test_spacetime_represents_an_ar_process_exactly():
    """a = the AR coefficients reversed, B = e_1, C = the first N impulse-response taps: the
    kernel is the AR(p) impulse response and noise through the layer is the AR(p) series,
    here with a repeated root (phi from (1 - 0.9 z)^2), which no diagonal SSM represents."""
    phi = torch.tensor([1.8, -0.81], dtype=torch.float64)
    layer = _spacetime_ar(phi, N=2)
    assert_close(layer.kernel(200)[0, 0], _ar_impulse(phi, 200))
    eps = randn(1, 200, 1, dtype=torch.float64, seed=3)
    u = torch.zeros(200, dtype=torch.float64)
    for t in range(200):
        u[t] = eps[0, t, 0] + sum(phi[i] * u[t - 1 - i] for i in range(2) if t - 1 - i >= 0)
    for mode in ("conv", "scan"):
        layer.mode = mode
        assert_close(layer(eps)[0][0, :, 0], u)


def _ar_series(phi, b, L, seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(b, L + 100, generator=g, dtype=torch.float64)
    u = torch.zeros_like(eps)
    for t in range(eps.shape[1]):
        u[:, t] = eps[:, t] + sum(phi[i] * u[:, t - 1 - i] for i in range(len(phi)) if t > i)
    return u[:, 100:].unsqueeze(-1)  # (b, L, 1), burn-in dropped


def test_spacetime_closed_loop_recovers_an_ar3_process():
    """Trained to predict the next input (u_hat_{t+1} = K x_t), the closed-loop companion SSM
    recovers the AR(3) coefficients as its one-step kernel, and its closed-loop forecast
    follows the noise-free AR recursion."""
    phi = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    torch.manual_seed(0)
    layer = SpaceTime(1, N=4, closed_loop=True, block=BARE, lr=None).double()
    u = _ar_series(phi, 16, 128, seed=0)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss = F.mse_loss(layer.next_input(u)[:, :-1], u[:, 1:])
        loss.backward()
        opt.step()
    k_next = kernel_companion(layer.a, layer.B, layer.K.unsqueeze(0), 6)[0, 0].detach()
    assert_close(k_next[:3], phi, atol=0.06, rtol=0)
    assert k_next[3:].abs().max() < 0.06
    ctx = _ar_series(phi, 2, 64, seed=1)
    with torch.no_grad():
        pred = layer.forecast(ctx, 5)  # (2, 5, 1): y = C x + D u_hat
        u_hat = layer.next_input(ctx)[:, -1, 0]
    want = list(ctx[:, -3:, 0].unbind(1))
    for _ in range(5):
        want.append(phi[0] * want[-1] + phi[1] * want[-2] + phi[2] * want[-3])
    assert_close(u_hat, want[3], atol=0.1, rtol=0)
    assert pred.shape == (2, 5, 1) and bool(torch.isfinite(pred).all())


def test_spacetime_forecast_equals_closed_loop_matrix_powers():
    torch.manual_seed(0)
    layer = _perturbed(SpaceTime(3, N=4, closed_loop=True, block=BlockConfig(output="linear")))
    x = randn(2, 9, 3, dtype=torch.float64, seed=4)
    lengths = torch.tensor([9, 6])
    _, x_T = layer(x, lengths=lengths, return_state=True)  # (b, h, N)
    A, B, C, K = companion(layer.a), layer.B, layer.C[0], layer.K
    A_cl = A + B.unsqueeze(-1) * K.unsqueeze(-2)  # (h, N, N): A + B K
    want, state = [], x_T
    for _ in range(4):
        u_hat = (K * state).sum(-1)
        state = (A_cl @ state.unsqueeze(-1)).squeeze(-1)
        want.append(layer._post((C * state).sum(-1) + layer.D * u_hat))
    assert_close(layer.forecast(x, 4, lengths=lengths), torch.stack(want, 1))
    # next_input (FFT) = K x_t from the step loop
    state, preds = layer.initial_state(2), []
    for t in range(9):
        _, state = layer.step(x[:, t], state)
        preds.append((K * state).sum(-1))
    assert_close(layer.next_input(x), torch.stack(preds, 1))
    with pytest.raises(ValueError, match="closed_loop=True"):
        SpaceTime(3, N=4).forecast(x.float(), 2)
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        layer.forecast(x, 0)


def test_make_layer_refuses_bidirectional_h3():
    io = IOSpec("classification", 3, vocab_size=5, max_length=8, causal=False)
    with pytest.raises(ValueError, match="h3"):
        SequenceModel(ModelConfig(layer="h3", bidirectional=True, d_model=8, d_state=4), io)
    model = SequenceModel(
        ModelConfig(layer="longconv", bidirectional=True, d_model=8, n_layers=1), io
    )
    assert model(torch.randint(5, (2, 8))).shape == (2, 3)
    assert math.isfinite(float(model(torch.randint(5, (2, 8))).detach().sum()))
