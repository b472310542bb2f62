"""The task contract: what a builder returns, the registry, and config checking.

A task is a frozen config dataclass plus a deterministic builder ``config -> TaskData``.
Every split is a materialised, right-padded tensor triple ``(x, y, lengths)`` whose meaning
is fixed by the :class:`TaskSpec` (``kind`` and ``input``; the kinds are defined, with their
losses and metrics, in :mod:`ssmkit.core.kinds`):

=================  ==========================================================================
kind               y
=================  ==========================================================================
classification     (b,) int64 class ids in [0, n_outputs); cross-entropy, accuracy
regression         (b, n_outputs) float32, one target per sequence; MSE
tokens             (b, l) int64 target token per position, ``IGNORE`` (-100) where not scored
forecast           (b, l, n_outputs) float32 per-step targets; positions >= length ignored
=================  ==========================================================================

``x`` is (b, l) int64 ids in [0, vocab_size) when ``input == "tokens"`` and (b, l, d_input)
float32 when ``input == "features"``.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ssmkit.core.checks import check_choice
from ssmkit.core.kinds import IGNORE, TASK_KINDS  # noqa: F401 (IGNORE: ssmkit.data exports it)
from ssmkit.data.fields import base_type, field_types, parse_field

Tensor = torch.Tensor

KINDS = tuple(TASK_KINDS)
INPUTS = ("tokens", "features")


@dataclass(frozen=True)
class TaskSpec:
    """What a task's tensors mean; the model and the training loop read only this."""

    name: str  # registry name, e.g. "selective-copying"
    kind: str  # "classification" | "regression" | "tokens" | "forecast"
    input: str  # "tokens" (x int64 ids) | "features" (x float32 (b, l, d_input))
    vocab_size: int | None  # input vocabulary when input == "tokens" (incl. pad/special ids)
    d_input: int | None  # feature size when input == "features"
    n_outputs: int  # classes, output vocabulary, or regression/forecast dimension
    max_length: int  # l of the padded tensors
    causal: bool  # True when the model must not see the future
    pad_id: int | None  # input padding id for token inputs (None: no padding)
    itos: tuple[str, ...] | None = None  # id -> string for text tasks (decoding, `generate`)
    description: str = ""
    classes: tuple[str, ...] | None = None  # class names of a classification task, if known
    mean: tuple[float, ...] | None = None  # per-feature mean removed from the data (train stats)
    std: tuple[float, ...] | None = None  # per-feature std the data was divided by

    def __post_init__(self) -> None:
        check_choice("TaskSpec.kind", self.kind, KINDS)
        check_choice("TaskSpec.input", self.input, INPUTS)
        if self.input == "tokens" and (self.vocab_size is None or self.vocab_size < 1):
            raise ValueError(
                f"TaskSpec.vocab_size must be >= 1 for token input, got {self.vocab_size}"
            )
        if self.input == "features" and (self.d_input is None or self.d_input < 1):
            raise ValueError(f"TaskSpec.d_input must be >= 1 for feature input, got {self.d_input}")
        if self.n_outputs < 1 or self.max_length < 1:
            raise ValueError(
                f"TaskSpec.n_outputs and max_length must be >= 1, got {self.n_outputs}, "
                f"{self.max_length}"
            )


@dataclass
class Split:
    """One split: right-padded inputs, targets and the valid length of each sequence.

    Attributes:
        x: (b, l) int64 token ids, or (b, l, d_input) float32 features.
        y: targets; shape by ``TaskSpec.kind`` (see the module docstring).
        lengths: (b,) int64 valid length of each sequence (== l when not padded).
    """

    x: Tensor
    y: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """The same split with its tensors on ``device``."""
        return Split(self.x.to(device), self.y.to(device), self.lengths.to(device))


