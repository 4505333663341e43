"""Training: a sweep of runs (model x learning rate, one seed) with probes attached from outside.

``run_sweep(SweepConfig(...), out="runs/x.h5")`` is what ``landscape run`` calls. Each run is
plain SGD on cross-entropy; the landscape probe and the gradient statistics are hooks on the
model and optimizer, and the rows they emit go to the sweep's HDF5 store.
"""

from __future__ import annotations

import contextlib
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
from .models import MODELS, build_model
from .norms import is_stochastic
from .graphs import WARMUP, StreamRuns, supports_graphs
from .grid import BatchedGrid, supports_batched
from .instruments import build_instruments
from .probes import GradientStats, LandscapeProbe, along_gradient
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
    precision: str = "tf32"  # training arithmetic on a GPU: fp32, tf32 or bf16 (autocast)
    probe: bool = True  # False: no landscape probes at all (benchmarks' baseline)
    # How the learning rates of one model train: streams (CUDA graphs on concurrent CUDA
    # streams), batched (one vmapped model), sequential; auto = streams on a GPU where the
    # model allows, else sequential.
    grid: str = "auto"
    compile: bool = False  # torch.compile the training forward pass (CPU only; probes stay eager)
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
        if self.grid not in GRID_MODES:
            raise LandscapeError(f"unknown --grid {self.grid!r}; choose from {', '.join(GRID_MODES)}")
        if self.precision not in PRECISIONS:
            raise LandscapeError(f"unknown --precision {self.precision!r}; choose from "
                                 f"{', '.join(PRECISIONS)}")
        if self.dataset not in data_mod.DATASETS:
            raise LandscapeError(f"unknown dataset {self.dataset!r}; choose from "
                                 f"{', '.join(data_mod.DATASETS)}")
        on_gpu = resolve_device(self.device).type == "cuda"
        if not on_gpu and self.grid == "streams":
            raise LandscapeError("--grid streams replays CUDA graphs: it needs a GPU "
                                 "(--device cuda); use --grid sequential or batched here")
        if on_gpu and self.compile:
            # Measured: on an H100 (torch 2.11) a compiled VGG-A+BN step's gradient was 4% off
            # the eager step's at the same weights, while on the CPU the two agree to 1e-5
            # (tests check it). Refused until a GPU run shows them equal.
            raise LandscapeError("--compile is CPU-only for now: on a GPU its gradients differed "
                                 "from eager ones by 4% (benchmarks/RESULTS.md); --grid streams "
                                 "is the fast path there")
        validate_extras(self)  # instruments' settings, DLN model/dataset pairing


PRECISIONS = ("fp32", "tf32", "bf16")
GRID_MODES = ("auto", "streams", "batched", "sequential")


@contextlib.contextmanager
def training_precision(precision: str, device: torch.device):
    """TF32 on for ``tf32``/``bf16`` (restored after); yields the autocast context for steps.

    Probes switch TF32 and autocast off for themselves, so they always measure in float32.
    """
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    fast = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast
    try:
        if precision == "bf16" and device.type == "cuda":
            # No weight cache: CUDA graphs cannot hold it (and each weight is cast once a step).
            yield lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        else:
            yield contextlib.nullcontext
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


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


