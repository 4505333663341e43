"""An interrupted sweep resumed from its checkpoints equals the sweep run without interruption.

Interruptions are real SIGINTs sent to this process at chosen steps (the sweep's own handler
checkpoints at the next step boundary); every comparison is bit for bit, on one CPU thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys

import h5py
import pytest

from conftest import one_cpu_thread
from landscape.cli import main
from landscape.store import SweepLock
from landscape.train import (SweepConfig, SweepInterrupted, load_checkpoint, resume_action,
                             run_sweep)
from landscape.train.checkpoint import checkpoint_dir
from resume_util import assert_same_sweep, assert_whole, tiny_data

# Every instrument (a sequential run): noise draws, augmentation, momentum, ICS, activations,
# sharpness (warm-started Lanczos), weight statistics; 40 steps = two epochs of 16 and a
# partial third.
INSTRUMENTED = SweepConfig(models=("vgg_a_noisy_bn",), lrs=(0.05,), steps=40, batch_size=16,
                           probe_every=10, dataset="cifar10-mini", width=0.0625, device="cpu",
                           augment=True, momentum=0.9, ics_every=10, activations_every=10,
                           sharpness_every=20, weight_stats=True)
# Two sequential runs, one after the other.
SEQUENTIAL = SweepConfig(models=("vgg_a_bn",), lrs=(0.05, 0.1), steps=24, batch_size=16,
                         probe_every=5, dataset="cifar10-mini", width=0.0625, device="cpu",
                         augment=True, momentum=0.9, grid="sequential")
# The learning rates as one vmapped grid (no instruments there).
BATCHED = dataclasses.replace(SEQUENTIAL, grid="batched")
# Several axes: two seeds x two batch sizes (issue 15's cells), one run per cell.
AXES_GRID = dataclasses.replace(SEQUENTIAL, lrs=(0.05,), steps=10, seed=(0, 1),
                                batch_size=(16, 32))
# Residual networks: Ghost BN (batches of 48: sub-batches of 32 and 16) with every
# instrument; the unnormalized ResNet (SkipInit) as a vmapped grid.
RESNET_INSTRUMENTED = dataclasses.replace(INSTRUMENTED, models=("resnet20_gbn",), steps=12,
                                          batch_size=48, probe_every=3, ics_every=3,
                                          activations_every=3, sharpness_every=6)
RESNET_BATCHED = dataclasses.replace(BATCHED, models=("resnet20",))
# Every optimizer but SGD and Adam/AdamW (tested above and in test_axes), one run each; and
# SGD with Nesterov momentum.
OPTIMIZERS = dataclasses.replace(SEQUENTIAL, lrs=(0.05,), steps=10, momentum=0.0,
                                 optimizer=("adagrad", "adadelta", "adamax", "rmsprop"))
NESTEROV = dataclasses.replace(SEQUENTIAL, lrs=(0.05,), steps=10, nesterov=True)
# Other losses: two as vmapped grids (one cell each), focal with label smoothing one run.
LOSSES = dataclasses.replace(BATCHED, steps=10, loss=("mse", "hinge"))
SMOOTHED_FOCAL = dataclasses.replace(SEQUENTIAL, lrs=(0.05,), steps=10, loss="focal",
                                     label_smoothing=0.1)
# Learning-rate schedules, one run each, stepped every step; and plateau, stepped at each
# epoch's end, in the setting of tests/test_schedules.py where it halves the learning rate
# after the third epoch (whose loss is above the second's: the best loss must be restored).
SCHEDULES = dataclasses.replace(SEQUENTIAL, lrs=(0.05,), steps=36, lr_schedule=("cosine", "step"),
                                lr_step_gamma=0.5)
PLATEAU = dataclasses.replace(SEQUENTIAL, models=("mlp_bn",), width=0.125, augment=False,
                              lrs=(2.0,), steps=56, lr_schedule="plateau", lr_patience=0,
                              lr_plateau_factor=0.5)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def references(tmp_path_factory, data):
    """Each config's uninterrupted sweep, made once."""
    made = {}

    def reference(config: SweepConfig):
        key = repr(config)
        if key not in made:
            out = tmp_path_factory.mktemp("reference") / "sweep.h5"
            with one_cpu_thread():
                run_sweep(config, str(out), data=data)
            made[key] = out
        return made[key]

    return reference


def interrupt_at(points: list[tuple[int, int]]):
    """A progress callback sending SIGINT to this process after step ``step`` of run
    ``run_index`` (each point once, in order)."""
    todo = list(points)

    def on_progress(p):
        if todo and (p.run_index, p.step) == todo[0]:
            todo.pop(0)
            os.kill(os.getpid(), signal.SIGINT)

    return on_progress


