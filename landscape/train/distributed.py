"""A sweep on a Ray cluster: the same runs and files, each run written by the worker that trains it.

``run_sweep_ray(config, out, RayOptions(...))`` is what ``landscape run --ray`` calls: the body
of every sweep (``sweep.execute_sweep``) with ``RayExecutor``. Each group of the plan
(``plan.plan_sweep``: one run, or the learning rates of one model that train together on one
GPU) is a *unit*: a Ray generator task asking for ``gpus_per_task`` GPUs and ``cpus_per_task``
CPUs, which trains the group with the local sweep's code (``sweep.GroupRunner``) into its runs'
own files in the sweep's runs folder (``FILE.runs/``, a ``store.RunWriter``), and saves its
checkpoints into ``FILE.checkpoints/`` as a local sweep does: both folders beside ``out``, on a
filesystem the driver and every worker reach at the same path. No row passes through the driver:
it holds the sweep's lock, links each run a worker announces into the index (``out``), reports
progress, and re-plans lost units, so its load is a few messages a unit, not the rows.

A unit whose code raises: its runs are marked ``failed`` with the error (attribute ``error``),
and the other units go on. A unit whose worker died (process killed, node lost, out of memory):
its runs are planned as a resumed sweep plans a file's (``plan.plan_resume``, then
``plan.plan_sweep``): complete ones stay, the others continue from their checkpoint (the rows
after it cut from their files) or start again, on another worker; up to ``max_retries`` times,
then they are marked ``failed`` like the first. A driver that died: ``run_sweep_ray(resume=True)`` (``--resume FILE --ray``).

``ray`` is an optional dependency (``pip install "batchnorm-landscape[ray]"``), imported only when a Ray
sweep starts, so that the package imports, and runs locally, without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import queue
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import LandscapeError
from ..models import MODELS, NORMS, ModelSpec, Norm
from ..models.imported import adopt, is_import_path
from ..models.registry import register_model, register_norm
from ..store import STATUSES, RunLog, RunWriter, lock_is_free, lock_path, runs_dir
from ..version import DISTRIBUTION
from .checkpoint import Checkpointing, checkpoint_dir, checkpoint_path, find_checkpoints
from .config import SweepConfig
from .device import resolve_device, training_precision
from .events import LoopListener
from .loop import Progress, RunSummary
from .plan import Group, plan_resume, plan_sweep
from .protocol import TrainerContext
from .signals import StopRequest
from .snapshots import WeightSchedule
from .sweep import GroupRunner, OpenSweep, Where, execute_sweep, sweep_options

INSTALL = f'pip install "{DISTRIBUTION}[ray]" (or pip install ray)'
PROGRESS_SECONDS = 0.5  # a worker reports progress at most this often
# The driver links the runs announced to it into the index at most this often (and when a unit
# ends or is lost): each rewrites the index (kilobytes per 100 runs), whatever the workers.
LINK_SECONDS = 1.0
# A worker looks whether its driver is still there this often (an flock probe and a stat,
# microseconds), and stops within this and a step when it is not.
DRIVER_WATCH_SECONDS = 0.2
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


# Each worker would write its runs' events where it trains; the driver sees no row to relay.
RAY_REFUSES_TENSORBOARD = ("--tensorboard is not supported with --ray (each run's rows are "
                           "written by its worker, not this process): run without --ray for "
                           "live TensorBoard events")


def import_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LandscapeError(f"--ray needs the ray package: {INSTALL}") from None
    return ray


@dataclass
class Unit:
    """One Ray task's work: a group of the plan, and how its attempts went."""

    group: Group
    attempts: int = 0  # starts so far (a unit continued after a lost worker counts on)
    done: frozenset = frozenset()  # runs the file holds complete: left as they are
    progress: Progress | None = None
    done_steps: int = 0  # steps done, as a local sweep's progress counts them
    summaries: list[RunSummary] = field(default_factory=list)


