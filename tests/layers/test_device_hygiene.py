"""Device hygiene: factory kwargs, building and running on the meta device, dtype conversion."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.base import apply_factory
from ssmkit.models.mamba_lm import MambaConfig, MambaLM
from ssmkit.models.sequence import IOSpec, ModelConfig, SequenceModel
from tests.layers.layer_zoo import LAYERS, LTI, D


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_layer_built_on_meta_propagates_shapes_on_meta(name):
    # a tensor made on CPU inside forward would meet the meta ones and raise
    with torch.device("meta"):
        layer = LAYERS[name]()
    assert {p.device.type for p in layer.parameters()} == {"meta"}
    y, _ = layer(torch.empty(2, 7, D, device="meta"))
    assert y.shape == (2, 7, D) and y.device.type == "meta"


@pytest.mark.parametrize("name", list(LAYERS))
def test_factory_kwargs_place_and_type_every_parameter(name):
    layer = LAYERS[name](device="meta", dtype=torch.float64)
    for pname, p in layer.named_parameters():
        assert p.device.type == "meta", pname
        assert p.dtype == torch.float64, pname


@pytest.mark.parametrize("name", ["s4d", "s5", "mamba", "mamba2", "attention"])
def test_a_float64_factory_layer_runs_float64(name):
    torch.manual_seed(0)
    layer = LAYERS[name](dtype=torch.float64)
    y, _ = layer(torch.randn(2, 7, D, dtype=torch.float64))
    assert y.dtype == torch.float64 and torch.isfinite(y).all()


def test_bad_factory_arguments_are_clear_errors():
    layer = LAYERS["s4d"]()
    with pytest.raises(TypeError, match=r"floating-point torch\.dtype, got torch\.int64"):
        apply_factory(layer, None, torch.int64)
    with pytest.raises(TypeError, match=r"device must be a str or torch\.device, got int"):
        apply_factory(layer, 3, None)


@pytest.mark.parametrize("name", LTI)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_lti_layers_refuse_clearly(name, dtype):
    layer = LAYERS[name]()
    with pytest.raises(TypeError, match=f"float32 or float64 parameters.*{dtype}.*torch.autocast"):
        layer.to(dtype)
    assert layer.D.dtype == torch.float32  # refused before anything was converted
    with pytest.raises(TypeError, match="float32 or float64"):
        LAYERS[name](dtype=dtype)


def test_bfloat16_mamba_works():
    torch.manual_seed(0)
    layer = LAYERS["mamba"]().to(torch.bfloat16)
    y, _ = layer(torch.randn(2, 7, D, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_models_take_factory_kwargs_and_run_on_meta():
    cfg = ModelConfig(layer="mamba", d_model=D, n_layers=2, d_state=4)
    io = IOSpec(head="regression", n_outputs=2, d_input=3)
    model = SequenceModel(cfg, io, device="meta", dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.float64)}
    out = model(torch.empty(2, 7, 3, device="meta", dtype=torch.float64))
    out = out[0] if isinstance(out, tuple) else out
    assert out.device.type == "meta" and out.shape[0] == 2
    lm = MambaLM(MambaConfig(d_model=D, n_layer=2, vocab_size=11, d_state=4), device="meta")
    assert {p.device.type for p in lm.parameters()} == {"meta"}
