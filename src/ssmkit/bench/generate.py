"""Benchmark suite ``generate``: decoding speed and memory of a MambaLM (random weights).

Prefill reads the prompt in one forward; decoding then runs ``step`` per token. The memory
column is the resident-set growth between the first and the last quarter of decoding, which
must stay near zero: the cache has a constant size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from ssmkit.bench.measure import _status_kib
from ssmkit.bench.suites import Row, Settings
from ssmkit.models import MambaConfig, MambaLM


def generate_cases(s: Settings) -> Iterator[list[Row]]:
    sizes = {
        "tiny": [(2, 64, 1, 32)],
        "default": [(24, 768, 1, 64)],
        "full": [(24, 768, 1, 256)],
    }[s.size]
    for n_layer, d_model, version, tokens in sizes:
        torch.manual_seed(0)
        cfg = MambaConfig(d_model=d_model, n_layer=n_layer, version=version,
                          vocab_size=50280 if s.size != "tiny" else 1000)  # fmt: skip
        model = MambaLM(cfg).to(s.device).eval()
        prompt = torch.randint(0, cfg.vocab_size, (1, 16), device=s.device)
        case = f"Mamba {n_layer}x{d_model} prompt 16, {tokens} new"
        with torch.no_grad():
            start = time.perf_counter()
            _, state = model(prompt, return_state=True)
            prefill_ms = (time.perf_counter() - start) * 1e3
            token = prompt[:, -1]
            rss, times = [], []
            for i in range(tokens):
                t0 = time.perf_counter()
                logits, state = model.step(token, state)
                token = logits.argmax(-1)
                times.append(time.perf_counter() - t0)
                if i in (tokens // 4, tokens - 1):
                    rss.append(_status_kib("VmRSS"))
        per_token = sorted(times)[len(times) // 2] * 1e3
        growth = (rss[1] - rss[0]) / 1024 if None not in rss else None
        row = Row("generate", case, "step decode", per_token, None, growth)
        row.note = (
            f"{1e3 / per_token:.1f} tokens/s, prefill {prefill_ms:.0f} ms; "
            "memory column: RSS growth during decoding"
        )
        yield [row]
