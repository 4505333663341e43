"""Anyone's training loop into a sweep file: ``Recorder``.

The same three lines as ``probes.LandscapeProbe`` attach what a sweep attaches to its runs --
the landscape probe, the per-step gradient statistics, the step's loss and accuracy
(``probes.StepLoss``), and, when asked (``Instruments``), sharpness, weight statistics, ICS
and activations (``instruments.build_instruments``, ``instruments.WeightRecorder``: the
sweep's own code) -- and write every row through the store's writer (``store.SweepStore``: a
file per run and its journal), so that ``landscape info/plot/export`` and ``read_sweep`` read
the result as they read a sweep::

    rec = Recorder("runs/mine.h5", run="vgg-lr0.05-seed0", seed=0)
    loss_fn = rec.attach(model, optimizer, criterion)
    ...                                    # the loop, as it was
    rec.epoch(test_loss=..., test_acc=...)  # at each epoch's end
    rec.close()                             # or: with Recorder(...) as rec

Several recorders on one path, one after another (a loop over learning rates or seeds), add
their runs to one file; runs whose attributes agree but for the seed pool in the report. The
learning rate is read from the optimizer at every step (``steps/learning_rate``,
``probe/learning_rate``): schedules and warm-up are recorded as ``--lr-schedule``'s are.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import LandscapeError
from ..probes import PROBE_DTYPES, GradientStats, LandscapeProbe, StepLoss, StepLossRecord
from ..store import RunLog, SweepLock, SweepStore, lock_is_free, run_file
from ..store.schema import EPOCH_FIELDS
from .instruments import WeightRecorder, build_instruments
from .livelog import LiveLog, live_log, watch

# Attributes the recorder keeps for itself: how the run went.
OWN_ATTRS = frozenset({"status", "steps_completed", "seconds", "diverged_step", "error"})
# Epoch fields the recorder fills itself (the training loss and accuracy are the epoch's
# steps', unless given).
COUNTED_EPOCH_FIELDS = ("epoch", "steps", "seconds")
DEFAULT_FLUSH_EVERY = 100  # steps between writes of the rows (and at every epoch)
INDEX_LOCK_SECONDS = 5.0  # how long a recorder waits for another to add its run to the index


@dataclass(frozen=True)
class Instruments:
    """What a ``Recorder`` measures besides the landscape probe, the step's loss and the
    gradient statistics; the same settings as ``landscape run``'s options of these names."""

    sharpness_every: int | None = None  # Hessian eigenvalues every N steps
    sharpness_k: int = 1
    trace_samples: int = 0
    weight_stats: bool = False  # per-layer weight statistics every step
    ics_every: int | None = None  # internal covariate shift every N steps
    ics_layers: Sequence[str | int] | None = None
    activations_every: int | None = None  # pre-activation statistics every N steps
    activation_layers: Sequence[str | int] | None = None
    probe_dtype: str | None = None  # the landscape probe's arithmetic: float32 or float64


def _check_attrs(attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        if key in OWN_ATTRS:
            raise LandscapeError(f"Recorder: {key}= is the recorder's to write (how the run went)")
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (str, bool, numbers.Real)) or isinstance(value, complex):
            raise LandscapeError(f"Recorder: attribute {key}={value!r}: give a str, int, float or "
                                 "bool (it is stored as an HDF5 attribute)")


def _check_run_name(run: Any) -> None:
    if not isinstance(run, str) or not run or "/" in run or run.startswith("."):
        raise LandscapeError(f"Recorder: run= must be a non-empty name without '/' (it names the "
                             f"run's file), got {run!r}")


def model_norm(model: nn.Module) -> str:
    """The normalization a model uses, in the registry's words (``batch``, ``layer``,
    ``group``, ``none``): the report tells BN runs from others by it."""
    kinds = [("batch", nn.modules.batchnorm._BatchNorm), ("layer", nn.LayerNorm),
             ("group", nn.GroupNorm)]
    found = [name for name, kind in kinds if any(isinstance(m, kind) for m in model.modules())]
    return found[0] if found else "none"


