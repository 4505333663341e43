"""The plan of a sweep: which runs there are, which of them train together and how, and from
which checkpoint -- decided once, from the settings (and a resumed sweep's file), by pure
functions that touch no device.

``plan_sweep(config, resume=None, on_gpu=...)`` returns the sweep's ``Group``s in the order a
local sweep trains them (cell by cell of the axes, ``SweepConfig.cells``; model by model): a
``Group`` is the runs (``RunSpec``: name, cell, model, learning rate) that one trainer trains
at once, its mode (``sequential``, ``batched``, ``streams``: ``SweepConfig.training_mode``, the
one rule) and the checkpoint it continues from. Every executor runs these groups: the local
sweep one after another (``sweep.py``), a Ray sweep as tasks (``distributed.py``). What only a
device can tell -- whether a group fits in memory -- is ``trainers.fit``, run where it trains.

``plan_resume`` reads what a resumed sweep finds (each run's status in the file, the
checkpoints beside it) into a ``ResumePlan``: runs kept as they are, ``Group``s continued from
their checkpoints, runs that start afresh, rows to cut. A Ray driver re-plans a lost unit's
runs through the same two functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterator

from ..errors import LandscapeError
from ..models import run_label
from .checkpoint import checkpoint_header
from .config import SweepConfig

# How an axis that varies in a sweep shows in its run names (model, lr and seed always do).
RUN_NAME_PARTS = {"batch_size": "bs{:d}", "momentum": "mom{:g}", "weight_decay": "wd{:g}",
                  "dropout": "do{:g}", "optimizer": "{}", "activation": "{}", "loss": "{}",
                  "label_smoothing": "ls{:g}", "lr_schedule": "{}", "depth": "d{}"}


def run_name(model: str, lr: float, seed: int, **axes) -> str:
    """``vgg_a_bn-lr0.1-seed0``, then a part per axis given (those that vary in the sweep),
    in ``RUN_NAME_PARTS`` order: ``mlp_bn-lr0.001-seed2-bs512-do0.2-adam``. A model given by
    import path is named by its callable (``run_label``)."""
    parts = [run_label(model), f"lr{lr:g}", f"seed{seed}"]
    parts += [form.format(axes[axis]) for axis, form in RUN_NAME_PARTS.items() if axis in axes]
    return "-".join(parts)


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run of a sweep: its name (given here once), its cell of the axes (a config of one
    value per axis), its model and learning rate."""

    name: str
    cell: SweepConfig
    model: str
    lr: float


@dataclass(frozen=True, eq=False)
class Group:
    """Runs that one trainer trains at once: one model in one cell, at one learning rate or
    more, in ``mode``; ``checkpoint``: the one they continue from (None: they start)."""

    runs: tuple[RunSpec, ...]
    mode: str
    checkpoint: Path | None = None

    @property
    def cell(self) -> SweepConfig:
        return self.runs[0].cell

    @property
    def model(self) -> str:
        return self.runs[0].model

    @property
    def lrs(self) -> list[float]:
        return [run.lr for run in self.runs]

    @property
    def names(self) -> list[str]:
        return [run.name for run in self.runs]

    def split(self, size: int) -> list[Group]:
        """Groups of at most ``size`` runs (a single run alone trains sequentially, unless in
        streams: a graphed run of its own)."""
        parts = [self.runs[i:i + size] for i in range(0, len(self.runs), size)]
        return [Group(runs, self.mode if self.mode == "streams" or len(runs) > 1
                      else "sequential") for runs in parts]


def model_runs(config: SweepConfig) -> Iterator[list[RunSpec]]:
    """The sweep's runs, one list per model in each cell (every learning rate), in the order
    a local sweep trains them: cell by cell (``SweepConfig.cells``), model by model."""
    varying = config.varying_axes()
    for cell in config.cells():
        named = {a: getattr(cell, a) for a in varying if a != "seed"}
        for model in cell.models:
            yield [RunSpec(run_name(model, lr, cell.seed, **named), cell, model, lr)
                   for lr in cell.lrs]


