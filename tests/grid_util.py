"""Synthetic sweep files of a course-sized grid (models x learning rates x dropout x seeds),
written through the real ``SweepStore``: every run carries every axis as an attribute, as the
multi-axis sweeps do (``model``, ``norm``, ``lr``, ``seed``, ``batch_size``, ``momentum``,
``weight_decay``, ``dropout``, ``optimizer``, ``width``, ``dataset``)."""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from landscape.store import SweepStore

ETA_MULTIPLES = np.array([0.5, 1.0, 2.0, 4.0])
LAYERS = ("features.0", "features.1", "features.4", "features.5", "classifier.0")


def probe_with_layers(step: int, eta: np.ndarray, loss: np.ndarray, grad_diff: np.ndarray,
                      beta: float, layer_share: np.ndarray) -> SimpleNamespace:
    """What ``RunLog.add_probe`` reads, with the split by layer a real probe records."""
    diff_layer = np.sqrt(np.outer(grad_diff ** 2, layer_share))  # (k, L), squares add up
    return SimpleNamespace(step=step, eta=eta, loss=loss, grad_diff=grad_diff, beta=beta,
                           grad_norm=1.0, loss_at_theta=float(loss[0]), layer=LAYERS,
                           grad_diff_layer=diff_layer, grad_norm_layer=np.sqrt(layer_share))


def add_grid_run(store: SweepStore, *, model: str, lr: float, seed: int, steps: int,
                 probe_every: int, steps_per_epoch: int, dropout: float = 0.0,
                 batch_size: int = 128, diverge_at: int | None = None,
                 final_test_loss: float | None = None, name: str | None = None,
                 **settings) -> None:
    """One run with noisy, realistic-looking values (seeded by its settings).

    ``final_test_loss`` sets where its test loss ends (the ranking tests choose it);
    ``diverge_at`` makes every value from that step on non-finite and stops the run.
    """
    rng = np.random.default_rng(zlib.crc32(repr((model, lr, seed, dropout, batch_size)).encode()))
    eta = ETA_MULTIPLES * lr
    attrs = dict(model=model, norm="batch" if model.endswith("_bn") else "none", lr=lr,
                 seed=seed, batch_size=batch_size, momentum=0.0, weight_decay=0.0,
                 dropout=dropout, optimizer="sgd", width=1.0, dataset="cifar10")
    attrs.update(settings)
    if dropout is None:  # a file from before the dropout axis
        del attrs["dropout"]
    name = name or f"{model}-lr{lr:g}-dropout{dropout or 0:g}-bs{batch_size}-seed{seed}"
    log = store.run(name, eta=eta, **attrs)
    last = steps if diverge_at is None else diverge_at + 1
    step = np.arange(last)
    scale = 1.0 + 0.2 * rng.standard_normal()
    loss = (2.3 * np.exp(-step * lr * scale / 0.05 / 400) + 0.2
            + 0.05 * rng.standard_normal(last) ** 2)
    grad_diff = np.where(step == 0, np.nan, 1.0 + 0.3 * rng.random(last))
    if diverge_at is not None:
        loss[-1], grad_diff[-1] = np.inf, np.nan
    log.add_steps(step=step, epoch=step // steps_per_epoch, loss=loss,
                  grad_norm=1.0 + rng.random(last), grad_diff=grad_diff,
                  beta_consecutive=np.full(last, 2 / lr))
    for s in range(0, last, probe_every):
        probe_loss = loss[s] * (1.0 + np.array([0.0, 0.1, 0.3, 1.0]) * (1 + rng.random()))
        share = rng.random(len(LAYERS))
        log.add_probe(probe_with_layers(s, eta, probe_loss,
                                        np.array([1.0, 2.0, 3.0, 4.0]) * (1 + rng.random()),
                                        (2 / lr) * (0.5 + rng.random()), share / share.sum()))
    epochs = int(step[-1]) // steps_per_epoch
    end = final_test_loss if final_test_loss is not None else 0.8 + 0.3 * rng.random()
    for e in range(epochs):
        frac = (e + 1) / max(epochs, 1)
        test_loss = 2.3 + (end - 2.3) * frac
        log.add_epoch(epoch=e, steps=steps_per_epoch, train_loss=test_loss - 0.1,
                      train_acc=0.1 + 0.6 * frac, test_loss=test_loss,
                      test_acc=0.1 + 0.5 * frac, seconds=1.0)
    if diverge_at is None:
        log.set_attrs(status="completed", steps_completed=last, seconds=3.0,
                      steps_per_epoch=steps_per_epoch)
    else:
        log.set_attrs(status="diverged", diverged_step=diverge_at, steps_completed=last,
                      seconds=2.0, steps_per_epoch=steps_per_epoch)
    store.flush(log)


def course_grid(path: Path, *, models=("cnn", "cnn_bn"), lrs=(1e-3, 5e-4, 1e-4),
                dropouts=(0.0, 0.4), batch_sizes=(128,), seeds=range(5), steps: int = 2000,
                probe_every: int = 20, steps_per_epoch: int = 100) -> Path:
    """A sweep file of models x lrs x dropouts x batch sizes x seeds (60 runs by default:
    2,000 steps, a probe every 20 steps, 20 epochs)."""
    store = SweepStore(path, config={"models": list(models), "lrs": list(lrs)},
                       command=f"synthetic course grid {path.name}")
    for model, lr, dropout, batch_size, seed in itertools.product(models, lrs, dropouts,
                                                                   batch_sizes, seeds):
        add_grid_run(store, model=model, lr=lr, seed=seed, dropout=dropout,
                     batch_size=batch_size, steps=steps, probe_every=probe_every,
                     steps_per_epoch=steps_per_epoch)
    return path
