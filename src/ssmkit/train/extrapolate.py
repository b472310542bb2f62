"""Evaluation at other lengths: streaming (chunked) evaluation and the length sweep.

``evaluate_chunked`` runs each batch through :meth:`SequenceModel.forward_chunks`, so the
activations held at any time are O(batch x chunk) whatever the sequence length, and adds up
the same sums as :func:`ssmkit.train.loop.evaluate` (equal metrics, tested).
``extrapolate`` rebuilds a trained run's task at each requested length with fresh sequences
and evaluates it; ``write_report`` saves ``extrapolation.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ssmkit import data
from ssmkit.core.kinds import TaskKind, task_kind
from ssmkit.train import checkpoint as ckpt
from ssmkit.train.objectives import batch_sums, finalize, piece_sums
from ssmkit.train.run import LoadedRun, rebuild_task

Tensor = torch.Tensor

# The config field that sets a task's sequence length, where it is not called "length".
LENGTH_FIELD = {"copying": "delay"}
REPORT = ("extrapolation.json", "extrapolation.md", "extrapolation.png")


@torch.no_grad()
def evaluate_chunked(
    model: torch.nn.Module,
    split: data.Split,
    kind: str | TaskKind,
    batch_size: int,
    chunk: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Metrics of ``model`` on ``split``, feeding each sequence in pieces of ``chunk`` steps.

    Args:
        model: a recurrent :class:`~ssmkit.models.sequence.SequenceModel`.
        split: the data; (b, l) token ids or (b, l, d) features with targets and lengths.
        kind: the task kind (``TaskSpec.kind``).
        batch_size: sequences per batch.
        chunk: steps per piece; the state is passed from piece to piece.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kind = task_kind(kind)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}

    def add(part: dict[str, Tensor]) -> None:
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + float(v)

    n = len(split)
    for first in range(0, n, batch_size):
        rows = slice(first, min(first + batch_size, n))
        x, y, lengths = split.x[rows], split.y[rows], split.lengths[rows]
        l = int(lengths.max())
        x, lengths = x[:, :l].to(device), lengths.to(device)
        counts = None  # per-item counts (TaskKind.item_counts) summed over the pieces
        for start, out in model.forward_chunks(x, lengths, chunk):
            if not kind.per_step:  # one output per sequence, after the last piece
                add(batch_sums(kind, out, y.to(device), lengths))
                continue
            y_piece = y[:, start : start + out.shape[1]].to(device)
            part, piece = piece_sums(kind, out, y_piece, (lengths - start).clamp(min=0))
            add(part)
            if piece is not None:
                counts = piece if counts is None else tuple(map(torch.add, counts, piece))
        if counts is not None:
            add(kind.sequence_sums(*counts))
    model.train(was_training)
    return finalize(kind, sums) if sums else {}


def length_field(task: str, config: object) -> str:
    """The config field of ``task`` that sets its sequence length; ValueError if it has none."""
    name = LENGTH_FIELD.get(task, "length")
    if not hasattr(config, name):
        raise ValueError(
            f"task {task!r} has no length setting (no field {name!r}), so it cannot be "
            "rebuilt at other lengths; tasks with one: "
            + ", ".join(t for t in data.task_names() if _has_length(t))
        )
    return name


def _has_length(task: str) -> bool:
    return hasattr(data.task_config(task), LENGTH_FIELD.get(task, "length"))


def extrapolate(
    run: LoadedRun,
    lengths: Sequence[int],
    n: int = 64,
    chunk: int = 1024,
    batch_size: int = 16,
    seed: int | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """Accuracy (the task's primary metric) of a trained run at each length.

    At each length the task is rebuilt with ``n`` test sequences from ``seed`` (default: the
    training seed + 1, so none is a training sequence), a one-sequence training split and no
    validation split, and evaluated in chunks with state passing.

    Returns:
        The report: run facts, the trained length and one record per length.
    """
    cfg, name = run.config.task_config, run.config.task
    field = length_field(name, cfg)
    for f in ("n_train", "n_val", "n_test"):
        if not hasattr(cfg, f):
            raise ValueError(f"task {name!r} has no {f} field; extrapolate needs generated data")
    if not lengths or any(int(L) < 1 for L in lengths):
        raise ValueError(f"lengths must be positive integers, got {list(lengths)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seed = int(cfg.seed) + 1 if seed is None else seed
    kind = run.task.spec.kind
    metric = task_kind(kind).metric
    records = []
    for L in lengths:
        overrides = {field: int(L), "n_train": 1, "n_val": 0, "n_test": n, "seed": seed}
        task = rebuild_task(run.config, run.task.spec, overrides)
        t0 = time.perf_counter()
        m = evaluate_chunked(run.model, task.test, kind, batch_size, chunk, device)
        seconds = time.perf_counter() - t0
        tokens = int(task.test.lengths.sum())
        rec = {field: int(L), "seq_length": task.spec.max_length, "n": n, **m,
               "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}  # fmt: skip
        records.append(rec)
        rate = f"{seconds:.1f} s, {tokens / seconds:,.0f} tokens/s"
        log(f"{field} {L:>8}: {metric} {m[metric]:.4f}  ({n} sequences of "
            f"{task.spec.max_length} steps, {rate})")  # fmt: skip
    return {
        "run_dir": str(run.run_dir),
        "task": name,
        "layer": run.config.model.layer,
        "length_field": field,
        "trained_length": int(getattr(cfg, field)),
        "metric": metric,
        "chunk": chunk,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "results": records,
    }


def write_report(report: dict, out_dir: Path, plot: bool = True) -> list[Path]:
    """Write ``extrapolation.json`` and ``extrapolation.md`` (and ``.png`` when ``plot``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / REPORT[0], out_dir / REPORT[1]]
    ckpt.atomic_write_json(paths[0], report)
    paths[1].write_text(markdown(report))
    if plot:
        from ssmkit.train.plots import pyplot

        paths.append(_plot(pyplot(), [report], out_dir / REPORT[2]))
    return paths


def markdown(report: dict) -> str:
    """The sweep as a markdown table."""
    field, metric = report["length_field"], report["metric"]
    lines = [
        f"{report['task']}, {report['layer']}, trained at {field} {report['trained_length']} "
        f"(chunk {report['chunk']}, seed {report['seed']})",
        "",
        f"| {field} | steps | sequences | {metric} | seconds | tokens/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r[field]} | {r['seq_length']} | {r['n']} | {r[metric]:.4f} | "
            f"{r['seconds']:.1f} | {r['tokens_per_s']:,} |"
        )
    return "\n".join(lines) + "\n"


def _plot(plt, reports: Sequence[dict], path: Path) -> Path:
    """Metric against length (log axis) for one or several reports of the same task."""
    first = reports[0]
    field, metric = first["length_field"], first["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for report in reports:
        xs = [r[field] for r in report["results"]]
        ys = [r[metric] for r in report["results"]]
        ax.plot(xs, ys, marker="o", label=report.get("label", report["layer"]))
    for trained in sorted({r["trained_length"] for r in reports}):
        ax.axvline(trained, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"{field} (log scale; dashed: training length)")
    ax.set_ylabel(f"test {metric}")
    if metric.endswith("accuracy"):
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{first['task']} at other lengths")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(paths: Sequence[Path], out_dir: Path, plot: bool = True) -> list[Path]:
    """One table (``comparison.md``) and one plot (``comparison.png``) of several reports.

    The reports must be of the same task and length field; each is labelled by its layer,
    or by its directory's name when two share a layer (seeds).
    """
    reports = [load_report(p) for p in paths]
    if not reports:
        raise ValueError("compare needs at least one extrapolation.json")
    keys = {(r["task"], r["length_field"], r["metric"]) for r in reports}
    if len(keys) > 1:
        raise ValueError(f"reports of different tasks or metrics cannot be compared: {keys}")
    layers = [r["layer"] for r in reports]
    for path, report in zip(paths, reports, strict=True):
        dup = layers.count(report["layer"]) > 1
        report["label"] = Path(path).parent.name if dup else report["layer"]
    field, metric = reports[0]["length_field"], reports[0]["metric"]
    lengths = sorted({r[field] for rep in reports for r in rep["results"]})
    head = " | ".join(f"{L:,}" for L in lengths)
    lines = [
        f"{reports[0]['task']}: test {metric} by {field}",
        "",
        f"| model | trained at | {head} |",
        "|---|---:|" + "---:|" * len(lengths),
    ]
    for rep in reports:
        by_len = {r[field]: r[metric] for r in rep["results"]}
        cells = " | ".join(f"{by_len[L]:.3f}" if L in by_len else "-" for L in lengths)
        lines.append(f"| {rep['label']} | {rep['trained_length']} | {cells} |")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "comparison.md"]
    written[0].write_text("\n".join(lines) + "\n")
    if plot:
        from ssmkit.train.plots import pyplot

        written.append(_plot(pyplot(), reports, out_dir / "comparison.png"))
    return written


def load_report(path: Path) -> dict:
    """An ``extrapolation.json`` written by :func:`write_report`."""
    report = json.loads(Path(path).read_text())
    if not isinstance(report, dict) or "results" not in report:
        raise ValueError(f"{path} is not an extrapolation report")
    return report
