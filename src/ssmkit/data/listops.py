"""ListOps (Nangia & Bowman 2018, arXiv 1804.06028) generated as in the Long Range Arena.

The generator follows LRA (Tay et al., arXiv 2011.04006, ``lra_benchmarks/data/listops.py``):
a node at depth d < max_depth is an operator with probability ``p_operator`` (LRA: 0.25),
otherwise a digit; an operator takes 2..max_args arguments; the root is at depth 1; trees
are kept when their token count lies in [min_length, max_length]; duplicates are dropped so
no expression is in two splits. Operators: MAX, MIN, MED (median, rounded down as LRA's
``int(np.median)``), SM (sum mod 10).

Tokens follow Nangia & Bowman's bracket form ``[MAX 2 9 [MIN 4 7 ] 0 ]``, one token per
operator, digit and closing bracket; lengths count exactly these tokens, as LRA's generator
does when it keeps trees with 500 < length < 2000. LRA's files also wrap every node of its
binary tree in parentheses (``( ( ( [MAX 2 ) 9 ) ] )``: an operator with k arguments gets
k + 1 pairs), which roughly doubles the sequence without adding information; S4's loader strips
them again. ``parens=True`` emits them, with the same trees and values for the same seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ssmkit.data.base import (
    TaskConfig,
    TaskData,
    TaskSpec,
    register,
    require,
    require_min,
    split_rows,
)

PAD = 0
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
OPEN, CLOSE = "(", ")"  # LRA's binary-node parentheses (only with parens=True)
ITOS = ("<pad>", *(str(d) for d in range(10)), *OPERATORS, END, OPEN, CLOSE)
STOI = {s: i for i, s in enumerate(ITOS)}
_DIGIT = tuple(range(1, 11))  # token id of digit d is d + 1
_OP_IDS = tuple(STOI[o] for o in OPERATORS)
_END_ID = STOI[END]
_OPEN_ID, _CLOSE_ID = STOI[OPEN], STOI[CLOSE]


def apply_op(op: str, args: list[int]) -> int:
    """Value of operator ``op`` ("[MIN", "[MAX", "[MED", "[SM") on digit arguments."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    s = sorted(args)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2


class _TooLongError(Exception):
    """Raised inside generation once a tree can no longer fit; it would be rejected anyway."""


def _tree_sampler(c: ListOpsConfig, rng: random.Random):
    """A function ``tree(depth, out, count) -> value`` that appends one random subtree's token
    ids to ``out`` and adds its LRA length (parentheses excluded) to ``count[0]``; locals
    instead of attribute look-ups, since this loop dominates the build."""
    rnd, p, span = rng.random, c.p_operator, c.max_args - 1
    max_depth, limit, parens = c.max_depth, c.max_length, c.parens

    def tree(depth: int, out: list[int], count: list[int]) -> int:
        if depth >= max_depth or rnd() > p:
            value = int(rnd() * 10)
            out.append(_DIGIT[value])
            count[0] += 1
            return value
        op = int(rnd() * len(OPERATORS))
        k = 2 + int(rnd() * span)  # arguments
        if parens:
            out.extend([_OPEN_ID] * (k + 1))
        out.append(_OP_IDS[op])
        args = []
        for _ in range(k):
            args.append(tree(depth + 1, out, count))
            if parens:
                out.append(_CLOSE_ID)
        out.append(_END_ID)
        if parens:
            out.append(_CLOSE_ID)
        count[0] += 2
        if count[0] > limit:
            raise _TooLongError
        return apply_op(OPERATORS[op], args)

    return tree


