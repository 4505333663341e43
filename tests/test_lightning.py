"""``LandscapeCallback``: a real ``lightning.Trainer`` on the CPU records the same file as the
``Recorder`` in a plain loop with the same seed and batches; Lightning's own checkpoint and
resume continue the file's rows without a repeat or a gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from conftest import one_cpu_thread  # noqa: E402
from landscape import Recorder  # noqa: E402
from landscape.data import load_cifar10_mini  # noqa: E402
from landscape.integrations.lightning import LandscapeCallback  # noqa: E402
from landscape.models import build_model  # noqa: E402
from landscape.read import read_sweep  # noqa: E402

BATCH, TRAIN, EVERY, LR = 16, 192, 4, 0.05  # 12 steps an epoch


@pytest.fixture(scope="module")
def loaders():
    data = load_cifar10_mini()
    x = data.normalize(data.x_train[:TRAIN])
    xv = data.normalize(data.x_test[:64])
    train = TensorDataset(x, data.y_train[:TRAIN])
    val = TensorDataset(xv, data.y_test[:64])
    return (lambda: DataLoader(train, batch_size=BATCH, shuffle=False),
            lambda: DataLoader(val, batch_size=64))


def network():
    torch.manual_seed(0)
    return build_model("vgg_a_bn", width=0.125)


class Classifier(lightning.pytorch.LightningModule):
    def __init__(self, manual=False, accumulate=1):
        super().__init__()
        self.net, self.criterion = network(), nn.CrossEntropyLoss()
        self.automatic_optimization = not manual

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train_loss", loss)
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)


def fit(module, loaders, callbacks, epochs, accumulate=1, ckpt_path=None):
    """``lightning.Trainer(...).fit`` on the CPU, quietly; checkpoints only by a callback."""
    trainer = lightning.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0, callbacks=callbacks,
                                accumulate_grad_batches=accumulate,
                                enable_checkpointing=any(isinstance(
                                    c, lightning.pytorch.callbacks.ModelCheckpoint)
                                    for c in callbacks))
    train, val = loaders
    trainer.fit(module, train(), val(), ckpt_path=ckpt_path)


def plain_loop(loaders, out, epochs, accumulate=1):
    """The same training in a plain loop, recorded by a ``Recorder``."""
    net = network()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    train, val = loaders
    with Recorder(out, run="plain", every=EVERY, seed=0) as rec:
        loss_fn = rec.attach(net, optimizer, criterion)
        for _ in range(epochs):
            net.train()
            for i, (x, y) in enumerate(train()):
                (loss_fn(net(x), y) / accumulate).backward()
                if (i + 1) % accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad()
            net.eval()
            with torch.no_grad():
                x, y = next(iter(val()))
                out_ = net(x)
                rec.epoch(test_loss=F.cross_entropy(out_, y).item(),
                          test_acc=(out_.argmax(1) == y).float().mean().item())
    return read_sweep(out).runs[0]


def assert_same_run(run, plain, accuracy=True):
    np.testing.assert_array_equal(run.steps.step, plain.steps.step)
    np.testing.assert_allclose(run.steps.loss, plain.steps.loss, rtol=1e-5)
    np.testing.assert_allclose(run.steps.grad_norm, plain.steps.grad_norm, rtol=1e-4)
    np.testing.assert_array_equal(run.steps.learning_rate, plain.steps.learning_rate)
    np.testing.assert_array_equal(run.probe.step, plain.probe.step)
    np.testing.assert_allclose(run.probe.loss, plain.probe.loss, rtol=1e-4)
    np.testing.assert_allclose(run.probe.beta, plain.probe.beta, rtol=1e-3)
    np.testing.assert_allclose(run.epochs.test_loss, plain.epochs.test_loss, rtol=1e-4)
    np.testing.assert_allclose(run.epochs.train_loss, plain.epochs.train_loss, rtol=1e-5)
    if accuracy:
        np.testing.assert_array_equal(run.epochs.train_acc, plain.epochs.train_acc)


@pytest.mark.parametrize("how", ["returned loss", "manual", "accumulation"])
def test_a_lightning_trainer_records_what_a_plain_loop_records(tmp_path, loaders, how):
    manual, accumulate = how == "manual", 2 if how == "accumulation" else 1
    with one_cpu_thread():
        plain = plain_loop(loaders, tmp_path / "plain.h5", 2, accumulate)
        callback = LandscapeCallback(tmp_path / "pl.h5", "pl", every=EVERY, seed=0,
                                     loss="criterion" if manual else None)
        fit(Classifier(manual), loaders, [callback], 2, accumulate)
    run = read_sweep(tmp_path / "pl.h5").runs[0]
    assert run.status == "completed" and run.steps_completed == 2 * 12 // accumulate
    assert_same_run(run, plain, accuracy=manual)


def test_lightning_resume_continues_the_file_without_repeats_or_gaps(tmp_path, loaders):
    checkpoints = tmp_path / "ckpt"
    with one_cpu_thread():
        whole = LandscapeCallback(tmp_path / "whole.h5", "pl", every=EVERY, seed=0)
        fit(Classifier(), loaders, [whole], 3)
        first = LandscapeCallback(tmp_path / "resumed.h5", "pl", every=EVERY, seed=0)
        saver = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=checkpoints, save_last=True)
        fit(Classifier(), loaders, [first, saver], 2)
        # The file holds two epochs, complete; a new trainer resumes from the checkpoint.
        assert read_sweep(tmp_path / "resumed.h5").runs[0].steps_completed == 24
        second = LandscapeCallback(tmp_path / "resumed.h5", "pl", every=EVERY, seed=0)
        fit(Classifier(), loaders, [second], 3, ckpt_path=str(checkpoints / "last.ckpt"))
    run, reference = (read_sweep(tmp_path / f).runs[0] for f in ("resumed.h5", "whole.h5"))
    assert run.status == "completed" and run.steps_completed == 36
    np.testing.assert_array_equal(run.epochs.epoch, [0, 1, 2])
    assert_same_run(run, reference, accuracy=False)


def test_without_lightning_the_module_says_what_to_install(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['lightning'] = None; sys.modules['lightning.pytorch'] = None\n"
            "import landscape.integrations.lightning")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("landscape.errors.LandscapeError: ") and "pip install" in last
