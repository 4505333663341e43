"""`landscape plot` and `landscape info` end to end, on real and synthetic sweep files."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.probes import StepResolutionWarning
from landscape.probes.landscape import _warn_of_step_resolution
from landscape.read import read_sweep
from landscape.report.summary import model_label
from landscape.store import SweepStore

from conftest import TINY_LRS, TINY_STEPS, add_synthetic_run, copy_sweep, run_tiny_sweep

FIGURES = 9  # 1a, 1b, 2a, 2b, 2c (by layer), 3, 4, 4b (the grid by setting), 4c (train vs eval mode)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def figure_divs(page: str) -> list[str]:
    return re.findall(r'<div id="(fig-[\w-]+)" class="plotly-graph-div"', page)


def figures(page: str) -> dict[str, tuple[list, dict]]:
    """{div id: (data, layout)} of the page's figures, decoded from their JSON."""
    decoder, found = json.JSONDecoder(), {}
    for call in re.finditer(r'Plotly\.newPlot\(\s*"(fig-[\w-]+)",\s*', page):
        data, end = decoder.raw_decode(page, call.end())
        layout, _ = decoder.raw_decode(page, re.compile(r",\s*").match(page, end).end())
        found[call.group(1)] = (data, layout)
    return found


def figure_strings(page: str) -> list[str]:
    """Every string in the page's figures (data and layout).

    plotly escapes non-ASCII characters (η) or not depending on whether ``orjson`` is
    installed, so the page's raw text is not what a test should match.
    """
    strings = []

    def collect(value):
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    for data, layout in figures(page).values():
        collect(data)
        collect(layout)
    return strings


def test_read_sweep_gives_typed_runs(tiny_sweep):
    sweep = read_sweep(tiny_sweep)
    assert sweep.command == "pytest tiny_sweep" and sweep.config["steps"] == TINY_STEPS
    assert {(r.model, r.lr) for r in sweep.runs} == {(m, lr) for m in ("vgg_a", "vgg_a_bn")
                                                      for lr in TINY_LRS}
    run = sweep.runs[0]
    assert run.status == "completed" and run.steps.loss.shape == (TINY_STEPS,)
    assert run.probe.loss.shape == (2, 4) and run.probe.step.tolist() == [0, 4]
    assert np.allclose(run.probe.eta / run.lr, [0.5, 1, 2, 4])
    assert len(run.epochs.test_acc) == 1


def test_plot_writes_one_offline_page_next_to_the_input(tiny_sweep, tmp_path, capsys):
    sweep = copy_sweep(tiny_sweep, tmp_path / "sweep.h5")
    code, out, err = run_cli(capsys, "plot", sweep)
    assert code == 0, err
    page = (tmp_path / "sweep.html").read_text(encoding="utf-8")
    assert out.strip() == f"wrote {tmp_path / 'sweep.html'}"
    assert len(figure_divs(page)) == FIGURES
    assert page.count(get_plotlyjs()) == 1  # plotly.js inlined, exactly once
    own_markup = page.replace(get_plotlyjs(), "")  # plotly.js mentions its CDN in strings
    assert "src=" not in own_markup and not re.search(r"https?://", own_markup)  # offline
    for definition in ("L(θ − η g)", "‖∇L(θ − η g) − g‖", "‖η g‖", "2/LR", "Fig. 1"):
        assert definition in page
    assert "vgg_a_bn-lr0.1-seed0" in page and "pytest tiny_sweep" in page  # table, provenance


def test_plot_refuses_to_overwrite_without_the_flag(tiny_sweep, tmp_path, capsys):
    report = tmp_path / "reports" / "r.html"
    assert run_cli(capsys, "plot", tiny_sweep, "-o", report)[0] == 0
    report.write_text("keep me")
    code, out, err = run_cli(capsys, "plot", tiny_sweep, "-o", report)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--overwrite" in err
    assert report.read_text() == "keep me"
    assert run_cli(capsys, "plot", tiny_sweep, "-o", report, "--overwrite")[0] == 0
    assert len(figure_divs(report.read_text(encoding="utf-8"))) == FIGURES


def test_plot_combines_files_and_marks_a_diverged_run(tiny_sweep, diverged_sweep, tmp_path,
                                                      capsys):
    copy = copy_sweep(tiny_sweep, tmp_path / "again.h5")  # the same runs: counted once
    report = tmp_path / "all.html"
    code, _, err = run_cli(capsys, "plot", tiny_sweep, copy, diverged_sweep, "-o", report,
                           "--smooth", "3")
    assert code == 0, err
    page = report.read_text(encoding="utf-8")
    assert "8 runs from 3 file(s)" in page
    assert "again.h5: 4 runs identical in provenance to runs of" in page
    assert "again:vgg_a-lr0.05-seed0" not in page
    assert "vgg_a-lr0.5-seed0" in page and "diverged@23" in page
    assert "loss not finite from step 23 (masked)" in page  # the cross on the loss band
    figure_text = "\n".join(figure_strings(page))
    assert "not finite for η = 2" in figure_text  # the probe's blown-up largest step size
    assert "smoothed over 3" in page
    assert "LR 0.5" in figure_text  # the selector's button
    assert "2/LR = 4" in figure_text  # beta's reference for LR 0.5


