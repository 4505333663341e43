"""Live logs: every recorded scalar as TensorBoard events, read back with TensorBoard's own
reader and compared with the HDF5 file the same run wrote."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import one_cpu_thread
from landscape import LandscapeError, Recorder
from landscape.cli import main
from landscape.read import read_sweep
from landscape.train import SweepConfig, run_sweep_ray

ROWS = {"steps": ("loss", "grad_norm", "grad_diff", "beta_consecutive", "learning_rate"),
        "probe": ("beta", "grad_norm", "loss_at_theta"),
        "epochs": ("train_loss", "train_acc", "test_loss", "test_acc")}


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def scalar(accumulator, tag) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a tag, in step order."""
    found = accumulator.Scalars(tag)
    return np.array([e.step for e in found]), np.array([e.value for e in found])


def assert_events_equal_the_file(folder, run) -> None:
    """Every row field of the run's file, as events at the row's step (float32: TensorBoard
    stores scalars as float32)."""
    accumulator = events(folder / run.name)
    for group, names in ROWS.items():
        series = getattr(run, group)
        at = series.epoch if group == "epochs" else series.step
        for name in names:
            steps, values = scalar(accumulator, f"{group}/{name}")
            np.testing.assert_array_equal(steps, at)
            np.testing.assert_allclose(values, getattr(series, name).astype(np.float32),
                                       rtol=0, atol=0, equal_nan=True)
    for k, eta in enumerate(run.probe.eta):  # gradient predictiveness at each step size
        steps, values = scalar(accumulator, f"probe/grad_diff/eta={eta:g}")
        np.testing.assert_array_equal(values, run.probe.grad_diff[:, k].astype(np.float32))
    return accumulator


def test_landscape_run_tensorboard_writes_every_scalar_of_the_file(tmp_path):
    out, board = tmp_path / "sweep.h5", tmp_path / "tb"
    with one_cpu_thread():
        assert main(["run", "--dataset", "cifar10-mini", "--models", "vgg_a_bn", "--width",
                     "0.125", "--lrs", "0.05,0.1", "--steps", "8", "--batch-size", "16",
                     "--probe-every", "4", "--sharpness-every", "4", "--device", "cpu",
                     "--out", str(out), "--tensorboard", str(board)]) == 0
    sweep = read_sweep(out)
    assert sorted(p.name for p in board.iterdir()) == sorted(r.name for r in sweep.runs)
    for run in sweep.runs:
        accumulator = assert_events_equal_the_file(board, run)
        steps, values = scalar(accumulator, "curvature/lambda_max/1")  # λmax when measured
        np.testing.assert_array_equal(steps, run.curvature.step)
        np.testing.assert_array_equal(values, run.curvature.lambda_max[:, 0].astype(np.float32))


def test_a_recorder_writes_the_same_events(tmp_path):
    import torch
    from torch import nn

    from landscape.data import BatchStream, load_cifar10_mini
    from landscape.models import build_model

    data, out, board = load_cifar10_mini(), tmp_path / "mine.h5", tmp_path / "tb"
    torch.manual_seed(0)
    net = build_model("mlp_bn", width=0.125)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    with Recorder(out, run="mlp", every=3, tensorboard=board) as rec:
        loss_fn = rec.attach(net, optimizer, nn.CrossEntropyLoss())
        for epoch in range(2):
            for _, (x, y) in zip(range(7), BatchStream(data, 32, seed=epoch).epoch()):
                optimizer.zero_grad()
                loss_fn(net(x), y).backward()
                optimizer.step()
            rec.epoch(test_loss=0.5 / (epoch + 1), test_acc=0.25 * epoch)
    assert_events_equal_the_file(board, read_sweep(out).runs[0])


def test_ray_refuses_tensorboard_in_one_line(tmp_path):
    with pytest.raises(LandscapeError) as error:
        run_sweep_ray(SweepConfig(dataset="cifar10-mini"), str(tmp_path / "x.h5"),
                      tensorboard=str(tmp_path / "tb"))
    assert "--tensorboard is not supported with --ray" in str(error.value)
    assert "\n" not in str(error.value) and list(tmp_path.iterdir()) == []


def test_without_tensorboard_the_option_is_one_line_and_writes_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from landscape.cli import main\n"
            f"sys.exit(main(['run', '--dataset', 'cifar10-mini', '--out', {str(tmp_path / 'x.h5')!r},"
            f" '--tensorboard', {str(tmp_path / 'tb')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --tensorboard needs the tensorboard package")
    assert done.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []
