"""Checkpoints in and out: mamba_ssm's native layout, saving for transformers, ``ssmkit export``."""

from __future__ import annotations

import fractions
import json

import pytest
import torch
from safetensors.torch import save_file

from ssmkit.cli import main
from ssmkit.models import MambaConfig, MambaLM, load_pretrained
from ssmkit.models.export import from_pretrained
from ssmkit.train.run import load_run

IDS = torch.randint(0, 50, (2, 23), generator=torch.Generator().manual_seed(1))


def random_lm(version: int, **overrides) -> MambaLM:
    torch.manual_seed(0)
    extra = {"headdim": 8, "ngroups": 2, "chunk_size": 8} if version == 2 else {}
    cfg = MambaConfig(d_model=16, n_layer=2, vocab_size=56, d_state=4, version=version,
                      **{**extra, **overrides})  # fmt: skip
    return MambaLM(cfg).eval()


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


def write_mamba_ssm(root, model: MambaLM, safetensors: bool = False, **config) -> None:
    """A checkpoint in mamba_ssm's layout (MambaLMHeadModel.save_pretrained) from ``model``."""
    cfg = model.cfg
    ssm = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand}
    if cfg.version == 2:
        ssm |= {"layer": "Mamba2", "headdim": cfg.headdim, "ngroups": cfg.ngroups,
                "chunk_size": cfg.chunk_size}  # fmt: skip
    root.mkdir(exist_ok=True)
    base = {"d_model": cfg.d_model, "d_intermediate": 0, "n_layer": cfg.n_layer,
            "vocab_size": 50, "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": 8, "tie_embeddings": cfg.tie_embeddings}  # fmt: skip
    (root / "config.json").write_text(json.dumps({**base, **config}))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v
             for k, v in model.state_dict().items()}  # fmt: skip
    if safetensors:
        state = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
        save_file(state, str(root / "model.safetensors"))
    else:
        torch.save(state, root / "pytorch_model.bin")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("safetensors", [False, True])
def test_native_mamba_ssm_checkpoint_loads_with_identical_logits(tmp_path, version, safetensors):
    model = random_lm(version)
    write_mamba_ssm(tmp_path / "m", model, safetensors)
    ours = load_pretrained(tmp_path / "m")
    assert ours.cfg.vocab_size == 56  # 50 rounded up to a multiple of 8, as mamba_ssm does
    assert ours.cfg.version == version
    assert torch.equal(logits(ours), logits(model))


def test_untied_mamba_ssm_checkpoint(tmp_path):
    model = random_lm(1, tie_embeddings=False)
    write_mamba_ssm(tmp_path / "m", model)
    assert torch.equal(logits(load_pretrained(tmp_path / "m")), logits(model))


def test_a_pickle_that_needs_code_execution_is_refused(tmp_path):
    model = random_lm(1)
    write_mamba_ssm(tmp_path / "m", model)
    state = torch.load(tmp_path / "m" / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "extra": fractions.Fraction(1, 3)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin needs code execution to unpickle"):
        load_pretrained(tmp_path / "m")
    torch.save([1, 2], tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="must hold a state dict"):
        load_pretrained(tmp_path / "m")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"rms_norm": False}, "rms_norm=false"),
        ({"attn_layer_idx": [1]}, "attention layers"),
        ({"d_intermediate": 64}, "d_intermediate"),
        ({"ssm_cfg": {"layer": "Mamba3"}}, "ssm_cfg.layer must be 'Mamba1' or 'Mamba2'"),
        ({"ssm_cfg": {"d_state": 4, "mystery": 1}}, r"ssm_cfg has fields .* \['mystery'\]"),
        ({"pad_vocab_size_multiple": 0}, "pad_vocab_size_multiple must be >= 1"),
    ],
)
def test_mamba_ssm_configs_ssmkit_does_not_compute_are_refused(tmp_path, config, match):
    write_mamba_ssm(tmp_path / "m", random_lm(1), **config)
    with pytest.raises(ValueError, match=match):
        load_pretrained(tmp_path / "m")


def test_a_config_that_disagrees_with_its_tensors_names_file_and_tensor(tmp_path):
    write_mamba_ssm(tmp_path / "m", random_lm(1), ssm_cfg={"d_state": 8})
    with pytest.raises(
        ValueError, match=r"pytorch_model\.bin: tensor backbone\.layers\.0\.mixer\.A_log has "
        r"shape \(32, 4\), the model built from config\.json expects \(32, 8\)"
    ):  # fmt: skip
        load_pretrained(tmp_path / "m")
    write_mamba_ssm(tmp_path / "m", random_lm(1), n_layer=3)
    with pytest.raises(ValueError, match=r"missing \['backbone\.layers\.2\.mixer"):
        load_pretrained(tmp_path / "m")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_loads_in_transformers_with_identical_logits(tmp_path, version, tied):
    transformers = pytest.importorskip("transformers")
    model = random_lm(version, tie_embeddings=tied, bias=not tied)
    with torch.no_grad():  # nonzero norm weights and biases: a misplaced tensor would show
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", "bias")):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    cls = transformers.MambaForCausalLM if version == 1 else transformers.Mamba2ForCausalLM
    hf = cls.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        want = hf(IDS).logits
    assert (logits(model) - want).abs().max() < 1e-4
    assert torch.equal(logits(from_pretrained(tmp_path / "hf")), logits(model))


def test_save_pretrained_refuses_what_transformers_cannot_compute(tmp_path):
    with pytest.raises(ValueError, match=r"transformers. Mamba has no bc_param"):
        random_lm(1, bc_param="positive").save_pretrained(tmp_path)


def test_export_a_run_and_read_it_back(tmp_path, capsys):
    run = tmp_path / "lm"
    argv = ["train", "--task", "text", "--length", "24", "--stride", "24", "--model", "s4d",
            "--out", str(run), "--d_model", "8", "--n_layers", "1", "--d_state", "4",
            "--batch_size", "16", "--epochs", "1", "--max_steps", "2", "--progress", "off",
            "--no-plot"]  # fmt: skip
    assert main(argv) == 0
    assert main(["export", str(run), "--to", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    exported = from_pretrained(tmp_path / "out")
    trained = load_run(run).model
    ids = torch.randint(0, trained.io.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(exported(ids), trained(ids))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["itos"] == list(load_run(run).spec.itos)
    with pytest.raises(ValueError, match=r"training run directory.*ssmkit export"):
        from_pretrained(run)
    (tmp_path / "out" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"model\.safetensors does not hold this model"):
        from_pretrained(tmp_path / "out")
