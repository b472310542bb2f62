"""``ssmkit latent dmm|ode``: argument parsing, progress lines, printed metrics, JSON output."""

import argparse
import json

import pytest

from ssmkit.cli import latent


def _run(argv):
    parser = argparse.ArgumentParser(prog="ssmkit")
    latent.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


def test_dmm_command(tmp_path, capsys):
    rc = _run(["latent", "dmm", "--epochs", "2", "--n-train", "16", "--n-test", "8",
               "--length", "6", "--hidden", "8", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("epoch ") == 2 and "held-out NLL bound" in out and "baseline" in out
    res = json.loads((tmp_path / "latent-dmm.json").read_text())
    assert len(res["train_history"]) == 2 and res["model"]["x_dim"] == 6
    assert res["test_nll_bound"] > 0 and res["baseline_nll"] > 0


def test_ode_command(tmp_path, capsys):
    rc = _run(["latent", "ode", "--epochs", "1", "--n-train", "8", "--n-test", "4", "--n-grid",
               "12", "--n-obs", "8", "--hidden", "8", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and out.count("epoch ") == 1
    assert "interpolation MSE" in out and "extrapolation MSE" in out
    res = json.loads((tmp_path / "latent-ode.json").read_text())
    assert set(res) >= {"interp_mse", "extrap_mse", "baseline_interp_mse", "baseline_extrap_mse"}


def test_unknown_model_is_rejected():
    with pytest.raises(SystemExit):
        _run(["latent", "nope"])
