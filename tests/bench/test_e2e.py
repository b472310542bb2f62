"""Smoke test of ``ssmkit bench --suite e2e`` at size tiny: the rows exist, numbers are sane."""

from __future__ import annotations

import pytest

from ssmkit.bench import run

pytest.importorskip("transformers")


def test_e2e_tiny_rows():
    rows = run(["e2e"], size="tiny", repeat=1)
    by_case: dict[str, list] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    train = [c for c in by_case if " train " in c]
    decode = [c for c in by_case if " decode " in c]
    assert len(train) == 2 and len(decode) == 2, list(by_case)
    for case in train:
        ours, hf = by_case[case]
        assert ours.impl == "ssmkit MambaLM" and hf.impl.startswith("transformers Mamba")
        for r in (ours, hf):
            assert 0 < r.fwd_ms <= r.fwd_bwd_ms and r.speedup > 0 and r.speedup_bwd > 0
        assert hf.speedup == 1.0
        # same weights: the losses agree
        diff = float(ours.note.split("| = ")[1])
        assert diff < 1e-4, ours.note
    for case in decode:
        ours, hf, floor = by_case[case]
        assert ours.impl.startswith("ssmkit") and floor.impl.startswith("floor")
        assert min(ours.fwd_ms, hf.fwd_ms, floor.fwd_ms) > 0
        assert "same tokens as transformers: yes" in ours.note


def test_e2e_decode_suite_has_only_the_decode_rows():
    rows = run(["e2e-decode"], size="tiny", repeat=1)
    cases = {r.case for r in rows}
    assert len(cases) == 2 and all(" decode " in c for c in cases), cases
    for r in rows:
        assert r.fwd_ms > 0
