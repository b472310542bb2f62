"""Generated memory and recall tasks: selective copying, induction heads, MQAR, copying, adding.

All builders draw from one local ``torch.Generator`` seeded by ``config.seed`` and are
vectorised over the batch, so default sizes build in milliseconds. Token tasks follow the
causal convention of language modelling: ``y[:, t]`` is the answer the model must give after
reading ``x[:, : t + 1]``; unscored positions hold ``IGNORE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssmkit.data.base import (
    IGNORE,
    TaskConfig,
    TaskData,
    TaskSpec,
    full_lengths,
    generator,
    register,
    require,
    require_min,
    split_rows,
)

Tensor = torch.Tensor


def _random_subsets(g: torch.Generator, b: int, n: int, k: int) -> Tensor:
    """(b, k) int64: for each row, k distinct values of range(n) in random order."""
    return torch.rand(b, n, generator=g).argsort(dim=1)[:, :k]


@dataclass(frozen=True)
class _Sizes:
    """The split sizes and seed of a generated task, and their checks (fields of every
    generated task's config, listed before its own)."""

    n_train: int = 10000  # training sequences
    n_val: int = 1000  # validation sequences
    n_test: int = 1000  # test sequences
    seed: int = 0  # generator seed

    def validate(self) -> None:
        require_min(self, 1, "n_train")
        require_min(self, 0, "n_val", "n_test")


def token_spec(name: str, vocab: int, length: int, itos: tuple, description: str) -> TaskSpec:
    """The spec of a causal token task whose targets share the input vocabulary."""
    return TaskSpec(
        name=name, kind="tokens", input="tokens", vocab_size=vocab, d_input=None,
        n_outputs=vocab, max_length=length, causal=True, pad_id=None, itos=itos,
        description=description,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Selective copying (Mamba, arXiv 2312.00752, section 4.1.1)

BLANK, MARKER = 0, 1  # selective copying: noise token and "copy now" marker; data ids from 2


@dataclass(frozen=True)
class SelectiveCopyingConfig(_Sizes, TaskConfig):
    """Selective copying: data tokens scattered among blanks, copied in order after markers."""

    length: int = 64  # positions among which the data tokens are scattered (paper: 4096)
    n_data: int = 8  # data tokens to remember and copy (paper: 16)
    n_symbols: int = 8  # data vocabulary size, ids 2..n_symbols + 1 (paper: vocabulary 16)

    def validate(self) -> None:
        super().validate()
        require_min(self, 1, "length", "n_data", "n_symbols")
        require(self, "n_data", self.n_data <= self.length, f"<= length ({self.length})")


def build_selective_copying(c: SelectiveCopyingConfig) -> TaskData:
    """x: ``length`` positions of BLANK with ``n_data`` data tokens at random positions, then
    ``n_data`` MARKERs; y: the data tokens in order at the marker positions, IGNORE elsewhere.

    Shapes: x, y (b, length + n_data) int64.
    """
    g, b, L = generator(c.seed), c.n_train + c.n_val + c.n_test, c.length + c.n_data
    pos = _random_subsets(g, b, c.length, c.n_data).sort(dim=1).values  # (b, n_data)
    data = torch.randint(c.n_symbols, (b, c.n_data), generator=g) + 2  # (b, n_data)
    x = torch.full((b, L), BLANK, dtype=torch.int64)
    x.scatter_(1, pos, data)
    x[:, c.length :] = MARKER
    y = torch.full((b, L), IGNORE, dtype=torch.int64)
    y[:, c.length :] = data
    vocab = c.n_symbols + 2
    spec = token_spec(
        "selective-copying",
        vocab,
        L,
        itos=("<blank>", "<copy>", *(f"d{i}" for i in range(c.n_symbols))),
        description=f"copy the {c.n_data} data tokens scattered in {c.length} positions, in order",
    )
    return TaskData(spec, *split_rows(x, y, full_lengths(b, L), c.n_train, c.n_val))


# ----------------------------------------------------------------------------------------------
# Induction heads (Olsson et al. 2022; the Mamba paper's version, section 4.1.2)


@dataclass(frozen=True)
class InductionHeadsConfig(_Sizes, TaskConfig):
    """Induction heads: recall the token that followed the trigger's first occurrence."""

    length: int = 64  # sequence length (paper: 256 for training)
    n_symbols: int = 16  # ordinary tokens; the trigger is id n_symbols (paper: vocab 16)

    def validate(self) -> None:
        super().validate()
        require_min(self, 3, "length")
        require_min(self, 1, "n_symbols")


def build_induction_heads(c: InductionHeadsConfig) -> TaskData:
    """x: random tokens; the trigger at a random position p <= length - 3, the answer at p + 1,
    the trigger again at the last position; y: the answer at the last position only.

    Shapes: x, y (b, length) int64.
    """
    g, b, L = generator(c.seed), c.n_train + c.n_val + c.n_test, c.length
    trigger = c.n_symbols
    x = torch.randint(c.n_symbols, (b, L), generator=g)
    p = torch.randint(0, L - 2, (b,), generator=g)  # first trigger position, (b,)
    rows = torch.arange(b)
    answer = x[rows, p + 1]  # (b,)
    x[rows, p] = trigger
    x[:, -1] = trigger
    y = torch.full((b, L), IGNORE, dtype=torch.int64)
    y[:, -1] = answer
    vocab = c.n_symbols + 1
    spec = token_spec(
        "induction-heads",
        vocab,
        L,
        itos=(*(f"t{i}" for i in range(c.n_symbols)), "<trigger>"),
        description="after the second trigger, output the token that followed the first",
    )
    return TaskData(spec, *split_rows(x, y, full_lengths(b, L), c.n_train, c.n_val))


# ----------------------------------------------------------------------------------------------
# Multi-query associative recall (Zoology, arXiv 2312.04927)


@dataclass(frozen=True)
class MQARConfig(_Sizes, TaskConfig):
    """MQAR: key-value pairs, then keys queried at random later positions."""

    length: int = 64  # sequence length (pairs take the first 2 * n_pairs positions)
    n_pairs: int = 8  # key-value pairs per sequence (Zoology: 4 to 64)
    n_queries: int = 8  # queried keys per sequence, distinct, at most n_pairs
    n_keys: int = 32  # key vocabulary; keys in a sequence are distinct
    n_values: int = 32  # value vocabulary (values may repeat)

    def validate(self) -> None:
        super().validate()
        require_min(self, 1, "length", "n_pairs", "n_queries", "n_keys", "n_values")
        require(self, "n_pairs", self.n_pairs <= self.n_keys, f"<= n_keys ({self.n_keys})")
        require(self, "n_queries", self.n_queries <= self.n_pairs, f"<= n_pairs ({self.n_pairs})")
        room = self.length - 2 * self.n_pairs
        require(self, "n_queries", self.n_queries <= room, f"<= length - 2 * n_pairs ({room})")


def build_mqar(c: MQARConfig) -> TaskData:
    """x: k_1 v_1 ... k_P v_P, then blanks with ``n_queries`` stored keys at random positions;
    y: at each query position the value stored with that key, IGNORE elsewhere.

    Ids: 0 blank, keys 1..n_keys, values n_keys + 1 .. n_keys + n_values.
    Shapes: x, y (b, length) int64.
    """
    g, b, L, P = generator(c.seed), c.n_train + c.n_val + c.n_test, c.length, c.n_pairs
    keys = _random_subsets(g, b, c.n_keys, P) + 1  # (b, P)
    values = torch.randint(c.n_values, (b, P), generator=g) + 1 + c.n_keys  # (b, P)
    x = torch.zeros(b, L, dtype=torch.int64)
    x[:, 0 : 2 * P : 2] = keys
    x[:, 1 : 2 * P : 2] = values
    which = _random_subsets(g, b, P, c.n_queries)  # (b, q) queried pairs
    where = _random_subsets(g, b, L - 2 * P, c.n_queries) + 2 * P  # (b, q) query positions
    x.scatter_(1, where, keys.gather(1, which))
    y = torch.full((b, L), IGNORE, dtype=torch.int64)
    y.scatter_(1, where, values.gather(1, which))
    vocab = 1 + c.n_keys + c.n_values
    spec = TaskSpec(
        name="mqar",
        kind="tokens",
        input="tokens",
        vocab_size=vocab,
        d_input=None,
        n_outputs=vocab,
        max_length=L,
        causal=True,
        pad_id=None,
        itos=(
            "<blank>",
            *(f"k{i}" for i in range(c.n_keys)),
            *(f"v{i}" for i in range(c.n_values)),
        ),
        description=f"{P} key-value pairs, then {c.n_queries} queries answered by their values",
    )
    return TaskData(spec, *split_rows(x, y, full_lengths(b, L), c.n_train, c.n_val))


# ----------------------------------------------------------------------------------------------
# Copying memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016, arXiv 1511.06464)


@dataclass(frozen=True)
class CopyingConfig(_Sizes, TaskConfig):
    """Copying memory: k symbols, a long blank delay, a delimiter, then reproduce the symbols."""

    n_copy: int = 10  # symbols to copy (Arjovsky et al.: 10)
    delay: int = 50  # T: T - 1 blanks after the symbols, then the delimiter
    n_symbols: int = 8  # alphabet size, ids 1..n_symbols (Arjovsky et al.: 8)
    score_blanks: bool = False  # also score "blank" at every other position (the paper's loss)

    def validate(self) -> None:
        super().validate()
        require_min(self, 1, "n_copy", "delay", "n_symbols")


def build_copying(c: CopyingConfig) -> TaskData:
    """x: k symbols, T - 1 blanks, the delimiter, k blanks (length T + 2k); y: the k symbols
    at the last k positions (blank targets elsewhere when ``score_blanks``, else IGNORE).

    Ids: 0 blank, 1..n_symbols symbols, n_symbols + 1 delimiter. Shapes: x, y (b, T + 2k).
    """
    g, b, k = generator(c.seed), c.n_train + c.n_val + c.n_test, c.n_copy
    L = c.delay + 2 * k
    symbols = torch.randint(c.n_symbols, (b, k), generator=g) + 1  # (b, k)
    x = torch.zeros(b, L, dtype=torch.int64)
    x[:, :k] = symbols
    x[:, k + c.delay - 1] = c.n_symbols + 1
    y = torch.full((b, L), 0 if c.score_blanks else IGNORE, dtype=torch.int64)
    y[:, L - k :] = symbols
    vocab = c.n_symbols + 2
    spec = token_spec(
        "copying",
        vocab,
        L,
        itos=("<blank>", *(f"s{i}" for i in range(c.n_symbols)), "<delim>"),
        description=f"reproduce {k} symbols after a delay of {c.delay} steps",
    )
    return TaskData(spec, *split_rows(x, y, full_lengths(b, L), c.n_train, c.n_val))


# ----------------------------------------------------------------------------------------------
# Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015, arXiv 1504.00941)


@dataclass(frozen=True)
class AddingConfig(_Sizes, TaskConfig):
    """Adding problem: sum the two values whose marker channel is 1."""

    length: int = 100  # sequence length T

    def validate(self) -> None:
        super().validate()
        require_min(self, 2, "length")


def build_adding(c: AddingConfig) -> TaskData:
    """x[..., 0] ~ U[0, 1); x[..., 1] marks one step in the first half and one in the second;
    y = the sum of the two marked values (expected 1, variance 1/6).

    Shapes: x (b, length, 2) float32, y (b, 1) float32.
    """
    g, b, L = generator(c.seed), c.n_train + c.n_val + c.n_test, c.length
    half = L // 2
    values = torch.rand(b, L, generator=g)  # (b, l)
    first = torch.randint(0, half, (b,), generator=g)
    second = torch.randint(half, L, (b,), generator=g)
    marks = torch.zeros(b, L)
    rows = torch.arange(b)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = torch.stack([values, marks], dim=-1)  # (b, l, 2)
    y = (values[rows, first] + values[rows, second])[:, None]  # (b, 1)
    spec = TaskSpec(
        name="adding",
        kind="regression",
        input="features",
        vocab_size=None,
        d_input=2,
        n_outputs=1,
        max_length=L,
        causal=True,
        pad_id=None,
        description="sum of the two marked values (predicting 1 always gives MSE 1/6)",
    )
    return TaskData(spec, *split_rows(x, y, full_lengths(b, L), c.n_train, c.n_val))


register(
    "selective-copying",
    SelectiveCopyingConfig,
    build_selective_copying,
    "copy scattered data tokens in order (Mamba)",
)
register(
    "induction-heads",
    InductionHeadsConfig,
    build_induction_heads,
    "recall the token after a trigger (Mamba)",
)
register("mqar", MQARConfig, build_mqar, "multi-query associative recall (Zoology)")
register("copying", CopyingConfig, build_copying, "copying memory problem (Arjovsky et al.)")
register("adding", AddingConfig, build_adding, "adding problem (Hochreiter & Schmidhuber)")
