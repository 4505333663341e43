"""Per-layer series for the ICS and activation figures, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from landscape.report.layerstats import (bin_centres, hist_quantiles, layer_column, layer_indices,
                                         mean_std_band, occupied_bins, steps_per_map, subsample)

nan, inf = np.nan, np.inf
EDGES = np.array([0.0, 1.0, 2.0, 3.0, 4.0])

pytestmark = pytest.mark.usefixtures("no_runtime_warnings")  # conftest


def test_layers_are_matched_by_index_across_runs():
    assert layer_indices([np.array([5, 10]), np.array([10, 2]), np.array([], int)]) == [2, 5, 10]
    assert layer_column(np.array([5, 10]), 10) == 1
    assert layer_column(np.array([5, 10]), 2) is None


def test_subsample_keeps_first_and_last_evenly():
    assert subsample(3, 5).tolist() == [0, 1, 2]
    assert subsample(10, 4).tolist() == [0, 3, 6, 9]
    assert subsample(0, 4).tolist() == []
    picked = subsample(1000, 7)
    assert len(picked) == 7 and picked[0] == 0 and picked[-1] == 999
    assert np.all(np.diff(picked) > 0)
    assert subsample(5, 1).tolist() == [4]
    with pytest.raises(ValueError):
        subsample(5, 0)


def test_steps_per_map_stays_within_budget_and_bounds():
    assert steps_per_map(2, 80) == 80  # few maps: the upper bound
    assert steps_per_map(44, 80, budget=150_000) == 150_000 // (44 * 80)
    assert steps_per_map(1000, 80) == 8  # many maps: never below the lower bound
    assert steps_per_map(0, 80) == 80


def test_quantiles_interpolate_within_bins():
    hist = np.array([[0.25, 0.25, 0.25, 0.25],  # uniform on [0, 4]
                     [0.0, 0.5, 0.5, 0.0],  # uniform on [1, 3]
                     [1.0, 0.0, 0.0, 1.0],  # two unnormalized lumps: median mid-gap
                     [0.0, 0.0, 0.0, 0.0]])  # nothing: NaN
    q = hist_quantiles(EDGES, hist, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert q.shape == (4, 5)
    assert np.allclose(q[0], [0, 1, 2, 3, 4])
    assert np.allclose(q[1], [1, 1.5, 2, 2.5, 3])  # never outside the bins with mass
    assert np.allclose(q[2], [0, 0.5, 2, 3.5, 4])
    assert np.isnan(q[3]).all()


def test_quantiles_keep_leading_axes_and_check_shapes():
    hist = np.zeros((3, 2, 4))
    hist[..., 1] = 1.0  # everything in [1, 2]
    q = hist_quantiles(EDGES, hist, [0.5])
    assert q.shape == (3, 2, 1) and np.allclose(q, 1.5)
    with pytest.raises(ValueError, match="bins"):
        hist_quantiles(EDGES, np.ones((2, 3)), [0.5])
    with pytest.raises(ValueError, match="quantiles"):
        hist_quantiles(EDGES, hist, [1.5])


def test_occupied_bins_trims_empty_tails_with_padding():
    hist = np.array([[0, 0, 0.5, 0.5, 0, 0, 0], [0, 0, 0, 1.0, 0, 0, 0]])
    assert occupied_bins(hist) == slice(1, 5)
    assert occupied_bins(hist, pad=0) == slice(2, 4)
    assert occupied_bins(np.zeros((2, 7))) == slice(0, 7)  # nothing: every bin
    assert occupied_bins(np.zeros((0, 7))) == slice(0, 7)
    assert bin_centres(EDGES).tolist() == [0.5, 1.5, 2.5, 3.5]


def test_mean_std_band_masks_non_finite_values():
    band = mean_std_band(np.array([0, 3, 6]), np.array([1.0, inf, 2.0]), np.array([0.5, 1.0, nan]))
    assert band.x.tolist() == [0, 3, 6]
    assert band.lower[0] == 0.5 and band.upper[0] == 1.5
    assert np.isnan(band.lower[1:]).all() and np.isnan(band.upper[1:]).all()
    assert band.count.tolist() == [1, 0, 0]
    with pytest.raises(ValueError):
        mean_std_band(np.array([0, 1]), np.array([1.0]), np.array([1.0]))
