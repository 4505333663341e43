"""A sweep: every model at every learning rate and every value of every axis (seed, batch
size, momentum, weight decay, dropout, optimizer, activation, loss, label smoothing), written
to one HDF5 file.

Every sweep, local or on Ray, is the same four steps (``execute_sweep``): prepare (check the
settings, load the data, take the file's lock, open the file: a new one, or a resumed one with
its ``plan.ResumePlan``) -> ``plan.plan_sweep`` (the groups of runs that train together) -> an
``Executor`` runs the groups -> finish (the summaries, in the sweep's order). ``run_sweep`` is
the local executor (``LocalExecutor``: one group after another, in this process);
``distributed.run_sweep_ray`` the Ray one. Both train a group with ``GroupRunner``: fit it to
the device (``trainers.fit``), build its trainer, open its runs' logs and run the loop
(``loop.train_runs``) with the listeners that write its rows and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol, Sequence

import numpy as np
import torch

from ..data import ImageData, load_dataset
from ..errors import LandscapeError
from ..models import MODELS
from ..models.imported import run_attributes as imported_attributes
from ..models.registry import check_image_shape
from ..store import RunLog, SweepLock, SweepStore, read_sweep, remove_stale_temporaries
from .checkpoint import Checkpointing, checkpoint_dir, checkpoint_path, find_checkpoints, \
    load_checkpoint
from .config import AXES, MAX_RUNS_UNASKED, SweepConfig, resumed_config
from .device import effective_precision, resolve_device, training_precision
from .events import LoopListener
from .livelog import LiveLog, LiveRows, live_log, watch
from .loop import Progress, ReportProgress, RunState, RunSummary, WriteRows, train_runs
from .plan import Group, ResumePlan, RunSpec, plan_resume, plan_sweep, sweep_runs
from .schedules import schedule_attributes
from .snapshots import ATTRIBUTE as WEIGHTS_ATTRIBUTE, SavingWeights, WeightSchedule, \
    weights_attribute, weights_folder
from .protocol import TrainerContext
from .signals import StopRequest, stop_on_signals
from .tasks import task_for
from .trainers import build_trainer, fit


@dataclass
class SweepOptions:
    """How a sweep treats its file and reports: the keyword arguments of ``run_sweep`` and
    ``run_sweep_ray``."""

    overwrite: bool = False  # replace a file already at ``out``
    command: str = ""  # the command line, kept in the file
    on_progress: Callable[[Progress], None] | None = None  # called after every step
    data: ImageData | None = None  # the data; None: loaded from the config's dataset
    allow_large: bool = False  # more than MAX_RUNS_UNASKED runs (--yes)
    resume: bool = False  # continue the sweep in ``out`` (--resume)
    checkpoint_every: int | None = None  # steps between checkpoints; None: every epoch
    keep_checkpoints: bool = False  # leave each run's last checkpoint when it completes
    # Every recorded scalar also as TensorBoard events, DIR/<run>/ (a live view; --tensorboard)
    tensorboard: str | None = None


@dataclass
class Where:
    """Where an executor's runs train, as its session found out."""

    device: torch.device  # the runs' device (a Ray sweep's: its workers')
    data_device: torch.device  # where this process keeps the data
    remote: bool = False  # the runs train in other processes (whose settings they check)
    attrs: dict = field(default_factory=dict)  # more of the file's config attribute

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class OpenSweep:
    """A prepared sweep: its file (lock held), settings, data and resume plan."""

    out: str
    store: SweepStore
    config: SweepConfig  # a resumed sweep's: the file's, grown by the given config
    data: object
    where: Where
    options: SweepOptions
    resume: ResumePlan | None = None  # None: a new sweep
    live: LiveLog | None = None  # where the runs' scalars go as they are recorded (TensorBoard)

    @property
    def kept(self) -> frozenset[str]:
        """Runs the file holds complete: in no group, left as they are."""
        return frozenset(self.resume.kept) if self.resume else frozenset()


class Executor(Protocol):
    """What runs a sweep's groups: a page of code each (``LocalExecutor`` here,
    ``distributed.RayExecutor``)."""

    def check(self, config: SweepConfig) -> None:
        """Every check this executor can make before the data and the file (one line each)."""

    def session(self, config: SweepConfig) -> ContextManager[Where]:
        """Held while the sweep runs: where its runs train (connect and disconnect here)."""

    def run(self, groups: list[Group], sweep: OpenSweep) -> list[RunSummary]:
        """Train every group into ``sweep.store``; the summaries of the runs trained."""


