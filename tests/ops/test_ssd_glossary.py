"""SSD readability (issue 19, items 8 and 10): the axis letters of the SSD code are the
glossary's, and the chunked form's difference of running sums stays accurate in float32 under
a strong decay inside one chunk (the case a stable segment sum would guard against)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import ssmkit._typing as glossary
from ssmkit.ops.ssd import ssd_chunked
from ssmkit.ops.ssd.ref import ssd_ref
from ssmkit.testing import randn

SRC = Path(glossary.__file__).parent
FILES = ["ops/ssd/chunked.py", "ops/ssd/ref.py", "probabilistic/filter_steps.py"]


def _glossary_letters() -> set[str]:
    """The letters in the first column of the glossary's tables."""
    rows = re.findall(r"^([A-Za-z](?:, [A-Za-z])*) {2,}\S", glossary.__doc__, re.MULTILINE)
    return {letter for row in rows for letter in row.split(", ")}


def test_glossary_lists_the_core_axes():
    assert set("bldhpngctjmo") <= _glossary_letters()


def test_ssd_einsums_and_shape_comments_use_glossary_letters():
    known = _glossary_letters()
    for rel in FILES:
        text = (SRC / rel).read_text()
        used = set()
        for spec in re.findall(r'einsum\(\s*"([a-zA-Z,\->]+)"', text):
            used |= set(re.sub(r"[,\->]", "", spec))
        for shape in re.findall(r"# \(([a-zA-Z ,*]+)\)", text):
            used |= {tok for tok in re.split(r"[ ,]+", shape) if len(tok) == 1 and tok != "*"}
        assert used, f"{rel}: no einsum or shape comment found"
        assert used <= known, f"{rel} uses axis letters {sorted(used - known)} not in _typing"


def test_chunked_float32_accurate_after_strong_decay_within_a_chunk():
    """Steps 0..4 of each chunk decay by exp(-100) in total, later steps barely decay: the
    later outputs depend on s_t - s_j between large, nearly equal running sums."""
    b, l, h, p, n, g = 1, 63, 2, 3, 4, 1
    x = randn(b, l, h, p, dtype=torch.float64, seed=1)
    B = randn(b, l, g, n, dtype=torch.float64, seed=2)
    C = randn(b, l, g, n, dtype=torch.float64, seed=3)
    A = torch.tensor([-1.0, -0.5], dtype=torch.float64)
    delta = torch.full((b, l, h), 0.01, dtype=torch.float64)
    step = torch.arange(l) % 21 < 5  # chunks of 21: a strong decay at the start of each
    delta[:, step] = 20.0
    h0 = randn(b, h, p, n, dtype=torch.float64, seed=4)
    y64, s64 = ssd_ref(x, delta, A, B, C, h0)
    y32, s32 = ssd_chunked(*(t.float() for t in (x, delta, A, B, C, h0)), chunk_size=21)
    scale = y64.abs().amax()
    assert float((y32.double() - y64).abs().amax() / scale) < 1e-3
    assert float((s32.double() - s64).abs().amax() / s64.abs().amax()) < 1e-3
