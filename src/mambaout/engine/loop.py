"""The one training loop every task runs: one process per device under `torchrun` (or a single process).

A task (`engine.task.Task`: classification, detection, segmentation) supplies the model, data, loss, metric and
schedule; everything else is here, once: DDP, AMP, gradient accumulation and clipping, the NaN stop, EMA, atomic
checkpoints (each epoch, every --checkpoint-interval steps, and on SIGTERM/SIGUSR1), exact resume, full batches
despite unusable samples, the run folder's logs and curves, progress bars.

Exact resume: the data order is a function of (seed, epoch) (the task's sampler takes `set_epoch`), each sample's
augmentation a function of (seed, rank, epoch, position) (`data.training_stream`), and every process's random
states and its place in the epoch are saved with each checkpoint, so a run killed at any point and resumed from its
newest checkpoint continues with the same remaining samples, augmented the same way, and ends with the same weights
as an uninterrupted run (on the same machine, with deterministic kernels: CPU, or --deterministic).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3, dispatch_clip_grad, random_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.folder import DatasetError, SkipLog
from ..data.training_stream import STOP_SIGNALS, EpochStream, TrainingSamples, ignore_stop_signals
from ..errors import DataLoaderWorkerError, TrainingDivergedError, TrainingInterrupted
from . import distributed
from .checkpointing import (
    CheckpointKeeper,
    capture_rng,
    check_writable,
    find_resume_checkpoint,
    has_checkpoints,
    load_training_checkpoint,
    restore_rng,
    resume_position,
)
from .config import ConfigError
from .host_memory import keep_freed_memory
from .inference import PRECISIONS, cpu_supports_bf16
from .run_log import RunLog
from .task import Batch, Task, TaskParts

log = logging.getLogger("mambaout")


@dataclass
class FitResult:
    output_dir: Path
    epochs_run: int
    last_epoch: int
    best_metric: float | None
    best_epoch: int | None
    final_metrics: dict[str, float] | None  # the last epoch's validation metrics ('val_...')
    train_rate: float  # task units (images) per second, median over the epochs run
    checkpoint: Path | None


@dataclass
class TrainStep:
    """What one optimizer step needs besides the batch, as the run's config decides it: built once per run.

    `backward` and `update_weights` are the step's two halves around the forward pass; the loop runs them, and so
    does `benchmarks/training_cpu.py`, so that a benchmark step is the engine's."""

    train_model: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: Any
    amp: str | None  # the precision the run's --amp runs as here (`training_precision`)
    scaler: torch.amp.GradScaler | None
    ema: ModelEmaV3 | None

    @classmethod
    def create(cls, config: Any, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
               train_model: nn.Module | None = None) -> TrainStep:
        amp = training_precision(config.amp, device)
        scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        ema = ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema_decay else None
        return cls(train_model or model, model, optimizer, config, amp, scaler, ema)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.amp] if self.amp else None

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp is not None)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def update_weights(self, update: int) -> None:
        """Unscale, clip, step, zero the gradients and update the EMA: the optimizer step `update` (1, 2, ...)."""
        config, optimizer = self.config, self.optimizer
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if config.clip_grad is not None:
            dispatch_clip_grad(self.model.parameters(), config.clip_grad, mode=config.clip_mode)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=update)


def fit(task: Task) -> FitResult:
    """Train `task` (every process of a torchrun job calls this)."""
    joined = distributed.joined()  # a caller that holds the process group (a study's runs) keeps it
    env = distributed.setup(task.config.device)
    try:
        return _fit(task, env)
    finally:
        if not joined:
            distributed.teardown()


@dataclass
class EpochProgress:
    """One process's running totals of the epoch in progress: saved in mid-epoch checkpoints, so that a resumed
    epoch's summary row is the uninterrupted one's."""

    steps: int = 0  # optimizer steps done
    sums: dict[str, float] = field(default_factory=dict)  # loss and its parts, each summed weighted by batch size
    count: int = 0  # samples trained on
    drawn: int = 0  # samples drawn, unusable ones included
    transform_failures: int = 0
    seconds: float = 0.0

    def state(self) -> dict[str, Any]:
        return dict(steps=self.steps, sums=dict(self.sums), count=self.count, drawn=self.drawn,
                    transform_failures=self.transform_failures, seconds=self.seconds)


