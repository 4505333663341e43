"""The training loop: K runs of one model, one step at a time on a shared minibatch.

A *trainer* (``protocol.Trainer``) advances its runs by one step; ``TrainingLoop`` is the loop
around any of them: epochs, divergence, the rows each run writes to its log, and named events
that its listeners subscribe to (``LoopListener``: a step done, an epoch done, rows due to the
file, a checkpoint saved, the runs ended). The file's writer (``WriteRows``), checkpointing
(``checkpoint.Checkpointing``), progress (``ReportProgress``) and a Ray worker's relay are such
listeners; the loop knows none of them. ``train_runs`` is the loop as one call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..store import RunLog
from ..store.schema import MODE_FIELDS
from .checkpoint import Checkpoint, LoopPosition, restore
from .config import SweepConfig
from .events import LoopListener
from .protocol import Trainer
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


class WriteRows(LoopListener):
    """Hands the rows of the loop's runs to ``writer`` (a ``store.SweepStore``, or anything
    with its ``flush(*logs)``: a Ray worker's relay) whenever they are due."""

    def __init__(self, writer):
        self.writer = writer

    def on_rows_due(self, loop: TrainingLoop) -> None:
        self.writer.flush(*(run.log for run in loop.runs if not run.done))


class ReportProgress(LoopListener):
    """Calls ``on_progress`` with a ``Progress`` after every step."""

    def __init__(self, on_progress: Callable[[Progress], None], label: str, run_index: int,
                 runs_total: int):
        self.on_progress, self.label = on_progress, label
        self.run_index, self.runs_total = run_index, runs_total

    def on_step(self, loop: TrainingLoop) -> None:
        self.on_progress(Progress(self.label, self.run_index, self.runs_total, loop.epoch,
                                  loop.step, loop.total_steps, loop.last_loss))


@dataclass
class EpochSums:
    """The running loss and accuracy sums of the epoch under way (per run)."""

    loss: torch.Tensor  # (K,) float64: sum of minibatch losses x size
    correct: torch.Tensor  # (K,) int64
    seen: int  # training samples so far
    first_step: int  # the step the epoch began with
    started: float  # time.perf_counter() at its start


