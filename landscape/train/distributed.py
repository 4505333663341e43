"""A sweep on a Ray cluster: the same runs, the same one HDF5 file, written by the driver alone.

``run_sweep_ray(config, out, RayOptions(...))`` is what ``landscape run --ray`` calls. The sweep
splits into *units* (``sweep_units``): in each cell of the axes (``SweepConfig.cells``: one
seed, batch size, ...), one run, or the learning rates of one model that train together on one
GPU (a streams or batched grid, as a local sweep groups them). Each unit is a
Ray generator task asking for ``gpus_per_task`` GPUs and ``cpus_per_task`` CPUs; it trains with
the code of a local sweep (``sweep.train_model``) into a ``RelayStore``, whose flushes (after
every epoch, at the least) hand each run's new rows (``RunLog.take_pending``) back to the
driver. The driver is the only writer of the file: it replays the rows into its ``SweepStore``
(``RunLog.absorb``) and flushes, so the file is readable during the sweep as a local one is.

A unit whose code raises: its runs are marked ``failed`` with the error (attribute ``error``),
and the other units go on. A unit whose worker died (process killed, node lost, out of memory):
its runs are cleared and the unit starts again on another worker, up to ``max_retries`` times,
then it is marked ``failed`` like the first.

``ray`` is an optional dependency (``pip install "landscape[ray]"``), imported only when a Ray
sweep starts, so that the package imports, and runs locally, without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ..data import ImageData, load_dataset
from ..errors import LandscapeError
from ..models import MODELS, NORMS, ModelSpec, Norm, is_stochastic
from ..models.registry import register_model, register_norm
from ..store import RunLog, SweepStore
from .config import SweepConfig
from .device import resolve_device, training_precision
from .loop import Progress, RunSummary
from .sweep import cell_run_name, check_size, sweep_attributes, train_model

INSTALL = 'pip install "landscape[ray]" (or pip install ray)'
PROGRESS_SECONDS = 0.5  # a worker reports progress at most this often (its rows: every flush)
PACKAGE = Path(__file__).resolve().parents[1]  # the landscape package the workers must run


@dataclass
class RayOptions:
    """Where a sweep's units run and what each asks for."""

    address: str | None = None  # None: a local Ray instance; "auto" or HOST:PORT: a cluster
    gpus_per_task: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_task: float = 1.0  # also each worker's torch threads (at least 1)
    max_retries: int = 2  # times a unit whose worker died starts again

    def validate(self) -> None:
        """Raise ``LandscapeError`` naming the first bad value; connects to nothing."""
        if self.address is not None:
            _check_address(self.address)
        if self.gpus_per_task is not None:
            _number("--ray-gpus-per-task", self.gpus_per_task, 0.0)
        _number("--ray-cpus-per-task", self.cpus_per_task, 0.0, strict=True)
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise LandscapeError(f"--max-retries must be an integer >= 0, got {self.max_retries!r}")


