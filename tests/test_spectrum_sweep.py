"""The spectrum, per-layer curvature and rank instruments and --depth in a sweep: stored, read
back, exported, equal to direct calls, validated; training untouched."""

import copy

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import one_cpu_thread
from landscape import data as data_mod
from landscape.cli import main
from landscape.models import build_model, weight_layers
from landscape.probes import SpectrumSettings, hessian_batches, spectrum
from landscape.read import read_sweep
from landscape.store.frames import to_frames
from landscape.train import SweepConfig, run_sweep
from landscape.train.hessian_instruments import SPECTRUM_GRID, SPECTRUM_TOP, hessian_sets

SETTINGS = dict(models=("mlp", "mlp_bn"), lrs=(0.05,), steps=3, batch_size=32,
                dataset="cifar10-mini", width=0.125, device="cpu", probe_every=2)
HESSIAN = dict(spectrum_every=2, spectrum_iterations=12, hessian_samples=64, hessian_repeats=2,
               hessian_bn="both", layer_curvature_every=2, layer_trace_samples=2, rank_every=2,
               depth=3)


def tiny_data():
    full = data_mod.load_dataset("cifar10-mini")
    return data_mod.ImageData(full.name, full.x_train[:256], full.y_train[:256],
                              full.x_test[:64], full.y_test[:64], full.mean, full.std)


def sweep(out, **settings):
    with one_cpu_thread():
        run_sweep(SweepConfig(**{**SETTINGS, **settings}), str(out), command="test",
                  data=tiny_data())
    return out


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    return sweep(tmp_path_factory.mktemp("spectrum") / "s.h5", **HESSIAN)


def test_groups_are_stored_and_read_back(sweep_file):
    for run in read_sweep(sweep_file).runs:
        assert run.attrs["depth"] == 3 and run.name.endswith("seed0")  # one depth: no name part
        s = run.spectrum
        assert s.step.tolist() == [0] * 4 + [2] * 4 and s.repeat.tolist() == [0, 0, 1, 1] * 2
        assert s.bn_mode == ("batch", "running") and s.bn.tolist() == [0, 1] * 4
        assert s.samples == 64 and s.top.shape == (8, SPECTRUM_TOP)
        assert s.ritz_values.shape == (8, 1, 12) and s.density.shape == (8, SPECTRUM_GRID)
        np.testing.assert_allclose(np.nansum(s.ritz_weights, -1), 1.0, rtol=1e-9)
        assert (s.hvps == 12).all() and (s.outliers >= 0).all()
        c, r = run.layer_curvature, run.ranks
        assert c.layer == r.layer == ("layers.1", "layers.5", "layers.9", "layers.13")
        assert c.step.tolist() == r.step.tolist() == [0, 2]
        assert c.scale_invariant.tolist() == [run.model == "mlp_bn"] * 3 + [False]
        np.testing.assert_allclose(c.scaled_lambda, c.lambda_max * c.weight_norm_sq)
        assert (r.rank <= r.size).all() and (r.effective_rank <= r.size + 1e-9).all()