class StopSignals:
    """SIGTERM and SIGUSR1 (what SLURM, Kubernetes and torchrun send before a kill) ask the run to stop after its
    current step, with a checkpoint; installed while training, where the process's main thread runs it."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def requested(self, env: distributed.Distributed) -> bool:
        """Whether any process received one (every process stops at the same step)."""
        return distributed.any_process(self.received is not None, env.device)


def _fit(task: Task, env: distributed.Distributed) -> FitResult:
    config = task.config
    random_seed(config.seed, env.rank)
    if config.keep_freed_memory and env.device.type == "cpu":
        keep_freed_memory()  # before the data loaders' workers fork, so that they keep theirs too
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    parts = task.build(env)
    out = Path(config.output) / (config.experiment or task.experiment_name())
    if env.is_main:
        check_writable(out)
    if len(parts.train_set) < config.batch_size:
        raise DatasetError(
            f"{len(parts.train_set)} usable training samples are fewer than one batch of {config.batch_size}: "
            "lower --batch-size, or add data"
        )
    train_loader, val_loader = _loaders(task, parts, env)
    steps_per_epoch = task.steps_per_epoch(len(train_loader))
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{len(parts.train_set)} training samples make no full step of "
            f"{config.actual_global_batch(env.world_size)} (batch-size x grad-accum-steps x processes): lower "
            "--batch-size"
        )

    model = parts.model.to(env.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    lr = config.resolved_lr(env.world_size)
    optimizer = task.optimizer(model, lr)
    scheduler, total_epochs = task.schedule(optimizer, steps_per_epoch)
    step = TrainStep.create(config, model, optimizer, env.device)
    amp, amp_dtype, scaler, ema = step.amp, step.amp_dtype, step.scaler, step.ema

    # ---- resume
    resume_path, state = _find_resume(config, env, out)
    start_epoch, start_step, best = 0, 0, {"metric": None, "epoch": None}
    resumed_progress: EpochProgress | None = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("model_ema") is None:
                raise ConfigError(f"{resume_path} was trained without an EMA (--model-ema-decay); its EMA cannot be "
                                  "resumed")
            ema.module.load_state_dict(state["model_ema"])
        rng = state["rng"]
        same_processes = len(rng) == env.world_size
        if same_processes:
            restore_rng(rng[env.rank])
        else:
            log.warning(
                "resumed with %d processes instead of %d: data order and augmentation differ from an uninterrupted run",
                env.world_size,
                len(rng),
            )
        start_epoch, start_step = resume_position(state)
        best = state["best"]
        if start_step:
            if not same_processes:
                raise ConfigError(f"{resume_path} was written within an epoch by {len(rng)} processes: resume it "
                                  f"with {len(rng)} processes (or from an epoch's checkpoint-<epoch>.pth)")
            resumed_progress = EpochProgress(**state["epoch_progress"][env.rank])
        if env.is_main:
            where = f"epoch {start_epoch}, step {start_step}" if start_step else f"epoch {state['epoch']} done"
            log.info("resumed from %s (%s)", resume_path, where)
    keeper = CheckpointKeeper(out, config.checkpoint_hist)
    run_log = RunLog(out, resumed_epoch=start_epoch - 1 if state is not None else None) if env.is_main else None
    if run_log is not None:
        run_log.write_args({**config.to_dict(), **config.run_info(), "task": type(task).__name__,
                            "world_size": env.world_size, "lr_used": lr, "amp_used": amp or "fp32"})

    train_model: nn.Module = model
    if config.compile:
        train_model = torch.compile(train_model)
    if env.enabled:
        train_model = DistributedDataParallel(
            train_model,
            device_ids=[env.local_rank] if env.device.type == "cuda" else None,
            find_unused_parameters=getattr(task, "find_unused_parameters", False),
        )
    step.train_model = train_model
    skip_log = SkipLog(parts.skipped_while_scanning)
    if env.is_main:
        log.info(
            "%s: %d processes x batch %d x %d accumulation = global batch %d, lr %.3g, %d epochs of %d steps, "
            "output %s",
            task.describe(parts), env.world_size, config.batch_size, config.grad_accum_steps,
            config.actual_global_batch(env.world_size), lr, total_epochs, steps_per_epoch, out,
        )
        for line in config.notes(env.world_size):
            log.info("%s", line)
        if amp != config.amp:
            log.info("--amp %s on %s runs as %s (%s)", config.amp, env.device.type, amp or "fp32",
                     "this CPU computes bf16 natively" if amp else "this CPU has no native bf16")

    def save(epoch_done: int, progress: EpochProgress | None = None, is_best: bool = False) -> Path | None:
        """A checkpoint after epoch `epoch_done`, or within the next one (`progress`); collective, rank 0 writes."""
        rng_states = distributed.all_gather_object(capture_rng())
        progress_states = None if progress is None else distributed.all_gather_object(progress.state())
        if not env.is_main:
            return None
        checkpoint = {
            **task.checkpoint_meta(),
            "task": type(task).__name__,
            "epoch": epoch_done,
            "step_in_epoch": 0 if progress is None else progress.steps,
            "epoch_progress": progress_states,
            "model": model.state_dict(),
            "model_ema": None if ema is None else ema.module.state_dict(),
            # what create_model / predict / validate load from this file by default: the recipe's reported model
            "release_weights": "model_ema" if config.release_weights == "ema" else "model",
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "rng": rng_states,
            "best": best,
            "args": config.to_dict(),
        }
        return keeper.save(checkpoint, None if progress is not None else epoch_done, is_best)

    # ---- epochs
    final: dict[str, float] | None = None
    rates: list[float] = []
    last_checkpoint: Path | None = resume_path
    stop = StopSignals()
    with stop, _worker_deaths_named(config):
        for epoch in range(start_epoch, total_epochs):
            first_step = start_step if epoch == start_epoch else 0
            task.on_epoch_start(epoch)
            train_loader.sampler.set_epoch(epoch, first_step * config.batch_size * config.grad_accum_steps)
            progress = resumed_progress if first_step else EpochProgress()
            stopped, written = _train_one_epoch(task, step, scheduler, epoch, env, train_loader, steps_per_epoch,
                                                progress, skip_log, run_log, stop,
                                                lambda p, e=epoch: save(e - 1, p))
            if stopped:
                _stop_after(stop.received, written, epoch, progress.steps, env)
            losses, units, seconds = _epoch_totals(progress, env)
            rates.append(units / seconds)

            row: dict[str, Any] = {"epoch": epoch, "lr": _mean_lr(optimizer)}
            row.update({f"train_{name}": value for name, value in losses.items()})
            metric = None
            if val_loader is not None:
                shown_progress = _tty(env)
                final = task.evaluate(model, val_loader, env, amp_dtype, shown_progress)
                row.update(final)
                metric = final[task.metric.key]
                if ema is not None and config.model_ema_eval:
                    ema_metrics = task.evaluate(ema.module, val_loader, env, amp_dtype, shown_progress)
                    row.update({f"ema_{key}": value for key, value in ema_metrics.items()})
                    if config.best_by == "ema":  # the recipe's choice: whose metric picks best.pth
                        metric = ema_metrics[task.metric.key]
            scheduler.step(epoch + 1, metric)
            row.update({f"train_{task.unit}_per_second": units / seconds, "train_skipped": len(skip_log),
                        "seconds": seconds})

            is_best = metric is not None and task.metric.better(metric, best["metric"])
            if is_best:
                best = {"metric": metric, "epoch": epoch}
            if run_log is not None:
                # the row first: a kill between the two leaves a row the resume drops and rewrites, never a
                # checkpoint whose epoch the summary lacks
                run_log.epoch(row)
            written = save(epoch, is_best=is_best)
            last_checkpoint = written or last_checkpoint
            if env.is_main:
                if len(skip_log):
                    skip_log.write(out / "skipped.txt")
                shown = "" if final is None else ", ".join(f"{k} {v:.4g}" for k, v in final.items()) + ", "
                log.info(
                    "epoch %d: train loss %.4f, %s%.1f %s/s%s", epoch, losses["loss"], shown, units / seconds,
                    task.unit, f"; {skip_log.summary()}" if len(skip_log) else "",
                )
            if epoch + 1 < total_epochs and stop.requested(env):
                _stop_after(stop.received, written, epoch + 1, 0, env)
    if run_log is not None:
        run_log.close()
    return FitResult(
        output_dir=out,
        epochs_run=total_epochs - start_epoch,
        last_epoch=total_epochs - 1,
        best_metric=best["metric"],
        best_epoch=best["epoch"],
        final_metrics=final,
        train_rate=float(np.median(rates)) if rates else 0.0,
        checkpoint=last_checkpoint,
    )


def _stop_after(signum: int | None, checkpoint: Path | None, epoch: int, steps: int,
                env: distributed.Distributed) -> None:
    """End the run on a stop signal, once its checkpoint is written: a clear line, a signal's exit status."""
    signum = signum or signal.SIGTERM  # another process received it
    name = signal.Signals(signum).name
    where = f"epoch {epoch}, step {steps}" if steps else f"the start of epoch {epoch}"
    message = (f"stopped by {name} at {where}; checkpoint {checkpoint} written: continue with the same command and "
               "--resume auto")
    if env.is_main:
        log.warning("%s", message)
    raise TrainingInterrupted(message, signum)