def sweep_runs(config: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep, in the order it trains them."""
    return [run for runs in model_runs(config) for run in runs]


def plan_sweep(config: SweepConfig, resume: ResumePlan | None = None, *,
               on_gpu: bool = False) -> list[Group]:
    """The groups that train the sweep, in order. ``resume``: a resumed sweep's plan (its
    continued groups come first in their model's place; the runs it keeps are in no group; a
    plan of some runs only, ``plan_resume(..., only=)``, plans only those). ``on_gpu``: whether the runs train
    on a GPU (CUDA-graph streams)."""
    groups: list[Group] = []
    for runs in model_runs(config):
        if resume is not None:
            names = {run.name for run in runs}
            groups += [g for g in resume.continued if g.runs[0].name in names]
            runs = [run for run in runs if run.name in resume.fresh]
        groups += together(runs, on_gpu)
    return groups


def together(runs: list[RunSpec], on_gpu: bool) -> list[Group]:
    """Fresh runs of one model in one cell as groups: one group in a grid mode, else one
    group per run."""
    if not runs:
        return []
    mode = runs[0].cell.training_mode(runs[0].model, on_gpu, len(runs))
    if mode == "sequential":
        return [Group((run,), mode) for run in runs]
    return [Group(tuple(runs), mode)]


@dataclass
class ResumePlan:
    """What a resumed sweep does with each of its runs (``plan_resume``)."""

    kept: set[str] = field(default_factory=set)  # completed or diverged: left as they are
    continued: list[Group] = field(default_factory=list)  # each from its checkpoint
    fresh: set[str] = field(default_factory=set)  # not in the file, or without a checkpoint
    truncate: dict[str, dict[str, int]] = field(default_factory=dict)  # run -> rows it keeps
    finished: set[Path] = field(default_factory=set)  # checkpoints of completed runs only

    def continued_from_step(self) -> dict[str, int]:
        """Each run that continues from a checkpoint, and the steps it keeps (its step rows)."""
        return {name: int(self.truncate.get(name, {}).get("steps", 0))
                for group in self.continued for name in group.names if name not in self.kept}

    def checkpoints(self) -> dict[str, Path]:
        """Run -> the checkpoint it continues from."""
        return {name: group.checkpoint for group in self.continued for name in group.names}


def resume_action(status: str | None, has_checkpoint: bool) -> str:
    """What a resumed sweep does with one run: ``keep`` (completed, diverged), ``continue``
    (running, interrupted or failed, with a checkpoint), ``fresh`` (never started, or no
    checkpoint: its rows are dropped and it starts again)."""
    if status in ("completed", "diverged"):
        return "keep"
    if status is not None and has_checkpoint:
        return "continue"
    return "fresh"


def plan_resume(config: SweepConfig, run_attrs: dict[str, dict], checkpoints: dict[str, Path],
                on_gpu: bool, only: Collection[str] | None = None) -> ResumePlan:
    """Decide, run by run, what a resumed sweep does, from each run's attributes in the file
    (``run_attrs``) and the checkpoint holding it (``checkpoints``); reads each checkpoint's
    runs and row counts. A checkpoint of several runs (a grid) continues them together, in
    the mode they were saved from (the runs' ``grid`` attribute). ``only``: plan these runs
    alone (a Ray unit whose worker was lost); None: every run."""
    if not isinstance(on_gpu, bool):
        raise TypeError(f"plan_resume: on_gpu must be True or False, got {on_gpu!r}")
    specs = {run.name: run for run in sweep_runs(config)}
    names = set(specs) if only is None else set(only)
    plan = ResumePlan()
    paths: dict[Path, None] = {}
    for name in sorted(names):
        status = run_attrs.get(name, {}).get("status")
        action = resume_action(status, name in checkpoints)
        if action == "keep":
            plan.kept.add(name)
        elif action == "continue":
            paths[checkpoints[name]] = None
        else:
            plan.fresh.add(name)
            if name in run_attrs:
                plan.truncate[name] = {}  # starts again: none of its rows stay
    for path in paths:
        runs, rows = checkpoint_header(path)
        stray = set(runs) - names
        if stray:
            raise LandscapeError(f"checkpoint {path} holds runs the sweep does not list: "
                                 f"{', '.join(sorted(stray))}")
        mode = run_attrs.get(runs[0], {}).get("grid", "sequential")
        mode = mode if mode == "streams" or len(runs) > 1 else "sequential"
        if mode == "streams" and not on_gpu:
            raise LandscapeError(f"checkpoint {path} holds CUDA-graph runs (--grid streams): "
                                 "resume them on a GPU")
        plan.continued.append(Group(tuple(specs[n] for n in runs), mode, path))
        plan.truncate.update({n: rows.get(n, {}) for n in runs if n not in plan.kept})
    # Checkpoints of runs all complete (a kill came between their last flush and the removal).
    plan.finished = set(checkpoints.values()) - set(paths)
    return plan
