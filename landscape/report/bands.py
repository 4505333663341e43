"""Bands and summaries for the report: numpy arrays in, numpy arrays out, no plotting.

A *band* is the [min, max] envelope drawn in Santurkar et al.'s figures, either over the
runs of a learning-rate grid at each training step or over the probe's step sizes eta at
each probed step. Non-finite values (a diverged run's inf/NaN loss) are masked: they
never enter a min or max, and an x where nothing finite is left becomes a gap (NaN).

A *seed band* (``quantile_band``) is the median over the seeds of one setting and a
quantile band around it, computed at each x over the runs still finite there: a diverged
seed stops counting from the step it blew up, and the band's ``count`` says how many runs
are left. Fewer than ``MIN_RUNS_FOR_QUANTILES`` runs give [min, max] (a 10% quantile of two
values is an interpolation between them, not a tail), one run gives the run itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np


# A quantile band needs this many runs at an x; with fewer it is [min, max].
MIN_RUNS_FOR_QUANTILES = 5
DEFAULT_QUANTILES = (0.10, 0.90)


@dataclass(frozen=True)
class Band:
    """[lower, upper] at each x; ``count`` is how many finite values made each point;
    ``median`` the median of those values (seed bands only, else None)."""

    x: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    median: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def smoothed(self, window: int) -> "Band":
        """Both edges smoothed by a centred moving average of ``window`` points."""
        return Band(self.x, moving_average(self.lower, window),
                    moving_average(self.upper, window), self.count,
                    None if self.median is None else moving_average(self.median, window))

    def coarsened(self, max_points: int) -> "Band":
        """At most ``max_points`` points: each a block of consecutive x, drawn at its first
        x, with the block's [min lower, max upper] (the envelope is kept: no extreme of the
        band is lost, only where within the block it happened) and its largest count.
        A band of a run's every step (thousands) draws no better than one per pixel."""
        n = len(self.x)
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if n <= max_points:
            return self
        size = -(-n // max_points)
        starts = np.arange(0, n, size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a block with nothing finite
            lower = np.fmin.reduceat(self.lower, starts)
            upper = np.fmax.reduceat(self.upper, starts)
        return Band(self.x[starts], lower, upper, np.maximum.reduceat(self.count, starts),
                    None if self.median is None else self.median[starts])


def line_points(x: np.ndarray, y: np.ndarray, buckets: int) -> np.ndarray:
    """Which points of a line (``x`` ascending) to draw at ``buckets`` pixel columns: in each
    column of equal x width, its first, last, lowest and highest point, and one non-finite
    point when it has any (the line's gap). This is M4 (Jugel et al., VLDB 2014): a line
    through these points lights the same pixels as one through every point, so every spike
    (of β_eff, of a loss) is drawn at its height. LTTB keeps one point per column, chosen by
    triangle area, and drops one of a column's two extremes when it has a spike up and down.
    Every point when there are at most 4 per column; returns sorted indices into ``x``."""
    x, y = np.asarray(x, dtype=np.float64).reshape(-1), masked(y).reshape(-1)
    n = len(x)
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if n <= 4 * buckets or not x[-1] > x[0]:
        return np.arange(n)
    column = np.minimum(((x - x[0]) / (x[-1] - x[0]) * buckets).astype(np.int64), buckets - 1)
    starts = np.flatnonzero(np.diff(column, prepend=-1))  # first point of each column
    ends = np.append(starts[1:], n) - 1
    order = np.lexsort((y, column))  # by column, then y ascending, NaN last
    finite = np.add.reduceat(np.isfinite(y), starts)
    has = finite > 0
    lowest, highest = order[starts[has]], order[(starts + finite - 1)[has]]
    gaps = order[(starts + finite)[finite < ends - starts + 1]]  # a NaN of the column
    return np.unique(np.concatenate([starts, ends, lowest, highest, gaps]))


def masked(values) -> np.ndarray:
    """A float copy of ``values`` with every inf or NaN replaced by NaN."""
    out = np.array(values, dtype=np.float64, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


def _nan_envelope(stack: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nanmin, nanmax and finite count along ``axis``; all-NaN slices give NaN, quietly."""
    count = np.isfinite(stack).sum(axis=axis)
    if stack.shape[axis] == 0:
        empty = np.full(count.shape, np.nan)
        return empty, empty.copy(), count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice encountered"
        return np.nanmin(stack, axis=axis), np.nanmax(stack, axis=axis), count


def align_runs(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Put runs of unequal length on their common x grid.

    Returns ``(x, table)``: ``x`` the sorted union of every run's x, ``table`` of shape
    (runs, len(x)) with each run's masked values at its own x and NaN where it has none
    (a shorter or diverged run simply stops contributing).
    """
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x arrays for {len(ys)} y arrays")
    xs = [np.asarray(x).reshape(-1) for x in xs]
    ys = [masked(y).reshape(-1) for y in ys]
    for x, y in zip(xs, ys):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} points but y has {len(y)}")
    x_all = np.unique(np.concatenate(xs)) if xs else np.zeros(0)
    table = np.full((len(xs), len(x_all)), np.nan)
    for row, (x, y) in zip(table, zip(xs, ys)):
        row[np.searchsorted(x_all, x)] = y
    return x_all, table


def band_across_runs(xs: Sequence[np.ndarray], lows: Sequence[np.ndarray],
                     highs: Sequence[np.ndarray] | None = None) -> Band:
    """At each x of any run, [min, max] over the runs that have a finite value there.

    With ``highs`` given, the band is [min of ``lows``, max of ``highs``]: combining runs
    whose own values are already bands (e.g. per-run bands over eta, several seeds).
    """
    x, low_table = align_runs(xs, lows)
    lower, upper, count = _nan_envelope(low_table, axis=0)
    if highs is not None:
        _, high_table = align_runs(xs, highs)
        _, upper, _ = _nan_envelope(high_table, axis=0)
    return Band(x, lower, upper, count)


def quantile_band(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                  quantiles: tuple[float, float] = DEFAULT_QUANTILES,
                  min_runs: int = MIN_RUNS_FOR_QUANTILES) -> Band:
    """At each x of any run, over the runs with a finite value there (``count`` of them):
    the median, and the ``quantiles`` (fractions, numpy's linear interpolation) when at
    least ``min_runs`` runs are left, [min, max] when fewer, the value itself for one run;
    NaN where no run is finite. A run that diverged (or ended) drops out where it did.
    """
    low_q, high_q = quantiles
    if not 0 <= low_q < high_q <= 1:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    x, table = align_runs(xs, ys)
    lowest, highest, count = _nan_envelope(table, axis=0)
    if table.size == 0:  # no runs, or none with a point yet
        return Band(x, lowest, highest, count, np.full(len(x), np.nan))
    low, median, high = nan_quantiles(table, (low_q, 0.5, high_q))
    few = count < min_runs
    return Band(x, np.where(few, lowest, low), np.where(few, highest, high), count, median)


def nan_quantiles(table: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """``np.nanquantile(table, quantiles, axis=0)``, equal to it bit for bit, without its
    per-column Python loop (``apply_along_axis``: 0.13 s for 100 runs x 15,000 steps, most of
    a 1,000-run report's time): the columns with the same number c of finite values are one
    ``np.quantile`` over the c smallest (NaN sorts last), the same order statistics and
    interpolation. A column with none is NaN. ``table`` holds no inf (``masked``)."""
    sorted_table = np.sort(table, axis=0)
    count = np.isfinite(sorted_table).sum(axis=0)
    out = np.full((len(quantiles), table.shape[1]), np.nan)
    for c in np.unique(count[count > 0]):
        columns = count == c
        out[:, columns] = np.quantile(sorted_table[:c, columns], quantiles, axis=0)
    return out


def band_over_eta(step: np.ndarray, grid: np.ndarray) -> Band:
    """Per probed step, [min, max] over the k step sizes of a probe grid (n, k)."""
    grid = masked(grid)
    step = np.asarray(step).reshape(-1)
    if grid.ndim != 2 or grid.shape[0] != len(step):
        raise ValueError(f"grid of shape {grid.shape} does not match {len(step)} steps")
    lower, upper, count = _nan_envelope(grid, axis=1)
    return Band(step, lower, upper, count)


def _over_eta(grid: np.ndarray, reduce) -> np.ndarray:
    """``reduce`` over the finite η points of each probed step (rows); NaN where none is."""
    grid = masked(grid)
    out = np.full(len(grid), np.nan)
    ok = np.isfinite(grid).any(axis=1) if grid.ndim == 2 and grid.shape[1] else np.zeros(0, bool)
    out[ok] = reduce(grid[ok])
    return out


def spread_over_eta(grid: np.ndarray) -> np.ndarray:
    """Per probed step, max − min over η of a probe grid (n, k): the loss band's width."""
    return _over_eta(grid, lambda g: np.nanmax(g, axis=1) - np.nanmin(g, axis=1))


def max_over_eta(grid: np.ndarray) -> np.ndarray:
    """Per probed step, max over η of a probe grid (n, k): the top of the band."""
    return _over_eta(grid, lambda g: np.nanmax(g, axis=1))


def band_over_eta_and_runs(steps: Sequence[np.ndarray], grids: Sequence[np.ndarray]) -> Band:
    """[min, max] over eta and over runs (e.g. seeds of one model and learning rate)."""
    per_run = [band_over_eta(s, g) for s, g in zip(steps, grids)]
    band = band_across_runs([b.x for b in per_run], [b.lower for b in per_run],
                            [b.upper for b in per_run])
    _, count_table = align_runs([b.x for b in per_run], [b.count for b in per_run])
    return Band(band.x, band.lower, band.upper, np.nansum(count_table, axis=0).astype(int))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points that skips NaN (gaps stay gaps).

    ``window`` 1 returns the values unchanged; a point whose window holds nothing finite,
    or that was NaN itself, is NaN, so smoothing never bridges a diverged stretch.
    """
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    values = masked(values)
    if window == 1 or len(values) == 0:
        return values
    finite = np.isfinite(values)
    kernel = np.ones(window)
    # Point i averages i - (window - 1) // 2 .. i + window // 2 of the full convolution;
    # mode="same" would return max(len, window) points when the window is the longer.
    centre = slice(window // 2, window // 2 + len(values))
    total = np.convolve(np.where(finite, values, 0.0), kernel, mode="full")[centre]
    count = np.convolve(finite.astype(float), kernel, mode="full")[centre]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[~finite] = np.nan
    return out


def nonfinite_x(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The x values at which ``y`` is inf or NaN (where a diverged run blew up)."""
    x = np.asarray(x).reshape(-1)
    return x[~np.isfinite(np.asarray(y, dtype=np.float64).reshape(-1))]


def value_before(x: np.ndarray, y: np.ndarray, x0: float) -> float:
    """The last finite ``y`` at an x <= ``x0``: where to mark a point that is not finite."""
    x = np.asarray(x).reshape(-1)
    y = masked(y).reshape(-1)
    finite = np.flatnonzero(np.isfinite(y) & (x <= x0))
    return float(y[finite[-1]]) if len(finite) else float("nan")


def finite_median(values) -> float:
    """Median of the finite values; NaN when there are none (e.g. median beta of a run)."""
    values = masked(values).reshape(-1)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


def last_finite(values) -> float:
    """The last finite value (e.g. the final epoch's accuracy); NaN when there is none."""
    values = masked(values).reshape(-1)
    finite = np.flatnonzero(np.isfinite(values))
    return float(values[finite[-1]]) if len(finite) else float("nan")


def contiguous_segments(mask: np.ndarray) -> list[slice]:
    """Slices of the runs of True in ``mask``: where a band can be drawn without a gap."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [slice(int(a), int(b)) for a, b in zip(starts, stops)]
