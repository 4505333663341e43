"""Sweeps over every axis: the product of the lists, run names and attributes, validation of
every list, and what runs of one seed share (initial weights, minibatch order)."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import pytest
import torch

from landscape import data as data_mod
from landscape.errors import LandscapeError
from landscape.read import read_sweep
from landscape.train import (AXES, MAX_RUNS_UNASKED, OPTIMIZERS, SweepConfig, build_run,
                             check_size, load_experiment, plan_sweep, run_name, run_sweep)

from conftest import assert_refused_in_one_line, one_cpu_thread


@lru_cache(maxsize=1)
def tiny_data():
    """256 training and 128 test images of cifar10-mini (a few ms per step at width 1/8)."""
    full = data_mod.load_dataset("cifar10-mini")
    return data_mod.ImageData(full.name, full.x_train[:256], full.y_train[:256],
                              full.x_test[:128], full.y_test[:128], full.mean, full.std)


def tiny_sweep(out, **config):
    settings = dict(lrs=(0.05,), steps=2, probe_every=100, width=0.125, batch_size=16,
                    dataset="cifar10-mini", device="cpu")
    config = SweepConfig(**{**settings, **config})
    with one_cpu_thread():
        run_sweep(config, str(out), data=tiny_data())
    return config, {r.name: r for r in read_sweep(out).runs}


def test_the_sweep_is_the_product_of_its_axes(tmp_path):
    """2 models x 2 seeds x 2 batch sizes x 2 dropout rates x 2 optimizers = 32 runs, each
    named by the axes that vary and carrying every axis as an attribute; runs of one seed,
    batch size and dropout rate start from the same weights on the same first minibatch."""
    config, runs = tiny_sweep(tmp_path / "product.h5", models=("mlp", "cnn_bn"), seed=(0, 1),
                              batch_size=(16, 32), dropout=(0.0, 0.2),
                              optimizer=("sgd", "adamw"), weight_decay=1e-4)
    combos = list(itertools.product(("mlp", "cnn_bn"), (0, 1), (16, 32), (0.0, 0.2),
                                    ("sgd", "adamw")))
    assert config.run_count() == len(runs) == len(combos) == 32
    assert config.varying_axes() == ("seed", "batch_size", "dropout", "optimizer")
    for model, seed, batch_size, dropout, optimizer in combos:
        run = runs[f"{model}-lr0.05-seed{seed}-bs{batch_size}-do{dropout:g}-{optimizer}"]
        assert run.status == "completed"
        assert "depth" not in run.attrs  # the one axis written only when given (--depth)
        assert {a: run.attrs[a] for a in AXES if a != "depth"} == dict(
            seed=seed, batch_size=batch_size, momentum=0.0, weight_decay=1e-4, dropout=dropout,
            optimizer=optimizer, activation="relu", loss="cross_entropy", label_smoothing=0.0,
            lr_schedule="constant")
        assert run.attrs["model"] == model and run.attrs["lr"] == 0.05
        assert run.attrs["steps_per_epoch"] == 256 // batch_size
    first_loss = {name: r.steps.loss[0] for name, r in runs.items()}
    for model, seed, batch_size, dropout in itertools.product(("mlp", "cnn_bn"), (0, 1),
                                                              (16, 32), (0.0, 0.2)):
        stem = f"{model}-lr0.05-seed{seed}-bs{batch_size}-do{dropout:g}"
        # The loss of step 0 is taken before any update: same weights, batch and dropout mask.
        assert first_loss[f"{stem}-sgd"] == first_loss[f"{stem}-adamw"]
        other_seed = stem.replace(f"seed{seed}", f"seed{1 - seed}")
        assert first_loss[f"{stem}-sgd"] != first_loss[f"{other_seed}-sgd"]
        # ...and the optimizers then take different steps.
        assert runs[f"{stem}-sgd"].steps.loss[1] != runs[f"{stem}-adamw"].steps.loss[1]


def test_a_sweep_of_models_lrs_and_seeds_keeps_todays_names(tmp_path):
    _, runs = tiny_sweep(tmp_path / "seeds.h5", models=("vgg_a",), seed=(0, 1))
    assert sorted(runs) == ["vgg_a-lr0.05-seed0", "vgg_a-lr0.05-seed1"]
    attrs = runs["vgg_a-lr0.05-seed1"].attrs
    assert (attrs["optimizer"], attrs["dropout"], attrs["momentum"], attrs["seed"]) == \
        ("sgd", 0.0, 0.0, 1)
    assert run_name("vgg_a_bn", 0.1, 0) == "vgg_a_bn-lr0.1-seed0"


def test_momentum_and_weight_decay_lists_name_their_runs(tmp_path):
    _, runs = tiny_sweep(tmp_path / "mom.h5", models=("mlp",), momentum=(0.0, 0.9),
                         weight_decay=(0.0, 5e-4))
    assert sorted(runs) == ["mlp-lr0.05-seed0-mom0-wd0", "mlp-lr0.05-seed0-mom0-wd0.0005",
                            "mlp-lr0.05-seed0-mom0.9-wd0", "mlp-lr0.05-seed0-mom0.9-wd0.0005"]
    assert runs["mlp-lr0.05-seed0-mom0.9-wd0.0005"].attrs["momentum"] == 0.9
    assert runs["mlp-lr0.05-seed0-mom0.9-wd0.0005"].attrs["weight_decay"] == 5e-4


BAD_LISTS = [
    (["--seeds", "0,-1"], "got -1"),
    (["--seed", "0,0"], "twice"),
    (["--seed", "0,x"], "'x'"),
    (["--batch-size", "16,0"], "got 0"),
    (["--batch-size", "16,x"], "'x'"),
    (["--batch-size", "16,"], "--batch-size"),
    (["--momentum", "0,1.5"], "got 1.5"),
    (["--weight-decay", "0,-0.001"], "got -0.001"),
    (["--dropout", "0.2,1"], "got 1.0"),
    (["--dropout", "-0.1"], "got -0.1"),
    (["--optimizer", "sgd,lion"], "'lion'"),
    (["--optimizer", "sgd,lamb"], "'lamb'"),
    (["--optimizer", "rmsprop", "--momentum", "0.9"], "--momentum"),
    (["--nesterov"], "--nesterov"),  # momentum 0
    (["--nesterov", "--momentum", "0,0.9"], "--nesterov"),
    (["--activation", "relu,swish"], "'swish'"),
    (["--activation", "relu,relu"], "twice"),
    (["--loss", "cross_entropy,l1"], "'l1'"),
    (["--label-smoothing", "0,1"], "got 1.0"),
    (["--loss", "hinge", "--label-smoothing", "0,0.1"], "hinge"),
    (["--models", "dln", "--dataset", "gaussian-linear", "--batch-size", "1000",
      "--activation", "relu,gelu"], "no nonlinearity"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum"),
    (["--optimizer", "sgd,adam", "--momentum", "0,0.9"], "--momentum"),
    (["--models", "dln", "--dataset", "gaussian-linear", "--batch-size", "1000",
      "--dropout", "0,0.2"], "no dropout layers"),
    (["--models", "dln", "--dataset", "gaussian-linear", "--batch-size", "1000,10"],
     "--batch-size 1000"),
    # Judged against the data, before the file exists.
    (["--batch-size", "16,100000"], "--batch-size 100000"),
    (["--seeds", ",".join(map(str, range(501)))], "--yes"),  # 2 models x 501 seeds
]


@pytest.mark.parametrize("args,named", BAD_LISTS, ids=[" ".join(a)[:40] for a, _ in BAD_LISTS])
def test_a_bad_value_in_any_list_is_one_line_exit_2_and_writes_nothing(args, named, tmp_path,
                                                                       capsys):
    assert_refused_in_one_line(args, named, tmp_path, capsys)


def test_more_than_a_thousand_runs_needs_yes():
    config = SweepConfig(models=("mlp", "cnn"), lrs=(0.1, 0.2), seed=tuple(range(251)),
                         dataset="cifar10-mini", device="cpu")
    assert config.run_count() == 1004 > MAX_RUNS_UNASKED
    with pytest.raises(LandscapeError, match="1,004 runs .*251 seed.*--yes"):
        check_size(config, allow_large=False)
    check_size(config, allow_large=True)
    with pytest.raises(LandscapeError, match="--yes"):
        run_sweep(config, "never.h5", data=tiny_data())


def test_experiment_files_take_lists_for_every_axis(tmp_path):
    path = tmp_path / "axes.toml"
    path.write_text('[run]\nmodels = ["mlp", "mlp_bn"]\nseed = [0, 1, 2]\nbatch_size = [64, 128]\n'
                    'dropout = [0, 0.5]\noptimizer = "adam"\nweight_decay = [0, 1e-4]\n'
                    '[light]\nseed = 4\n')
    values = load_experiment(path)
    assert values["seed"] == (0, 1, 2) and values["dropout"] == (0.0, 0.5)
    assert values["optimizer"] == "adam" and values["weight_decay"] == (0.0, 1e-4)
    config = SweepConfig(**values, dataset="cifar10-mini")
    config.validate()
    assert config.run_count() == 2 * 1 * 3 * 2 * 2 * 2 and len(config.cells()) == 24
    assert load_experiment(path, light=True)["seed"] == 4
    path.write_text('[run]\ndropout = [0.1, 1.5]\n')
    with pytest.raises(LandscapeError, match="--dropout must be in \\[0, 1\\), got 1.5"):
        SweepConfig(**load_experiment(path)).validate()
    path.write_text('[run]\nseed = [0, "one"]\n')
    with pytest.raises(LandscapeError, match="seed"):
        load_experiment(path)


def test_cells_hold_single_values_and_the_last_axis_varies_fastest():
    config = SweepConfig(seed=(0, 1), optimizer=("sgd", "adam"), batch_size=64)
    cells = config.cells()
    assert [(c.seed, c.optimizer, c.batch_size) for c in cells] == [
        (0, "sgd", 64), (0, "adam", 64), (1, "sgd", 64), (1, "adam", 64)]
    assert config.seed == (0, 1)  # the sweep's own config keeps its lists
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "adagrad", "adadelta", "adamax", "rmsprop"}


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("model", ["mlp_bn", "cnn", "vgg_a_bn"])
def test_runs_of_one_seed_start_from_the_same_weights_whatever_the_axis(model, one_cpu_thread):
    """Learning rate, batch size, momentum, weight decay, dropout and optimizer change nothing
    of the initial weights; another seed does."""
    base = SweepConfig(width=0.125, seed=3)
    reference = _params(build_run(model, 0.1, base, None, torch.device("cpu"))[0])
    for change in (dict(batch_size=512), dict(momentum=0.9), dict(weight_decay=5e-4),
                   dict(dropout=0.4), dict(optimizer="adam"), dict(optimizer="adamw"),
                   dict(optimizer="rmsprop"), dict(activation="gelu"), dict(loss="mse"),
                   dict(label_smoothing=0.1)):
        cell = SweepConfig(width=0.125, seed=3, **change)
        model_, optimizer = build_run(model, 0.5, cell, None, torch.device("cpu"))
        assert all(torch.equal(a, b) for a, b in zip(_params(model_), reference)), change
        assert type(optimizer).__name__.lower() == cell.optimizer
    other = _params(build_run(model, 0.1, SweepConfig(width=0.125, seed=4), None,
                              torch.device("cpu"))[0])
    assert not all(torch.equal(a, b) for a, b in zip(other, reference))


def test_batch_size_keeps_the_order_of_each_epoch():
    """The order of every epoch is one permutation drawn from the seed: a batch size of 32
    takes the same images in the same order as 16, two batches at once; another seed draws
    another order."""
    data = tiny_data()
    small = data_mod.BatchStream(data, 16, seed=7)
    large = data_mod.BatchStream(data, 32, seed=7)
    for _ in range(2):  # epochs
        batches_small, batches_large = list(small.epoch()), list(large.epoch())
        assert len(batches_small) == 2 * len(batches_large) == 16
        for i, (x, y) in enumerate(batches_large):
            assert torch.equal(torch.cat([batches_small[2 * i][0], batches_small[2 * i + 1][0]]), x)
            assert torch.equal(torch.cat([batches_small[2 * i][1], batches_small[2 * i + 1][1]]), y)
    other = torch.cat([y for _, y in data_mod.BatchStream(data, 16, seed=8).epoch()])
    fresh = torch.cat([y for _, y in data_mod.BatchStream(data, 16, seed=7).epoch()])
    assert not torch.equal(other, fresh)
    np.testing.assert_array_equal(np.sort(other.numpy()), np.sort(fresh.numpy()))


@pytest.mark.parametrize("change,mode", [({}, "batched"), (dict(dropout=0.2), "sequential"),
                                         (dict(optimizer="adam"), "sequential"),
                                         (dict(optimizer="adamw"), "sequential")])
def test_the_batched_grid_takes_only_sgd_runs_without_random_draws(change, mode, one_cpu_thread):
    """vmap cannot replay dropout masks and BatchedGrid writes SGD's update: such runs of a
    --grid batched sweep train one after another (their `grid` attribute says so)."""
    cell = SweepConfig(models=("mlp_bn",), lrs=(0.01, 0.02), width=0.125, grid="batched",
                       device="cpu", **change)
    assert {g.mode for g in plan_sweep(cell, on_gpu=False)} == {mode}
