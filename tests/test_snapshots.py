"""--save-weights-every / --save-weights-at: safetensors files beside the sweep, listed in the
run's file, the same after an interrupted and resumed sweep, nothing else changed."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch

from conftest import one_cpu_thread
from landscape.cli import main
from landscape.store import runs_dir
from landscape.train import SweepConfig, load_checkpoint, run_sweep
from landscape.train.checkpoint import checkpoint_dir
from landscape.train.snapshots import load_snapshot, saved_steps
from resume_util import assert_same_sweep, file_contents, tiny_data
from test_resume import run_interrupted

PLAIN = SweepConfig(models=("vgg_a_bn",), lrs=(0.05, 0.1), steps=12, batch_size=16,
                    probe_every=5, dataset="cifar10-mini", width=0.0625, device="cpu",
                    grid="sequential")
SAVING = dataclasses.replace(PLAIN, save_weights_every=5, save_weights_at=(3,))
STEPS = [0, 3, 5, 10, 12]  # every 5th, step 3, the first and the last


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("saved") / "sweep.h5"
    with one_cpu_thread():
        run_sweep(SAVING, str(out), data=data, checkpoint_every=10, keep_checkpoints=True)
    return out


def test_snapshots_are_listed_in_the_run_file_and_hold_the_weights(saved):
    with h5py.File(saved, "r") as f:
        for name, run in f["runs"].items():
            assert run["snapshots/step"][:].tolist() == STEPS
            folder = saved.parent / run.attrs["weights_dir"]
            assert folder == runs_dir(saved) / f"{name}.weights"
            assert saved_steps(folder) == STEPS
    # the step-10 snapshot is the model of the checkpoint saved at step 10 (keep: the last)
    name = "vgg_a_bn-lr0.05-seed0"
    checkpoint = load_checkpoint(checkpoint_dir(saved) / f"{name}.pt")
    assert checkpoint.position.step == 10
    snapshot = load_snapshot(runs_dir(saved) / f"{name}.weights" / "step-00000010.safetensors")
    model = checkpoint.trainer["model"]
    assert snapshot.keys() == model.keys()
    for key, value in model.items():
        assert torch.equal(snapshot[key], value), key


def test_saving_changes_no_number(saved, data, tmp_path):
    plain = tmp_path / "plain.h5"
    with one_cpu_thread():
        run_sweep(PLAIN, str(plain), data=data)
    got, got_attrs = file_contents(saved)
    want, want_attrs = file_contents(plain)
    assert {k for k in got if "/snapshots/" not in k} == set(want)
    for key, value in want.items():
        same = (got[key] == value).all() if value.dtype.kind in "OSU" else \
            np.array_equal(got[key], value, equal_nan=True)
        assert same, key
    for run, attrs in want_attrs.items():
        assert {k: v for k, v in got_attrs[run].items() if k != "weights_dir"} == attrs


def test_interrupted_and_resumed_sweep_keeps_the_same_snapshots(saved, data, tmp_path):
    out = tmp_path / "sweep.h5"
    # the second run stopped at step 7 (after its snapshot at 5, checkpoint at 5), resumed
    assert run_interrupted(SAVING, out, data, [(1, 7)], checkpoint_every=5) == 1
    assert_same_sweep(out, saved)
    for name in ("vgg_a_bn-lr0.05-seed0", "vgg_a_bn-lr0.1-seed0"):
        for step in STEPS:
            file = f"{name}.weights/step-{step:08d}.safetensors"
            assert (runs_dir(out) / file).read_bytes() == (runs_dir(saved) / file).read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--save-weights-every", "0"], "--save-weights-every must be a positive integer"),
    (["--save-weights-at", "5,-1"], "--save-weights-at: steps are counted from 0"),
    (["--save-weights-at", "a"], "--save-weights-at: 'a' is not an integer"),
    (["--save-weights-every", "5", "--ray"], "do not go with --ray"),
])
def test_bad_weight_options_are_one_line(tmp_path, capsys, args, message):
    if "--ray" in args:  # without ray, --ray is refused first: "needs the ray package"
        pytest.importorskip("ray")
    out = tmp_path / "x.h5"
    code = main(["run", "--models", "mlp", "--dataset", "cifar10-mini", "--steps", "2",
                 "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_cli_prints_the_size_before_the_sweep(tmp_path, capsys):
    out = tmp_path / "s.h5"
    code = main(["run", "--models", "mlp_bn", "--dataset", "cifar10-mini", "--width", "0.125",
                 "--steps", "4", "--batch-size", "64", "--lrs", "0.1", "--probe-every", "2",
                 "--device", "cpu", "--save-weights-every", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    line = printed.splitlines()[0]
    size = sum(p.stat().st_size for p in (runs_dir(out) / "mlp_bn-lr0.1-seed0.weights").iterdir())
    assert line.startswith("saving weights: 3 snapshots per run (mlp_bn ")
    announced = float(line.split("= ")[1].split(" MB")[0])  # tensors, without file headers
    assert announced == pytest.approx(size / 1e6, rel=0.01)
