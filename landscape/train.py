"""Training: a sweep of runs (model x learning rate, one seed) with probes attached from outside.

``run_sweep(SweepConfig(...), out="runs/x.h5")`` is what ``landscape run`` calls. Each run is
plain SGD on cross-entropy; the landscape probe and the gradient statistics are hooks on the
model and optimizer, and the rows they emit go to the sweep's HDF5 store.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from . import tasks
from .checks import validate_extras
from .errors import LandscapeError
from .instruments import build_instruments
from .models import MODELS, build_model
from .probes import GradientStats, LandscapeProbe
from .store import RunLog, SweepStore


@dataclass
class SweepConfig:
    """Every setting of a sweep; stored as JSON in the file's ``config`` attribute."""

    models: Sequence[str] = ("vgg_a", "vgg_a_bn")
    lrs: Sequence[float] = (0.1,)
    epochs: int | None = 20
    steps: int | None = None  # when set, overrides epochs: train exactly this many steps
    batch_size: int = 128
    momentum: float = 0.0
    weight_decay: float = 0.0
    probe_every: int = 100
    etas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)  # multiples of the run's learning rate
    dataset: str = "cifar10"
    data_root: str | None = None
    augment: bool = False
    width: float = 1.0
    seed: int = 0
    device: str = "auto"
    # Instruments (landscape.instruments); None = off. Layers: names or 1-based indices.
    ics_every: int | None = None  # steps between internal-covariate-shift probes
    ics_layers: Sequence[str | int] | None = None  # default: one early, one late layer
    activations_every: int | None = None  # steps between activation-distribution probes
    activation_layers: Sequence[str | int] | None = None  # default: every weight layer

    def validate(self) -> None:
        """Raise ``LandscapeError`` naming the first bad value; touches nothing on disk."""
        def positive(name, value, kind=float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0 or (kind is int and value != int(value)):
                raise LandscapeError(f"{name} must be a positive {'integer' if kind is int else 'number'}, "
                                     f"got {value!r}")

        if not self.models:
            raise LandscapeError("--models is empty; give at least one model")
        for m in self.models:
            if m not in MODELS:
                raise LandscapeError(f"unknown model {m!r} in --models; choose from {', '.join(MODELS)}")
        if len(set(self.models)) != len(self.models):
            raise LandscapeError(f"--models lists a model twice: {','.join(self.models)}")
        if not self.lrs:
            raise LandscapeError("--lrs is empty; give at least one learning rate")
        for lr in self.lrs:
            positive("--lrs value", lr)
        if len(set(self.lrs)) != len(self.lrs):
            raise LandscapeError(f"--lrs lists a learning rate twice: {list(self.lrs)}")
        if not self.etas:
            raise LandscapeError("--etas is empty; give at least one multiple of the learning rate")
        for eta in self.etas:
            positive("--etas value", eta)
        if self.steps is not None:
            positive("--steps", self.steps, int)
        elif self.epochs is not None:
            positive("--epochs", self.epochs, int)
        else:
            raise LandscapeError("give --epochs or --steps")
        positive("--batch-size", self.batch_size, int)
        positive("--probe-every", self.probe_every, int)
        positive("--width", self.width)
        for name, value in (("--momentum", self.momentum), ("--weight-decay", self.weight_decay)):
            if not math.isfinite(value) or value < 0:
                raise LandscapeError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.dataset not in data_mod.DATASETS:
            raise LandscapeError(f"unknown dataset {self.dataset!r}; choose from "
                                 f"{', '.join(data_mod.DATASETS)}")
        resolve_device(self.device)
        validate_extras(self)  # instruments' settings, DLN model/dataset pairing


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LandscapeError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        return torch.device(name)
    raise LandscapeError(f"unknown --device {name!r}; choose auto, cpu or cuda")


def run_name(model: str, lr: float, seed: int) -> str:
    return f"{model}-lr{lr:g}-seed{seed}"


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


@dataclass
class _Pending:
    """Per-step values kept on the device until the next host sync."""

    steps: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    losses: list = field(default_factory=list)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: data_mod.ImageData) -> tuple[float, float]:
    """Test loss and accuracy in eval mode (BatchNorm on running statistics)."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=data.y_test.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.y_test.device, dtype=torch.int64)
    for x, y in data_mod.eval_batches(data):
        out = model(x)
        total_loss += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = len(data.y_test)
    return float(total_loss) / n, float(correct) / n


def train_run(model_name: str, lr: float, config: SweepConfig, data: data_mod.ImageData,
              log: RunLog, device: torch.device, flush: Callable[[], None],
              on_progress: Callable[[Progress], None] | None = None,
              run_index: int = 0, runs_total: int = 1) -> RunSummary:
    """Train one (model, lr, seed) run, writing its rows to ``log``; returns its summary."""
    name = log.name
    torch.manual_seed(config.seed)  # same initial weights for every run of this model
    model = build_model(model_name, width=config.width, num_classes=data.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    task = tasks.task_for(data)  # classification (ImageData) or the DLN's regression
    stream = task.stream(config.batch_size, config.seed, config.augment)
    total_steps = config.steps or config.epochs * stream.steps_per_epoch
    n_epochs = math.ceil(total_steps / stream.steps_per_epoch)

    betas: list[float] = []

    def record_probe(record):
        betas.append(record.beta)
        log.add_probe(record)

    probe = LandscapeProbe(every=config.probe_every, etas=tuple(config.etas), relative=True,
                           on_record=record_probe, keep=False)
    loss_fn = probe.attach(model, optimizer, task.loss_fn)
    stats = GradientStats().attach(optimizer)
    extras = build_instruments(config, model, log)  # ICS, activations: as configured
    for instrument in extras:
        loss_fn = instrument.attach(model, optimizer, loss_fn)
    flush()  # their groups exist, empty, from the start
    # The host reads device values only every `sync_every` steps (divergence check, rows).
    sync_every = 1 if device.type == "cpu" else 50
    pending = _Pending()
    step, status, diverged_step, last_loss, test_acc = 0, "completed", None, None, math.nan
    started = time.perf_counter()

    def sync() -> bool:
        """Move pending rows to the log; False (and truncate) once the loss is not finite."""
        nonlocal status, diverged_step, last_loss
        if not pending.steps:
            return True
        losses = torch.stack(pending.losses).to("cpu", torch.float64).numpy()
        grad_rows = stats.pop()
        bad = np.flatnonzero(~np.isfinite(losses))
        keep = len(losses) if len(bad) == 0 else bad[0] + 1  # keep the step it happened
        log.add_steps(step=pending.steps[:keep], epoch=pending.epochs[:keep], loss=losses[:keep],
                      grad_norm=grad_rows[:keep, 0], grad_diff=grad_rows[:keep, 1],
                      beta_consecutive=grad_rows[:keep, 2])
        last_loss = float(losses[keep - 1])
        if len(bad):
            status, diverged_step = "diverged", int(pending.steps[bad[0]])
        pending.steps, pending.epochs, pending.losses = [], [], []
        return not len(bad)

    try:
        for epoch in range(n_epochs):
            epoch_start = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            for x, y in stream.epoch():
                if step >= total_steps:
                    break
                out = model(x)
                loss = loss_fn(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    loss_sum += loss.detach().double() * len(y)
                    correct += task.correct(out, y)
                seen += len(y)
                pending.steps.append(step)
                pending.epochs.append(epoch)
                pending.losses.append(loss.detach())
                step += 1
                if step % sync_every == 0 and not sync():
                    break
                if on_progress is not None:
                    on_progress(Progress(name, run_index, runs_total, epoch, step, total_steps,
                                         last_loss))
            sync()
            if status == "diverged":
                break
            test_loss, test_acc = task.evaluate(model)
            log.add_epoch(epoch=epoch, train_loss=float(loss_sum) / max(seen, 1),
                          train_acc=tasks.accuracy(task, correct, seen), test_loss=test_loss,
                          test_acc=test_acc, seconds=time.perf_counter() - epoch_start)
            log.set_attrs(steps_completed=step)
            flush()
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        probe.detach()
        stats.detach()
        for instrument in extras:
            instrument.detach()
        sync()
        seconds = time.perf_counter() - started
        attrs = dict(status=status, steps_completed=step, seconds=seconds)
        if diverged_step is not None:
            attrs["diverged_step"] = diverged_step
        log.set_attrs(**attrs)
        flush()
    median_beta = float(np.nanmedian(betas)) if np.isfinite(betas).any() else math.nan
    return RunSummary(name, model_name, lr, status, step, test_acc if status == "completed" else
                      math.nan, median_beta, seconds, diverged_step)


def run_sweep(config: SweepConfig, out: str, *, overwrite: bool = False, command: str = "",
              on_progress: Callable[[Progress], None] | None = None,
              data: data_mod.ImageData | None = None) -> list[RunSummary]:
    """Train every (model, lr) of ``config`` and write one HDF5 file at ``out``.

    All inputs are checked (and the dataset loaded) before the file is created, so a bad
    setting leaves nothing on disk. Diverged runs are recorded and the sweep goes on.
    """
    config.validate()
    device = resolve_device(config.device)
    if data is None:
        data = data_mod.load_dataset(config.dataset, config.data_root)
    data = data.to(device)
    store = SweepStore(out, config={**asdict(config), "resolved_device": str(device),
                                    "torch_version": torch.__version__},
                       command=command, overwrite=overwrite)
    summaries = []
    grid = [(m, lr) for m in config.models for lr in config.lrs]
    for i, (model_name, lr) in enumerate(grid):
        eta = np.asarray(config.etas, dtype=np.float64) * lr
        log = store.run(run_name(model_name, lr, config.seed), eta=eta, model=model_name,
                        norm=MODELS[model_name].norm, lr=lr, seed=config.seed,
                        batch_size=config.batch_size, optimizer="SGD", momentum=config.momentum,
                        weight_decay=config.weight_decay, width=config.width,
                        dataset=config.dataset, augment=config.augment)
        summaries.append(train_run(model_name, lr, config, data, log, device,
                                   flush=lambda log=log: store.flush(log), on_progress=on_progress,
                                   run_index=i, runs_total=len(grid)))
    return summaries