def build_run(model_name: str, lr: float, config: SweepConfig, num_classes: int,
              device: torch.device) -> tuple[torch.nn.Module, torch.optim.SGD]:
    """A run's model (the same initial weights for every run of this model) and its SGD."""
    torch.manual_seed(config.seed)
    model = build_model(model_name, width=config.width, num_classes=num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # NHWC on tensor cores
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    return model, optimizer


# ----------------------------------------------------------------------------- trainers
# A trainer advances K runs of one model (K = 1, or a whole learning-rate grid) by one step
# on a shared minibatch; the loop in `_train` is the same for both.


class SingleRun:
    """One run: the model, ``torch.optim.SGD``, and the probes attached as hooks."""

    def __init__(self, model_name: str, lr: float, config: SweepConfig, data, device,
                 on_probe: Callable[[int, object], None], log: RunLog):
        self.model, self.optimizer = build_run(model_name, lr, config, data.num_classes, device)
        self.task = tasks.task_for(data)  # classification (ImageData) or the DLN's regression
        # The probe reuses the training step's loss and gradient when that step ran in exact
        # float32 on the same deterministic function the probe measures (one pass fewer).
        exact_step = (device.type == "cpu" or config.precision == "fp32") and not config.compile
        self.probe = LandscapeProbe(every=config.probe_every, etas=tuple(config.etas),
                                    on_record=lambda r: on_probe(0, r), keep=False,
                                    reuse_grad=exact_step and not is_stochastic(self.model))
        self.loss_fn = (self.probe.attach(self.model, self.optimizer, self.task.loss_fn)
                        if config.probe else self.task.loss_fn)
        self.stats = GradientStats().attach(self.optimizer)
        # Compiled for training steps only; probes call the eager module through functional_call.
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.instruments = build_instruments(config, self.model, log)  # ICS, activations
        for instrument in self.instruments:
            self.loss_fn = instrument.attach(self.model, self.optimizer, self.loss_fn)
        self.k = 1

    def step(self, x, y, step: int, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        with autocast():
            out = self.forward(x)
            loss = self.loss_fn(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            return loss.detach().view(1), self.task.correct(out, y).view(1)

    def pop_grad_rows(self) -> np.ndarray:
        return self.stats.pop()[:, None, :]  # (n, 1, 3)

    def evaluate(self, data) -> tuple[np.ndarray, np.ndarray]:
        loss, acc = self.task.evaluate(self.model)
        return np.array([loss]), np.array([acc])

    def freeze(self, k: int) -> None:
        """Run k diverged: nothing more to do for a single run (the loop stops)."""

    def close(self) -> None:
        for hooks in [self.probe, self.stats, *self.instruments]:
            hooks.detach()


class GridRuns:
    """All learning rates of one model as one ``BatchedGrid``; probes on per-run copies."""

    def __init__(self, model_name: str, lrs, config: SweepConfig, data, device,
                 on_probe: Callable[[int, object], None]):
        def build():
            torch.manual_seed(config.seed)  # same initial weights as SingleRun
            return build_model(model_name, width=config.width,
                               num_classes=data.num_classes).to(device)

        self.task = tasks.task_for(data)  # always classification: see _use_grid
        self.grid = BatchedGrid(build, lrs, config.momentum, config.weight_decay,
                                compile=config.compile)
        self.lrs, self.config, self.on_probe, self.k = list(lrs), config, on_probe, len(lrs)
        self._scratch = build()  # a real module that each probe loads one run's state into
        self.stats = GradientStats()  # not attached: fed the stacked gradients of every run

    def step(self, x, y, step: int, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.probe and step % self.config.probe_every == 0:
            for k in range(self.k):  # at theta_t, on this step's batch, before the update
                if bool(self.grid.alive[k]):
                    model = self.grid.model_at(k, into=self._scratch)
                    record = along_gradient(model, F.cross_entropy, x, y,
                                            [e * self.lrs[k] for e in self.config.etas])
                    record.step, record.lr = step, self.lrs[k]
                    self.on_probe(k, record)
        theta = self.grid.flat(self.grid.params)
        losses, correct, grads = self.grid.step(x, y, autocast)
        self.stats.record(self.grid.flat(grads), theta)
        return losses, correct

    def pop_grad_rows(self) -> np.ndarray:
        rows = self.stats.pop()
        return rows if len(rows) else np.zeros((0, self.k, 3))  # (n, K, 3)

    def evaluate(self, data) -> tuple[np.ndarray, np.ndarray]:
        return self.grid.evaluate(data_mod.eval_batches(data))

    def freeze(self, k: int) -> None:
        self.grid.alive[k] = False

    def close(self) -> None:
        pass


@dataclass
class _RunState:
    """Host-side bookkeeping of one run inside the loop."""

    log: RunLog
    lr: float
    status: str = "completed"
    diverged_step: int | None = None
    test_acc: float = math.nan
    betas: list = field(default_factory=list)
    steps: int = 0


def _train(trainer, runs: list[_RunState], config: SweepConfig, data, device,
           flush: Callable[[], None], on_progress, label: str, run_index: int,
           runs_total: int, autocast) -> float:
    """Train the trainer's K runs to the end (or divergence); write rows; returns seconds."""
    stream = trainer.task.stream(config.batch_size, config.seed, config.augment)
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
            seen = 0
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
                    run.test_acc = float(test_acc[k])
                    run.log.add_epoch(epoch=epoch, train_loss=float(train_loss[k]),
                                      train_acc=float(train_acc[k]), test_loss=float(test_loss[k]),
                                      test_acc=run.test_acc,
                                      seconds=time.perf_counter() - epoch_start)
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


def _grid_mode(config: SweepConfig, model_name: str, data, device) -> str:
    """How this model's learning rates train: ``streams``, ``batched`` or ``sequential``.

    Runs with ICS or activation instruments, and non-image tasks (the DLN), go sequentially:
    those hooks observe one eager ``nn.Module`` and one ``torch.optim`` optimizer. A model
    that vmap (batched) or a CUDA graph (streams) cannot hold goes sequentially too.
    """
    if config.grid in ("auto", "streams"):
        return "streams" if supports_graphs(config, model_name, data, device) else "sequential"
    if len(config.lrs) < 2 or config.grid == "sequential":
        return "sequential"
    if config.ics_every or config.activations_every or not isinstance(data, data_mod.ImageData):
        return "sequential"
    # Measured (benchmarks/RESULTS.md): vmap turns the K models' convolutions into grouped
    # convolutions, slower than K separate runs on the CPU and on an H100 alike; so only on request.
    sample = data.normalize(data.x_train[:2])
    ok = supports_batched(build_model(model_name, width=config.width).to(device), sample)
    return "batched" if ok else "sequential"


def out_of_memory(error: BaseException) -> bool:
    """A device allocation failure (CUDA's OutOfMemoryError, or the CPU allocator's)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _make_trainer(mode: str, model_name: str, lrs: list[float], config: SweepConfig, data,
                  device, on_probe, log: RunLog | None, autocast):
    if mode == "streams":
        return StreamRuns(model_name, lrs, config, data, device, on_probe, autocast)
    if len(lrs) > 1:
        return GridRuns(model_name, lrs, config, data, device, on_probe)
    return SingleRun(model_name, lrs[0], config, data, device, on_probe, log)


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
            trainer = _make_trainer(mode, model_name, lrs[:size], config, data, device,
                                    lambda k, r: None, None, autocast)
            batches = trainer.task.stream(config.batch_size, config.seed, config.augment).epoch()
            for step, (x, y) in zip(range(trial_steps), batches):
                trainer.step(x, y, step, autocast)
            del trainer, batches, x, y
            _free_memory(device)
            return [lrs[i:i + size] for i in range(0, len(lrs), size)]
        except Exception as error:  # noqa: BLE001 - anything but running out of memory re-raises
            if not out_of_memory(error):
                raise
        # Outside the except block: the traceback no longer holds the trial's tensors.
        trainer = batches = x = y = None
        _free_memory(device)
        if size == smallest:
            break
        size = (size + 1) // 2 if size > 2 else 1
    return [[lr] for lr in lrs]


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
    summaries: list[RunSummary] = []
    with training_precision(config.precision, device) as autocast:
        for model_name in config.models:
            mode = _grid_mode(config, model_name, data, device)
            groups = ([[lr] for lr in config.lrs] if mode == "sequential"
                      else grid_chunks(mode, model_name, config.lrs, config, data, device,
                                       autocast))
            for lrs in groups:
                run_mode = mode if mode == "streams" or len(lrs) > 1 else "sequential"
                runs = [_RunState(_open_run(store, config, model_name, lr, run_mode, len(lrs)), lr)
                        for lr in lrs]

                def on_probe(k, record, runs=runs):
                    runs[k].betas.append(record.beta)
                    runs[k].log.add_probe(record)

                trainer = _make_trainer(run_mode, model_name, lrs, config, data, device,
                                        on_probe, runs[0].log, autocast)
                label = runs[0].log.name if len(runs) == 1 else \
                    f"{model_name} x{len(runs)} lrs ({run_mode})"
                seconds = _train(trainer, runs, config, data, device,
                                 lambda runs=runs: store.flush(*(r.log for r in runs)),
                                 on_progress, label, len(summaries),
                                 len(config.models) * len(config.lrs), autocast)
                summaries += [_summary(model_name, run, seconds) for run in runs]
    return summaries


def _open_run(store: SweepStore, config: SweepConfig, model_name: str, lr: float,
              grid: str, grid_size: int) -> RunLog:
    """The run's log; ``grid``/``grid_size``: how it trained, and with how many runs at once."""
    eta = np.asarray(config.etas, dtype=np.float64) * lr
    return store.run(run_name(model_name, lr, config.seed), eta=eta, model=model_name,
                     grid=grid, grid_size=grid_size,
                     norm=MODELS[model_name].norm, lr=lr, seed=config.seed,
                     batch_size=config.batch_size, optimizer="SGD", momentum=config.momentum,
                     weight_decay=config.weight_decay, width=config.width,
                     dataset=config.dataset, augment=config.augment, precision=config.precision)


def _summary(model_name: str, run: _RunState, seconds: float) -> RunSummary:
    betas = np.asarray(run.betas, dtype=np.float64)
    median_beta = float(np.nanmedian(betas)) if np.isfinite(betas).any() else math.nan
    acc = run.test_acc if run.status == "completed" else math.nan
    return RunSummary(run.log.name, model_name, run.lr, run.status, run.steps, acc, median_beta,
                      seconds, run.diverged_step)
