"""From sweep files to the report: group runs, compute bands, build figures, write HTML.

``write_report(["a.h5", "b.h5"], "reports/x.html")`` is what ``landscape plot`` calls.
Runs of several files are pooled (two seeds, or BN and no-BN swept separately) when every
setting but the seed agrees (``pools.py``): bands "across the grid" span every run of a pool
at every learning rate, bands "along the gradient" every run of a pool at one learning rate.
A file given twice, or a run copied into another file, counts once.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go

from ..errors import LandscapeError
from ..store import RunData, SweepFile, read_sweep
from . import figures as fg
from .bands import (Band, band_across_runs, band_over_eta, band_over_eta_and_runs, masked,
                    max_over_eta, nonfinite_x, quantile_band, spread_over_eta, value_before)
from .html import Section, render_page, table_html
from .layerstats import (bin_centres, hist_quantiles, layer_column, layer_indices, mean_std_band,
                         occupied_bins, steps_per_map, subsample)
from .findings import FAILS, HOLDS, MIN_PROBES, MIN_STEPS, TOO_SHORT, findings
from . import spectral
from .spectral_findings import spectral_findings
from .grid import (Cell, Facets, axis_value_text, best_cells, cell_label, grid_axes, grid_cells,
                   ranked_cells, setting_key, varying_axes)
from .select import Selection
from .slicefigs import (basin_rows, contour_figure, line_figure, report_slices, surface_figure,
                        trajectory_text)
from .pooled import RUN_LINES, RunSeries, pool_series, seed_groups, setting_map
from .pools import (Pooling, distinct_runs, losses_text, optimizer, scheduled, settings,
                    value_text)
from .summary import RUN_TABLE_HEADER, library_versions, run_table_cells, summarize_run

PAPER_LR = 0.1  # the selectors open on the learning rate closest to the paper's


def default_report_path(first_input: str | os.PathLike) -> Path:
    """runs/sweep.h5 -> runs/sweep.html, next to the (first) input; in the current folder
    when the input's folder cannot be written (a read-only share)."""
    beside = Path(first_input).with_suffix(".html")
    return beside if os.access(beside.parent, os.W_OK) else Path(beside.name)


@dataclass(frozen=True)
class Resolution:
    """How much of a large sweep a page draws (``landscape plot --points``, ``--run-lines``)."""

    points: int | None = fg.MAX_BAND_POINTS  # pixel columns per series; None: every point
    run_lines: int = RUN_LINES  # a figure of more runs draws one line per setting

    def check(self) -> None:
        if self.points is not None and self.points < 1:
            raise LandscapeError(f"--points must be a whole number >= 1 or 'all', got "
                                 f"{self.points}")
        if self.run_lines < 1:
            raise LandscapeError(f"--run-lines must be a whole number >= 1, got {self.run_lines}")


def write_report(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 smooth: int = 1, overwrite: bool = False, title: str | None = None,
                 facets: Facets = Facets(), selection: Selection = Selection(),
                 resolution: Resolution = Resolution()) -> Path:
    """Read ``inputs``, write one self-contained HTML report at ``out``; returns its path.
    ``facets``: colour and panel axes, best k, seed-band quantiles (checked against the runs
    before anything is written); ``selection``: the runs drawn (``--runs``, ``--where``: only
    theirs are read); ``resolution``: points per series, runs per figure."""
    out = Path(out)
    if out.is_dir():
        raise LandscapeError(f"-o {out} is a directory")
    if out.exists() and not overwrite:
        raise LandscapeError(f"{out} exists; replace it with overwrite=True (--overwrite on the "
                             "command line), or choose another -o")
    if smooth < 1:
        raise LandscapeError(f"--smooth must be a whole number >= 1, got {smooth}")
    resolution.check()
    sweeps = read_selected(inputs, selection)
    page = build_report(sweeps, smooth=smooth, title=title, facets=facets,
                        resolution=resolution, selected=selection.text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)  # a reader never sees half a report
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write (disk full), no half file is left
    return out


def read_selected(inputs: Sequence[str | os.PathLike], selection: Selection) -> list[SweepFile]:
    """The sweeps of ``inputs`` with the runs ``selection`` chooses (only those are read); a
    setting no run has, or nothing chosen, is a one-line error."""
    if not selection:
        return [read_sweep(p) for p in inputs]
    keys: set[str] = set()
    seen = [0]

    def keep(name: str, attrs: dict) -> bool:
        keys.update(attrs)
        seen[0] += 1
        return selection.matches(name, attrs)

    sweeps = [read_sweep(p, keep) for p in inputs]
    selection.check(keys, sum(len(s.runs) for s in sweeps), seen[0])
    return sweeps


def build_report(sweeps: Sequence[SweepFile], *, smooth: int = 1, title: str | None = None,
                 facets: Facets = Facets(), resolution: Resolution = Resolution(),
                 selected: str = "") -> str:
    """The report page for the pooled runs of ``sweeps`` (each file and run once);
    ``selected``: how they were chosen, said in the header."""
    distinct = distinct_runs(sweeps)
    runs = distinct.runs
    facets.check(runs)
    data = ReportData.of(runs, distinct.sweeps, smooth=smooth, facets=facets,
                         run_lines=resolution.run_lines)
    legend = data.legend
    title = title or "Loss landscape report: " + ", ".join(s.path.name for s in distinct.sweeps)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in distinct.notes)
    if selected:
        notes += (f'<p class="note">Runs chosen by {html.escape(selected)}: the settings, bands '
                  "and findings below are of these runs only.</p>")
    intro = (f"<p>Santurkar et al. (2018), “How Does Batch Normalization Help Optimization?” "
             f"— {len(runs)} runs from {len(distinct.sweeps)} file(s). "
             f"{html.escape(legend.color_text())}. {html.escape(losses_text(runs))}"
             "Bands are raw [min, max]"
             + (f", with edges smoothed over {smooth} points drawn on top" if smooth > 1 else "")
             + "; log/linear buttons switch the y axis.</p>" + notes)
    with fg.drawn_columns(resolution.points):
        return render_page(title, intro, report_sections(data))


@dataclass(frozen=True)
class ReportData:
    """What every section builder reads: the report's distinct runs and how to draw them."""

    runs: list[RunData]
    legend: "Legend"
    facets: Facets
    smooth: int  # --smooth: points of the moving average drawn over the band edges
    shown: list[Cell]  # the settings drawn in sections 4a and 4b (all, or the --best K)
    sweeps: list[SweepFile]  # the distinct files, for the provenance
    run_lines: int = RUN_LINES  # a figure of more runs draws one line per setting

    @classmethod
    def of(cls, runs: list[RunData], sweeps: Sequence[SweepFile] = (), *, smooth: int = 1,
           facets: Facets = Facets(), run_lines: int = RUN_LINES) -> "ReportData":
        return cls(runs, Legend.of(runs), facets, smooth,
                   best_cells(grid_cells(runs), facets.best), list(sweeps), run_lines)

    def pooled(self, runs: Sequence[RunData]) -> bool:
        """Whether a figure of ``runs`` draws settings (seeds pooled), not runs."""
        return len(runs) > self.run_lines

    def pooled_text(self, runs: Sequence[RunData], drawn: str = "") -> str:
        """The sentence a pooled figure's definition ends with (``drawn``: what it draws
        per setting, if not a line and its band)."""
        if not self.pooled(runs):
            return ""
        drawn = drawn or (f"one line per setting (every axis but the seed): the median over "
                          f"its seeds, and the band {self.facets.band_text()}")
        return (f" <b>{len(runs)} runs, more than {self.run_lines}: {drawn}</b>; `landscape "
                "plot --runs PATTERN` or `--where lr=0.1,model=vgg_a_bn` draws a few runs each, "
                "`--run-lines N` raises the limit.")

    def setting_label(self, runs: Sequence[RunData]) -> str:
        """'VGG-A+BN LR 0.1: median of 10 runs' (a pooled line's name)."""
        first = runs[0]
        return (f"{self.legend.pool_label(first)} LR {first.lr:g}: median of {len(runs)} "
                f"run{'s' if len(runs) > 1 else ''}")

    def lines(self, series: Sequence[RunSeries], dash: Callable[[RunData], str],
              suffix: Callable[[RunSeries], str] = lambda s: "") -> list[fg.Line]:
        """A line per run of ``series``, or per setting (its seeds' median) when pooled;
        ``suffix``: what a line's name ends with (from its first run's series)."""
        legend = self.legend
        if not self.pooled([s.run for s in series]):
            return [fg.Line(legend.run_text(s.run) + suffix(s), legend.color(s.run),
                            dash(s.run), s.x, s.y) for s in series]
        first = {id(s.run): s for s in series}
        return [fg.Line(self.setting_label(p.runs) + suffix(first[id(p.runs[0])]),
                        legend.color(p.runs[0]), dash(p.runs[0]), p.band.x, p.band.median)
                for p in pool_series(series, self.facets.quantiles)]


