"""A sweep file as tidy pandas tables: ``landscape.read.to_frames`` and ``landscape export``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landscape.cli import main
from landscape.read import read_sweep, to_frames

from conftest import copy_sweep


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_to_frames_gives_tidy_tables_with_every_run_attribute(tiny_sweep):
    sweep, frames = read_sweep(tiny_sweep), to_frames(tiny_sweep)
    # no ics/activations here; probe_layers: the probe's split by layer, one row per
    # run x probed step x layer x eta
    assert set(frames) == {"runs", "steps", "probes", "epochs", "probe_layers"}
    assert len(frames["probe_layers"]) == sum(r.probe.grad_diff_layer.size for r in sweep.runs)
    attrs = set(sweep.runs[0].attrs) - {"seconds", "loss"}  # columns of the tables too
    for name, frame in frames.items():
        assert {"run", "run_seconds", "run_loss"} | attrs <= set(frame.columns), name
    steps, probes, epochs = frames["steps"], frames["probes"], frames["epochs"]
    assert len(frames["runs"]) == len(sweep.runs)
    assert len(steps) == sum(len(r.steps.step) for r in sweep.runs)
    assert len(probes) == sum(r.probe.loss.size for r in sweep.runs)
    assert len(epochs) == sum(len(r.epochs.epoch) for r in sweep.runs)
    for run in sweep.runs:
        rows = steps[steps["run"] == run.name]
        assert (rows["lr"] == run.lr).all() and (rows["model"] == run.model).all()
        assert (rows["run_seconds"] == run.seconds).all()
        for field in ("step", "epoch", "loss", "grad_norm", "grad_diff", "beta_consecutive"):
            np.testing.assert_array_equal(rows[field].to_numpy(), getattr(run.steps, field))
        rows = probes[probes["run"] == run.name]
        k = len(run.probe.eta)
        np.testing.assert_array_equal(rows["loss"].to_numpy(), run.probe.loss.reshape(-1))
        np.testing.assert_array_equal(rows["eta"].to_numpy(),
                                      np.tile(run.probe.eta, len(run.probe.step)))
        np.testing.assert_array_equal(rows["step"].to_numpy(), np.repeat(run.probe.step, k))
        np.testing.assert_array_equal(rows["beta"].to_numpy(), np.repeat(run.probe.beta, k))
        rows = epochs[epochs["run"] == run.name]
        np.testing.assert_array_equal(rows["test_acc"].to_numpy(), run.epochs.test_acc)
        np.testing.assert_array_equal(rows["seconds"].to_numpy(), run.epochs.seconds)
    # what a pandas user does first: mean final loss per model and learning rate
    assert steps.groupby(["model", "lr"])["loss"].mean().shape == (4,)


def test_to_frames_has_ics_and_activation_tables_when_the_runs_do(instrumented_sweep):
    sweep, frames = read_sweep(instrumented_sweep), to_frames(instrumented_sweep)
    run = sweep.runs[0]
    ics, acts, hists = frames["ics"], frames["activations"], frames["activation_histograms"]
    n, layers = run.ics.l2.shape
    assert len(ics) == len(sweep.runs) * n * layers
    rows = ics[ics["run"] == run.name]
    np.testing.assert_array_equal(rows["l2"].to_numpy(), run.ics.l2.reshape(-1))
    assert rows["layer"].tolist() == list(run.ics.layer) * n
    assert rows["layer_index"].tolist() == run.ics.layer_index.tolist() * n
    n, layers, bins = run.activations.hist.shape
    assert len(acts) == len(sweep.runs) * n * layers
    assert len(hists) == len(sweep.runs) * n * layers * bins
    sums = hists.groupby(["run", "step", "layer"])["fraction"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    rows = hists[hists["run"] == run.name]
    np.testing.assert_array_equal(rows["fraction"].to_numpy(), run.activations.hist.reshape(-1))
    assert (rows["bin_high"] - rows["bin_low"]).round(12).unique().tolist() == [0.25]


def test_export_writes_csv_tables_next_to_the_file(tiny_sweep, tmp_path, capsys):
    sweep = copy_sweep(tiny_sweep, tmp_path / "sweep.h5")
    code, out, err = run_cli(capsys, "export", sweep)
    assert code == 0, err
    folder = tmp_path / "sweep-tables"
    names = ("runs", "steps", "probes", "epochs", "probe_layers")
    assert out.splitlines() == [f"wrote {folder / f'{n}.csv'}" for n in names]
    frames = to_frames(sweep)
    for name in names:
        written = pd.read_csv(folder / f"{name}.csv")
        assert list(written.columns) == list(frames[name].columns)
        assert len(written) == len(frames[name])
    steps = pd.read_csv(folder / "steps.csv")
    np.testing.assert_array_equal(steps["loss"].to_numpy(), frames["steps"]["loss"].to_numpy())


def test_export_never_overwrites_unless_asked(tiny_sweep, tmp_path, capsys):
    folder = tmp_path / "tables"
    assert run_cli(capsys, "export", tiny_sweep, "-o", folder)[0] == 0
    (folder / "probes.csv").write_text("keep me")
    code, out, err = run_cli(capsys, "export", tiny_sweep, "-o", folder)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "probes.csv" in err and "--overwrite" in err and out == ""
    assert (folder / "probes.csv").read_text() == "keep me"
    assert run_cli(capsys, "export", tiny_sweep, "-o", folder, "--overwrite")[0] == 0
    assert len(pd.read_csv(folder / "probes.csv")) == len(to_frames(tiny_sweep)["probes"])


def test_export_parquet_round_trips(tiny_sweep, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", tiny_sweep, "--format", "parquet", "-o", tmp_path)
    assert code == 0, err
    frames = to_frames(tiny_sweep)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{name}.parquet"), frame)


def test_export_parquet_without_pyarrow_says_what_to_install(tiny_sweep, tmp_path):
    # pyarrow made unimportable, as in an install without it (sys.modules[name] = None)
    code = ("import sys; sys.modules['pyarrow'] = None; sys.modules['fastparquet'] = None; "
            "from landscape.cli import main; "
            f"sys.exit(main(['export', {str(tiny_sweep)!r}, '--format', 'parquet', "
            f"'-o', {str(tmp_path / 'out')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "pyarrow" in done.stderr and "Traceback" not in done.stderr
    assert not any((tmp_path / "out").glob("*.parquet"))


@pytest.mark.parametrize("args, message", [
    (["missing.h5"], "no such file"),
    (["not-a-sweep.h5"], "not an HDF5 file"),
    (["TINY", "--format", "xml"], "'xml' is not one of"),
    (["TINY", "-o", "not-a-sweep.h5"], "is a file, not a folder"),
])
def test_export_bad_input_is_one_line_exit_2(args, message, tiny_sweep, tmp_path, capsys,
                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("not-a-sweep.h5").write_text("hello")
    code, out, err = run_cli(capsys, "export", *[str(tiny_sweep) if a == "TINY" else a
                                                 for a in args])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["not-a-sweep.h5"]
