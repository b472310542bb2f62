"""Issue 16 replayed: run directories, checkpoints and the command line under bad files,
edited configs, a full disk and interrupted writes. Each test fails without its fix."""

import json

import pytest
import torch

import ssmkit.train
from ssmkit.cli import main
from ssmkit.models import load_pretrained
from ssmkit.train import TrainingInterruptedError, train
from ssmkit.train import checkpoint as ckpt
from ssmkit.train.run import load_run, read_config, read_metrics
from tests.train.conftest import tiny_run

QUIET = {"progress": "off", "log": lambda s: None}
TINY_CLI = ["--task", "adding", "--length", "12", "--n_train", "48", "--n_val", "16",
            "--n_test", "16", "--model", "lru", "--d_model", "8", "--n_layers", "1",
            "--d_state", "4", "--batch_size", "16", "--epochs", "1", "--progress", "off",
            "--no-plot"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (1 epoch, 3 steps); tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    train(tiny_run(epochs=1), run_dir, **QUIET)
    return run_dir


@pytest.fixture
def run_dir(finished, tmp_path):
    import shutil

    return shutil.copytree(finished, tmp_path / "run")


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


# --- 1: paths read from JSON files ssmkit did not get from the user ---


def test_eval_last_refuses_a_checkpoint_naming_a_file_outside_the_run(run_dir, capsys):
    index = json.loads((run_dir / ckpt.INDEX).read_text())
    outside = run_dir.parent / "elsewhere.safetensors"
    (run_dir / index["tensors"]).rename(outside)
    index["tensors"] = f"../{outside.name}"
    (run_dir / ckpt.INDEX).write_text(json.dumps(index))
    rc = main(["eval", str(run_dir), "--weights", "last"])
    _one_line_error(capsys, rc, "plain file name inside the run directory")
    with pytest.raises(ckpt.CheckpointError, match="plain file name"):
        train(read_config(run_dir), run_dir, resume=True, **QUIET)
    assert outside.exists()


def test_pretrained_shard_index_may_name_only_files_in_the_directory(tmp_path):
    config = {"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps(config))
    weight_map = {"backbone.embeddings.weight": "../shard.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="plain file names inside"):
        load_pretrained(tmp_path)


def test_a_run_config_naming_a_device_as_data_file_is_refused(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["task"], cfg["task_config"] = "text", {"path": "/dev/zero"}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="regular data file"):
        read_config(run_dir)


# --- 2: a torn metrics line, a resumed finished run ---


def test_resume_repairs_a_torn_metrics_line_and_writes_one_test_record(run_dir):
    before = read_metrics(run_dir)
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(b'{"split": "train", "step": 9, "lo')  # the disk filled mid-line
    summary = train(read_config(run_dir), run_dir, resume=True, **QUIET)
    train(read_config(run_dir), run_dir, resume=True, **QUIET)  # resumed twice
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is a complete record
    assert records == before
    assert [r["split"] for r in records].count("test") == 1
    assert summary["steps"] == 3


# --- 3: best.safetensors is verified wherever it is loaded ---


def test_a_flipped_bit_in_best_fails_eval_generate_and_plot(run_dir, capsys):
    best = run_dir / "best.safetensors"
    raw = bytearray(best.read_bytes())
    raw[-2] ^= 0x7F
    best.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        load_run(run_dir)  # what eval, generate and plot load by default
    _one_line_error(capsys, main(["eval", str(run_dir)]), "best.safetensors is corrupted")
    load_run(run_dir, "last")  # the checkpoint is intact


# --- 4: resume notices edited configs; --epochs extends explicitly ---


def test_resume_refuses_an_edited_config_and_lists_the_fields(run_dir, capsys):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["train"]["lr"], cfg["train"]["seed"] = 0.5, 7
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"train\.lr 0\.003 -> 0\.5, train\.seed 0 -> 7"):
        train(read_config(run_dir), run_dir, resume=True, **QUIET)
    _one_line_error(capsys, main(["train", "--resume", str(run_dir)]), "train.lr")


def test_resume_refuses_another_ssmkit_version(run_dir, monkeypatch):
    from ssmkit.train import resume

    monkeypatch.setattr(resume, "__version__", "99.0")
    with pytest.raises(ValueError, match=r"ssmkit version .* -> 99\.0"):
        train(read_config(run_dir), run_dir, resume=True, **QUIET)


def test_resume_with_epochs_extends_the_run(run_dir, capsys):
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0
    capsys.readouterr()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 6
    assert read_config(run_dir).train.epochs == 2  # config.json follows the extension
    assert [r["split"] for r in read_metrics(run_dir)].count("test") == 1
    rc = main(["train", "--resume", str(run_dir), "--lr", "0.1"])
    _one_line_error(capsys, rc, "only --epochs N and --max_steps N")
    with pytest.raises(ValueError, match=r"would end .* before the 2 epochs"):
        train(tiny_run(epochs=1), run_dir, resume=True, **QUIET)


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [("train", "epochs", 12.5, "train.epochs must be int, got 12.5"),
     ("train", "lr", "0.1", "train.lr must be float, got '0.1'"),
     ("model", "d_model", True, "model.d_model must be int, got True"),
     ("train", "ssm_lr", [1], "train.ssm_lr must be float or null")],
)  # fmt: skip
def test_config_types_are_checked_when_read(run_dir, section, field, value, message):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg[section][field] = value
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        read_config(run_dir)


# --- 5 (in part): divergence is reported as such and the last good checkpoint is kept ---


class _NaNGradient(torch.autograd.Function):
    """Identity whose gradient is NaN: a finite loss with a poisoned backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_divergence_is_reported_and_the_last_good_checkpoint_kept(tmp_path, monkeypatch):
    from ssmkit.train import loop

    real, calls = loop.batch_sums, []

    def poisoned(kind, out, y, lengths):
        calls.append(1)
        sums = real(kind, out, y, lengths)
        if len(calls) == 3:  # the third training step
            sums["loss"] = _NaNGradient.apply(sums["loss"])
        return sums

    monkeypatch.setattr(loop, "batch_sums", poisoned)
    run_dir = tmp_path / "r"
    with pytest.raises(
        FloatingPointError, match=r"diverged at step 3 \(loss .*, gradient norm nan\)"
    ):
        train(tiny_run(epochs=1, checkpoint_every=1), run_dir, **QUIET)
    kept = load_run(run_dir, "last").model
    assert json.loads((run_dir / ckpt.INDEX).read_text())["meta"]["step"] == 2
    assert all(torch.isfinite(p).all() for p in kept.parameters())


# --- 7: the command line's error contract ---


def test_out_that_is_a_file_or_below_a_file_is_one_line_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(capsys, main(["train", *TINY_CLI, "--out", str(afile)]), "is a file")
    rc = main(["train", *TINY_CLI, "--out", str(afile / "run")])
    _one_line_error(capsys, rc, "cannot create the run directory")


def test_bad_devices_and_batch_size_are_one_line_exit_2(run_dir, tmp_path, capsys, monkeypatch):
    rc = main(["train", *TINY_CLI, "--device", "gpu0", "--out", str(tmp_path / "x")])
    _one_line_error(capsys, rc, "device must be cpu, cuda or cuda:K, got 'gpu0'")
    _one_line_error(capsys, main(["eval", str(run_dir), "--device", "tpu"]), "device must be")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["eval", str(run_dir), "--device", "cuda"])
    _one_line_error(capsys, rc, "CUDA is not available")
    rc = main(["eval", str(run_dir), "--batch-size", "-1"])
    _one_line_error(capsys, rc, "--batch-size must be >= 1")


def test_a_full_disk_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    def full(*args, **kw):
        raise OSError(28, "No space left on device", str(tmp_path / "r" / "checkpoint.json"))

    monkeypatch.setattr(ckpt, "save_checkpoint", full)
    rc = main(["train", *TINY_CLI, "--out", str(tmp_path / "r")])
    _one_line_error(capsys, rc, "No space left on device")


def test_the_interrupt_message_goes_to_stderr(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kw):
        raise TrainingInterruptedError(5, 15)

    monkeypatch.setattr(ssmkit.train, "train", interrupted)
    assert main(["train", *TINY_CLI, "--out", str(tmp_path / "r")]) == 130
    out, err = capsys.readouterr()
    assert "resume with: ssmkit train --resume" in err and "resume with" not in out


def test_stale_temporary_files_are_cleaned_on_the_next_start(run_dir):
    stale = run_dir / f".checkpoint.json.tmp-{999_999_999}"
    stale.write_bytes(b"{half")
    train(read_config(run_dir), run_dir, resume=True, **QUIET)
    assert not stale.exists()
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]


# --- 5 (the rest): optional arguments, states and model matrices are checked for NaN ---

NAN = float("nan")


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = NAN
    return t


def _ss_args(b=2, l=5, d=4, n=3):
    g = torch.Generator().manual_seed(0)
    u, dt = torch.randn(b, l, d, generator=g), torch.rand(b, l, d, generator=g)
    A = -torch.rand(d, n, generator=g)
    B, C = torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)
    opt = {"D": torch.ones(d), "z": torch.randn(b, l, d, generator=g), "dt_bias": torch.zeros(d)}
    return (u, dt, A, B, C), opt


@pytest.mark.parametrize("name", ["D", "z", "dt_bias"])
def test_selective_scan_rejects_a_nan_optional_argument(name):
    from ssmkit.ops import selective_scan

    args, opt = _ss_args()
    opt[name] = _poisoned(opt[name])
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        selective_scan(*args, **opt, backend="ref")


@pytest.mark.parametrize("name", ["D", "z", "dt_bias", "initial_state"])
def test_ssd_rejects_a_nan_optional_argument_or_state(name):
    from ssmkit.ops import ssd

    b, l, h, p, n = 2, 5, 2, 3, 4
    g = torch.Generator().manual_seed(0)
    x, dt, A = (
        torch.randn(b, l, h, p, generator=g),
        torch.rand(b, l, h, generator=g),
        -torch.ones(h),
    )
    B, C = torch.randn(b, l, 1, n, generator=g), torch.randn(b, l, 1, n, generator=g)
    opt = {"D": torch.ones(h), "z": torch.randn(b, l, h, p, generator=g),
           "dt_bias": torch.zeros(h), "initial_state": torch.zeros(b, h, p, n)}  # fmt: skip
    opt[name] = _poisoned(opt[name])
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        ssd(x, dt, A, B, C, **opt)


def test_fftconv_rejects_a_nan_skip_term():
    from ssmkit.core.fftconv import fftconv, fftconv_bidirectional

    u, K = torch.randn(2, 6, 3), torch.randn(3, 6)
    with pytest.raises(ValueError, match="D must be finite"):
        fftconv(u, K, _poisoned(torch.ones(3)))
    with pytest.raises(ValueError, match="D must be finite"):
        fftconv_bidirectional(u, K, K, _poisoned(torch.ones(3)))


def test_discretize_diag_rejects_a_nan_state_matrix():
    from ssmkit.core.discretize import discretize_diag

    A, B, dt = -torch.rand(4, 3), torch.ones(4, 3), torch.full((4,), 0.1)
    with pytest.raises(ValueError, match="A must be finite"):
        discretize_diag(_poisoned(A), B, dt)
    with pytest.raises(ValueError, match="B must be finite"):
        discretize_diag(A, _poisoned(B), dt)


@pytest.mark.parametrize("name", ["F", "H", "m0"])
def test_kalman_filter_rejects_nan_model_matrices(name):
    from dataclasses import replace

    from ssmkit.probabilistic import LinearGaussianSSM, kalman_filter

    eye = torch.eye(2, dtype=torch.float64)
    model = LinearGaussianSSM(F=0.9 * eye, H=eye[:1], Q=eye, R=eye[:1, :1],
                              m0=torch.zeros(2, dtype=torch.float64), P0=eye)  # fmt: skip
    model = replace(model, **{name: _poisoned(getattr(model, name))})
    y = torch.randn(1, 6, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        kalman_filter(model, y)


def _mamba_layers():
    from ssmkit.layers.mamba import Mamba
    from ssmkit.layers.mamba2 import Mamba2

    torch.manual_seed(0)
    return [Mamba(8, d_state=4), Mamba2(8, d_state=4, headdim=4, chunk_size=4)]


def test_mamba_steps_reject_a_nan_state():
    for layer in _mamba_layers():
        state = layer.initial_state(2)
        bad = state._replace(ssm=_poisoned(state.ssm))
        with pytest.raises(ValueError, match=r"state\.ssm must be finite"):
            layer.step(torch.randn(2, 8), bad)
        with pytest.raises(ValueError, match=r"state\.conv must be finite"):
            layer(torch.randn(2, 3, 8), state._replace(conv=_poisoned(state.conv)))


@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_mamba_overflowing_inputs_raise_instead_of_returning_nan(scale):
    for layer in _mamba_layers():
        name = type(layer).__name__
        with pytest.raises(FloatingPointError, match=f"x is too large for {name}: with max"):
            layer(torch.full((2, 5, 8), scale))
        state = layer.initial_state(2)
        with pytest.raises(FloatingPointError, match=f"x is too large for {name}"):
            layer.step(torch.full((2, 8), scale), state)
        y, _ = layer(torch.randn(2, 5, 8) * 1e3)  # large but representable: finite
        assert torch.isfinite(y).all()


def test_a_nan_parameter_is_named_when_the_output_is_not_finite():
    layer = _mamba_layers()[0]
    with torch.no_grad():
        layer.out_proj.weight[0, 0] = NAN
    with pytest.raises(FloatingPointError, match=r"parameter out_proj\.weight is not finite"):
        layer(torch.randn(2, 5, 8))


# --- 10: dtypes, meta tensors and empty batches, over all seven layers ---


def _seven_layers():
    from ssmkit.layers import DSS, LRU, S4, S4D, S5

    torch.manual_seed(0)
    lti = [S4(8, N=4, l_max=16), S4D(8, N=4), DSS(8, N=4, l_max=16), S5(8, N=4), LRU(8, N=4)]
    return lti + _mamba_layers()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_an_input_of_another_dtype_is_a_clear_error(dtype):
    for layer in _seven_layers():
        with pytest.raises(
            TypeError, match=f"x must have the layer's dtype torch.float32, got {dtype}"
        ):
            layer(torch.randn(2, 5, 8, dtype=dtype))
        with pytest.raises(TypeError, match=r"x_t must have the layer's dtype torch\.float32"):
            layer.step(torch.randn(2, 8, dtype=dtype), layer.initial_state(2))


def test_a_float64_layer_takes_float64_input():
    for layer in _seven_layers():
        y, _ = layer.double()(torch.randn(2, 5, 8, dtype=torch.float64))
        assert y.dtype == torch.float64, type(layer).__name__


def test_a_low_precision_input_under_autocast_is_cast_to_the_layer_dtype():
    for layer in _seven_layers():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = layer(torch.randn(2, 5, 8, dtype=torch.bfloat16))
            y.float().sum().backward()
        assert torch.isfinite(y).all(), type(layer).__name__


def test_a_layer_on_meta_propagates_shapes():
    """Meta tensors are for shape inference (no values to check): layers built on meta run."""
    for layer in _seven_layers():
        y, _ = layer.to("meta")(torch.empty(2, 5, 8, device="meta"))
        assert y.shape == (2, 5, 8) and y.device.type == "meta", type(layer).__name__


def test_an_empty_batch_gives_empty_outputs_and_states():
    for layer in _seven_layers():
        name = type(layer).__name__
        y, state = layer(torch.randn(0, 5, 8), return_state=True)
        assert y.shape == (0, 5, 8), name
        assert all(t.shape[0] == 0 for t in (state if isinstance(state, tuple) else (state,)))
        y_t, _ = layer.step(torch.randn(0, 8), layer.initial_state(0))
        assert y_t.shape == (0, 8), name


# --- 8: load_pretrained wraps every failure in one error naming the file and tensor ---


def _hf_dir(root, shards=1):
    """A tiny transformers-style Mamba checkpoint written from an ssmkit model."""
    from safetensors.torch import save_file

    from ssmkit.models import MambaConfig, MambaLM

    root.mkdir()
    config = {"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1,
              "vocab_size": 11, "state_size": 4}  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))
    model = MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=11, d_state=4))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    names = sorted(state)
    for i in range(shards):
        part = {k: state[k] for k in names[i::shards]}
        save_file(part, str(root / f"model-{i}.safetensors"))
    return root, config


def test_pretrained_malformed_config_names_the_file(tmp_path):
    root, config = _hf_dir(tmp_path / "m")
    load_pretrained(root)  # the intact checkpoint loads
    (root / "config.json").write_text('{"model_type": "mamba", ')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        load_pretrained(root)
    lacking = {k: v for k, v in config.items() if k != "hidden_size"}
    (root / "config.json").write_text(json.dumps(lacking))
    with pytest.raises(ValueError, match=r"config\.json lacks the field 'hidden_size'"):
        load_pretrained(root)
    (root / "config.json").write_text(json.dumps({**config, "hidden_size": "8"}))
    with pytest.raises(ValueError, match=r"config\.json"):
        load_pretrained(root)


def test_pretrained_corrupted_shard_names_the_file(tmp_path):
    root, _ = _hf_dir(tmp_path / "m")
    shard = root / "model-0.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"model-0\.safetensors is not a readable safetensors"):
        load_pretrained(root)


def test_pretrained_tensor_of_the_wrong_shape_names_file_and_tensor(tmp_path):
    root, config = _hf_dir(tmp_path / "m")
    (root / "config.json").write_text(json.dumps({**config, "vocab_size": 12}))
    with pytest.raises(
        ValueError, match=r"model-0\.safetensors: tensor backbone\.embeddings\.weight has shape "
        r"\(11, 8\), the model built from config\.json expects \(12, 8\)"
    ):  # fmt: skip
        load_pretrained(root)


def test_pretrained_tensor_defined_by_two_shards_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    root, _ = _hf_dir(tmp_path / "m", shards=2)
    load_pretrained(root)
    first = load_file(str(root / "model-0.safetensors"))
    second = load_file(str(root / "model-1.safetensors"))
    name = sorted(first)[0]
    second[name] = torch.zeros_like(first[name])  # the second shard redefines it
    save_file(second, str(root / "model-1.safetensors"))
    twice = rf"tensor {name} is defined twice: in .*model-0.* and in .*model-1"
    with pytest.raises(ValueError, match=twice):
        load_pretrained(root)


# --- 11: LayerNorm stays in float32 under bf16 autocast ---


def test_layer_norm_gradients_under_bf16_autocast_match_float32():
    from ssmkit.models.sequence import IOSpec, ModelConfig, SequenceModel

    torch.manual_seed(0)
    cfg = ModelConfig(layer="s4d", d_model=32, n_layers=1, d_state=8)
    model = SequenceModel(cfg, IOSpec(head="forecast", d_input=3, n_outputs=2))
    x, y = torch.randn(8, 512, 3), torch.randn(8, 512, 2)

    def grads(autocast):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        torch.nn.functional.mse_loss(out.float(), y).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if "norm" in k}

    exact, mixed = grads(False), grads(True)
    assert len(exact) == 4  # weight and bias of the block's norm and of the final norm
    for name, g in exact.items():
        err = float((mixed[name] - g).norm() / g.norm())
        assert err < 0.03, (name, err)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.encoder(x)  # bfloat16 under autocast
        assert model.norm_f(h).dtype == h.dtype == torch.bfloat16


# --- 9: the CSV readers stream their rows ---


def test_row_stream_keeps_the_row_rules_of_read_rows(tmp_path):
    from ssmkit.core.csvrows import RowStream, read_rows

    path = tmp_path / "s.csv"
    path.write_bytes("\ufeffyear, a\n1,2\n\n3,\n \n4,5\n\n \n".encode())
    stream = RowStream(path)
    rows = list(stream)
    table = read_rows(path)
    assert stream.header == table.header == ["year", "a"]
    assert rows == table.rows == [(2, ["1", "2"]), (3, ["", ""]), (4, ["3", ""]),
                                  (5, ["", ""]), (6, ["4", "5"])]  # fmt: skip
    assert stream.skipped == table.skipped == 2
    with pytest.raises(RuntimeError, match="already read"):
        list(stream)


@pytest.mark.parametrize("reader", ["kalman", "training"])
def test_csv_readers_hold_a_few_bytes_per_value(tmp_path, reader):
    import tracemalloc

    from ssmkit.data.user import read_series
    from ssmkit.probabilistic.io import read_csv

    path = tmp_path / "big.csv"
    lines = [
        f"{1900 + i},{i * 0.37:.5f},{-i * 1.3:.4f},{'NA' if i % 3 else i}" for i in range(20_000)
    ]
    path.write_text("year,a,b,c\n" + "\n".join(lines) + "\n")
    tracemalloc.start()
    y = read_csv(path).y if reader == "kalman" else read_series(path, "year").values
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert y.shape == (20_000, 3) and float(y[-1, 0]) == pytest.approx(19_999 * 0.37)
    assert int(torch.isnan(y[:, 2]).sum()) == 20_000 - 6_667 and float(y[3, 2]) == 3.0
    assert peak < 6 * path.stat().st_size, peak / path.stat().st_size  # was 14-17x
