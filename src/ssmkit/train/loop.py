"""The training loop: deterministic data order, checkpoints, resume, signals, metrics.

Determinism: the model is initialised from ``seed``; epoch ``e`` visits the training items in
the order ``randperm(N)`` drawn from a generator seeded with ``(seed, e)``; dropout at optimiser
step ``s`` draws from a generator seeded with ``(seed, s, rank)``; the learning rate is a pure
function of ``s``. A checkpoint therefore holds everything a bit-for-bit resume needs: weights,
optimiser moments and the counters (epoch, batch within the epoch, step, running sums).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ssmkit import data
from ssmkit.core.params import param_groups
from ssmkit.data.base import spec_from_json, spec_to_json
from ssmkit.layers.mamba import Mamba
from ssmkit.models.sequence import IOSpec, SequenceModel
from ssmkit.ops.selective_scan import cpu_numba
from ssmkit.train import checkpoint as ckpt
from ssmkit.train import distributed
from ssmkit.train.config import RunConfig, TrainConfig, available_device
from ssmkit.train.objectives import batch_sums, better, finalize, primary_metric
from ssmkit.train.progress import Progress
from ssmkit.train.resume import (
    EXTENDABLE,
    check_resume,
    config_changes,
    prepare_dir,
    truncate_metrics,
)

Tensor = torch.Tensor
Callback = Callable[[int, dict], None]
PER_STEP = ("tokens", "forecast")  # task kinds whose targets have a length axis
TASK_FILE = "task.json"  # the trained TaskSpec: vocabulary, classes, normalisation


def read_spec(run_dir: Path) -> data.TaskSpec | None:
    """The :class:`TaskSpec` saved in ``run_dir/task.json`` (None: a run saved before it was).

    Raises:
        ValueError: the file is not a valid spec (naming the file).
    """
    path = Path(run_dir) / TASK_FILE
    if not path.exists():
        return None
    if not path.is_file():
        raise ValueError(f"{path} must be a regular file")
    try:
        return spec_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid task spec: {e}") from None


def resolve_paths(run: RunConfig) -> RunConfig:
    """``run`` with a relative ``task.path`` made absolute (against the current directory), so
    that the saved run reads the same file from anywhere."""
    path = getattr(run.task_config, "path", None)
    if not isinstance(path, str) or Path(path).is_absolute():
        return run
    task_config = dataclasses.replace(run.task_config, path=str(Path(path).resolve()))
    return dataclasses.replace(run, task_config=task_config)


class TrainingInterruptedError(RuntimeError):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint written")
        self.step, self.signum = step, signum


def io_spec(spec: data.TaskSpec) -> IOSpec:
    """The model's inputs and outputs for a task."""
    tokens = spec.input == "tokens"
    return IOSpec(
        head=spec.kind,
        n_outputs=spec.n_outputs,
        vocab_size=spec.vocab_size if tokens else None,
        d_input=None if tokens else spec.d_input,
        max_length=spec.max_length,
        causal=spec.causal,
    )


def build_model(run: RunConfig, spec: data.TaskSpec) -> SequenceModel:
    """The model of ``run``, initialised from its seed."""
    torch.manual_seed(run.train.seed)
    return SequenceModel(run.model, io_spec(spec))


