"""Live logs: every recorded scalar, as it is recorded, where people already look.

A ``LiveLog`` takes a run's scalars at a step (``scalars(run, step, values)``), is flushed when
the file is (``flush``) and closed at the end (``close``): ``TensorBoardLog`` writes them as
TensorBoard events, one TensorBoard run directory per landscape run (``DIR/<run>/``). Another
backend (W&B, MLflow) is a class with these three methods. ``watch(log, live)`` feeds a run's
``store.RunLog`` to a live log: every row the run records (``store.scalars.row_scalars``
names them: ``steps/loss``, ``probe/beta``, ``probe/grad_diff/eta=0.05``, ``epochs/test_acc``,
``curvature/lambda_max/1``, ...) reaches it as it is added. ``LiveRows`` is the training
loop's listener that flushes it whenever rows are due to the file.

TensorBoard is an optional dependency (the ``tensorboard`` extra), imported only by
``import_tensorboard``, here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ..errors import LandscapeError
from ..store import RunLog
from ..store.scalars import row_scalars
from .events import LoopListener

INSTALL = 'pip install "batchnorm-landscape[tensorboard]" (or: pip install tensorboard)'


class LiveLog(Protocol):
    """Where a run's scalars go as they are recorded."""

    def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
        """``values`` (name -> number) of run ``run`` at ``step``."""

    def flush(self) -> None:
        """What was given so far, out to its readers."""

    def close(self) -> None:
        """Flushed, and no more scalars come."""


def import_tensorboard():
    """torch's ``SummaryWriter`` class, or one line saying how to install TensorBoard."""
    try:
        import tensorboard
    except ImportError:
        raise LandscapeError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
    del tensorboard  # only there to be found: torch's writer uses it (and says so less plainly)
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter


class TensorBoardLog:
    """A ``LiveLog`` writing TensorBoard event files: ``folder/<run>/events.out.tfevents.*``,
    one TensorBoard run per landscape run (``tensorboard --logdir folder`` shows them side by
    side). The folder is checked (created, writable) when the log is made."""

    def __init__(self, folder: str | os.PathLike):
        self.writer_class = import_tensorboard()
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self.folder, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as error:
            raise LandscapeError(f"--tensorboard {self.folder}: cannot write there "
                                 f"({error.strerror or error})") from None
        self.writers: dict = {}

    def _writer(self, run: str):
        if run not in self.writers:
            # flush_secs: TensorBoard's own flush also happens at every ``flush`` (rows due)
            self.writers[run] = self.writer_class(log_dir=str(self.folder / run), flush_secs=5)
        return self.writers[run]

    def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
        writer = self._writer(run)
        for name, value in values.items():
            writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def live_log(tensorboard: str | os.PathLike | None) -> LiveLog | None:
    """The live log an option asks for: ``TensorBoardLog(tensorboard)``, or None."""
    return None if tensorboard is None else TensorBoardLog(tensorboard)


def watch(log: RunLog, live: LiveLog) -> None:
    """Every row ``log`` records from now on, to ``live`` as named scalars."""

    def send(run_log: RunLog, group: str, rows: dict) -> None:
        for step, values in row_scalars(run_log, group, rows):
            if values:
                live.scalars(run_log.name, step, values)

    log.watch(send)


class LiveRows(LoopListener):
    """Flushes a live log whenever the loop's rows are due to the file (every epoch, at a
    checkpoint, a stop and the end): the live view is never behind the file."""

    def __init__(self, live: LiveLog):
        self.live = live

    def on_rows_due(self, loop) -> None:
        self.live.flush()
