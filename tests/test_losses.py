"""The ``--loss`` and ``--label-smoothing`` axes: each loss against its definition written out
in float64, the axes in the sweep product and run names, bad values refused, and a sweep's
probe, test loss and batched grid measuring the loss the run trains on."""

from __future__ import annotations

import copy
import math
import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_refused_in_one_line, one_cpu_thread
from landscape import data as data_mod
from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.probes import StepResolutionWarning
from landscape.read import read_sweep
from landscape.report.build import build_report
from landscape.report.pools import Pooling, losses_text, setting_key
from landscape.train import SweepConfig, build_run, plan_sweep, run_sweep, sweep_runs
from landscape.train.batched import BatchedGrid
from landscape.train.experiment import load_experiment
from landscape.train.losses import FOCAL_GAMMA, LOSSES, classification_loss, focal_loss
from landscape.train.tasks import ClassificationTask, mode_stats

B, C = 6, 5


def logits_and_targets(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(B, C, generator=g)).to(dtype)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    return z, y


def targets_by_hand(y, eps):
    """(1 - eps) one-hot + eps / C, element by element."""
    return [[(1 - eps) * (c == int(y[b])) + eps / C for c in range(C)] for b in range(B)]


def by_hand(name, z, y, eps=0.0, gamma=FOCAL_GAMMA):
    """The README's definitions, a float64 loop over samples and classes."""
    z, q = z.double().tolist(), targets_by_hand(y, eps)
    total = 0.0
    for b in range(B):
        t = int(y[b])
        log_z = math.log(sum(math.exp(v) for v in z[b]))
        p = [math.exp(v - log_z) for v in z[b]]
        if name == "cross_entropy":
            total += -sum(q[b][c] * math.log(p[c]) for c in range(C))
        elif name == "mse":
            total += sum((z[b][c] - q[b][c]) ** 2 for c in range(C)) / C
        elif name == "bce":
            total += sum(math.log1p(math.exp(z[b][c])) - q[b][c] * z[b][c] for c in range(C)) / C
        elif name == "hinge":
            total += sum(max(0.0, 1 - z[b][t] + z[b][c]) for c in range(C) if c != t) / C
        elif name == "focal":
            total += -sum(q[b][c] * (1 - p[c]) ** gamma * math.log(p[c]) for c in range(C))
    return total / B


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_is_its_definition(name, eps):
    if name == "hinge" and eps:
        with pytest.raises(LandscapeError, match="hinge"):
            classification_loss(name, eps)
        return
    z, y = logits_and_targets()
    loss = classification_loss(name, eps)
    assert float(loss(z, y)) == pytest.approx(by_hand(name, z, y, eps), rel=1e-12, abs=1e-15)
    z32 = z.float()  # what the trainers hand it
    assert float(loss(z32, y)) == pytest.approx(by_hand(name, z, y, eps), rel=1e-5)
    per_sample = loss(z, y, reduction="none")
    assert per_sample.shape == (B,)
    torch.testing.assert_close(loss(z, y, reduction="sum"), per_sample.sum())
    torch.testing.assert_close(loss(z, y), per_sample.mean())


def test_cross_entropy_is_torchs_and_the_default_is_the_very_function():
    z, y = logits_and_targets()
    assert classification_loss() is F.cross_entropy  # the runs of before compute what they did
    assert classification_loss("cross_entropy", 0.0) is F.cross_entropy
    smoothed = classification_loss("cross_entropy", 0.1)
    assert torch.equal(smoothed(z, y), F.cross_entropy(z, y, label_smoothing=0.1))


def test_focal_with_gamma_0_is_cross_entropy_and_smoothing_is_torchs():
    z, y = logits_and_targets()
    for eps in (0.0, 0.1, 0.5):
        torch.testing.assert_close(focal_loss(z, y, smoothing=eps, gamma=0.0),
                                   F.cross_entropy(z, y, label_smoothing=eps))
    assert FOCAL_GAMMA == 2.0
    focal = classification_loss("focal")
    assert float(focal(z, y)) < float(F.cross_entropy(z, y))  # (1 - p)^2 < 1 down-weights