def test_step_zero_equals_direct_calls_at_initialization(sweep_file):
    data = tiny_data()
    for run in read_sweep(sweep_file).runs:
        torch.manual_seed(0)
        model = build_model(run.model, width=0.125, depth=3, image_shape=data.image_shape)
        sets = hessian_sets(data, 64, 2, seed=0)
        for row in range(4):  # step 0: set 0 batch, set 0 running, set 1 batch, set 1 running
            images, labels = sets[row // 2]
            mode = ("batch", "running")[row % 2]
            if mode == "running" and run.model == "mlp_bn":
                continue  # the step's own forward pass has moved the running statistics
            want = spectrum(copy.deepcopy(model), F.cross_entropy,
                            hessian_batches(model, images, labels, 32, mode), None,
                            SpectrumSettings(iterations=12, top_k=SPECTRUM_TOP,
                                             grid_points=SPECTRUM_GRID), seed=row)
            np.testing.assert_allclose(run.spectrum.ritz_values[row], want.ritz_values,
                                       rtol=1e-5)
            assert run.spectrum.outliers[row] == want.outliers


def test_instruments_leave_training_untouched(sweep_file, tmp_path):
    plain = read_sweep(sweep(tmp_path / "plain.h5", depth=3)).runs
    for with_probes, without in zip(read_sweep(sweep_file).runs, plain):
        assert with_probes.spectrum is not None and without.spectrum is None
        np.testing.assert_array_equal(with_probes.steps.loss, without.steps.loss)
        np.testing.assert_array_equal(with_probes.probe.beta, without.probe.beta)


def test_export_writes_the_new_tables(sweep_file, tmp_path):
    frames = to_frames(sweep_file)
    assert len(frames["spectrum"]) == 2 * 8 * SPECTRUM_TOP
    assert len(frames["spectrum_density"]) == 2 * 8 * SPECTRUM_GRID
    assert len(frames["layer_curvature"]) == len(frames["ranks"]) == 2 * 2 * 4
    assert set(frames["spectrum"]["bn"]) == {"batch", "running"}
    assert main(["export", str(sweep_file), "-o", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "spectrum_density.csv").exists()


def test_schema_units_and_scales_in_the_file(sweep_file):
    run_file = next((sweep_file.parent / (sweep_file.name + ".runs")).glob("*.h5"))
    with h5py.File(run_file, "r") as f:
        group = f["spectrum"] if "spectrum" in f else f["runs"][next(iter(f["runs"]))]["spectrum"]
        assert group["density"].attrs["description"]
        assert group["top"].dims[1][0].name.endswith("/eigenvalue")


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_depth_builds_that_many_hidden_layers(depth):
    for name, extra in (("mlp", 1), ("cnn_bn", 1)):
        torch.manual_seed(0)
        model = build_model(name, width=0.125, depth=depth)
        assert len(weight_layers(model)) == depth + extra
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_depth_two_is_the_default_network():
    for name in ("mlp_bn", "cnn"):
        torch.manual_seed(0)
        default = build_model(name, width=0.25).state_dict()
        torch.manual_seed(0)
        two = build_model(name, width=0.25, depth=2).state_dict()
        assert default.keys() == two.keys()
        assert all(torch.equal(default[k], two[k]) for k in default)


def test_depth_sweeps_name_runs(tmp_path):
    runs = read_sweep(sweep(tmp_path / "d.h5", models=("mlp",), steps=1, depth=(1, 2))).runs
    assert [r.name for r in runs] == ["mlp-lr0.05-seed0-d1", "mlp-lr0.05-seed0-d2"]


@pytest.mark.parametrize("args, message", [
    (["--spectrum-every", "0"], "--spectrum-every must be an integer >= 1"),
    (["--spectrum-every", "2", "--hessian-repeats", "0"], "--hessian-repeats must be"),
    (["--hessian-samples", "64"], "the spectrum probe is off"),
    (["--layer-trace-samples", "3"], "the per-layer curvature probe is off"),
    (["--hessian-bn", "eval", "--spectrum-every", "2"], "Invalid value for '--hessian-bn'"),
    (["--depth", "0"], "--depth must be a positive integer"),
    (["--depth", "x"], "--depth: 'x' is not an integer"),
    (["--models", "vgg_a", "--depth", "4"], "model 'vgg_a' has no --depth"),
    (["--models", "dln", "--dataset", "gaussian-linear", "--batch-size", "2048",
      "--spectrum-every", "2"], "--dataset gaussian-linear has none"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "x.h5"
    base = ["run", "--dataset", "cifar10-mini", "--models", "mlp", "--steps", "2",
            "--width", "0.125", "--device", "cpu", "--out", str(out)]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not out.exists()


def test_too_many_hessian_images_is_refused(tmp_path, capsys):
    out = tmp_path / "x.h5"
    code = main(["run", "--dataset", "cifar10-mini", "--models", "mlp", "--steps", "1",
                 "--width", "0.125", "--device", "cpu", "--spectrum-every", "1",
                 "--hessian-samples", "6000", "--hessian-repeats", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "exceeds the" in err and err.count("\n") == 1, err
