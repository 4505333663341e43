"""The report at many runs (issue 15, point 4): seed bands, seeds pooled across files,
facets, best k, the sortable run table, the page's size at 60 runs, and option checks."""

from __future__ import annotations

import html
import json
import os
import re
import time

import numpy as np
import pytest

from landscape.cli import main
from landscape.read import read_sweep
from landscape.report.bands import Band, quantile_band
from landscape.report.build import build_report
from landscape.report.findings import findings
from landscape.report.grid import grid_cells, ranked_cells
from landscape.store import SweepStore

from conftest import add_synthetic_run
from grid_util import add_grid_run, course_grid
from test_report_browser import CHROMIUM, chromium
from test_report_cli import figures, plotly_array, run_cli

nan, inf = np.nan, np.inf

pytestmark = pytest.mark.usefixtures("no_runtime_warnings")  # conftest


# ---- quantile bands on hand-made arrays, against numpy on the finite values directly ----

def direct(table: np.ndarray, quantiles=(0.1, 0.9), min_runs=5):
    """Per column: the finite values, then numpy's quantiles (or min/max below min_runs)."""
    lower, median, upper, count = [], [], [], []
    for column in table.T:
        alive = column[np.isfinite(column)]
        count.append(len(alive))
        if not len(alive):
            lower.append(nan), median.append(nan), upper.append(nan)
            continue
        median.append(float(np.median(alive)))
        if len(alive) >= min_runs:
            lower.append(float(np.quantile(alive, quantiles[0])))
            upper.append(float(np.quantile(alive, quantiles[1])))
        else:
            lower.append(float(alive.min())), upper.append(float(alive.max()))
    return np.array(lower), np.array(median), np.array(upper), np.array(count)


