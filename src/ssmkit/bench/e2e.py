"""Benchmark suite ``e2e``: whole Mamba / Mamba-2 language models against transformers.

Both sides get the SAME weights: a randomly initialised transformers model is saved with
``save_pretrained`` and read back by :func:`ssmkit.models.load_pretrained`.

* Training step (forward, next-token cross-entropy, backward) of ``MambaForCausalLM`` (with
  ``use_mambapy=True``, its CPU training path) and ``Mamba2ForCausalLM`` (torch path)
  against ssmkit's ``MambaLM``; the implementations alternate within each repetition, so a
  shared machine's load hits both alike. ``fwd ms`` is the forward + loss part of the step.
* Greedy decoding through ``generate`` (its default decoder: fused per-layer kernels on CPU;
  ``ssmkit bench --suite generate`` compares it with the layers' own steps): ms per new
  token (the whole call, prompt included, over the new tokens), and a floor: streaming every
  parameter once per token at the measured memory copy bandwidth. The notes add the decoding
  steps alone (from the first new token to the last, timed by ``generate``'s streamer, so
  without the prompt) and the process CPU time of the whole call (robust to a shared
  machine). ``e2e_decode_cases`` runs the decoding cases without the training ones.

The ``x ref`` columns hold the speed-up over transformers (> 1: ssmkit is faster).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.bench.rows import Row, Settings
from ssmkit.layers.warm_up import warm_up_for
from ssmkit.models import load_pretrained

Tensor = torch.Tensor


@dataclass(frozen=True)
class LMShape:
    """One model size of the suite (transformers' config names)."""

    hidden_size: int  # d_model
    num_hidden_layers: int  # n_layer
    vocab_size: int
    state_size_v2: int  # Mamba-2 state size N (Mamba-1 keeps 16)
    head_dim: int  # Mamba-2 channels P per head
    chunk_size: int  # Mamba-2 SSD chunk length


TRAIN = {  # (model, batch, length)
    "tiny": (LMShape(32, 2, 64, 16, 16, 16), 1, 32),
    "default": (LMShape(128, 2, 1024, 64, 64, 128), 2, 256),
    "full": (LMShape(256, 4, 1024, 128, 64, 256), 4, 1024),
}
DECODE = {  # (model, prompt length, new tokens)
    "tiny": (LMShape(32, 2, 64, 16, 16, 16), 4, 4),
    "default": (LMShape(256, 4, 8192, 64, 64, 64), 8, 16),
    "full": (LMShape(768, 24, 50280, 128, 64, 256), 8, 32),
}


def e2e_cases(s: Settings, train: bool = True) -> Iterator[list[Row]]:
    """Training steps first (unless ``train`` is False), then decoding; one case per model
    version."""
    try:
        import transformers
    except ImportError as e:
        raise RuntimeError("the e2e suite compares against transformers: pip install it") from e
    # its notes (no CUDA kernels: reference paths) and progress bars would break the table
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield from _cases(s, train)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def e2e_decode_cases(s: Settings) -> Iterator[list[Row]]:
    """The decoding cases of :func:`e2e_cases` alone (no training steps)."""
    yield from e2e_cases(s, train=False)


def _cases(s: Settings, train: bool) -> Iterator[list[Row]]:
    shape, batch, length = TRAIN[s.size]
    for version in (1, 2) if train else ():
        yield _train_case(version, shape, batch, length, s)
    shape, prompt, new = DECODE[s.size]
    for version in (1, 2):
        yield _decode_case(version, shape, prompt, new, s)


def hf_pair(version: int, shape: LMShape) -> tuple[nn.Module, nn.Module]:
    """(transformers model, ssmkit MambaLM) with the same random weights, float32."""
    import transformers

    common = dict(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, expand=2, conv_kernel=4,
        num_hidden_layers=shape.num_hidden_layers, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    if version == 1:
        cfg = transformers.MambaConfig(state_size=16, use_mambapy=True, **common)
        hf = transformers.MambaForCausalLM(cfg)
    else:
        cfg = transformers.Mamba2Config(
            state_size=shape.state_size_v2, head_dim=shape.head_dim, n_groups=1,
            num_heads=2 * shape.hidden_size // shape.head_dim, chunk_size=shape.chunk_size,
            **common,
        )  # fmt: skip
        hf = transformers.Mamba2ForCausalLM(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_pretrained(tmp)
    return hf.float(), ours


def _loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Next-token cross-entropy of logits (b, l, v) against ids (b, l)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def _ours_logits(model: nn.Module, ids: Tensor) -> Tensor:
    return model(ids)[0]


def _hf_logits(model: nn.Module, ids: Tensor) -> Tensor:
    return model(ids, use_cache=False).logits


def _train_case(version: int, shape: LMShape, batch: int, length: int, s: Settings) -> list[Row]:
    hf, ours = hf_pair(version, shape)
    warm_up_for(ours)  # time the kernels, not their compilation
    hf.train()
    ours.train()
    ids = torch.randint(0, shape.vocab_size, (batch, length), generator=torch.Generator())
    impls: dict[str, tuple[nn.Module, Callable[[nn.Module, Tensor], Tensor]]] = {
        "ssmkit MambaLM": (ours, _ours_logits),
        _hf_name(version): (hf, _hf_logits),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in impls}
    losses: dict[str, float] = {}
    for rep in range(s.repeat + 1):  # the first round warms up (numba compiles, caches fill)
        for name, (model, logits_of) in impls.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = _loss(logits_of(model, ids), ids)
            mid = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
            losses[name] = float(loss.detach())
            if rep:
                times[name].append((mid - start, end - start))
    case = (
        f"Mamba{'-2' if version == 2 else ''} train {shape.num_hidden_layers}x"
        f"{shape.hidden_size} b={batch} l={length}"
    )
    return _rows(case, times, batch * length, losses, "loss")


def _decode_case(version: int, shape: LMShape, prompt_len: int, new: int, s: Settings) -> list[Row]:
    hf, ours = hf_pair(version, shape)
    warm_up_for(ours)  # prefill runs the training kernels: time them, not their compilation
    hf.eval()
    ours.eval()
    prompt = torch.randint(0, shape.vocab_size, (1, prompt_len), generator=torch.Generator())
    hf.generation_config.eos_token_id = None  # ours decodes `new` tokens whatever they are
    clocks = {"ours": _Clock(), "hf": _Clock()}
    runs = {  # generate's default decoder: the fused kernels on CPU
        "ssmkit MambaLM.generate": (
            lambda: ours.generate(prompt, new, greedy=True, streamer=clocks["ours"].put),
            clocks["ours"],
        ),
        _hf_name(version) + ".generate": (
            lambda: hf.generate(prompt, max_new_tokens=new, do_sample=False, streamer=clocks["hf"]),
            clocks["hf"],
        ),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    steps: dict[str, list[float]] = {name: [] for name in runs}  # s per decoding step
    cpu: dict[str, list[float]] = {name: [] for name in runs}  # process time per new token
    outs: dict[str, Tensor] = {}
    with torch.no_grad():
        for rep in range(s.repeat + 1):
            for name, (fn, clock) in runs.items():
                clock.stamps.clear()
                start, start_cpu = time.perf_counter(), time.process_time()
                outs[name] = fn()
                per_token = (time.perf_counter() - start) / new
                if rep:
                    times[name].append((per_token, per_token))
                    cpu[name].append((time.process_time() - start_cpu) / new)
                    steps[name].append(clock.per_step(new))
    same = all(torch.equal(o, next(iter(outs.values()))) for o in outs.values())
    case = (
        f"Mamba{'-2' if version == 2 else ''} decode {shape.num_hidden_layers}x{shape.hidden_size}"
    )
    rows = _rows(case, times, 1, None, "")
    for r, name in zip(rows, runs, strict=True):
        r.fwd_bwd_ms, r.speedup_bwd = None, None
        r.note += (
            f" (whole call); decoding steps alone {1 / statistics.median(steps[name]):.1f} "
            f"tokens/s; CPU time {1 / statistics.median(cpu[name]):.1f} tokens/s"
        )
    rows[0].note += f", same tokens as transformers: {'yes' if same else 'no'}"
    name = next(iter(runs))
    rows.append(_floor_row(case, ours, rows[0].fwd_ms, statistics.median(steps[name]) * 1e3))
    return rows


class _Clock:
    """A streamer (ours: ``put``; transformers': ``put`` + ``end``) that stamps each new token."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: Tensor) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass

    def per_step(self, new: int) -> float:
        """Seconds per decoding step: from the first of the ``new`` tokens to the last (the
        last ``new`` stamps: transformers also puts the prompt first)."""
        return (self.stamps[-1] - self.stamps[-new]) / (new - 1)


def _hf_name(version: int) -> str:
    return "transformers MambaForCausalLM" if version == 1 else "transformers Mamba2ForCausalLM"


def _rows(
    case: str,
    times: dict[str, list[tuple[float, float]]],
    tokens: int,
    losses: dict[str, float] | None,
    what: str,
) -> list[Row]:
    """Medians per implementation; the first is ssmkit, the last transformers (the baseline)."""
    rows = []
    for name, ts in times.items():
        fwd = statistics.median(t[0] for t in ts) * 1e3
        step = statistics.median(t[1] for t in ts) * 1e3
        rows.append(Row("e2e", case, name, fwd, step, None))
        rows[-1].note = f"{tokens / step * 1e3:.1f} tokens/s"
    base = rows[-1]
    for r in rows:
        r.speedup = base.fwd_ms / r.fwd_ms
        r.speedup_bwd = base.fwd_bwd_ms / r.fwd_bwd_ms
    if losses:
        first, *others = losses.values()
        diff = max(abs(first - o) for o in others)
        rows[0].note += f", |{what} - transformers'| = {diff:.1e}"
    return rows


def copy_bandwidth(mib: int = 256, repeat: int = 5) -> float:
    """Memory copy bandwidth in bytes/s (read + write), the median of ``repeat`` copies."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times)


def read_bandwidth(mib: int = 256, repeat: int = 5) -> float:
    """Read-only streaming bandwidth in bytes/s: the decoder's float32 GEMV
    (:func:`ssmkit.layers.fused_step.gemv`, else ``torch.mv``) over a ``mib`` MiB matrix,
    the median of ``repeat``. Decoding reads its weights and writes almost nothing, so this
    is the stricter floor for it than :func:`copy_bandwidth` (read + write)."""
    from ssmkit.layers import fused_step

    W = torch.ones(mib * 2**20 // 4 // 1024, 1024)  # (m, k)
    x, y = torch.ones(1, 1024), torch.empty(1, W.shape[0])

    def run() -> None:
        if fused_step.available():
            fused_step.gemv(x.numpy(), W.numpy(), torch.empty(0).numpy(), y.numpy())
        else:
            torch.mv(W, x[0], out=y[0])

    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return W.numel() * 4 / statistics.median(times)


def _floor_row(case: str, model: nn.Module, ours_ms: float, steps_ms: float) -> Row:
    """Every parameter read once per token (tied matrices once) at the copy bandwidth (bytes
    read + bytes written per second: a read-only stream, as in decoding, can go faster)."""
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth()
    ms = nbytes / bandwidth * 1e3
    row = Row("e2e", case, "floor: weights streamed once", ms, None, None)
    row.note = (
        f"{nbytes / 2**20:.0f} MiB at {bandwidth / 1e9:.1f} GB/s = {1e3 / ms:.1f} tokens/s; "
        f"ssmkit reaches {ms / ours_ms:.0%} of it (whole call), {ms / steps_ms:.0%} in its "
        "decoding steps"
    )
    return row
