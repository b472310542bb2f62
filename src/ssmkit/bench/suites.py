"""The registry of benchmark suites: ``ssmkit bench --suite NAME`` runs ``SUITES[NAME]``.

Each suite lives in its own module and yields the rows of one case at a time (see
:mod:`ssmkit.bench.rows`); adding a suite is a module with a ``*_cases(settings)`` generator
and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ssmkit.bench.e2e import e2e_cases, e2e_decode_cases
from ssmkit.bench.generate import generate_cases
from ssmkit.bench.kalman import kalman_cases
from ssmkit.bench.kernels import kernel_cases
from ssmkit.bench.layers import layer_cases
from ssmkit.bench.lti import lti_scan_cases
from ssmkit.bench.rows import Row, Settings
from ssmkit.bench.scan import scan_cases
from ssmkit.bench.selective import selective_cases, ssd_cases

SUITES: dict[str, Callable[[Settings], Iterator[list[Row]]]] = {
    "kernels": kernel_cases,
    "scan": scan_cases,
    "selective": selective_cases,
    "ssd": ssd_cases,
    "layers": layer_cases,
    "generate": generate_cases,
    "kalman": kalman_cases,
    "e2e": e2e_cases,
    "e2e-decode": e2e_decode_cases,
    "lti-scan": lti_scan_cases,
}