@dataclass
class CheckpointPlace:
    """Where a unit's checkpoints go: ``FILE.checkpoints/`` beside the sweep file, on a
    filesystem the driver and every worker reach at the same path (``token``: a file the
    driver put there, that a worker must see)."""

    sweep_path: str
    token: str
    every: int | None = None
    keep: bool = False  # keep a run's checkpoint once it completes
    run_paths: dict = field(default_factory=dict)  # run files found elsewhere (a renamed sweep)

    def check(self) -> None:
        if not (checkpoint_dir(self.sweep_path) / self.token).is_file():
            raise LandscapeError(
                f"{checkpoint_dir(self.sweep_path)} is not reachable from this Ray node "
                f"({platform.node()}): checkpoints live beside --out, which must be on a "
                "filesystem every node mounts at the same path")


# ---------------------------------------------------------------------------------------
# The worker side: one unit, trained by the local sweep's code into a relay of its rows.
# ---------------------------------------------------------------------------------------

class WorkerWriter(RunWriter):
    """A worker's writer: its runs' files in the sweep's runs folder, each new one announced to
    the driver (``("opened", name)``), which links it into the index."""

    def __init__(self, place: CheckpointPlace, send: Callable[[tuple], None]):
        super().__init__(runs_dir(place.sweep_path),
                         {name: Path(path) for name, path in place.run_paths.items()})
        self.send = send

    def _created(self, name: str, log: RunLog) -> None:
        self.send(("opened", name))


class DriverWatch(StopRequest):
    """A worker's stop request, asked (as SIGTERM) once its driver is gone -- nobody holds the
    sweep's lock, or another driver has taken it (the driver's token file is gone) -- so that a
    unit whose driver was killed checkpoints and stops at a step boundary, releasing its runs'
    files to ``--resume`` instead of writing on. Looked at every ``DRIVER_WATCH_SECONDS``."""

    def __init__(self, place: CheckpointPlace):
        self.place, self.looked = place, 0.0
        super().__init__()

    @property
    def signum(self) -> int | None:
        if self._signum is None and time.monotonic() - self.looked >= DRIVER_WATCH_SECONDS:
            self.looked = time.monotonic()
            if self._driver_gone():
                self._signum = signal.SIGTERM
        return self._signum

    @signum.setter
    def signum(self, value: int | None) -> None:
        self._signum = value

    def _driver_gone(self) -> bool:
        """Nobody holds the sweep's lock, or someone other than this unit's driver does (a
        resumed sweep: its process id in the lock file, not the one in the driver's token,
        and it clears the old token)."""
        sweep, token = self.place.sweep_path, self.place.token
        if lock_is_free(sweep) or not (checkpoint_dir(sweep) / token).exists():
            return True
        try:
            holder = lock_path(sweep).read_text().strip()
        except OSError:
            return False
        return bool(holder) and holder != token.split("-")[2]  # .ray-driver-PID-HEX


def train_unit(unit: Unit, spec: ModelSpec, norm: Norm, data, threads: int,
               place: CheckpointPlace):
    """A Ray generator task: trains ``unit`` into its runs' files and yields lists of messages
    -- ``("opened", name)`` (a new run's file is there), ``("progress", Progress)``, and last
    ``("done", [RunSummary, ...])``; an error in training raises here, its runs' files released
    (their rows as flushed).

    The model's registry entry travels with the unit (``spec``, ``norm``), so that a model
    registered by the driver's script exists on the worker too (one given by import path is
    imported here when built: its module must be importable on the worker). Training runs on a thread of
    its own so that this generator can yield while it trains.
    """
    if is_import_path(unit.group.model):  # this sweep's arguments, whatever ran here before
        adopt(unit.group.model, spec)
    elif unit.group.model not in MODELS:
        register_model(unit.group.model, spec)
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
            place.check()
            outcome["summaries"] = _train_unit(unit, data, place, box.put, progress)
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


def _train_unit(unit: Unit, data, place: CheckpointPlace, send, progress) -> list[RunSummary]:
    """The unit's group, fitted to this worker's device and trained as a local sweep trains
    it, into its runs' files; its checkpoints saved as a local sweep saves them."""
    cell = unit.group.cell
    device = resolve_device(cell.device)
    writer = WorkerWriter(place, send)

    def checkpointing(group: Group) -> list[LoopListener]:
        return [Checkpointing(checkpoint_path(place.sweep_path, group.names), place.every,
                              place.keep)]

    try:
        with training_precision(cell.precision, device) as autocast:
            runner = GroupRunner(writer, data.to(device), TrainerContext(device, autocast),
                                 checkpointing, unit.done, DriverWatch(place),
                                 on_progress=progress)
            return runner.train(unit.group)
    finally:
        writer.close()  # the runs' locks: the driver may mark or continue them


