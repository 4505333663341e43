"""A sweep: every model at every learning rate and every value of every axis (seed, batch
size, momentum, weight decay, dropout, optimizer), written to one HDF5 file.

``run_sweep(SweepConfig(...), out="runs/x.h5")`` is what ``landscape run`` calls. It trains
the sweep cell by cell (``SweepConfig.cells``: one value of each axis), and in a cell, for
each model, ``train_model`` chooses how the learning rates train (``grid_mode``: CUDA-graph
streams, a batched grid, or one sequential run after another), splits them into groups that
fit in memory (``grid_chunks``), and trains each group with ``loop.train_runs``; a Ray
sweep's workers call ``train_model`` too (``distributed.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable, Sequence

import numpy as np
import torch

from ..data import ImageData, load_dataset
from ..errors import LandscapeError
from ..models import MODELS, is_stochastic
from ..store import RunLog, SweepStore
from .batched import GridRuns, supports_batched
from .config import AXES, MAX_RUNS_UNASKED, SweepConfig
from .device import (effective_precision, free_memory, out_of_memory, resolve_device,
                     training_precision)
from .loop import Progress, RunState, RunSummary, train_runs
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
              data: ImageData | None = None, allow_large: bool = False) -> list[RunSummary]:
    """Train every (model, lr) of every cell of ``config`` and write one HDF5 file at ``out``.

    All inputs are checked (and the dataset loaded) before the file is created, so a bad
    setting leaves nothing on disk; a sweep of more than ``MAX_RUNS_UNASKED`` runs needs
    ``allow_large=True`` (``--yes``). Diverged runs are recorded and the sweep goes on.
    """
    config.validate()
    check_size(config, allow_large)
    device = resolve_device(config.device)
    if data is None:
        data = load_dataset(config.dataset, config.data_root)
    data = data.to(device)
    store = SweepStore(out, config=sweep_attributes(config, data, device), command=command,
                       overwrite=overwrite)
    varying = config.varying_axes()
    summaries: list[RunSummary] = []
    with training_precision(config.precision, device) as autocast:
        for cell in config.cells():  # one value of every axis; within it, today's grid
            for model_name in cell.models:
                summaries += train_model(store, cell, varying, model_name, data, device,
                                         autocast, on_progress, len(summaries),
                                         config.run_count())
    return summaries


def sweep_attributes(config: SweepConfig, data, device: torch.device) -> dict:
    """The file's ``config`` attribute: the settings, the device and torch that trained them,
    the data's name (and array file). Settings that only the data can judge (a batch larger
    than the training set, the DLN's full batch) raise here, before the file exists: a bad one
    leaves nothing on disk."""
    for batch_size in config.axis_values("batch_size"):
        task_for(data).stream(batch_size, 0, config.augment)
    return {**asdict(config), "resolved_device": str(device), "torch_version": torch.__version__,
            "dataset_name": data.name, **dataset_file(data)}


def train_model(store: SweepStore, cell: SweepConfig, varying: Sequence[str], model_name: str,
                data, device, autocast, on_progress: Callable[[Progress], None] | None = None,
                run_index: int = 0, runs_total: int | None = None) -> list[RunSummary]:
    """Every learning rate of ``cell.lrs`` for one model, its runs written to ``store``
    (a ``SweepStore``, or anything with its ``run`` and ``flush``: a Ray worker's relay).

    ``cell``: one cell of the sweep (``SweepConfig.cells``: one value per axis); ``varying``:
    the sweep's axes with several values (they name the runs). Chooses how the learning rates
    train (``grid_mode``), splits them into groups that fit in memory (``grid_chunks``) and
    trains each group with ``loop.train_runs``. ``run_index``, ``runs_total``: where these
    runs stand in the whole sweep, for progress.
    """
    runs_total = len(cell.lrs) if runs_total is None else runs_total
    steps_per_epoch = task_for(data).stream(cell.batch_size, 0, cell.augment).steps_per_epoch
    precision = effective_precision(cell.precision, device)
    source = dataset_file(data)
    mode = grid_mode(cell, model_name, data, device)
    groups = ([[lr] for lr in cell.lrs] if mode == "sequential"
              else grid_chunks(mode, model_name, cell.lrs, cell, data, device, autocast))
    summaries: list[RunSummary] = []
    for lrs in groups:
        run_mode = mode if mode == "streams" or len(lrs) > 1 else "sequential"
        runs = [RunState(_open_run(store, cell, varying, model_name, lr, run_mode, len(lrs),
                                   precision, steps_per_epoch, data.name, source), lr)
                for lr in lrs]

        def on_probe(k, record, runs=runs):
            runs[k].betas.append(record.beta)
            runs[k].log.add_probe(record)

        trainer = make_trainer(run_mode, model_name, lrs, cell, data, device,
                               on_probe, runs[0].log, autocast)
        label = runs[0].log.name if len(runs) == 1 else \
            f"{model_name} x{len(runs)} lrs ({run_mode})"
        seconds = train_runs(trainer, runs, cell, data, device,
                             lambda runs=runs: store.flush(*(r.log for r in runs)),
                             on_progress, label, run_index + len(summaries), runs_total,
                             autocast)
        summaries += [_summary(model_name, run, seconds) for run in runs]
    return summaries
    return summaries


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