def execute_sweep(config: SweepConfig, out, executor: Executor,
                  options: SweepOptions) -> list[RunSummary]:
    """The one body of every sweep: prepare, plan, run the groups, finish. All inputs are
    checked (and the data loaded) before the file is created: a bad setting leaves nothing on
    disk. A second process writing ``out`` at the same time gets ``LandscapeError``."""
    executor.check(config)
    check_size(config, options.allow_large)
    check_checkpoint_every(options.checkpoint_every)
    data = options.data if options.data is not None else load_dataset(config.dataset,
                                                                        config.data_root)
    with SweepLock(out):  # before anything is read or written: one writer at a time
        live = live_log(options.tensorboard)  # installed and writable, before the file
        with executor.session(config) as where:
            sweep = open_sweep(out, config, data, where, options)
            sweep.live = live
            try:
                groups = plan_sweep(sweep.config, sweep.resume, on_gpu=where.on_gpu)
                summaries = executor.run(groups, sweep)
            finally:
                sweep.store.close()  # every run's lock released, its rows as flushed
                if live is not None:
                    live.close()
        return finish_sweep(sweep, summaries)


def finish_sweep(sweep: OpenSweep, trained: list[RunSummary]) -> list[RunSummary]:
    """The summaries of every run, in the sweep's order (kept runs read from the file); the
    checkpoint folder removed once empty."""
    summaries = {s.name: s for s in trained} | kept_summaries(sweep.out, sweep.resume)
    with contextlib.suppress(OSError):  # empty once every run completed: no clutter left
        checkpoint_dir(sweep.out).rmdir()
    return [summaries[run.name] for run in sweep_runs(sweep.config) if run.name in summaries]


def run_sweep(config: SweepConfig, out: str, **settings) -> list[RunSummary]:
    """Train every (model, lr) of every cell of ``config`` in this process and write one HDF5
    file at ``out``; the keyword arguments (``settings``) are ``SweepOptions``'s fields:
    ``overwrite``, ``command``, ``on_progress``, ``data``, ``allow_large``, ``resume``,
    ``checkpoint_every``, ``keep_checkpoints``, ``tensorboard``. A sweep of more than
    ``MAX_RUNS_UNASKED`` runs needs ``allow_large=True`` (``--yes``). Diverged runs are
    recorded and the sweep goes on.

    ``resume``: continue the sweep in ``out`` (``resumed_config``: ``config`` may add models,
    learning rates and seeds, nothing else may differ from the file's). Completed and diverged
    runs are kept; the others continue from their checkpoint, or start afresh without one; new
    runs start. Checkpoints (``FILE.checkpoints/``) are saved every ``checkpoint_every`` steps
    (None: every epoch) and on SIGINT/SIGTERM, which end the sweep with ``SweepInterrupted``;
    a run's checkpoint is removed when it completes unless ``keep_checkpoints``.
    ``tensorboard``: a folder where every recorded scalar also goes, as TensorBoard events
    (``livelog.TensorBoardLog``), as the sweep goes.
    """
    return execute_sweep(config, out, LocalExecutor(), sweep_options("run_sweep", settings))


def sweep_options(caller: str, settings: dict) -> SweepOptions:
    """``SweepOptions(**settings)``; an unknown keyword is the TypeError Python gives."""
    unknown = sorted(set(settings) - {f.name for f in fields(SweepOptions)})
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}; it "
                        f"takes: {', '.join(f.name for f in fields(SweepOptions))}")
    return SweepOptions(**settings)


class LocalExecutor:
    """The groups one after another in this process, SIGINT/SIGTERM stopping at a step."""

    def check(self, config: SweepConfig) -> None:
        config.validate()

    @contextlib.contextmanager
    def session(self, config: SweepConfig) -> Iterator[Where]:
        device = resolve_device(config.device)
        yield Where(device, device)

    def run(self, groups: list[Group], sweep: OpenSweep) -> list[RunSummary]:
        config, options, device = sweep.config, sweep.options, sweep.where.device
        summaries: list[RunSummary] = []
        with stop_on_signals() as stop, training_precision(config.precision, device) as autocast:
            def checkpointing(group: Group) -> list[LoopListener]:
                return [Checkpointing(checkpoint_path(sweep.out, group.names),
                                      options.checkpoint_every, options.keep_checkpoints)]

            runner = GroupRunner(sweep.store, sweep.data, TrainerContext(device, autocast),
                                 checkpointing, sweep.kept, stop, options.on_progress,
                                 config.run_count(), sweep.live)
            for group in groups:
                stop.check()
                summaries += runner.train(group, run_index=len(summaries) + len(sweep.kept))
        return summaries


