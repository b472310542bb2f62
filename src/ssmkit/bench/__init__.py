"""``ssmkit bench``: speed and memory of fast paths against their references, in one table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

import torch

from ssmkit.bench.rows import SIZES, Row, Settings
from ssmkit.bench.suites import SUITES
from ssmkit.core.checks import check_choice

__all__ = ["SIZES", "SUITES", "Row", "Settings", "format_table", "run", "write_json"]


def run(
    suites: Sequence[str],
    size: str = "default",
    repeat: int = 3,
    device: str = "cpu",
    out: TextIO | None = None,
) -> list[Row]:
    """Run the named suites, printing each case's rows to ``out`` as they finish."""
    for name in suites:
        check_choice("suite", name, SUITES)
    check_choice("size", size, SIZES)
    settings = Settings(size=size, repeat=repeat, device=device)
    rows: list[Row] = []
    if out is not None:
        print(_header(device), file=out, flush=True)
    for name in suites:
        for case_rows in SUITES[name](settings):
            rows.extend(case_rows)
            if out is not None:
                print(format_table(case_rows, header=False), file=out, flush=True)
    return rows


def _header(device: str) -> str:
    threads = torch.get_num_threads()
    title = f"ssmkit bench on {device} (torch {torch.__version__}, {threads} threads)"
    cols = f"{'suite':8} {'case':34} {'implementation':30} {'fwd ms':>9} {'fwd+bwd':>9}"
    return f"{title}\n{cols} {'peak MiB':>9} {'x ref':>7} {'x ref f+b':>9}"


def format_table(rows: Sequence[Row], header: bool = True) -> str:
    """Rows as aligned text; the last column is the forward speed-up over the reference."""

    def num(x: float | None, fmt: str) -> str:
        return format(x, fmt) if x is not None else "-"

    lines = [_header("cpu")] if header else []
    for r in rows:
        lines.append(
            f"{r.suite:8} {r.case:34} {r.impl:30} {num(r.fwd_ms, '9.1f')} "
            f"{num(r.fwd_bwd_ms, '9.1f'):>9} {num(r.peak_mb, '9.1f'):>9} "
            f"{num(r.speedup, '7.1f'):>7} {num(r.speedup_bwd, '9.1f'):>9}"
            + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: str | Path) -> None:
    """Save rows as a JSON list (one object per row)."""
    Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=2))
