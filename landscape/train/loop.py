"""The training loop: K runs of one model, one step at a time on a shared minibatch.

A *trainer* advances its runs by one step (``SequentialRun``: K = 1; ``GridRuns``: a batched
learning-rate grid; ``StreamRuns``: CUDA-graph steps on concurrent streams); ``train_runs``
is the loop around any of them: epochs, divergence, the rows each run writes to its log.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..store import RunLog
from ..store.schema import MODE_FIELDS
from .checkpoint import Checkpoint, Checkpointing, LoopPosition, restore, save_checkpoint
from .config import SweepConfig
from .signals import StopRequest, SweepInterrupted
from .tasks import mode_stats


@dataclass
class RunSummary:
    name: str
    model: str
    lr: float
    status: str
    steps: int
    final_test_acc: float
    median_beta: float
    seconds: float
    diverged_step: int | None = None
    error: str | None = None  # why a failed run failed (a Ray sweep goes on past it)


@dataclass
class Progress:
    """What a progress display needs after each step."""

    run: str
    run_index: int
    runs_total: int
    epoch: int
    step: int
    steps_total: int
    loss: float | None = None  # last loss seen on the host (None between host syncs)
    # Steps done in the whole sweep, where runs train in parallel (a Ray sweep); None: the
    # runs go one after another, run_index * steps_total + step.
    sweep_step: int | None = None


@dataclass
class RunState:
    """Host-side bookkeeping of one run inside the loop."""

    log: RunLog
    lr: float
    status: str = "completed"
    diverged_step: int | None = None
    test_acc: float = math.nan
    betas: list = field(default_factory=list)
    steps: int = 0
    done: bool = False  # the file already holds this run complete (or diverged): left as it is


def train_runs(trainer, runs: list[RunState], config: SweepConfig, data, device,
               flush: Callable[[], None], on_progress, label: str, run_index: int,
               runs_total: int, autocast, *, checkpointing: Checkpointing | None = None,
               start: Checkpoint | None = None, stop: StopRequest | None = None) -> float:
    """Train the trainer's K runs to the end (or divergence); write rows; returns seconds.

    ``checkpointing``: save a checkpoint of the runs as it says (and when ``stop`` is asked
    for); removed when the runs complete. ``start``: continue from that checkpoint (a trainer
    built as the saved one was). Runs marked ``done`` (the file holds them complete) are left
    as they are. ``stop``: a stop asked for (``signals.stop_on_signals``) checkpoints, flushes,
    marks the runs ``interrupted`` and raises ``SweepInterrupted``.
    """
    stream = trainer.task.stream(config.batch_size, config.seed, config.augment)
    mode_subset = trainer.task.mode_subset(config.batch_size)  # fixed: the same every epoch
    total_steps = config.steps or config.epochs * stream.steps_per_epoch
    n_epochs = math.ceil(total_steps / stream.steps_per_epoch)
    # The host reads device values only every `sync_every` steps (divergence check, rows).
    sync_every = 1 if device.type == "cpu" else 50
    pending_steps, pending_epochs, pending_losses = [], [], []
    position = LoopPosition()
    if start is not None:
        position = restore(trainer, start)
        stream.load_state_dict(position.stream)
        for run, kept in zip(runs, position.runs, strict=True):
            run.status, run.steps, run.diverged_step = (kept["status"], kept["steps"],
                                                        kept["diverged_step"])
            run.test_acc, run.betas = kept["test_acc"], list(kept["betas"])
    alive = [not run.done and (start is None or kept["alive"])
             for run, kept in zip(runs, position.runs or [{}] * len(runs))]
    for k in range(len(runs)):
        if not alive[k]:
            trainer.freeze(k)
    last_loss = None
    started = time.perf_counter() - position.seconds
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flush()  # every group (the instruments' too) exists, empty, from the start

    def sync() -> None:
        """Move pending rows to the logs; a run whose loss is not finite stops there."""
        nonlocal pending_steps, pending_epochs, pending_losses, last_loss
        if not pending_steps:
            return
        losses = torch.stack(pending_losses).to("cpu", torch.float64).numpy()  # (n, K)
        grad_rows = trainer.pop_grad_rows()  # (n, K, 3)
        for k, run in enumerate(runs):
            if not alive[k]:
                continue
            bad = np.flatnonzero(~np.isfinite(losses[:, k]))
            keep = len(losses) if len(bad) == 0 else bad[0] + 1  # keep the step it happened
            run.log.add_steps(step=pending_steps[:keep], epoch=pending_epochs[:keep],
                              loss=losses[:keep, k], grad_norm=grad_rows[:keep, k, 0],
                              grad_diff=grad_rows[:keep, k, 1],
                              beta_consecutive=grad_rows[:keep, k, 2])
            run.steps = pending_steps[keep - 1] + 1
            if len(bad):
                run.status, run.diverged_step = "diverged", int(pending_steps[bad[0]])
                alive[k] = False
                trainer.freeze(k)
        last_loss = float(losses[-1, 0])
        pending_steps, pending_epochs, pending_losses = [], [], []

    def checkpoint(at: LoopPosition) -> None:
        """Rows to the file, then (when checkpointing) the checkpoint that refers to them."""
        sync()
        flush()
        if checkpointing is None:
            return
        at.step, at.stream, at.seconds = step, stream.state_dict(), time.perf_counter() - started
        at.runs = [{"status": run.status, "steps": run.steps, "diverged_step": run.diverged_step,
                    "test_acc": float(run.test_acc), "betas": [float(b) for b in run.betas],
                    "alive": alive[k]} for k, run in enumerate(runs)]
        save_checkpoint(checkpointing.path, trainer, at,
                        {run.log.name: run.log.rows_in_file for run in runs},
                        [run.log.name for run in runs])
        checkpointing.saved()

    def stopping() -> bool:
        return stop is not None and stop.signum is not None

    step = position.step
    try:
        for epoch in range(position.epoch, n_epochs):
            epoch_start = time.perf_counter()
            if epoch == position.epoch and position.loss_sum is not None:  # resumed mid-epoch
                loss_sum, correct = position.loss_sum.to(device), position.correct.to(device)
                seen, first_step = position.seen, position.epoch_first_step
            else:
                loss_sum = torch.zeros(len(runs), device=device, dtype=torch.float64)
                correct = torch.zeros(len(runs), device=device, dtype=torch.int64)
                seen, first_step = 0, step
            for x, y in stream.epoch():
                if step >= total_steps or not any(alive):
                    break
                losses, right = trainer.step(x, y, step, autocast)
                loss_sum += losses.double() * len(y)
                correct += right
                seen += len(y)
                pending_steps.append(step)
                pending_epochs.append(epoch)
                pending_losses.append(losses)
                step += 1
                if step % sync_every == 0:
                    sync()
                if on_progress is not None:
                    on_progress(Progress(label, run_index, runs_total, epoch, step, total_steps,
                                         last_loss))
                if stopping() or (checkpointing is not None
                                  and checkpointing.due_after_step(step, total_steps)):
                    checkpoint(LoopPosition(epoch=epoch, epoch_first_step=first_step, seen=seen,
                                            loss_sum=loss_sum.cpu(), correct=correct.cpu()))
                    if stopping():
                        raise SweepInterrupted(stop.signum)
            sync()
            if not any(alive):
                break
            test_loss, test_acc = trainer.evaluate(data)
            train_loss = (loss_sum / max(seen, 1)).cpu().numpy()
            train_acc = (correct.double() / max(seen, 1)).cpu().numpy()
            if not trainer.task.has_accuracy:
                train_acc = np.full(len(runs), math.nan)  # regression (the DLN)
            for k, run in enumerate(runs):
                if alive[k]:
                    # Train mode (batch statistics) vs eval mode (running ones) on a fixed
                    # training subset; none for the DLN (its epochs store NaN there).
                    modes = (dict(zip(MODE_FIELDS, mode_stats(trainer.module(k), mode_subset)))
                             if mode_subset else {})
                    run.test_acc = float(test_acc[k])
                    # steps < steps_per_epoch marks a partial last epoch (--steps): its
                    # train_loss/acc average fewer minibatches than a whole epoch's.
                    run.log.add_epoch(epoch=epoch, steps=step - first_step,
                                      train_loss=float(train_loss[k]),
                                      train_acc=float(train_acc[k]), test_loss=float(test_loss[k]),
                                      test_acc=run.test_acc,
                                      seconds=time.perf_counter() - epoch_start, **modes)
                    run.log.set_attrs(steps_completed=run.steps)
            flush()
            if stopping() or (checkpointing is not None
                              and checkpointing.due_after_epoch(epoch == n_epochs - 1)):
                checkpoint(LoopPosition(epoch=epoch + 1))  # the next epoch, from its start
                if stopping():
                    raise SweepInterrupted(stop.signum)
    except BaseException as error:  # the file says how the runs ended, then the error goes on
        for k, run in enumerate(runs):
            if alive[k]:
                run.status = ("interrupted" if isinstance(error, (KeyboardInterrupt,
                                                                  SweepInterrupted))
                              else "failed")
        raise
    finally:
        trainer.close()
        sync()
        seconds = time.perf_counter() - started
        for run in runs:
            if run.done:
                continue  # the file holds it complete: left as it is
            attrs = dict(status=run.status, steps_completed=run.steps, seconds=seconds)
            if device.type == "cuda":  # of this run (or of the whole batched grid)
                attrs["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if run.diverged_step is not None:
                attrs["diverged_step"] = run.diverged_step
            run.log.set_attrs(**attrs)
        flush()
    if checkpointing is not None:
        checkpointing.finish()
    return seconds
