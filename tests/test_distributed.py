"""A sweep on Ray (``run_sweep_ray``, ``landscape run --ray``): the same numbers as a local sweep,
one file written by the driver while the workers train, failed runs marked, lost workers retried.

One local Ray instance with 2 CPUs (no dashboard) serves the whole module: starting one costs
5-8 s on a 2-core machine, and each new worker process 3-4 s (importing torch and landscape).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.cli import main
from landscape.data import ImageData, load_dataset
from landscape.models import MODELS, ModelSpec
from landscape.read import read_sweep
from landscape.train import RayOptions, SweepConfig, run_sweep, run_sweep_ray
from landscape.errors import LandscapeError
from landscape.store import SweepLock
from landscape.train.checkpoint import checkpoint_dir, checkpoint_header
from landscape.train.distributed import DRIVER_WATCH_SECONDS, DriverWatch, _checkpoint_place

from conftest import STORE_ATTRS, one_cpu_thread, sweep_datasets
from model_path_util import NETS
from resume_util import write_tiny_npz

ray = pytest.importorskip("ray")

# Models registered here travel to the workers with their sweep (the driver ships each model's
# registry entry); cloudpickle sends this module's classes by value, as it would a script's.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_instance():
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    print(f"ray.init: {time.perf_counter() - started:.1f} s")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_data() -> ImageData:
    full = load_dataset("cifar10-mini")
    return ImageData(full.name, full.x_train[:256], full.y_train[:256], full.x_test[:128],
                     full.y_test[:128], full.mean, full.std)


def small_config(**settings) -> SweepConfig:
    """Width 1/8, batches of 16 from 256 images: 16 steps an epoch, 24 steps = 1.5 epochs."""
    return SweepConfig(**{**dict(models=("vgg_a", "vgg_a_bn"), lrs=(0.05, 0.1), steps=24,
                                 probe_every=8, batch_size=16, dataset="cifar10-mini",
                                 width=0.125, device="cpu"), **settings})


def file_contents(path) -> tuple[dict, dict]:
    """Every dataset, and every run's attributes but its wall-clock times."""
    datasets, attrs = {}, {}
    with h5py.File(path, "r") as f:
        datasets = sweep_datasets(f, skip=lambda name: name.endswith("epochs/seconds"))
        for name, run in f["runs"].items():
            attrs[name] = {k: v for k, v in run.attrs.items()
                           if k != "seconds" and k not in STORE_ATTRS}
    return datasets, attrs


def assert_same_numbers(a_path, b_path) -> None:
    (a, a_attrs), (b, b_attrs) = file_contents(a_path), file_contents(b_path)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a_attrs.keys() == b_attrs.keys()
    for run in a_attrs:
        assert a_attrs[run].keys() == b_attrs[run].keys(), run
        for k in a_attrs[run]:
            np.testing.assert_array_equal(a_attrs[run][k], b_attrs[run][k], err_msg=f"{run} {k}")


class Wrapped(nn.Module):
    """VGG-A whose ``event`` happens at its ``at``-th forward pass in training mode (the
    probes' passes included: with probes every 4 steps, the 40th is at step 18 or 19)."""

    def __init__(self, inner: nn.Module, event, at: int):
        super().__init__()
        self.inner, self.event, self.at, self.calls = inner, event, at, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                self.event()
        return self.inner(x)


@pytest.fixture
def register():
    """Register models for one test (driver side; the sweep carries them to the workers)."""
    names = []

    def add(name: str, event, at: int) -> str:
        vgg_a = MODELS["vgg_a"].build
        MODELS[name] = ModelSpec(lambda width, num_classes: Wrapped(
            vgg_a(width=width, num_classes=num_classes), event, at), norm="none")
        names.append(name)
        return name

    yield add
    for name in names:
        del MODELS[name]