def detected_attrs(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What the recorder can tell of a run by itself: the model's class and normalization,
    the optimizer's name, base learning rate (``initial_lr`` when a scheduler set one: the
    rate a warm-up or decay starts from), momentum, weight decay, Nesterov."""
    group = optimizer.param_groups[0]
    attrs = {"model": type(model).__name__, "norm": model_norm(model),
             "optimizer": type(optimizer).__name__.lower(),
             "lr": float(group.get("initial_lr", group["lr"])),
             "lr_schedule": "constant", "recorder": True}
    for key in ("momentum", "weight_decay", "nesterov"):
        if key in group and isinstance(group[key], (bool, numbers.Real)):
            attrs[key] = group[key] if isinstance(group[key], bool) else float(group[key])
    return attrs


@contextlib.contextmanager
def _index_lock(path: Path, seconds: float = INDEX_LOCK_SECONDS) -> Iterator[None]:
    """The sweep's lock, held for the moment a run is added to its index: another recorder
    holds it only that long, so it is waited for (a sweep holding it longer: one line)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            lock = SweepLock(path).acquire()
            break
        except LandscapeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.release()


class Recorder:
    """Records one run of a training loop into the sweep file at ``path``.

    ``run``: the run's name in the file; ``every``, ``etas``: the landscape probe's interval
    (optimizer steps) and step sizes as multiples of the learning rate at the probed step;
    ``instruments``: what else to measure; ``tensorboard``: a folder where every recorded
    scalar also goes as TensorBoard events (or ``live``: any ``livelog.LiveLog``);
    ``flush_every``: steps between writes of the rows (kill -9 loses at most these);
    ``resume``: continue a run the file holds (``load_state_dict`` then cuts its rows back to
    a saved state); ``attrs``: the run's attributes (``seed=0``, ``dataset="cifar10"``, ...;
    str, int, float or bool), over what the recorder detects (``detected_attrs``). Runs that
    agree on every attribute but ``seed`` (and ``lr``) pool in the report.
    """

    def __init__(self, path: str | os.PathLike, run: str, *, every: int = 100,
                 etas: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
                 instruments: Instruments = Instruments(), tensorboard=None,
                 live: LiveLog | None = None, flush_every: int = DEFAULT_FLUSH_EVERY,
                 resume: bool = False, **attrs):
        _check_run_name(run)
        _check_attrs(attrs)
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise LandscapeError(f"Recorder: flush_every must be a positive whole number of "
                                 f"steps, got {flush_every!r}")
        if instruments.probe_dtype is not None and instruments.probe_dtype not in PROBE_DTYPES:
            raise LandscapeError(f"Recorder: probe_dtype {instruments.probe_dtype!r}: choose "
                                 f"from {', '.join(PROBE_DTYPES)}")
        self.path, self.run, self.attrs = Path(path), run, attrs
        self.instruments, self.flush_every, self.resume = instruments, flush_every, resume
        # The probe's settings are checked here, before anything is written.
        self.probe = LandscapeProbe(every=every, etas=tuple(etas), keep=False,
                                    on_record=self._probe_record,
                                    dtype=PROBE_DTYPES.get(instruments.probe_dtype))
        self.live = live if live is not None else live_log(tensorboard)
        self.log: RunLog | None = None
        self.store: SweepStore | None = None
        self.closed = False

    # -- attaching: the file's run opened, the probes hooked in ------------------------------

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn):
        """Hook the probes into ``model``, ``optimizer`` and ``loss_fn`` and open the run in
        the file; returns ``loss_fn`` wrapped (use it in the loop, as ``LandscapeProbe``'s)."""
        if self.log is not None:
            raise LandscapeError(f"Recorder {self.run!r}: attach() once per run")
        self.optimizer = optimizer
        attrs = {**detected_attrs(model, optimizer), **self.attrs}
        eta = np.asarray(self.probe.etas, np.float64) * float(attrs["lr"])
        self.log = self._open(eta, attrs)
        self._counters = {"step": 0, "epoch": 0, "epoch_first_step": 0, "loss_sum": 0.0,
                          "correct": 0, "correct_known": True, "seen": 0, "diverged_step": None,
                          "lr_varied": False, "seconds": 0.0}
        self._pending: list[tuple[int, int, StepLossRecord]] = []
        self._started = self._epoch_started = time.perf_counter()
        self._lr0, self._schedule_given = float(attrs["lr"]), "lr_schedule" in self.attrs
        loss_fn = self.probe.attach(model, optimizer, loss_fn)
        self.stats = GradientStats().attach(optimizer)
        self.hooks = build_instruments(self.instruments, model, self.log)
        self.weights = (WeightRecorder(model, optimizer, self.log) if self.instruments.weight_stats
                        else None)
        for instrument in self.hooks:
            loss_fn = instrument.attach(model, optimizer, loss_fn)
        self.step_loss = StepLoss(keep=False, on_record=self._step_record)
        loss_fn = self.step_loss.attach(model, optimizer, loss_fn)
        # After every other hook of the step: its rows are all there when it flushes.
        self._after = optimizer.register_step_post_hook(self._after_step)
        return loss_fn

    def _open(self, eta: np.ndarray, attrs: dict) -> RunLog:
        """The run's log in the sweep file (created, or joined), under the sweep's lock."""
        device = next(iter(self.optimizer.param_groups[0]["params"])).device
        config = {"recorder": True, "torch_version": torch.__version__,
                  "resolved_device": str(device)}
        with _index_lock(self.path):  # the index changes under it only
            store = SweepStore.joined(self.path, config=config,
                                      command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
            if self.run in store.linked and not self.resume:
                where = run_file(self.path, self.run)
                if not lock_is_free(where):
                    raise LandscapeError(f"{where} is in use by another writer (a Recorder, a "
                                         "sweep or a Ray worker)")
                raise LandscapeError(f"{self.path} holds a run {self.run!r} already: choose "
                                     "another run= name (or resume=True to continue it)")
            log = store.run(self.run, eta, **attrs)
        self.store = store
        if self.live is not None:
            watch(log, self.live)
        return log

    # -- each step: the hooks' records -------------------------------------------------------

    def _probe_record(self, record) -> None:
        self.log.add_probe(record)

    def _step_record(self, record: StepLossRecord) -> None:
        self._pending.append((self._counters["step"], self._counters["epoch"], record))
        self._counters["step"] += 1

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self._counters["step"] % self.flush_every == 0:
            self.flush()

    def _sync(self) -> None:
        """The steps since the last sync into the log (one read of the device's values)."""
        grad_rows = self.stats.pop()
        if self.weights is not None:
            self.weights.drain()
        pending, self._pending = self._pending, []
        if not pending:
            return
        losses = torch.stack([r.loss.detach().to("cpu", torch.float64).reshape(())
                              for _, _, r in pending]).numpy()
        n = min(len(pending), len(grad_rows))  # a step without its statistics: none yet
        rates = np.array([r.lr for _, _, r in pending])
        self.log.add_steps(step=[s for s, _, _ in pending][:n], epoch=[e for _, e, _ in pending][:n],
                           loss=losses[:n], grad_norm=grad_rows[:n, 0], grad_diff=grad_rows[:n, 1],
                           beta_consecutive=grad_rows[:n, 2], learning_rate=rates[:n])
        self._count(pending, losses, rates)

    def _count(self, pending, losses: np.ndarray, rates: np.ndarray) -> None:
        """The epoch's sums, divergence and whether the learning rate moved."""
        c = self._counters
        for (step, _, record), loss in zip(pending, losses):
            weight = record.samples or 1  # samples unknown (a returned loss): the steps' mean
            c["loss_sum"] += loss * weight
            c["seen"] += weight
            if record.correct is None:
                c["correct_known"] = False
            else:
                c["correct"] += int(record.correct)
            if not math.isfinite(loss) and c["diverged_step"] is None:
                c["diverged_step"] = step
        if not c["lr_varied"] and np.any(rates != self._lr0):
            c["lr_varied"] = True
            if not self._schedule_given:  # the file says the rate moved, as a schedule's does
                self.log.set_attrs(lr_schedule="varying")

    # -- epochs, flushes, the end ------------------------------------------------------------

    def epoch(self, **metrics: float) -> None:
        """The epoch ended: its row, with ``metrics`` (``test_loss``, ``test_acc``, and any of
        ``train_mode_loss``, ``train_mode_acc``, ``eval_mode_loss``, ``eval_mode_acc``, or
        ``train_loss``/``train_acc`` to replace the epoch's own mean over its steps); the
        fields not given are NaN. The rows go to the file."""
        allowed = [f for f in EPOCH_FIELDS if f not in COUNTED_EPOCH_FIELDS]
        for key, value in metrics.items():
            if key not in allowed:
                raise LandscapeError(f"Recorder.epoch: unknown metric {key!r}; give any of "
                                     f"{', '.join(allowed)}")
            if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor,
                                                                 np.ndarray)):
                raise LandscapeError(f"Recorder.epoch: {key}={value!r} is not a number")
        self._require_open("epoch")
        self._sync()
        c = self._counters
        seen = max(c["seen"], 1)
        row = {f: math.nan for f in allowed}
        row.update(train_loss=c["loss_sum"] / seen if c["seen"] else math.nan,
                   train_acc=c["correct"] / seen if c["seen"] and c["correct_known"] else math.nan)
        row.update({k: float(v) for k, v in metrics.items()})
        steps = c["step"] - c["epoch_first_step"]
        self.log.add_epoch(epoch=c["epoch"], steps=steps,
                           seconds=time.perf_counter() - self._epoch_started, **row)
        if c["epoch"] == 0 and "steps_per_epoch" not in self.attrs:
            self.log.set_attrs(steps_per_epoch=steps)
        c.update(epoch=c["epoch"] + 1, epoch_first_step=c["step"], loss_sum=0.0, correct=0,
                 correct_known=True, seen=0)
        self._epoch_started = time.perf_counter()
        self.flush()

    def flush(self) -> None:
        """The rows so far to the file (a journal record: kill -9 keeps them)."""
        self._require_open("flush")
        self._sync()
        self.log.set_attrs(steps_completed=self._counters["step"])
        self.store.flush(self.log)
        if self.live is not None:
            self.live.flush()

    def _require_open(self, what: str) -> None:
        if self.log is None:
            raise LandscapeError(f"Recorder.{what}: attach(model, optimizer, loss_fn) first")
        if self.closed:
            raise LandscapeError(f"Recorder.{what}: the recorder of {self.run!r} is closed")

    def close(self, status: str | None = None, error: str | None = None) -> None:
        """The run ends: hooks detached, every row and its status (``completed``, or
        ``diverged`` at the first non-finite loss; ``status`` to say otherwise) written, the
        run's file compacted and released. Closing twice does nothing."""
        if self.closed or self.log is None:
            self.closed = True
            return
        for hooks in [self.probe, self.stats, *self.hooks, self.weights, self.step_loss]:
            if hooks is not None:
                hooks.detach()
        self._after.remove()
        c = self._counters
        self._sync()
        diverged = c["diverged_step"] is not None
        attrs = dict(status=status or ("diverged" if diverged else "completed"),
                     steps_completed=c["step"],
                     seconds=c["seconds"] + time.perf_counter() - self._started)
        if diverged:
            attrs["diverged_step"] = c["diverged_step"]
        if error is not None:
            attrs["error"] = error
        self.log.set_attrs(**attrs)
        try:
            self.store.flush(self.log)  # not running: one whole file, the lock released
        finally:
            self.closed = True
            self.store.close()
            if self.live is not None:
                self.live.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        elif issubclass(kind, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed", error=f"{kind.__name__}: {value}")

    # -- checkpoints: the run continued where a saved state left it --------------------------

    def state_dict(self) -> dict:
        """What continuing the run needs, taken between two steps: the rows are flushed
        first, so the state never refers to rows the file lacks (a checkpoint of the loop
        saved with it continues the file without gaps or repeats)."""
        self.flush()
        c = self._counters
        return {"run": self.run, "rows": dict(self.log.rows_in_file),
                "counters": {**c, "seconds": c["seconds"] + time.perf_counter() - self._started,
                             "epoch_seconds": time.perf_counter() - self._epoch_started},
                "probe": self.probe.state_dict(), "stats": self.stats.state_dict(),
                "step_loss": self.step_loss.state_dict(),
                "instruments": [i.state_dict() for i in self.hooks],
                "weights": self.weights.state_dict() if self.weights is not None else None,
                "settings": asdict(self.instruments)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s value (after ``attach`` with ``resume=True``):
        the run's rows after that state are cut from the file, the probes' schedules and the
        step and epoch counts restored."""
        self._require_open("load_state_dict")
        if state["run"] != self.run:
            raise LandscapeError(f"Recorder.load_state_dict: the state is run {state['run']!r}'s, "
                                 f"not {self.run!r}'s")
        self._pending = []
        self.stats.pop()
        self.store.truncate({self.run: state["rows"]})
        counters = dict(state["counters"])
        epoch_seconds = counters.pop("epoch_seconds")
        self._counters.update(counters)
        self._started = time.perf_counter()
        self._epoch_started = time.perf_counter() - epoch_seconds
        self.probe.load_state_dict(state["probe"])
        self.stats.load_state_dict(state["stats"])
        self.step_loss.load_state_dict(state["step_loss"])
        for instrument, kept in zip(self.hooks, state["instruments"], strict=True):
            instrument.load_state_dict(kept)
        if self.weights is not None:
            self.weights.load_state_dict(state["weights"])
