"""Train mode vs eval mode per epoch: against a direct computation, leaving no trace, stored
under epochs/ and drawn in the report (section 4c)."""

from __future__ import annotations

import copy
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.models import build_model, random_modules
from landscape.read import read_sweep
from landscape.report.build import build_report
from landscape.store import SweepStore
from landscape.train.tasks import MODE_SUBSET, mode_stats, mode_subset

from conftest import add_synthetic_run
from paper_util import assert_no_trace, snapshot
from test_axes import tiny_data, tiny_sweep


def trained(name, steps=5, dropout=0.3, lr=0.1):
    """A model whose BN running statistics are a few steps old (not its batches' statistics)."""
    torch.manual_seed(0)
    model = build_model(name, width=0.25, dropout=dropout)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in mode_subset(tiny_data(), 32)[:steps]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def direct(model, batches, train: bool):
    """Mean loss and accuracy of ``batches`` on a float64 deep copy: train mode with its
    dropout layers switched off, or eval mode."""
    copy_ = copy.deepcopy(model).double().train(train)
    for m in random_modules(copy_):
        m.eval()
    losses, right, n = [], 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = copy_(x.double())
            losses.append(F.cross_entropy(out, y, reduction="sum"))
            right += int((out.argmax(1) == y).sum())
            n += len(y)
    return float(sum(losses)) / n, right / n


@pytest.mark.parametrize("name", ["cnn_bn", "mlp_bn", "vgg_a_noisy_bn"])
def test_mode_statistics_equal_a_direct_computation_and_leave_no_trace(name, one_cpu_thread):
    model = trained(name, dropout=0.0 if name.startswith("vgg") else 0.3)
    model.train()
    batches = mode_subset(tiny_data(), 32)[:4]
    before = snapshot(model)
    train_loss, train_acc, eval_loss, eval_acc = mode_stats(model, batches)
    assert_no_trace(before, snapshot(model))  # parameters, buffers, modes, torch's RNG
    ref_train, ref_eval = direct(model, batches, True), direct(model, batches, False)
    assert train_loss == pytest.approx(ref_train[0], rel=1e-5)
    assert eval_loss == pytest.approx(ref_eval[0], rel=1e-5)
    assert (train_acc, eval_acc) == pytest.approx((ref_train[1], ref_eval[1]), abs=1 / 256)
    assert abs(train_loss - eval_loss) > 1e-3  # running statistics lag the batches' own


def test_without_normalization_both_modes_compute_the_same(one_cpu_thread):
    model = trained("cnn", dropout=0.5).eval()
    before = snapshot(model)
    train_loss, train_acc, eval_loss, eval_acc = mode_stats(model, mode_subset(tiny_data(), 32))
    assert (train_loss, train_acc) == (eval_loss, eval_acc)  # dropout is off in both
    assert_no_trace(before, snapshot(model))


def test_the_subset_is_fixed_whole_batches_of_the_training_split():
    data = tiny_data()  # 256 training images
    a, b = mode_subset(data, 32), mode_subset(data, 32)
    assert len(a) == 8 and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert torch.equal(torch.cat([y for _, y in a]), data.y_train[:256])
    assert len(mode_subset(data, 100)) == 2  # ceil(1024 / 100) = 11, the split holds 2
    assert MODE_SUBSET == 1024


def test_a_sweep_stores_both_modes_per_epoch(tmp_path):
    _, runs = tiny_sweep(tmp_path / "modes.h5", models=("cnn", "cnn_bn"), steps=20,
                         batch_size=32)  # 8 steps per epoch: epochs 0, 1 and a partial 2
    for name, run in runs.items():
        e = run.epochs
        assert len(e.epoch) == 3
        for field in ("train_mode_loss", "train_mode_acc", "eval_mode_loss", "eval_mode_acc"):
            assert np.isfinite(getattr(e, field)).all(), (name, field)
    plain, bn = runs["cnn-lr0.05-seed0"].epochs, runs["cnn_bn-lr0.05-seed0"].epochs
    np.testing.assert_array_equal(plain.train_mode_loss, plain.eval_mode_loss)
    assert (bn.train_mode_loss != bn.eval_mode_loss).all()
    with h5py.File(tmp_path / "modes.h5", "r") as f:
        ds = f["runs/cnn_bn-lr0.05-seed0/epochs/eval_mode_acc"]
        assert "eval mode" in ds.attrs["description"] and ds.dims[0].keys() == ["epoch"]
    page = build_report([read_sweep(tmp_path / "modes.h5")])
    assert "4c. Train mode vs eval mode" in page


def test_files_without_the_modes_read_nan_and_have_no_section(tmp_path):
    path = tmp_path / "old.h5"
    store = SweepStore(path, config={}, command="synthetic")
    add_synthetic_run(store, "vgg_a_bn", 0.1, 40)
    with h5py.File(path, "a") as f:  # as a file written before the fields existed
        for field in ("train_mode_loss", "train_mode_acc", "eval_mode_loss", "eval_mode_acc"):
            del f[f"runs/vgg_a_bn-lr0.1-seed0/epochs/{field}"]
    sweep = read_sweep(path)
    epochs = sweep.runs[0].epochs
    assert len(epochs.epoch) == 3 and np.isnan(epochs.eval_mode_loss).all()
    assert math.isnan(epochs.train_mode_acc[0])
    assert "4c. Train mode" not in build_report([sweep])
