"""``landscape.Recorder``: anyone's training loop into a sweep file that every command reads.

Each test trains a real (tiny) model in a plain loop and reads the file back with the package's
own readers, comparing the rows with what the loop computed by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from conftest import one_cpu_thread
from landscape import Instruments, LandscapeError, Recorder
from landscape.cli import main
from landscape.data import BatchStream, load_cifar10_mini
from landscape.models import build_model
from landscape.read import read_sweep
from landscape.report.pools import Pooling
from landscape.store import run_file

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY, BATCH = 12, 4, 32


@pytest.fixture(scope="module")
def data():
    return load_cifar10_mini()


def train(data, rec: Recorder | None, *, seed=0, lr=0.05, epochs=2, accumulate=1, cosine=True):
    """A kuangliu-style loop (VGG-A+BN at width 1/8, cross-entropy, SGD with momentum and
    weight decay, a cosine schedule stepped every step); returns what it saw at each step:
    the loss of the step's objective, the learning rate, correct counts and samples."""
    torch.manual_seed(seed)
    net = build_model("vgg_a_bn", width=0.125)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * STEPS)
                 if cosine else None)
    loss_fn = rec.attach(net, optimizer, criterion) if rec is not None else criterion
    seen = {"loss": [], "lr": [], "correct": [], "samples": []}
    stream = BatchStream(data, BATCH, seed=seed)
    for epoch in range(epochs):
        batches = iter(stream.epoch())
        for _ in range(STEPS):
            optimizer.zero_grad()
            step_loss, correct, samples = 0.0, 0, 0
            for _ in range(accumulate):
                x, y = next(batches)
                out = net(x)
                loss = loss_fn(out, y)
                (loss / accumulate).backward()
                step_loss += loss.item() / accumulate
                correct += int((out.argmax(1) == y).sum())
                samples += len(y)
            seen["lr"].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            for key, value in zip(("loss", "correct", "samples"), (step_loss, correct, samples)):
                seen[key].append(value)
        if rec is not None:
            rec.epoch(test_loss=1.0 + epoch, test_acc=0.1 * epoch)
    return seen


def test_a_plain_loop_writes_a_sweep_file_every_command_reads(tmp_path, data, capsys):
    out = tmp_path / "mine.h5"
    with one_cpu_thread():
        for seed in (0, 1):
            with Recorder(out, run=f"vgg-seed{seed}", every=EVERY, seed=seed,
                          dataset="cifar10-mini") as rec:
                seen = train(data, rec, seed=seed)
    sweep = read_sweep(out)
    assert [r.name for r in sweep.runs] == ["vgg-seed0", "vgg-seed1"]
    run = sweep.runs[1]
    assert run.status == "completed" and run.steps_completed == 2 * STEPS
    assert run.attrs["optimizer"] == "sgd" and run.attrs["momentum"] == 0.9
    assert run.attrs["weight_decay"] == 5e-4 and run.norm == "batch" and run.seed == 1
    assert run.attrs["lr_schedule"] == "varying" and run.attrs["steps_per_epoch"] == STEPS
    # Each step's loss is the loop's own (the same float32 number), LR(t) the optimizer's.
    np.testing.assert_array_equal(run.steps.step, np.arange(2 * STEPS))
    np.testing.assert_allclose(run.steps.loss, seen["loss"], rtol=1e-7)
    np.testing.assert_array_equal(run.steps.learning_rate, seen["lr"])
    np.testing.assert_array_equal(run.steps.epoch, np.repeat([0, 1], STEPS))
    assert np.isnan(run.steps.grad_diff[0]) and np.all(np.isfinite(run.steps.grad_diff[1:]))
    # The probe at every EVERY-th step, at etas x LR(t) (the schedule's rate there).
    np.testing.assert_array_equal(run.probe.step, np.arange(0, 2 * STEPS, EVERY))
    np.testing.assert_array_equal(run.probe.learning_rate, np.asarray(seen["lr"])[::EVERY])
    np.testing.assert_allclose(run.probe.eta_at_step,
                               np.outer(run.probe.learning_rate, [0.5, 1, 2, 4]), rtol=1e-12)
    # Epochs: the loop's mean loss and accuracy over the epoch's samples, and the metrics given.
    for epoch in range(2):
        part = slice(epoch * STEPS, (epoch + 1) * STEPS)
        samples = np.asarray(seen["samples"][part])
        assert run.epochs.train_loss[epoch] == pytest.approx(
            np.sum(np.asarray(seen["loss"][part]) * samples) / samples.sum(), rel=1e-7)
        assert run.epochs.train_acc[epoch] == sum(seen["correct"][part]) / samples.sum()
    np.testing.assert_array_equal(run.epochs.test_loss, [1.0, 2.0])
    np.testing.assert_array_equal(run.epochs.steps, [STEPS, STEPS])
    assert np.isnan(run.epochs.train_mode_loss).all()
    # Two seeds of one setting pool into one band.
    assert Pooling.key(sweep.runs[0]) == Pooling.key(sweep.runs[1])
    for command in (["info", str(out)], ["plot", str(out)], ["export", str(out)]):
        assert main(command) == 0, capsys.readouterr().err
    assert (tmp_path / "mine.html").stat().st_size > 100_000
    assert (tmp_path / "mine-tables" / "steps.csv").exists()


