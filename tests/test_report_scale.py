"""The report at cluster scale (issue 29): decimation that keeps every spike, pooled seed bands
equal to numpy's quantiles, the stall rule from counts equal to the running median, runs chosen
by pattern and by settings, and a 1,000-run page under its size bound, drawn, sorted and
filtered in real Chromium."""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from landscape.report.bands import line_points, nan_quantiles
from landscape.report.build import build_report
from landscape.report.phases import _trailing_median_below
from landscape.report.pooled import RUN_LINES, RunSeries, pool_series
from landscape.report.select import Selection
from landscape.store import pack, read_sweep

from test_report_browser import CHROMIUM, chromium
from test_report_cli import figures, plotly_array, run_cli

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "report_bench.py"
spec = importlib.util.spec_from_file_location("report_bench", BENCH)
report_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report_bench)


def spiky_series(n: int = 15_000, columns: int = 500, seed: int = 0):
    """Noise with one spike up or down in every 7th pixel column (never two in one), and a
    stretch of NaN: (x, y, spike indices)."""
    rng = np.random.default_rng(seed)
    x = np.arange(n) * 3.0
    y = np.exp(rng.normal(0, 0.1, n))
    width = n / columns
    spikes = np.array([int((c + rng.uniform(0.2, 0.8)) * width) for c in range(0, columns, 7)])
    y[spikes] *= np.where(np.arange(len(spikes)) % 2, 30.0, 1 / 30)
    y[4115:4190] = np.nan  # inside pixel columns 137-139, which have no spike
    return x, y, spikes


def columns_of(x: np.ndarray, columns: int) -> np.ndarray:
    return np.minimum(((x - x[0]) / (x[-1] - x[0]) * columns).astype(int), columns - 1)


