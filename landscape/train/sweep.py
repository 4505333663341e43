"""A sweep: every model at every learning rate and every value of every axis (seed, batch
size, momentum, weight decay, dropout, optimizer), written to one HDF5 file.

``run_sweep(SweepConfig(...), out="runs/x.h5")`` is what ``landscape run`` calls. It trains
the sweep cell by cell (``SweepConfig.cells``: one value of each axis), and in a cell, for
each model, chooses how the learning rates train (``grid_mode``: CUDA-graph streams, a
batched grid, or one sequential run after another), splits them into groups that fit in
memory (``grid_chunks``, ``groups_to_train``), and trains each group with ``train_group``
(``loop.train_runs``); a Ray sweep's workers call ``train_group`` too (``distributed.py``).
``open_sweep`` and ``plan_resume`` are what a resumed sweep, local or on Ray, starts from.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data import ImageData, load_dataset
from ..errors import LandscapeError
from ..models import MODELS, is_stochastic
from ..store import RunLog, SweepLock, SweepStore, read_sweep, remove_stale_temporaries
from .batched import GridRuns, supports_batched
from .checkpoint import (Checkpoint, Checkpointing, checkpoint_dir, checkpoint_header,
                         checkpoint_path, find_checkpoints, load_checkpoint)
from .config import AXES, MAX_RUNS_UNASKED, SweepConfig, resumed_config
from .device import (effective_precision, free_memory, out_of_memory, resolve_device,
                     training_precision)
from .loop import Progress, RunState, RunSummary, train_runs
from .signals import stop_on_signals
from .sequential import SequentialRun
from .streams import WARMUP, StreamRuns, supports_graphs
from .tasks import task_for


# How an axis that varies in a sweep shows in its run names (model, lr and seed always do).
RUN_NAME_PARTS = {"batch_size": "bs{:d}", "momentum": "mom{:g}", "weight_decay": "wd{:g}",
                  "dropout": "do{:g}", "optimizer": "{}"}


def run_name(model: str, lr: float, seed: int, **axes) -> str:
    """``vgg_a_bn-lr0.1-seed0``, then a part per axis given (those that vary in the sweep),
    in ``RUN_NAME_PARTS`` order: ``mlp_bn-lr0.001-seed2-bs512-do0.2-adam``."""
    parts = [model, f"lr{lr:g}", f"seed{seed}"]
    parts += [form.format(axes[axis]) for axis, form in RUN_NAME_PARTS.items() if axis in axes]
    return "-".join(parts)


def cell_run_name(cell: SweepConfig, varying: Sequence[str], model_name: str, lr: float) -> str:
    """The name of the run of ``model_name`` at ``lr`` in ``cell`` (one value per axis):
    ``run_name`` with a part for each axis of ``varying`` (those with several values)."""
    return run_name(model_name, lr, cell.seed,
                    **{a: getattr(cell, a) for a in varying if a != "seed"})


def sweep_run_names(config: SweepConfig) -> list[str]:
    """Every run's name, in the order the sweep trains them (cell by cell, model, lr)."""
    varying = config.varying_axes()
    return [cell_run_name(cell, varying, m, lr) for cell in config.cells()
            for m in cell.models for lr in cell.lrs]


def grid_mode(config: SweepConfig, model_name: str, data, device) -> str:
    """How this model's learning rates train (``config``: one cell): ``streams``, ``batched``
    or ``sequential``.

    Runs with instruments (ICS, activations, sharpness, weight statistics), and non-image
    tasks (the DLN), go sequentially:
    those hooks observe one eager ``nn.Module`` and one ``torch.optim`` optimizer. A model
    that vmap (batched) or a CUDA graph (streams) cannot hold goes sequentially too: one with
    dropout or noise layers (random draws), and any optimizer but ``sgd`` (the batched grid
    writes SGD's update itself; graphs record ``torch.optim.SGD`` only).
    """
    if config.grid in ("auto", "streams"):
        return "streams" if supports_graphs(config, model_name, data, device) else "sequential"
    if len(config.lrs) < 2 or config.grid == "sequential":
        return "sequential"
    if config.uses_hooks() or not isinstance(data, ImageData) or config.optimizer != "sgd":
        return "sequential"
    # Measured (benchmarks/RESULTS.md): vmap turns the K models' convolutions into grouped
    # convolutions, slower than K separate runs on the CPU and on an H100 alike; so only on request.
    sample = data.normalize(data.x_train[:2])
    model = config.model(model_name).to(device)
    ok = not is_stochastic(model) and supports_batched(model, sample)
    return "batched" if ok else "sequential"