def _train_one_epoch(
    task: Task, step: TrainStep, scheduler: Any, epoch: int, env: distributed.Distributed, loader: DataLoader,
    steps_per_epoch: int, progress: EpochProgress, skip_log: SkipLog, run_log: RunLog | None, stop: StopSignals,
    checkpoint: Callable[[EpochProgress], Path | None],
) -> tuple[bool, Path | None]:
    """The optimizer steps of `epoch` from `progress.steps` on, added to `progress`. Returns whether a stop signal
    ended it (after the current step and a checkpoint: the caller ends the run) and that checkpoint."""
    config, optimizer = task.config, step.optimizer
    step.train_model.train()
    optimizer.zero_grad(set_to_none=True)
    accum = config.grad_accum_steps
    sums = progress.sums
    started = time.perf_counter()
    bar = tqdm(total=steps_per_epoch, initial=progress.steps, desc=f"epoch {epoch}", disable=not _tty(env),
               leave=False)
    with _batches(loader) as batches:
        for index in range(progress.steps, steps_per_epoch):
            for micro in range(accum):
                batch: Batch = next(batches)
                skip_log.add(batch.skipped)
                progress.drawn += batch.size + len(batch.skipped)
                progress.transform_failures += sum(item.in_transform for item in batch.skipped)
                _check_transform_failures(skip_log, progress.transform_failures, progress.drawn, config, env)
                batch = task.prepare(task.to_device(batch, env.device))
                # every process must run the same forward/backward passes (DDP), so one empty batch skips it everywhere
                if distributed.any_process(batch.size == 0, env.device):
                    continue
                sync = micro == accum - 1 or not isinstance(step.train_model, DistributedDataParallel)
                with contextlib.nullcontext() if sync else step.train_model.no_sync():
                    with step.autocast(env.device):
                        loss, loss_parts = task.loss(step.train_model, batch)
                    value = loss.item()
                    if distributed.any_process(not math.isfinite(value), env.device):
                        raise TrainingDivergedError(
                            f"the loss became {value} at epoch {epoch}, step {index} (lr {_mean_lr(optimizer):.3g}); "
                            "the last checkpoint is left as it was. Lower --lr, set --clip-grad, or use --amp bf16 "
                            "instead of fp16, then resume with --resume auto"
                        )
                    step.backward(loss / accum)
                for name, part in {"loss": value, **loss_parts}.items():
                    sums[name] = sums.get(name, 0.0) + part * batch.size
                progress.count += batch.size
            update = epoch * steps_per_epoch + index + 1
            step.update_weights(update)
            scheduler.step_update(update)
            progress.steps = index + 1
            bar.update()
            count = progress.count
            if count:
                bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", lr=f"{_mean_lr(optimizer):.2e}")
            if run_log is not None and (index % config.log_interval == 0 or index == steps_per_epoch - 1) and count:
                for name, total in sums.items():
                    run_log.scalar(f"train/{name}", total / count, update)
                run_log.scalar("train/lr", _mean_lr(optimizer), update)
                if not _tty(env):
                    log.info("epoch %d step %d/%d: loss %.4f lr %.3e", epoch, index + 1, steps_per_epoch,
                             sums["loss"] / count, _mean_lr(optimizer))
            stopping = stop.requested(env)
            due = config.checkpoint_interval and update % config.checkpoint_interval == 0
            if stopping or (due and progress.steps < steps_per_epoch):
                progress.seconds += time.perf_counter() - started
                started = time.perf_counter()
                written = checkpoint(progress)
                if stopping:
                    bar.close()
                    return True, written
    bar.close()
    progress.seconds += time.perf_counter() - started
    return False, None


