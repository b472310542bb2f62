"""Autoregressive decoding shared by every language model of the package.

A model qualifies when ``model(ids, state=..., lengths=..., return_state=True)`` returns
``(logits (b, l, v), state)`` and ``model.step(token (b,), state)`` returns
``(logits (b, v), state)``: the prompt is read in one forward pass (chunked prefill), then
tokens are decoded one step at a time with a state of constant size. Nothing here knows the
layer types: any layer that follows the protocol of :mod:`ssmkit.layers.base` decodes.

Batches of prompts of different lengths follow the transformers convention: ``input_ids``
(b, l) left-padded, ``attention_mask`` (b, l) with 1 on real tokens. A recurrent model must
not read the padding (it would enter the state), so the prompt is shifted to a right-padded
batch and read with the layer protocol's ``lengths``, which returns each row's state after
its last real token; every row then decodes as if it were alone.

Prefix caching: :meth:`GenerationMixin.prefill` returns a :class:`PromptState` (the per-layer
states after a prompt and the next-token logits); ``generate(..., prefix=p)`` continues from
it as often as wanted (states are never modified in place), a batch-1 prefix serving a batch
of continuations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ssmkit.core.checks import check_choice, check_tensor

Tensor = torch.Tensor

DECODE_MODES = ("auto", "step", "fused", "compile")  # how decode_tokens computes each step


class Decoder(Protocol):
    def __call__(
        self, ids: Tensor, *, state: object, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, object]: ...

    def step(self, token: Tensor, state: object) -> tuple[Tensor, object]: ...


@dataclass(frozen=True)
class PromptState:
    """What decoding needs after a prompt: a saved prefix that can be continued many times.

    Attributes:
        state: the model's per-layer states after each row's last real token (batch first).
        logits: (b, v) next-token logits after the prompt.
        seen: (b, v) bool, the tokens of the prompt (for ``repetition_penalty``).
    """

    state: object
    logits: Tensor
    seen: Tensor

    @property
    def batch(self) -> int:
        return self.logits.shape[0]

    def expand(self, batch: int) -> PromptState:
        """This batch-1 prefix repeated for ``batch`` continuations (a fork)."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ValueError(
                f"prefix has batch {self.batch}; it must be 1 or equal the batch of input_ids "
                f"({batch})"
            )
        return PromptState(_map(lambda t: t.expand(batch, *t.shape[1:]), self.state),
                           self.logits.expand(batch, -1), self.seen.expand(batch, -1))  # fmt: skip


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (transformers' names and order of logits processors)."""

    max_new_tokens: int
    temperature: float = 1.0  # softmax temperature (sampling only)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens with probability >= top_p
    greedy: bool = False  # argmax instead of sampling
    eos_token_id: int | None = None  # a row stops after producing it
    pad_token_id: int | None = None  # fills finished rows (default: eos_token_id)
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): seen logits / p (or * p if < 0)
    min_new_tokens: int = 0  # EOS is suppressed (and stop ignored) before this many tokens
    stop: tuple[tuple[int, ...], ...] = ()  # a row stops after producing one of these id runs

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (or greedy=True), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(len(s) == 0 for s in self.stop):
            raise ValueError("stop sequences must each hold at least one token id")
        if self.stop and self.fill is None:
            raise ValueError(
                "stop sequences need pad_token_id or eos_token_id to fill finished rows"
            )

    @property
    def fill(self) -> int | None:
        return self.eos_token_id if self.pad_token_id is None else self.pad_token_id

    def check_ids(self, vocab: int) -> None:
        """Token ids of the settings must be valid outputs of a model with ``vocab`` logits."""
        named = [("eos_token_id", self.eos_token_id), ("pad_token_id", self.pad_token_id)]
        named += [(f"stop[{i}]", t) for i, s in enumerate(self.stop) for t in s]
        for name, value in named:
            if value is not None and not (isinstance(value, int) and 0 <= value < vocab):
                raise ValueError(f"{name} must be a token id in [0, {vocab}), got {value!r}")


