"""``ssmkit train``, ``eval``, ``generate``, ``export`` and ``plot``: sequence models on offline
tasks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ssmkit.models.sequence import ALL_LAYERS

PROGRESS = ("auto", "bar", "lines", "off")
EXTEND = ("epochs", "max_steps", "train.epochs", "train.max_steps")  # allowed with --resume


def _overrides(extra: list[str]) -> list[tuple[str, str]]:
    """``--key value`` / ``--key=value`` pairs from the arguments argparse did not know."""
    pairs, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ValueError(f"expected --key value overrides, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(extra):
            key, value = arg[2:], extra[i + 1]
            i += 2
        else:
            raise ValueError(f"{arg} needs a value")
        pairs.append((key.replace("-", "_"), value))
    return pairs


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from ssmkit.train import TrainingInterruptedError, apply_overrides, default_run, train
    from ssmkit.train.config import available_device
    from ssmkit.train.run import read_config

    if args.resume:
        pairs = _overrides(extra)
        if args.task or args.model or any(k not in EXTEND for k, _ in pairs):
            raise ValueError(
                "--resume continues a run as configured; only --epochs N and --max_steps N "
                "may be given (to extend it)"
            )
        run_dir = Path(args.resume)
        run = apply_overrides(read_config(run_dir), pairs)
    else:
        run = apply_overrides(
            default_run(args.task or "digits", args.model or "s4d"), _overrides(extra)
        )
        if args.out:
            run_dir = Path(args.out)
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("under torchrun pass --out RUN_DIR so that every process uses it")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(args.runs) / f"{run.task}-{run.model.layer}-{stamp}"
    available_device(run.train.device, "device")  # before the run directory is made
    rank0 = int(os.environ.get("RANK", "0")) == 0
    say = print if rank0 else (lambda *a: None)
    say(f"run directory: {run_dir}")
    say(f"task {run.task}, model {run.model.layer} (d_model {run.model.d_model}, "
        f"{run.model.n_layers} layers), {run.train.epochs} epochs")  # fmt: skip
    try:
        summary = train(run, run_dir, resume=bool(args.resume), progress=args.progress, log=say)
    except TrainingInterruptedError as e:
        if rank0:
            print(f"{e}; resume with: ssmkit train --resume {run_dir}", file=sys.stderr)
        return 130
    if not rank0:
        return 0
    metric = summary["metric"]
    value = summary["test"].get(metric)
    say(f"test {metric}: {value:.4f}" if value is not None else "test: no test split")
    if not args.no_plot:
        try:
            from ssmkit.train.plots import plot_run
            from ssmkit.train.run import load_run

            for path in plot_run(load_run(run_dir)):
                say(f"plot: {path}")
        except ValueError as e:  # matplotlib missing
            say(f"no plots: {e}")
    say(f"run directory: {run_dir}")
    return 0


def task_overrides(extra: list[str], command: str) -> dict[str, str]:
    """``--task.FIELD VALUE`` pairs of ``eval``/``extrapolate``; anything else is an error."""
    out = {}
    for key, value in _overrides(extra):
        if not key.startswith("task.") or len(key) == 5:
            raise ValueError(
                f"{command} takes task overrides as --task.FIELD VALUE (e.g. --task.length "
                f"65536 --task.seed 7), got --{key}"
            )
        out[key[5:]] = value
    return out


def _cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from ssmkit.train import evaluate
    from ssmkit.train.extrapolate import evaluate_chunked
    from ssmkit.train.run import load_run

    overrides = task_overrides(extra, "eval")
    if args.batch_size < 1 or args.chunk < 0:
        raise ValueError(
            f"--batch-size must be >= 1 and --chunk >= 0, got {args.batch_size} and {args.chunk}"
        )
    run = load_run(Path(args.run_dir), args.weights, args.device, overrides)
    if overrides and ({"n_train", "n_val"} & set(overrides)) and "seed" not in overrides:
        note = ("note: new split sizes with the training seed make test sequences that may have "
                "been training sequences; pass --task.seed to draw new ones")  # fmt: skip
        print(note, file=sys.stderr)
    split = run.task.splits()[args.split]
    kind = run.spec.kind
    if args.chunk:
        metrics = evaluate_chunked(run.model, split, kind, args.batch_size, args.chunk, args.device)
    else:
        metrics = evaluate(run.model, split, kind, args.batch_size, args.device)
    record = {"split": args.split, "weights": args.weights, "task": overrides, **metrics}
    print(json.dumps(record, indent=2))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ssmkit.train.run import load_run

    run = load_run(Path(args.run_dir), args.weights, args.device)
    spec = run.spec  # the saved vocabulary: generating never reads the training data
    if spec.kind != "tokens" or spec.input != "tokens":
        raise ValueError(f"generate needs a token task; {run.config.task} is {spec.kind!r}")
    if spec.itos is not None:
        stoi = {s: i for i, s in enumerate(spec.itos)}
        unknown = sorted({ch for ch in args.prompt if ch not in stoi})
        if unknown:
            raise ValueError(f"--prompt has characters outside the vocabulary: {unknown}")
        ids = [stoi[ch] for ch in args.prompt]
    else:
        try:
            ids = [int(t) for t in args.prompt.split()]
        except ValueError:
            raise ValueError(
                "this task has no text vocabulary: give --prompt as token ids"
            ) from None
    if not ids:
        raise ValueError("--prompt is empty")
    g = torch.Generator().manual_seed(args.seed)

    def show(tokens: list[int], first: bool = False) -> None:  # printed as soon as decoded
        if spec.itos is not None:
            print("".join(spec.itos[i] for i in tokens), end="", flush=True)
        else:
            print(("" if first else " ") + " ".join(map(str, tokens)), end="", flush=True)

    show(ids, first=True)
    run.model.generate(
        torch.tensor([ids], device=args.device), args.max_new_tokens, args.temperature,
        args.top_k, args.top_p, greedy=args.greedy, generator=g,
        repetition_penalty=args.repetition_penalty, streamer=lambda t: show(t.tolist()),
    )  # fmt: skip
    print()
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ssmkit.models.export import save_sequence_model
    from ssmkit.train.run import load_run

    run = load_run(Path(args.run_dir), args.weights)
    out = save_sequence_model(run.model, args.to, run.spec.itos)
    print(f"exported {args.run_dir} ({args.weights} weights) to {out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from ssmkit.train.plots import plot_run
    from ssmkit.train.run import load_run

    for path in plot_run(load_run(Path(args.run_dir), args.weights)):
        print(f"plot: {path}")
    return 0


def _options_epilog() -> str:
    """The overridable fields with the values plain ``ssmkit train`` uses, the measured
    settings other tasks start from, and each task's fields, for ``ssmkit train --help``."""
    import dataclasses

    from ssmkit import data
    from ssmkit.train.config import RECOMMENDED, RECOMMENDED_FOR_LAYER, TrainConfig, default_run

    def fields(cfg: object) -> str:
        return ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))

    def settings(table: dict[str, dict[str, object]]) -> str:
        return "; ".join(
            f"{part} " + ", ".join(f"{k}={v}" for k, v in values.items())
            for part, values in table.items()
        )

    plain, base = default_run(), TrainConfig()
    lines = [
        f"plain `ssmkit train` (--task {plain.task} --model {plain.model.layer}) uses:",
        f"  model options: {fields(plain.model)}",
        f"  train options: {fields(plain.train)}",
        f"other tasks and layers start from the config defaults (train: epochs={base.epochs}, "
        f"lr={base.lr}) changed by these measured settings:",
    ]
    lines += [f"  --task {task}: {settings(table)}" for task, table in RECOMMENDED.items()]
    lines += [
        f"  --task {task} --model {layer}: {settings(table)}"
        for (task, layer), table in RECOMMENDED_FOR_LAYER.items()
    ]
    lines.append("task options (defaults):")
    lines += [f"  task {name}: {fields(data.task_config(name))}" for name in data.task_names()]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval``, ``generate``, ``export`` and ``plot`` to the ``ssmkit`` command."""
    tr = sub.add_parser(
        "train",
        help="train a model on a task (no arguments: S4D on sequential digits)",
        description="Train a sequence model. Any field of the task, model or train config "
        "can be set as --FIELD VALUE (or --task.FIELD / --model.FIELD / --train.FIELD when "
        "the name is ambiguous); `ssmkit list` shows tasks and models.",
        epilog=_options_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--task", help="task name (default digits)")
    tr.add_argument("--model", choices=ALL_LAYERS, help="layer type of the blocks (default s4d)")
    tr.add_argument("--out", help="run directory (default runs/TASK-MODEL-TIMESTAMP)")
    tr.add_argument("--runs", default="runs", help="parent of new run directories")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    tr.add_argument("--progress", default="auto", choices=PROGRESS, help="progress display")
    tr.add_argument("--no-plot", action="store_true", help="do not write plots at the end")
    tr.set_defaults(fn=_cmd_train, extra_ok=True)

    ev = sub.add_parser(
        "eval",
        help="metrics of a trained run on a split",
        description="Metrics of a trained run. --task.FIELD VALUE rebuilds its task with other "
        "fields (e.g. --task.length 65536 --task.n_test 64 --task.seed 7); fields that change "
        "the vocabulary, classes or features are refused.",
    )
    ev.add_argument("run_dir")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--weights", default="best", choices=["best", "last"])
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--device", default="cpu")
    ev.add_argument(
        "--chunk", type=int, default=0,
        help="feed sequences in pieces of this many steps with state passing (0: whole)",
    )  # fmt: skip
    ev.set_defaults(fn=_cmd_eval, extra_ok=True)

    gen = sub.add_parser("generate", help="continue a prompt with a trained token model")
    gen.add_argument("run_dir")
    gen.add_argument("--prompt", required=True, help="text (text tasks) or token ids")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--greedy", action="store_true")
    gen.add_argument(
        "--repetition-penalty", type=float, default=1.0,
        help="> 1 discourages tokens already present (CTRL; default 1: off)",
    )  # fmt: skip
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--weights", default="best", choices=["best", "last"])
    gen.add_argument("--device", default="cpu")
    gen.set_defaults(fn=_cmd_generate)

    ex = sub.add_parser(
        "export",
        help="write a trained run as a self-contained model directory (config.json + "
        "model.safetensors) that ssmkit.models.from_pretrained reads",
    )
    ex.add_argument("run_dir")
    ex.add_argument("--to", required=True, metavar="DIR", help="output directory")
    ex.add_argument("--weights", default="best", choices=["best", "last"])
    ex.set_defaults(fn=_cmd_export)

    pl = sub.add_parser("plot", help="training curves, kernels and step sizes as PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--weights", default="best", choices=["best", "last"])
    pl.set_defaults(fn=_cmd_plot)
