"""The benchmark registry: one module per suite, the registry alone in bench/suites.py."""

from ssmkit.bench import SUITES, Settings
from ssmkit.bench.scan import scan_cases


def test_every_suite_lives_in_its_own_module():
    homes = {fn.__module__ for fn in SUITES.values()}
    assert "ssmkit.bench.suites" not in homes
    # selective and ssd share ssmkit.bench.selective; e2e and e2e-decode ssmkit.bench.e2e
    assert len(homes) == len(SUITES) - 2


def test_a_tiny_suite_yields_rows_with_the_reference_first():
    (rows,) = list(scan_cases(Settings(size="tiny", repeat=1, device="cpu")))
    assert [r.impl for r in rows] == ["ref: sequential loop", "chunked", "associative"]
    assert rows[0].speedup == 1.0 and all(r.fwd_ms > 0 for r in rows)