def run_interrupted(config, out, data, points, **options):
    """Run (then resume) the sweep, interrupted at each point; returns how many stops."""
    stops, resume = 0, False
    on_progress = interrupt_at(points)
    with one_cpu_thread():
        while True:
            try:
                run_sweep(config, str(out), data=data, resume=resume, on_progress=on_progress,
                          **options)
                return stops
            except SweepInterrupted as stop:
                assert stop.exit_code == 130
                stops, resume = stops + 1, True
                with h5py.File(out, "r", locking=False) as f:
                    assert "interrupted" in {r.attrs["status"] for r in f["runs"].values()}
                assert_whole(out)


@pytest.mark.parametrize("config, points, options", [
    (INSTRUMENTED, [(0, 5)], {}),  # inside an epoch
    (INSTRUMENTED, [(0, 16)], {}),  # after an epoch's last step, before its evaluation
    (INSTRUMENTED, [(0, 5), (0, 21)], {"checkpoint_every": 7}),  # twice in one run
    (SEQUENTIAL, [(1, 14)], {}),  # in the second run, the first one kept as it is
    (BATCHED, [(0, 9), (0, 20)], {"checkpoint_every": 4}),  # the vmapped grid, twice
    (AXES_GRID, [(1, 3), (2, 8)], {"checkpoint_every": 2}),  # in two cells of the axes product
    (RESNET_INSTRUMENTED, [(0, 7)], {}),  # a ResNet with Ghost BN, inside its second epoch
    (RESNET_BATCHED, [(0, 9)], {"checkpoint_every": 4}),  # SkipInit ResNets as a vmapped grid
    (OPTIMIZERS, [(0, 5), (3, 7)], {"checkpoint_every": 3}),  # adagrad's and rmsprop's state
    (NESTEROV, [(0, 6)], {"checkpoint_every": 4}),
    (LOSSES, [(0, 5), (2, 7)], {"checkpoint_every": 3}),  # mse's grid, then hinge's
    (SMOOTHED_FOCAL, [(0, 6)], {"checkpoint_every": 4}),
    # cosine mid-epoch, step mid-epoch past its first decay (step 12)
    (SCHEDULES, [(0, 5), (1, 21)], {"checkpoint_every": 7}),
    # after an epoch's last step (before its evaluation and the scheduler's step), then
    # inside the epoch whose end reduces the learning rate
    (PLATEAU, [(0, 16), (0, 40)], {}),
], ids=["in-epoch", "epoch-end", "twice", "second-run", "batched-twice", "axes", "resnet-gbn",
        "resnet-batched", "optimizers", "nesterov", "losses", "focal-smoothed", "schedules",
        "plateau"])
def test_interrupted_sweep_resumes_bit_identically(tmp_path, data, references, config, points,
                                                    options):
    out = tmp_path / "sweep.h5"
    assert run_interrupted(config, out, data, points, **options) == len(points)
    assert_same_sweep(out, references(config))
    assert not checkpoint_dir(out).exists()  # removed as the runs completed


def test_run_without_checkpoint_starts_again_and_drops_its_rows(tmp_path, data, references):
    """Killed before its first checkpoint: the run's rows go, it trains from step 0."""
    out = tmp_path / "sweep.h5"
    with one_cpu_thread(), pytest.raises(SweepInterrupted):
        run_sweep(INSTRUMENTED, str(out), data=data, on_progress=interrupt_at([(0, 12)]))
    for path in checkpoint_dir(out).iterdir():
        path.unlink()  # as if killed before it was written
    assert assert_whole(out) == {"vgg_a_noisy_bn-lr0.05-seed0": 12}
    with one_cpu_thread():
        run_sweep(INSTRUMENTED, str(out), data=data, resume=True)
    assert_same_sweep(out, references(INSTRUMENTED))


def test_keep_checkpoints_keeps_the_last_one(tmp_path, data):
    config = dataclasses.replace(BATCHED, steps=6)
    out = tmp_path / "sweep.h5"
    with one_cpu_thread():
        run_sweep(config, str(out), data=data, checkpoint_every=4, keep_checkpoints=True)
    (kept,) = checkpoint_dir(out).iterdir()
    checkpoint = load_checkpoint(kept)
    assert checkpoint.runs == ["vgg_a_bn-lr0.05-seed0", "vgg_a_bn-lr0.1-seed0"]
    assert checkpoint.position.step == 4 and checkpoint.rows[checkpoint.runs[0]]["steps"] == 4


def test_growing_a_sweep_adds_runs_and_keeps_the_others(tmp_path, data, references):
    """The first model's sweep, then --resume adding a model and a learning rate: the file
    equals the whole sweep run at once (the state a kill between runs leaves, too)."""
    config = dataclasses.replace(SEQUENTIAL, steps=8)
    whole = dataclasses.replace(config, models=("vgg_a_bn", "vgg_a"), lrs=(0.05, 0.1))
    out = tmp_path / "sweep.h5"
    with one_cpu_thread():
        run_sweep(dataclasses.replace(config, lrs=(0.05,)), str(out), data=data)
        with h5py.File(out, "r") as f:
            first = f["runs/vgg_a_bn-lr0.05-seed0/steps/loss"][:]
        summaries = run_sweep(dataclasses.replace(config, models=("vgg_a",), lrs=(0.1,)),
                              str(out), data=data, resume=True)
    assert [s.name for s in summaries] == ["vgg_a_bn-lr0.05-seed0", "vgg_a_bn-lr0.1-seed0",
                                           "vgg_a-lr0.05-seed0", "vgg_a-lr0.1-seed0"]
    assert_same_sweep(out, references(whole))
    with h5py.File(out, "r") as f:
        assert (f["runs/vgg_a_bn-lr0.05-seed0/steps/loss"][:] == first).all()


