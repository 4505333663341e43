"""The sharpness and weight-statistics instruments in a sweep: stored, read back, validated."""

import math

import numpy as np
import pytest

from conftest import TINY_LRS, TINY_STEPS, run_tiny_sweep
from landscape.cli import main
from landscape.read import read_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("curvature") / "c.h5"
    run_tiny_sweep(out, "test", lrs=TINY_LRS, steps=TINY_STEPS, probe_every=4, sharpness_every=4,
                   sharpness_k=2, trace_samples=2, weight_stats=True)
    return read_sweep(out)


def test_curvature_group_is_stored_and_read_back(sweep):
    for run in sweep.runs:
        c = run.curvature
        assert c.step.tolist() == [0, 4]
        assert c.lambda_max.shape == (2, 2) and (np.diff(c.lambda_max, axis=1) <= 0).all()
        assert np.isfinite(c.trace).all() and np.isfinite(c.gHg).all()
        assert (c.iterations > 0).all()
        # gHg is a Rayleigh quotient: never above the largest eigenvalue (tolerance 1e-3).
        assert (c.gHg <= c.lambda_max[:, 0] * (1 + 1e-3) + 1e-9).all()


def test_weight_statistics_every_step(sweep):
    for run in sweep.runs:
        w = run.weights
        assert w.step.tolist() == list(range(TINY_STEPS))
        assert w.norm.shape == (TINY_STEPS, 11) and len(w.layer) == 11
        np.testing.assert_allclose(w.effective_lr, run.lr / w.norm ** 2)
        assert (w.angular_update > 0).all() and (w.angular_update < math.pi / 2).all()
        expected = [True] * 10 + [False] if run.model == "vgg_a_bn" else [False] * 11
        assert w.scale_invariant.tolist() == expected


def test_probe_split_by_layer_is_stored_and_sums_to_grad_diff(sweep):
    for run in sweep.runs:
        p = run.probe
        n_layers = 21 if run.model == "vgg_a_bn" else 11  # + 10 BatchNorm modules
        assert len(p.layer) == n_layers and p.grad_diff_layer.shape == (2, 4, n_layers)
        # float32 runs: the total is summed on the device in float32, the split on the host.
        np.testing.assert_allclose((p.grad_diff_layer ** 2).sum(-1), p.grad_diff ** 2, rtol=1e-6)
        np.testing.assert_allclose((p.grad_norm_layer ** 2).sum(-1), p.grad_norm ** 2, rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--sharpness-every", "0"], "--sharpness-every must be a positive integer"),
    (["--sharpness-every", "5", "--sharpness-k", "0"], "--sharpness-k must be a positive integer"),
    (["--sharpness-every", "5", "--trace-samples", "-1"], "--trace-samples must be an integer >= 0"),
    (["--trace-samples", "4"], "the sharpness probe is off"),
])
def test_bad_sharpness_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "x.h5"
    code = main(["run", "--dataset", "cifar10-mini", "--steps", "2", "--width", "0.125",
                 "--device", "cpu", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