def make_trainer(mode: str, model_name: str, lrs: list[float], config: SweepConfig, data,
                 device, on_probe, log: RunLog | None, autocast):
    if mode == "streams":
        return StreamRuns(model_name, lrs, config, data, device, on_probe, autocast)
    if len(lrs) > 1:
        return GridRuns(model_name, lrs, config, data, device, on_probe)
    return SequentialRun(model_name, lrs[0], config, data, device, on_probe, log)


def grid_chunks(mode: str, model_name: str, lrs: Sequence[float], config: SweepConfig, data,
                device: torch.device, autocast) -> list[list[float]]:
    """The learning rates split into groups (batched grids, or stream runs) that fit in memory.

    A trial group of all K learning rates takes the first training steps (with a probe, and
    for streams up to the recorded graph) on a real batch; when that runs out of memory, the
    group is halved and tried again, down to single runs. Trial groups are thrown away:
    training starts afresh.
    """
    lrs = list(lrs)
    smallest = 1 if mode == "streams" else 2  # a batched grid of one is a sequential run
    trial_steps = WARMUP + 1 if mode == "streams" else 1
    size = len(lrs)
    while size >= smallest:
        try:
            trainer = make_trainer(mode, model_name, lrs[:size], config, data, device,
                                   lambda k, r: None, None, autocast)
            batches = trainer.task.stream(config.batch_size, config.seed, config.augment).epoch()
            for step, (x, y) in zip(range(trial_steps), batches):
                trainer.step(x, y, step, autocast)
            del trainer, batches, x, y
            free_memory(device)
            return [lrs[i:i + size] for i in range(0, len(lrs), size)]
        except Exception as error:  # noqa: BLE001 - anything but running out of memory re-raises
            if not out_of_memory(error):
                raise
        # Outside the except block: the traceback no longer holds the trial's tensors.
        trainer = batches = x = y = None
        free_memory(device)
        if size == smallest:
            break
        size = (size + 1) // 2 if size > 2 else 1
    return [[lr] for lr in lrs]


def run_sweep(config: SweepConfig, out: str, *, overwrite: bool = False, command: str = "",
              on_progress: Callable[[Progress], None] | None = None,
              data: ImageData | None = None, allow_large: bool = False, resume: bool = False,
              checkpoint_every: int | None = None,
              keep_checkpoints: bool = False) -> list[RunSummary]:
    """Train every (model, lr) of every cell of ``config`` and write one HDF5 file at ``out``.

    All inputs are checked (and the dataset loaded) before the file is created, so a bad
    setting leaves nothing on disk; a sweep of more than ``MAX_RUNS_UNASKED`` runs needs
    ``allow_large=True`` (``--yes``). Diverged runs are recorded and the sweep goes on.

    ``resume``: continue the sweep in ``out`` (``resumed_config``: ``config`` may add models,
    learning rates and seeds, nothing else may differ from the file's). Completed and diverged
    runs are kept; the others continue from their checkpoint, or start afresh without one; new
    runs start. Checkpoints (``FILE.checkpoints/``) are saved every ``checkpoint_every`` steps
    (None: every epoch) and on SIGINT/SIGTERM, which end the sweep with ``SweepInterrupted``;
    a run's checkpoint is removed when it completes unless ``keep_checkpoints``. A second
    process writing ``out`` at the same time gets ``LandscapeError`` (a lock beside it).
    """
    config.validate()
    check_size(config, allow_large)
    check_checkpoint_every(checkpoint_every)
    device = resolve_device(config.device)
    if data is None:
        data = load_dataset(config.dataset, config.data_root)
    data = data.to(device)
    with SweepLock(out):  # before anything is read or written: one writer at a time
        store, config, plan = open_sweep(out, config, data, device, command=command,
                                         overwrite=overwrite, resume=resume,
                                         keep_checkpoints=keep_checkpoints)
        varying = config.varying_axes()
        summaries: dict[str, RunSummary] = {}
        kept = len(plan.kept) if plan else 0
        with stop_on_signals() as stop, training_precision(config.precision, device) as autocast:
            for cell in config.cells():  # one value of every axis; within it, today's grid
                for model_name in cell.models:
                    stop.check()
                    for lrs, mode, checkpoint in groups_to_train(cell, varying, model_name, plan,
                                                                 data, device, autocast):
                        stop.check()
                        names = [cell_run_name(cell, varying, model_name, lr) for lr in lrs]
                        summaries.update({s.name: s for s in train_group(
                            store, cell, varying, model_name, lrs, mode, data, device, autocast,
                            start=None if checkpoint is None else load_checkpoint(checkpoint,
                                                                                  device),
                            done=plan.kept if plan else (),
                            checkpointing=Checkpointing(checkpoint_path(out, names),
                                                        checkpoint_every, keep_checkpoints),
                            stop=stop, on_progress=on_progress,
                            run_index=len(summaries) + kept, runs_total=config.run_count())})
        summaries.update(kept_summaries(out, plan))
        with contextlib.suppress(OSError):  # empty once every run completed: no clutter left
            checkpoint_dir(out).rmdir()
    return [summaries[name] for name in sweep_run_names(config) if name in summaries]