# ---------------------------------------------------------------------------------------
# The driver side: submit the units, replay their rows into the one file, retry the lost.
# ---------------------------------------------------------------------------------------

def run_sweep_ray(config: SweepConfig, out: str, options: RayOptions | None = None,
                  **settings) -> list[RunSummary]:
    """``run_sweep`` on Ray: every group of the plan as a Ray task, one HDF5 file at ``out``
    written by this process only, which holds its lock; ``settings``: the fields of
    ``sweep.SweepOptions``, as ``run_sweep`` takes them. Returns the summaries in the order of
    a local sweep; a failed run's summary has status ``failed`` and its ``error``.

    Checkpoints (every ``checkpoint_every`` steps, default every epoch) go to
    ``FILE.checkpoints/`` beside ``out``, written by the workers: on a cluster, ``out`` must be
    on a filesystem every node mounts at the same path. A unit whose worker is lost continues
    from its last checkpoint on another worker; ``resume``: continue the sweep in ``out`` as
    ``run_sweep(resume=True)`` does (a driver that was killed), its units on Ray.

    Uses the Ray connection already made in this process (``ray.init``), if any; otherwise
    starts a local instance (``options.address`` None) or joins the cluster at the address,
    and shuts it down at the end. Inputs are checked before the file is created.
    """
    sweep_options_ = sweep_options("run_sweep_ray", settings)
    if sweep_options_.tensorboard is not None:
        raise LandscapeError(RAY_REFUSES_TENSORBOARD)
    out = str(Path(out).resolve())  # the workers' path to the checkpoints too
    return execute_sweep(config, out, RayExecutor(options or RayOptions()), sweep_options_)


class RayExecutor:
    """Each group of the plan a Ray task (a ``Unit``); this process, the driver, the file's
    one writer (``_Driver``)."""

    def __init__(self, options: RayOptions):
        self.options, self.ray, self.gpus = options, None, 0.0

    def check(self, config: SweepConfig) -> None:
        """Every check that does not need the cluster, before Ray starts (seconds): where the
        GPUs per task are not given, assume the workers can do what the settings ask (--grid
        streams: a GPU), and check that once the cluster says (``session``)."""
        if WeightSchedule.of(config) is not None:  # workers would write beside the driver
            raise LandscapeError("--save-weights-every / --save-weights-at do not go with --ray "
                                 "yet: run the sweep without --ray to keep weights")
        self.ray = import_ray()
        self.options.validate()
        known = _known_gpus(config, self.options)
        config.validate(on_gpu=config.grid == "streams" if known is None else known > 0)
        if known is not None:
            _check_gpus(config, known)

    @contextlib.contextmanager
    def session(self, config: SweepConfig) -> Iterator[Where]:
        started = _connect(self.ray, self.options)
        try:
            self.gpus = _gpus_per_task(config, self.options, self.ray.cluster_resources())
            config.validate(on_gpu=self.gpus > 0)
            options = self.options
            attrs = {"ray": {"address": options.address or "local", "gpus_per_task": self.gpus,
                             "cpus_per_task": options.cpus_per_task,
                             "max_retries": options.max_retries}}
            # where the workers train; the driver keeps the data on the CPU
            yield Where(torch.device("cuda" if self.gpus > 0 else "cpu"), torch.device("cpu"),
                        remote=True, attrs=attrs)
        finally:
            if started:
                self.ray.shutdown()

    def run(self, groups: list[Group], sweep: OpenSweep) -> list[RunSummary]:
        place = _checkpoint_place(sweep.out, sweep.options.checkpoint_every,
                                  sweep.options.keep_checkpoints,
                                  {name: str(path) for name, path in sweep.store.paths.items()})
        units = [Unit(group, done=sweep.kept) for group in groups]
        sweep.store.close()  # the runs a resume cut: the workers write them
        task = self.ray.remote(train_unit).options(num_gpus=self.gpus,
                                                   num_cpus=self.options.cpus_per_task,
                                                   max_retries=0)  # the driver retries
        driver = _Driver(self.ray, task, sweep, units, self.options, place)
        driver.run()
        (checkpoint_dir(sweep.out) / place.token).unlink(missing_ok=True)
        return [s for unit in driver.units for s in unit.summaries]


