"""Which runs pool into one band, what their labels say, and which inputs are duplicates.

A run's *setting key* is every attribute that says how it was trained (model, norm, lr,
batch size, optimizer, momentum, width, dataset, ...), i.e. every run attribute except the
known provenance ones (seed, status, timing, how the grid was batched). An attribute a
future axis adds therefore splits pools on its own: only runs that agree on every setting
but the seed pool into one band. No plotting here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from ..store import RunData, SweepFile
from .summary import model_label

# Attributes that say how a run went or was scheduled, not how it was trained.
PROVENANCE_ATTRS = frozenset({"seed", "status", "seconds", "grid", "grid_size",
                              "steps_completed", "peak_memory_mib", "diverged_step",
                              "steps_per_epoch",  # follows from dataset and batch size
                              "dataset_path"})  # where the file was; its sha256 says what it held
# Settings a label does not spell out: the model's display name says them (norm follows model).
IN_DISPLAY_NAME = ("model", "norm")

SettingKey = tuple[tuple[str, Any], ...]


# Settings that files written before them lack, and the value those runs had in effect.
SETTING_DEFAULTS = {"dropout": 0.0, "activation": "relu", "nesterov": False,
                    "loss": "cross_entropy", "label_smoothing": 0.0,
                    "lr_schedule": "constant", "lr_schedule_args": "{}"}
# A setting that refines another (its parameters): labels leave it out where the other
# differs and alone tells its values apart (a cosine and a step schedule, each with its own).
REFINES = {"lr_schedule_args": "lr_schedule"}


def hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, dict)) \
        else value


def settings(run: RunData) -> dict[str, Any]:
    """The run's attributes as settings compare: a setting an older file lacks takes the
    value it had then (``SETTING_DEFAULTS``: no dropout, ReLU, heavy-ball, cross-entropy
    without label smoothing, a constant learning rate), and the optimizer's name is lower-case
    (older files say "SGD", newer "sgd": the same optimizer)."""
    out = {**SETTING_DEFAULTS, **run.attrs}
    if isinstance(out.get("optimizer"), str):
        out["optimizer"] = out["optimizer"].lower()
    return out


def loss_name(run: RunData) -> str:
    """'cross_entropy', 'mse with label smoothing 0.1': the loss the run trained, probed and
    evaluated on (files from before the axis: cross-entropy)."""
    smoothing = settings(run)["label_smoothing"]
    return str(settings(run)["loss"]) + (f" with label smoothing {smoothing:g}" if smoothing
                                         else "")


def losses_text(runs: Sequence[RunData]) -> str:
    """The header's sentence naming the runs' losses: '' when every run is on plain
    cross-entropy (the paper's loss, what the page's "loss" means unless it says otherwise)."""
    names = list(dict.fromkeys(loss_name(r) for r in runs))
    if names in ([], ["cross_entropy"]):
        return ""
    return (f"Every loss on this page is the run's own: {'; '.join(names)} (README: "
            f"--loss){', as the labels say' if len(names) > 1 else ''}. ")


def optimizer(run: RunData) -> str:
    """The run's optimizer, lower-case; "sgd" when the file does not say (the only one then)."""
    return str(settings(run).get("optimizer", "sgd"))


def scheduled(run: RunData) -> bool:
    """Whether the run's learning rate follows a schedule (``lr_schedule`` other than constant;
    files from before schedules: constant)."""
    return settings(run).get("lr_schedule") != "constant"


def setting_key(run: RunData, ignore: Sequence[str] = ()) -> SettingKey:
    """The run's training settings as a sorted tuple of (attribute, value), less ``ignore``."""
    return tuple(sorted((k, hashable(v)) for k, v in settings(run).items()
                        if k not in PROVENANCE_ATTRS and k not in ignore))


def value_text(value: Any) -> str:
    """'0.9', '32', 'sgd'; 'unset' for an attribute a run lacks."""
    return "unset" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def setting_text(name: str, value: Any) -> str:
    """'momentum 0.9', 'batch size 32'; a run that lacks the attribute: 'momentum unset'."""
    return f"{name.replace('_', ' ')} {value_text(value)}"


def told_apart(name: str, runs: Sequence[RunData], differing: Sequence[str]) -> bool:
    """Whether the setting ``name`` refines (``REFINES``) differs between ``runs`` and
    determines ``name``'s value in each: a label naming that setting need not name this one."""
    parent = REFINES.get(name)
    if parent not in differing:
        return False
    values: dict[Any, set] = defaultdict(set)
    for run in runs:
        values[hashable(settings(run).get(parent))].add(hashable(settings(run).get(name)))
    return all(len(v) == 1 for v in values.values())


@dataclass(frozen=True)
class Pooling:
    """The report's pools: runs that agree on every setting but the learning rate and seed
    share a colour and a label; bands at one learning rate pool the runs of a pool."""

    differing: tuple[str, ...]  # settings (not model, norm, lr) whose values differ between runs

    @classmethod
    def of(cls, runs: Sequence[RunData]) -> "Pooling":
        names = sorted({k for r in runs for k in settings(r)} - PROVENANCE_ATTRS
                       - set(IN_DISPLAY_NAME) - {"lr"})
        differing = [n for n in names if len({hashable(settings(r).get(n)) for r in runs}) > 1]
        return cls(tuple(n for n in differing if not told_apart(n, runs, differing)))

    @staticmethod
    def key(run: RunData) -> SettingKey:
        """Which pool the run is in (its settings less the learning rate)."""
        return setting_key(run, ignore=("lr",))

    def label(self, run: RunData) -> str:
        """The pool's display name and exactly the settings that differ between pools."""
        return ", ".join([model_label(run.model)]
                         + [setting_text(n, settings(run).get(n)) for n in self.differing])

    def pools(self, runs: Sequence[RunData]) -> dict[SettingKey, list[RunData]]:
        """Runs by pool, in order of first appearance."""
        groups: dict[SettingKey, list[RunData]] = defaultdict(list)
        for run in runs:
            groups[self.key(run)].append(run)
        return dict(groups)


@dataclass(frozen=True)
class Distinct:
    """The runs of the input files with every duplicate dropped, and what was dropped."""

    sweeps: list[SweepFile]  # each file once
    runs: list[RunData]  # each run once, first occurrence kept
    notes: list[str]  # one line per dropped file or set of dropped runs


def _identity(sweep: SweepFile, run: RunData) -> str:
    """Same file creation time, command, run name and attributes: the same run (a copy)."""
    return json.dumps([sweep.created, sweep.command, run.name, run.attrs], sort_keys=True,
                      default=str)


def distinct_runs(sweeps: Sequence[SweepFile]) -> Distinct:
    """Each input file once (by resolved path) and each run once (by ``_identity``)."""
    files, notes, seen_paths = [], [], {}
    for sweep in sweeps:
        path = sweep.path.resolve()
        if path in seen_paths:
            notes.append(f"{sweep.path} was given more than once; read once.")
            continue
        seen_paths[path] = sweep
        files.append(sweep)
    runs, first = [], {}
    copies: dict[tuple[str, str], int] = defaultdict(int)  # (copy file, original file) -> runs
    for sweep in files:
        for run in sweep.runs:
            identity = _identity(sweep, run)
            if identity in first:
                copies[(str(sweep.path), str(first[identity].source))] += 1
                continue
            first[identity] = run
            runs.append(run)
    for (copy, original), count in copies.items():
        notes.append(f"{copy}: {count} run{'s' if count > 1 else ''} identical in provenance to "
                     f"runs of {original} (same file creation time, command, run name and "
                     f"settings: a copy); counted once.")
    return Distinct(files, runs, notes)