@dataclass
class GroupRunner:
    """Trains groups into a writer: what the local sweep and a Ray worker share."""

    writer: object  # a SweepStore, or anything with its run() and flush(): a Ray relay
    data: object  # on context.device
    context: TrainerContext  # device and arithmetic (its on_probe and logs: per group)
    checkpointing: Callable[[Group], list[LoopListener]]  # a group's checkpoint listeners
    done: frozenset[str] = frozenset()  # runs the file holds complete: left as they are
    stop: StopRequest | None = None
    on_progress: Callable[[Progress], None] | None = None
    runs_total: int | None = None  # runs in the whole sweep, for progress
    live: LiveLog | None = None  # every recorded scalar also goes here (TensorBoard)

    def train(self, group: Group, run_index: int = 0) -> list[RunSummary]:
        """``group`` fitted to the device (``trainers.fit``), each part trained; summaries of
        its runs but those in ``done``. ``run_index``: runs of the sweep before these."""
        summaries: list[RunSummary] = []
        for part in fit(group, self.data, self.context):
            if self.stop is not None:
                self.stop.check()
            summaries += self.train_part(part, run_index + len(summaries))
        return summaries

    def train_part(self, group: Group, run_index: int) -> list[RunSummary]:
        """One trainer's runs, from ``group.checkpoint`` if it has one."""
        device = self.context.device
        start = None if group.checkpoint is None else load_checkpoint(group.checkpoint, device)
        runs = self.open_runs(group)

        def on_probe(k: int, record) -> None:
            runs[k].betas.append(record.beta)
            runs[k].log.add_probe(record)

        context = TrainerContext(device, self.context.autocast, on_probe, [r.log for r in runs])
        trainer = build_trainer(group, self.data, context)
        listeners = [*self.saving_weights(group), WriteRows(self.writer),
                     *self.checkpointing(group)]
        if self.live is not None:
            listeners.insert(1, LiveRows(self.live))
        if self.on_progress is not None:
            label = runs[0].log.name if len(runs) == 1 else \
                f"{group.model} x{len(runs)} lrs ({group.mode})"
            listeners.insert(1, ReportProgress(self.on_progress, label, run_index,
                                               self.runs_total or len(runs)))
        seconds = train_runs(trainer, runs, group.cell, self.data, device, listeners=listeners,
                             start=start, stop=self.stop)
        return [_summary(group.model, r, seconds) for r in runs if not r.done]

    def saving_weights(self, group: Group) -> list[LoopListener]:
        """``snapshots.SavingWeights`` when the sweep keeps weights: files beside the runs'."""
        schedule = WeightSchedule.of(group.cell)
        if schedule is None:
            return []
        return [SavingWeights(schedule, lambda run: weights_folder(self.writer.folder, run))]

    def open_runs(self, group: Group) -> list[RunState]:
        """The runs' logs: opened in the writer (attributes set, status running), or, for runs
        in ``done``, a log that writes nothing."""
        cell = group.cell
        steps_per_epoch = task_for(self.data).stream(cell.batch_size, 0, cell.augment) \
            .steps_per_epoch
        precision = effective_precision(cell.precision, self.context.device)
        runs = []
        for run in group.runs:
            eta = np.asarray(cell.etas, np.float64) * run.lr
            if run.name in self.done:
                runs.append(RunState(RunLog(run.name, eta), run.lr, done=True))
                continue
            attrs = run_attributes(run, group, self.data, precision, steps_per_epoch)
            if WeightSchedule.of(cell) is not None:
                attrs[WEIGHTS_ATTRIBUTE] = weights_attribute(self.writer.folder, run.name)
            runs.append(RunState(self.writer.run(run.name, eta=eta, **attrs), run.lr))
            if self.live is not None:
                watch(runs[-1].log, self.live)
        return runs


def run_attributes(run: RunSpec, group: Group, data, precision: str,
                   steps_per_epoch: int) -> dict:
    """A run's attributes in the file: its model, normalization and every axis of its cell;
    ``grid``/``grid_size``: how it trained, with how many runs at once; ``precision``: the
    arithmetic it really trained in (fp32 on a CPU, whatever was asked); the data's name (an
    array file's stem) and that file's path and sha256 (``dataset_file``); a model given by
    import path, its arguments and whether it draws random numbers; the learning-rate
    schedule's arguments (``schedules.schedule_attributes``)."""
    cell = run.cell
    return dict(model=run.model, grid=group.mode, grid_size=len(group.runs),
                norm=MODELS[run.model].norm, lr=run.lr,
                **{axis: getattr(cell, axis) for axis in AXES if getattr(cell, axis) is not None},
                nesterov=cell.nesterov,
                width=cell.width,
                dataset=data.name, augment=cell.augment, precision=precision,
                steps_per_epoch=steps_per_epoch, probe_dtype=cell.probe_dtype_of(run.model),
                **dataset_file(data), **imported_attributes(run.model),
                **schedule_attributes(cell, cell.total_steps(steps_per_epoch)))


def check_checkpoint_every(checkpoint_every) -> None:
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool)
                                         or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise LandscapeError(f"--checkpoint-every must be a positive integer, got "
                             f"{checkpoint_every!r}")