def get_batch(
    split: data.Split, idx: Tensor, kind: str, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Items ``idx`` of a split as (x, y, lengths), cut to their longest valid length."""
    lengths = split.lengths[idx]
    l = int(lengths.max()) if len(idx) else split.x.shape[1]
    x = split.x[idx, :l]
    y = split.y[idx, :l] if kind in PER_STEP else split.y[idx]
    return x.to(device), y.to(device), lengths.to(device)


def load_init(path: Path, model: torch.nn.Module) -> None:
    """Load the weights ``TrainConfig.init_from`` names into ``model`` (same architecture):
    a ``.safetensors`` file, or a run directory's ``best.safetensors`` (else its checkpoint)."""
    if path.is_file():
        ckpt.load_weights(path, model)
    elif (path / "best.safetensors").is_file():
        ckpt.load_weights(path / "best.safetensors", model)
    elif ckpt.has_checkpoint(path):
        ckpt.load_checkpoint(path, model)
    else:
        raise ValueError(f"init_from={str(path)!r} is neither a weight file nor a run directory")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The training forward's precision: ``bf16`` runs it under ``torch.autocast`` (matrix
    products in bfloat16; the layers keep their SSM parameters and scan state in float32 and
    the weights, gradients and optimiser stay float32); ``fp32`` disables autocast."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0 (or constant)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(total - cfg.warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, split: data.Split, kind: str, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Metrics of ``model`` on a whole split (in order, no dropout)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = split.x.shape[0]
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, y, lengths = get_batch(split, idx, kind, device)
        out = model(x, lengths=lengths)
        for k, v in batch_sums(kind, out, y, lengths).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    return finalize(kind, sums) if sums else {}


def _seed(*parts: int) -> int:
    """A deterministic seed from integers (epoch order, per-step dropout)."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63 - 1)
    return seed


class _Signals:
    """Turns SIGINT/SIGTERM into a flag checked after every step (main thread only)."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _diverged(step: int, loss: float, norm: Tensor, cfg: TrainConfig) -> str:
    """The message of a training step whose loss or gradient is not finite."""
    return (
        f"training diverged at step {step} (loss {loss:.4g}, gradient norm {float(norm):.4g}); "
        f"the weights were not updated and the last checkpoint is kept. Likely cause: lr "
        f"{cfg.lr:g} is too high for this model (start again with a lower --lr, "
        "--warmup_steps or --grad_clip 1), or non-finite values in the data"
    )