class TrainingLoop:
    """Train a trainer's K runs to the end (or divergence), writing rows into their logs and
    telling ``listeners`` what happens. Runs marked ``done`` (the file holds them complete)
    are left as they are. ``stop``: a stop asked for (``signals.stop_on_signals``) ends the
    loop at a step boundary (rows due, then ``SweepInterrupted``); a checkpointing listener
    saves a checkpoint first."""

    def __init__(self, trainer: Trainer, runs: list[RunState], config: SweepConfig, data,
                 device: torch.device, listeners: Sequence[LoopListener] = (),
                 stop: StopRequest | None = None):
        self.trainer, self.runs, self.data, self.device = trainer, runs, data, device
        self.listeners, self.stop = list(listeners), stop
        self.stream = trainer.task.stream(config.batch_size, config.seed, config.augment)
        self.mode_subset = trainer.task.mode_subset(config.batch_size)  # the same every epoch
        self.total_steps = config.total_steps(self.stream.steps_per_epoch)
        self.n_epochs = math.ceil(self.total_steps / self.stream.steps_per_epoch)
        # The host reads device values only every `sync_every` steps (divergence check, rows).
        self.sync_every = 1 if device.type == "cpu" else 50
        self.step, self.epoch, self.last_loss = 0, 0, None
        self._stop_read: bool | None = None  # stop_asked() at the boundary under way
        self.alive = [not run.done for run in runs]
        self.sums: EpochSums | None = None  # None between epochs
        # (step, epoch, losses (K,), learning rates (K,)) of the steps since the last sync
        self._pending: list[tuple[int, int, torch.Tensor, np.ndarray]] = []
        self.started = time.perf_counter()

    def emit(self, event: str, *args) -> None:
        for listener in self.listeners:
            getattr(listener, event)(self, *args)

    def run(self, start: Checkpoint | None = None) -> float:
        """Train; returns the seconds spent (those before a checkpoint included)."""
        self._begin(start)
        error = None
        try:
            for epoch in range(self.epoch, self.n_epochs):
                if not self._train_epoch(epoch):
                    break
        except BaseException as raised:  # the file says how the runs ended, then it goes on
            error = raised
            for k, run in enumerate(self.runs):
                if self.alive[k]:
                    run.status = ("interrupted" if isinstance(raised, (KeyboardInterrupt,
                                                                       SweepInterrupted))
                                  else "failed")
            raise
        finally:
            seconds = self._end()
            self._announce_end(error)
        return seconds

    def _announce_end(self, error: BaseException | None) -> None:
        """``on_runs_end`` to every listener; after an error, a listener's own failure is
        noted on that error instead of replacing it (the CLI reports the first)."""
        if error is None:
            self.emit("on_runs_end", None)
            return
        for listener in self.listeners:
            try:
                listener.on_runs_end(self, error)
            except Exception as failure:  # noqa: BLE001 - noted on the error being raised
                error.add_note(f"and {type(listener).__name__}.on_runs_end failed: {failure!r}")

    def _begin(self, start: Checkpoint | None) -> None:
        if start is not None:
            position = restore(self.trainer, start)
            self.stream.load_state_dict(position.stream)
            for k, (run, kept) in enumerate(zip(self.runs, position.runs, strict=True)):
                run.status, run.steps, run.diverged_step = (kept["status"], kept["steps"],
                                                            kept["diverged_step"])
                run.test_acc, run.betas = kept["test_acc"], list(kept["betas"])
                self.alive[k] = self.alive[k] and kept["alive"]
            self.step, self.epoch = position.step, position.epoch
            if position.loss_sum is not None:  # resumed mid-epoch
                self.sums = EpochSums(position.loss_sum.to(self.device),
                                      position.correct.to(self.device), position.seen,
                                      position.epoch_first_step, time.perf_counter())
            self.started -= position.seconds
        for k in range(len(self.runs)):
            if not self.alive[k]:
                self.trainer.freeze(k)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.emit("on_rows_due")  # every group (the instruments' too) exists, empty, from the start

    def _train_epoch(self, epoch: int) -> bool:
        """One epoch (or what is left of it); False once no run is alive."""
        self.epoch = epoch
        if self.sums is None:
            k = len(self.runs)
            self.sums = EpochSums(torch.zeros(k, device=self.device, dtype=torch.float64),
                                  torch.zeros(k, device=self.device, dtype=torch.int64), 0,
                                  self.step, time.perf_counter())
        for x, y in self.stream.epoch():
            if self.step >= self.total_steps or not any(self.alive):
                break
            rates = self.trainer.learning_rates()  # LR(t): read before the step changes it
            losses, right = self.trainer.step(x, y, self.step)
            self.sums.loss += losses.double() * len(y)
            self.sums.correct += right
            self.sums.seen += len(y)
            self._pending.append((self.step, epoch, losses, rates))
            self.step += 1
            if self.step % self.sync_every == 0:
                self.sync()
            self._boundary("on_step")
        self.sync()
        if not any(self.alive):
            return False
        self._epoch_rows(epoch)
        self.sums, self.epoch = None, epoch + 1  # a checkpoint now starts the next epoch
        self.rows_due()
        self._boundary("on_epoch_end", epoch == self.n_epochs - 1)
        return True

    def _boundary(self, event: str, *args) -> None:
        """A step or epoch boundary: the event announced, then the stop made if one was asked
        for (``stop_asked``)."""
        self._stop_read = None
        self.emit(event, *args)
        if self.stop_asked():
            self.rows_due()
            raise SweepInterrupted(self.stop.signum)

    def stop_asked(self) -> bool:
        """Whether a stop was asked for, read once a boundary: every reader after the first
        gets its answer, so that the boundary a checkpointing listener saves at for a stop is
        the one the loop stops at (a signal landing later waits for the next boundary)."""
        if self._stop_read is None:
            self._stop_read = self.stop is not None and self.stop.signum is not None
        return self._stop_read

    def rows_due(self) -> None:
        """Pending rows to the logs, and the logs' rows to the file (the listeners')."""
        self.sync()
        self.emit("on_rows_due")

    def sync(self) -> None:
        """Move pending rows to the logs; a run whose loss is not finite stops there."""
        if not self._pending:
            return
        steps = [s for s, _, _, _ in self._pending]
        epochs = [e for _, e, _, _ in self._pending]
        losses = torch.stack([l for _, _, l, _ in self._pending]).to("cpu", torch.float64).numpy()
        rates = np.stack([r for _, _, _, r in self._pending])  # (n, K)
        grad_rows = self.trainer.pop_grad_rows()  # (n, K, 3)
        for k, run in enumerate(self.runs):
            if self.alive[k]:
                self._add_steps(k, run, steps, epochs, losses[:, k], grad_rows[:, k],
                                rates[:, k])
        self.last_loss = float(losses[-1, 0])
        self._pending = []

    def _add_steps(self, k: int, run: RunState, steps, epochs, losses, grad_rows,
                   rates) -> None:
        bad = np.flatnonzero(~np.isfinite(losses))
        keep = len(losses) if len(bad) == 0 else bad[0] + 1  # keep the step it happened
        run.log.add_steps(step=steps[:keep], epoch=epochs[:keep], loss=losses[:keep],
                          grad_norm=grad_rows[:keep, 0], grad_diff=grad_rows[:keep, 1],
                          beta_consecutive=grad_rows[:keep, 2], learning_rate=rates[:keep])
        run.steps = steps[keep - 1] + 1
        if len(bad):
            run.status, run.diverged_step = "diverged", int(steps[bad[0]])
            self.alive[k] = False
            self.trainer.freeze(k)

    def _epoch_rows(self, epoch: int) -> None:
        """The epoch's row of every live run: train and test loss and accuracy, and train vs
        eval mode on a fixed training subset."""
        sums = self.sums
        test_loss, test_acc = self.trainer.evaluate(self.data)
        train_loss = (sums.loss / max(sums.seen, 1)).cpu().numpy()
        train_acc = (sums.correct.double() / max(sums.seen, 1)).cpu().numpy()
        if not self.trainer.task.has_accuracy:
            train_acc = np.full(len(self.runs), math.nan)  # regression (the DLN)
        for k, run in enumerate(self.runs):
            if self.alive[k]:
                # None for the DLN (its epochs store NaN there).
                modes = (dict(zip(MODE_FIELDS, mode_stats(self.trainer.module(k),
                                                          self.mode_subset,
                                                          self.trainer.task.loss_fn)))
                         if self.mode_subset else {})
                run.test_acc = float(test_acc[k])
                # steps < steps_per_epoch marks a partial last epoch (--steps): its
                # train_loss/acc average fewer minibatches than a whole epoch's.
                run.log.add_epoch(epoch=epoch, steps=self.step - sums.first_step,
                                  train_loss=float(train_loss[k]), train_acc=float(train_acc[k]),
                                  test_loss=float(test_loss[k]), test_acc=run.test_acc,
                                  seconds=time.perf_counter() - sums.started, **modes)
                run.log.set_attrs(steps_completed=run.steps)
        # Before the epoch's checkpoint: a plateau schedule's step is part of the state it saves.
        self.trainer.end_epoch(train_loss)

    def position(self) -> LoopPosition:
        """Where the loop stands between two steps: what a checkpoint holds of it."""
        at = LoopPosition(epoch=self.epoch, step=self.step, stream=self.stream.state_dict(),
                          seconds=time.perf_counter() - self.started)
        if self.sums is not None:  # inside an epoch
            at.epoch_first_step, at.seen = self.sums.first_step, self.sums.seen
            at.loss_sum, at.correct = self.sums.loss.cpu(), self.sums.correct.cpu()
        at.runs = [{"status": run.status, "steps": run.steps, "diverged_step": run.diverged_step,
                    "test_acc": float(run.test_acc), "betas": [float(b) for b in run.betas],
                    "alive": self.alive[k]} for k, run in enumerate(self.runs)]
        return at

    def _end(self) -> float:
        """The trainer closed, the last rows and every run's final attributes to the file."""
        self.trainer.close()
        self.sync()
        seconds = time.perf_counter() - self.started
        for run in self.runs:
            if run.done:
                continue  # the file holds it complete: left as it is
            attrs = dict(status=run.status, steps_completed=run.steps, seconds=seconds)
            if self.device.type == "cuda":  # of this run (or of the whole batched grid)
                attrs["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            if run.diverged_step is not None:
                attrs["diverged_step"] = run.diverged_step
            run.log.set_attrs(**attrs)
        self.emit("on_rows_due")
        return seconds


def train_runs(trainer: Trainer, runs: list[RunState], config: SweepConfig, data,
               device: torch.device, *, listeners: Sequence[LoopListener] = (),
               start: Checkpoint | None = None, stop: StopRequest | None = None) -> float:
    """Train the trainer's K runs to the end (or divergence); returns the seconds spent.
    ``listeners``: ``LoopListener``s (``WriteRows(store)`` writes the rows to a file,
    ``checkpoint.Checkpointing`` saves checkpoints, ``ReportProgress`` reports); ``start``:
    continue from that checkpoint (a trainer built as the saved one was)."""
    return TrainingLoop(trainer, runs, config, data, device, listeners, stop).run(start)
