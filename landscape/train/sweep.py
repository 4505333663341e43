"""A sweep: every model at every learning rate (one seed), written to one HDF5 file.

``run_sweep(SweepConfig(...), out="runs/x.h5")`` is what ``landscape run`` calls. For each
model, ``train_model`` chooses how the learning rates train (``grid_mode``: CUDA-graph streams,
a batched grid, or one sequential run after another), splits them into groups that fit in
memory (``grid_chunks``), and trains each group with ``loop.train_runs``; a Ray sweep's
workers call ``train_model`` too (``distributed.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable, Sequence

import numpy as np
import torch

from ..data import ImageData, load_dataset
from ..models import MODELS, build_model
from ..store import RunLog, SweepStore
from .batched import GridRuns, supports_batched
from .config import SweepConfig
from .device import (effective_precision, free_memory, out_of_memory, resolve_device,
                     training_precision)
from .loop import Progress, RunState, RunSummary, train_runs
from .sequential import SequentialRun
from .streams import WARMUP, StreamRuns, supports_graphs
from .tasks import task_for


def run_name(model: str, lr: float, seed: int) -> str:
    return f"{model}-lr{lr:g}-seed{seed}"


def grid_mode(config: SweepConfig, model_name: str, data, device) -> str:
    """How this model's learning rates train: ``streams``, ``batched`` or ``sequential``.

    Runs with instruments (ICS, activations, sharpness, weight statistics), and non-image
    tasks (the DLN), go sequentially:
    those hooks observe one eager ``nn.Module`` and one ``torch.optim`` optimizer. A model
    that vmap (batched) or a CUDA graph (streams) cannot hold goes sequentially too.
    """
    if config.grid in ("auto", "streams"):
        return "streams" if supports_graphs(config, model_name, data, device) else "sequential"
    if len(config.lrs) < 2 or config.grid == "sequential":
        return "sequential"
    if config.uses_hooks() or not isinstance(data, ImageData):
        return "sequential"
    # Measured (benchmarks/RESULTS.md): vmap turns the K models' convolutions into grouped
    # convolutions, slower than K separate runs on the CPU and on an H100 alike; so only on request.
    sample = data.normalize(data.x_train[:2])
    ok = supports_batched(build_model(model_name, width=config.width).to(device), sample)
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
              data: ImageData | None = None) -> list[RunSummary]:
    """Train every (model, lr) of ``config`` and write one HDF5 file at ``out``.

    All inputs are checked (and the dataset loaded) before the file is created, so a bad
    setting leaves nothing on disk. Diverged runs are recorded and the sweep goes on.
    """
    config.validate()
    device = resolve_device(config.device)
    if data is None:
        data = load_dataset(config.dataset, config.data_root)
    data = data.to(device)
    store = SweepStore(out, config=sweep_attributes(config, data, device), command=command,
                       overwrite=overwrite)
    summaries: list[RunSummary] = []
    with training_precision(config.precision, device) as autocast:
        for model_name in config.models:
            summaries += train_model(store, config, model_name, data, device, autocast,
                                     on_progress, len(summaries),
                                     len(config.models) * len(config.lrs))
    return summaries


def sweep_attributes(config: SweepConfig, data, device: torch.device) -> dict:
    """The file's ``config`` attribute: the settings, the device and torch that trained them,
    the data's name (and array file). Settings that only the data can judge (a batch larger
    than the training set, the DLN's full batch) raise here, before the file exists: a bad one
    leaves nothing on disk."""
    task_for(data).stream(config.batch_size, config.seed, config.augment)
    return {**asdict(config), "resolved_device": str(device), "torch_version": torch.__version__,
            "dataset_name": data.name, **dataset_file(data)}


def train_model(store: SweepStore, config: SweepConfig, model_name: str, data, device,
                autocast, on_progress: Callable[[Progress], None] | None = None,
                run_index: int = 0, runs_total: int | None = None) -> list[RunSummary]:
    """Every learning rate of ``config.lrs`` for one model, its runs written to ``store``
    (a ``SweepStore``, or anything with its ``run`` and ``flush``: a Ray worker's relay).

    Chooses how the learning rates train (``grid_mode``), splits them into groups that fit in
    memory (``grid_chunks``) and trains each group with ``loop.train_runs``. ``run_index``,
    ``runs_total``: where these runs stand in the whole sweep, for progress.
    """
    runs_total = len(config.lrs) if runs_total is None else runs_total
    steps_per_epoch = task_for(data).stream(config.batch_size, config.seed,
                                            config.augment).steps_per_epoch
    precision = effective_precision(config.precision, device)
    source = dataset_file(data)
    mode = grid_mode(config, model_name, data, device)
    groups = ([[lr] for lr in config.lrs] if mode == "sequential"
              else grid_chunks(mode, model_name, config.lrs, config, data, device, autocast))
    summaries: list[RunSummary] = []
    for lrs in groups:
        run_mode = mode if mode == "streams" or len(lrs) > 1 else "sequential"
        runs = [RunState(_open_run(store, config, model_name, lr, run_mode, len(lrs),
                                   precision, steps_per_epoch, data.name, source), lr)
                for lr in lrs]

        def on_probe(k, record, runs=runs):
            runs[k].betas.append(record.beta)
            runs[k].log.add_probe(record)

        trainer = make_trainer(run_mode, model_name, lrs, config, data, device,
                               on_probe, runs[0].log, autocast)
        label = runs[0].log.name if len(runs) == 1 else \
            f"{model_name} x{len(runs)} lrs ({run_mode})"
        seconds = train_runs(trainer, runs, config, data, device,
                             lambda runs=runs: store.flush(*(r.log for r in runs)),
                             on_progress, label, run_index + len(summaries), runs_total,
                             autocast)
        summaries += [_summary(model_name, run, seconds) for run in runs]
    return summaries


def dataset_file(data) -> dict[str, str]:
    """For data read from an array file: ``dataset_path`` and ``dataset_sha256`` of its bytes."""
    if isinstance(data, ImageData) and data.path:
        return {"dataset_path": data.path, "dataset_sha256": data.sha256}
    return {}


def _open_run(store: SweepStore, config: SweepConfig, model_name: str, lr: float,
              grid: str, grid_size: int, precision: str, steps_per_epoch: int,
              dataset: str, source: dict[str, str]) -> RunLog:
    """The run's log; ``grid``/``grid_size``: how it trained, and with how many runs at once;
    ``precision``: the arithmetic it really trained in (fp32 on a CPU, whatever was asked);
    ``dataset``: the data's name (an array file's stem); ``source``: that file's path and
    sha256 (``dataset_file``), or nothing."""
    eta = np.asarray(config.etas, dtype=np.float64) * lr
    return store.run(run_name(model_name, lr, config.seed), eta=eta, model=model_name,
                     grid=grid, grid_size=grid_size,
                     norm=MODELS[model_name].norm, lr=lr, seed=config.seed,
                     batch_size=config.batch_size, optimizer="SGD", momentum=config.momentum,
                     weight_decay=config.weight_decay, width=config.width,
                     dataset=dataset, augment=config.augment, precision=precision,
                     steps_per_epoch=steps_per_epoch,
                     probe_dtype=config.probe_dtype_of(model_name), **source)


def _summary(model_name: str, run: RunState, seconds: float) -> RunSummary:
    betas = np.asarray(run.betas, dtype=np.float64)
    median_beta = float(np.nanmedian(betas)) if np.isfinite(betas).any() else math.nan
    acc = run.test_acc if run.status == "completed" else math.nan
    return RunSummary(run.log.name, model_name, run.lr, run.status, run.steps, acc, median_beta,
                      seconds, run.diverged_step)