def test_mse_smoothing_and_bce_are_torchs_on_the_smoothed_one_hot_targets():
    z, y = logits_and_targets()
    eps = 0.2
    q = torch.tensor(targets_by_hand(y, eps), dtype=torch.float64)
    torch.testing.assert_close(classification_loss("mse", eps)(z, y), F.mse_loss(z, q))
    torch.testing.assert_close(classification_loss("bce", eps)(z, y),
                               F.binary_cross_entropy_with_logits(z, q))
    assert torch.equal(classification_loss("mse")(z, y),
                       classification_loss("mse", 0.0)(z, y))


def test_hinge_is_torchs_multi_margin_loss_with_its_gradient():
    z, y = logits_and_targets()
    mine, theirs = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    a, b = classification_loss("hinge")(mine, y), F.multi_margin_loss(theirs, y, margin=1.0)
    torch.testing.assert_close(a, b)
    a.backward()
    b.backward()
    torch.testing.assert_close(mine.grad, theirs.grad)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_runs_under_vmap_as_the_probe_and_grid_call_it(name):
    """The probe's vmapped points call the loss inside ``torch.func.vmap``."""
    loss = classification_loss(name, 0.0 if name == "hinge" else 0.1)
    stacked = torch.randn(3, B, C, dtype=torch.float64)
    _, y = logits_and_targets()
    mapped = torch.func.vmap(lambda z: loss(z, y))(stacked)
    torch.testing.assert_close(mapped, torch.stack([loss(z, y) for z in stacked]))
    grads = torch.func.vmap(torch.func.grad(lambda z: loss(z, y)))(stacked)
    assert grads.shape == stacked.shape and torch.isfinite(grads).all()


# --------------------------------------------------------------- the axes

def test_a_sweep_over_losses_and_smoothing_names_its_runs_and_one_value_does_not():
    config = SweepConfig(models=("mlp",), lrs=(0.1,), loss=("cross_entropy", "mse"),
                         label_smoothing=(0.0, 0.1), dataset="cifar10-mini", device="cpu")
    config.validate()
    assert config.run_count() == 4 and config.varying_axes() == ("loss", "label_smoothing")
    assert [r.name for r in sweep_runs(config)] == [
        "mlp-lr0.1-seed0-cross_entropy-ls0", "mlp-lr0.1-seed0-cross_entropy-ls0.1",
        "mlp-lr0.1-seed0-mse-ls0", "mlp-lr0.1-seed0-mse-ls0.1"]
    one = SweepConfig(models=("mlp",), lrs=(0.1,), loss="focal", label_smoothing=0.1,
                      dataset="cifar10-mini")
    (run,) = sweep_runs(one)
    assert run.name == "mlp-lr0.1-seed0"
    assert (run.cell.loss, run.cell.label_smoothing) == ("focal", 0.1)


def test_any_loss_trains_in_the_batched_grid():
    """Every trainer takes the run's loss, so no loss makes runs train one by one."""
    for loss in LOSSES:
        config = SweepConfig(models=("mlp",), lrs=(0.05, 0.1), grid="batched", loss=loss)
        assert [g.mode for g in plan_sweep(config)] == ["batched"], loss


