"""The report at many runs: cells, axes, facets and ranking (numpy only, no plotting).

A *cell* is one setting of a grid with all its seeds: the runs whose setting keys
(``pools.setting_key``: every attribute but the provenance ones, seed included there) agree,
from however many files. An *axis* is a setting attribute (``model``, ``lr``, ``dropout``,
``batch_size``, ...); the report's faceted figure colours lines by one axis and splits panels
by another, and ``best`` keeps the cells with the lowest final test loss.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import LandscapeError
from ..store import RunData
from .bands import DEFAULT_QUANTILES, MIN_RUNS_FOR_QUANTILES, last_finite
from .pools import (PROVENANCE_ATTRS, SettingKey, hashable, setting_key, settings, setting_text,
                    told_apart)
from .summary import model_label

# Follows the model (vgg_a_bn has norm "batch"): never a separate axis.
NOT_AXES = frozenset({"norm"})
SEED = "seed"
FIRST_AXES = ("model", "lr")  # how labels and tables order the axes: these, then by name


@dataclass(frozen=True)
class Cell:
    """One setting of the grid and its runs (its seeds), in order of appearance."""

    key: SettingKey
    runs: tuple[RunData, ...]

    @property
    def settings(self) -> dict[str, Any]:
        return settings(self.runs[0])

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})


def grid_cells(runs: Sequence[RunData]) -> list[Cell]:
    """The runs grouped by every setting but the seed, in order of first appearance."""
    groups: dict[SettingKey, list[RunData]] = defaultdict(list)
    for run in runs:
        groups[setting_key(run)].append(run)
    return [Cell(key, tuple(group)) for key, group in groups.items()]


def _sorted_values(values: set) -> list:
    try:
        return sorted(values)
    except TypeError:  # mixed types (a missing attribute next to numbers)
        return sorted(values, key=str)


def grid_axes(runs: Sequence[RunData]) -> dict[str, list]:
    """Every setting attribute of the runs (and ``seed``) with its distinct values, sorted."""
    values: dict[str, set] = defaultdict(set)
    names = {k for r in runs for k in settings(r)} - PROVENANCE_ATTRS - NOT_AXES
    for run in runs:
        s = settings(run)
        for name in names:
            values[name].add(hashable(s.get(name)))
        values[SEED].add(run.seed)
    return {name: _sorted_values(v) for name, v in sorted(values.items())}


def varying_axes(runs: Sequence[RunData]) -> list[str]:
    """The axes with more than one value among the runs, seed excluded (it is pooled):
    model and learning rate first, then by name."""
    axes = [a for a, v in grid_axes(runs).items() if len(v) > 1 and a != SEED]
    axes = [a for a in axes if not told_apart(a, runs, axes)]  # a schedule's arguments
    return sorted(axes, key=lambda a: (a not in FIRST_AXES, FIRST_AXES.index(a)
                                       if a in FIRST_AXES else 0, a))


def axis_value_text(axis: str, value: Any) -> str:
    """'VGG-A+BN', 'LR 0.001', 'dropout 0.4', 'batch size 256'."""
    if axis == "model":
        return model_label(str(value))
    if axis == "lr":
        return f"LR {value:g}" if isinstance(value, (int, float)) else f"LR {value}"
    return setting_text(axis, value)


def cell_label(cell: Cell, shown: Sequence[str]) -> str:
    """The cell's axes in ``shown`` (model first), and its seed count when more than one."""
    s = cell.settings
    parts = [axis_value_text(a, s.get(a)) for a in shown]
    runs, seeds = len(cell.runs), len(cell.seeds)
    count = "" if runs == 1 else f" ({runs} seeds)" if seeds == runs else f" ({runs} runs)"
    return ", ".join(parts) + count


def final_test_loss(run: RunData) -> float:
    """The run's last finite test loss; inf for a diverged run or one with none (it ranks
    last: it did not finish, or was never evaluated)."""
    if run.diverged_step is not None or run.status == "diverged":
        return math.inf
    value = last_finite(run.epochs.test_loss)
    return value if math.isfinite(value) else math.inf


def cell_score(cell: Cell) -> float:
    """Median over the cell's runs of ``final_test_loss`` (one diverged seed of five does
    not sink a setting; half of them do)."""
    return float(np.median([final_test_loss(r) for r in cell.runs]))


def ranked_cells(cells: Sequence[Cell]) -> list[Cell]:
    """Cells by ``cell_score``, lowest first; ties keep their order of appearance."""
    return sorted(cells, key=cell_score)


def best_cells(cells: Sequence[Cell], best: int | None) -> list[Cell]:
    """The ``best`` cells by final test loss (all of them, ranked, for None)."""
    ranked = ranked_cells(cells)
    return ranked if best is None else ranked[:best]


@dataclass(frozen=True)
class Facets:
    """How the report shows a larger grid: the colour axis, the panel axis (None: one
    panel), the best k cells (None: all), and the seed band's quantiles (fractions)."""

    color: str | None = None  # None: the model
    panel: str | None = None
    best: int | None = None
    quantiles: tuple[float, float] = DEFAULT_QUANTILES

    def color_axis(self) -> str:
        return self.color or "model"

    def check(self, runs: Sequence[RunData]) -> None:
        """One-line ``LandscapeError`` for an axis the runs do not have, seed as an axis,
        the same axis twice, or a ``best`` below 1."""
        axes = grid_axes(runs)
        choices = ", ".join(a for a in axes if a != SEED)
        for option, axis in (("--color", self.color), ("--panel", self.panel)):
            if axis is None:
                continue
            if axis == SEED:
                raise LandscapeError(f"{option} seed: seeds are pooled into each setting's band "
                                     f"(median and quantiles); choose one of: {choices}")
            if axis not in axes:
                raise LandscapeError(f"{option} {axis}: not an axis of these runs; "
                                     f"choose one of: {choices}")
        if self.panel is not None and self.panel == self.color_axis():
            raise LandscapeError(f"--panel {self.panel} is also the colour axis; choose two "
                                 f"different axes of: {choices}")
        if self.best is not None and self.best < 1:
            raise LandscapeError(f"--best must be a whole number >= 1, got {self.best}")

    def band_text(self) -> str:
        """'10–90% quantiles (min–max below 5 runs)'."""
        low, high = (100 * q for q in self.quantiles)
        if low == 0 and high == 100:
            return "min–max"
        return (f"{low:g}–{high:g}% quantiles (min–max where fewer than "
                f"{MIN_RUNS_FOR_QUANTILES} runs are finite)")


def parse_band(text: str) -> tuple[float, float]:
    """'10,90' (percent) -> (0.1, 0.9); one-line ``LandscapeError`` otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(re.fullmatch(r"[0-9]*\.?[0-9]+", p) for p in parts):
        raise LandscapeError(f"--band {text}: give two percentages LOW,HIGH, e.g. 10,90 "
                             "(0,100: min–max)")
    low, high = (float(p) for p in parts)
    if not 0 <= low < high <= 100:
        raise LandscapeError(f"--band {text}: need 0 <= LOW < HIGH <= 100")
    return low / 100, high / 100
