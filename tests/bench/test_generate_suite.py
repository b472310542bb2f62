"""``ssmkit bench --suite generate`` compiles every kernel a model uses before it times."""

from __future__ import annotations

import pytest

from ssmkit.bench import generate, run


def test_generate_suite_warms_each_model_before_the_prefill(monkeypatch: pytest.MonkeyPatch):
    events: list[str] = []
    warm = generate.warm_up_for

    def record_warm(model):
        events.append(f"warm v{model.cfg.version}")
        warm(model)

    forward = generate.MambaLM.forward

    def record_forward(self, *args, **kwargs):
        events.append(f"forward v{self.cfg.version}")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(generate, "warm_up_for", record_warm)
    monkeypatch.setattr(generate.MambaLM, "forward", record_forward)
    rows = run(["generate"], size="tiny", repeat=1)
    assert {r.case.split()[0] for r in rows} == {"Mamba", "Mamba-2"}
    for version in (1, 2):
        mine = [e for e in events if e.endswith(f"v{version}")]
        assert mine[0] == f"warm v{version}" and f"forward v{version}" in mine, events