def check_mask(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Lengths (b,) of a left-padded batch; every row must hold at least one real token.

    Raises:
        ValueError: an empty prompt, a mask of another shape, values other than 0/1, or
            padding anywhere but on the left.
    """
    b, l = input_ids.shape
    if l == 0:
        raise ValueError("input_ids is empty (length 0); give at least one prompt token")
    if attention_mask is None:
        return torch.full((b,), l, dtype=torch.long, device=input_ids.device)
    check_tensor("attention_mask", attention_mask)
    if tuple(attention_mask.shape) != (b, l):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {(b, l)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(input_ids.device)
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real tokens)")
    mask = mask.long()
    lengths = mask.sum(1)  # (b,)
    if bool((lengths == 0).any()):
        rows = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"empty prompt: rows {rows} of attention_mask have no real token")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError(
            "attention_mask must be left-padded (0s, then 1s in every row), as in transformers; "
            "found a 0 after a 1"
        )
    return lengths


def right_align(input_ids: Tensor, lengths: Tensor) -> Tensor:
    """A left-padded batch (b, l) moved to the front of each row (right padding)."""
    l = input_ids.shape[1]
    idx = (torch.arange(l, device=input_ids.device) + (l - lengths)[:, None]).clamp(max=l - 1)
    return input_ids.gather(1, idx)  # (b, l); steps >= lengths hold a copy of the last token


def read_prompt(
    model: Decoder, input_ids: Tensor, attention_mask: Tensor | None, prefix: PromptState | None
) -> PromptState:
    """Read a (left-padded) prompt in one forward, optionally after a saved prefix."""
    lengths = check_mask(input_ids, attention_mask)
    b = input_ids.shape[0]
    if prefix is not None:
        prefix = prefix.expand(b)
    ragged = attention_mask is not None and bool((lengths < input_ids.shape[1]).any())
    ids = right_align(input_ids, lengths) if ragged else input_ids
    logits, state = model(
        ids, state=None if prefix is None else prefix.state,
        lengths=lengths if ragged else None, return_state=True,
    )  # fmt: skip
    last = logits[torch.arange(b, device=logits.device), lengths - 1]  # (b, v)
    seen = torch.zeros_like(last, dtype=torch.bool) if prefix is None else prefix.seen
    real = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]  # (b, l)
    return PromptState(state, last, mark_seen(seen, ids, real))


def mark_seen(seen: Tensor, ids: Tensor, valid: Tensor) -> Tensor:
    """``seen`` (b, v) with the ``valid`` entries of ``ids`` (b, l) marked (ids >= v skipped)."""
    v = seen.shape[-1]
    valid = valid & (ids < v)
    hits = torch.zeros(seen.shape, device=seen.device).scatter_add_(
        1, torch.where(valid, ids, 0), valid.float()
    )  # (b, v)
    return seen | (hits > 0)


def process_logits(logits: Tensor, seen: Tensor, n_new: int, s: Sampling) -> Tensor:
    """Scores (b, v) after repetition penalty and EOS suppression (before ``min_new_tokens``)."""
    scores = logits.float()
    if s.repetition_penalty != 1.0:
        p = s.repetition_penalty
        scores = torch.where(seen, torch.where(scores > 0, scores / p, scores * p), scores)
    if s.eos_token_id is not None and n_new < s.min_new_tokens:
        scores = scores.clone()
        scores[:, s.eos_token_id] = float("-inf")
    return scores


def decode_tokens(
    step: Callable[[Tensor], Tensor],
    start: PromptState,
    s: Sampling,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Yield the next tokens (b,) of every row, one step at a time, from ``start``.

    ``step`` maps the tokens (b,) just chosen to the next logits (b, v), advancing a state
    it holds (see :meth:`GenerationMixin.decoder`). Rows that finished (EOS or a stop
    sequence) yield ``s.fill``; the iteration ends when all rows have finished or after
    ``s.max_new_tokens`` steps. Work a setting does not need is skipped per token: without
    ``s.fill`` (no EOS, no stop sequences) no row can finish early, and without a repetition
    penalty the seen tokens are not tracked.
    """
    last, seen = start.logits, start.seen
    b = last.shape[0]
    can_finish = s.fill is not None
    track_seen = s.repetition_penalty != 1.0
    done = torch.zeros(b, dtype=torch.bool, device=last.device)
    history: list[Tensor] = []
    longest = max((len(q) for q in s.stop), default=0)
    stops = [torch.tensor(q, device=last.device) for q in s.stop]
    for i in range(s.max_new_tokens):
        scores = process_logits(last, seen, i, s)
        token = sample(scores, s.greedy, s.temperature, s.top_k, s.top_p, generator)
        if can_finish:
            token = torch.where(done, torch.full_like(token, s.fill), token)
            done = done | _finished(token, history, longest, stops, i, s)
        yield token
        if i + 1 == s.max_new_tokens or (can_finish and bool(done.all())):
            return
        if track_seen:
            seen = mark_seen(
                seen, token[:, None], torch.ones_like(token[:, None], dtype=torch.bool)
            )
        last = step(token)


def _finished(
    token: Tensor, history: list[Tensor], longest: int, stops: list[Tensor], i: int, s: Sampling
) -> Tensor:
    """Rows (b,) that end with ``token`` (step ``i``): EOS, or a stop sequence completed.
    ``history`` holds the last ``longest`` tokens (updated here)."""
    if longest:
        history.append(token)
        del history[:-longest]
    finished = torch.zeros_like(token, dtype=torch.bool)
    if s.eos_token_id is not None:
        finished |= token == s.eos_token_id
    if stops and i + 1 >= s.min_new_tokens:
        tail = torch.stack(history, 1)  # (b, <= longest)
        for q in stops:
            if tail.shape[1] >= len(q):
                finished |= (tail[:, -len(q) :] == q).all(1)
    return finished


def sample(
    logits: Tensor,
    greedy: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Next tokens (b,) from logits (b, vocab): greedy, or temperature + top-k + top-p."""
    if greedy:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _map(fn: Callable[[Tensor], Tensor], state: object) -> object:
    """``fn`` applied to every tensor of a nested state (lists, tuples, named tuples)."""
    if isinstance(state, Tensor):
        return fn(state)
    parts = [_map(fn, s) for s in state]
    return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)


def _stop_tuple(stop: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    if isinstance(stop, Tensor) or not all(isinstance(q, (list, tuple)) for q in stop):
        raise ValueError(f"stop must be a list of token-id lists, e.g. [[5, 6], [9]], got {stop!r}")
    return tuple(tuple(q) for q in stop)


class GenerationMixin:
    """``generate()``, ``stream()`` and ``prefill()`` for a module with ``forward`` + ``step``.

    The class checks token ids in ``check_prompt(ids)`` (token range, head type). A class
    with a faster way to decode overrides :meth:`decoder` (e.g. ``MambaLM``: fused steps).
    """

    def check_prompt(self, input_ids: Tensor) -> None:
        raise NotImplementedError

    def decode_step(self, token: Tensor, state: object) -> tuple[Tensor, object]:
        """``step`` for the decoding loop, whose tokens are the model's own outputs: a class
        may skip its input checks here (the default is ``step`` itself)."""
        return self.step(token, state)

    def decoder(
        self, state: object, precision: str = "fp32", decode: str = "auto"
    ) -> Callable[[Tensor], Tensor]:
        """A function token (b,) -> next logits (b, v) that continues from ``state``.

        Args:
            state: the per-layer states after the prompt (never modified in place).
            precision: weight format while decoding; "fp32" (the model's own weights) is the
                only one of this generic decoder (``MambaLM`` also has "bf16" and "int8").
            decode: "auto" or "step" (the layers' ``step``), or "compile" (the same step
                through ``torch.compile(fullgraph=True)``).

        Raises:
            ValueError: an unknown ``decode``, or a ``precision`` this model lacks.
        """
        check_choice("decode", decode, DECODE_MODES)
        if precision != "fp32":
            raise ValueError(
                f"precision={precision!r} needs a model with a fused decoder (MambaLM on CPU) "
                f"and decode='auto' or 'fused'; {type(self).__name__} with decode={decode!r} "
                "decodes in its own dtype: use precision='fp32'"
            )
        if decode == "fused":
            raise ValueError(f"decode='fused' needs a MambaLM, got {type(self).__name__}")
        step = torch.compile(self.decode_step, fullgraph=True) if decode == "compile" else None
        step = step or self.decode_step
        current = [state]

        def advance(token: Tensor) -> Tensor:
            logits, current[0] = step(token, current[0])
            return logits

        return advance

    @torch.no_grad()
    def prefill(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        prefix: PromptState | None = None,
    ) -> PromptState:
        """Read a prompt (b, l), left-padded with ``attention_mask``, after an optional
        ``prefix``; the result continues any number of times (``generate(..., prefix=...)``)."""
        self.check_prompt(input_ids)
        return read_prompt(self, input_ids, attention_mask, prefix)

    @torch.no_grad()
    def stream(
        self,
        input_ids: Tensor | None,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        *,
        attention_mask: Tensor | None = None,
        repetition_penalty: float = 1.0,
        min_new_tokens: int = 0,
        stop: Sequence[Sequence[int]] = (),
        pad_token_id: int | None = None,
        prefix: PromptState | None = None,
        precision: str = "fp32",
        decode: str = "auto",
    ) -> Iterator[Tensor]:
        """Yield the new tokens (b,) one step at a time, as they are decoded (the arguments
        of :meth:`generate`)."""
        s = Sampling(
            max_new_tokens, temperature, top_k, top_p, greedy, eos_token_id, pad_token_id,
            repetition_penalty, min_new_tokens, _stop_tuple(stop),
        )  # fmt: skip
        if input_ids is None:
            if prefix is None:
                raise ValueError("give input_ids, a prefix (from prefill), or both")
            if attention_mask is not None:
                raise ValueError("attention_mask needs input_ids")
            start = prefix
        else:
            self.check_prompt(input_ids)
            start = read_prompt(self, input_ids, attention_mask, prefix)
        s.check_ids(start.logits.shape[-1])
        step = self.decoder(start.state, precision, decode)
        yield from decode_tokens(step, start, s, generator)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        *,
        attention_mask: Tensor | None = None,
        repetition_penalty: float = 1.0,
        min_new_tokens: int = 0,
        stop: Sequence[Sequence[int]] = (),
        pad_token_id: int | None = None,
        prefix: PromptState | None = None,
        streamer: Callable[[Tensor], None] | None = None,
        precision: str = "fp32",
        decode: str = "auto",
    ) -> Tensor:
        """Continue ``input_ids`` (b, l) by up to ``max_new_tokens`` tokens.

        The prompt is read in one forward (chunked prefill), then tokens are decoded one step
        at a time through every layer's step mode, with a state of constant size.

        Args:
            input_ids: (b, l) prompts, left-padded when ``attention_mask`` is given; None to
                continue a ``prefix`` directly.
            max_new_tokens: most tokens to add.
            temperature, top_k, top_p, greedy: how tokens are chosen (per row;
                ``generator`` seeds the sampling).
            eos_token_id: a row stops after it; finished rows are filled with
                ``pad_token_id`` (default ``eos_token_id``).
            attention_mask: (b, l), 1 on real tokens and 0 on the left padding.
            repetition_penalty: > 1 discourages tokens already in the prompt or output.
            min_new_tokens: EOS is suppressed and stop sequences ignored before this many.
            stop: token-id sequences; a row stops once its new tokens end with one.
            prefix: a :class:`PromptState` from :meth:`prefill` to continue (batch 1 or b).
            streamer: called with each step's tokens (b,) as soon as they are decoded.
            precision: weight format of the decoding steps (the prompt is read in the
                model's own): "fp32", or for ``MambaLM`` on CPU "bf16" / "int8" (weight-only
                copies of the big matrices; states and SSM parameters stay float32).
            decode: how tokens after the first are computed: "auto" (the fastest available),
                "step" (every layer's ``step``, the reference), "fused" (``MambaLM`` on CPU:
                fused per-layer kernels) or "compile" (``torch.compile`` of the step).

        Returns:
            (b, l + n): ``input_ids`` followed by the n <= max_new_tokens new tokens (only
            the new tokens when ``input_ids`` is None).
        """
        out, n = None, 0  # (b, l + max_new_tokens), allocated once stream checked the prompt
        for token in self.stream(
            input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, greedy,
            generator, attention_mask=attention_mask, repetition_penalty=repetition_penalty,
            min_new_tokens=min_new_tokens, stop=stop, pad_token_id=pad_token_id, prefix=prefix,
            precision=precision, decode=decode,
        ):  # fmt: skip
            if streamer is not None:
                streamer(token)
            if out is None:
                out = _output_buffer(input_ids, token, max_new_tokens)
            out[:, out.shape[1] - max_new_tokens + n] = token
            n += 1
        if out is None:  # no new token (max_new_tokens=0)
            if input_ids is None:
                return torch.zeros(prefix.batch, 0, dtype=torch.long, device=prefix.logits.device)
            return input_ids.clone()
        end = out.shape[1] - max_new_tokens + n
        return out if n == max_new_tokens else out[:, :end].clone()


def _output_buffer(input_ids: Tensor | None, token: Tensor, new: int) -> Tensor:
    """(b, l + new) int64 holding ``input_ids`` (b, l) (l = 0 when None) and room for ``new``
    tokens; ``token`` (b,) gives the batch and device."""
    b, device = token.shape[0], token.device
    l = 0 if input_ids is None else input_ids.shape[1]
    out = torch.empty(b, l + new, dtype=torch.long, device=device)
    if input_ids is not None:
        out[:, :l] = input_ids
    return out
