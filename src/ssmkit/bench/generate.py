"""Benchmark suite ``generate``: decoding speed and memory of a MambaLM (random weights).

Prefill reads the prompt in one forward; decoding then advances one token at a time. The
decoders of the same weights are timed interleaved, round by round (median ms per token):

* ``step (reference)``: every layer's own ``step`` (``decode="step"``), float32;
* ``fused fp32``: :class:`ssmkit.models.decoding.MambaDecoder`, the fused per-layer kernels
  (what ``generate`` takes by default on CPU);
* ``fused bf16`` / ``fused int8``: the same with bfloat16 / int8 weight-only copies of
  in_proj, out_proj and lm_head (``precision=``); the note gives the largest logit difference
  to float32 on the float32 greedy path (teacher-forced) and the step at which free-running
  greedy decoding first picks another token than float32 (if it does);
* ``compiled step``: ``torch.compile`` of the reference step (``decode="compile"``; sizes
  other than tiny).

Each row's note gives tokens/s and the share of the weight-streaming floor (every float32
parameter read once per token at the measured copy bandwidth, bytes read + written per
second) it reaches; then the same from the process CPU time per token (robust to other
processes on a shared machine), and the share of a stricter floor at the read-only
bandwidth (:func:`ssmkit.bench.e2e.read_bandwidth`; decoding only reads its weights). The
memory column of the reference row is the resident-set growth between the first and the last
quarter of decoding, which must stay near zero: the cache has a constant size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from ssmkit.bench.e2e import copy_bandwidth, read_bandwidth
from ssmkit.bench.measure import _status_kib
from ssmkit.bench.rows import Row, Settings
from ssmkit.layers.warm_up import warm_up_for
from ssmkit.models import MambaConfig, MambaLM

Tensor = torch.Tensor
Advance = Callable[[Tensor], Tensor]  # token (b,) -> next logits (b, v)
# decoder name -> (precision, decode)
DECODERS = {
    "step (reference)": ("fp32", "step"),
    "fused fp32": ("fp32", "fused"),
    "fused bf16": ("bf16", "fused"),
    "fused int8": ("int8", "fused"),
    "compiled step": ("fp32", "compile"),
}
REFERENCE = "fused fp32"  # the row the low-precision ones are compared with


def _rollout(
    advance: Advance,
    first: Tensor,
    tokens: int,
    watch_rss: bool = False,
    forced: Tensor | None = None,
) -> tuple[list[tuple[float, float]], Tensor, list[int | None]]:
    """Greedy decoding from token ``first`` (1,) (or feeding ``forced`` (tokens,) instead of
    the argmax): per-token seconds (wall, process CPU), logits (tokens, v) and RSS at 1/4 and
    the end."""
    token, times, logits, rss = first, [], [], []
    for i in range(tokens):
        t0, c0 = time.perf_counter(), time.process_time()
        out = advance(token)
        token = out.argmax(-1) if forced is None else forced[i : i + 1]
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        logits.append(out[0].float())
        if watch_rss and i in (tokens // 4, tokens - 1):
            rss.append(_status_kib("VmRSS"))
    return times, torch.stack(logits), rss


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def generate_cases(s: Settings) -> Iterator[list[Row]]:
    sizes = {
        "tiny": [(2, 64, 1, 32), (2, 64, 2, 32)],
        "default": [(24, 768, 1, 64), (24, 768, 2, 64)],
        "full": [(24, 768, 1, 256), (24, 768, 2, 256)],
    }[s.size]
    if s.device != "cpu":
        raise ValueError(f"the generate suite compares CPU decoders, got device {s.device!r}")
    bandwidth = (copy_bandwidth(), read_bandwidth())
    for n_layer, d_model, version, tokens in sizes:
        yield _case(n_layer, d_model, version, tokens, s, bandwidth)


def _case(
    n_layer: int,
    d_model: int,
    version: int,
    tokens: int,
    s: Settings,
    bandwidth: tuple[float, float],
) -> list[Row]:
    """One model: bandwidth holds the copy (read + write) and the read-only bandwidths."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=d_model, n_layer=n_layer, version=version,
                      vocab_size=50280 if s.size != "tiny" else 1000)  # fmt: skip
    model = MambaLM(cfg).to(s.device).eval()
    warm_up_for(model)  # the prefill's kernels (SSD, norm) would otherwise compile while timing
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), device=s.device)
    case = f"Mamba{'-2' if version == 2 else ''} {n_layer}x{d_model} prompt 16, {tokens} new"
    names = [n for n in DECODERS if s.size != "tiny" or DECODERS[n][1] != "compile"]
    with torch.no_grad():
        start = time.perf_counter()
        _, state = model(prompt, return_state=True)
        prefill_ms = (time.perf_counter() - start) * 1e3
        first = prompt[:, -1]

        def fresh(name: str) -> Advance:
            return model.decoder(state, *DECODERS[name])  # copies the state

        built = {}
        for name in names:  # warm-up (compiles, caches); also times building the decoder
            start = time.perf_counter()
            _rollout(fresh(name), first, 2)
            built[name] = (time.perf_counter() - start) * 1e3
        per: dict[str, list[float]] = {k: [] for k in names}  # median ms per token, per round
        per_cpu: dict[str, list[float]] = {k: [] for k in names}  # the same in CPU time
        free: dict[str, Tensor] = {}  # round 0: every decoder greedy on its own
        forced: dict[str, Tensor] = {}  # later rounds: on the reference's greedy tokens
        growth: dict[str, float | None] = {k: None for k in names}
        for r in range(max(s.repeat, 1)):  # interleaved rounds
            for name in names:
                path = free[REFERENCE].argmax(-1) if r and name != REFERENCE else None
                times, out, rss = _rollout(fresh(name), first, tokens, r == 0, path)
                per[name].append(_median([t[0] for t in times]) * 1e3)
                per_cpu[name].append(_median([t[1] for t in times]) * 1e3)
                (forced if path is not None else free)[name] = out
                if rss and None not in rss:
                    growth[name] = (rss[1] - rss[0]) / 1024
        for name in names:  # one round only: teacher-force once more, untimed
            if name not in forced:
                forced[name] = _rollout(fresh(name), first, tokens, False,
                                        free[REFERENCE].argmax(-1))[1]  # fmt: skip
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    copy_bw, read_bw = bandwidth
    floor_ms, read_floor_ms = nbytes / copy_bw * 1e3, nbytes / read_bw * 1e3
    base = _median(per["step (reference)"])
    rows = []
    for name in names:
        ms = _median(per[name])
        row = Row("generate", case, name, ms, None, growth[name], speedup=base / ms)
        row.note = f"{1e3 / ms:.1f} tokens/s"
        cpu_ms = _median(per_cpu[name])
        row.note += (
            f", {floor_ms / ms:.0%} of the fp32 floor; CPU time {1e3 / cpu_ms:.1f} tokens/s, "
            f"{floor_ms / cpu_ms:.0%}; {read_floor_ms / ms:.0%} of the read-only floor"
        )
        if name != "step (reference)":
            row.note += f"; decoder built + 2 tokens in {built[name]:.0f} ms"
        if name != REFERENCE:
            row.note += _agreement(forced[name], free[REFERENCE], free[name])
        rows.append(row)
    rows[0].note += (f", prefill {prefill_ms:.0f} ms; memory column: RSS growth in decoding; "
                     f"floor: {nbytes / 2**20:.0f} MiB at {copy_bw / 1e9:.1f} GB/s copy = "
                     f"{1e3 / floor_ms:.1f} tokens/s, read-only floor at {read_bw / 1e9:.1f} "
                     f"GB/s = {1e3 / read_floor_ms:.1f} tokens/s")  # fmt: skip
    return rows


def _agreement(forced: Tensor, ref: Tensor, free: Tensor) -> str:
    """max |logit - fp32 logit| on the fp32 greedy path, and the first greedy divergence."""
    diff = float((forced - ref).abs().max())
    differs = (free.argmax(-1) != ref.argmax(-1)).nonzero()
    where = "never" if differs.numel() == 0 else f"from step {int(differs[0, 0])}"
    return f"; max |logit - fp32| {diff:.3g}, greedy tokens differ {where}"