def plotly_array(value) -> np.ndarray:
    """A trace's x or y as numpy: plotly writes numpy arrays as typed arrays (base64)."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def test_report_numbers_epochs_as_the_file_does(diverged_sweep, tmp_path, capsys):
    report = tmp_path / "epochs.html"
    assert run_cli(capsys, "plot", diverged_sweep, "-o", report)[0] == 0
    data, layout = figures(report.read_text(encoding="utf-8"))["fig-training"]
    runs = read_sweep(diverged_sweep).runs
    for run in runs:
        label = f"{model_label(run.model)} LR {run.lr:g} seed {run.seed}"
        curves = [trace for trace in data if trace["name"].startswith(label)]
        assert len(curves) == 4  # accuracy and loss, train and test
        for trace in curves:
            np.testing.assert_array_equal(plotly_array(trace["x"]), run.epochs.epoch)
    assert layout["xaxis"]["title"]["text"] == "epoch (0 = the first pass, as in the file)"


def test_report_bands_of_a_diverged_run_stay_finite(diverged_sweep):
    from landscape.report.build import Legend, grid_series, probe_series
    runs = read_sweep(diverged_sweep).runs
    legend = Legend.of(runs)
    no_bn = [s for s in grid_series(runs, legend, "loss") if s.label.startswith("VGG-A:")][0]
    assert np.isfinite(no_bn.band.upper).all()  # inf masked, the other run carries on
    assert [m.x for m in no_bn.markers] == [23.0]
    grad = [s for s in grid_series(runs, legend, "grad_diff") if s.label.startswith("VGG-A:")]
    assert [m.x for m in grad[0].markers] == [23.0]  # NaN at step 0 is not a divergence
    probe = probe_series(runs, legend, "loss")[0.5][0]
    assert probe.markers and np.isfinite(probe.band.upper).all()


def test_smooth_must_be_positive(tiny_sweep, tmp_path, capsys):
    code, _, err = run_cli(capsys, "plot", tiny_sweep, "-o", tmp_path / "x.html", "--smooth", "0")
    assert code == 2 and err.startswith("error: --smooth") and err.count("\n") == 1
    assert not (tmp_path / "x.html").exists()


def test_info_summarizes_a_file(tiny_sweep, capsys):
    code, out, err = run_cli(capsys, "info", tiny_sweep)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("4 runs (4 completed)")
    assert lines[1] == "command: pytest tiny_sweep"
    assert lines[2].split()[:6] == ["run", "model", "norm", "lr", "seed", "status"]
    row = next(line for line in lines if line.startswith("vgg_a_bn-lr0.1-seed0")).split()
    assert row[1:6] == ["VGG-A+BN", "batch", "0.1", "0", "completed"]
    assert row[6:9] == [str(TINY_STEPS), "2", "1"]  # steps, probes, epochs
    assert 0.0 <= float(row[10]) <= 1.0  # final test accuracy
    assert len(lines) <= 24  # one screen


def test_info_flags_the_diverged_step(diverged_sweep, capsys):
    code, out, _ = run_cli(capsys, "info", diverged_sweep)
    assert code == 0
    assert "(3 completed, 1 diverged)" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if line.startswith("vgg_a-lr0.5-seed0")).split()
    assert row[5] == "diverged@23" and row[6] == "24"


def _text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not an HDF5 file\n")
    return path


def _other_hdf5(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 2)))
    return path


def _truncated(tmp_path, tiny_sweep):
    path = tmp_path / "cut.h5"
    data = Path(tiny_sweep).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make_bad, message", [
    (lambda tmp, _: _text_file(tmp), "is not an HDF5 file"),
    (lambda tmp, _: _other_hdf5(tmp), "not a landscape sweep"),
    (_truncated, "unreadable or truncated"),
    (lambda tmp, _: tmp / "missing.h5", "no such file"),
    (lambda tmp, _: tmp, "is a directory"),
])
@pytest.mark.parametrize("command", ["info", "plot"])
def test_refuses_what_is_not_a_landscape_file(command, make_bad, message, tmp_path, tiny_sweep,
                                              capsys):
    bad = make_bad(tmp_path, tiny_sweep)
    args = [command, bad] + (["-o", tmp_path / "out.html"] if command == "plot" else [])
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out.html").exists()


def test_exit_code_and_single_line_from_the_real_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "landscape", "info", str(_text_file(tmp_path))],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


# Another process writes like SweepStore.flush: open, append one row to every column, close.
WRITER = """
import sys, time, h5py
path, rows = sys.argv[1], int(sys.argv[2])
with h5py.File(path, "a") as f:  # hold the file (and its lock) while the reader starts
    print("holding", flush=True)
    time.sleep(1.0)