@dataclass(frozen=True)
class Content:
    """What a section builder returns: its definition (HTML), then a figure or raw HTML."""

    definition: str
    figure: go.Figure | None = None
    body: str = ""


# A section's place in the numbering (``SectionSpec.place``): NUMBER starts the next number,
# LETTER continues the number above with the next letter, UNNUMBERED has none.
NUMBER, LETTER, UNNUMBERED = "number", "letter", ""


@dataclass(frozen=True)
class SectionSpec:
    """One row of the page's table of sections (``SECTIONS``)."""

    anchor: str  # the section's id: links (#beta) and figure ids (fig-beta) use it
    title: str  # the heading after its number
    build: Callable[[ReportData], Content | None]  # None: nothing to show (instrument off)
    place: str = NUMBER


def section_labels(places: Sequence[str]) -> list[str]:
    """The section numbers of a table's rows, from their places: a NUMBER row starts the
    next number, a LETTER row continues the one above; a number with several rows letters
    them a, b, c, …, a number with one row stays bare ('3'); an UNNUMBERED row gets ''.
    Labels follow the table, not the page: a section left out keeps its label unused."""
    numbers: list[int | None] = []
    for place in places:
        if place not in (NUMBER, LETTER, UNNUMBERED):
            raise ValueError(f"a section's place is {NUMBER!r}, {LETTER!r} or "
                             f"{UNNUMBERED!r}, got {place!r}")
        if place == LETTER and not any(n is not None for n in numbers):
            raise ValueError("a LETTER section needs a numbered section above it")
        current = max((n for n in numbers if n is not None), default=0)
        numbers.append(None if place == UNNUMBERED else current + (place == NUMBER))
    rows = {n: numbers.count(n) for n in numbers}
    labels, seen = [], defaultdict(int)
    for n in numbers:
        if n is None:
            labels.append("")
            continue
        seen[n] += 1
        labels.append(f"{n}{chr(ord('a') + seen[n] - 1)}" if rows[n] > 1 else str(n))
    return labels


def report_sections(data: ReportData) -> list[Section]:
    """The page's sections in the order of ``SECTIONS``, numbered by their row there; a
    section whose builder has nothing to show is left out and the others keep their labels."""
    sections = []
    for spec, label in zip(SECTIONS, section_labels([s.place for s in SECTIONS])):
        content = spec.build(data)
        if content is not None:
            sections.append(Section(spec.anchor, f"{label}. {spec.title}" if label else spec.title,
                                    content.definition, content.figure, content.body))
    return sections


@dataclass(frozen=True)
class Legend:
    """How the report names and colours runs: one colour and label per pool (runs that
    agree on every setting but the learning rate and seed), a unique name per run."""

    pooling: Pooling
    colors: dict  # pool key -> colour, in order of first appearance
    labels: dict  # pool key -> label
    names: dict[int, str]  # id(run) -> run name, FILE:RUN when names collide

    @classmethod
    def of(cls, runs: Sequence[RunData]) -> "Legend":
        pooling = Pooling.of(runs)
        firsts = {key: group[0] for key, group in pooling.pools(runs).items()}
        return cls(pooling, fg.pool_colors([(key, r.model) for key, r in firsts.items()]),
                   {key: pooling.label(r) for key, r in firsts.items()}, run_labels(runs))

    def color(self, run: RunData) -> str:
        return self.colors[self.pooling.key(run)]

    def pool_label(self, run: RunData) -> str:
        return self.labels[self.pooling.key(run)]

    def name(self, run: RunData) -> str:
        return self.names[id(run)]

    def run_text(self, run: RunData) -> str:
        """'VGG-A, momentum 0.9 LR 0.1 seed 0' (pool label, learning rate and seed)."""
        return f"{self.pool_label(run)} LR {run.lr:g} seed {run.seed}"

    def color_text(self) -> str:
        """'Colour: VGG-A blue; VGG-A+BN red': the header's key, from the pools present."""
        return "Colour: " + "; ".join(f"{self.labels[k]} {fg.color_name(c)}"
                                      for k, c in self.colors.items())


def run_labels(runs: Sequence[RunData]) -> dict[int, str]:
    """A unique label per run: its name, prefixed by its file's name when names collide."""
    counts = defaultdict(int)
    for run in runs:
        counts[run.name] += 1
    return {id(run): run.name if counts[run.name] == 1 else f"{run.source.stem}:{run.name}"
            for run in runs}


# The stability edge of gradient descent on a quadratic of curvature beta: plain SGD is
# stable while LR * beta < 2, heavy-ball momentum mu while LR * beta < 2 + 2 mu (under a
# schedule, LR(t) at each probed step: its line says so).
STABILITY_TEXT = ("Dashed: the stability edge of the runs' optimizer, the β above which "
                  "gradient descent on a quadratic diverges and where the paper sees β settle: "
                  "2/LR for plain SGD, (2 + 2μ)/LR for heavy-ball momentum μ.")


def stability_edge(run: RunData) -> fg.Reference | None:
    """The run's dashed line on the β figure, or None for an optimizer without one. Under a
    learning-rate schedule the edge moves with LR(t): a line through the probed steps at the
    learning rate recorded there (``probe.learning_rate``)."""
    if optimizer(run) != "sgd" or not run.lr > 0:
        return None
    if scheduled(run):
        return _scheduled_edge(run)
    mu = float(run.attrs.get("momentum", 0.0) or 0.0)
    if mu == 0:
        return fg.Reference(2 / run.lr, f"2/LR = {2 / run.lr:g} (plain SGD)")
    edge = (2 + 2 * mu) / run.lr
    return fg.Reference(edge, f"(2 + 2μ)/LR = {edge:g} (heavy-ball momentum μ = {mu:g})",
                        dash="dot")


def _scheduled_edge(run: RunData) -> fg.Reference:
    """(2 + 2μ)/LR(t) at the run's probed steps (μ = 0: 2/LR(t)), named by its schedule."""
    mu = float(run.attrs.get("momentum", 0.0) or 0.0)
    rate = run.probe.learning_rate
    keep = np.isfinite(rate) & (rate > 0)
    edge = (2 + 2 * mu) / rate[keep]
    what = "2/LR(t)" if mu == 0 else "(2 + 2μ)/LR(t)"
    momentum = "plain SGD" if mu == 0 else f"heavy-ball momentum μ = {mu:g}"
    return fg.Reference((2 + 2 * mu) / run.lr,
                        f"{what} ({momentum}, {settings(run)['lr_schedule']} schedule from LR "
                        f"{run.lr:g})", dash="dash" if mu == 0 else "dot",
                        x=tuple(run.probe.step[keep].tolist()), values=tuple(edge.tolist()))


def stability_references(runs: Sequence[RunData]) -> tuple[dict[float, list[fg.Reference]], str]:
    """Per learning rate, the distinct stability edges of its runs; and the optimizers
    that have none (named in the caption)."""
    references: dict[float, list[fg.Reference]] = defaultdict(list)
    without = []
    for run in runs:
        ref = stability_edge(run)
        if ref is None:
            without.append(str(run.attrs.get("optimizer", "?")))
        elif ref not in references[run.lr]:
            references[run.lr].append(ref)
    return dict(references), ", ".join(dict.fromkeys(without))


