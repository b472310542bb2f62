"""The ``ssmkit`` command end to end (in-process and as a real subprocess)."""

import json
import subprocess
import sys

import pytest

from ssmkit.bench import SUITES
from ssmkit.cli import main


def test_list_shows_scan_backends(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "scan:" in out
    for name in ("ref", "chunked", "associative"):
        assert name in out


def test_help_everywhere():
    for argv in (["--help"], ["hippo", "--help"], ["bench", "--help"], ["list", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0


def test_unknown_subcommand_lists_valid(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    assert "hippo" in capsys.readouterr().err


def test_hippo_writes_plot(tmp_path, capsys):
    assert main(["hippo", "--out", str(tmp_path), "--length", "300", "--N", "4", "16"]) == 0
    png = tmp_path / "hippo-legs.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "N =   4" in out and "N =  16" in out and str(png) in out


def test_bench_tiny_runs_as_a_subprocess_with_json(tmp_path):
    path = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "ssmkit", "bench", "--size", "tiny", "--repeat", "1"]
    done = subprocess.run([*cmd, "--json", str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(path.read_text())
    suites = {r["suite"] for r in rows}
    assert suites == set(SUITES) - {"e2e-decode"}  # a subset of e2e, not run by default
    layers = {r["case"].split()[0] for r in rows if r["suite"] == "layers"}
    assert layers == {"S4", "S4D", "DSS", "S5", "LRU"}
    for r in rows:
        assert r["fwd_ms"] > 0
        if (
            not r["suite"].startswith("e2e")  # whole-model and whole-fit rows time runs, not memory
            and not r["case"].startswith("fit ")
            and not (r["suite"] == "layers" and r["impl"].startswith("ref"))
            and "floor" not in r["impl"]
            and "scaled" not in (r["note"] or "")  # extrapolated from a subset: no memory
        ):
            assert r["peak_mb"] is not None  # the re-exec set the allocator: memory is measured
        if r["impl"].startswith("ref"):
            assert r["speedup"] == pytest.approx(1.0)
    assert "x ref" in done.stdout