def test_line_points_keep_every_spike_and_each_columns_extremes():
    x, y, spikes = spiky_series()
    keep = line_points(x, y, 500)
    assert set(spikes) <= set(keep.tolist())  # every spike, up and down, at its x and height
    assert keep[0] == 0 and keep[-1] == len(x) - 1 and np.all(np.diff(keep) > 0)
    assert len(keep) <= 5 * 500 and np.isnan(y[keep]).any()  # the gap stays a gap
    column, kept_column = columns_of(x, 500), columns_of(x[keep], 500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for c in range(500):  # against numpy on the raw series, column by column
            raw, drawn = y[column == c], y[keep][kept_column == c]
            np.testing.assert_array_equal([np.nanmin(drawn), np.nanmax(drawn)],
                                          [np.nanmin(raw), np.nanmax(raw)])
    # every local extreme of the raw series that is its column's extreme is drawn
    interior = np.flatnonzero((y[1:-1] > y[:-2]) & (y[1:-1] > y[2:])) + 1
    column_max = {c: np.nanmax(y[column == c]) for c in np.unique(column[interior])}
    assert all(i in set(keep.tolist()) for i in interior if y[i] == column_max[column[i]])
    assert len(line_points(x[:1000], y[:1000], 500)) == 1000  # few points: all of them


def test_nan_quantiles_equal_numpys_bit_for_bit():
    rng = np.random.default_rng(3)
    for runs, n in ((1, 7), (5, 300), (10, 1000), (37, 50)):
        table = rng.normal(size=(runs, n))
        table[rng.random(table.shape) < 0.3] = np.nan
        table[:, :3] = np.nan  # columns with nothing finite
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanquantile(table, [0.1, 0.5, 0.9], axis=0)
        np.testing.assert_array_equal(nan_quantiles(table, (0.1, 0.5, 0.9)), expected)


def test_a_pooled_settings_band_is_numpys_quantiles_over_its_seeds(tmp_path):
    sweep = report_bench.write_big_sweep(tmp_path / "s.h5", runs=20, steps=400, probe_every=20,
                                         epochs=4, seeds=10)
    runs = read_sweep(sweep).runs
    settings = pool_series([RunSeries(r, r.steps.step, r.steps.loss) for r in runs], (0.1, 0.9))
    assert [len(s.runs) for s in settings] == [10, 10]  # two settings, ten seeds each
    for setting in settings:
        loss = np.array([r.steps.loss for r in setting.runs])
        np.testing.assert_array_equal(setting.band.median, np.median(loss, axis=0))
        np.testing.assert_array_equal(setting.band.lower, np.quantile(loss, 0.1, axis=0))
        np.testing.assert_array_equal(setting.band.upper, np.quantile(loss, 0.9, axis=0))
        assert set(setting.band.count) == {10}


def test_the_stall_rule_from_counts_equals_the_running_median():
    rng = np.random.default_rng(5)
    for trial in range(400):
        n, window = int(rng.integers(1, 90)), int(rng.integers(1, 14))
        values = rng.choice([0.5, 1.0, 2.0, 3.0], n) if trial % 2 else rng.random(n) * 2
        for special in (np.nan, np.inf, -np.inf):
            values[rng.random(n) < 0.08] = special
        threshold = 1.0 if trial % 3 else 1.5
        padded = np.concatenate([np.full(window - 1, np.nan), values])
        windows = np.lib.stride_tricks.sliding_window_view(padded, window)
        median = np.full(n, np.nan)  # the rule's definition, window by window
        for i, w in enumerate(windows):
            if np.isfinite(w).any():
                median[i] = np.nanmedian(w)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(_trailing_median_below(values, window, threshold),
                                          median < threshold)


def test_selection_by_pattern_and_by_settings(tmp_path, capsys):
    sweep = report_bench.write_big_sweep(tmp_path / "s.h5", runs=200, steps=100, probe_every=20,
                                         epochs=2, seeds=2)
    names = [r.name for r in read_sweep(sweep).runs]
    chosen = Selection.parse(["vgg_a-lr0.02-*"], ["weight_decay=0|0.0001,seed=1"])
    read = read_sweep(sweep, lambda name, attrs: chosen.matches(name, attrs)).runs
    assert [r.name for r in read] == ["vgg_a-lr0.02-wd0-seed1", "vgg_a-lr0.02-wd0.0001-seed1"]
    assert {r.name for r in read_sweep(sweep, Selection.parse(["*seed0"]).matches).runs} == {
        n for n in names if n.endswith("seed0")}
    out = tmp_path / "few.html"
    code, _, err = run_cli(capsys, "plot", sweep, "-o", out, "--where", "lr=0.02,model=vgg_a",
                           "--runs", "*wd0-*,*wd1e-05-*")
    assert code == 0, err
    page = out.read_text(encoding="utf-8")
    assert "— 4 runs from 1 file(s)" in page and "Runs chosen by --runs *wd0-*,*wd1e-05-* " \
                                                  "--where lr=0.02,model=vgg_a" in page
    for args, message in ((("--where", "wd=0"), "no run has the setting wd"),
                          (("--runs", "resnet*"), "--runs resnet* selects none of the 200 runs"),
                          (("--where", "lr"), "expected KEY=VALUE"),
                          (("--points", "0"), "--points must be a whole number >= 1 or 'all'"),
                          (("--run-lines", "0"), "--run-lines must be a whole number >= 1")):
        code, _, err = run_cli(capsys, "plot", sweep, "-o", tmp_path / "no.html", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "no.html").exists()


def test_points_all_draws_every_step_and_webgl_beyond_5000(tmp_path, capsys):
    sweep = report_bench.write_big_sweep(tmp_path / "s.h5", runs=2, steps=6000, probe_every=100,
                                         epochs=2, seeds=2)
    for points, expect in (("500", "scatter"), ("all", "scattergl")):
        out = tmp_path / f"{points}.html"
        assert run_cli(capsys, "plot", sweep, "-o", out, "--runs", "*seed0",
                       "--points", points)[0] == 0
        data, _ = figures(out.read_text(encoding="utf-8"))["fig-loss-grid"]
        [edge] = [t for t in data if t["name"].endswith(" max")]
        assert edge["type"] == expect
        assert len(plotly_array(edge["y"])) == (6000 if points == "all" else 500)


def thousand_runs(folder: Path, steps: int = 2500) -> Path:
    """A finished sweep of 1,000 runs with every figure's point count of a 15,000-step sweep
    (per-step series beyond 4 points per column, 148 probes, 40 epochs), built in seconds:
    20 runs through the store's writer, packed, and each copied under 50 settings' names."""
    source = report_bench.write_big_sweep(folder / "src.h5", runs=20, steps=steps,
                                          probe_every=17, epochs=40, seeds=10)
    one = pack(source, folder / "thousand.h5")
    with h5py.File(one, "r+") as f:
        runs = f["runs"]
        sources = list(runs)
        for i, (model, lr, wd, seed) in enumerate(report_bench.settings(1000)):
            name = f"{model}-lr{lr:g}-wd{wd:g}-seed{seed}"
            if name not in runs:
                f.copy(runs[sources[i % len(sources)]], runs, name=name)
            runs[name].attrs.update(model=model, norm="batch" if model.endswith("_bn") else "none",
                                    lr=lr, weight_decay=wd, seed=seed)
    return one


LOAD_CHECK = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const figures = [...document.querySelectorAll(".plotly-graph-div")];
  const drawn = figures.filter(d => d.classList.contains("js-plotly-plot")).length;
  const filter = document.querySelector("#runs input.table-filter");
  const rows = [...document.querySelector("#runs table.sortable").tBodies[0].rows];
  filter.value = "vgg_a_bn-lr0.1- seed3";
  filter.dispatchEvent(new Event("input"));
  setTimeout(() => {
    const shown = rows.filter(r => !r.hidden).map(r => r.cells[0].textContent);
    const th = [...document.querySelectorAll("#runs table.sortable thead th")]
      .find(h => h.textContent === "test loss");
    th.click();
    const order = [...document.querySelector("#runs table.sortable").tBodies[0].rows]
      .map(r => [r.cells[0].textContent, r.cells[th.cellIndex].textContent]);
    const out = document.createElement("pre");
    out.id = "scale-check";
    out.textContent = JSON.stringify({figures: figures.length, drawn, rows: rows.length, shown,
      count: document.querySelector("#runs span.table-count").textContent, order});
    document.body.appendChild(out);
  }, 400);
}, 300));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary; .ci/run installs it")
def test_a_1000_run_page_is_pooled_under_25_mb_and_its_run_table_sorts_and_filters(tmp_path):
    sweep = thousand_runs(tmp_path)
    sweeps = [read_sweep(sweep)]
    assert len(sweeps[0].runs) == 1000
    page = build_report(sweeps)
    assert len(page.encode()) <= 25 * 2**20
    assert f"1000 runs, more than {RUN_LINES}: one line per setting" in page
    # 50 comparisons (BN vs not at 10 learning rates x 5 weight decays): one row per claim
    # first, the 300 rows folded below
    assert "every comparison (50 of them, 300 rows" in page
    assert re.search(r"BN narrows the loss band along the gradient</td><td[^>]*>[a-z ]+ in \d+ "
                     r"of 50", page)
    data = figures(page)
    for fig_id, (traces, _) in data.items():  # no trace beyond 5 points per pixel column
        for trace in traces:
            for axis in ("x", "y"):
                if isinstance(trace.get(axis), (dict, list)):
                    assert len(plotly_array(trace[axis])) <= 5 * 500 + 2 * 500, (fig_id, trace["name"])
    [training, _] = data["fig-training"]
    assert sum(t.get("showlegend", True) is not False and t["mode"] == "lines"
               for t in training) == 100  # one line per setting, not per run
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", LOAD_CHECK + "</body>", 1), encoding="utf-8")
    done = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri(),
                    user_data=tmp_path / "profile", timeout=240)
    check = json.loads(re.search(r'<pre id="scale-check">(.*?)</pre>', done.stdout)
                       .group(1).replace("&quot;", '"'))
    assert check["drawn"] == check["figures"] and check["rows"] == 1000
    assert sorted(check["shown"]) == sorted(f"vgg_a_bn-lr0.1-wd{wd:g}-seed3"
                                            for wd in report_bench.WEIGHT_DECAYS)
    assert check["count"].strip() == "5 of 1000 rows"
    runs = {r.name: r for r in sweeps[0].runs}
    assert sorted(name for name, _ in check["order"]) == sorted(runs)
    final = [float(text) for _, text in check["order"]]
    assert final == sorted(final)  # sorted by final test loss, ascending
    for name, text in check["order"]:
        assert float(text) == pytest.approx(runs[name].epochs.test_loss[-1], rel=1e-3)
