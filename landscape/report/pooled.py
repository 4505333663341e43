"""A large sweep read as settings: the figures that draw a line (or a map) per run draw one per
setting instead — every axis but the seed — once a figure would hold more than ``RUN_LINES``
runs (plain numpy: the figures' builders in ``build.py`` name and colour them).

Why a threshold: a 1,000-run sweep's training curves are 4,000 lines, its per-layer maps 1,000
heat maps (44 MB of page at 1,000 runs, measured), and no eye reads 1,000 overlapping lines; the
seed band of one setting (median and quantiles over its seeds, as the grid's section draws) is
what such a sweep is read for. ``landscape plot --runs/--where`` chooses a few runs to see each.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from ..store import RunData
from .bands import Band, masked, quantile_band
from .grid import setting_key

# A figure of more runs than this draws one line per setting. The 60-run reports of the
# README and the experiments stay as they were: a line per run.
RUN_LINES = 64


@dataclass(frozen=True)
class RunSeries:
    """One run's series in a figure: x and y (e.g. an ICS layer's ‖G − G′‖ over steps)."""

    run: RunData
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class SettingSeries:
    """A setting's seeds pooled: their runs, and the band (``median``: the line drawn)."""

    runs: tuple[RunData, ...]
    band: Band


def seed_groups(runs: Sequence[RunData], key=setting_key) -> dict[Hashable, list[RunData]]:
    """The runs grouped by ``key`` (every setting but the seed), in order of appearance."""
    groups: dict[Hashable, list[RunData]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    return dict(groups)


def pool_series(series: Sequence[RunSeries], quantiles: tuple[float, float]
                ) -> list[SettingSeries]:
    """Per setting, the seed band of its runs' series (``quantile_band``: the median at each
    x over the runs finite there, and the quantiles)."""
    by_run = {id(s.run): s for s in series}
    out = []
    for group in seed_groups([s.run for s in series]).values():
        chosen = [by_run[id(r)] for r in group]
        out.append(SettingSeries(tuple(group), quantile_band([s.x for s in chosen],
                                                             [s.y for s in chosen], quantiles)))
    return out


def setting_map(steps: Sequence[np.ndarray], maps: Sequence[np.ndarray], reduce=np.nanmedian
                ) -> tuple[np.ndarray, np.ndarray]:
    """Maps (steps, ...) of one setting's runs reduced over the runs (``reduce``, NaN
    skipped) at the steps every run has: (steps, map)."""
    common = steps[0]
    for s in steps[1:]:
        common = np.intersect1d(common, s)
    stack = np.stack([masked(m)[np.searchsorted(s, common)] for s, m in zip(steps, maps)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cell NaN in every run
        return common, reduce(stack, axis=0)