for _ in range(rows):
    with h5py.File(path, "a") as f:
        for column in f["runs/vgg_a_bn-lr0.1-seed0/steps"].values():
            n = column.shape[0]
            column.resize(n + 1, axis=0)
            column[n] = n
    time.sleep(0.01)
print("done", flush=True)
"""


def test_info_and_plot_on_a_file_being_written(tmp_path, capsys):
    path = tmp_path / "live.h5"
    store = SweepStore(path, config={"lrs": [0.1]}, command="landscape run (live)")
    add_synthetic_run(store, "vgg_a", 0.1, 30)
    store.run("vgg_a_bn-lr0.1-seed0", eta=[0.05, 0.1, 0.2, 0.4], model="vgg_a_bn", norm="batch",
              lr=0.1, seed=0)  # created and flushed, status running, no rows yet

    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "(1 completed, 1 running)" in out
    assert run_cli(capsys, "plot", path, "-o", tmp_path / "live-1.html")[0] == 0

    rows = 200
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rows)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "holding"
        seen = []
        while writer.poll() is None or not seen:  # read over and over while it writes
            code, out, err = run_cli(capsys, "info", path)
            assert code == 0, err
            row = next(line for line in out.splitlines() if line.startswith("vgg_a_bn"))
            assert row.split()[5] == "running"
            seen.append(int(row.split()[6]))
        assert writer.wait(timeout=60) == 0  # never blocked by the reads
    finally:
        writer.kill()
    assert seen == sorted(seen) and len(seen) >= 2  # consistent, growing snapshots
    final = next(line for line in run_cli(capsys, "info", path)[1].splitlines()
                 if line.startswith("vgg_a_bn"))
    assert final.split()[6] == str(rows)
    assert run_cli(capsys, "plot", path, "-o", tmp_path / "live-2.html")[0] == 0


def test_reader_ignores_unknown_groups(tiny_sweep, tmp_path):
    path = Path(copy_sweep(tiny_sweep, tmp_path / "extra.h5"))
    with h5py.File(path, "a") as f:
        name = next(iter(f["runs"]))
        f.create_group(f"runs/{name}/ics").create_dataset("layer5", data=np.ones(3))
        f["runs"].create_dataset("not-a-run", data=np.ones(2))
    sweep = read_sweep(path)
    assert len(sweep.runs) == 4 and sweep.runs[0].steps.loss.shape == (TINY_STEPS,)


def test_read_sweep_raises_landscape_error(tmp_path):
    with pytest.raises(LandscapeError, match="not an HDF5 file"):
        read_sweep(_text_file(tmp_path))


# --- ICS (Fig. 3) and activation distributions (Fig. 1c/2) -----------------------------

def test_read_sweep_reads_the_instrument_groups(instrumented_sweep, tiny_sweep):
    for run in read_sweep(instrumented_sweep).runs:
        ics, acts = run.ics, run.activations
        assert ics.step.tolist() == [0, 3] and ics.layer_index.tolist() == [5, 10]
        assert len(ics.layer) == 2 and all(isinstance(n, str) for n in ics.layer)
        assert ics.l2.shape == ics.cosine.shape == ics.grad_norm.shape == (2, 2)
        assert np.all(ics.l2 >= 0) and np.all(np.abs(ics.cosine) <= 1 + 1e-9)
        assert acts.step.tolist() == [0, 3] and acts.layer_index.tolist() == list(range(1, 12))
        assert acts.bin_edges.shape == (81,) and acts.hist.shape == (2, 11, 80)
        assert acts.mean.shape == acts.std.shape == (2, 11)
        assert np.allclose(acts.hist.sum(axis=-1), 1)
    assert all(r.ics is None and r.activations is None for r in read_sweep(tiny_sweep).runs)


def test_plot_adds_the_ics_and_activation_sections(instrumented_sweep, tiny_sweep, tmp_path,
                                                   capsys):
    report = tmp_path / "instrumented.html"
    code, _, err = run_cli(capsys, "plot", instrumented_sweep, tiny_sweep, "-o", report)
    assert code == 0, err
    page = report.read_text(encoding="utf-8")
    assert figure_divs(page)[-2:] == ["fig-ics", "fig-activations"]
    assert len(figure_divs(page)) == FIGURES + 2
    for text in ("Internal covariate shift (Fig. 3)", "G′", "cos(G, G′)", "ideal",
                 "layer #5", "layer #10", "Activation distributions (Fig. 1c/2)", "before ReLU",
                 "5%, 50% and 95% quantiles"):
        assert text in page, text
    assert len(page) < 8_000_000  # plotly.js (~4.7 MB) plus the figures

    code, out, _ = run_cli(capsys, "info", instrumented_sweep)
    header, *rows = out.splitlines()[2:]
    assert header.split()[-2:] == ["ics", "acts"] and [r.split()[-2:] for r in rows] == [["2", "2"]] * 2


def test_instrument_sections_are_omitted_without_probed_steps(tiny_sweep, tmp_path, capsys):
    """Absent groups (the probe was off) and empty ones (n = 0) give no section."""
    path = Path(copy_sweep(tiny_sweep, tmp_path / "empty-groups.h5"))
    with h5py.File(path, "a") as f:
        run = f["runs"][next(iter(f["runs"]))]
        ics = run.create_group("ics")
        ics.create_dataset("step", shape=(0,), dtype=np.int64)
        ics.create_dataset("layer", data=["features.15"], dtype=h5py.string_dtype())
        ics.create_dataset("layer_index", data=[5])
        for name in ("l2", "cosine", "grad_norm"):
            ics.create_dataset(name, shape=(0, 1), dtype=np.float64)
    del run, ics  # the run's own file (an external link's target) closes with its last object
    runs = read_sweep(path).runs
    assert runs[0].ics.l2.shape == (0, 1) and runs[0].ics.layer == ("features.15",)
    assert runs[0].activations is None and runs[1].ics is None
    code, _, err = run_cli(capsys, "plot", path, "-o", tmp_path / "r.html")
    assert code == 0, err
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(figure_divs(page)) == FIGURES and "Internal covariate shift" not in page
    assert "Activation distributions" not in page
    assert "ics" not in run_cli(capsys, "info", tiny_sweep)[1].splitlines()[2].split()


def test_ics_and_activation_figures_switch_layer_and_run(instrumented_sweep):
    from landscape.report import figures as fg
    from landscape.report.build import ReportData, activation_layers, ics_layers

    data = ReportData.of(read_sweep(instrumented_sweep).runs)
    layers = ics_layers(data)
    assert [layer.title.split(" (")[0] for layer in layers] == ["layer #5", "layer #10"]
    assert [line.color for line in layers[0].l2] == ["#1f77b4", "#d62728"]  # blue, red
    fig = fg.ics_figure(layers, "ICS")
    assert fig.layout.yaxis.type == "log"
    layer_menu = fig.layout.updatemenus[0]
    assert [b.label for b in layer_menu.buttons] == [layer.title for layer in layers]
    first, second = (b.args[0]["visible"] for b in layer_menu.buttons)
    assert any(first) and any(second) and not any(a and b for a, b in zip(first, second))

    by_layer, maps = activation_layers(data)
    assert sorted(by_layer) == list(range(1, 12)) and len(maps) == 2 * 11
    assert all(m.z.shape == (len(m.y), 2) for m in maps)  # bins kept x probed steps
    fig = fg.activation_figure(by_layer, maps, "acts")
    assert len(fig.layout.updatemenus[0].buttons) == len(maps)
    assert sum(t.type == "heatmap" and t.visible for t in fig.data) == 1

    for empty in (fg.ics_figure([], "ICS"), fg.activation_figure({}, [], "acts")):
        assert "no data" in empty.layout.annotations[-1].text


def test_a_learning_rate_below_float32_resolution_gives_nan_probes_and_working_reports(
        tmp_path, capsys, no_runtime_warnings):
    """At lr 1e-12 theta - eta g == theta in float32: the file holds NaN grad_diff and beta (not
    the 0 and rounding noise it held before), one warning says so, info and plot still work."""
    out = tmp_path / "tiny-lr.h5"
    _warn_of_step_resolution.cache_clear()
    with pytest.warns(StepResolutionWarning, match="float64"):
        run_tiny_sweep(out, "pytest lr 1e-12", lrs=(1e-12,), steps=4, probe_every=2)
    with h5py.File(out, "r") as f:
        for run in f["runs"].values():
            assert np.isnan(run["probe/grad_diff"][:]).all()
            assert np.isnan(run["probe/beta"][:]).all()
            assert np.isfinite(run["probe/loss"][:]).all()
    code, text, err = run_cli(capsys, "info", out)
    assert code == 0, err
    assert all(line.split()[-2] == "-" for line in text.splitlines() if "-lr1e-12-" in line)
    code, _, err = run_cli(capsys, "plot", out)
    assert code == 0, err
    assert len(figure_divs((tmp_path / "tiny-lr.html").read_text(encoding="utf-8"))) == FIGURES
