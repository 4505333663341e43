"""What the report pools, how it names and colours it, and how it draws thin or odd data
(issue 13 points 3, 11, 12, 13): on small hand-made sweep files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from landscape.cli import main
from landscape.models import MODELS
from landscape.read import read_sweep
from landscape.report import figures as fg
from landscape.report.bands import Band
from landscape.report.build import (Legend, beta_series, build_report, epoch_text, grid_series,
                                    probe_series, stability_references, training_curves)
from landscape.report.pools import distinct_runs
from landscape.report.summary import MODEL_LABELS
from landscape.store import SweepStore

from conftest import add_synthetic_run, copy_sweep


def _sweep(path, runs, command="synthetic"):
    """A file of synthetic runs: ``runs`` is a list of add_synthetic_run argument dicts."""
    store = SweepStore(path, config={}, command=command)
    for kwargs in runs:
        add_synthetic_run(store, **kwargs)
    return path


def _page(*paths) -> str:
    """The report of ``paths`` without plotly.js (whose code would match any short text)."""
    return build_report([read_sweep(p) for p in paths]).replace(get_plotlyjs(), "")


def _runs(*paths):
    return distinct_runs([read_sweep(p) for p in paths]).runs


@pytest.fixture
def sgd_and_momentum(tmp_path):
    """Same model, same run names, one file plain SGD and one heavy-ball momentum 0.9."""
    plain = _sweep(tmp_path / "a.h5", [dict(model="vgg_a", lr=lr, steps=20, momentum=0.0)
                                       for lr in (0.05, 0.1)], command="run a")
    heavy = _sweep(tmp_path / "b.h5", [dict(model="vgg_a", lr=lr, steps=20, momentum=0.9)
                                       for lr in (0.05, 0.1)], command="run b")
    return plain, heavy


# --- 3. Pooling ---------------------------------------------------------------------------

def test_runs_pool_only_when_every_setting_but_the_seed_agrees(sgd_and_momentum, tmp_path):
    plain, heavy = sgd_and_momentum
    seed1 = _sweep(tmp_path / "seed1.h5", [dict(model="vgg_a", lr=0.05, steps=20, momentum=0.0,
                                                seed=1)], command="run seed 1")
    runs = _runs(plain, heavy, seed1)
    legend = Legend.of(runs)
    labels = [s.label for s in grid_series(runs, legend, "loss")]
    assert labels == ["VGG-A, momentum 0: 3 runs, LR 0.05, 0.1",
                      "VGG-A, momentum 0.9: 2 runs, LR 0.05, 0.1"]
    at_005 = [s.label for s in probe_series(runs, legend, "loss")[0.05]]
    assert at_005 == ["VGG-A, momentum 0: [min, max] over η, 2 seeds",
                      "VGG-A, momentum 0.9: [min, max] over η"]
    curves = [c.label for c in training_curves(runs, legend)]
    assert len(set(curves)) == len(curves)  # no two curves share a label
    assert "VGG-A, momentum 0.9 LR 0.05 seed 0" in curves
    assert len({legend.color(r) for r in runs}) == 2  # one colour per pool
    assert legend.color(runs[0]) == fg.MODEL_COLORS["vgg_a"]  # the paper's blue, first pool


def test_an_attribute_a_new_axis_adds_splits_pools_by_itself(tmp_path):
    path = _sweep(tmp_path / "new-axis.h5", [dict(model="vgg_a_bn", lr=0.1, steps=20, seed=s,
                                                  label_smoothing=smoothing)
                                             for s, smoothing in ((0, 0.0), (1, 0.1))])
    runs = _runs(path)
    assert [s.label for s in grid_series(runs, Legend.of(runs), "loss")] == [
        "VGG-A+BN, label smoothing 0: 1 run, LR 0.1", "VGG-A+BN, label smoothing 0.1: 1 run, LR 0.1"]


def test_a_file_given_twice_or_copied_counts_once_with_a_note(sgd_and_momentum, tmp_path):
    plain, _ = sgd_and_momentum
    copy = copy_sweep(plain, tmp_path / "copy.h5")
    sweeps = [read_sweep(p) for p in (plain, plain, copy)]
    distinct = distinct_runs(sweeps)
    assert len(distinct.runs) == 2 and [s.path for s in distinct.sweeps] == [plain, copy]
    page = build_report(sweeps)
    assert "2 runs from 2 file(s)" in page
    assert f"{plain} was given more than once; read once." in page
    assert f"{copy}: 2 runs identical in provenance to runs of {plain}" in page
    grid = grid_series(distinct.runs, Legend.of(distinct.runs), "loss")
    assert [s.label for s in grid] == ["VGG-A: 2 runs, LR 0.05, 0.1"]  # nothing differs


def test_same_settings_and_seed_from_two_sweeps_pool_and_stay_apart_in_curves(tmp_path):
    """Not copies (another command), the same settings: they pool; curves name the file."""
    a = _sweep(tmp_path / "a.h5", [dict(model="vgg_a", lr=0.1, steps=20)], command="first")
    b = _sweep(tmp_path / "b.h5", [dict(model="vgg_a", lr=0.1, steps=20)], command="second")
    runs = _runs(a, b)
    legend = Legend.of(runs)
    assert [s.label for s in grid_series(runs, legend, "loss")] == ["VGG-A: 2 runs, LR 0.1"]
    assert [c.label for c in training_curves(runs, legend)] == [
        "VGG-A LR 0.1 seed 0 (a:vgg_a-lr0.1-seed0)", "VGG-A LR 0.1 seed 0 (b:vgg_a-lr0.1-seed0)"]


def test_info_is_per_file_and_unaffected_by_pooling(sgd_and_momentum, capsys):
    plain, _ = sgd_and_momentum
    assert main(["info", str(plain)]) == 0
    assert "2 runs (2 completed)" in capsys.readouterr().out


# --- 12. Names, colours, titles, axes, the stability line ------------------------------------

def test_every_registered_model_has_a_display_name():
    assert set(MODELS) <= set(MODEL_LABELS)


def test_the_header_names_the_colours_of_the_models_present(tmp_path):
    path = _sweep(tmp_path / "ln.h5", [dict(model="vgg_a_ln", lr=0.1, steps=20),
                                       dict(model="dln_bn", lr=0.1, steps=20)])
    page = _page(path)
    assert "Blue: VGG-A" not in page and "VGG-A+BN" not in page
    assert "Colour: DLN+BN green; VGG-A+LN purple" in page  # in the file's order
    runs = _runs(path)
    assert [s.label for s in beta_series(runs, Legend.of(runs))[0.1]] == [
        "DLN+BN β<sub>eff</sub>", "VGG-A+LN β<sub>eff</sub>"]


def test_per_lr_figures_say_their_learning_rate_in_the_title(diverged_sweep):
    runs = _runs(diverged_sweep)
    fig = fg.band_figure_by_lr(probe_series(runs, Legend.of(runs), "loss"), "Loss<br><sup>x</sup>",
                               "training step", "loss", log_y=True, initial_lr=0.1)
    assert fig.layout.title.text == "Loss — LR 0.1<br><sup>x</sup>"
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.args[1]["title.text"] for b in buttons] == ["Loss — LR 0.1<br><sup>x</sup>",
                                                          "Loss — LR 0.5<br><sup>x</sup>"]


def test_log_axes_label_ticks_with_their_magnitude_and_titles_have_no_raw_subscripts(
        diverged_sweep):
    page = _page(diverged_sweep)
    assert '"minorloglabels":"complete"' in page  # 20, 50 rather than "2", "5"
    assert '"exponentformat":"e"' in page  # 20 rather than "2x10" (the labels drawn:
    # tests/test_report_ticks.py)
    for raw in ("{t−1}", "g_t", "θ_t", "B_t", "_{W_i}", "β_eff"):
        assert raw not in page, raw


def test_section_2a_is_not_called_the_papers_gradient_predictiveness(diverged_sweep):
    page = _page(diverged_sweep)
    assert ("2a. Consecutive-minibatch gradient distance across the learning-rate grid "
            "(not the paper&#x27;s gradient predictiveness)") in page
    assert "2a. Gradient predictiveness" not in page


def test_the_stability_line_follows_the_optimizer(sgd_and_momentum, tmp_path):
    plain, heavy = sgd_and_momentum
    adam = _sweep(tmp_path / "adam.h5", [dict(model="vgg_a_bn", lr=0.1, steps=20,
                                              optimizer="adam")])
    references, no_line = stability_references(_runs(plain, heavy, adam))
    assert [r.label for r in references[0.1]] == [
        "2/LR = 20 (plain SGD)", "(2 + 2μ)/LR = 38 (heavy-ball momentum μ = 0.9)"]
    assert [r.y for r in references[0.1]] == pytest.approx([20.0, 38.0])
    assert no_line == "adam"
    page = _page(plain, heavy, adam)
    assert "No line for adam" in page


# --- 11. A run with a single probe -----------------------------------------------------------

def test_a_single_probe_is_drawn_as_a_point_and_the_panel_says_why(tmp_path):
    path = _sweep(tmp_path / "one-probe.h5", [dict(model="vgg_a", lr=0.1, steps=3),
                                              dict(model="vgg_a_bn", lr=0.1, steps=3)])
    runs = _runs(path)
    legend = Legend.of(runs)
    assert all(len(r.probe.step) == 1 for r in runs)
    for series in (probe_series(runs, legend, "loss"), probe_series(runs, legend, "grad_diff"),
                   beta_series(runs, legend)):
        fig = fg.band_figure_by_lr(series, "t", "training step", "y", log_y=None)
        points = [t for t in fig.data if "markers" in (t.mode or "") and t.x[0] == 0]
        assert len(points) == 2  # one per model: the point and its [min, max]
        assert fig.layout.annotations[0].text.startswith("only one probed step per band (step 0)")


def test_sparse_note_says_nothing_when_there_is_a_curve():
    band = Band(np.array([0.0, 5.0]), np.ones(2), np.ones(2) * 2, np.ones(2, int))
    assert fg.sparse_note([fg.BandSeries("a", "#000000", band)], "probed step") is None
    empty = Band(np.array([0.0]), np.array([np.nan]), np.array([np.nan]), np.zeros(1, int))
    assert fg.sparse_note([fg.BandSeries("a", "#000000", empty)], "probed step").startswith(
        "nothing finite")


# --- 13. The DLN --------------------------------------------------------------------------

@pytest.fixture
def dln_sweep(tmp_path):
    """DLN-like runs: full batch on gaussian-linear, 100 steps an epoch, no accuracy, beta
    from 1e6 to 1e11 (the DLN without BN)."""
    path = tmp_path / "dln.h5"
    store = SweepStore(path, config={}, command="dln")
    for model in ("dln", "dln_bn"):
        log = store.run(f"{model}-lr1e-06-seed0", eta=np.array([0.5, 1, 2, 4]) * 1e-6,
                        model=model, norm="none", lr=1e-6, seed=0, batch_size=1000,
                        optimizer="SGD", momentum=0.0, dataset="gaussian-linear",
                        steps_per_epoch=100)
        step = np.arange(250)  # two full epochs and a partial third
        loss = 1e3 * np.exp(-step / 30.0) + 1e-2
        log.add_steps(step=step, epoch=step // 100, loss=loss, grad_norm=np.ones(250),
                      grad_diff=np.ones(250), beta_consecutive=np.ones(250))
        for i, s in enumerate(range(0, 250, 25)):
            beta = 10.0 ** (6 + 5 * i / 9)
            log.add_probe(SimpleProbe(s, 1e-6 * np.array([0.5, 1, 2, 4]), beta))
        for e in range(3):
            log.add_epoch(epoch=e, steps=(100, 100, 50)[e], train_loss=10.0 ** (2 - 3 * e),
                          train_acc=math.nan,
                          test_loss=10.0 ** (2.1 - 2 * e), test_acc=math.nan, seconds=1.0)
        log.set_attrs(status="completed", steps_completed=250, seconds=3.0)
        store.flush(log)
    return path


class SimpleProbe:
    """What ``RunLog.add_probe`` reads from a probe record."""

    def __init__(self, step, eta, beta):
        self.step, self.eta, self.beta = step, eta, beta
        self.loss = np.ones(len(eta))
        self.grad_diff = np.ones(len(eta))
        self.grad_norm, self.loss_at_theta = 1.0, 1.0


def test_dln_report_shows_losses_not_empty_accuracy_panels(dln_sweep):
    runs = _runs(dln_sweep)
    legend = Legend.of(runs)
    fig = fg.training_curves_figure(training_curves(runs, legend), "Fig. 1")
    assert [a.text for a in fig.layout.annotations] == ["training loss (epoch mean)", "test loss"]
    assert "no accuracy: every run is a regression" in fig.layout.title.text
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"  # 4 decades


def test_mixed_report_keeps_accuracy_panels_and_names_the_runs_without(dln_sweep, diverged_sweep):
    runs = _runs(diverged_sweep, dln_sweep)
    fig = fg.training_curves_figure(training_curves(runs, Legend.of(runs)), "Fig. 1")
    assert len(fig.layout.annotations) == 4
    assert "no accuracy (regression): DLN" in fig.layout.title.text


def test_beta_spanning_decades_opens_on_a_log_axis(dln_sweep, diverged_sweep):
    runs = _runs(dln_sweep)
    fig = fg.band_figure_by_lr(beta_series(runs, Legend.of(runs)), "β", "training step", "β",
                               log_y=None)
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.updatemenus[-1].buttons[0].label == "log y"
    runs = _runs(diverged_sweep)  # beta 2/LR: one value per LR, within a decade
    fig = fg.band_figure_by_lr(beta_series(runs, Legend.of(runs)), "β", "training step", "β",
                               log_y=None)
    assert fig.layout.yaxis.type == "linear"
    assert fg.spans_decades([np.array([1e6, 1e11])])
    assert not fg.spans_decades([np.array([1.0, 50.0])])
    assert not fg.spans_decades([np.array([0.0, 1e6])])  # a log axis cannot show 0


def test_the_report_says_what_an_epoch_is(dln_sweep):
    runs = _runs(dln_sweep)
    text = epoch_text(runs, Legend.of(runs))
    assert text.startswith("Epochs are numbered as in the file, from 0")
    assert "DLN and DLN+BN: 50–100 steps per epoch of full-batch gradient descent (batch 1000" in text
    assert "logging unit" in text
    curves = training_curves(runs, Legend.of(runs))
    assert curves[0].epoch.tolist() == [0, 1, 2]  # the file's numbers
    assert "epoch (0 = the first pass, as in the file)" in build_report([read_sweep(dln_sweep)])


def test_info_has_final_loss_columns(dln_sweep, capsys):
    assert main(["info", str(dln_sweep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[2].split()
    assert header[9:15] == ["train", "acc", "test", "acc", "train", "loss"]
    row = next(line for line in lines if line.startswith("dln-lr1e-06")).split()
    assert row[9:11] == ["-", "-"]  # no accuracy
    assert float(row[11]) == pytest.approx(1e-4) and float(row[12]) == pytest.approx(10 ** 0.1 / 100,
                                                                                     rel=1e-3)


def test_a_partial_last_epoch_is_said_and_its_train_averages_not_drawn(dln_sweep):
    """The DLN file's third epoch holds 50 of 100 steps (issue 13, point 4)."""
    runs = read_sweep(dln_sweep).runs
    assert all(r.epochs.partial.tolist() == [False, False, True] for r in runs)
    legend = Legend.of(runs)
    for curve in training_curves(runs, legend):
        assert np.isfinite(curve.train_loss[:2]).all() and np.isnan(curve.train_loss[2])
        assert np.isfinite(curve.test_loss).all()  # a full evaluation, partial epoch or not
    assert "The last epoch of 2 runs is partial" in epoch_text(runs, legend)
