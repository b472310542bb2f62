"""Probe a real Mamba model for the token-dynamics criterion of Vo et al. (arXiv 2410.03292).

For every Mamba layer of a model (any ``nn.Module`` holding :class:`ssmkit.layers.mamba.Mamba`
layers, taken in module order) this reads S_B and S_C from the B and C rows of the effective
``x_proj`` weight, computes the spectrum of the symmetric part of S_C^T S_B and the scenario it
predicts, and records token norms entering and leaving the layer on a given input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.analysis.token_dynamics import spectral_scenario
from ssmkit.core.checks import check_tensor
from ssmkit.layers.mamba import Mamba

Tensor = torch.Tensor


def io_spectrum_ref(S_B: Tensor, S_C: Tensor) -> Tensor:
    """Eigenvalues (d,) of (M + M^T) / 2 with M = S_C^T S_B, ascending: the direct definition."""
    S_B, S_C = S_B.double(), S_C.double()
    M = S_C.T @ S_B
    return torch.linalg.eigvalsh((M + M.T) / 2)


def io_spectrum(S_B: Tensor, S_C: Tensor) -> Tensor:
    """Eigenvalues (d,) of the symmetric part of S_C^T S_B, ascending, in O(n^2 d + n^3).

    With Q = [S_C; S_B] (2n, d) and J = [[0, I], [I, 0]] / 2, the symmetric part is Q^T J Q,
    whose nonzero eigenvalues are those of G^1/2 J G^1/2 with G = Q Q^T (2n, 2n); the other
    d - 2n eigenvalues are zero. Falls back to :func:`io_spectrum_ref` when 2n >= d.
    """
    check_tensor("S_B", S_B)
    check_tensor("S_C", S_C)
    if S_B.ndim != 2 or S_B.shape != S_C.shape:
        raise ValueError(f"S_B and S_C must both be (n, d), got {tuple(S_B.shape)} and "
                         f"{tuple(S_C.shape)}")  # fmt: skip
    n, d = S_B.shape
    if 2 * n >= d:
        return io_spectrum_ref(S_B, S_C)
    Q = torch.cat([S_C, S_B]).double()  # (2n, d)
    lam, V = torch.linalg.eigh(Q @ Q.T)
    root = (V * lam.clamp_min(0).sqrt()) @ V.T  # G^1/2, (2n, 2n)
    eye = torch.eye(n, dtype=Q.dtype)
    J = torch.cat([torch.cat([0 * eye, eye], 1), torch.cat([eye, 0 * eye], 1)]) / 2
    small = torch.linalg.eigvalsh(root @ J @ root)
    zeros = torch.zeros(d - 2 * n, dtype=Q.dtype)
    return torch.cat([small, zeros]).sort().values


@dataclass(frozen=True)
class LayerDynamics:
    """The criterion and the measured token norms of one Mamba layer."""

    index: int  # position among the model's Mamba layers (module order)
    name: str  # module path, e.g. "backbone.layers.0.mixer"
    eigenvalues: Tensor  # (d_inner,) of the symmetric part of S_C^T S_B, ascending, float64
    n_positive: int  # eigenvalues > tol * max|eig|
    n_negative: int  # eigenvalues < -tol * max|eig|
    scenario: str  # "divergent" | "convergent" | "undetermined" (spectral_scenario)
    norm_in: Tensor  # (l,) token norms entering the block (residual stream if found), batch mean
    norm_out: Tensor  # (l,) token norms leaving it
    stream: bool  # True: norms of the enclosing block's residual stream; False: the mixer's

    @property
    def max_eigenvalue(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def min_eigenvalue(self) -> float:
        return float(self.eigenvalues[0])


def mamba_layers(model: nn.Module) -> list[tuple[str, Mamba]]:
    """(name, layer) for every Mamba layer of ``model`` in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Mamba)]