def check_size(config: SweepConfig, allow_large: bool) -> None:
    """A sweep of more than ``MAX_RUNS_UNASKED`` runs is refused unless ``allow_large``."""
    count = config.run_count()
    if count > MAX_RUNS_UNASKED and not allow_large:
        sizes = " x ".join(f"{len(v)} {name}" for name, v in (
            ("models", config.models), ("lrs", config.lrs),
            *((a, config.axis_values(a)) for a in config.varying_axes())))
        raise LandscapeError(f"this sweep is {count:,} runs ({sizes}), more than "
                             f"{MAX_RUNS_UNASKED:,}: pass --yes to run it")


def open_sweep(out, config: SweepConfig, data, where: Where, options: SweepOptions) -> OpenSweep:
    """The sweep's store (a new file, or ``out`` reopened when ``options.resume``), its
    settings (a resumed sweep's: the file's, grown by ``config``) and its resume plan. Call
    with the sweep's lock held."""
    remove_stale_temporaries(Path(out))
    data = data.to(where.data_device)
    if not options.resume:
        file_config = {**sweep_attributes(config, data, where.device), **where.attrs}
        if options.overwrite or not Path(out).exists():  # checkpoints there are another
            _remove_checkpoints(out)  # sweep's
        store = SweepStore(out, config=file_config, command=options.command,
                           overwrite=options.overwrite)
        return OpenSweep(str(out), store, config, data, where, options)
    store = SweepStore.reopen(out)
    config = resumed_config(_stored_config(store, out), asdict(config), out, dataset_file(data),
                            validate=not where.remote)
    if where.remote:
        config.validate(on_gpu=where.on_gpu)
    plan = plan_resume(config, store.run_attrs, find_checkpoints(out), where.on_gpu)
    file_config = {**sweep_attributes(config, data, where.device), **where.attrs}
    store.truncate(plan.truncate)
    for path in plan.finished if not options.keep_checkpoints else ():
        path.unlink(missing_ok=True)
    resumed = json.loads(store.attrs.get("resumed", "[]")) + [
        {"command": options.command,
         "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "continued_from_step": plan.continued_from_step()}]
    store.set_root_attrs(config=file_config, resumed=resumed)
    return OpenSweep(str(out), store, config, data, where, options, plan)


def sweep_attributes(config: SweepConfig, data, device: torch.device) -> dict:
    """The file's ``config`` attribute: the settings, the device and torch that trained them,
    the data's name (and array file). Settings that only the data can judge (a batch larger
    than the training set, the DLN's full batch, a model built for other images) raise here,
    before the file exists: a bad one leaves nothing on disk."""
    for batch_size in config.axis_values("batch_size"):
        task_for(data).stream(batch_size, 0, config.augment)
    for model in config.models if isinstance(data, ImageData) else ():
        check_image_shape(model, data.image_shape)
    return {**asdict(config), "resolved_device": str(device), "torch_version": torch.__version__,
            "dataset_name": data.name, **dataset_file(data)}


def dataset_file(data) -> dict[str, str]:
    """For data read from an array file: ``dataset_path`` and ``dataset_sha256`` of its bytes."""
    if isinstance(data, ImageData) and data.path:
        return {"dataset_path": data.path, "dataset_sha256": data.sha256}
    return {}


def _stored_config(store: SweepStore, out) -> dict:
    try:
        return json.loads(store.attrs.get("config", ""))
    except json.JSONDecodeError:
        raise LandscapeError(f"{out}: its config attribute is not JSON; it cannot be resumed") \
            from None


def _remove_checkpoints(out) -> None:
    folder = checkpoint_dir(out)
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file():
                path.unlink()
        folder.rmdir()


def kept_summaries(out, plan: ResumePlan | None) -> dict[str, RunSummary]:
    """The summaries of the runs a resumed sweep kept, read from the file."""
    if plan is None or not plan.kept:
        return {}
    return {r.name: _kept_summary(r) for r in read_sweep(out).runs if r.name in plan.kept}


def _median_beta(betas: Sequence[float]) -> float:
    betas = np.asarray(betas, dtype=np.float64)
    return float(np.nanmedian(betas)) if np.isfinite(betas).any() else math.nan


def _kept_summary(run) -> RunSummary:
    """The summary line of a run the file holds complete (a resumed sweep kept it)."""
    acc = float(run.epochs.test_acc[-1]) if run.status == "completed" and len(run.epochs.test_acc) \
        else math.nan
    return RunSummary(run.name, run.model, run.lr, run.status, int(run.steps_completed or 0), acc,
                      _median_beta(run.probe.beta), float(run.seconds), run.diverged_step)


def _summary(model_name: str, run: RunState, seconds: float) -> RunSummary:
    acc = run.test_acc if run.status == "completed" else math.nan
    return RunSummary(run.log.name, model_name, run.lr, run.status, run.steps, acc,
                      _median_beta(run.betas), seconds, run.diverged_step)