def _checkpoint_place(out: str, every: int | None, keep: bool,
                      run_paths: dict[str, str]) -> CheckpointPlace:
    """The checkpoint folder, cleared of temporary files of workers gone (the lock is held),
    with a token file that a worker must see there."""
    folder = checkpoint_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (*folder.glob(".*.tmp-*"), *folder.glob(".ray-driver-*")):
        stale.unlink(missing_ok=True)  # a killed driver's token, its workers' unfinished saves
    token = f".ray-driver-{os.getpid()}-{secrets.token_hex(4)}"
    (folder / token).touch()
    return CheckpointPlace(out, token, every, keep, run_paths)


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
    """Submits the units, links the runs they announce into the index, reports progress,
    continues lost units from their checkpoints, marks failed ones."""

    def __init__(self, ray, task, sweep: OpenSweep, units: list[Unit], options: RayOptions,
                 place: CheckpointPlace):
        self.ray, self.task, self.sweep, self.units = ray, task, sweep, units
        self.store, self.config, self.options, self.place = sweep.store, sweep.config, options, \
            place
        self.on_progress = sweep.options.on_progress
        self.data_ref = ray.put(sweep.data)
        self.specs = {m: MODELS[m] for m in self.config.models}
        self.threads = max(1, int(options.cpus_per_task))
        self.running: dict = {}  # generator -> unit
        self.latest: Progress | None = None  # the last progress any unit reported
        self.opened: list[str] = []  # runs announced, to link into the index
        self.kept = len(sweep.kept)
        self.retries: list[dict] = []
        self.linked = 0.0  # time.monotonic() of the last index write

    def run(self) -> None:
        ray = self.ray
        for unit in self.units:
            self.submit(unit)
        try:
            while self.running:
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
                if ready:  # and whatever else is ready now
                    ready, _ = ray.wait(list(self.running), num_returns=len(self.running),
                                        timeout=0)
                for gen in ready:
                    self.take(gen)
                if time.monotonic() - self.linked >= LINK_SECONDS:
                    self.link()
                if ready and self.latest is not None and self.on_progress is not None:
                    _report(self.latest, self.units, self.running, self.on_progress,
                            self.config.run_count(), self.kept)
            self.link()
        except BaseException:  # Ctrl-C, or the driver's own failure: the files say how runs ended
            for gen in self.running:
                with contextlib.suppress(Exception):  # the interrupt, not this, is the news
                    ray.cancel(gen, force=True)
            self.link()
            for unit in self.running.values():
                for name in unit.group.names:
                    self.mark(name, set(STATUSES) - {"running"}, status="interrupted")
            raise

    def submit(self, unit: Unit) -> None:
        unit.attempts += 1
        unit.done_steps, unit.progress = 0, None
        spec = self.specs[unit.group.model]
        gen = self.task.remote(unit, spec, NORMS[spec.norm], self.data_ref, self.threads,
                               self.place)
        self.running[gen] = unit

    def link(self) -> None:
        """The runs announced since the last call linked into the index (one write)."""
        self.linked = time.monotonic()
        if self.opened:
            self.store.add_runs(*self.opened)
            self.opened = []

    def take(self, gen) -> None:
        """Every message the unit has ready now, in order."""
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
        except ray.exceptions.RayError as error:  # its worker died: continue it elsewhere
            del self.running[gen]
            if unit.attempts > self.options.max_retries:
                self.fail(unit, f"{_error_text(error)} (its worker was lost {unit.attempts} "
                                "times)")
                return
            self.continue_lost(unit, _error_text(error))
        else:
            if ended:
                del self.running[gen]
                unit.done_steps = len(unit.group.runs) * (unit.progress.steps_total
                                                          if unit.progress else 0)
                self.link()

    def receive(self, unit: Unit, messages: list) -> None:
        for kind, *payload in messages:
            if kind == "opened":
                self.opened.append(payload[0])
            elif kind == "progress":
                unit.progress = self.latest = payload[0]
                unit.done_steps = payload[0].run_index * payload[0].steps_total + payload[0].step
            elif kind == "done":
                unit.summaries = payload[0]

    def written(self, names) -> list[str]:
        """Those of ``names`` whose file a worker has made (announced or not: linked now)."""
        there = [n for n in names if self.store._run_path(n).exists()]
        self.opened += [n for n in there if n not in self.store.linked]
        self.link()
        return there

    def continue_lost(self, unit: Unit, error: str) -> None:
        """A lost unit's runs as a resumed sweep would take them: those their files hold
        complete stay, those with a checkpoint continue from it (their rows after it cut),
        the rest start again; as units of their own, on other workers."""
        names = unit.group.names
        folder = checkpoint_dir(self.place.sweep_path)
        for name in names:  # a save the dead worker began
            for stale in folder.glob(f".{checkpoint_path(self.place.sweep_path, [name]).name}"
                                     ".tmp-*"):
                stale.unlink(missing_ok=True)
        attrs = {n: self.read_attrs(n) for n in self.written(names)}
        found = find_checkpoints(self.place.sweep_path)
        on_gpu = self.sweep.where.on_gpu
        plan = plan_resume(self.config, attrs, {n: found[n] for n in names if n in found},
                           on_gpu, only=names)
        self.store.truncate(plan.truncate)
        self.store.release(*names)  # for the workers that continue them
        self.retries.append({"runs": names, "error": error, "attempt": unit.attempts,
                             "continued_from_step": plan.continued_from_step()})
        self.store.set_root_attrs(ray_retries=self.retries)
        self.units.remove(unit)
        for group in plan_sweep(self.config, plan, on_gpu=on_gpu):
            again = Unit(group, unit.attempts, frozenset(plan.kept) | unit.done)
            self.units.append(again)
            self.submit(again)

    def read_attrs(self, name: str) -> dict:
        """A run's attributes, its writer gone (a dead worker's lock is released at once)."""
        return self.store.read_run_attrs(name)

    def mark(self, name: str, leave: set[str], **attrs) -> dict:
        """Set attributes of a run unless its status is one of ``leave`` (its writer has ended
        or is ending: a cancelled worker's lock goes when its process does); its attributes."""
        if name not in self.written([name]):
            return {}
        for pause in (0.1, 0.3, 1.0, 3.0, None):
            try:
                current = self.read_attrs(name)
                if current.get("status") not in leave:
                    self.store.set_run_attrs(name, **attrs)
                    current.update(attrs)
                return current
            except LandscapeError:
                if pause is None:
                    raise
                time.sleep(pause)
        return {}

    def fail(self, unit: Unit, message: str) -> None:
        """The unit's runs that did not end on their own are failed, with the error."""
        done = {s.name for s in unit.summaries}
        for name, lr in zip(unit.group.names, unit.group.lrs):
            attrs = self.mark(name, {"completed", "diverged"}, status="failed", error=message)
            if name in done or name in unit.done:
                continue
            unit.summaries.append(RunSummary(name, unit.group.model, lr,
                                             attrs.get("status", "failed"),
                                             int(attrs.get("steps_completed", 0)), math.nan,
                                             math.nan, float(attrs.get("seconds", 0.0)),
                                             attrs.get("diverged_step"), message))


def _report(p: Progress, units: list[Unit], running: dict, on_progress, runs_total: int,
            kept: int) -> None:
    """One progress line for the whole sweep: the latest report's run, epoch, step and loss,
    and the steps done by every unit."""
    training = {id(u) for u in running.values()}
    finished = kept + sum(len(u.group.runs) for u in units if id(u) not in training)
    on_progress(Progress(f"{p.run} ({len(running)} of {len(units)} units training)",
                         min(finished, runs_total - 1), runs_total, p.epoch, p.step,
                         p.steps_total, p.loss, sum(u.done_steps for u in units)))