def _first_tensor(value: object) -> Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _enclosing_blocks(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Mamba name -> its parent module when the parent is a block (not the model, a container,
    or a module holding several Mamba layers)."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        parent_name = name.rpartition(".")[0]
        if not parent_name or parent_name not in modules:
            continue
        parent = modules[parent_name]
        if isinstance(parent, nn.ModuleList | nn.ModuleDict | nn.Sequential):
            continue
        if sum(isinstance(c, Mamba) for c in parent.children()) == 1:
            out[name] = parent
    return out


def _token_norms(model: nn.Module, x: object, layers: list[tuple[str, Mamba]]):
    """Run ``model(x)`` once and return name -> (norm_in (l,), norm_out (l,), stream)."""
    blocks = _enclosing_blocks(model, [n for n, _ in layers])
    seen: dict[str, tuple[Tensor, Tensor, bool]] = {}
    handles = []

    def hook_for(name: str, stream: bool, d_model: int):
        def hook(module, args, output):
            t_in, t_out = _first_tensor(args), _first_tensor(output)
            ok = t_in is not None and t_out is not None and t_in.ndim == 3
            if ok and t_in.shape[-1] == d_model and t_out.shape == t_in.shape:
                norms = (t_in.detach().double().norm(dim=-1).mean(0),
                         t_out.detach().double().norm(dim=-1).mean(0))  # fmt: skip
                if stream or name not in seen:  # the block's stream wins over the mixer's
                    seen[name] = (*norms, stream)

        return hook

    try:
        for name, layer in layers:
            handles.append(layer.register_forward_hook(hook_for(name, False, layer.d_model)))
            if name in blocks:
                hook = hook_for(name, True, layer.d_model)
                handles.append(blocks[name].register_forward_hook(hook))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def layer_report(model: nn.Module, x: object, tol: float = 1e-9) -> list[LayerDynamics]:
    """Per Mamba layer: spectrum of S_C^T S_B, predicted scenario, token norms on input ``x``.

    Args:
        model: any module holding Mamba layers (a bare :class:`Mamba`, a ``MambaLM``, ...).
        x: the input ``model(x)`` accepts (a (b, l, d) tensor, token ids (b, l), ...).
        tol: eigenvalues within tol * max|eig| of zero count as zero.

    Returns:
        One :class:`LayerDynamics` per Mamba layer, in module order.
    """
    layers = mamba_layers(model)
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) holds no ssmkit Mamba layer")
    norms = _token_norms(model, x, layers)
    report = []
    for i, (name, layer) in enumerate(layers):
        with torch.no_grad():
            S_B, S_C = layer.bc_matrices()
            eig = io_spectrum(S_B, S_C)
        scale = float(eig.abs().max())
        if name not in norms:
            raise ValueError(f"layer {name!r} did not run on the given input; check x")
        n_in, n_out, stream = norms[name]
        report.append(LayerDynamics(
            index=i, name=name, eigenvalues=eig,
            n_positive=int((eig > tol * scale).sum()), n_negative=int((eig < -tol * scale).sum()),
            scenario=spectral_scenario(eig, tol), norm_in=n_in, norm_out=n_out, stream=stream,
        ))  # fmt: skip
    return report


def format_report(report: list[LayerDynamics]) -> str:
    """A fixed-width table of a :func:`layer_report`, one row per layer."""
    head = (f"{'layer':>5}  {'name':<28} {'#pos':>5} {'#neg':>5} {'max eig':>10} "
            f"{'min eig':>10}  {'scenario':<12} {'|x| in':>9} {'|x| out':>9}")  # fmt: skip
    rows = [head, "-" * len(head)]
    for r in report:
        rows.append(
            f"{r.index:>5}  {r.name[-28:]:<28} {r.n_positive:>5} {r.n_negative:>5} "
            f"{r.max_eigenvalue:>10.3g} {r.min_eigenvalue:>10.3g}  {r.scenario:<12} "
            f"{float(r.norm_in.mean()):>9.4g} {float(r.norm_out.mean()):>9.4g}"
        )
    kinds = {r.stream for r in report}
    where = "residual stream" if kinds == {True} else "mixer input/output" if kinds == {False} \
        else "residual stream where found, else mixer input/output"  # fmt: skip
    rows.append(f"(|x|: mean token norm of the {where}; scenario from the sign of the "
                "eigenvalues of the symmetric part of S_C^T S_B, Vo et al. 2024)")  # fmt: skip
    return "\n".join(rows)


__all__ = [
    "LayerDynamics",
    "format_report",
    "io_spectrum",
    "io_spectrum_ref",
    "layer_report",
    "mamba_layers",
]