def epoch_text(runs: Sequence[RunData], legend: "Legend") -> str:
    """What an epoch is here: numbered as in the file (from 0), and how many training
    steps the epochs of each pool hold, counted from the file's per-step ``epoch`` column
    (an epoch cut short shows as a range). The DLN's full-batch "epoch" is a logging unit."""
    by_meaning: dict[str, list[str]] = defaultdict(list)  # meaning -> pool labels
    for group in legend.pooling.pools(runs).values():
        counts = set()
        for run in group:
            epochs = run.steps.epoch[np.isin(run.steps.epoch, run.epochs.epoch)]
            counts |= set(np.unique(epochs, return_counts=True)[1].tolist())
        if not counts:
            continue
        low, high = min(counts), max(counts)
        steps = f"{low}" if low == high else f"{low}–{high}"
        meaning = f"{steps} steps per epoch"
        if group[0].attrs.get("dataset") in FULL_BATCH_DATASETS:
            meaning += (f" of full-batch gradient descent (batch "
                        f"{group[0].attrs.get('batch_size', '?')}, the whole training set): an "
                        f"“epoch” is a logging unit of {steps} steps, after which the test loss "
                        f"is measured, not a pass over new data")
        by_meaning[meaning].append(legend.pool_label(group[0]))
    parts = [f"{' and '.join(labels)}: {meaning}" for meaning, labels in by_meaning.items()]
    partial = sum(bool(run.epochs.partial.any()) for run in runs)
    cut = (f" The last epoch of {partial} run{'s' if partial > 1 else ''} is partial (the run "
           "stopped inside it, --steps): its training loss and accuracy average only the steps "
           "it had and are not drawn; its test values are." if partial else "")
    return ("Epochs are numbered as in the file, from 0: epoch e holds the training steps "
            "whose stored epoch is e" + (" (" + "; ".join(parts) + ")." if parts else ".") + cut)


# Datasets trained by full-batch gradient descent (the DLN's), where an epoch is only a
# logging unit; the report says so where it shows epochs.
FULL_BATCH_DATASETS = ("gaussian-linear",)


def _initial_lr(runs: Sequence[RunData]) -> float | None:
    lrs = sorted({r.lr for r in runs if r.lr > 0})
    return min(lrs, key=lambda lr: abs(math.log(lr / PAPER_LR))) if lrs else None


def _eta_multiples_text(runs: Sequence[RunData]) -> str:
    multiples = sorted({round(float(e / r.lr), 6) for r in runs for e in r.probe.eta if r.lr > 0})
    return "{" + ", ".join(f"{m:g}" for m in multiples) + "}" if multiples else "{}"


def _by_lr_and_pool(runs: Sequence[RunData], legend: Legend) -> dict[float, list[list[RunData]]]:
    """Per learning rate (ascending), the pools' runs at it."""
    by_lr: dict[float, list[RunData]] = defaultdict(list)
    for run in runs:
        by_lr[run.lr].append(run)
    return {lr: list(legend.pooling.pools(group).values()) for lr, group in sorted(by_lr.items())}


def _divergence_marker(label: str, x: np.ndarray, y: np.ndarray, band: Band,
                       diverged_step: int | None, what: str) -> fg.Marker | None:
    """A cross where a run stops being finite, at its last finite height.

    That is the run's recorded divergence step, or else the first non-finite value after
    a finite one: a leading NaN (no previous gradient at step 0) is undefined, not a blow-up.
    """
    x, y = np.asarray(x), masked(y)
    if diverged_step is not None:
        where = float(diverged_step)
    else:
        started = np.cumsum(np.isfinite(y)) > 0
        bad = nonfinite_x(x[started], y[started])
        if not len(bad):
            return None
        where = float(bad[0])
    height = value_before(x, y, where)
    if not math.isfinite(height):  # nothing finite before: put it at the band's top
        finite_upper = band.upper[np.isfinite(band.upper)]
        height = float(finite_upper.max()) if len(finite_upper) else 1.0
    return fg.Marker(where, height, f"{label}: {what} not finite from step {where:g} (masked)")


def _band_over_runs(label: str, group: Sequence[RunData], legend: Legend,
                    xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], what: str,
                    quantiles: tuple[float, float] | None = None) -> fg.BandSeries:
    """The band over ``group``'s runs of one series each, with a cross per diverged run:
    [min, max], or with ``quantiles`` the seed band (median and quantiles, ``quantile_band``)."""
    band = band_across_runs(xs, ys) if quantiles is None else quantile_band(xs, ys, quantiles)
    markers = [m for r, x, y in zip(group, xs, ys)
               if (m := _divergence_marker(legend.name(r), x, y, band, r.diverged_step, what))]
    return fg.BandSeries(label, legend.color(group[0]), band, markers)


def grid_series(runs: Sequence[RunData], legend: Legend, column: str) -> list[fg.BandSeries]:
    """Per pool, the band over all its runs (every learning rate and seed) of a per-step
    column (loss or grad_diff)."""
    series = []
    for group in legend.pooling.pools(runs).values():
        lrs = ", ".join(f"{lr:g}" for lr in sorted({r.lr for r in group}))
        runs_text = f"{len(group)} run{'s' if len(group) > 1 else ''}"
        series.append(_band_over_runs(f"{legend.pool_label(group[0])}: {runs_text}, LR {lrs}",
                                      group, legend,
                                      [r.steps.step for r in group],
                                      [getattr(r.steps, column) for r in group], column))
    return series


def _masked_eta_markers(run: RunData, label: str, grid: np.ndarray, band: Band) -> list[fg.Marker]:
    """A cross at each probed step where some step size gave a non-finite value."""
    per_run = band_over_eta(run.probe.step, grid)
    markers = []
    for i in np.flatnonzero(per_run.count < grid.shape[1]):
        step = per_run.x[i]
        height = value_before(per_run.x, per_run.upper, step)
        if not math.isfinite(height):  # nothing finite yet: the band's last finite top
            height = value_before(band.x, band.upper, band.x[-1]) if len(band) else 1.0
        eta = ", ".join(f"{e:g}" for e in run.probe.eta[~np.isfinite(grid[i])])
        markers.append(fg.Marker(float(step), height,
                                 f"{label}: step {step:g}: not finite for η = {eta} (masked)"))
    return markers


def probe_series(runs: Sequence[RunData], legend: Legend,
                 column: str) -> dict[float, list[fg.BandSeries]]:
    """Per learning rate and pool, the band over eta (and seeds) of a probe grid column."""
    out: dict[float, list[fg.BandSeries]] = {}
    for lr, pools in _by_lr_and_pool(runs, legend).items():
        out[lr] = []
        for group in pools:
            grids = [getattr(r.probe, column) for r in group]
            band = band_over_eta_and_runs([r.probe.step for r in group], grids)
            markers = [m for run, grid in zip(group, grids) if grid.ndim == 2
                       for m in _masked_eta_markers(run, legend.name(run), grid, band)]
            seeds = len({r.seed for r in group})
            suffix = f", {seeds} seeds" if seeds > 1 else ""
            out[lr].append(fg.BandSeries(f"{legend.pool_label(group[0])}: [min, max] over "
                                         f"η{suffix}", legend.color(group[0]), band, markers))
    return out


def beta_series(runs: Sequence[RunData], legend: Legend,
                quantiles: tuple[float, float] = Facets().quantiles,
                ) -> dict[float, list[fg.BandSeries]]:
    """Per learning rate and pool, the probe's beta (a seed band when there are several)."""
    return {lr: [_band_over_runs(f"{legend.pool_label(group[0])} β<sub>eff</sub>", group, legend,
                                 [r.probe.step for r in group], [r.probe.beta for r in group], "β",
                                 quantiles)
                 for group in pools]
            for lr, pools in _by_lr_and_pool(runs, legend).items()}


