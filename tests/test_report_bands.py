"""Band and summary computations on hand-made arrays, and the figure builders on top."""

from __future__ import annotations

import numpy as np
import pytest

from landscape.report.bands import (Band, align_runs, band_across_runs, band_over_eta,
                                    band_over_eta_and_runs, contiguous_segments, finite_median,
                                    last_finite, masked, moving_average, nonfinite_x, value_before)

nan, inf = np.nan, np.inf

pytestmark = pytest.mark.usefixtures("no_runtime_warnings")  # conftest


def test_masked_replaces_inf_and_nan_and_copies():
    values = np.array([1.0, inf, -inf, nan, 2.0])
    out = masked(values)
    assert np.array_equal(np.isnan(out), [False, True, True, True, False])
    assert values[1] == inf  # the input is untouched


def test_band_across_runs_of_unequal_length():
    band = band_across_runs([np.arange(5), np.arange(3), np.array([0, 2, 4, 6])],
                            [np.array([5., 4, 3, 2, 1]), np.array([1., 9, 1]),
                             np.array([3., 3, 3, 3])])
    assert band.x.tolist() == [0, 1, 2, 3, 4, 6]
    assert band.lower.tolist() == [1, 4, 1, 2, 1, 3]
    assert band.upper.tolist() == [5, 9, 3, 2, 3, 3]
    assert band.count.tolist() == [3, 2, 3, 1, 2, 1]  # a shorter run stops contributing


def test_band_across_runs_masks_a_diverged_run():
    steps = np.arange(4)
    diverged = np.array([2.0, 50.0, inf, nan])
    healthy = np.array([1.0, 1.0, 1.0, 1.0])
    band = band_across_runs([steps, steps], [diverged, healthy])
    assert band.upper.tolist() == [2.0, 50.0, 1.0, 1.0]  # inf never becomes the max
    assert band.lower.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert band.count.tolist() == [2, 2, 1, 1]


def test_band_where_nothing_is_finite_is_a_gap():
    band = band_across_runs([np.arange(3)], [np.array([1.0, nan, 3.0])])
    assert np.isnan(band.lower[1]) and np.isnan(band.upper[1]) and band.count[1] == 0
    assert band.lower[[0, 2]].tolist() == [1.0, 3.0]


def test_band_of_a_single_run_is_the_run_itself():
    y = np.array([3.0, 2.0, 2.5])
    band = band_across_runs([np.array([0, 10, 20])], [y])
    assert np.array_equal(band.lower, y) and np.array_equal(band.upper, y)


def test_band_of_no_runs_is_empty():
    band = band_across_runs([], [])
    assert len(band) == 0 and band.lower.shape == (0,)


def test_band_with_separate_lows_and_highs():
    band = band_across_runs([np.arange(2), np.arange(2)], [np.array([1.0, 2.0]), np.array([0.5, 3.0])],
                            [np.array([4.0, 5.0]), np.array([6.0, 2.0])])
    assert band.lower.tolist() == [0.5, 2.0] and band.upper.tolist() == [6.0, 5.0]


def test_align_runs_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 points"):
        align_runs([np.arange(3)], [np.arange(2.0)])
    with pytest.raises(ValueError, match="2 x arrays"):
        align_runs([np.arange(3), np.arange(3)], [np.arange(3.0)])


def test_band_over_eta_masks_a_blown_up_step_size():
    grid = np.array([[1.0, 2.0, 4.0], [1.0, 3.0, inf], [nan, nan, nan]])
    band = band_over_eta(np.array([0, 100, 200]), grid)
    assert band.lower[:2].tolist() == [1.0, 1.0] and band.upper[:2].tolist() == [4.0, 3.0]
    assert band.count.tolist() == [3, 2, 0]
    assert np.isnan(band.upper[2])


def test_band_over_eta_rejects_a_grid_of_the_wrong_shape():
    with pytest.raises(ValueError, match="does not match"):
        band_over_eta(np.arange(3), np.ones((2, 4)))


def test_band_over_eta_and_seeds_of_unequal_length():
    band = band_over_eta_and_runs([np.array([0, 10]), np.array([0, 10, 20])],
                                  [np.array([[1.0, 2.0], [1.0, 5.0]]),
                                   np.array([[0.5, 1.5], [2.0, inf], [3.0, 4.0]])])
    assert band.x.tolist() == [0, 10, 20]
    assert band.lower.tolist() == [0.5, 1.0, 3.0]
    assert band.upper.tolist() == [2.0, 5.0, 4.0]
    assert band.count.tolist() == [4, 3, 2]