def test_ray_sweep_gives_the_local_sweeps_numbers_and_a_file_readable_as_it_grows(
        ray_instance, small_data, tmp_path):
    """Two models x two seeds with every instrument: every run of the axes' product, named and
    attributed as locally, every dataset equal to a local sweep's at one thread, bit for bit
    (only wall-clock times differ); the workers run this checkout's package; rows reach the
    file while other runs still train."""
    config = small_config(lrs=(0.1,), seed=(0, 1), ics_every=8, activations_every=8,
                          weight_stats=True)
    with one_cpu_thread():
        run_sweep(config, tmp_path / "local.h5", data=small_data)
    seen = []  # (runs with rows, runs completed) in the file, read at each progress report

    def read_while_training(p):
        sweep = read_sweep(tmp_path / "ray.h5")
        seen.append((sum(len(r.steps.step) > 0 for r in sweep.runs),
                     sum(r.attrs["status"] == "completed" for r in sweep.runs), p.sweep_step))

    summaries = run_sweep_ray(config, tmp_path / "ray.h5", data=small_data,
                              on_progress=read_while_training)
    assert [s.status for s in summaries] == ["completed"] * 4
    assert [s.name for s in summaries] == ["vgg_a-lr0.1-seed0", "vgg_a_bn-lr0.1-seed0",
                                           "vgg_a-lr0.1-seed1", "vgg_a_bn-lr0.1-seed1"]
    assert_same_numbers(tmp_path / "local.h5", tmp_path / "ray.h5")
    with h5py.File(tmp_path / "ray.h5", "r") as f:
        assert [f[f"runs/{s.name}"].attrs["seed"] for s in summaries] == [0, 0, 1, 1]
        seed0, seed1 = (f[f"runs/vgg_a-lr0.1-seed{k}/steps/loss"][()] for k in (0, 1))
    assert not np.array_equal(seed0, seed1)  # the seeds trained apart, not one run twice
    assert any(0 < with_rows and done < 4 for with_rows, done, _ in seen), seen
    assert seen[-1][2] == 4 * 24  # the progress bar's count: every run's every step

    @ray.remote(num_cpus=1)
    def worker_package():
        import landscape
        return landscape.__file__

    import landscape
    assert ray.get(worker_package.remote()) == landscape.__file__