def training_curves(runs: Sequence[RunData], legend: Legend) -> list[fg.Curve]:
    """One curve per run, at the file's epoch numbers (from 0)."""
    dash = _lr_dash(runs)
    texts = [legend.run_text(r) for r in runs]
    repeated = {t for t in texts if texts.count(t) > 1}  # same settings and seed: add the file
    curves = []
    for run, text in zip(runs, texts):
        e = run.epochs
        flag = f" (diverged @ step {run.diverged_step})" if run.diverged_step is not None else ""
        where = f" ({legend.name(run)})" if text in repeated else ""
        curves.append(fg.Curve(
            label=f"{text}{where}{flag}", color=legend.color(run), dash=dash(run),
            epoch=e.epoch, **{attr: epoch_values(run, attr) for attr in EPOCH_COLUMNS}))
    return curves


EPOCH_COLUMNS = ("train_acc", "test_acc", "train_loss", "test_loss")


def epoch_values(run: RunData, attr: str) -> np.ndarray:
    """An epoch column as drawn, masked. A partial epoch's train averages cover a few
    minibatches: not drawn. Its test values are a full evaluation at that point and stay."""
    values = masked(getattr(run.epochs, attr))
    return np.where(run.epochs.partial, np.nan, values) if attr.startswith("train") else values


def mode_section(d: ReportData) -> Content | None:
    """Train mode vs eval mode on the fixed training subset, for the runs that have it."""
    runs, legend = [r for r in d.runs if np.isfinite(r.epochs.train_mode_loss).any()], d.legend
    if not runs:
        return None
    lrs = sorted({r.lr for r in runs})
    groups = (seed_groups(runs).values() if d.pooled(runs) else [[r] for r in runs])
    curves = []
    for group in groups:
        first = group[0]
        label = d.setting_label(group) if d.pooled(runs) else legend.run_text(first)
        epoch, columns = _median_columns(group, MODE_COLUMNS, d.facets.quantiles)
        curves.append(fg.ModeCurve(label, legend.color(first), epoch, *columns,
                                   fg.LR_SYMBOLS[lrs.index(first.lr) % len(fg.LR_SYMBOLS)]))
    return Content(
        "After each epoch, on a fixed subset of the training set (the same images every epoch, "
        "at least 1,024, in batches of the run's batch size): loss and accuracy with the model "
        "in train mode (BatchNorm normalizes each batch by its own statistics; dropout and "
        "noise off) and in eval mode (BatchNorm uses its running averages), measured without "
        "changing the model. A network without normalization (and without dropout) computes "
        "the same in both modes: its gaps are 0. Colour: model and settings; marker: "
        "learning rate." + d.pooled_text(runs, "one line per setting (every axis but the "
                                           "seed): the median over its seeds"),
        fg.mode_figure(curves, "Train mode vs eval mode<br><sup>fixed training subset: batch "
                               "statistics (solid) vs running statistics (dotted); marker: "
                               "learning rate</sup>",
                       x_title="epoch (0 = the first pass, as in the file)"))


MODE_COLUMNS = ("train_mode_acc", "eval_mode_acc", "train_mode_loss", "eval_mode_loss")


