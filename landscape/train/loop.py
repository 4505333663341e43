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
from .config import SweepConfig
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


def train_runs(trainer, runs: list[RunState], config: SweepConfig, data, device,
               flush: Callable[[], None], on_progress, label: str, run_index: int,
               runs_total: int, autocast) -> float:
    """Train the trainer's K runs to the end (or divergence); write rows; returns seconds."""
    stream = trainer.task.stream(config.batch_size, config.seed, config.augment)
    mode_subset = trainer.task.mode_subset(config.batch_size)  # fixed: the same every epoch
    total_steps = config.steps or config.epochs * stream.steps_per_epoch
    n_epochs = math.ceil(total_steps / stream.steps_per_epoch)
    # The host reads device values only every `sync_every` steps (divergence check, rows).
    sync_every = 1 if device.type == "cpu" else 50
    pending_steps, pending_epochs, pending_losses = [], [], []
    alive = [True] * len(runs)
    last_loss = None
    started = time.perf_counter()
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

    step = 0
    try:
        for epoch in range(n_epochs):
            epoch_start = time.perf_counter()
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
    except BaseException as error:  # the file says how the runs ended, then the error goes on
        for k, run in enumerate(runs):
            if alive[k]:
                run.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        raise
    finally:
        trainer.close()
        sync()
        seconds = time.perf_counter() - started
        for run in runs:
            attrs = dict(status=run.status, steps_completed=run.steps, seconds=seconds)
            if device.type == "cuda":  # of this run (or of the whole batched grid)
                attrs["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if run.diverged_step is not None:
                attrs["diverged_step"] = run.diverged_step
            run.log.set_attrs(**attrs)
        flush()
    return seconds