def test_a_run_that_raises_is_failed_with_its_message_and_the_others_complete(
        ray_instance, register, tmp_path, capsys):
    """Through the CLI: the run's rows up to the error stay, status ``failed`` and ``error``
    attribute; the other run completes; a ``failed:`` line and exit status 1."""
    def explode():
        raise RuntimeError("exploded on purpose")

    bad = register("vgg_a_explodes", explode, at=12)
    out = tmp_path / "s.h5"
    code = main(["run", "--ray", "--models", f"{bad},vgg_a", "--lrs", "0.1", "--steps", "16",
                 "--batch-size", "16", "--probe-every", "8", "--dataset", "cifar10-mini",
                 "--width", "0.125", "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert f"failed: {bad}-lr0.1-seed0: RuntimeError: exploded on purpose" in captured.err
    with h5py.File(out, "r") as f:
        run = f[f"runs/{bad}-lr0.1-seed0"]
        assert run.attrs["status"] == "failed"
        assert run.attrs["error"] == "RuntimeError: exploded on purpose"
        steps = run["steps/step"][:]  # every step before the one that raised
        assert 0 < len(steps) < 16 and run.attrs["steps_completed"] == len(steps)
        np.testing.assert_array_equal(steps, np.arange(len(steps)))
        assert f["runs/vgg_a-lr0.1-seed0"].attrs["status"] == "completed"
        assert len(f["runs/vgg_a-lr0.1-seed0/steps/step"]) == 16


def test_a_worker_killed_mid_run_continues_from_its_checkpoint_and_the_file_is_whole(
        ray_instance, register, small_data, tmp_path):
    """SIGKILL of the worker process at step 18 or 19: the unit continues on a new worker from
    its last checkpoint, of step 16 (the file's ``ray_retries`` says so), not from step 0, and
    the final file equals the uninterrupted sweep's (the rows after step 16 cut, so none is
    there twice)."""
    marker = tmp_path / "killed"

    def kill_once():  # the first worker to get here dies; the others (and retries) go on
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    model = register("vgg_a_killed_once", kill_once, at=40)
    config = small_config(models=(model,), probe_every=4)
    # Checkpoints every 4 steps: the continued unit announces one at step 20, which the
    # driver checks against the rows it holds (the unit counts from its checkpoint's rows).
    summaries = run_sweep_ray(config, tmp_path / "ray.h5", data=small_data, checkpoint_every=4)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker was killed
    assert [s.status for s in summaries] == ["completed", "completed"]
    with h5py.File(tmp_path / "ray.h5", "r") as f:
        retries = json.loads(f.attrs["ray_retries"])
    assert [r["attempt"] for r in retries] == [1], retries  # one unit lost, once
    assert list(retries[0]["continued_from_step"].values()) == [16], retries
    with one_cpu_thread():
        run_sweep(config, tmp_path / "local.h5", data=small_data)  # the marker: no kill here
    assert_same_numbers(tmp_path / "local.h5", tmp_path / "ray.h5")
    assert not (tmp_path / "ray.h5.checkpoints").exists()  # removed as the runs completed


def test_resume_ray_completes_a_sweep_whose_driver_was_killed(ray_instance, tmp_path):
    """A Ray sweep's driver (``landscape run --ray-address`` in a process of its own, holding
    the file's lock) gets SIGKILL once a checkpoint is in place; ``landscape run --resume FILE
    --ray`` continues the running runs from their checkpoints (the file's ``resumed``
    attribute names the step each continued from) and the file equals the uninterrupted
    sweep's."""
    out = tmp_path / "s.h5"
    args = ["--models", "vgg_a_bn", "--lrs", "0.05,0.1", "--steps", "64", "--batch-size", "16",
            "--probe-every", "8", "--dataset", "cifar10-mini", "--width", "0.125",
            "--device", "cpu", "--checkpoint-every", "4"]
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "landscape", "run", "--ray-address",
                               address, "--out", str(out)] + args,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "s.h5.checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("*.pt")) and driver.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint in 120 s"
        time.sleep(0.01)
    with pytest.raises(LandscapeError, match="in use by another sweep"):
        SweepLock(out).acquire()  # the driver holds the file's lock
    driver.send_signal(signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL, driver.stderr.read().decode()
    with h5py.File(out, "r", locking=False) as f:
        status = {name: run.attrs["status"] for name, run in f["runs"].items()}
    assert "running" in status.values(), status  # killed mid-sweep
    saved = {}  # run -> its step rows in the file when its last checkpoint was saved
    for path in checkpoints.glob("*.pt"):
        names, rows = checkpoint_header(path)
        saved.update({name: rows[name]["steps"] for name in names})
    running = {name: steps for name, steps in saved.items() if status[name] == "running"}
    assert running and all(0 < steps < 60 for steps in running.values()), (saved, status)
    # Checkpoints every 4 steps here too: the resumed units announce checkpoints, which the
    # driver checks against the rows it holds (a unit must count from its checkpoint's rows).
    code = main(["run", "--resume", str(out), "--ray", "--checkpoint-every", "4"])
    assert code == 0
    local_config = small_config(models=("vgg_a_bn",), lrs=(0.05, 0.1), steps=64, probe_every=8)
    with one_cpu_thread():
        run_sweep(local_config, tmp_path / "local.h5", data=load_dataset("cifar10-mini"))
    assert_same_numbers(tmp_path / "local.h5", out)
    with h5py.File(out, "r") as f:
        resumed = json.loads(f.attrs["resumed"])
    # Each run continued from the checkpoint it had when the driver died, or a later one: its
    # worker, finding its driver gone (within DRIVER_WATCH_SECONDS), checkpointed at its next
    # step and stopped -- or, near its end, completed it first (then the resume kept it).
    (continued,) = [r["continued_from_step"] for r in resumed]
    assert continued.keys() <= running.keys(), (continued, running)
    assert all(running[name] <= step < 64 and step % 4 == 0 for name, step in continued.items())


def test_models_by_import_path_train_on_the_workers_as_locally(ray_instance, user_models,
                                                                tmp_path):
    """``--models module:callable`` on Ray: a driver in a process of its own, started in the
    folder that holds the package (Ray puts a driver's working directory on its workers'
    path), ships each unit the path and arguments; the workers import the module and train
    the local sweep's numbers, bit for bit."""
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    models = f"{NETS}:Plain,{NETS}:WithBN,{NETS}:WithDropout"
    args = ["--models", models, "--model-kwargs", '{"hidden": 16}', "--lrs", "0.1",
            "--steps", "16", "--batch-size", "16", "--probe-every", "8", "--dataset", str(npz),
            "--device", "cpu"]
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, "-m", "landscape", "run", "--ray-address", address,
                           "--out", str(tmp_path / "ray.h5")] + args, cwd=user_models,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with one_cpu_thread():
        assert main(["run", "--out", str(tmp_path / "local.h5")] + args) == 0
    assert_same_numbers(tmp_path / "local.h5", tmp_path / "ray.h5")
    with h5py.File(tmp_path / "ray.h5", "r") as f:
        assert {name: (run.attrs["norm"], bool(run.attrs["draws_random"]))
                for name, run in f["runs"].items()} == {
            "Plain-lr0.1-seed0": ("none", False), "WithBN-lr0.1-seed0": ("batch", False),
            "WithDropout-lr0.1-seed0": ("none", True)}


def test_a_worker_stops_when_its_driver_is_gone(tmp_path):
    """``DriverWatch``: no stop while the driver holds the sweep's lock and its token is there;
    SIGTERM (checkpoint and stop, as a local sweep) once another driver took over (its token
    gone) or nobody holds the lock (the driver was killed)."""
    out = tmp_path / "s.h5"
    place = _checkpoint_place(str(out), None, False, {})
    with SweepLock(out):
        watch = DriverWatch(place)
        assert watch.signum is None
        time.sleep(DRIVER_WATCH_SECONDS)
        assert watch.signum is None  # looked again: still there
        (checkpoint_dir(out) / place.token).unlink()  # a resumed driver cleared it
        time.sleep(DRIVER_WATCH_SECONDS)
        assert watch.signum == signal.SIGTERM
        # A resumed driver holds the lock before it clears the old token: the lock file names
        # another process than the token of this unit's driver.
        killed = dataclasses.replace(place, token=".ray-driver-999999999-0000")
        (checkpoint_dir(out) / killed.token).touch()
        assert DriverWatch(killed).signum == signal.SIGTERM
    place = _checkpoint_place(str(out), None, False, {})
    assert DriverWatch(place).signum == signal.SIGTERM  # the lock free: the driver is gone


def test_a_worker_lost_more_often_than_allowed_fails_its_runs(ray_instance, register,
                                                              small_data, tmp_path):
    """A unit whose worker dies every time: started 1 + max_retries times, then ``failed``."""
    model = register("vgg_a_always_killed", lambda: os.kill(os.getpid(), signal.SIGKILL), at=3)
    config = small_config(models=(model,), lrs=(0.1,))
    summaries = run_sweep_ray(config, tmp_path / "s.h5", RayOptions(max_retries=1),
                              data=small_data)
    assert [s.status for s in summaries] == ["failed"]
    assert "lost 2 times" in summaries[0].error
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f[f"runs/{model}-lr0.1-seed0"].attrs["status"] == "failed"
        assert "lost 2 times" in f[f"runs/{model}-lr0.1-seed0"].attrs["error"]


RAY_SESSION = "/tmp/ray/session_latest"  # Ray's link to the newest instance's folder
BAD_RAY_OPTIONS = [
    (["--ray-gpus-per-task", "1"], "--ray-gpus-per-task applies to Ray sweeps"),
    (["--ray-cpus-per-task", "2"], "--ray-cpus-per-task applies to Ray sweeps"),
    (["--max-retries", "1"], "--max-retries applies to Ray sweeps"),
    (["--ray", "--ray-gpus-per-task", "-1"], "--ray-gpus-per-task must be"),
    (["--ray", "--ray-gpus-per-task", "nan"], "--ray-gpus-per-task must be"),
    (["--ray", "--ray-gpus-per-task", "x"], "'x'"),
    (["--ray", "--ray-cpus-per-task", "0"], "--ray-cpus-per-task must be"),
    (["--ray", "--max-retries", "-1"], "--max-retries must be"),
    (["--ray", "--max-retries", "1.5"], "'1.5'"),
    (["--ray-address", "headnode"], "--ray-address 'headnode'"),
    (["--ray-address", "headnode:0"], "--ray-address 'headnode:0'"),
    (["--ray-address", ":6379"], "--ray-address ':6379'"),
    (["--ray", "--device", "cuda:1"], "--device 'cuda:1' on Ray workers"),
    (["--ray", "--device", "cpu", "--ray-gpus-per-task", "1"], "--ray-gpus-per-task 1 would hold"),
    (["--ray", "--probe-every", "0"], "--probe-every"),
]


@pytest.mark.parametrize("args,named", BAD_RAY_OPTIONS, ids=[" ".join(a) for a, _ in BAD_RAY_OPTIONS])
def test_bad_ray_option_is_one_line_exit_2_before_ray_starts(args, named, tmp_path, capsys):
    """Refused before any Ray instance starts (a new one would be a new session folder)."""
    session = os.path.realpath(RAY_SESSION)
    code = main(["run", "--dataset", "cifar10-mini", "--out", str(tmp_path / "never.h5")] + args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err
    assert list(tmp_path.iterdir()) == [] and os.path.realpath(RAY_SESSION) == session


def test_resources_no_node_has_are_refused(ray_instance, tmp_path, capsys):
    code = main(["run", "--ray", "--ray-cpus-per-task", "3", "--dataset", "cifar10-mini",
                 "--device", "cpu", "--out", str(tmp_path / "never.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "--ray-cpus-per-task 3: the Ray cluster has 2 CPUs in all" in err, err
    assert list(tmp_path.iterdir()) == []
