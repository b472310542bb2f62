"""The training loop: deterministic data order, checkpoints, resume, signals, metrics.

Determinism: the model is initialised from ``seed``; epoch ``e`` visits the training items in
the order ``randperm(N)`` drawn from a generator seeded with ``(seed, e)``; dropout at optimiser
step ``s`` draws from a generator seeded with ``(seed, s, rank)``; the learning rate is a pure
function of ``s``. A checkpoint therefore holds everything a bit-for-bit resume needs: weights,
optimiser moments and the counters (epoch, batch within the epoch, step, running sums).

:func:`train` is four parts: :func:`_setup` (device, task, model, optimiser, the run directory
new or resumed), :func:`_train_epoch` (the optimiser steps of one epoch, with checkpoints),
:func:`_validate` (validation, the best weights, the end-of-epoch checkpoint) and
:func:`_finish` (test metrics and ``summary.json``). The run directory's files are named in
:mod:`ssmkit.train.rundir`.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ssmkit import data
from ssmkit.core.kinds import TaskKind, task_kind
from ssmkit.core.params import param_groups
from ssmkit.layers.warm_up import warm_up_for
from ssmkit.train import checkpoint as ckpt
from ssmkit.train import distributed
from ssmkit.train import rundir as rd
from ssmkit.train.config import RunConfig, TrainConfig, available_device
from ssmkit.train.objectives import batch_sums, finalize
from ssmkit.train.progress import Progress
from ssmkit.train.resume import (
    EXTENDABLE,
    check_resume,
    config_changes,
    prepare_dir,
    truncate_metrics,
)
from ssmkit.train.rundir import build_model

Tensor = torch.Tensor
Callback = Callable[[int, dict], None]


class TrainingInterruptedError(RuntimeError):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint written")
        self.step, self.signum = step, signum


def get_batch(
    split: data.Split, idx: Tensor, kind: str | TaskKind, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Items ``idx`` of a split as (x, y, lengths), cut to their longest valid length."""
    lengths = split.lengths[idx]
    l = int(lengths.max()) if len(idx) else split.x.shape[1]
    x = split.x[idx, :l]
    y = split.y[idx, :l] if task_kind(kind).per_step else split.y[idx]
    return x.to(device), y.to(device), lengths.to(device)


def load_init(path: Path, model: torch.nn.Module) -> None:
    """Load the weights ``TrainConfig.init_from`` names into ``model`` (same architecture):
    a ``.safetensors`` file, or a run directory's ``best.safetensors`` (else its checkpoint)."""
    if path.is_file():
        ckpt.load_weights(path, model)
    elif rd.RunDir(path).best.is_file():
        ckpt.load_weights(rd.RunDir(path).best, model)
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
    model: torch.nn.Module,
    split: data.Split,
    kind: str | TaskKind,
    batch_size: int,
    device: torch.device,
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


@dataclass
class _Session:
    """What one call of :func:`train` works with (built by :func:`_setup`).

    ``state`` holds the counters a checkpoint saves (its keys are the checkpoint's ``meta``);
    tokens / train_s / cpu_s count training steps only (no evaluation), for tokens per second.
    """

    run: RunConfig
    files: rd.RunDir
    task: data.TaskData
    kind: TaskKind
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    dist: distributed.Dist
    per_epoch: int  # optimiser steps of a whole epoch
    total: int  # optimiser steps of the whole run (the learning-rate schedule's span)
    callbacks: Sequence[Callback]
    state: dict
    net: torch.nn.Module | None = None  # the model, wrapped for DDP under torchrun
    bar: Progress | None = None
    t_start: float = 0.0

    @property
    def cfg(self) -> TrainConfig:
        return self.run.train

    def clock(self) -> float:
        """Seconds of the run so far (across resumes)."""
        return time.perf_counter() - self.t_start

    def record(self, rec: dict) -> None:
        """Append ``rec`` to ``metrics.jsonl`` and hand it to the callbacks (rank 0 only)."""
        if not self.dist.main:
            return
        rd.append_record(self.files.root, rec)
        for cb in self.callbacks:
            cb(rec["step"], rec)

    def save(self) -> None:
        """Write the checkpoint (rank 0) and wait for every process."""
        self.state["elapsed"] = self.clock()
        if self.dist.main:
            ckpt.save_checkpoint(
                self.files.root, self.model, self.optimizer, dict(self.state), self.run.to_json()
            )
        distributed.barrier(self.dist)


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
    s = _setup(run, Path(run_dir), resume, callbacks, log)
    s.bar = Progress(progress if s.dist.main else "off")
    s.t_start = time.perf_counter() - s.state["elapsed"]
    s.net.train()
    with _Signals() as signals:
        while s.state["epoch"] < s.cfg.epochs and s.state["step"] < s.total:
            epoch = s.state["epoch"]
            _train_epoch(s, signals)
            _validate(s, epoch)
    summary = _finish(s)
    distributed.shutdown(s.dist)
    return summary