def sample_expressions(c: ListOpsConfig, n: int) -> list[tuple[tuple[int, ...], int]]:
    """``n`` distinct (token ids, value) pairs whose lengths lie in [min_length, max_length].

    Uses a local ``random.Random(seed)``: the recursion draws one number at a time, where the
    plain Python generator is several times faster than numpy's per-call overhead.
    """
    tree = _tree_sampler(c, random.Random(c.seed))
    found: dict[tuple[int, ...], int] = {}
    attempts, budget = 0, 2000 * n + 10000
    while len(found) < n:
        attempts += 1
        if attempts > budget:
            raise ValueError(
                f"ListOpsConfig: only {len(found)} of {n} distinct expressions with "
                f"{c.min_length} <= length <= {c.max_length} after {budget} trees; widen the "
                "length range or raise max_depth / max_args / p_operator"
            )
        out: list[int] = []
        count = [0]
        try:
            value = tree(1, out, count)
        except _TooLongError:
            continue
        if c.min_length <= count[0] <= c.max_length:
            found.setdefault(tuple(out), value)
    return list(found.items())


@dataclass(frozen=True)
class ListOpsConfig(TaskConfig):
    """ListOps as generated for the Long Range Arena, at CPU-sized lengths."""

    max_depth: int = 10  # deepest operator nesting (LRA: 10); the root is depth 1
    max_args: int = 10  # most arguments of one operator (LRA: 10)
    p_operator: float = 0.25  # chance a node shallower than max_depth is an operator (LRA: 0.25)
    min_length: int = 16  # shortest expression in tokens (LRA: 500)
    max_length: int = 256  # longest expression in tokens = padded length l (LRA: 2000)
    n_train: int = 3000  # training expressions (LRA: 96000)
    n_val: int = 500  # validation expressions (LRA: 2000)
    n_test: int = 500  # test expressions (LRA: 2000)
    seed: int = 0  # generator seed
    parens: bool = False  # emit LRA's "(" ")" around every binary node (S4 strips them)

    def validate(self) -> None:
        require_min(self, 1, "max_depth", "min_length", "n_train")
        require_min(self, 2, "max_args")
        require_min(self, 0, "n_val", "n_test")
        require(self, "p_operator", 0.0 < self.p_operator <= 1.0, "in (0, 1]")
        require(
            self,
            "max_length",
            self.max_length >= max(self.min_length, 1),
            f">= min_length ({self.min_length})",
        )


def encode(tokens: str) -> list[int]:
    """Token ids of a space-separated expression such as ``"[MAX 2 [MIN 4 7 ] ]"``."""
    try:
        return [STOI[t] for t in tokens.split()]
    except KeyError as e:
        known = ITOS[1:]
        raise ValueError(f"unknown ListOps token {e.args[0]!r}; expected one of {known}") from None


def decode(ids: list[int] | torch.Tensor) -> str:
    """Space-separated expression of token ids (padding dropped)."""
    return " ".join(ITOS[int(i)] for i in ids if int(i) != PAD)


def build_listops(c: ListOpsConfig) -> TaskData:
    """Right-padded expressions and their values.

    Shapes: x (b, max_length) int64 (pad id 0), y (b,) int64 digit 0-9, lengths (b,).
    """
    n = c.n_train + c.n_val + c.n_test
    samples = sample_expressions(c, n)
    lengths = torch.tensor([len(ids) for ids, _ in samples], dtype=torch.int64)  # (b,)
    y = torch.tensor([value for _, value in samples], dtype=torch.int64)  # (b,)
    flat = torch.tensor([t for ids, _ in samples for t in ids], dtype=torch.int64)
    # with parentheses a sequence is longer than its LRA length: pad to the longest one
    width = int(lengths.max()) if c.parens else c.max_length
    x = torch.full((n, width), PAD, dtype=torch.int64)
    x[torch.arange(width) < lengths[:, None]] = flat  # row-major fill of each prefix
    splits = split_rows(x, y, lengths, c.n_train, c.n_val)
    spec = TaskSpec(
        name="listops",
        kind="classification",
        input="tokens",
        vocab_size=len(ITOS),
        d_input=None,
        n_outputs=10,
        max_length=width,
        causal=False,
        pad_id=PAD,
        itos=ITOS,
        description=f"value of nested MAX/MIN/MED/SM lists, {c.min_length}-{c.max_length} tokens",
        classes=tuple(str(d) for d in range(10)),
    )
    return TaskData(spec, *splits)


register("listops", ListOpsConfig, build_listops, "nested list operations (LRA ListOps)")
