"""Benchmark suite ``generate``: decoding speed and memory of a MambaLM (random weights).

Prefill reads the prompt in one forward; decoding then runs ``step`` per token. Two
decoders of the same weights are timed, interleaved round by round (median ms per token):

* ``step decode``: float32 weights (the reference row);
* ``bf16 step decode``: a copy of the model in bfloat16 (``model.to(torch.bfloat16)``); its
  note gives the largest logit difference to float32 over the greedy rollout and the share
  of steps whose argmax agrees, both on the float32 greedy path (teacher-forced).

The memory column of the float32 row is the resident-set growth between the first and the
last quarter of decoding, which must stay near zero: the cache has a constant size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator

import torch

from ssmkit.bench.measure import _status_kib
from ssmkit.bench.suites import Row, Settings
from ssmkit.models import MambaConfig, MambaLM
from ssmkit.ops.selective_scan import cpu_numba

Tensor = torch.Tensor
Step = Callable[[Tensor, list], tuple[Tensor, list]]


def _rollout(
    model: MambaLM,
    step: Step,
    prompt: Tensor,
    tokens: int,
    watch_rss: bool = False,
    forced: Tensor | None = None,
) -> tuple[list[float], Tensor, list[int | None]]:
    """Greedy decoding (or feeding ``forced`` (tokens,) instead of the argmax): per-token
    seconds, logits (tokens, v) and RSS at 1/4 and the end."""
    _, state = model(prompt, return_state=True)
    token, times, logits, rss = prompt[:, -1], [], [], []
    for i in range(tokens):
        t0 = time.perf_counter()
        out, state = step(token, state)
        token = out.argmax(-1) if forced is None else forced[i : i + 1]
        times.append(time.perf_counter() - t0)
        logits.append(out[0].float())
        if watch_rss and i in (tokens // 4, tokens - 1):
            rss.append(_status_kib("VmRSS"))
    return times, torch.stack(logits), rss


def generate_cases(s: Settings) -> Iterator[list[Row]]:
    sizes = {
        "tiny": [(2, 64, 1, 32)],
        "default": [(24, 768, 1, 64)],
        "full": [(24, 768, 1, 256), (24, 768, 2, 256)],
    }[s.size]
    if s.device == "cpu":  # the kernels must not compile in the background while timing
        cpu_numba.warm_up(torch.float32, wait=True)
    for n_layer, d_model, version, tokens in sizes:
        torch.manual_seed(0)
        cfg = MambaConfig(d_model=d_model, n_layer=n_layer, version=version,
                          vocab_size=50280 if s.size != "tiny" else 1000)  # fmt: skip
        model = MambaLM(cfg).to(s.device).eval()
        half = copy.deepcopy(model).to(torch.bfloat16)
        prompt = torch.randint(0, cfg.vocab_size, (1, 16), device=s.device)
        case = f"Mamba{'-2' if version == 2 else ''} {n_layer}x{d_model} prompt 16, {tokens} new"
        with torch.no_grad():
            start = time.perf_counter()
            model(prompt, return_state=True)
            prefill_ms = (time.perf_counter() - start) * 1e3
            decoders = {"step decode": (model, model.step), "bf16 step decode": (half, half.step)}
            per: dict[str, list[float]] = {k: [] for k in decoders}
            logits: dict[str, Tensor] = {}
            growth: dict[str, float | None] = {k: None for k in decoders}
            for m, step in decoders.values():  # warm-up
                _rollout(m, step, prompt, 2)
            for r in range(max(s.repeat, 1)):  # interleaved rounds
                for name, (m, step) in decoders.items():
                    ref_path = name == "step decode"
                    forced = None if ref_path else logits["step decode"].argmax(-1)
                    times, out, rss = _rollout(m, step, prompt, tokens, True, forced)
                    per[name].append(sorted(times)[len(times) // 2] * 1e3)
                    logits[name] = out
                    if rss and None not in rss and r == 0:
                        growth[name] = (rss[1] - rss[0]) / 1024
        ref = sorted(per["step decode"])[len(per["step decode"]) // 2]
        rows = []
        for name in decoders:
            ms = sorted(per[name])[len(per[name]) // 2]
            row = Row("generate", case, name, ms, None, growth[name], speedup=ref / ms)
            row.note = f"{1e3 / ms:.1f} tokens/s"
            rows.append(row)
        diff = (logits["bf16 step decode"] - logits["step decode"]).abs().max()
        agree = (logits["bf16 step decode"].argmax(-1) == logits["step decode"].argmax(-1)).float()
        rows[0].note += f", prefill {prefill_ms:.0f} ms; memory column: RSS growth in decoding"
        rows[1].note += (f"; on the fp32 greedy path: max |logit - fp32 logit| {float(diff):.3g}, "
                         f"same argmax at {float(agree.mean()):.0%} of steps")  # fmt: skip
        yield rows