def test_moving_average_window_one_is_identity_and_constants_stay():
    y = np.array([1.0, 5.0, 2.0])
    assert np.array_equal(moving_average(y, 1), y)
    assert np.allclose(moving_average(np.full(7, 3.0), 3), 3.0)


def test_moving_average_centred_and_skips_nan_without_bridging():
    out = moving_average(np.array([1.0, 2.0, 3.0, nan, 5.0, 7.0]), 3)
    assert out[1] == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert out[2] == pytest.approx(2.5)  # (2 + 3) / 2: the NaN neighbour is skipped
    assert np.isnan(out[3])  # a gap stays a gap
    assert out[5] == pytest.approx(6.0)  # (5 + 7) / 2 at the edge
    with pytest.raises(ValueError):
        moving_average(np.ones(3), 0)


def test_moving_average_window_longer_than_the_series():
    out = moving_average(np.array([1.0, 2.0, 6.0]), 10)
    assert out.shape == (3,) and np.allclose(out, 3.0)


def test_smoothed_band_keeps_x_and_count():
    band = Band(np.arange(4), np.array([1.0, 3, 1, 3]), np.array([2.0, 4, 2, 4]), np.ones(4))
    smooth = band.smoothed(3)
    assert np.array_equal(smooth.x, band.x) and smooth.lower[1] == pytest.approx(5 / 3)


def test_summaries_of_runs_with_nan():
    assert finite_median([20.0, inf, 18.0, nan, 22.0]) == 20.0
    assert np.isnan(finite_median([nan, inf]))
    assert last_finite([0.1, 0.2, nan]) == 0.2
    assert np.isnan(last_finite([]))
    assert nonfinite_x(np.arange(4), np.array([1.0, inf, 2.0, nan])).tolist() == [1, 3]
    assert value_before(np.arange(4), np.array([1.0, 2.0, inf, nan]), 3) == 2.0
    assert np.isnan(value_before(np.arange(2), np.array([inf, 1.0]), 0))


def test_contiguous_segments():
    segments = contiguous_segments(np.array([True, True, False, True, False, False, True]))
    assert [(s.start, s.stop) for s in segments] == [(0, 2), (3, 4), (6, 7)]
    assert contiguous_segments(np.zeros(3, bool)) == []


# Figure builders: bands in, plotly figures out.

def _series(band, label="VGG-A", markers=()):
    from landscape.report.figures import BandSeries
    return BandSeries(label, "#1f77b4", band, markers)


def test_band_traces_split_the_fill_at_gaps_and_keep_edges():
    from landscape.report.figures import band_traces
    band = band_across_runs([np.arange(5)], [np.array([1.0, 2.0, nan, 4.0, 5.0])])
    fill, upper, lower = band_traces(_series(band))
    assert fill.fill == "toself"
    # two polygons, no fill over the gap (NaN: plotly starts a new shape there)
    np.testing.assert_array_equal(fill.x, [0, 1, 1, 0, nan, 3, 4, 4, 3])
    assert np.isnan(upper.y[2]) and not upper.connectgaps


def test_smoothing_adds_lines_and_keeps_the_raw_band():
    from landscape.report.figures import band_traces
    band = band_across_runs([np.arange(6)], [np.arange(6.0)])
    raw = band_traces(_series(band))
    smoothed = band_traces(_series(band), smooth=3)
    assert len(smoothed) == len(raw) + 2
    assert smoothed[0].fill == "toself" and smoothed[0].visible is not False
    assert "smoothed over 3" in smoothed[-1].name


def test_band_figure_by_lr_buttons_select_one_learning_rate():
    from landscape.report.figures import Marker, Reference, band_figure_by_lr
    band = band_across_runs([np.arange(3)], [np.ones(3)])
    fig = band_figure_by_lr({0.1: [_series(band)], 0.5: [_series(band, markers=[Marker(2, 1, "x")])]},
                            "t", "step", "loss", log_y=True, initial_lr=0.1,
                            references={0.1: [Reference(20.0, "2/LR = 20")]})
    selector, toggle = fig.layout.updatemenus
    assert [b.label for b in selector.buttons] == ["LR 0.1", "LR 0.5"]
    visible_01 = selector.buttons[0].args[0]["visible"]
    assert visible_01 == [t.visible for t in fig.data]  # opens on LR 0.1
    assert sum(visible_01) == 4  # fill, two edges, the 2/LR line
    assert sum(selector.buttons[1].args[0]["visible"]) == 4  # fill, two edges, the marker
    reference = [t for t in fig.data if t.name == "2/LR = 20"][0]
    assert list(reference.y) == [20.0, 20.0] and reference.line.dash == "dash"
    assert fig.layout.yaxis.type == "log" and toggle.buttons[0].label == "log y"