@dataclass
class TaskData:
    """A built task: its spec and three splits."""

    spec: TaskSpec
    train: Split
    val: Split
    test: Split

    def splits(self) -> dict[str, Split]:
        """The splits by name, in the order train, val, test."""
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its config type, its builder and a one-line summary."""

    name: str
    config_cls: type
    build: Callable[[typing.Any], TaskData] = field(repr=False)
    summary: str
    # builds the task inside a trained spec's spaces (e.g. its saved vocabulary); None: build
    rebuild: Callable[[typing.Any, TaskSpec], TaskData] | None = field(default=None, repr=False)


TASKS: dict[str, TaskEntry] = {}


def register(
    name: str,
    config_cls: type,
    build: Callable,
    summary: str,
    rebuild: Callable | None = None,
) -> None:
    """Add a task to :data:`TASKS` (called once by each task module at import).

    ``rebuild(config, trained_spec)`` is given by tasks whose spaces come from the data (a
    text vocabulary): it builds the task from new data inside the trained spaces.
    """
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered")
    if not (dataclasses.is_dataclass(config_cls) and config_cls.__dataclass_params__.frozen):
        raise TypeError(f"config of task {name!r} must be a frozen dataclass, got {config_cls}")
    TASKS[name] = TaskEntry(name, config_cls, build, summary, rebuild)


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(TASKS)


def _entry(name: str) -> TaskEntry:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {task_names()}")
    return TASKS[name]


def task_config(name: str) -> typing.Any:
    """The default config of task ``name`` (a frozen dataclass; change it with
    :func:`dataclasses.replace` or :func:`override_config`)."""
    return _entry(name).config_cls()


def build_task(name: str, config: typing.Any = None, trained: TaskSpec | None = None) -> TaskData:
    """Build task ``name`` from ``config`` (``None``: the defaults) and check the result.

    ``trained``: the spec a model was trained on (saved in its run directory); a task whose
    spaces come from the data (a text vocabulary) is then built inside them, so that new or
    changed data is read with the trained vocabulary. Other tasks ignore it.

    Raises:
        ValueError: unknown task name (the message lists the valid ones).
        TypeError: ``config`` is not the task's config type.
    """
    entry = _entry(name)
    if config is None:
        config = entry.config_cls()
    if type(config) is not entry.config_cls:
        raise TypeError(
            f"config of task {name!r} must be {entry.config_cls.__name__}, "
            f"got {type(config).__name__}"
        )
    if trained is not None and entry.rebuild is not None:
        return check_task_data(entry.rebuild(config, trained))
    return check_task_data(entry.build(config))


# ----------------------------------------------------------------------------------------------
# The spec as JSON (a run directory's ``task.json``).


def spec_to_json(spec: TaskSpec) -> dict[str, typing.Any]:
    """JSON-ready dict of ``spec`` (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


def spec_from_json(obj: object) -> TaskSpec:
    """The :class:`TaskSpec` saved by :func:`spec_to_json`; every field's type is checked.

    Raises:
        ValueError: not an object, a missing or unknown field, or a value of the wrong type.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"a task spec must be a JSON object, got {type(obj).__name__}")
    hints = typing.get_type_hints(TaskSpec)
    unknown = set(obj) - set(hints)
    required = {f.name for f in dataclasses.fields(TaskSpec) if f.default is dataclasses.MISSING}
    missing = required - set(obj)
    if unknown or missing:
        raise ValueError(
            f"task spec: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}"
        )
    values = {}
    for key, value in obj.items():
        base, optional = base_type(hints[key])
        if value is None and optional:
            values[key] = None
            continue
        if typing.get_origin(base) is tuple:  # tuple[str, ...] or tuple[float, ...]
            item = typing.get_args(base)[0]
            ok = isinstance(value, list) and all(
                type(v) is item or (item is float and type(v) is int) for v in value
            )
            value = tuple(value) if ok else value
        else:
            ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
        if not ok:
            raise ValueError(f"task spec: {key} must be {hints[key]}, got {value!r}")
        values[key] = value
    return TaskSpec(**values)


# ----------------------------------------------------------------------------------------------
# Config fields: plain int / float / str / bool / optional path, checked on construction.


def check_config_types(config: typing.Any) -> None:
    """Raise ``TypeError`` naming the field when a config value has the wrong type."""
    name = type(config).__name__
    for f, tp in field_types(type(config)).items():
        value = getattr(config, f)
        base, optional = base_type(tp)
        if value is None and optional:
            continue
        ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            want = getattr(tp, "__name__", str(tp))
            raise TypeError(f"{name}.{f} must be {want}, got {type(value).__name__} {value!r}")


class TaskConfig:
    """Base of every task config: field types are checked, then :meth:`validate` runs.

    Subclasses are frozen dataclasses whose fields are plain int / float / str / bool or an
    optional path, one comment each, so a CLI can set them from strings and save them as JSON.
    """

    def __post_init__(self) -> None:
        check_config_types(self)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""


def require(config: typing.Any, field_name: str, ok: bool, expected: str) -> None:
    """Raise ``ValueError`` ``"<Config>.<field> must be <expected>, got <value>"`` unless ok."""
    if not ok:
        value = getattr(config, field_name)
        raise ValueError(f"{type(config).__name__}.{field_name} must be {expected}, got {value!r}")


def require_min(config: typing.Any, minimum: int | float, *field_names: str) -> None:
    """Each named field must be >= ``minimum``."""
    for f in field_names:
        require(config, f, getattr(config, f) >= minimum, f">= {minimum}")


def require_fraction(config: typing.Any, *field_names: str) -> None:
    """Each named field must lie in [0, 1), and together they must leave a training part."""
    for f in field_names:
        require(config, f, 0.0 <= getattr(config, f) < 1.0, "in [0, 1)")
    total = sum(getattr(config, f) for f in field_names)
    if total >= 1.0:
        raise ValueError(
            f"{type(config).__name__}: {' + '.join(field_names)} must be < 1 "
            f"(the rest is the training split), got {total}"
        )


def override_config(config: typing.Any, values: Mapping[str, typing.Any]) -> typing.Any:
    """A copy of ``config`` with fields replaced; string values are parsed by field type.

    This is what ``--task.FIELD value`` on the command line becomes.

    Raises:
        ValueError: unknown field (the message lists the valid ones) or unparsable value.
    """
    hints = field_types(type(config))
    changes = {}
    for key, value in values.items():
        if key not in hints:
            raise ValueError(
                f"unknown field {key!r} of {type(config).__name__}; expected one of {list(hints)}"
            )
        if isinstance(value, str):
            value = parse_field(type(config), key, value, f"{type(config).__name__}.{key}")
        changes[key] = value
    return dataclasses.replace(config, **changes)


def config_to_dict(config: typing.Any) -> dict[str, typing.Any]:
    """JSON-ready dict of a task config (paths become strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


# ----------------------------------------------------------------------------------------------
# Output checks: every build is verified against its spec.


def _fail(spec: TaskSpec, split: str, msg: str) -> None:
    raise ValueError(f"task {spec.name!r}, split {split!r}: {msg}")


def check_split(spec: TaskSpec, name: str, s: Split) -> None:
    """Raise ``ValueError`` unless ``s`` has the shapes, dtypes and ranges ``spec`` promises."""
    b, L = int(s.x.shape[0]), spec.max_length
    if spec.input == "tokens":
        if s.x.dtype != torch.int64 or tuple(s.x.shape) != (b, L):
            _fail(spec, name, f"x must be int64 (b, {L}), got {s.x.dtype} {tuple(s.x.shape)}")
        if b and (int(s.x.min()) < 0 or int(s.x.max()) >= spec.vocab_size):
            _fail(spec, name, f"token ids must lie in [0, {spec.vocab_size})")
    else:
        if s.x.dtype != torch.float32 or tuple(s.x.shape) != (b, L, spec.d_input):
            _fail(
                spec,
                name,
                f"x must be float32 (b, {L}, {spec.d_input}), got {s.x.dtype} {tuple(s.x.shape)}",
            )
        if not bool(torch.isfinite(s.x).all()):
            _fail(spec, name, "x holds NaN or inf")
    if s.lengths.dtype != torch.int64 or tuple(s.lengths.shape) != (b,):
        _fail(spec, name, f"lengths must be int64 ({b},), got {s.lengths.dtype} {s.lengths.shape}")
    if b and (int(s.lengths.min()) < 1 or int(s.lengths.max()) > L):
        _fail(spec, name, f"lengths must lie in [1, {L}]")
    pad = torch.arange(L) >= s.lengths[:, None]  # (b, l)
    padded = s.x[pad] if spec.input == "tokens" and spec.pad_id is not None else None
    if padded is not None and not bool((padded == spec.pad_id).all()):
        _fail(spec, name, f"positions past each length must hold pad_id {spec.pad_id}")
    kind = TASK_KINDS[spec.kind]
    shape, dtype = kind.y_shape(b, L, spec.n_outputs), kind.y_dtype
    if tuple(s.y.shape) != shape or s.y.dtype != dtype:
        got = f"{s.y.dtype} {tuple(s.y.shape)}"
        _fail(spec, name, f"y must be {dtype} {shape}, got {got}")
    if kind.class_targets and b:
        scored = s.y if kind.unscored is None else s.y[s.y != kind.unscored]
        if scored.numel() and (int(scored.min()) < 0 or int(scored.max()) >= spec.n_outputs):
            _fail(spec, name, f"targets must lie in [0, {spec.n_outputs}) (or IGNORE for tokens)")
    if not kind.class_targets and not bool(torch.isfinite(s.y).all()):
        _fail(spec, name, "y holds NaN or inf")


def check_task_data(data: TaskData) -> TaskData:
    """Check all three splits of ``data`` against its spec; returns ``data``."""
    if not isinstance(data, TaskData):
        raise TypeError(f"a task builder must return TaskData, got {type(data).__name__}")
    for name, s in data.splits().items():
        check_split(data.spec, name, s)
    if len(data.train) == 0:
        raise ValueError(f"task {data.spec.name!r}: the training split is empty")
    return data


def split_rows(x: Tensor, y: Tensor, lengths: Tensor, n_train: int, n_val: int) -> list[Split]:
    """Cut the batch axis into [train, val, test]: the first n_train rows, the next n_val, the
    rest."""
    cuts = (0, n_train, n_train + n_val, int(x.shape[0]))
    return [
        Split(x[a:e].contiguous(), y[a:e].contiguous(), lengths[a:e].contiguous())
        for a, e in itertools.pairwise(cuts)
    ]


def full_lengths(b: int, L: int) -> Tensor:
    """(b,) int64 lengths of unpadded sequences."""
    return torch.full((b,), L, dtype=torch.int64)


def generator(seed: int) -> torch.Generator:
    """A local, seeded torch generator (never the global RNG)."""
    return torch.Generator().manual_seed(seed)