def _setup(
    run: RunConfig,
    run_dir: Path,
    resume: bool,
    callbacks: Sequence[Callback],
    log: Callable[[str], None],
) -> _Session:
    """Device, task, model and optimiser of ``run``, and its directory, new or resumed."""
    cfg = run.train
    device = available_device(cfg.device, "device")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = distributed.init(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.rank % torch.cuda.device_count())
    run = rd.resolve_paths(run)
    # on resume, the saved spec keeps the trained vocabulary even if the text file changed
    task = data.build_task(run.task, run.task_config, rd.read_spec(run_dir) if resume else None)
    model = build_model(run, task.spec).to(device)
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.ssm_lr)
    for g in groups:
        g["base_lr"] = g["lr"]
    n_train = task.train.x.shape[0]
    if n_train < cfg.batch_size or cfg.batch_size < dist.world:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be <= the {n_train} training items and >= the "
            f"{dist.world} processes"
        )
    per_epoch = n_train // cfg.batch_size
    total = per_epoch * cfg.epochs
    state = {"step": 0, "epoch": 0, "batch": 0, "best": None, "best_epoch": -1, "elapsed": 0.0,
             "run_loss": 0.0, "run_n": 0, "tokens": 0, "train_s": 0.0, "cpu_s": 0.0}  # fmt: skip
    s = _Session(
        run=run,
        files=rd.RunDir(run_dir),
        task=task,
        kind=task_kind(task.spec.kind),
        model=model,
        optimizer=torch.optim.AdamW(groups),
        device=device,
        dist=dist,
        per_epoch=per_epoch,
        total=min(cfg.max_steps, total) if cfg.max_steps else total,
        callbacks=callbacks,
        state=state,
    )
    if resume:
        _resume(s, log)
    elif cfg.init_from:  # fine-tuning / curriculum: same architecture, new task or length
        load_init(Path(cfg.init_from), model)
    if not resume and dist.main:
        _start_dir(s)
    distributed.barrier(dist)
    s.net = DistributedDataParallel(model) if dist.world > 1 else model
    # the numba kernels compile in the background on first use, the first calls running
    # other backends meanwhile: training waits for them, so every step uses one backend
    # (bit-for-bit resume)
    if device.type == "cpu":
        warm_up_for(model)
    return s


def _start_dir(s: _Session) -> None:
    """A new run: create its directory, refuse one holding a run, write config and spec."""
    root = s.files.root
    prepare_dir(root)
    if ckpt.has_checkpoint(root):
        raise ValueError(f"{root} already holds a run; pass resume=True (--resume)")
    ckpt.clean_stale(root)
    rd.write_config(root, s.run)
    rd.write_spec(root, s.task.spec)
    s.files.metrics.write_text("")


def _resume(s: _Session, log: Callable[[str], None]) -> None:
    """Restore the checkpoint of ``s``'s directory (refused if the configuration changed)."""
    cfg, state, root = s.cfg, s.state, s.files.root
    saved = check_resume(s.run, root, ckpt.read_index(root), log)
    state.update(ckpt.load_checkpoint(root, s.model, s.optimizer))
    if cfg.epochs < state["epoch"] or 0 < cfg.max_steps < state["step"]:
        raise ValueError(
            f"epochs={cfg.epochs}, max_steps={cfg.max_steps} would end {root} before "
            f"the {state['epoch']} epochs and {state['step']} steps it has made"
        )
    extended = {k: v for k, v in config_changes(saved, s.run.to_json()).items()
                if k in EXTENDABLE}  # fmt: skip
    if s.dist.main:
        for name in ckpt.clean_stale(root):
            log(f"removed {name} (left by an interrupted write)")
        torn = truncate_metrics(s.files.metrics, state["step"], after_eval=state["batch"] == 0)
        if torn:
            log(f"dropped {torn} incomplete line(s) of {s.files.metrics.name}")
        if extended:
            rd.write_config(root, s.run)
    for k, (a, b) in extended.items():
        log(f"{k}: {a} -> {b} (the learning-rate schedule now spans {s.total} steps)")
    log(f"resuming {root} at step {state['step']} (epoch {state['epoch'] + 1})")