def test_growing_a_sweep_by_seeds(tmp_path, data, references):
    """--resume with more seeds adds their runs; the file equals both seeds run at once."""
    config = dataclasses.replace(SEQUENTIAL, lrs=(0.05,), steps=6)
    out = tmp_path / "sweep.h5"
    with one_cpu_thread():
        run_sweep(config, str(out), data=data)
        summaries = run_sweep(dataclasses.replace(config, seed=(1,)), str(out), data=data,
                              resume=True)
    assert [s.name for s in summaries] == ["vgg_a_bn-lr0.05-seed0", "vgg_a_bn-lr0.05-seed1"]
    assert_same_sweep(out, references(dataclasses.replace(config, seed=(0, 1))))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A finished two-step sweep on the bundled data, made through the CLI."""
    out = tmp_path_factory.mktemp("cli") / "sweep.h5"
    with one_cpu_thread():
        assert main(["run", "--dataset", "cifar10-mini", "--models", "vgg_a", "--width", "0.125",
                     "--steps", "2", "--batch-size", "16", "--device", "cpu",
                     "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("args, named", [
    (["--momentum", "0.9"], "--momentum 0.9 differs from the 0.0"),
    (["--steps", "3"], "--steps 3 differs from the 2"),
    (["--width", "0.25"], "--width 0.25"),
    (["--batch-size", "16,32"], "--batch-size 16,32 differs from the 16"),
    (["--out", "x.h5"], "--out does not go with --resume"),
    (["--overwrite"], "--overwrite does not go with --resume"),
])
def test_changing_a_setting_on_resume_is_one_line_and_writes_nothing(small_file, capsys, args,
                                                                     named):
    before = sha256(small_file)
    assert main(["run", "--resume", str(small_file)] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err
    assert sha256(small_file) == before


def test_second_writer_is_refused_and_a_dead_ones_lock_does_not_block(small_file, capsys):
    before = sha256(small_file)
    with SweepLock(small_file):  # another sweep writes the file (flock: per open file)
        for args in (["run", "--resume", str(small_file)],
                     ["run", "--dataset", "cifar10-mini", "--models", "vgg_a", "--width", "0.125",
                      "--steps", "2", "--out", str(small_file), "--overwrite"]):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "in use by another sweep" in err, err
    assert sha256(small_file) == before
    # A process that took the lock and died by SIGKILL leaves its lock file, which binds nobody.
    code = ("import os, signal; from landscape.store import SweepLock; "
            f"SweepLock({str(small_file)!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert (small_file.parent / f"{small_file.name}.lock").exists()
    with one_cpu_thread():
        assert main(["run", "--resume", str(small_file), "--lrs", "0.2"]) == 0
    assert "vgg_a-lr0.2-seed0  completed" in capsys.readouterr().out


def test_resume_decides_by_status_and_checkpoint():
    assert [resume_action(s, True) for s in ("completed", "diverged")] == ["keep", "keep"]
    assert [resume_action(s, True) for s in ("running", "interrupted", "failed")] == \
        ["continue"] * 3
    assert resume_action("interrupted", False) == "fresh" and resume_action(None, False) == "fresh"


def test_failed_run_continues_from_its_end_of_epoch_checkpoint(tmp_path, data, references):
    """An error at step 20 (no checkpoint of its own): the run is ``failed``, its last
    checkpoint the one after epoch 0's evaluation; resumed from there, rows 16-19 dropped."""
    out = tmp_path / "sweep.h5"

    def crash(p):
        if p.step == 20:
            raise RuntimeError("a crash at step 20")

    with one_cpu_thread(), pytest.raises(RuntimeError, match="step 20"):
        run_sweep(INSTRUMENTED, str(out), data=data, on_progress=crash)
    with h5py.File(out, "r") as f:
        assert f["runs/vgg_a_noisy_bn-lr0.05-seed0"].attrs["status"] == "failed"
    (path,) = checkpoint_dir(out).iterdir()
    assert load_checkpoint(path).position.step == 16 and assert_whole(out) == {
        "vgg_a_noisy_bn-lr0.05-seed0": 20}
    with one_cpu_thread():
        run_sweep(INSTRUMENTED, str(out), data=data, resume=True)
    assert_same_sweep(out, references(INSTRUMENTED))