def _median_columns(runs: Sequence[RunData], columns: Sequence[str],
                    quantiles: tuple[float, float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Epoch columns of one run (masked), or the median over several runs at each epoch."""
    if len(runs) == 1:
        return runs[0].epochs.epoch, [masked(getattr(runs[0].epochs, c)) for c in columns]
    bands = [quantile_band([r.epochs.epoch for r in runs],
                           [getattr(r.epochs, c) for r in runs], quantiles) for c in columns]
    return bands[0].x, [b.median for b in bands]


QUANTILES = {"5%": 0.05, "50%": 0.5, "95%": 0.95}


def _lr_dash(runs: Sequence[RunData]):
    lr_order = sorted({r.lr for r in runs})
    return lambda run: fg.LR_DASHES[lr_order.index(run.lr) % len(fg.LR_DASHES)]


def _layer_title(index: int, names: set[str]) -> str:
    return f"layer #{index}" + (f" ({', '.join(sorted(names))})" if names else "")


@dataclass(frozen=True)
class LayerRuns:
    """One layer of a per-layer instrument, matched by index across models."""

    index: int  # 1-based among the conv and linear layers: VGG-A's #5 is VGG-A+BN's #5
    title: str  # 'layer #5 (features.8)': the index and the layer's names in the runs
    columns: list[tuple[RunData, int]]  # the runs that have the layer, its column in each


def per_layer(runs: Sequence[RunData], series: Callable[[RunData], object]) -> list[LayerRuns]:
    """The layers of the per-layer series ``series(run)`` (``run.ics``, ``run.activations``,
    ``run.weights``: each with ``layer_index`` and ``layer``) in index order, each with the
    runs that have it, in the order of ``runs``."""
    layers = []
    for index in layer_indices([series(r).layer_index for r in runs]):
        columns = [(run, col) for run in runs
                   if (col := layer_column(series(run).layer_index, index)) is not None]
        names = {series(run).layer[col] for run, col in columns}
        layers.append(LayerRuns(index, _layer_title(index, names), columns))
    return layers


def _probed(runs: Sequence[RunData], attr: str) -> list[RunData]:
    """The runs with at least one probed step of instrument ``attr`` (ics, activations)."""
    return [r for r in runs if getattr(r, attr) is not None and len(getattr(r, attr).step)
            and len(getattr(r, attr).layer_index)]


def ics_layers(d: ReportData) -> list[fg.LayerICS]:
    """Fig. 3 per weight layer (matched by index across models): one line per run with ICS
    probes (or per setting, ``ReportData.lines``)."""
    runs = _probed(d.runs, "ics")
    dash = _lr_dash(runs)
    return [fg.LayerICS(layer.title, *(
        d.lines([RunSeries(run, run.ics.step, masked(getattr(run.ics, what)[:, col]))
                 for run, col in layer.columns], dash) for what in ("l2", "cosine")))
        for layer in per_layer(runs, lambda r: r.ics)]


def ics_section(d: ReportData) -> Content | None:
    runs = _probed(d.runs, "ics")
    layers = ics_layers(d)
    if not layers:
        return None
    return Content(
        "For weight layer i at a probed step t, on the step's minibatch B: G = ∇<sub>W<sub>i"
        "</sub></sub>L(θ<sub>t</sub>; B), and G′ the same gradient after layers 1 … i−1 take "
        "this step's update (the optimizer's real update, applied to the earlier layers only). "
        "Top: ‖G − G′‖<sub>2</sub> (ideal 0, log y); bottom: cos(G, G′) (ideal 1). Layers are "
        "numbered among the conv and linear layers (#5 is the same layer with and without BN); "
        "the buttons switch layer. Colour: model; dash: learning rate."
        + d.pooled_text(runs, "one line per setting (every axis but the seed): the median "
                              "over its seeds"),
        fg.ics_figure(layers, "Internal covariate shift (Fig. 3)<br><sup>G = ∇<sub>Wᵢ</sub> L(θ<sub>t</sub>; B), "
                              "G′ = the same after layers 1…i−1 take this step's update; "
                              "ideal ‖G − G′‖₂ = 0, cos = 1</sup>"))


def activation_layers(d: ReportData) -> tuple[dict[int, fg.LayerActivations], list[fg.HeatMap]]:
    """Per layer, every run's mean ± std band; per run and layer, a histogram heat map
    over at most ``steps_per_map`` evenly spaced probed steps (keeps the page small). Pooled
    (``ReportData.pooled``): per setting, the median over its seeds of the mean and of the std,
    and the histogram of all its seeds' values (the mean of their fractions)."""
    runs, legend = _probed(d.runs, "activations"), d.legend
    pooled, dash = d.pooled(runs), _lr_dash(runs)
    bins = max((r.activations.hist.shape[-1] for r in runs), default=1)
    groups = list(seed_groups(runs).values()) if pooled else [[r] for r in runs]
    keep = steps_per_map(sum(len(g[0].activations.layer_index) for g in groups), bins)
    layers: dict[int, fg.LayerActivations] = {}
    maps: list[fg.HeatMap] = []
    for layer in per_layer(runs, lambda r: r.activations):
        index, bands, means = layer.index, [], []
        column = {id(run): col for run, col in layer.columns}
        for group in groups:
            group = [r for r in group if id(r) in column]
            if not group:
                continue
            first = group[0]
            a, col = first.activations, column[id(first)]
            text = d.setting_label(group) if pooled else legend.run_text(first)
            steps = [r.activations.step for r in group]
            step, mean = setting_map(steps, [r.activations.mean[:, column[id(r)]] for r in group])
            _, std = setting_map(steps, [r.activations.std[:, column[id(r)]] for r in group])
            bands.append(fg.BandSeries(f"{text} ± std", legend.color(first),
                                       mean_std_band(step, mean, std)))
            means.append(fg.Line(f"{text} mean", legend.color(first), dash(first), step,
                                 masked(mean)))
            _, hist = setting_map(steps, [r.activations.hist[:, column[id(r)], :] for r in group],
                                  reduce=np.nanmean)
            rows = subsample(len(step), keep)
            hist = hist[rows]
            used = occupied_bins(hist)
            quantiles = hist_quantiles(a.bin_edges, hist, list(QUANTILES.values()))
            maps.append(fg.HeatMap(
                f"{text} · {_layer_title(index, {a.layer[col]})}", index, step[rows],
                bin_centres(a.bin_edges)[used], masked(hist[:, used].T),
                {name: quantiles[:, i] for i, name in enumerate(QUANTILES)}))
        layers[index] = fg.LayerActivations(bands, means)
    return layers, maps


def activation_section(d: ReportData) -> Content | None:
    layers, maps = activation_layers(d)
    if not maps:
        return None
    return Content(
        "Each layer's pre-activation — the output of its normalization (BN, noisy BN, …; the "
        "layer's own output without one), what the ReLU receives — over every sample, unit and "
        "position of the probed step's minibatch, in train mode. Top: mean ± std per run; "
        "bottom: the histogram of the selected run and layer over probed steps (fraction of "
        "values per bin; values beyond the outer bin edges count in the outer bins), with its "
        "5%, 50% and 95% quantiles. The dropdown picks run and layer."
        + d.pooled_text(_probed(d.runs, "activations"),
                        "per setting (every axis but the seed), the median over its seeds of "
                        "the mean and of the std, and the histogram of all its seeds' values"),
        fg.activation_figure(layers, maps, "Activation distributions (Fig. 1c/2)<br><sup>"
                                           "pre-activation (after normalization, before ReLU): "
                                           "mean ± std per run; histogram over steps</sup>"))


# The verdict column's colour (html.STYLE): green, red, and grey for both "not measured
# here" and "too short to judge", which are no verdict.
FINDING_CLASSES = {HOLDS: "holds", FAILS: "fails", TOO_SHORT: "short"}


# More comparisons than this (a large grid: 50 settings x 6 claims is 300 rows), and the
# Findings open on one row per claim, every comparison folded below it.
FINDINGS_UNFOLDED = 12


def findings_html(runs: Sequence[RunData]) -> str:
    found = findings(runs) + spectral_findings(runs)
    families = len({where.family for where, _ in found})
    rows = [(where.text(families), f.claim, f.verdict, f.numbers) for where, found_here in found
            for f in found_here]
    rows += basin_rows(report_slices(runs))  # from `landscape slice`, when there are any
    classes = [FINDING_CLASSES.get(r[2], "unmeasured") for r in rows]
    many = len(found) > FINDINGS_UNFOLDED
    table = table_html(("runs compared", "claim", "verdict", "numbers"), rows, classes,
                       text_columns=4, sortable=many)
    if not many:
        return table
    return (findings_summary(rows) + f"<details><summary>every comparison ({len(found)} of "
            f"them, {len(rows)} rows; sortable, and filtered by the words typed)</summary>"
            f"{table}</details>")


def findings_summary(rows: Sequence[tuple[str, str, str, str]]) -> str:
    """One row per claim: in how many comparisons it holds, does not hold, ... (verdicts of
    ``findings_html``'s rows: (runs compared, claim, verdict, numbers))."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for _, claim, verdict, _ in rows:
        counts[claim][verdict] += 1
    summary, classes = [], []
    for claim, verdicts in counts.items():
        total = sum(verdicts.values())
        summary.append((claim, "; ".join(f"{verdict} in {n} of {total}"
                                         for verdict, n in verdicts.items())))
        judged = {v for v in verdicts if v in (HOLDS, FAILS)}  # one verdict everywhere: coloured
        classes.append(f"{FINDING_CLASSES[judged.pop()]}-everywhere" if len(judged) == 1 else "")
    return table_html(("claim", "verdicts over the comparisons"), summary, classes,
                      text_columns=2)


def sharpness_series(runs: Sequence[RunData], legend: Legend,
                     quantiles: tuple[float, float] = Facets().quantiles,
                     ) -> dict[float, list[fg.BandSeries]]:
    """Per learning rate and pool: beta_eff (solid) and the Hessian's lambda_max (dashed),
    each a seed band (median and quantiles) over seeds."""
    out: dict[float, list[fg.BandSeries]] = {}
    for lr, pools in _by_lr_and_pool(runs, legend).items():
        out[lr] = []
        for group in pools:
            label = legend.pool_label(group[0])
            out[lr].append(_band_over_runs(f"{label} β<sub>eff</sub>", group, legend,
                                           [r.probe.step for r in group],
                                           [r.probe.beta for r in group], "β", quantiles))
            sharp = _band_over_runs(f"{label} λ<sub>max</sub>", group, legend,
                                    [r.curvature.step for r in group],
                                    [r.curvature.lambda_max[:, 0] for r in group], "λ_max",
                                    quantiles)
            out[lr].append(replace(sharp, dash="dash"))
    return out


def sharpness_section(d: ReportData) -> Content | None:
    runs = [r for r in d.runs if r.curvature is not None and len(r.curvature.step)]
    if not runs:
        return None
    references, no_line = stability_references(runs)
    return Content(
        "Dashed bands: λ<sub>max</sub>, the largest eigenvalue of the Hessian of the minibatch "
        "loss at θ<sub>t</sub> (train-mode BN, Lanczos on Hessian-vector products, relative "
        "tolerance 10<sup>−3</sup>); solid: the probe's β<sub>eff</sub> (figure 3) at the "
        "probed steps. On a quadratic, β<sub>eff</sub> = ‖Hg‖/‖g‖ lies between the curvature "
        "along g and the largest |eigenvalue|, which may belong to a negative eigenvalue: "
        "β<sub>eff</sub> above λ<sub>max</sub> means strong negative curvature (or a "
        "non-quadratic step), β<sub>eff</sub> far below it a gradient that avoids the sharpest "
        "direction. " + STABILITY_TEXT.replace("β above", "curvature above")
        + (f" No line for {html.escape(no_line)}: an adaptive optimizer (Adam and its kin) "
           "rescales each coordinate by its own running statistics, so its stability edge is "
           "no fixed multiple of 1/LR and no single line exists." if no_line else ""),
        fg.band_figure_by_lr(sharpness_series(runs, d.legend, d.facets.quantiles),
                             "Sharpness and the edge of stability<br><sup>dashed: λ<sub>max"
                             "</sub>(∇²L); solid: β<sub>eff</sub>; black: stability edge 2/LR "
                             "(SGD), (2 + 2μ)/LR (momentum μ)</sup>", "training step",
                             "curvature", log_y=None, references=references,
                             initial_lr=_initial_lr(runs)))


MAX_MAP_STEPS = 200  # columns of a layer x step heat map (evenly spaced, ends kept)


def _eta_column(run: RunData, multiple: float = 1.0) -> int:
    """The probe's eta closest to ``multiple`` x the run's learning rate."""
    return int(np.argmin(np.abs(run.probe.eta / run.lr - multiple))) if run.lr > 0 else 0


def layer_shares(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    """A run's probed steps and each layer's share of ‖∇L(θ − ηg) − g‖² there (steps, layers),
    at the η closest to 1 × LR."""
    p, col = run.probe, _eta_column(run)
    n = min(len(p.step), len(p.grad_diff_layer))
    squares = p.grad_diff_layer[:n, col, :] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return p.step[:n], masked(squares / squares.sum(axis=1, keepdims=True))


def layer_map(run: RunData, label: str) -> fg.LayerMap:
    steps, share = layer_shares(run)
    keep = subsample(len(steps), MAX_MAP_STEPS)
    return fg.LayerMap(label, steps[keep], list(run.probe.layer), share[keep].T)


def setting_layer_maps(d: ReportData, runs: Sequence[RunData]) -> list[fg.LayerMap]:
    """Per setting (and layer names: a model's own), the median over its seeds of the layer
    shares at the probed steps all of them have."""
    maps = []
    for group in seed_groups(runs, lambda r: (setting_key(r), tuple(r.probe.layer))).values():
        steps, share = setting_map(*zip(*(layer_shares(r) for r in group)))
        keep = subsample(len(steps), MAX_MAP_STEPS)
        eta = group[0].probe.eta[_eta_column(group[0])] / group[0].lr
        maps.append(fg.LayerMap(f"{d.setting_label(group)} · η = {eta:g}×LR", steps[keep],
                                list(group[0].probe.layer), share[keep].T))
    return maps


def layer_split_section(d: ReportData) -> Content | None:
    legend = d.legend
    runs = sorted([r for r in d.runs if r.probe.layer and len(r.probe.grad_diff_layer)],
                  key=lambda r: (r.lr, legend.pool_label(r), r.seed))
    if not runs:
        return None
    maps = setting_layer_maps(d, runs) if d.pooled(runs) else [
        layer_map(run, f"{legend.run_text(run)} · η = {run.probe.eta[_eta_column(run)] / run.lr:g}"
                       "×LR") for run in runs]
    return Content(
        "For each module l owning parameters (conv, linear, BN), at each probed step: its "
        "share ‖∇<sub>l</sub>L(θ − ηg) − g<sub>l</sub>‖² / ‖∇L(θ − ηg) − g‖² of the "
        "gradient predictiveness of figure 2b (the shares add up to 1 over layers), at the "
        "probe's η closest to 1 × LR, from the probe's own gradients. The dropdown picks the "
        "run: VGG-A and VGG-A+BN at one learning rate are next to each other (BN adds its own "
        "rows)." + d.pooled_text(runs, "one map per setting (every axis but the seed): the "
                                       "median over its seeds of each layer's share"),
        fg.layer_map_figure(maps, "Gradient predictiveness by layer<br><sup>share of ‖∇L(θ − ηg)"
                                  " − g‖² per layer, layer × probed step</sup>", "share"))


def weights_section(d: ReportData) -> Content | None:
    runs = [r for r in d.runs if r.weights is not None and len(r.weights.step)]
    if not runs:
        return None
    dash = _lr_dash(runs)
    layers = []
    for layer in per_layer(runs, lambda r: r.weights):
        invariant = {id(run): bool(run.weights.scale_invariant[col]) for run, col in layer.columns}
        top, bottom = (d.lines([RunSeries(run, run.weights.step, masked(
            getattr(run.weights, what)[:, col])) for run, col in layer.columns], dash,
            lambda s: " (scale-invariant)" if invariant[id(s.run)] else "")
            for what in ("norm", "effective_lr"))
        layers.append(fg.LayerPanels(layer.title, [fg.drawn(line) for line in top],
                                     [fg.drawn(line) for line in bottom]))
    return Content(
        "For the weight w of each conv and linear layer, at every step: top ‖w‖<sub>2</sub>, "
        "bottom the effective learning rate LR / ‖w‖². A weight followed by a normalization "
        "(BN: marked scale-invariant) does not change the loss when scaled, L(cw) = L(w), so "
        "its gradient is orthogonal to w and shrinks like 1/‖w‖: a step of LR turns its "
        "direction by about (LR / ‖w‖²)·‖w‖‖∇<sub>w</sub>L‖. Growing norms anneal BN's "
        "effective step on their own; without BN the same numbers are just norms. Layers "
        "are numbered among the conv and linear layers; colour: model, dash: learning rate."
        + d.pooled_text(runs, "one line per setting (every axis but the seed): the median "
                              "over its seeds"),
        fg.layer_lines_figure(layers, "Weight norms and effective learning rate<br><sup>‖w‖ "
                                      "and LR / ‖w‖² per layer, every step</sup>",
                              ("‖w‖₂", "LR / ‖w‖²"), ("‖w‖₂", "LR / ‖w‖²")))


def run_table_html(runs: Sequence[RunData], legend: Legend) -> str:
    """Every run: the summary columns of ``landscape info``, with the other axes the runs
    vary (dropout, batch size, ...) after the seed, and its setting's rank by final test
    loss after the name; sortable by any column."""
    rows = [summarize_run(r) for r in runs]
    axes = [a for a in varying_axes(runs) if a not in ("model", "lr")]
    rank = {id(run): i + 1 for i, cell in enumerate(ranked_cells(grid_cells(runs)))
            for run in cell.runs}
    header = (RUN_TABLE_HEADER[:1] + ("rank",) + RUN_TABLE_HEADER[1:5]
              + tuple(a.replace("_", " ") for a in axes) + RUN_TABLE_HEADER[5:])
    cells = []
    for run, row in zip(runs, rows):
        base = run_table_cells(row)
        values = tuple(value_text(settings(run).get(a)) for a in axes)
        cells.append((legend.name(run), str(rank[id(run)])) + base[1:5] + values + base[5:])
    classes = ["diverged" if row.diverged_step is not None or row.status == "diverged"
               else row.status for row in rows]
    return table_html(header, cells, classes, text_columns=1, sortable=True)




def _facet_series(run: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The faceted figure's quantities of one run: name -> (x, y)."""
    e, p = run.epochs, run.probe
    return {"test loss": (e.epoch, epoch_values(run, "test_loss")),
            "test accuracy": (e.epoch, epoch_values(run, "test_acc")),
            "training loss (epoch mean)": (e.epoch, epoch_values(run, "train_loss")),
            "training accuracy (epoch mean)": (e.epoch, epoch_values(run, "train_acc")),
            "minibatch training loss": (run.steps.step, masked(run.steps.loss)),
            "loss band along the gradient": (p.step, spread_over_eta(p.loss)),
            "gradient predictiveness": (p.step, max_over_eta(p.grad_diff)),
            "β<sub>eff</sub>": (p.step, masked(p.beta))}


# name -> (x title, y title): per epoch, per step or per probed step.
EPOCH_AXIS = "epoch (from 0)"
FACET_AXES = {
    "test loss": (EPOCH_AXIS, "test loss"),
    "test accuracy": (EPOCH_AXIS, "test accuracy"),
    "training loss (epoch mean)": (EPOCH_AXIS, "training loss"),
    "training accuracy (epoch mean)": (EPOCH_AXIS, "training accuracy"),
    "minibatch training loss": ("training step", "L(θ<sub>t</sub>; B<sub>t</sub>)"),
    "loss band along the gradient": ("training step (probed)",
                                     "max<sub>η</sub> L(θ − ηg) − min<sub>η</sub> L(θ − ηg)"),
    "gradient predictiveness": ("training step (probed)", "max<sub>η</sub> ‖∇L(θ − ηg) − g‖₂"),
    "β<sub>eff</sub>": ("training step (probed)", "β<sub>eff</sub>"),
}


def facet_metrics(runs: Sequence[RunData], cells: Sequence[Cell], facets: Facets
                  ) -> tuple[list[fg.FacetMetric], list[str]]:
    """The faceted figure's quantities (those some run has a finite value of) and its panel
    titles: per cell, the seed band of each quantity, coloured by the colour axis, in the
    panel of its panel-axis value, dashed by the other axes the runs vary."""
    axes = grid_axes(runs)
    color_axis, panel_axis = facets.color_axis(), facets.panel
    varying = varying_axes(runs)
    shown = ["model"] + [a for a in varying if a != "model"]
    others = [a for a in varying if a not in (color_axis, panel_axis)]
    colors = fg.axis_colors(color_axis, axes.get(color_axis, [None]))
    combos = sorted({tuple(str(c.settings.get(a)) for a in others) for c in cells})
    panels = ([axis_value_text(panel_axis, v) for v in axes[panel_axis]]
              if panel_axis is not None else [""])
    series = [{id(r): _facet_series(r) for r in c.runs} for c in cells]
    metrics = []
    for name, (x_title, y_title) in FACET_AXES.items():
        lines: dict[str, list[fg.FacetLine]] = defaultdict(list)
        for cell, per_run in zip(cells, series):
            xs = [per_run[id(r)][name][0] for r in cell.runs]
            ys = [per_run[id(r)][name][1] for r in cell.runs]
            band = quantile_band(xs, ys, facets.quantiles)
            if not np.isfinite(band.median).any():
                continue
            s = cell.settings
            combo = tuple(str(s.get(a)) for a in others)
            panel = axis_value_text(panel_axis, s.get(panel_axis)) if panel_axis else ""
            lines[panel].append(fg.FacetLine(
                cell_label(cell, shown), colors.get(s.get(color_axis), fg.OTHER_COLORS[0]),
                fg.LR_DASHES[combos.index(combo) % len(fg.LR_DASHES)], band))
        if lines:
            drawn = [line.band for ls in lines.values() for line in ls]
            log_y = fg.spans_decades([band.median for band in drawn])
            metric = fg.FacetMetric(name, x_title, y_title, log_y, dict(lines))
            if x_title == EPOCH_AXIS:  # whole epochs
                metric = replace(metric, x_ticks=fg.epoch_ticks([band.x for band in drawn]))
            metrics.append(metric)
    return metrics, panels


def facet_section(d: ReportData) -> Content:
    runs, cells, facets = d.runs, d.shown, d.facets
    color_axis = facets.color_axis()
    metrics, panels = facet_metrics(runs, cells, facets)
    others = [a for a in varying_axes(runs) if a not in (color_axis, facets.panel)]
    which = (f"the {len(cells)} best settings by final test loss (--best {facets.best})"
             if facets.best is not None else f"all {len(cells)} settings")
    return Content(
        f"One line per setting (every axis but the seed; seeds pool across files): at each x, "
        f"the median over its runs still finite there, and the band "
        f"{html.escape(facets.band_text())}; one run is drawn as itself, and hover says how "
        f"many runs each point pools (a diverged run drops out where it blew up). Shown: "
        f"{which}. Colour: {color_axis.replace('_', ' ')} (--color); panels: "
        f"{(facets.panel or 'none').replace('_', ' ')} (--panel)"
        + (f"; dash: {', '.join(a.replace('_', ' ') for a in others)}" if others else "")
        + f". {fg.columns_text()} The menu "
        "switches the quantity: per epoch test and training loss and accuracy; per step the "
        "minibatch loss; per probed step the loss band along the gradient (max − min over η "
        "of L(θ − ηg), figure 1b), the gradient predictiveness (max over η of ‖∇L(θ − ηg) − "
        "g‖₂, figure 2b) and β<sub>eff</sub> (figure 3).",
        fg.facet_figure(metrics, panels, "The grid by setting", facets.band_text()))


def provenance_html(sweeps: Sequence[SweepFile]) -> str:
    parts = []
    for sweep in sweeps:
        config = json.dumps(sweep.config, indent=1, sort_keys=True)
        parts.append(f"<h3>{html.escape(str(sweep.path))}</h3>"
                     f"<p>landscape {html.escape(sweep.landscape_version)}, created "
                     f"{html.escape(sweep.created)}; trained with torch "
                     f"{html.escape(str(sweep.config.get('torch_version', '?')))} on "
                     f"{html.escape(str(sweep.config.get('resolved_device', '?')))}</p>"
                     f"<pre>{html.escape(sweep.command or '(no command recorded)')}</pre>"
                     f"<details><summary>config</summary>"
                     f"<pre>{html.escape(config)}</pre></details>")
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    parts.append(f"<p>Report made with {html.escape(versions)}.</p>")
    return "".join(parts)


def findings_section(d: ReportData) -> Content:
    return Content("Computed from the runs (rules: docs/report.md): runs with and without BN at "
                   "one learning rate compared over the probed steps before either stops "
                   "learning (gradient norm, running median over 1% of the steps, below 1% of "
                   f"its start to the end). The paper judges over 15,000 steps: a claim is "
                   f"“too short to judge” until every compared run has {MIN_STEPS:,} training "
                   f"steps and {MIN_PROBES} probed steps while they learn.",
                   body=findings_html(d.runs))


def loss_grid_section(d: ReportData) -> Content:
    return Content(
        "At each training step t, the band is [min, max] over the grid's runs of the "
        "minibatch training loss L(θ<sub>t</sub>; B<sub>t</sub>) (the course "
        "reproductions' view: how sensitive training is to the learning rate). Runs "
        "pool into one band only when every setting but the learning rate and seed "
        "agrees.",
        fg.band_figure(grid_series(d.runs, d.legend, "loss"),
                       "Loss across the LR grid<br><sup>per step: [min, max] over runs "
                       "of L(θ<sub>t</sub>; B<sub>t</sub>)</sup>", "training step",
                       "training loss", log_y=True, smooth=d.smooth))


def loss_probe_section(d: ReportData) -> Content:
    return Content(
        f"At each probed step, the band is [min, max] over η of L(θ − η g), g = ∇L(θ), "
        f"on the step's minibatch, η = {_eta_multiples_text(d.runs)} × LR. The buttons switch "
        f"learning rate.",
        fg.band_figure_by_lr(probe_series(d.runs, d.legend, "loss"),
                             "Loss along the gradient (Fig. 4a)<br><sup>per probed step: "
                             "[min, max] over η of L(θ − η∇L(θ))</sup>", "training step",
                             "loss", log_y=True, smooth=d.smooth,
                             initial_lr=_initial_lr(d.runs)))


def grad_grid_section(d: ReportData) -> Content:
    return Content(
        "At each step, [min, max] over the grid's runs of ‖g<sub>t</sub> − "
        "g<sub>t−1</sub>‖<sub>2</sub>, the change of the gradient between consecutive "
        "steps, on different minibatches: what course reproductions call gradient "
        "predictiveness. The paper's quantity, along the gradient on one minibatch, "
        "is 2b.",
        fg.band_figure(grid_series(d.runs, d.legend, "grad_diff"),
                       "Consecutive-minibatch gradient distance across the LR grid"
                       "<br><sup>per step: [min, max] over runs of ‖g<sub>t</sub> − "
                       "g<sub>t−1</sub>‖<sub>2</sub> (not the paper's gradient "
                       "predictiveness)</sup>", "training step",
                       "‖g<sub>t</sub> − g<sub>t−1</sub>‖<sub>2</sub>", log_y=True,
                       smooth=d.smooth))


def grad_probe_section(d: ReportData) -> Content:
    return Content(
        f"At each probed step, [min, max] over η of ‖∇L(θ − η g) − g‖<sub>2</sub>, "
        f"η = {_eta_multiples_text(d.runs)} × LR, same minibatch.",
        fg.band_figure_by_lr(probe_series(d.runs, d.legend, "grad_diff"),
                             "Gradient predictiveness (Fig. 4b)<br><sup>per probed step: "
                             "[min, max] over η of ‖∇L(θ − ηg) − g‖<sub>2</sub></sup>",
                             "training step", "‖∇L(θ − ηg) − g‖<sub>2</sub>", log_y=True,
                             smooth=d.smooth, initial_lr=_initial_lr(d.runs)))


def beta_section(d: ReportData) -> Content:
    references, no_line = stability_references(d.runs)
    return Content(
        "At each probed step, max over η of ‖∇L(θ − η g) − g‖<sub>2</sub> / ‖η g‖"
        "<sub>2</sub>; with several seeds, their median (line) and "
        + html.escape(d.facets.band_text()) + " (band). " + STABILITY_TEXT
        + (f" No line for {html.escape(no_line)}: the stability edge of an optimizer "
           "other than (heavy-ball) SGD is not a fixed multiple of 1/LR."
           if no_line else ""),
        fg.band_figure_by_lr(beta_series(d.runs, d.legend, d.facets.quantiles),
                             "Effective β-smoothness (Fig. 4c)<br><sup>max over η of "
                             "‖∇L(θ − ηg) − g‖<sub>2</sub> / ‖ηg‖<sub>2</sub>; dashed: "
                             "stability edge 2/LR (SGD), (2 + 2μ)/LR (momentum μ)</sup>",
                             "training step", "β<sub>eff</sub>", log_y=None,
                             smooth=d.smooth, references=references,
                             initial_lr=_initial_lr(d.runs)))


def training_bands(d: ReportData, runs: Sequence[RunData]) -> dict[str, list[fg.FacetLine]]:
    """Per panel of Fig. 1, a seed band per setting (its median and quantiles per epoch)."""
    dash = _lr_dash(runs)
    lines: dict[str, list[fg.FacetLine]] = {}
    for attr in EPOCH_COLUMNS:
        series = [RunSeries(r, r.epochs.epoch, epoch_values(r, attr)) for r in runs]
        lines[attr] = [fg.FacetLine(d.setting_label(p.runs), d.legend.color(p.runs[0]),
                                    dash(p.runs[0]), p.band)
                       for p in pool_series(series, d.facets.quantiles)
                       if np.isfinite(p.band.median).any()]
    return lines


def training_figure(d: ReportData, runs: Sequence[RunData]) -> go.Figure:
    """Fig. 1: a line per run, or a seed band per setting for many runs."""
    title = "Training curves (Fig. 1)<br><sup>colour: model and settings; dash: learning rate"
    x_title = "epoch (0 = the first pass, as in the file)"
    if d.pooled(runs):
        return fg.training_bands_figure(training_bands(d, runs), title + "; median over "
                                        "seeds and their band</sup>", x_title=x_title)
    return fg.training_curves_figure(training_curves(runs, d.legend), title + "</sup>",
                                     x_title=x_title)


def training_section(d: ReportData) -> Content:
    shown = {id(r) for c in d.shown for r in c.runs}
    curve_runs = [r for r in d.runs if id(r) in shown]
    return Content(
        "Per epoch, " + (f"the runs of the {len(d.shown)} best settings by final test "
                         "loss (--best; the run table has every run)"
                         if d.facets.best is not None else "every run")
        + ": training accuracy and loss (means over the epoch's "
        "minibatches, in training mode) and test accuracy and loss (eval mode). "
        + epoch_text(d.runs, d.legend) + d.pooled_text(curve_runs),
        training_figure(d, curve_runs))


def runs_section(d: ReportData) -> Content:
    return Content(
        "Diverged runs are flagged with the step at which the loss stopped being "
        "finite; their non-finite values are masked in every band and marked ✕. "
        "Click a column's header to sort by it; rank: the run's setting among all "
        "settings by final test loss (median over its seeds; a diverged run counts "
        "as infinite).", body=run_table_html(d.runs, d.legend) + provenance_html(d.sweeps))


def spectral_section(parts, d: ReportData) -> Content | None:
    """A section of ``report.spectral``: its (definition, figure), or None."""
    drawn = parts(d.runs, d.legend.color, d.legend.name)
    return None if drawn is None else Content(*drawn)
SLICE_TEXT = ("From <code>landscape slice</code> (Li et al., NeurIPS 2018): the loss of a fixed "
              "evaluation set at θ + a d<sub>1</sub> + b d<sub>2</sub> around a run's saved "
              "weights, each panel titled by its run, slice, direction, normalization and "
              "BatchNorm mode (batch: each evaluation batch's own statistics; running: "
              "re-estimated at every point). ")


def contour_section(d: ReportData) -> Content | None:
    slices = [s for s in report_slices(d.runs) if s.arrays["loss"].ndim == 2]
    if not slices:
        return None
    return Content(SLICE_TEXT + "Every panel on one colour scale (VGG-A and VGG-A+BN at the "
                   "same step and learning rate compare by colour); red: a PCA slice's "
                   "trajectory projected on its plane." + trajectory_text(slices),
                   contour_figure(slices))


def surface_section(d: ReportData) -> Content | None:
    slices = [s for s in report_slices(d.runs) if s.arrays["loss"].ndim == 2]
    return Content(SLICE_TEXT + "The same planes as 3D surfaces (the menu picks one).",
                   surface_figure(slices)) if slices else None


def interpolation_section(d: ReportData) -> Content | None:
    slices = [s for s in report_slices(d.runs) if s.arrays["loss"].ndim == 1]
    return Content(SLICE_TEXT + "1D slices: interpolations from one saved point (a = 0) to "
                   "another (a = 1), and lines along one direction.",
                   line_figure(slices)) if slices else None


# The page, in order: anchor, title, builder, place in the numbering (``section_labels``).
# Adding a figure: a builder (ReportData -> Content, or None when there is nothing to draw),
# a row here, and its row in docs/report.md's table of figures.
SECTIONS = (
    SectionSpec("findings", "Findings: the paper's claims in these runs", findings_section,
                UNNUMBERED),
    SectionSpec("loss-grid", "Loss landscape across the learning-rate grid", loss_grid_section),
    SectionSpec("loss-probe", "Loss landscape along the gradient (Fig. 4a)", loss_probe_section,
                LETTER),
    SectionSpec("grad-grid", "Consecutive-minibatch gradient distance across the learning-rate "
                "grid (not the paper's gradient predictiveness)", grad_grid_section),
    SectionSpec("grad-probe", "Gradient predictiveness along the gradient (Fig. 4b)",
                grad_probe_section, LETTER),
    SectionSpec("layer-split", "Gradient predictiveness by layer: which layers carry it",
                layer_split_section, LETTER),  # files from before the split have none
    SectionSpec("beta", "Effective β-smoothness (Fig. 4c)", beta_section),
    SectionSpec("training", "Training curves (Fig. 1)", training_section),
    SectionSpec("grid", "The grid: median over seeds, by setting", facet_section, LETTER),
    SectionSpec("modes", "Train mode vs eval mode (batch vs running statistics)", mode_section,
                LETTER),  # files from before the modes have none
    SectionSpec("runs", "Runs and provenance", runs_section),
    # The instruments: only when some run recorded them.
    SectionSpec("ics", "Internal covariate shift (Fig. 3)", ics_section),
    SectionSpec("activations", "Activation distributions (Fig. 1c/2)", activation_section),
    SectionSpec("sharpness", "Sharpness and the edge of stability", sharpness_section),
    SectionSpec("weights", "Weight norms and effective learning rate", weights_section),
    # Beyond the paper (report/spectral.py): only when some run recorded them.
    SectionSpec("spectrum", "The Hessian's eigenvalue density (Ghorbani et al. 2019)",
                lambda d: spectral_section(spectral.density_parts, d)),
    SectionSpec("outliers", "Hessian outliers and the gradient in their eigenspace",
                lambda d: spectral_section(spectral.outlier_parts, d), LETTER),
    SectionSpec("layer-curvature", "Curvature by layer (diagonal Hessian blocks)",
                lambda d: spectral_section(spectral.layer_curvature_parts, d)),
    SectionSpec("depth", "Gradients and ranks by layer at initialization (Yang et al. 2019, "
                "Daneshmand et al. 2020)", lambda d: spectral_section(spectral.rank_parts, d)),
    # The landscape's shape: only when some run has slices (`landscape slice`).
    SectionSpec("slices", "The landscape's shape: loss on planes through the weights",
                contour_section),
    SectionSpec("surfaces", "The planes as surfaces", surface_section, LETTER),
    SectionSpec("interpolations", "Interpolations and lines", interpolation_section, LETTER),
)