def train(
    run: RunConfig,
    run_dir: Path,
    resume: bool = False,
    progress: str = "auto",
    callbacks: Sequence[Callback] = (),
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the summary also saved as JSON.

    Args:
        run: the configuration (saved as ``config.json``). On resume it and ``config.json`` must
            equal the configuration recorded in the checkpoint, except ``epochs`` and
            ``max_steps``, which may grow to extend the run (``config.json`` is updated).
        run_dir: the run directory (created if missing).
        resume: continue from the checkpoint in ``run_dir``.
        progress: "auto", "bar", "lines" or "off".
        callbacks: called as ``f(step, record)`` after every logged record (rank 0 only).
        log: where one-line messages go.

    Raises:
        TrainingInterruptedError: after SIGINT/SIGTERM, once the checkpoint is written.
        FloatingPointError: a non-finite loss or gradient (before the weights change).
        ValueError: a configuration changed since the checkpoint (listing the fields), a
            device not on this machine, a run directory that is a file or not writable.
        CheckpointError: (a ValueError) a missing, corrupted or foreign checkpoint.
    """
    cfg = run.train
    device = available_device(cfg.device, "device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = distributed.init(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.rank % torch.cuda.device_count())
    run_dir = Path(run_dir)
    run = resolve_paths(run)
    # on resume, the saved spec keeps the trained vocabulary even if the text file changed
    task = data.build_task(run.task, run.task_config, read_spec(run_dir) if resume else None)
    kind = task.spec.kind
    model = build_model(run, task.spec).to(device)
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.ssm_lr)
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.AdamW(groups)
    n_train = task.train.x.shape[0]
    if n_train < cfg.batch_size or cfg.batch_size < dist.world:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be <= the {n_train} training items and >= the "
            f"{dist.world} processes"
        )
    per_epoch = n_train // cfg.batch_size
    total = (
        per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, per_epoch * cfg.epochs)
    )
    metric = primary_metric(kind)

    # tokens / train_s / cpu_s: training steps only (no evaluation), for tokens per second
    state = {"step": 0, "epoch": 0, "batch": 0, "best": None, "best_epoch": -1, "elapsed": 0.0,
             "run_loss": 0.0, "run_n": 0, "tokens": 0, "train_s": 0.0, "cpu_s": 0.0}  # fmt: skip
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        saved = check_resume(run, run_dir, ckpt.read_index(run_dir), log)
        state.update(ckpt.load_checkpoint(run_dir, model, optimizer))
        if cfg.epochs < state["epoch"] or 0 < cfg.max_steps < state["step"]:
            raise ValueError(
                f"epochs={cfg.epochs}, max_steps={cfg.max_steps} would end {run_dir} before "
                f"the {state['epoch']} epochs and {state['step']} steps it has made"
            )
        extended = {k: v for k, v in config_changes(saved, run.to_json()).items()
                    if k in EXTENDABLE}  # fmt: skip
        if dist.main:
            for name in ckpt.clean_stale(run_dir):
                log(f"removed {name} (left by an interrupted write)")
            torn = truncate_metrics(metrics_path, state["step"], after_eval=state["batch"] == 0)
            if torn:
                log(f"dropped {torn} incomplete line(s) of {metrics_path.name}")
            if extended:
                ckpt.atomic_write_json(run_dir / "config.json", run.to_json())
        for k, (a, b) in extended.items():
            log(f"{k}: {a} -> {b} (the learning-rate schedule now spans {total} steps)")
        log(f"resuming {run_dir} at step {state['step']} (epoch {state['epoch'] + 1})")
    elif cfg.init_from:  # fine-tuning / curriculum: same architecture, new task or length
        load_init(Path(cfg.init_from), model)
    if not resume and dist.main:
        prepare_dir(run_dir)
        if ckpt.has_checkpoint(run_dir):
            raise ValueError(f"{run_dir} already holds a run; pass resume=True (--resume)")
        ckpt.clean_stale(run_dir)
        ckpt.atomic_write_json(run_dir / "config.json", run.to_json())
        ckpt.atomic_write_json(run_dir / TASK_FILE, spec_to_json(task.spec))
        metrics_path.write_text("")
    distributed.barrier(dist)
    net = DistributedDataParallel(model) if dist.world > 1 else model
    bar = Progress(progress if dist.main else "off")

    def record(rec: dict) -> None:
        if not dist.main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for cb in callbacks:
            cb(rec["step"], rec)

    def save() -> None:
        if dist.main:
            ckpt.save_checkpoint(run_dir, model, optimizer, dict(state), run.to_json())
        distributed.barrier(dist)

    if device.type == "cpu" and any(isinstance(m, Mamba) for m in model.modules()):
        # the numba kernels compile in the background on first use, the first calls running
        # other backends meanwhile: training waits for them, so every step uses one backend
        # (bit-for-bit resume)
        cpu_numba.warm_up(torch.float32, wait=True)
    t_start = time.perf_counter() - state["elapsed"]
    net.train()
    with _Signals() as signals:
        while state["epoch"] < cfg.epochs and state["step"] < total:
            epoch = state["epoch"]
            order = torch.randperm(
                n_train, generator=torch.Generator().manual_seed(_seed(cfg.seed, epoch))
            )
            bar.start_epoch(epoch + 1, cfg.epochs, per_epoch, state["batch"])
            while state["batch"] < per_epoch and state["step"] < total:
                b = state["batch"]
                t_step, cpu_step = time.perf_counter(), time.process_time()
                batch_idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                idx = batch_idx[dist.rank :: dist.world]
                x, y, lengths = get_batch(task.train, idx, kind, device)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * lr_factor(state["step"], total, cfg)
                with (
                    torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
                    autocast(device, cfg.precision),
                ):
                    torch.manual_seed(_seed(cfg.seed, state["step"], dist.rank))
                    sums = batch_sums(kind, net(x, lengths=lengths), y, lengths)
                count = distributed.all_sum(sums["count"].detach(), dist)
                loss = sums["loss"] / count.clamp_min(1.0) * dist.world
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # clipping at inf leaves the gradients as they are and gives their norm
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
                step_loss = float(
                    distributed.all_sum(sums["loss"].detach(), dist) / count.clamp_min(1)
                )
                if not (math.isfinite(step_loss) and math.isfinite(float(norm))):
                    raise FloatingPointError(_diverged(state["step"] + 1, step_loss, norm, cfg))
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                state["run_loss"] += step_loss
                state["run_n"] += 1
                state["tokens"] += int(task.train.lengths[batch_idx].sum())
                state["train_s"] += time.perf_counter() - t_step
                state["cpu_s"] += time.process_time() - cpu_step
                bar.update(step_loss, x.shape[0] * dist.world)
                if state["step"] % cfg.log_every == 0:
                    record({"split": "train", "step": state["step"], "epoch": epoch,
                            "loss": state["run_loss"] / state["run_n"],
                            "lr": optimizer.param_groups[0]["lr"],
                            "time": time.perf_counter() - t_start})  # fmt: skip
                    state["run_loss"], state["run_n"] = 0.0, 0
                stop = distributed.all_sum(torch.tensor(float(signals.signum)), dist)
                if stop > 0 or state["step"] % cfg.checkpoint_every == 0:
                    state["elapsed"] = time.perf_counter() - t_start
                    save()
                if stop > 0:
                    raise TrainingInterruptedError(state["step"], int(signals.signum) or int(stop))
            if state["batch"] >= per_epoch:
                state["epoch"] += 1
                state["batch"] = 0
            val = evaluate(model, task.val, kind, cfg.eval_batch_size, device)
            record({"split": "val", "step": state["step"], "epoch": epoch, **val,
                    "time": time.perf_counter() - t_start})  # fmt: skip
            if val and better(metric, val[metric], state["best"]):
                state["best"], state["best_epoch"] = val[metric], epoch
                if dist.main:
                    ckpt.save_weights(run_dir / "best.safetensors", model)
            bar.end_epoch(
                f"epoch {epoch + 1}/{cfg.epochs} step {state['step']} "
                + " ".join(f"val_{k} {v:.4f}" for k, v in val.items())
                + f" ({time.perf_counter() - t_start:.0f} s)"
            )
            state["elapsed"] = time.perf_counter() - t_start
            save()
    summary = _finish(run, run_dir, model, task, state, device, dist, record)
    distributed.shutdown(dist)
    return summary


def _finish(run, run_dir, model, task, state, device, dist, record) -> dict:
    """Test metrics of the last and the best weights, and ``summary.json``."""
    cfg, kind = run.train, task.spec.kind
    last = evaluate(model, task.test, kind, cfg.eval_batch_size, device)
    best = last
    best_path = run_dir / "best.safetensors"
    if best_path.exists():
        final = ckpt.model_tensors(model)
        ckpt.load_weights(best_path, model)
        best = evaluate(model, task.test, kind, cfg.eval_batch_size, device)
        model.load_state_dict(final)
    record({"split": "test", "step": state["step"], "epoch": state["epoch"], **best})
    summary = {
        "task": run.task,
        "layer": run.model.layer,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": state["step"],
        "epochs": state["epoch"],
        "time_s": round(state["elapsed"], 2),
        "train_s": round(state["train_s"], 2),  # training steps only, no evaluation
        "train_cpu_s": round(state["cpu_s"], 2),  # CPU time of those steps (this process)
        "train_tokens": state["tokens"],
        "tokens_per_s": round(state["tokens"] / max(state["train_s"], 1e-9)),
        "threads": torch.get_num_threads(),
        "best_epoch": state["best_epoch"] + 1,
        "metric": primary_metric(kind),
        "val_best": state["best"],
        "test": best,
        "test_last": last,
    }
    if dist.main:
        ckpt.atomic_write_json(run_dir / "summary.json", summary)
    return summary