def _number(option: str, value, low: float, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise LandscapeError(f"{option} must be a finite number {bound}, got {value!r}")


def _check_address(address: str) -> None:
    """``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (Ray client)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LandscapeError(f"--ray-address {address!r}: give HOST:PORT (the head node's GCS "
                             "port, 6379 by default), ray://HOST:PORT, or auto")


def import_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LandscapeError(f"--ray needs the ray package: {INSTALL}") from None
    return ray


def sweep_units(config: SweepConfig, data,
                on_gpu: bool) -> list[tuple[SweepConfig, str, tuple[float, ...]]]:
    """The sweep's units of work, as (cell, model, learning rates), in the order of a local
    sweep: cell by cell (``SweepConfig.cells``), model by model.

    A model's learning rates stay one unit where a local sweep would train them together
    (``sweep.grid_mode``): a streams grid on a GPU, or a batched grid on request, for a model
    without random draws trained by SGD; otherwise (sequential runs, instruments' hooks, the
    DLN, dropout, adam, the CPU) each run is a unit of its own. A unit is trained by
    ``train_model``, which still chooses its mode and memory groups.
    """
    units = []
    for cell in config.cells():
        for model in cell.models:
            together = (len(cell.lrs) > 1 and cell.grid != "sequential"
                        and not cell.uses_hooks() and isinstance(data, ImageData)
                        and cell.optimizer == "sgd" and not _draws_at_random(cell, model)
                        and (cell.grid == "batched"
                             or (on_gpu and not cell.compile
                                 and cell.probe_dtype_of(model) == "float32")))
            units += [(cell, model, tuple(cell.lrs))] if together else \
                [(cell, model, (lr,)) for lr in cell.lrs]
    return units


def _draws_at_random(cell: SweepConfig, model: str) -> bool:
    """Whether ``model`` in ``cell`` has random layers (dropout, noise): such runs train one
    by one (neither vmap nor a CUDA graph holds their draws)."""
    with torch.device("meta"):
        return is_stochastic(cell.model(model))


# ---------------------------------------------------------------------------------------
# The worker side: one unit, trained by the local sweep's code into a relay of its rows.
# ---------------------------------------------------------------------------------------

class RelayStore(SweepStore):
    """A ``SweepStore`` without a file, on a worker: its logs buffer rows as usual, and
    ``flush`` hands their new rows (``RunLog.take_pending``) to ``send``."""

    def __init__(self, send: Callable[[tuple], None]):  # noqa: D107 - no file to create
        self.path = None
        self.runs: dict[str, RunLog] = {}
        self.send = send

    def flush(self, *logs: RunLog) -> None:
        self.send(("rows", [log.take_pending() for log in logs or self.runs.values()]))


def train_unit(config: SweepConfig, varying: tuple[str, ...], spec: ModelSpec, norm: Norm, data,
               threads: int):
    """A Ray generator task: trains ``config`` (one cell, one model, the unit's learning
    rates; ``varying``: the sweep's axes that name runs) and
    yields lists of messages -- ``("rows", [pending block, ...])``, ``("progress", Progress)``,
    and last ``("done", [RunSummary, ...])``; an error in training raises here, after the rows
    it left are yielded.

    The model's registry entry travels with the unit (``spec``, ``norm``), so that a model
    registered by the driver's script exists on the worker too. Training runs on a thread of
    its own so that this generator can yield while it trains.
    """
    model_name = config.models[0]
    if model_name not in MODELS:
        register_model(model_name, spec)
    if spec.norm not in NORMS:
        register_norm(spec.norm, norm)
    box: queue.SimpleQueue = queue.SimpleQueue()
    outcome: dict = {}
    last_report = [0.0]

    def progress(p: Progress) -> None:
        if time.monotonic() - last_report[0] >= PROGRESS_SECONDS:
            last_report[0] = time.monotonic()
            box.put(("progress", p))

    def work() -> None:
        # torch's thread count is set on the training thread itself (OpenMP's is per thread).
        torch.set_num_threads(threads)
        try:
            device = resolve_device(config.device)
            with training_precision(config.precision, device) as autocast:
                outcome["summaries"] = train_model(RelayStore(box.put), config, varying,
                                                   model_name, data.to(device), device,
                                                   autocast, progress)
        except BaseException as error:  # noqa: BLE001 - raised again by the generator
            outcome["error"] = error
        finally:
            box.put(None)

    thread = threading.Thread(target=work, name="landscape-unit", daemon=True)
    thread.start()
    finished = False
    while not finished:
        messages = [box.get()]
        while True:
            try:
                messages.append(box.get_nowait())
            except queue.Empty:
                break
        finished = messages[-1] is None
        messages = [m for m in messages if m is not None]
        if messages:
            yield messages
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield [("done", outcome["summaries"])]


# ---------------------------------------------------------------------------------------
# The driver side: submit the units, replay their rows into the one file, retry the lost.
# ---------------------------------------------------------------------------------------

@dataclass
class _Unit:
    cell: SweepConfig  # one value per axis
    model: str
    lrs: tuple[float, ...]
    attempts: int = 0  # starts so far
    runs: list[str] = field(default_factory=list)  # names of the runs it opened in the file
    done_steps: int = 0  # steps done, as a local sweep's progress counts them
    progress: Progress | None = None
    summaries: list[RunSummary] = field(default_factory=list)


def run_sweep_ray(config: SweepConfig, out: str, options: RayOptions | None = None, *,
                  overwrite: bool = False, command: str = "",
                  on_progress: Callable[[Progress], None] | None = None,
                  data=None, allow_large: bool = False) -> list[RunSummary]:
    """``run_sweep`` on Ray: every (model, lr) of ``config`` as Ray tasks, one HDF5 file at
    ``out`` written by this process only. Returns the summaries in the order of a local sweep;
    a failed run's summary has status ``failed`` and its ``error``.

    Uses the Ray connection already made in this process (``ray.init``), if any; otherwise
    starts a local instance (``options.address`` None) or joins the cluster at the address,
    and shuts it down at the end. Inputs are checked before the file is created.
    """
    options = options or RayOptions()
    ray = import_ray()
    options.validate()
    # Every check that does not need the cluster, before Ray starts (seconds): where the GPUs
    # per task are not given, assume the workers can do what the settings ask (--grid streams:
    # a GPU), and check that once the cluster says.
    known = _known_gpus(config, options)
    config.validate(on_gpu=config.grid == "streams" if known is None else known > 0)
    if known is not None:
        _check_gpus(config, known)
    check_size(config, allow_large)
    if data is None:
        data = load_dataset(config.dataset, config.data_root)
    data = data.to("cpu")
    started = _connect(ray, options)
    try:
        gpus = _gpus_per_task(config, options, ray.cluster_resources())
        config.validate(on_gpu=gpus > 0)
        device = torch.device("cuda" if gpus > 0 else "cpu")  # where the workers train
        attributes = sweep_attributes(config, data, device)
        attributes["ray"] = {"address": options.address or "local", "gpus_per_task": gpus,
                             "cpus_per_task": options.cpus_per_task,
                             "max_retries": options.max_retries}
        store = SweepStore(out, config=attributes, command=command, overwrite=overwrite)
        units = [_Unit(cell, model, lrs)
                 for cell, model, lrs in sweep_units(config, data, gpus > 0)]
        task = ray.remote(train_unit).options(num_gpus=gpus, num_cpus=options.cpus_per_task,
                                              max_retries=0)  # the driver retries, from the file
        _Driver(ray, task, store, config, ray.put(data), units, options, on_progress).run()
    finally:
        if started:
            ray.shutdown()
    return [s for unit in units for s in unit.summaries]


def _known_gpus(config: SweepConfig, options: RayOptions) -> float | None:
    """GPUs per task where known without asking the cluster."""
    if options.gpus_per_task is not None:
        return options.gpus_per_task
    return 0.0 if config.device == "cpu" else None


def _gpus_per_task(config: SweepConfig, options: RayOptions, cluster: dict) -> float:
    """``options.gpus_per_task``, or its default; refused where no node could run the task."""
    has = {"GPU": cluster.get("GPU", 0.0), "CPU": cluster.get("CPU", 0.0)}
    gpus = options.gpus_per_task
    if gpus is None:
        gpus = 1.0 if has["GPU"] > 0 and config.device != "cpu" else 0.0
    _check_gpus(config, gpus)
    for resource, option, asked in (("GPU", "--ray-gpus-per-task", gpus),
                                    ("CPU", "--ray-cpus-per-task", options.cpus_per_task)):
        if asked > has[resource]:
            raise LandscapeError(f"{option} {asked:g}: the Ray cluster has {has[resource]:g} "
                                 f"{resource}s in all; its tasks would wait forever")
    return gpus


def _check_gpus(config: SweepConfig, gpus: float) -> None:
    """``--device`` and the GPUs per task agree."""
    if config.device == "cpu" and gpus > 0:
        raise LandscapeError(f"--device cpu trains on CPUs: --ray-gpus-per-task {gpus:g} would "
                             "hold GPUs it never uses")
    if config.device == "cuda" and gpus == 0:
        raise LandscapeError("--device cuda needs a GPU per task: --ray-gpus-per-task is 0 (or "
                             "the Ray cluster has no GPUs)")


def _connect(ray, options: RayOptions) -> bool:
    """Connect to Ray unless this process already is; returns whether it connected here.

    A local instance's workers find this very package through ``PYTHONPATH``; a cluster's
    get it shipped (``py_modules``), so that every node runs the driver's code.
    """
    if ray.is_initialized():
        return False
    if options.address is None:
        path = os.pathsep.join(p for p in (str(PACKAGE.parent), os.environ.get("PYTHONPATH"))
                               if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
    else:
        runtime_env = {"py_modules": [str(PACKAGE)], "excludes": ["__pycache__"]}
    local = {"include_dashboard": False} if options.address is None else {}
    try:
        ray.init(address=options.address, logging_level="WARNING", runtime_env=runtime_env,
                 **local)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = options.address or "a local Ray instance"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LandscapeError(f"cannot start or reach {where}: {first}") from None
    return True


def _error_text(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".strip()
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


class _Driver:
    """Submits the units, replays their rows into ``store`` as they come, retries lost ones."""

    def __init__(self, ray, task, store: SweepStore, config: SweepConfig, data_ref,
                 units: list[_Unit], options: RayOptions, on_progress):
        self.ray, self.task, self.store, self.config = ray, task, store, config
        self.data_ref, self.units, self.options, self.on_progress = data_ref, units, options, \
            on_progress
        self.specs = {m: MODELS[m] for m in config.models}
        self.varying = config.varying_axes()
        self.threads = max(1, int(options.cpus_per_task))
        self.running: dict = {}  # generator -> unit
        self.latest: Progress | None = None  # the last progress any unit reported
        self.touched: dict[str, RunLog] = {}  # runs with rows to flush

    def run(self) -> None:
        ray = self.ray
        for unit in self.units:
            self.submit(unit)
        try:
            while self.running:
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
                if ready:  # and whatever else is ready now: one flush for all of them
                    ready, _ = ray.wait(list(self.running), num_returns=len(self.running),
                                        timeout=0)
                for gen in ready:
                    self.take(gen)
                if self.touched:
                    self.store.flush(*self.touched.values())
                    self.touched = {}
                if ready and self.latest is not None and self.on_progress is not None:
                    _report(self.latest, self.units, self.running, self.on_progress,
                            self.config.run_count())
        except BaseException:  # Ctrl-C, or the driver's own failure: the file says how runs ended
            for gen in self.running:
                with contextlib.suppress(Exception):  # the interrupt, not this, is the news
                    ray.cancel(gen, force=True)
            for unit in self.running.values():
                for name in unit.runs:
                    if self.store.runs[name].attrs.get("status") == "running":
                        self.store.runs[name].set_attrs(status="interrupted")
            self.store.flush()
            raise

    def submit(self, unit: _Unit) -> None:
        unit.attempts += 1
        unit.done_steps, unit.progress = 0, None
        spec = self.specs[unit.model]
        unit_config = replace(unit.cell, models=(unit.model,), lrs=unit.lrs)
        gen = self.task.remote(unit_config, self.varying, spec, NORMS[spec.norm], self.data_ref, self.threads)
        self.running[gen] = unit

    def take(self, gen) -> None:
        """Every message the unit has ready now, in order: a driver that falls behind writes
        more rows per flush, not more flushes (a flush costs per run, hardly per row)."""
        ray, unit = self.ray, self.running[gen]
        refs, ended = [], False
        while not refs or ray.wait([gen], timeout=0)[0]:
            try:
                refs.append(next(gen))
            except StopIteration:
                ended = True
                break
        try:
            for ref in refs:
                self.receive(unit, ray.get(ref))
        except ray.exceptions.RayTaskError as error:  # the unit's code raised
            del self.running[gen]
            self.fail(unit, _error_text(error))
        except ray.exceptions.RayError as error:  # its worker died: start it again
            del self.running[gen]
            if unit.attempts > self.options.max_retries:
                self.fail(unit, f"{_error_text(error)} (its worker was lost {unit.attempts} "
                                "times)")
                return
            for name in unit.runs:
                self.store.forget(name)
                self.touched.pop(name, None)
            unit.runs.clear()
            self.submit(unit)
        else:
            if ended:
                del self.running[gen]
                unit.done_steps = len(unit.lrs) * (unit.progress.steps_total
                                                   if unit.progress else 0)

    def receive(self, unit: _Unit, messages: list) -> None:
        for kind, payload in messages:
            if kind == "rows":
                for pending in payload:
                    log = self.store.runs.get(pending["name"])
                    if log is None:
                        log = self.store.run(pending["name"], pending["eta"])
                        unit.runs.append(pending["name"])
                    log.absorb(pending)
                    self.touched[log.name] = log
            elif kind == "progress":
                unit.progress = self.latest = payload
                unit.done_steps = payload.run_index * payload.steps_total + payload.step
            elif kind == "done":
                unit.summaries = payload

    def fail(self, unit: _Unit, message: str) -> None:
        """The unit's runs that did not end on their own are failed, with the error."""
        for name in unit.runs:
            log = self.store.runs[name]
            if log.attrs.get("status") not in ("completed", "diverged"):
                log.set_attrs(status="failed", error=message)
                self.touched[name] = log
        done = {s.name for s in unit.summaries}
        for lr in unit.lrs:
            name = cell_run_name(unit.cell, self.varying, unit.model, lr)
            if name in done:
                continue
            attrs = self.store.runs[name].attrs if name in self.store.runs else {}
            unit.summaries.append(RunSummary(name, unit.model, lr, attrs.get("status", "failed"),
                                             int(attrs.get("steps_completed", 0)), math.nan,
                                             math.nan, float(attrs.get("seconds", 0.0)),
                                             attrs.get("diverged_step"), message))


def _report(p: Progress, units: list[_Unit], running: dict, on_progress,
            runs_total: int) -> None:
    """One progress line for the whole sweep: the latest report's run, epoch, step and loss,
    and the steps done by every unit."""
    training = {id(u) for u in running.values()}
    finished = sum(len(u.lrs) for u in units if id(u) not in training)
    on_progress(Progress(f"{p.run} ({len(running)} of {len(units)} units training)",
                         min(finished, runs_total - 1), runs_total, p.epoch, p.step,
                         p.steps_total, p.loss, sum(u.done_steps for u in units)))