def _epoch_totals(progress: EpochProgress, env: distributed.Distributed) -> tuple[dict[str, float], int, float]:
    """(mean losses over all processes, samples trained on, seconds) of a finished epoch."""
    names = sorted(progress.sums)  # the same order on every process
    reduced = distributed.all_reduce_sum([progress.sums[name] for name in names] + [progress.count], env.device)
    total_count = reduced[-1]
    means = {name: total / max(total_count, 1) for name, total in zip(names, reduced[:-1])}
    means.setdefault("loss", float("nan"))
    return means, int(total_count), max(progress.seconds, 1e-9)


@contextlib.contextmanager
def _batches(loader: DataLoader) -> Any:
    """The epoch's batch iterator, its worker processes shut down on leaving, an error included: until then a dead
    worker stays registered with torch's SIGCHLD handler, which would raise its error again anywhere later."""
    iterator = iter(loader)
    try:
        yield _handed_over(iterator) if loader.num_workers else iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # only the multiprocessing iterator has workers
        if shutdown is not None:
            shutdown()


def _handed_over(iterator: Any) -> Any:
    """The batches of a loader with workers. A worker killed while it hands over a batch's shared memory surfaces
    as a broken connection of that handover, not as torch's worker error: it is named as that error."""
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ConnectionError, EOFError) as e:
            raise RuntimeError(f"DataLoader worker {_dead_worker(iterator)} while handing over a batch "
                               f"({type(e).__name__}: {e})") from e
        yield batch


