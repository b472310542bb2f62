"""Autoregressive decoding shared by every language model of the package.

A model qualifies when ``model(ids, return_state=True)`` returns ``(logits (b, l, v), state)``
and ``model.step(token (b,), state)`` returns ``(logits (b, v), state)``: the prompt is read
in one forward pass (chunked prefill), then tokens are decoded one step at a time with a
state of constant size.
"""

from __future__ import annotations

from typing import Protocol

import torch

Tensor = torch.Tensor


class Decoder(Protocol):
    def __call__(self, ids: Tensor, *, return_state: bool) -> tuple[Tensor, object]: ...

    def step(self, token: Tensor, state: object) -> tuple[Tensor, object]: ...


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, greedy: bool
) -> None:
    """Reject sampling settings that would fail or silently do something else."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or greedy=True), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


@torch.no_grad()
def decode(
    model: Decoder,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue ``input_ids`` (b, l) by up to ``max_new_tokens`` tokens; returns (b, l + new).

    Sequences that produced ``eos_token_id`` are padded with it; decoding stops early when
    every sequence has.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, greedy)
    logits, state = model(input_ids, return_state=True)
    last = logits[:, -1]
    out = [input_ids]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        token = sample(last, greedy, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            token = torch.where(done, torch.full_like(token, eos_token_id), token)
            done = done | (token == eos_token_id)
        out.append(token.unsqueeze(1))
        if eos_token_id is not None and bool(done.all()):
            break
        last, state = model.step(token, state)
    return torch.cat(out, dim=1)


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


class GenerationMixin:
    """``generate()`` for a module that has ``forward(ids, return_state=True)`` and ``step``.

    The class checks the prompt in ``check_prompt(ids)`` (token range, head type).
    """

    def check_prompt(self, input_ids: Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue ``input_ids`` (b, l): the prompt is read in one forward (chunked prefill),
        then tokens are decoded one step at a time through every layer's step mode, with a
        state of constant size. Sequences that produced ``eos_token_id`` are padded with it.
        Returns (b, l + generated)."""
        self.check_prompt(input_ids)
        return decode(
            self, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, greedy,
            generator,
        )  # fmt: skip