def test_gradient_accumulation_records_the_mean_of_the_micro_batches(tmp_path, data):
    out = tmp_path / "acc.h5"
    with one_cpu_thread(), Recorder(out, run="acc", every=EVERY) as rec:
        seen = train(data, rec, epochs=1, accumulate=2, cosine=False)
    run = read_sweep(out).runs[0]
    np.testing.assert_allclose(run.steps.loss, seen["loss"], rtol=1e-6)
    assert run.attrs["lr_schedule"] == "constant"
    assert run.epochs.train_acc[0] == sum(seen["correct"]) / sum(seen["samples"])
    assert sum(seen["samples"]) == STEPS * 2 * BATCH


def test_instruments_write_their_groups(tmp_path, data):
    out = tmp_path / "inst.h5"
    instruments = Instruments(sharpness_every=6, weight_stats=True, ics_every=6,
                              activations_every=6)
    with one_cpu_thread(), Recorder(out, run="inst", every=EVERY, instruments=instruments) as rec:
        train(data, rec, epochs=1)
    run = read_sweep(out).runs[0]
    np.testing.assert_array_equal(run.curvature.step, [0, 6])
    assert run.weights.norm.shape[0] == STEPS
    np.testing.assert_array_equal(run.ics.step, [0, 6])
    np.testing.assert_array_equal(run.activations.step, [0, 6])


def test_bad_inputs_are_one_line_and_leave_the_file_as_it_was(tmp_path, data):
    out = tmp_path / "bad.h5"
    with one_cpu_thread(), Recorder(out, run="first", every=EVERY) as rec:
        train(data, rec, epochs=1)
    before = {p.name: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    refused = [
        (lambda: Recorder(out, run="a/b"), "run="),
        (lambda: Recorder(out, run="x", seed=[0, 1]), "seed="),
        (lambda: Recorder(out, run="x", status="done"), "status="),
        (lambda: Recorder(out, run="x", every=0), "every"),
        (lambda: Recorder(out, run="x", flush_every=0), "flush_every"),
        (lambda: Recorder(out, run="x", instruments=Instruments(probe_dtype="half")), "half"),
        (lambda: train(data, Recorder(out, run="first"), epochs=1), "holds a run 'first'"),
    ]
    for make, named in refused:
        with pytest.raises((LandscapeError, ValueError)) as error:
            make()
        assert named in str(error.value) and "\n" not in str(error.value)
    rec = Recorder(out, run="second")
    with pytest.raises(LandscapeError, match="unknown metric 'test_accuracy'"):
        rec.epoch(test_accuracy=0.5)
    after = {p.name: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before


WRITER = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from landscape import Recorder
    from landscape.data import BatchStream, load_cifar10_mini
    from landscape.models import build_model
    torch.set_num_threads(1)
    data = load_cifar10_mini()
    torch.manual_seed(0)
    net = build_model("vgg_a", width=0.125)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    rec = Recorder(sys.argv[1], run="killed", every=5, flush_every=5, seed=0)
    loss_fn = rec.attach(net, optimizer, nn.CrossEntropyLoss())
    step = 0
    while True:
        for x, y in BatchStream(data, 16, seed=step).epoch():
            optimizer.zero_grad()
            loss_fn(net(x), y).backward()
            optimizer.step()
            step += 1
            if step % 5 == 0:
                print(step, flush=True)
""")


def test_kill_9_mid_loop_leaves_a_readable_file_and_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "killed.h5"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        flushed = [int(writer.stdout.readline()) for _ in range(3)]  # three flushes done
        # While it writes, a second writer of the run is refused in one line.
        for resume in (False, True):
            with pytest.raises(LandscapeError) as error:
                rec = Recorder(out, run="killed", resume=resume)
                net = nn.Linear(2, 2)
                rec.attach(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.MSELoss())
            assert "in use by another writer" in str(error.value)
            assert "\n" not in str(error.value)
        time.sleep(0.05 * (os.getpid() % 7))  # somewhere in a later step
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    run = read_sweep(out).runs[0]
    assert run.status == "running" and run.stale
    assert len(run.steps.step) >= flushed[-1]
    np.testing.assert_array_equal(run.steps.step, np.arange(len(run.steps.step)))
    assert np.all(np.isfinite(run.steps.loss)) and len(run.probe.step) >= 3
    with h5py.File(run_file(out, "killed"), "r") as f:  # the run's file opens whole
        assert f["steps/loss"].shape[0] <= len(run.steps.step)
    assert main(["info", str(out)]) == 0
    assert main(["plot", str(out)]) == 0