def _dead_worker(iterator: Any, wait_s: float = 5.0) -> str:
    """How the loader's dead worker ended, as torch words it ('(pid 12) is killed by signal: Killed'), once the
    worker is reaped (within `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for worker in getattr(iterator, "_workers", []):
            worker.join(timeout=0.05)
            if worker.exitcode is not None and worker.exitcode < 0:
                return f"(pid {worker.pid}) is killed by signal: {signal.strsignal(-worker.exitcode)}"
            if worker.exitcode:
                return f"(pid {worker.pid}) exited unexpectedly with exit code {worker.exitcode}"
    return "died"


@contextlib.contextmanager
def _worker_deaths_named(config: Any) -> Any:
    """A data-loading worker that died, named with what helps. torch reports it from its SIGCHLD handler, so it
    may surface anywhere in the loop, a checkpoint write included (which then leaves the previous file intact)."""
    try:
        yield
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise DataLoaderWorkerError(
            f"a data-loading worker died: {_first_line(e)}. 'Killed' is most often the out-of-memory killer "
            f"(see dmesg): run fewer workers (--workers, now {config.workers}) or a smaller --batch-size; a "
            "'Segmentation fault' is a crash in an image decoder, which --workers 0 shows with the file's "
            "traceback. The checkpoints are intact: continue with --resume auto (--checkpoint-interval sets how "
            "often one is written within an epoch)"
        ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


def _check_transform_failures(skip_log: SkipLog, failures: int, drawn: int, config: Any,
                              env: distributed.Distributed) -> None:
    """A transform that raises now and then is skipped and listed; one that raises often stops the run."""
    too_many = failures > 20 and failures > config.transform_failure_limit * drawn
    if distributed.any_process(too_many, env.device):
        failed = [item for item in skip_log if item.in_transform][:5]
        shown = "\n".join(f"  {item.path}: {item.reason}" for item in failed)
        raise DatasetError(
            f"a training transform failed on {failures} of the {drawn} samples drawn this epoch (more than "
            f"--transform-failure-limit {config.transform_failure_limit}); the last checkpoint is left as it was. "
            f"First failures on this process:\n{shown}"
        )


def _loaders(task: Task, parts: TaskParts, env: distributed.Distributed) -> tuple[DataLoader, DataLoader | None]:
    config = task.config
    common = dict(num_workers=config.workers, collate_fn=parts.collate_fn, pin_memory=config.pin_mem,
                  persistent_workers=False)
    # the loader's own generator: creating an epoch's iterator leaves the global random states (saved in
    # checkpoints) alone, so a mid-epoch resume continues them exactly
    train_loader = DataLoader(
        TrainingSamples(parts.train_set, config.seed, env.rank), batch_size=config.batch_size,
        sampler=EpochStream(task.train_sampler(parts.train_set, env)), drop_last=True,
        generator=torch.Generator().manual_seed(config.seed), worker_init_fn=ignore_stop_signals, **common,
    )
    val_loader = None
    if parts.val_set is not None:
        val_loader = distributed.shard_loader(
            parts.val_set, env, config.val_batch_size or config.batch_size, config.workers,
            parts.val_collate_fn or parts.collate_fn, pin_memory=config.pin_mem, persistent_workers=False,
        )
    return train_loader, val_loader


def _find_resume(config: Any, env: distributed.Distributed, out: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """Rank 0 chooses the checkpoint and every process loads it (a shared filesystem, as torchrun jobs have)."""
    if config.resume is None:
        if env.is_main and has_checkpoints(out):
            raise ConfigError(
                f"{out} already holds checkpoints of an earlier run: pass --resume auto to continue it, or choose "
                "another --experiment / --output"
            )
        return None, None
    if config.resume == "auto":
        found = find_resume_checkpoint(out) if env.is_main else None
        path = distributed.broadcast_object(None if found is None else str(found[0]))
        if path is None:
            if env.is_main:
                log.info("--resume auto: no checkpoint in %s yet, starting from scratch", out)
            return None, None
        return Path(path), found[1] if env.is_main else load_training_checkpoint(path)
    return Path(config.resume), load_training_checkpoint(config.resume)


def training_precision(amp: str | None, device: torch.device) -> str | None:
    """The autocast dtype a recipe's --amp runs as: fp16 needs a GPU; on a CPU it runs as bf16 where the CPU computes
    bf16 natively (AVX512-BF16, AMX) and as fp32 elsewhere, where bf16 autocast is slower than fp32."""
    if device.type != "cpu" or amp != "fp16":
        return amp
    return "bf16" if cpu_supports_bf16() else None


def _mean_lr(optimizer: torch.optim.Optimizer) -> float:
    return sum(group["lr"] for group in optimizer.param_groups) / len(optimizer.param_groups)


def _tty(env: distributed.Distributed) -> bool:
    return env.is_main and sys.stderr.isatty()