def _train_epoch(s: _Session, signals: _Signals) -> None:
    """The optimiser steps left in the current epoch; checkpoints every ``checkpoint_every``
    steps and on a signal (then raises :class:`TrainingInterruptedError`)."""
    cfg, state = s.cfg, s.state
    order = torch.randperm(
        s.task.train.x.shape[0],
        generator=torch.Generator().manual_seed(_seed(cfg.seed, state["epoch"])),
    )
    s.bar.start_epoch(state["epoch"] + 1, cfg.epochs, s.per_epoch, state["batch"])
    while state["batch"] < s.per_epoch and state["step"] < s.total:
        b = state["batch"]
        _train_step(s, order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
        stop = distributed.all_sum(torch.tensor(float(signals.signum)), s.dist)
        if stop > 0 or state["step"] % cfg.checkpoint_every == 0:
            s.save()
        if stop > 0:
            raise TrainingInterruptedError(state["step"], int(signals.signum) or int(stop))
    if state["batch"] >= s.per_epoch:
        state["epoch"] += 1
        state["batch"] = 0


def _train_step(s: _Session, batch_idx: Tensor) -> None:
    """One optimiser step on the global batch ``batch_idx`` (this process's share of it)."""
    cfg, state, dist, device = s.cfg, s.state, s.dist, s.device
    t_step, cpu_step = time.perf_counter(), time.process_time()
    x, y, lengths = get_batch(s.task.train, batch_idx[dist.rank :: dist.world], s.kind, device)
    for g in s.optimizer.param_groups:
        g["lr"] = g["base_lr"] * lr_factor(state["step"], s.total, cfg)
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        autocast(device, cfg.precision),
    ):
        torch.manual_seed(_seed(cfg.seed, state["step"], dist.rank))
        sums = batch_sums(s.kind, s.net(x, lengths=lengths), y, lengths)
    count = distributed.all_sum(sums["count"].detach(), dist)
    loss = sums["loss"] / count.clamp_min(1.0) * dist.world
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # clipping at inf leaves the gradients as they are and gives their norm
    norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip or math.inf)
    step_loss = float(distributed.all_sum(sums["loss"].detach(), dist) / count.clamp_min(1))
    if not (math.isfinite(step_loss) and math.isfinite(float(norm))):
        raise FloatingPointError(_diverged(state["step"] + 1, step_loss, norm, cfg))
    s.optimizer.step()
    state["step"] += 1
    state["batch"] += 1
    state["run_loss"] += step_loss
    state["run_n"] += 1
    state["tokens"] += int(s.task.train.lengths[batch_idx].sum())
    state["train_s"] += time.perf_counter() - t_step
    state["cpu_s"] += time.process_time() - cpu_step
    s.bar.update(step_loss, x.shape[0] * dist.world)
    if state["step"] % cfg.log_every == 0:
        s.record({"split": "train", "step": state["step"], "epoch": state["epoch"],
                  "loss": state["run_loss"] / state["run_n"],
                  "lr": s.optimizer.param_groups[0]["lr"], "time": s.clock()})  # fmt: skip
        state["run_loss"], state["run_n"] = 0.0, 0


def _validate(s: _Session, epoch: int) -> None:
    """Validation after (a part of) ``epoch``: its record, the best weights, a checkpoint."""
    state, metric = s.state, s.kind.metric
    val = evaluate(s.model, s.task.val, s.kind, s.cfg.eval_batch_size, s.device)
    s.record({"split": "val", "step": state["step"], "epoch": epoch, **val, "time": s.clock()})
    if val and s.kind.better(val[metric], state["best"]):
        state["best"], state["best_epoch"] = val[metric], epoch
        if s.dist.main:
            ckpt.save_weights(s.files.best, s.model)
    s.bar.end_epoch(
        f"epoch {epoch + 1}/{s.cfg.epochs} step {state['step']} "
        + " ".join(f"val_{k} {v:.4f}" for k, v in val.items())
        + f" ({s.clock():.0f} s)"
    )
    s.save()


def _finish(s: _Session) -> dict:
    """Test metrics of the last and the best weights, and ``summary.json``."""
    cfg, state, model, test = s.cfg, s.state, s.model, s.task.test
    last = evaluate(model, test, s.kind, cfg.eval_batch_size, s.device)
    best = last
    if s.files.best.exists():
        final = ckpt.model_tensors(model)
        ckpt.load_weights(s.files.best, model)
        best = evaluate(model, test, s.kind, cfg.eval_batch_size, s.device)
        model.load_state_dict(final)
    s.record({"split": "test", "step": state["step"], "epoch": state["epoch"], **best})
    summary = {
        "task": s.run.task,
        "layer": s.run.model.layer,
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
        "metric": s.kind.metric,
        "val_best": state["best"],
        "test": best,
        "test_last": last,
    }
    if s.dist.main:
        ckpt.atomic_write_json(s.files.summary, summary)
    return summary
