"""`landscape slice`: a run's saved weights sliced, written into its file with its settings."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import one_cpu_thread
from landscape.cli import main
from landscape.store import runs_dir
from landscape.store.slices import read_slices
from landscape.train import SweepConfig, run_sweep
from landscape.train.snapshots import load_snapshot
from landscape.train.slicing import evaluation_batches, run_weights
from resume_util import tiny_data

CONFIG = SweepConfig(models=("mlp", "mlp_bn"), lrs=(0.1, 0.2), steps=12, batch_size=32,
                     probe_every=6, dataset="cifar10-mini", width=0.125, device="cpu",
                     save_weights_every=3)
RUN = "mlp_bn-lr0.1-seed0"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("slice") / "sweep.h5"
    with one_cpu_thread():
        run_sweep(CONFIG, str(out), data=tiny_data())
    return out


def slice_args(sweep, *more):
    return ["slice", str(sweep), "--run", RUN, "--samples", "64", "--device", "cpu", *more]


def test_random_slice_written_with_its_settings(sweep, capsys):
    assert main(slice_args(sweep, "--grid", "3x4", "--range=-0.5:0.5", "--id", "r1")) == 0
    assert "r1: random slice of mlp_bn-lr0.1-seed0 at step 12" in capsys.readouterr().out
    with h5py.File(sweep, "r", locking=False) as f:  # through the index's link, with plain h5py
        group = f[f"runs/{RUN}/slices/r1"]
        assert group["loss"].shape == (3, 4) and group["accuracy"].shape == (3, 4)
        attrs = dict(group.attrs)
    assert (attrs["normalization"], attrs["bn_params"], attrs["bn_mode"]) == ("filter", "zero",
                                                                              "batch")
    assert attrs["center_step"] == 12 and attrs["samples"] == 64 and attrs["batch_size"] == 32
    assert attrs["direction_seeds"] == "[0, 1]"
    # the centre is the saved model's loss on the evaluation set (train-mode BN)
    weights = run_weights(str(sweep), RUN)
    model = weights.cell.model("mlp_bn", tiny_data())
    model.load_state_dict(load_snapshot(runs_dir(sweep) / f"{RUN}.weights/step-00000012.safetensors"))
    model.train()
    with torch.no_grad():
        batches = evaluation_batches(tiny_data(), 64, 32)
        want = sum(float(torch.nn.functional.cross_entropy(model(x), y)) * len(y)
                   for x, y in batches) / 64
    stored = read_slices(sweep)[0]
    assert stored.arrays["loss"][1, 1:3].tolist() != []  # a 3x4 grid: alpha=0 at row 1
    alpha, beta = stored.arrays["alpha"], stored.arrays["beta"]
    assert alpha[1] == 0 and 0 not in beta
    assert (stored.run, stored.id) == (RUN, "r1")
    centre = main(slice_args(sweep, "--grid", "3x3", "--range=-1:1", "--id", "c")) == 0
    assert centre
    middle = [s for s in read_slices(sweep) if s.id == "c"][0].arrays["loss"][1, 1]
    assert middle == pytest.approx(want, rel=1e-6)


def test_pca_slice_stores_the_trajectory(sweep):
    assert main(slice_args(sweep, "--direction", "pca", "--grid", "3x3", "--id", "p")) == 0
    stored = [s for s in read_slices(sweep) if s.id == "p"][0]
    arrays = stored.arrays
    assert arrays["trajectory_step"].tolist() == [0, 3, 6, 9, 12]
    assert arrays["trajectory_coords"].shape == (5, 2)
    assert np.allclose(arrays["trajectory_coords"][-1], 0, atol=1e-4)  # the end is the centre
    assert 0 < arrays["explained_variance"].sum() <= 1 + 1e-9
    # at the end point the plane's loss is the real one
    assert arrays["trajectory_plane_loss"][-1] == pytest.approx(arrays["trajectory_loss"][-1],
                                                                rel=1e-5)
    assert stored.attrs["normalization"] == "none"


def test_interpolation_between_two_runs(sweep):
    assert main(slice_args(sweep, "--direction", "interpolate", "--to",
                           "mlp_bn-lr0.2-seed0", "--grid", "5", "--range=0:1", "--id", "i",
                           "--bn-mode", "running")) == 0
    stored = [s for s in read_slices(sweep) if s.id == "i"][0]
    assert stored.arrays["loss"].shape == (5,)
    assert stored.attrs["to"] == "mlp_bn-lr0.2-seed0@12"
    assert stored.attrs["bn_mode"] == "running"


@pytest.mark.parametrize("args, message", [
    (["--direction", "sideways"], "--direction must be one of"),
    (["--grid", "3xa"], "--grid takes N or NxM"),
    (["--direction", "pca", "--normalization", "filter"], "use --normalization none"),
    (["--direction", "interpolate"], "--to STEP|RUN|RUN@STEP goes with"),
    (["--at", "4"], "saved no weights at step 4"),
    (["--run", "nope"], "has no run 'nope'"),
])
def test_bad_slice_options_are_one_line(sweep, capsys, args, message):
    before = sweep.with_suffix(".h5.runs").stat().st_mtime_ns, \
        (runs_dir(sweep) / f"{RUN}.h5").read_bytes()
    assert main(slice_args(sweep, *args)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert (runs_dir(sweep) / f"{RUN}.h5").read_bytes() == before[1]


def test_read_only_sweep_gets_a_file_of_its_own(sweep, tmp_path):
    copy_dir = tmp_path / "ro"
    shutil.copytree(sweep.parent, copy_dir)
    ro = copy_dir / sweep.name
    for path in [ro, *runs_dir(ro).iterdir()]:
        os.chmod(path, 0o444)
    if os.access(ro, os.W_OK):
        pytest.skip("running as a user who writes read-only files (root)")
    assert main(slice_args(ro, "--grid", "3", "--id", "x")) == 0
    own = ro.with_suffix(".slices.h5")
    assert [s.id for s in read_slices(own)] == ["x"]


def test_slices_keep_the_run_readable(sweep):
    from landscape.store import read_sweep
    runs = {r.name: r for r in read_sweep(sweep).runs}
    assert len(runs[RUN].steps.loss) == 12
    assert copy.copy(runs[RUN].attrs)["weights_dir"].endswith(f"{RUN}.weights")


def test_loss_doubling_distance_on_a_parabola():
    from landscape.report.slicefigs import loss_doubling_distance
    alpha = np.linspace(-2, 2, 9)
    assert loss_doubling_distance(alpha, 1 + alpha ** 2) == pytest.approx(1.0)
    assert loss_doubling_distance(alpha, 1 + 0.1 * alpha ** 2) == float("inf")


def test_report_draws_the_slices_and_the_basin_finding(sweep, tmp_path):
    from landscape.report.build import findings_html, write_report
    from landscape.report.slicefigs import basin_widths, report_slices
    for run in ("mlp-lr0.1-seed0", RUN):
        args = ["slice", str(sweep), "--run", run, "--samples", "64", "--device", "cpu",
                "--grid", "5x5", "--range=-2:2", "--id", "basin"]
        assert main(args) == 0
    page = write_report([str(sweep)], tmp_path / "r.html")
    text = page.read_text()
    assert 'id="slices"' in text and 'id="surfaces"' in text and 'id="interpolations"' in text
    from landscape.store import read_sweep
    runs = read_sweep(sweep).runs
    basins = {s.run: min(basin_widths(s)) for s in report_slices(runs) if s.id == "basin"}
    rows = findings_html(runs)
    assert "BatchNorm widens the basin" in rows
    assert f"{basins['mlp-lr0.1-seed0']:.3g} without BN, {basins[RUN]:.3g} with BN" in rows


AS_NOBODY = r"""
import os, sys
from landscape.cli import main
warm, ro_file, ro_dir, cwd = sys.argv[1:5]
slice_args = ["--run", "mlp_bn-lr0.1-seed0", "--samples", "64", "--device", "cpu", "--grid", "3x3"]
# As root first, on a writable copy: everything a slice imports is imported (the
# interpreter's own folder is root's alone).
assert main(["slice", warm, *slice_args, "--id", "warm"]) == 0
os.setgid(65534)
os.setuid(65534)  # nobody, really and effectively: os.access answers for it
os.chdir(cwd)
assert not os.access(ro_file, os.W_OK) and not os.access(os.path.dirname(ro_dir), os.W_OK)
for sweep in (ro_file, ro_dir):
    assert main(["slice", sweep, *slice_args, "--id", "ro"]) == 0
