"""Character-level language modelling on a local text file.

The text is split by position: the first ``1 - val_fraction - test_fraction`` of the
characters train, the next part validates, the last part tests, so no window straddles two
splits. The vocabulary is the set of characters of the training part plus ``<unk>`` (id 0)
for characters seen only later; a trained run saves it and reads other files with it
(:func:`rebuild_text`). A window of ``length`` characters has next-character
targets: ``y[t] = text[start + t + 1]``.

The default text is the opening of Shakespeare's *Coriolanus* (public domain; about 32 KB,
the start of the "tiny Shakespeare" corpus), shipped as ``files/coriolanus.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssmkit.data.base import (
    Split,
    TaskConfig,
    TaskData,
    TaskSpec,
    full_lengths,
    register,
    require_fraction,
    require_min,
)

DEFAULT_TEXT = Path(__file__).resolve().parent / "files" / "coriolanus.txt"
UNK = "<unk>"


@dataclass(frozen=True)
class TextConfig(TaskConfig):
    """Next-character prediction on a UTF-8 text file."""

    path: str | None = None  # text file; None: the bundled opening of Coriolanus (~32 KB)
    length: int = 128  # characters per window (l)
    stride: int = 32  # step between training windows (val/test windows do not overlap)
    val_fraction: float = 0.05  # share of the text (after the training part) for validation
    test_fraction: float = 0.05  # share of the text (at the end) for testing
    seed: int = 0  # draws the offset of the first training window in [0, stride)

    def validate(self) -> None:
        require_min(self, 1, "length", "stride")
        require_fraction(self, "val_fraction", "test_fraction")


def read_text(path: str | Path) -> str:
    """The file's text, with a clear error when it is missing, not UTF-8 or empty."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"TextConfig.path: no such file {str(p)!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    if not text:
        raise ValueError(f"{p}: the file is empty")
    return text


def encode(text: str, itos: tuple[str, ...]) -> torch.Tensor:
    """(l,) int64 ids of ``text`` under vocabulary ``itos``; unknown characters -> ``<unk>``."""
    stoi = {s: i for i, s in enumerate(itos)}
    unk = stoi[UNK]
    return torch.tensor([stoi.get(ch, unk) for ch in text], dtype=torch.int64)


def decode(ids: torch.Tensor | list[int], itos: tuple[str, ...]) -> str:
    """The string of ids (``<unk>`` written as U+FFFD)."""
    return "".join("\ufffd" if itos[int(i)] == UNK else itos[int(i)] for i in ids)


def _windows(ids: torch.Tensor, length: int, stride: int, offset: int) -> Split:
    """Windows ids[s : s + length] with targets ids[s + 1 : s + length + 1]."""
    starts = torch.arange(offset, len(ids) - length, stride)  # (b,)
    idx = starts[:, None] + torch.arange(length)[None, :]  # (b, l)
    return Split(ids[idx], ids[idx + 1], full_lengths(len(starts), length))


def build_text(c: TextConfig) -> TaskData:
    """Shapes: x, y (b, length) int64 character ids; every position is scored.

    The vocabulary is the characters of the training part (plus ``<unk>``).
    """
    return _build(c, None)


def rebuild_text(c: TextConfig, trained: TaskSpec) -> TaskData:
    """:func:`build_text` with the vocabulary ``trained.itos`` a model was trained on.

    This is how a run reads a new or changed text file: characters outside the trained
    vocabulary become ``<unk>``; the ids of the others are those the model learned.

    Raises:
        ValueError: ``trained`` has no vocabulary with ``<unk>`` (it is not a text task's).
    """
    if trained.itos is None or UNK not in trained.itos:
        raise ValueError(
            f"rebuild_text needs the spec of a text task (a vocabulary with {UNK!r}), "
            f"got task {trained.name!r} with itos {trained.itos!r:.60}"
        )
    return _build(c, tuple(trained.itos))


def _build(c: TextConfig, itos: tuple[str, ...] | None) -> TaskData:
    """The task; ``itos`` None: the vocabulary of the training part."""
    path = DEFAULT_TEXT if c.path is None else Path(c.path)
    text = read_text(path)
    n = len(text)
    n_test = int(n * c.test_fraction)
    n_val = int(n * c.val_fraction)
    n_train = n - n_val - n_test
    parts = {
        "train": text[:n_train],
        "val": text[n_train : n_train + n_val],
        "test": text[n - n_test :],
    }
    for name, share in (("train", 1.0), ("val", c.val_fraction), ("test", c.test_fraction)):
        if share > 0 and len(parts[name]) < c.length + 1:
            raise ValueError(
                f"TextConfig.length must be < the {name} part of {path.name} "
                f"({len(parts[name])} characters), got {c.length}"
            )
    itos = (UNK, *sorted(set(parts["train"]))) if itos is None else itos
    offset = min(int(np.random.default_rng(c.seed).integers(0, c.stride)), n_train - c.length - 1)
    train = _windows(encode(parts["train"], itos), c.length, c.stride, offset)
    val = _windows(encode(parts["val"], itos), c.length, c.length, 0)
    test = _windows(encode(parts["test"], itos), c.length, c.length, 0)
    spec = TaskSpec(
        name="text",
        kind="tokens",
        input="tokens",
        vocab_size=len(itos),
        d_input=None,
        n_outputs=len(itos),
        max_length=c.length,
        causal=True,
        pad_id=None,
        itos=itos,
        description=f"next character of {path.name} ({n} characters, {len(itos)} symbols)",
    )
    return TaskData(spec, train, val, test)


register(
    "text", TextConfig, build_text, "character-level language model on a text file", rebuild_text
)