def check_against_direct(band: Band, table: np.ndarray, **kwargs) -> None:
    lower, median, upper, count = direct(table, **kwargs)
    np.testing.assert_allclose(band.lower, lower, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(band.median, median, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(band.upper, upper, rtol=1e-12, equal_nan=True)
    assert band.count.tolist() == count.tolist()


def test_five_seeds_give_the_10_and_90_percent_quantiles_and_the_median():
    rng = np.random.default_rng(0)
    table = rng.lognormal(size=(5, 7))
    x = np.arange(7) * 10
    band = quantile_band([x] * 5, list(table))
    check_against_direct(band, table)
    assert band.lower[0] > table[:, 0].min() and band.upper[0] < table[:, 0].max()  # not min-max
    wide = quantile_band([x] * 5, list(table), quantiles=(0.25, 0.75))
    check_against_direct(wide, table, quantiles=(0.25, 0.75))


def test_two_seeds_give_min_max_and_one_seed_the_line_itself():
    a, b = np.array([1.0, 4.0, 2.0]), np.array([3.0, 2.0, 2.0])
    two = quantile_band([np.arange(3)] * 2, [a, b])
    assert two.lower.tolist() == [1.0, 2.0, 2.0] and two.upper.tolist() == [3.0, 4.0, 2.0]
    assert two.median.tolist() == [2.0, 3.0, 2.0] and two.count.tolist() == [2, 2, 2]
    one = quantile_band([np.arange(3)], [a])
    assert one.lower.tolist() == one.median.tolist() == one.upper.tolist() == a.tolist()


def test_a_diverged_seed_drops_out_and_the_band_falls_back_to_min_max():
    """Five seeds; seed 3 blows up at x = 2 (inf, then NaN), seed 4 stops early: from x = 2
    on, four runs are left and the band is their [min, max], not interpolated quantiles."""
    rng = np.random.default_rng(1)
    table = rng.normal(1.0, 0.3, size=(5, 6))
    table[3, 2], table[3, 3:] = inf, nan
    table[4, 5] = nan
    band = quantile_band([np.arange(6)] * 5, list(table))
    check_against_direct(band, np.where(np.isfinite(table), table, nan))
    assert band.count.tolist() == [5, 5, 4, 4, 4, 3]
    assert band.upper[2] == np.nanmax(np.delete(table[:, 2], 3))  # inf never enters


def test_runs_of_unequal_length_and_a_column_with_nothing_finite():
    xs = [np.array([0, 10, 20]), np.array([0, 10]), np.array([0, 10, 20, 30])]
    ys = [np.array([1.0, nan, 3.0]), np.array([2.0, nan]), np.array([3.0, nan, 5.0, 6.0])]
    band = quantile_band(xs, ys)
    assert band.x.tolist() == [0, 10, 20, 30]
    assert band.count.tolist() == [3, 0, 2, 1]
    assert np.isnan([band.lower[1], band.median[1], band.upper[1]]).all()  # a gap
    assert band.median.tolist()[0] == 2.0 and band.upper[3] == band.lower[3] == 6.0


def test_zero_to_hundred_is_min_max_and_bad_quantiles_are_refused():
    table = np.arange(10.0).reshape(5, 2)
    band = quantile_band([np.arange(2)] * 5, list(table), quantiles=(0.0, 1.0))
    assert band.lower.tolist() == [0.0, 1.0] and band.upper.tolist() == [8.0, 9.0]
    with pytest.raises(ValueError, match="quantiles"):
        quantile_band([np.arange(2)], [np.ones(2)], quantiles=(0.9, 0.1))
    empty = quantile_band([], [])
    assert len(empty) == 0 and empty.median.shape == (0,)


def test_a_coarsened_band_keeps_its_envelope():
    x = np.arange(10)
    band = Band(x, np.array([5., 4, 3, nan, 1, 2, 3, 4, 5, 6]), np.arange(10.0) + 10,
                np.ones(10, int))
    coarse = band.coarsened(3)  # blocks of 4: 0-3, 4-7, 8-9
    assert coarse.x.tolist() == [0, 4, 8]
    assert coarse.lower.tolist() == [3.0, 1.0, 5.0] and coarse.upper.tolist() == [13.0, 17.0, 19.0]
    assert band.coarsened(10) is band


# ---- seeds pooled across files; old files (no dropout, "SGD") pool with new ones ----

def _store(path, command):
    return SweepStore(path, config={}, command=command)


def test_seeds_of_one_setting_pool_across_files_into_one_band(tmp_path):
    a, b = tmp_path / "seeds01.h5", tmp_path / "seeds234.h5"
    store = _store(a, "seeds 0 1")
    for seed in (0, 1):  # a file from before the dropout axis, optimizer "SGD"
        add_grid_run(store, model="vgg_a_bn", lr=0.1, seed=seed, steps=60, probe_every=20,
                     steps_per_epoch=10, dropout=None, optimizer="SGD",
                     final_test_loss=1.0 + seed)
    store = _store(b, "seeds 2 3 4")
    for seed in (2, 3, 4):
        add_grid_run(store, model="vgg_a_bn", lr=0.1, seed=seed, steps=60, probe_every=20,
                     steps_per_epoch=10, dropout=0.0, optimizer="sgd",
                     final_test_loss=1.0 + seed)
    runs = read_sweep(a).runs + read_sweep(b).runs
    assert len(grid_cells(runs)) == 1  # one setting, five seeds
    page = build_report([read_sweep(a), read_sweep(b)])
    data, layout = figures(page)["fig-grid"]
    shown = [t for t in data if t.get("visible", True) is not False]  # the first quantity
    assert layout["updatemenus"][0]["buttons"][0]["label"] == "test loss"
    [median] = [t for t in shown if t["name"] == "VGG-A+BN (5 seeds)"]
    test_loss = np.array([r.epochs.test_loss for r in runs])
    np.testing.assert_allclose(plotly_array(median["y"]), np.median(test_loss, axis=0), rtol=1e-6)
    assert plotly_array(median["customdata"]).tolist() == [5] * test_loss.shape[1]
    [fill] = [t for t in shown if t["name"] == "VGG-A+BN (5 seeds) band"]
    upper = finite(plotly_array(fill["y"]))[:test_loss.shape[1]]
    np.testing.assert_allclose(upper, np.quantile(test_loss, 0.9, axis=0), rtol=1e-4)


def finite(values: np.ndarray) -> np.ndarray:
    """A fill polygon's values without the NaN that separate its shapes."""
    return values[np.isfinite(values)]


def test_band_option_changes_the_quantiles(tmp_path, capsys):
    path = course_grid(tmp_path / "grid.h5", models=("vgg_a",), lrs=(0.1,), dropouts=(0.0,),
                       steps=40, probe_every=20, steps_per_epoch=10)
    out = tmp_path / "minmax.html"
    assert run_cli(capsys, "plot", path, "-o", out, "--band", "0,100")[0] == 0
    data, _ = figures(out.read_text(encoding="utf-8"))["fig-grid"]
    [fill] = [t for t in data if t["name"].endswith("band") and t.get("visible", True)]
    runs = read_sweep(path).runs
    test_loss = np.array([r.epochs.test_loss for r in runs])
    upper = finite(plotly_array(fill["y"]))[:test_loss.shape[1]]
    np.testing.assert_allclose(upper, test_loss.max(axis=0), rtol=1e-4)
    assert "min–max" in out.read_text(encoding="utf-8")


# ---- facets, best k, the run table ----

@pytest.fixture(scope="module")
def grid60(tmp_path_factory):
    """60 runs: cnn, cnn_bn x 3 learning rates x dropout 0, 0.4 x 5 seeds; 2,000 steps,
    a probe every 20 steps, 20 epochs (a course grid at realistic lengths)."""
    return course_grid(tmp_path_factory.mktemp("grid60") / "grid60.h5")


@pytest.fixture(scope="module")
def grid60_page(grid60, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid60-page") / "grid60.html"
    assert main(["plot", str(grid60), "-o", str(out), "--panel", "dropout", "--color", "lr"]) == 0
    return out


def test_panels_follow_the_panel_axis_and_colours_the_colour_axis(grid60_page):
    page = grid60_page.read_text(encoding="utf-8")
    data, layout = figures(page)["fig-grid"]
    titles = [a["text"] for a in layout["annotations"]]
    assert titles[:2] == ["dropout 0", "dropout 0.4"]
    medians = [t for t in data if not t["name"].endswith(" band")
               and t.get("visible", True) is not False]
    assert len(medians) == 12  # 2 models x 3 LRs x 2 dropouts, five seeds each
    for trace in medians:
        panel = {"0": "x", "0.4": "x2"}[re.search(r"dropout ([0-9.]+)", trace["name"]).group(1)]
        assert trace.get("xaxis", "x") == panel, trace["name"]
    by_lr = {}
    for trace in medians:
        lr = re.search(r"LR ([0-9.e-]+)", trace["name"]).group(1)
        by_lr.setdefault(lr, set()).add(trace["line"]["color"])
    assert all(len(colors) == 1 for colors in by_lr.values())  # one colour per LR
    assert len({c for colors in by_lr.values() for c in colors}) == 3
    assert all("(5 seeds)" in t["name"] for t in medians)


def test_run_table_has_every_run_and_sorts(grid60, grid60_page):
    page = grid60_page.read_text(encoding="utf-8")
    table = re.search(r'<table class="sortable">(.*?)</table>', page, re.S).group(1)
    header = [html.unescape(h) for h in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)]
    assert header[:6] == ["run", "rank", "model", "norm", "lr", "seed"] and "dropout" in header
    rows = re.findall(r"<tr class=[^>]*>(.*?)</tr>", table, re.S)
    names = [html.unescape(re.search(r"<td[^>]*>(.*?)</td>", r).group(1)) for r in rows]
    assert sorted(names) == sorted(r.name for r in read_sweep(grid60).runs) and len(names) == 60
    assert "table.sortable" in page  # the sorting script


def test_best_k_picks_the_lowest_final_test_losses(tmp_path, capsys):
    """Six settings with chosen final test losses (two seeds each); one seed of the best
    setting diverges, which sinks that setting (median of 2 with an infinity)."""
    path = tmp_path / "best.h5"
    store = _store(path, "best")
    finals = {(0.1, 0.0): 0.5, (0.1, 0.4): 0.9, (0.05, 0.0): 0.7, (0.05, 0.4): 0.6,
              (0.01, 0.0): 1.5, (0.01, 0.4): 0.4}
    for (lr, dropout), final in finals.items():
        for seed in (0, 1):
            diverge = 45 if (lr, dropout) == (0.01, 0.4) and seed == 1 else None
            add_grid_run(store, model="vgg_a", lr=lr, seed=seed, dropout=dropout, steps=60,
                         probe_every=20, steps_per_epoch=10, final_test_loss=final + 0.01 * seed,
                         diverge_at=diverge)
    runs = read_sweep(path).runs
    ranked = [(c.settings["lr"], c.settings["dropout"]) for c in ranked_cells(grid_cells(runs))]
    assert ranked == [(0.1, 0.0), (0.05, 0.4), (0.05, 0.0), (0.1, 0.4), (0.01, 0.0), (0.01, 0.4)]
    out = tmp_path / "best.html"
    assert run_cli(capsys, "plot", path, "-o", out, "--best", "3")[0] == 0
    page = out.read_text(encoding="utf-8")
    data, _ = figures(page)["fig-grid"]
    medians = {t["name"] for t in data if not t["name"].endswith(" band")}
    assert medians == {"VGG-A, LR 0.1, dropout 0 (2 seeds)",
                       "VGG-A, LR 0.05, dropout 0.4 (2 seeds)", "VGG-A, LR 0.05, dropout 0 (2 seeds)"}
    training, _ = figures(page)["fig-training"]
    drawn = {(float(m.group(1)), int(m.group(2))) for t in training
             if (m := re.search(r"LR ([0-9.]+) seed (\d)", t["name"]))}
    assert len(drawn) == 4 and {lr for lr, _ in drawn} == {0.1, 0.05}  # 3 settings, 2 seeds
    assert "the runs of the 3 best settings by final test loss" in page
    table = re.search(r'<table class="sortable">(.*?)</table>', page, re.S).group(1)
    assert len(re.findall(r"<tr class=", table)) == 12  # the table keeps every run


@pytest.mark.parametrize("args, message", [
    (["--band", "90,10"], "--band 90,10: need 0 <= LOW < HIGH <= 100"),
    (["--band", "10"], "--band 10: give two percentages LOW,HIGH"),
    (["--band", "ten,90"], "--band ten,90: give two percentages LOW,HIGH"),
    (["--band", "10,120"], "need 0 <= LOW < HIGH <= 100"),
    (["--color", "dropuot"], "--color dropuot: not an axis of these runs; choose one of: "),
    (["--panel", "seed"], "--panel seed: seeds are pooled into each setting's band"),
    (["--panel", "model"], "--panel model is also the colour axis"),
    (["--color", "lr", "--panel", "lr"], "--panel lr is also the colour axis"),
    (["--best", "0"], "--best must be a whole number >= 1, got 0"),
    (["--best", "two"], "'two' is not a valid integer"),
])
def test_bad_plot_options_exit_2_with_one_line_and_write_nothing(diverged_sweep, tmp_path, capsys,
                                                                args, message):
    out = tmp_path / "never.html"
    code, stdout, err = run_cli(capsys, "plot", diverged_sweep, "-o", out, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and not out.exists()


def test_the_axes_named_in_a_colour_error_are_the_runs_axes(diverged_sweep, tmp_path, capsys):
    code, _, err = run_cli(capsys, "plot", diverged_sweep, "--color", "nope", "-o",
                           tmp_path / "never.html")
    assert code == 2
    axes = err.split("choose one of: ")[1].strip().split(", ")
    assert {"model", "lr", "dropout", "optimizer", "batch_size"} <= set(axes)
    assert "seed" not in axes and "norm" not in axes


# ---- one optimizer spelled two ways ----

def test_findings_and_the_stability_edge_read_the_optimizer_in_any_case(tmp_path):
    """Newer files say optimizer "sgd", older ones "SGD": both are plain SGD."""
    path = tmp_path / "lower.h5"
    store = _store(path, "lower-case optimizer")
    add_synthetic_run(store, "vgg_a", 0.1, 40, optimizer="sgd")
    add_synthetic_run(store, "vgg_a_bn", 0.1, 40, optimizer="sgd")
    [(lr, found)] = findings(read_sweep(path).runs)
    beta = next(f for f in found if f.claim.startswith("effective β"))
    assert beta.verdict != "not measured here", beta.numbers


# ---- size and load time of a 60-run report ----

MAX_REPORT_BYTES = 10_000_000


def test_a_60_run_report_stays_under_10_mb(grid60, grid60_page):
    """Measured when written: 6.5 MB for this grid (plotly.js alone is 4.8 MB; 7.1 MB before
    section 4b and the display reductions)."""
    assert len(read_sweep(grid60).runs) == 60
    size = grid60_page.stat().st_size
    assert size < MAX_REPORT_BYTES, f"{size / 1e6:.1f} MB"


# Opt-in: a wall-clock measurement on a shared machine is not a default test.
LOAD_TIMING = os.environ.get("LANDSCAPE_BROWSER_TIMING") == "1"
LOAD_PROBE = """<script>window.addEventListener("load", () => {
  const divs = [...document.querySelectorAll(".plotly-graph-div")];
  const out = document.createElement("pre"); out.id = "timing";
  out.textContent = JSON.stringify({load_ms: performance.now(), figures: divs.length,
    drawn: divs.filter(d => d.classList.contains("js-plotly-plot")).length});
  document.body.appendChild(out);
});</script>"""


@pytest.fixture(scope="module")
def settings60_page(tmp_path_factory):
    """60 settings of one seed each (2 models x 3 LRs x 5 dropouts x 2 batch sizes): 60 lines
    in section 4b instead of 12 bands, the heavier page for a browser."""
    folder = tmp_path_factory.mktemp("settings60")
    path = course_grid(folder / "settings60.h5", dropouts=(0.0, 0.2, 0.4, 0.6, 0.8),
                       batch_sizes=(128, 256), seeds=(0,))
    out = folder / "settings60.html"
    assert main(["plot", str(path), "-o", str(out)]) == 0
    return out


@pytest.mark.skipif(CHROMIUM is None or not LOAD_TIMING,
                    reason="opt-in: LANDSCAPE_BROWSER_TIMING=1 and a chromium binary")
@pytest.mark.parametrize("which", ["grid60_page", "settings60_page"])
def test_a_60_run_report_loads_in_chromium_in_under_5_s(which, request, tmp_path):
    """From navigation to the load event (plotly.js parsed, every figure drawn), best of 3."""
    page_path = request.getfixturevalue(which)
    assert page_path.stat().st_size < MAX_REPORT_BYTES
    page = page_path.read_text(encoding="utf-8").replace("</body>", LOAD_PROBE + "</body>", 1)
    timed = tmp_path / "timed.html"
    timed.write_text(page, encoding="utf-8")
    loads = []
    for attempt in range(3):
        started = time.perf_counter()
        dom = chromium("--window-size=1400,1000", "--dump-dom", timed.as_uri(),
                       user_data=tmp_path / f"profile-{attempt}")
        wall = time.perf_counter() - started
        check = json.loads(re.search(r'<pre id="timing">(.*?)</pre>', dom.stdout, re.S).group(1))
        assert check["drawn"] == check["figures"] == 8
        loads.append(check["load_ms"] / 1000)
        print(f"load event {loads[-1]:.2f} s, chromium process {wall:.2f} s")
    assert min(loads) < 5.0, loads


SORT_PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const table = document.querySelector("table.sortable");
  const column = [...table.tHead.rows[0].cells].findIndex(th => th.textContent === "test loss");
  const read = () => [...table.tBodies[0].rows].map(r => r.cells[column].textContent);
  const before = read();
  table.tHead.rows[0].cells[column].click();
  const up = read();
  table.tHead.rows[0].cells[column].click();
  const out = document.createElement("pre"); out.id = "sorted";
  out.textContent = JSON.stringify({before, up, down: read()});
  document.body.appendChild(out);
}, 300));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary; .ci/run installs Debian's "
                                             "`chromium` (apt-get install -y chromium)")
def test_run_table_sorts_by_a_clicked_column_in_chromium(diverged_sweep, tmp_path, capsys):
    out = tmp_path / "table.html"
    assert run_cli(capsys, "plot", diverged_sweep, "-o", out)[0] == 0
    probed = tmp_path / "probed.html"
    probed.write_text(out.read_text(encoding="utf-8").replace("</body>", SORT_PROBE + "</body>"),
                      encoding="utf-8")
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri(),
                   user_data=tmp_path / "profile")
    found = re.search(r'<pre id="sorted">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    sorted_ = json.loads(html.unescape(found.group(1)))
    numbers = sorted(float(v) for v in sorted_["before"] if v != "-")
    missing = [v for v in sorted_["before"] if v == "-"]
    assert sorted_["up"] == [f"{v:.4g}" for v in numbers] + missing  # "-" (none) last
    assert sorted_["down"] == [f"{v:.4g}" for v in numbers[::-1]] + missing
