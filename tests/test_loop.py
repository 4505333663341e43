"""The training loop's events (``loop.TrainingLoop``, ``events.LoopListener``): what is
announced, in which order, with the rows and checkpoints where the listeners need them."""

from __future__ import annotations

import pytest
import torch

from landscape.data import ImageData, load_dataset
from landscape.store import SweepStore
from landscape.train import (Checkpointing, LoopListener, RunState, SweepConfig, TrainerContext,
                             WriteRows, build_trainer, load_checkpoint, plan_sweep, train_runs)
from landscape.train.signals import StopRequest, SweepInterrupted


def tiny_data() -> ImageData:
    full = load_dataset("cifar10-mini")
    return ImageData(full.name, full.x_train[:64], full.y_train[:64], full.x_test[:32],
                     full.y_test[:32], full.mean, full.std)


class Recorder(LoopListener):
    """Every event, with what the file and the logs held at that moment."""

    def __init__(self, store: SweepStore, stop_at: int | None = None, stop=None):
        self.store, self.stop_at, self.stop, self.events = store, stop_at, stop, []

    def on_rows_due(self, loop):
        self.events.append(("rows_due", loop.step))

    def on_step(self, loop):
        self.events.append(("step", loop.step))
        if loop.step == self.stop_at:
            self.stop.signum = 15  # as SIGTERM would, before the boundary reads it

    def on_epoch_end(self, loop, last):
        self.events.append(("epoch_end", loop.step, last))

    def on_checkpoint_saved(self, loop, path):
        held = loop.runs[0].log.rows_in_file.get("steps", 0)
        self.events.append(("checkpoint", loop.step, held))

    def on_runs_end(self, loop, error):
        self.events.append(("runs_end", loop.step, type(error).__name__ if error else None))


def one_run(tmp_path, **settings):
    config = SweepConfig(models=("vgg_a",), lrs=(0.1,), batch_size=16, width=0.0625,
                         probe_every=2, device="cpu", dataset="cifar10-mini", **settings)
    (group,) = plan_sweep(config)
    store = SweepStore(tmp_path / "loop.h5", config={})
    runs = [RunState(store.run(group.names[0], eta=[0.1]), 0.1)]
    trainer = build_trainer(group, tiny_data(), TrainerContext(torch.device("cpu")))
    return config, store, runs, trainer


def test_the_loop_announces_its_events_in_order_with_the_rows_before_each_checkpoint(tmp_path):
    config, store, runs, trainer = one_run(tmp_path, steps=6)  # 4 steps an epoch: 1.5 epochs
    recorder = Recorder(store)
    path = tmp_path / "run.pt"
    train_runs(trainer, runs, config, tiny_data(), torch.device("cpu"),
               listeners=[WriteRows(store), Checkpointing(path, every=None, keep=True), recorder])
    # listeners in their order: the checkpoint (rows due first) before the recorder's epoch end
    assert recorder.events == [
        ("rows_due", 0), *[("step", s) for s in (1, 2, 3, 4)], ("rows_due", 4),
        ("rows_due", 4), ("checkpoint", 4, 4), ("epoch_end", 4, False),
        ("step", 5), ("step", 6), ("rows_due", 6), ("epoch_end", 6, True), ("rows_due", 6),
        ("runs_end", 6, None)]
    assert load_checkpoint(path).position.epoch == 1  # the next epoch, from its start
    assert runs[0].log.rows_in_file["steps"] == 6 and runs[0].status == "completed"


@pytest.mark.parametrize("asked_before_read", [True, False])
def test_a_stop_is_checkpointed_at_the_boundary_it_stops_at(tmp_path, asked_before_read):
    """A stop asked for during step 2's announcement: seen at that boundary when it comes
    before the checkpointing listener reads it (a progress callback, a signal), else at the
    next one; either way the checkpoint is saved at the step the loop stops at."""
    config, store, runs, trainer = one_run(tmp_path, steps=6)
    stop = StopRequest()
    recorder = Recorder(store, stop_at=2, stop=stop)
    path = tmp_path / "run.pt"
    checkpointing = Checkpointing(path, every=None)
    listeners = [WriteRows(store), *((recorder, checkpointing) if asked_before_read
                                     else (checkpointing, recorder))]
    with pytest.raises(SweepInterrupted):
        train_runs(trainer, runs, config, tiny_data(), torch.device("cpu"), stop=stop,
                   listeners=listeners)
    at = 2 if asked_before_read else 3
    saved = [("rows_due", at), ("checkpoint", at, at)]  # the rows, then the checkpoint
    announced = [("step", at), *saved] if asked_before_read else [*saved, ("step", at)]
    assert recorder.events[at:] == [*announced, ("rows_due", at), ("rows_due", at),
                                    ("runs_end", at, "SweepInterrupted")]
    position = load_checkpoint(path).position
    assert position.step == at and position.seen == 16 * at and runs[0].status == "interrupted"
    assert runs[0].log.rows_in_file["steps"] == at


def test_a_listener_failing_at_the_end_does_not_hide_the_error_that_ended_the_runs(tmp_path):
    class Broken(LoopListener):
        def on_runs_end(self, loop, error):
            raise OSError("disk gone")

    config, store, runs, trainer = one_run(tmp_path, steps=6)
    stop = StopRequest()
    stop.signum = 2
    with pytest.raises(SweepInterrupted) as raised:
        train_runs(trainer, runs, config, tiny_data(), torch.device("cpu"), stop=stop,
                   listeners=[WriteRows(store), Broken()])
    assert any("Broken.on_runs_end failed" in note and "disk gone" in note
               for note in raised.value.__notes__)
    assert runs[0].steps == 1 and runs[0].status == "interrupted"
