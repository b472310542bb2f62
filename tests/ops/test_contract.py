"""The one ops contract (see :mod:`ssmkit.ops`): keyword-only options in one order, one rule
for returning the final state, the same arguments for every backend of an operator."""

from __future__ import annotations

import inspect

import pytest
import torch

from ssmkit.ops import lti_scan, registry, scan, selective_scan, ssd
from ssmkit.testing import assert_close, randn
from tests.ops import test_lti_scan, test_selective_scan, test_ssd

POSITIONAL = {
    scan: ["a", "b"],
    lti_scan: ["u", "A_bar", "B_bar", "C"],
    selective_scan: ["u", "dt", "A", "B", "C"],
    ssd: ["x", "dt", "A", "B", "C"],
}


@pytest.mark.parametrize("op", list(POSITIONAL), ids=lambda f: f.__name__)
def test_options_are_keyword_only_in_one_order(op):
    params = list(inspect.signature(op).parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == POSITIONAL[op]
    keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert len(positional) + len(keyword) == len(params)  # no *args, no **kwargs
    assert keyword[-1] == "backend"
    tail = [n for n in keyword if n in ("initial_state", "return_final_state", "reset")]
    assert tail == [n for n in ("initial_state", "return_final_state", "reset") if n in keyword]
    assert keyword.index("initial_state") < keyword.index("return_final_state")
    if op is ssd:
        assert keyword[0] == "chunk_size"


def _problems():
    """(op, positional tensors, keyword options with an initial state) of each operator."""
    a = torch.rand(2, 7, 3, dtype=torch.float64)
    b = randn(2, 7, 3, dtype=torch.float64, seed=1)
    h0 = randn(2, 3, dtype=torch.float64, seed=2)
    (u, A_bar, B_bar, C, x0), conj = test_lti_scan.problem("siso")
    u_s, dt, A, B, C_s, D, z, _, h0_s = test_selective_scan.problem(l=7)
    x, dt2, A2, B2, C2, D2, z2, _, h0_d = test_ssd.problem(l=7)
    return [
        (scan, (a, b), {"initial_state": h0}),
        (lti_scan, (u, A_bar, B_bar, C), {"conj": conj, "initial_state": x0}),
        (selective_scan, (u_s, dt, A, B, C_s), {"D": D, "z": z, "initial_state": h0_s}),
        (ssd, (x, dt2, A2, B2, C2), {"D": D2, "z": z2, "initial_state": h0_d}),
    ]


@pytest.mark.parametrize("case", _problems(), ids=lambda c: c[0].__name__)
def test_one_rule_for_the_final_state(case):
    op, tensors, options = case
    options = {**options, "backend": "ref"}  # the rule is the public function's, not a backend's
    y = op(*tensors, **options)
    assert isinstance(y, torch.Tensor)
    y2, final_state = op(*tensors, **options, return_final_state=True)
    assert_close(y2, y)
    assert final_state.shape == options["initial_state"].shape
    with pytest.raises(TypeError):
        op(*tensors, *options.values())  # options are never positional


def test_every_ssd_backend_receives_the_same_arguments():
    seen = []

    def spy(*args):
        seen.append(args)
        return registry.resolve("ssd", "ref", "cpu").fn(*args)

    x, dt, A, B, C, *_ = test_ssd.problem(l=5)
    with registry.register("ssd", "_spy", spy, priority=-1, traceable=True):
        y = ssd(x, dt, A, B, C, chunk_size=3, backend="_spy")
    assert_close(y, ssd(x, dt, A, B, C, chunk_size=3, backend="ref"))
    (args,) = seen
    assert len(args) == 8 and args[-1] == 3  # (x, delta, A, B, C, h0, keep, chunk_size)
    assert "_spy" not in [b.name for b in registry.backends("ssd")]


@pytest.mark.parametrize("op", ["scan", "lti_scan", "selective_scan", "ssd"])
def test_every_backend_accepts_the_arguments_of_its_ref(op):
    """The public function calls every backend positionally with the arguments of its ref."""
    ref = registry.resolve(op, "ref", "cpu").fn
    n = len(inspect.signature(ref).parameters)
    for backend in registry.backends(op):
        inspect.signature(backend.fn).bind(*range(n))  # TypeError if it cannot take them
