"""Per-layer probe series for the report (ICS, Fig. 3; activations, Fig. 1c/2): numpy only.

Runs of different models name the same weight layer differently, so layers are matched
by ``layer_index`` (1-based among the conv and linear layers: VGG-A's #5 is #5 with or
without BatchNorm). Histograms are fractions on fixed bin edges; values outside the
edges were counted in the first or last bin, so quantiles there are clipped to the edges.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .bands import Band, masked


def layer_indices(indices: Sequence[np.ndarray]) -> list[int]:
    """The sorted union of the layer indices of several runs' series."""
    return sorted({int(i) for idx in indices for i in np.asarray(idx).reshape(-1)})


def layer_column(layer_index: np.ndarray, index: int) -> int | None:
    """Which column of a (n, L) series holds layer ``index``; None when it was not probed."""
    where = np.flatnonzero(np.asarray(layer_index).reshape(-1) == index)
    return int(where[0]) if len(where) else None


def subsample(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced indices of ``range(n)``, first and last kept."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    if max_points == 1:
        return np.array([n - 1])
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))


def steps_per_map(maps: int, bins: int, budget: int = 150_000, lowest: int = 8,
                  highest: int = 80) -> int:
    """How many probed steps each of ``maps`` heat maps of ``bins`` rows may keep.

    ``budget`` cells in all keeps the page small; never fewer than ``lowest`` steps (a
    map must still show a trend) nor more than ``highest`` (more is not visible anyway).
    """
    if maps < 1 or bins < 1:
        return highest
    return int(min(highest, max(lowest, budget // (maps * bins))))


def occupied_bins(hist: np.ndarray, pad: int = 1) -> slice:
    """The bins (last axis) where any row has mass, widened by ``pad`` bins each side.

    All bins when nothing has mass: an empty map still shows its axis.
    """
    hist = masked(hist)
    bins = hist.shape[-1]
    mass = np.nansum(hist.reshape(-1, bins), axis=0) > 0 if hist.size else np.zeros(bins, bool)
    used = np.flatnonzero(mass)
    if not len(used):
        return slice(0, bins)
    return slice(max(0, int(used[0]) - pad), min(bins, int(used[-1]) + 1 + pad))


def bin_centres(edges: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64).reshape(-1)
    return (edges[:-1] + edges[1:]) / 2


def hist_quantiles(edges: np.ndarray, hist: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles ``qs`` of histograms (..., b) on ``edges`` (b + 1,): shape (..., len(qs)).

    Mass is spread uniformly within each bin (linear interpolation of the CDF between
    edges). Rows are normalized first; a row with no finite mass gives NaN.
    """
    edges = np.asarray(edges, dtype=np.float64).reshape(-1)
    hist = masked(hist)
    if hist.shape[-1] != len(edges) - 1:
        raise ValueError(f"{hist.shape[-1]} bins but {len(edges)} edges")
    qs = np.asarray(qs, dtype=np.float64).reshape(-1)
    if np.any((qs < 0) | (qs > 1)):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    rows = np.nan_to_num(hist.reshape(-1, hist.shape[-1]), nan=0.0)
    out = np.full((len(rows), len(qs)), np.nan)
    for i, row in enumerate(rows):
        total = row.sum()
        if total <= 0:
            continue
        cdf = np.concatenate([[0.0], np.cumsum(row) / total])
        # On a flat stretch of the CDF (empty bins) take its middle, not one end.
        lower = np.interp(qs, cdf, edges)
        upper = -np.interp(-qs, -cdf[::-1], -edges[::-1])
        used = np.flatnonzero(row > 0)  # and never outside the bins that hold mass
        out[i] = np.clip((lower + upper) / 2, edges[used[0]], edges[used[-1] + 1])
    return out.reshape(hist.shape[:-1] + (len(qs),))


def mean_std_band(step: np.ndarray, mean: np.ndarray, std: np.ndarray) -> Band:
    """The band mean ± std at each probed step (non-finite values become gaps)."""
    mean, std = masked(mean).reshape(-1), masked(std).reshape(-1)
    if len(mean) != len(std) or len(mean) != len(np.asarray(step).reshape(-1)):
        raise ValueError(f"{len(step)} steps, {len(mean)} means and {len(std)} stds")
    ok = np.isfinite(mean) & np.isfinite(std)
    return Band(np.asarray(step).reshape(-1), mean - std, mean + std, ok.astype(int))