def check_checkpoint_every(checkpoint_every) -> None:
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool)
                                         or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise LandscapeError(f"--checkpoint-every must be a positive integer, got "
                             f"{checkpoint_every!r}")


def open_sweep(out, config: SweepConfig, data, device, *, command: str, overwrite: bool,
               resume: bool, keep_checkpoints: bool, extra: dict | None = None,
               on_gpu: bool | None = None):
    """The sweep's store (a new file, or ``out`` reopened when ``resume``), its settings (a
    resumed sweep's: the file's, grown by ``config``) and the resume plan (None for a new
    sweep). Call with the sweep's lock held. ``extra``: more of the file's config attribute;
    ``on_gpu``: whether the runs train on a GPU, where not here (a Ray sweep's workers)."""
    remove_stale_temporaries(Path(out))
    plan = None
    if resume:
        store = SweepStore.reopen(out)
        config = resumed_config(_stored_config(store, out), asdict(config), out,
                                dataset_file(data), validate=on_gpu is None)
        if on_gpu is not None:
            config.validate(on_gpu=on_gpu)
        plan = plan_resume(config, store.run_attrs, find_checkpoints(out), device)
    file_config = {**sweep_attributes(config, data, device), **(extra or {})}
    if not resume and (overwrite or not Path(out).exists()):  # checkpoints there are another
        _remove_checkpoints(out)  # sweep's
    if resume:
        store.truncate(plan.truncate)
        for path in plan.finished if not keep_checkpoints else ():
            path.unlink(missing_ok=True)
        resumed = json.loads(store.attrs.get("resumed", "[]")) + [
            {"command": command, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "continued_from_step": continued_from_step(plan)}]
        store.set_root_attrs(config=file_config, resumed=resumed)
    else:
        store = SweepStore(out, config=file_config, command=command, overwrite=overwrite)
    return store, config, plan


def continued_from_step(plan: ResumePlan) -> dict[str, int]:
    """Each run that continues from a checkpoint, and the steps it keeps (its step rows)."""
    return {name: int(plan.truncate.get(name, {}).get("steps", 0))
            for names in plan.continued.values() for name in names if name not in plan.kept}


def kept_summaries(out, plan) -> dict[str, RunSummary]:
    if plan is None or not plan.kept:
        return {}
    return {r.name: _kept_summary(r) for r in read_sweep(out).runs if r.name in plan.kept}


@dataclass
class ResumePlan:
    """What ``--resume`` does with each run of the sweep (``plan_resume``)."""

    kept: set[str] = field(default_factory=set)  # completed or diverged: left as they are
    continued: dict[Path, list[str]] = field(default_factory=dict)  # checkpoint -> its runs
    fresh: set[str] = field(default_factory=set)  # not in the file, or without a checkpoint
    modes: dict[Path, str] = field(default_factory=dict)  # checkpoint -> the trainer it fits
    truncate: dict[str, dict[str, int]] = field(default_factory=dict)  # run -> rows it keeps
    finished: set[Path] = field(default_factory=set)  # checkpoints of completed runs only


def resume_action(status: str | None, has_checkpoint: bool) -> str:
    """What a resumed sweep does with one run: ``keep`` (completed, diverged), ``continue``
    (running, interrupted or failed, with a checkpoint), ``fresh`` (never started, or no
    checkpoint: its rows are dropped and it starts again)."""
    if status in ("completed", "diverged"):
        return "keep"
    if status is not None and has_checkpoint:
        return "continue"
    return "fresh"