"""


def test_read_only_sweeps_slices_are_reported_as_nobody(sweep, monkeypatch):
    """Sliced as the user nobody (a subprocess of root's that drops to it): a sweep whose
    files are read-only gets SWEEP.slices.h5 beside it, one whose folder is read-only too
    gets it in the working folder, and the sweeps' files are untouched; `landscape plot`
    (here, as root: plotly's script is in root's folder) draws the slices from either."""
    import subprocess
    import sys
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop to the user nobody")
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        top = Path(top)
        os.chmod(top, 0o755)
        for name in ("warm", "ro_file", "ro_dir"):
            shutil.copytree(sweep.parent, top / name / "sweep")
        (top / "cwd").mkdir(mode=0o777)
        os.chmod(top / "cwd", 0o777)
        before = {}
        for name in ("ro_file", "ro_dir"):
            for path in (top / name).rglob("*"):
                os.chmod(path, 0o555 if path.is_dir() else 0o444)
                before[path] = None if path.is_dir() else path.read_bytes()
        os.chmod(top / "ro_file" / "sweep", 0o777)  # its folder writable, its files not
        args = [str(top / n / "sweep" / sweep.name) for n in ("warm", "ro_file", "ro_dir")]
        done = subprocess.run([sys.executable, "-c", AS_NOBODY, *args, str(top / "cwd")],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        beside = top / "ro_file" / "sweep" / "sweep.slices.h5"
        in_cwd = top / "cwd" / "sweep.slices.h5"
        assert [s.id for s in read_slices(beside)] == ["ro"] == [s.id for s in read_slices(in_cwd)]
        monkeypatch.chdir(top / "cwd")
        for sweep_path, report in zip(args[1:], ("file.html", "dir.html")):
            assert main(["plot", sweep_path, "-o", str(top / "cwd" / report)]) == 0
            page = (top / "cwd" / report).read_text()
            label = "mlp_bn-lr0.1-seed0 · ro: random"  # in the figure's JSON: raw with orjson
            assert 'id="slices"' in page and (label in page  # installed, else "\u00b7"
                                              or json.dumps(label)[1:-1] in page)
        assert all(p.read_bytes() == b for p, b in before.items() if b is not None)
        for path in top.rglob("*"):  # so that the folder can be removed
            os.chmod(path, 0o777)
