"""``--lr-schedule``: torch's learning-rate schedulers over a run's optimizer, the learning rate
recorded at every step (``steps/learning_rate``) and at every probed step, the probe's step
sizes following it (LR(t) x --etas), the axis in the sweep's product and run names, bad
values refused, and a constant schedule that is the optimizer of before."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape import data as data_mod
from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.read import read_sweep
from landscape.report.build import stability_edge
from landscape.report.pools import Pooling
from landscape.store import RunLog
from landscape.train import (SweepConfig, TrainerContext, build_trainer, load_experiment,
                             plan_sweep, run_sweep)
from landscape.train.schedules import SCHEDULES

from conftest import one_cpu_thread

STEPS = 24  # an epoch and a half of tiny_data at batch 16
LR = 0.05


@lru_cache(maxsize=1)
def tiny_data():
    """256 training and 128 test images of cifar10-mini: 16 steps an epoch at batch 16."""
    full = data_mod.load_dataset("cifar10-mini")
    return data_mod.ImageData(full.name, full.x_train[:256], full.y_train[:256],
                              full.x_test[:128], full.y_test[:128], full.mean, full.std)


def config(**changes) -> SweepConfig:
    settings = dict(models=("mlp_bn",), lrs=(LR,), steps=STEPS, batch_size=16, probe_every=5,
                    width=0.125, dataset="cifar10-mini", device="cpu", momentum=0.9)
    return SweepConfig(**{**settings, **changes})


@lru_cache(maxsize=None)
def sweep(tmp_root: str, **changes):
    out = f"{tmp_root}/{'-'.join(f'{k}{v}' for k, v in sorted(changes.items())) or 'plain'}.h5"
    with one_cpu_thread():
        run_sweep(config(**changes), out, data=tiny_data())
    return {r.name: r for r in read_sweep(out).runs}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("schedules"))


def by_hand(scheduler_class, per_epoch_losses=None, **kwargs) -> list[float]:
    """torch's scheduler stepped by hand on a copy of the run's optimizer (SGD, momentum 0.9,
    the run's learning rate): the learning rate of each of the STEPS steps. Per step, or with
    ``per_epoch_losses`` once per epoch of 16 steps on that epoch's training loss."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR, momentum=0.9)
    scheduler = scheduler_class(optimizer, **kwargs)
    rates = []
    for step in range(STEPS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if per_epoch_losses is None:
            scheduler.step()
        elif (step + 1) % 16 == 0:
            scheduler.step(per_epoch_losses[step // 16])
    return rates


PER_STEP = {
    "step": (torch.optim.lr_scheduler.StepLR, dict(step_size=STEPS // 3, gamma=0.1)),
    "cosine": (torch.optim.lr_scheduler.CosineAnnealingLR, dict(T_max=STEPS, eta_min=0.0)),
    "exponential": (torch.optim.lr_scheduler.ExponentialLR, dict(gamma=0.01 ** (1 / STEPS))),
    "linear": (torch.optim.lr_scheduler.LinearLR, dict(start_factor=1.0, end_factor=0.0,
                                                         total_iters=STEPS)),
}


@pytest.mark.parametrize("name", PER_STEP)
def test_the_recorded_learning_rate_is_torchs_scheduler_stepped_by_hand(root, name):
    """Each step's learning rate in the file is the one torch's scheduler gives that step
    (stepped after every optimizer step, with the defaults the README states), bit for bit;
    the probed steps record the same, and the run says its schedule and its arguments."""
    run = sweep(root, lr_schedule=name)[f"mlp_bn-lr{LR:g}-seed0"]
    scheduler_class, kwargs = PER_STEP[name]
    expected = by_hand(scheduler_class, **kwargs)
    assert run.steps.learning_rate.dtype == np.float64
    assert run.steps.learning_rate.tolist() == expected
    assert len(set(expected)) > 2  # it does change
    assert run.probe.learning_rate.tolist() == [expected[s] for s in run.probe.step]
    assert run.attrs["lr_schedule"] == name
    assert json.loads(run.attrs["lr_schedule_args"]) == kwargs


def test_plateau_steps_once_an_epoch_on_its_training_loss(root):
    """ReduceLROnPlateau, stepped at each epoch's end on that epoch's mean training loss (the
    file's epochs/train_loss), with the factor and patience given: the learning rate of every
    step is torch's stepped by hand on those losses. At LR 2 the third epoch's loss is above
    the second's: the fourth trains at half the rate."""
    run = sweep(root, lr_schedule="plateau", lr_patience=0, lr_plateau_factor=0.5, steps=56,
                lrs=(2.0,))["mlp_bn-lr2-seed0"]
    losses = run.epochs.train_loss
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    expected = []
    for step in range(56):
        expected.append(optimizer.param_groups[0]["lr"])
        if (step + 1) % 16 == 0:
            scheduler.step(losses[step // 16])
    assert run.steps.learning_rate.tolist() == expected
    assert expected[47] == 2.0 and expected[48] == 1.0  # the reduction happened
    assert json.loads(run.attrs["lr_schedule_args"]) == {"mode": "min", "factor": 0.5,
                                                         "patience": 0}


def test_the_probes_step_sizes_are_the_learning_rate_at_the_step_times_the_etas():
    """The probe's records at a probed step carry eta = LR(t) x --etas (the optimizer's
    learning rate at that step, in the probe's float32) and that LR; the log keeps LR(t)."""
    cfg = config(lr_schedule="cosine", etas=(0.5, 1.0, 3.0), probe_every=4, steps=12)
    (group,) = plan_sweep(cfg)
    records = []
    context = TrainerContext(torch.device("cpu"), on_probe=lambda k, r: records.append(r))
    with one_cpu_thread():
        trainer = build_trainer(group, tiny_data(), context)
        rates = []
        for step, (x, y) in zip(range(12), trainer.task.stream(16, 0, False).epoch()):
            rates.append(float(trainer.learning_rates()[0]))
            trainer.step(x, y, step)
        trainer.close()
    assert [r.step for r in records] == [0, 4, 8]
    assert rates[0] == LR and rates[4] < LR and rates[8] < rates[4]
    for record in records:
        lr = rates[record.step]
        assert record.lr == lr
        # the probe's arithmetic (float32) holds the step sizes it took
        assert np.array_equal(record.eta, np.float32([e * lr for e in (0.5, 1.0, 3.0)]))
    log = RunLog("r", np.array([0.5, 1.0, 3.0]) * LR)
    for record in records:
        log.add_probe(record)
    assert log.take_pending()["rows"]["probe"]["learning_rate"].tolist() == \
        [rates[0], rates[4], rates[8]]


def test_a_probe_on_another_grid_is_refused_by_the_log():
    record = type("Record", (), dict(eta=np.array([1.0, 3.0, 4.0]), lr=0.1))()
    with pytest.raises(ValueError, match="no multiple"):
        RunLog("r", np.array([0.5, 1.0, 2.0])).add_probe(record)


def test_the_read_step_sizes_follow_the_schedule_and_beta_its_edge(root):
    run = sweep(root, lr_schedule="linear")[f"mlp_bn-lr{LR:g}-seed0"]
    etas = np.asarray(config().etas)
    np.testing.assert_allclose(run.probe.eta_at_step,
                               run.probe.learning_rate[:, None] * etas[None, :], rtol=1e-15)
    edge = stability_edge(run)  # (2 + 2 mu) / LR(t) through the probed steps
    assert edge.x == tuple(run.probe.step.tolist())
    assert list(edge.values) == [3.8 / lr for lr in run.probe.learning_rate]
    assert "linear schedule" in edge.label


def test_a_constant_schedule_is_the_optimizer_of_before(root):
    """No scheduler at all, absolute probe step sizes as before schedules; every step and
    probed step records the run's learning rate, and the read step sizes are eta itself."""
    (group,) = plan_sweep(config())
    with one_cpu_thread():
        trainer = build_trainer(group, tiny_data(), TrainerContext(torch.device("cpu")))
    assert trainer.schedule.scheduler is None and not trainer.probe.relative
    assert trainer.state_dict()["lr_schedule"] is None
    run = sweep(root)[f"mlp_bn-lr{LR:g}-seed0"]
    assert run.attrs["lr_schedule"] == "constant" and "lr_schedule_args" not in run.attrs
    assert (run.steps.learning_rate == LR).all() and (run.probe.learning_rate == LR).all()
    assert np.array_equal(run.probe.eta_at_step, np.tile(run.probe.eta, (len(run.probe.step), 1)))
    edge = stability_edge(run)
    assert edge.y == 3.8 / LR and edge.x == ()


def test_the_schedule_is_an_axis_of_the_product_named_only_when_it_varies(root):
    cfg = config(lr_schedule=("constant", "cosine"), lrs=(0.05, 0.1), grid="batched")
    assert cfg.run_count() == 4 and cfg.varying_axes() == ("lr_schedule",)
    groups = plan_sweep(cfg)
    assert [(g.mode, g.names) for g in groups] == [
        ("batched", ["mlp_bn-lr0.05-seed0-constant", "mlp_bn-lr0.1-seed0-constant"]),
        ("sequential", ["mlp_bn-lr0.05-seed0-cosine"]),
        ("sequential", ["mlp_bn-lr0.1-seed0-cosine"])]  # a schedule trains alone
    assert [r.name for g in plan_sweep(config(lr_schedule="step")) for r in g.runs] == \
        ["mlp_bn-lr0.05-seed0"]
    assert set(SCHEDULES) == {"constant", "step", "cosine", "exponential", "linear", "plateau"}


BAD = [
    (["--lr-schedule", "nope"], "unknown --lr-schedule 'nope'"),
    (["--lr-schedule", "cosine,cosine"], "twice"),
    (["--lr-schedule", "step", "--lr-step-gamma", "-0.1"], "--lr-step-gamma must be a positive"),
    (["--lr-schedule", "step", "--lr-step-size", "0"], "--lr-step-size must be a positive"),
    (["--lr-schedule", "exponential", "--lr-exp-gamma", "0"], "--lr-exp-gamma"),
    (["--lr-schedule", "linear", "--lr-end-factor", "1.5"], "--lr-end-factor"),
    (["--lr-schedule", "plateau", "--lr-plateau-factor", "1"], "--lr-plateau-factor"),
    (["--lr-schedule", "plateau", "--lr-patience", "-1"], "--lr-patience"),
    (["--lr-schedule", "cosine", "--lr-eta-min", "0.2", "--lrs", "0.1"], "--lr-eta-min 0.2"),
    (["--lr-eta-min", "-1"], "--lr-eta-min"),
]


@pytest.mark.parametrize("args,named", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_a_bad_schedule_value_is_one_line_exit_2_and_writes_nothing(args, named, tmp_path,
                                                                    capsys):
    out = tmp_path / "never.h5"
    assert main(["run", "--out", str(out), "--dataset", "cifar10-mini"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err, err
    assert list(tmp_path.iterdir()) == []


def test_experiment_files_take_the_schedule_and_its_parameters(tmp_path):
    path = tmp_path / "schedule.toml"
    path.write_text('[run]\nlr_schedule = ["constant", "step", "plateau"]\nlr_step_size = 100\n'
                    'lr_step_gamma = 0.5\nlr_patience = 3\nlr_eta_min = 0\n')
    values = load_experiment(path)
    assert values["lr_schedule"] == ("constant", "step", "plateau")
    assert values["lr_step_size"] == 100 and values["lr_eta_min"] == 0.0
    SweepConfig(**values, dataset="cifar10-mini").validate()
    for bad, named in (('lr_step_size = "ten"', "lr_step_size must be int"),
                       ("lr_patience = 1.5", "lr_patience must be int"),
                       ('lr_schedule = ["step", 3]', "lr_schedule")):
        path.write_text(f"[run]\n{bad}\n")
        with pytest.raises(LandscapeError, match=named):
            load_experiment(path)
    path.write_text("[run]\nlr_schedule = \"step\"\nlr_step_gamma = -0.5\n")
    with pytest.raises(LandscapeError, match="--lr-step-gamma must be a positive number, got -0.5"):
        SweepConfig(**load_experiment(path), dataset="cifar10-mini").validate()


def test_files_from_before_read_their_constant_learning_rate():
    """A file written before the learning rate was recorded reads each step's and probed
    step's learning rate as the run's lr (the only one there was)."""
    for run in read_sweep(Path(__file__).parent / "data" / "sweep-schema2.h5").runs:
        assert len(run.steps.learning_rate) == len(run.steps.step) > 0
        assert (run.steps.learning_rate == run.lr).all()
        assert (run.probe.learning_rate == run.lr).all()
        assert np.array_equal(run.probe.eta_at_step[0], run.probe.eta)


def test_a_run_of_an_older_file_continues_with_its_learning_rate_filled_in(tmp_path):
    """Rows appended to a run whose file lacks the column (resumed, or a journal of the
    version before replayed into it): the column is made with the run's lr in the rows it
    had, and the rows of an older block get the same."""
    log = RunLog("r", np.array([0.05, 0.1]))
    log.set_attrs(lr=0.1)
    log.add_steps(step=[0, 1], epoch=[0, 0], loss=[1.0, 0.9], grad_norm=[1.0, 1.0],
                  grad_diff=[np.nan, 0.1], beta_consecutive=[np.nan, 1.0],
                  learning_rate=[0.1, 0.1])
    with h5py.File(tmp_path / "r.h5", "w") as f:
        log._write(f)
        log._committed()
        del f["steps/learning_rate"], f["probe/learning_rate"]  # as the version before wrote
        later = RunLog("r", np.array([0.05, 0.1]))
        old_block = {"name": "r", "eta": later.eta, "attrs": {"lr": 0.1}, "extra": {},
                     "probe_layers": None,
                     "rows": {"steps": {"step": np.array([2]), "epoch": np.array([0]),
                                        "loss": np.array([0.8]), "grad_norm": np.array([1.0]),
                                        "grad_diff": np.array([0.1]),
                                        "beta_consecutive": np.array([1.0])}}}
        later.absorb(old_block)
        later.add_steps(step=[3], epoch=[0], loss=[0.7], grad_norm=[1.0], grad_diff=[0.1],
                        beta_consecutive=[1.0], learning_rate=[0.09])
        later._write(f)
        assert f["steps/learning_rate"][()].tolist() == [0.1, 0.1, 0.1, 0.09]
        assert f["steps/step"][()].tolist() == [0, 1, 2, 3]
        assert f["steps/learning_rate"].attrs["units"] == "1"
        assert f["probe/learning_rate"].shape == (0,)


def test_report_pools_name_the_schedule_and_its_arguments_only_where_needed(root):
    """Runs of other schedules pool apart, labelled by the schedule; the schedule's arguments
    (``lr_schedule_args``) are named only where one schedule has several."""
    runs = [next(iter(sweep(root, **kw).values()))
            for kw in ({}, {"lr_schedule": "cosine"}, {"lr_schedule": "linear"})]
    pooling = Pooling.of(runs)
    assert pooling.differing == ("lr_schedule",) and len(pooling.pools(runs)) == 3
    assert pooling.label(runs[1]).endswith("lr schedule cosine")
    other = next(iter(sweep(root, lr_schedule="cosine", lr_eta_min=0.001).values()))
    pooling = Pooling.of(runs + [other])
    assert pooling.differing == ("lr_schedule", "lr_schedule_args")
    assert pooling.label(runs[0]).endswith("lr schedule constant, lr schedule args {}")