def plan_resume(config: SweepConfig, run_attrs: dict[str, dict],
                checkpoints: dict[str, Path], device: torch.device,
                names: Sequence[str] | None = None) -> ResumePlan:
    """Decide, run by run (by name), what a resumed sweep does; read every checkpoint's row
    counts. A checkpoint holding several runs (a grid) continues them together, in the
    trainer it was saved from (the runs' ``grid`` attribute). ``names``: only these runs of
    the sweep (a Ray unit whose worker was lost); None: every run."""
    plan = ResumePlan()
    names = set(sweep_run_names(config) if names is None else names)
    for name in sorted(names):
        status = run_attrs.get(name, {}).get("status")
        action = resume_action(status, name in checkpoints)
        if action == "keep":
            plan.kept.add(name)
        elif action == "continue":
            plan.continued.setdefault(checkpoints[name], [])
        else:
            plan.fresh.add(name)
            if name in run_attrs:
                plan.truncate[name] = {}  # starts again: none of its rows stay
    for path in list(plan.continued):
        runs, rows = checkpoint_header(path)
        stray = set(runs) - names
        if stray:
            raise LandscapeError(f"checkpoint {path} holds runs the sweep does not list: "
                                 f"{', '.join(sorted(stray))}")
        plan.continued[path] = runs
        mode = run_attrs.get(runs[0], {}).get("grid", "sequential")
        plan.modes[path] = mode if mode == "streams" or len(runs) > 1 else "sequential"
        if plan.modes[path] == "streams" and device.type != "cuda":
            raise LandscapeError(f"checkpoint {path} holds CUDA-graph runs (--grid streams): "
                                 "resume them on a GPU")
        plan.truncate.update({n: rows.get(n, {}) for n in runs if n not in plan.kept})
    # Checkpoints of runs all complete (a kill came between their last flush and the removal).
    plan.finished = set(checkpoints.values()) - set(plan.continued)
    return plan


def planned_groups(cell: SweepConfig, varying, model_name: str, plan: ResumePlan | None
                   ) -> tuple[list[tuple[list[float], str, Path | None]], list[float]]:
    """A model's runs in a cell under a resume ``plan``: the groups that continue a checkpoint
    (learning rates, the trainer mode it was saved from, its path), and the learning rates
    that start afresh (all of them without a plan; none that the plan keeps)."""
    if plan is None:
        return [], list(cell.lrs)
    lr_of = {cell_run_name(cell, varying, model_name, lr): lr for lr in cell.lrs}
    continued = [([lr_of[n] for n in names], plan.modes[path], path)
                 for path, names in plan.continued.items() if names[0] in lr_of]
    return continued, [lr for n, lr in lr_of.items() if n in plan.fresh]


def groups_to_train(cell: SweepConfig, varying, model_name: str, plan: ResumePlan | None,
                    data, device, autocast) -> list[tuple[list[float], str, Path | None]]:
    """(learning rates, trainer mode, checkpoint to continue from) of each trainer of a model
    in a cell: the groups of continued checkpoints first, then the fresh runs, grouped to fit
    in memory."""
    groups, fresh = planned_groups(cell, varying, model_name, plan)
    if fresh:
        mode = grid_mode(cell, model_name, data, device)
        chunks = ([[lr] for lr in fresh] if mode == "sequential"
                  else grid_chunks(mode, model_name, fresh, cell, data, device, autocast))
        groups += [(lrs, mode if mode == "streams" or len(lrs) > 1 else "sequential", None)
                   for lrs in chunks]
    return groups


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


def _kept_summary(run) -> RunSummary:
    """The summary line of a run the file holds complete (a resumed sweep kept it)."""
    betas = run.probe.beta
    median_beta = float(np.nanmedian(betas)) if np.isfinite(betas).any() else math.nan
    acc = float(run.epochs.test_acc[-1]) if run.status == "completed" and len(run.epochs.test_acc) \
        else math.nan
    return RunSummary(run.name, run.model, run.lr, run.status, int(run.steps_completed or 0), acc,
                      median_beta, float(run.seconds), run.diverged_step)


def sweep_attributes(config: SweepConfig, data, device: torch.device) -> dict:
    """The file's ``config`` attribute: the settings, the device and torch that trained them,
    the data's name (and array file). Settings that only the data can judge (a batch larger
    than the training set, the DLN's full batch) raise here, before the file exists: a bad one
    leaves nothing on disk."""
    for batch_size in config.axis_values("batch_size"):
        task_for(data).stream(batch_size, 0, config.augment)
    return {**asdict(config), "resolved_device": str(device), "torch_version": torch.__version__,
            "dataset_name": data.name, **dataset_file(data)}