def test_the_batched_grid_on_mse_equals_separate_runs(one_cpu_thread):
    torch.manual_seed(0)
    config = SweepConfig(width=0.0625, loss="mse", label_smoothing=0.1)
    model = config.model("vgg_a_bn")
    loss_fn = classification_loss("mse", 0.1)
    lrs = (0.05, 0.1)
    grid = BatchedGrid(lambda: copy.deepcopy(model), lrs, momentum=0.9, loss_fn=loss_fn)
    singles = [copy.deepcopy(model) for _ in lrs]
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(singles, lrs)]
    for x, y in [b for _, b in zip(range(2), data_mod.BatchStream(tiny_data(), 16, 0).epoch())]:
        losses, _, _ = grid.step(x, y)
        for k, (m, opt) in enumerate(zip(singles, opts)):
            loss = loss_fn(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert float(losses[k]) == pytest.approx(loss.item(), rel=1e-5)
    x, y = next(iter(data_mod.BatchStream(tiny_data(), 16, 1).epoch()))
    evaluated, _ = grid.evaluate([(x, y)])
    for k, m in enumerate(singles):
        with torch.no_grad():
            assert evaluated[k] == pytest.approx(float(loss_fn(m.eval()(x), y)), rel=1e-5)


BAD = [
    (["--loss", "nope"], "unknown --loss 'nope'"),
    (["--loss", "mse,mse"], "twice"),
    (["--loss", "mse,"], "--loss"),
    (["--label-smoothing", "-0.1"], "got -0.1"),
    (["--label-smoothing", "0,1"], "got 1.0"),
    (["--label-smoothing", "nan"], "--label-smoothing"),
    (["--label-smoothing", "x"], "'x'"),
    (["--loss", "hinge", "--label-smoothing", "0.1"], "hinge"),
    (["--loss", "cross_entropy,hinge", "--label-smoothing", "0,0.1"], "hinge"),
    (["--models", "dln", "--dataset", "gaussian-linear", "--batch-size", "1000",
      "--loss", "mse"], "squared error"),
    (["--models", "dln", "--dataset", "gaussian-linear", "--batch-size", "1000",
      "--label-smoothing", "0.1"], "squared error"),
]


@pytest.mark.parametrize("args,named", BAD, ids=[" ".join(a)[-40:] for a, _ in BAD])
def test_a_bad_loss_or_smoothing_is_one_line_exit_2_and_writes_nothing(args, named, tmp_path,
                                                                       capsys):
    assert_refused_in_one_line(args, named, tmp_path, capsys)


def test_an_experiment_file_sweeps_losses_and_refuses_wrong_types(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('[run]\nmodels = ["mlp"]\nloss = ["mse", "bce"]\nlabel_smoothing = [0, 0.1]\n')
    values = load_experiment(good)
    assert values["loss"] == ("mse", "bce") and values["label_smoothing"] == (0.0, 0.1)
    SweepConfig(**values, dataset="cifar10-mini").validate()
    for text, named in (('loss = 3', "loss"), ('label_smoothing = "a"', "label_smoothing"),
                        ('label_smoothing = [0, true]', "label_smoothing")):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[run]\n{text}\n")
        with pytest.raises(LandscapeError) as raised:
            load_experiment(bad)
        assert named in str(raised.value) and "\n" not in str(raised.value)
        assert main(["run", "--config", str(bad), "--out", str(tmp_path / "n.h5")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "n.h5").exists()


def test_runs_of_other_losses_do_not_pool_are_labelled_and_older_files_mean_cross_entropy():
    from types import SimpleNamespace

    def run(**attrs):
        return SimpleNamespace(attrs={"model": "mlp", "lr": 0.1, "seed": 0, **attrs},
                               model="mlp")

    assert setting_key(run(loss="mse")) != setting_key(run(loss="cross_entropy"))
    assert setting_key(run(label_smoothing=0.1)) != setting_key(run(label_smoothing=0.0))
    assert setting_key(run()) == setting_key(run(loss="cross_entropy", label_smoothing=0.0))
    runs = [run(loss="mse", label_smoothing=0.1), run()]
    pooling = Pooling.of(runs)
    assert pooling.differing == ("label_smoothing", "loss")
    assert "loss mse" in pooling.label(runs[0]) and "label smoothing 0.1" in pooling.label(runs[0])
    assert "loss cross_entropy" in pooling.label(runs[1])
    assert losses_text([run(), run(loss="cross_entropy")]) == ""  # the page of before
    assert "mse with label smoothing 0.1; cross_entropy" in losses_text(runs)


# --------------------------------------------------------------- a sweep measures its loss

@lru_cache(maxsize=1)
def tiny_data():
    full = data_mod.load_dataset("cifar10-mini")
    return data_mod.ImageData(full.name, full.x_train[:256], full.y_train[:256],
                              full.x_test[:128], full.y_test[:128], full.mean, full.std)


@pytest.fixture(scope="module", params=["sequential", "batched"])
def mse_sweep(request, tmp_path_factory):
    """One epoch (16 steps) of an MLP on MSE with label smoothing, at a learning rate too
    small to move its weights (1e-12: its epoch row is the initial model's) and at 0.05."""
    config = SweepConfig(models=("mlp",), lrs=(1e-12, 0.05), steps=16, batch_size=16,
                         probe_every=100, width=0.125, dataset="cifar10-mini", device="cpu",
                         loss="mse", label_smoothing=0.1, grid=request.param)
    out = tmp_path_factory.mktemp("mse") / "sweep.h5"
    with one_cpu_thread(), warnings.catch_warnings():
        # 1e-12 x g is below float32's resolution: that run's probe says so, as it should.
        warnings.simplefilter("ignore", StepResolutionWarning)
        run_sweep(config, str(out), data=tiny_data())
    return config, {r.name: r for r in read_sweep(out).runs}, out


def test_the_probe_measures_the_runs_loss(mse_sweep):
    """Step 0's probe, by hand: L = MSE to the smoothed targets of the initial model on the
    first minibatch, and L(theta - eta g) with g that loss's gradient."""
    config, runs, _ = mse_sweep
    run = runs["mlp-lr0.05-seed0"]
    assert (run.attrs["loss"], run.attrs["label_smoothing"]) == ("mse", 0.1)
    assert run.attrs["grid"] == config.grid
    model, _ = build_run("mlp", 0.05, config, None, torch.device("cpu"))
    x, y = next(iter(data_mod.BatchStream(tiny_data(), 16, 0).epoch()))
    loss_fn = classification_loss("mse", 0.1)
    loss = loss_fn(model(x), y)
    assert run.probe.loss_at_theta[0] == pytest.approx(loss.item(), rel=1e-6)
    assert run.steps.loss[0] == pytest.approx(loss.item(), rel=1e-6)
    assert F.cross_entropy(model(x), y).item() != pytest.approx(loss.item(), rel=1e-2)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for i, eta in enumerate(run.probe.eta):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, g in zip(moved.parameters(), grads):
                p.sub_(float(eta) * g)
            assert run.probe.loss[0, i] == pytest.approx(float(loss_fn(moved(x), y)), rel=1e-5)


def test_the_epochs_report_the_runs_loss(mse_sweep):
    """Test loss and the train/eval-mode losses are the run's loss too (its weights did not
    move at a learning rate of 1e-12)."""
    config, runs, _ = mse_sweep
    epochs = runs["mlp-lr1e-12-seed0"].epochs
    model, _ = build_run("mlp", 1e-12, config, None, torch.device("cpu"))
    task = ClassificationTask(tiny_data(), "mse", 0.1)
    test_loss, test_acc = task.evaluate(model)
    assert epochs.test_loss[0] == pytest.approx(test_loss, rel=1e-6)
    assert epochs.test_acc[0] == pytest.approx(test_acc)
    modes = mode_stats(model, task.mode_subset(16), task.loss_fn)
    assert epochs.train_mode_loss[0] == pytest.approx(modes[0], rel=1e-6)
    assert epochs.eval_mode_loss[0] == pytest.approx(modes[2], rel=1e-6)
    with torch.no_grad():
        x = tiny_data().normalize(tiny_data().x_test)
        by_hand = float(((model(x).double() - torch.tensor(
            np.where(np.eye(10)[tiny_data().y_test.numpy()] == 1, 0.9 + 0.01, 0.01))) ** 2)
            .mean())
    assert test_loss == pytest.approx(by_hand, rel=1e-5)


def test_the_report_names_the_loss_its_curves_measure(mse_sweep):
    _, _, out = mse_sweep
    page = build_report([read_sweep(out)])
    assert "Every loss on this page is the run&#x27;s own: mse with label smoothing 0.1" in page