def train_group(store: SweepStore, cell: SweepConfig, varying: Sequence[str], model_name: str,
                lrs: Sequence[float], mode: str, data, device, autocast, *,
                start: Checkpoint | None = None, done=(),
                checkpointing: Checkpointing | None = None, stop=None,
                on_progress: Callable[[Progress], None] | None = None, run_index: int = 0,
                runs_total: int | None = None) -> list[RunSummary]:
    """One trainer's runs (``lrs`` of ``model_name`` in ``cell``, trained as ``mode`` says),
    written to ``store`` (a ``SweepStore``, or anything with its ``run`` and ``flush``: a Ray
    worker's relay); their summaries, but for the runs named in ``done`` (the file holds them
    complete: left as they are).

    ``cell``: one cell of the sweep (``SweepConfig.cells``); ``varying``: the sweep's axes
    with several values (they name the runs). ``start``: the checkpoint to continue from;
    ``checkpointing``, ``stop``: as ``loop.train_runs`` takes them. ``run_index``,
    ``runs_total``: where these runs stand in the whole sweep, for progress.
    """
    runs_total = len(lrs) if runs_total is None else runs_total
    steps_per_epoch = task_for(data).stream(cell.batch_size, 0, cell.augment).steps_per_epoch
    precision = effective_precision(cell.precision, device)
    source = dataset_file(data)
    names = [cell_run_name(cell, varying, model_name, lr) for lr in lrs]
    runs = [RunState(RunLog(n, np.asarray(cell.etas) * lr), lr, done=True) if n in done else
            RunState(_open_run(store, cell, varying, model_name, lr, mode, len(lrs), precision,
                               steps_per_epoch, data.name, source), lr)
            for n, lr in zip(names, lrs)]

    def on_probe(k, record):
        runs[k].betas.append(record.beta)
        runs[k].log.add_probe(record)

    trainer = make_trainer(mode, model_name, lrs, cell, data, device, on_probe, runs[0].log,
                           autocast)
    label = runs[0].log.name if len(runs) == 1 else f"{model_name} x{len(runs)} lrs ({mode})"
    seconds = train_runs(trainer, runs, cell, data, device,
                         lambda: store.flush(*(r.log for r in runs if not r.done)),
                         on_progress, label, run_index, runs_total, autocast,
                         checkpointing=checkpointing, start=start, stop=stop)
    return [_summary(model_name, r, seconds) for r in runs if not r.done]


def check_size(config: SweepConfig, allow_large: bool) -> None:
    """A sweep of more than ``MAX_RUNS_UNASKED`` runs is refused unless ``allow_large``."""
    count = config.run_count()
    if count > MAX_RUNS_UNASKED and not allow_large:
        sizes = " x ".join(f"{len(v)} {name}" for name, v in (
            ("models", config.models), ("lrs", config.lrs),
            *((a, config.axis_values(a)) for a in config.varying_axes())))
        raise LandscapeError(f"this sweep is {count:,} runs ({sizes}), more than "
                             f"{MAX_RUNS_UNASKED:,}: pass --yes to run it")


def dataset_file(data) -> dict[str, str]:
    """For data read from an array file: ``dataset_path`` and ``dataset_sha256`` of its bytes."""
    if isinstance(data, ImageData) and data.path:
        return {"dataset_path": data.path, "dataset_sha256": data.sha256}
    return {}


def _open_run(store: SweepStore, config: SweepConfig, varying: Sequence[str], model_name: str,
              lr: float, grid: str, grid_size: int, precision: str, steps_per_epoch: int,
              dataset: str, source: dict[str, str]) -> RunLog:
    """The run's log; ``config``: its cell (one value per axis, each a run attribute);
    ``varying``: the sweep's axes with several values (they name the run);
    ``grid``/``grid_size``: how it trained, and with how many runs at once;
    ``precision``: the arithmetic it really trained in (fp32 on a CPU, whatever was asked);
    ``dataset``: the data's name (an array file's stem); ``source``: that file's path and
    sha256 (``dataset_file``), or nothing."""
    eta = np.asarray(config.etas, dtype=np.float64) * lr
    axes = {axis: getattr(config, axis) for axis in AXES}
    return store.run(cell_run_name(config, varying, model_name, lr), eta=eta, model=model_name, grid=grid, grid_size=grid_size,
                     norm=MODELS[model_name].norm, lr=lr, **axes, width=config.width,
                     dataset=dataset, augment=config.augment, precision=precision,
                     steps_per_epoch=steps_per_epoch,
                     probe_dtype=config.probe_dtype_of(model_name), **source)


def _summary(model_name: str, run: RunState, seconds: float) -> RunSummary:
    betas = np.asarray(run.betas, dtype=np.float64)
    median_beta = float(np.nanmedian(betas)) if np.isfinite(betas).any() else math.nan
    acc = run.test_acc if run.status == "completed" else math.nan
    return RunSummary(run.log.name, model_name, run.lr, run.status, run.steps, acc, median_beta,
                      seconds, run.diverged_step)
