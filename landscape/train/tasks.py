"""What the training loop needs to know about a dataset: its stream, loss, accuracy, evaluation.

``task_for(data, loss, label_smoothing)`` returns a ``ClassificationTask`` for an
``ImageData`` (the run's loss, ``losses.classification_loss``: cross-entropy by default;
minibatches from ``BatchStream``, accuracy) and a ``RegressionTask`` for the deep linear
network's ``GaussianLinearData`` (the paper's ||W_25 ... W_1 X - A X||^2, full-batch gradient
descent, no accuracy). A task's ``loss_fn`` is the one loss of its run: trained on, probed,
and reported for the test set and the train/eval-mode comparison.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data import BatchStream, FullBatchStream, GaussianLinearData, ImageData, eval_batches
from ..data.gaussian import DATASET as GAUSSIAN_LINEAR, STEPS_PER_EPOCH
from ..errors import LandscapeError
from ..models import random_modules
from ..probes import buffer_clones
from .losses import LossFn, classification_loss


class Task(Protocol):
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    has_accuracy: bool

    def stream(self, batch_size: int, seed: int, augment: bool): ...

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]: ...

    def mode_subset(self, batch_size: int) -> list: ...


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ImageData,
             loss_fn: LossFn = F.cross_entropy) -> tuple[float, float]:
    """Test loss (``loss_fn``, the run's) and accuracy in eval mode (BatchNorm on running
    statistics)."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=data.y_test.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.y_test.device, dtype=torch.int64)
    for x, y in eval_batches(data):
        out = model(x)
        total_loss += loss_fn(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = len(data.y_test)
    return float(total_loss) / n, float(correct) / n


# The train/eval-mode comparison uses at least this many training images (the first ones of
# the training split, the same every epoch), in whole batches of the run's batch size.
MODE_SUBSET = 1024


def mode_subset(data: ImageData, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed training subset of the train/eval-mode comparison: the first
    ceil(MODE_SUBSET / batch_size) whole batches (as many as the training set holds) of the
    training split in order, normalized, never augmented."""
    count = min(math.ceil(MODE_SUBSET / batch_size), len(data.y_train) // batch_size)
    return [(data.normalize(data.x_train[i * batch_size:(i + 1) * batch_size]),
             data.y_train[i * batch_size:(i + 1) * batch_size]) for i in range(count)]


@torch.no_grad()
def mode_stats(model: nn.Module, batches,
               loss_fn: LossFn = F.cross_entropy) -> tuple[float, float, float, float]:
    """Loss (``loss_fn``, the run's) and accuracy of ``batches`` in train mode and in eval
    mode, leaving no trace.

    Train mode: every module in training mode (BatchNorm normalizes each batch by its own
    statistics) except those that draw random numbers (dropout, noise: ``random_modules``),
    so the numbers say what batch statistics change, not what dropout does. BatchNorm writes
    its running statistics into clones of the buffers (``functional_call``), not the model's;
    nothing draws from torch's generators. Eval mode: the running statistics.
    Returns (train_mode_loss, train_mode_acc, eval_mode_loss, eval_mode_acc): means over the
    batches' samples.
    """
    flags = [m.training for m in model.modules()]
    params = dict(model.named_parameters())
    results = []
    try:
        for train in (True, False):
            model.train(train)
            for m in random_modules(model):
                m.eval()
            total, correct, n = 0.0, 0, 0
            for x, y in batches:
                out = functional_call(model, (params, buffer_clones(model)), (x,)).float()
                total += float(loss_fn(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
            results += [total / n, correct / n]
    finally:
        for m, flag in zip(model.modules(), flags):
            m.training = flag
    return tuple(results)


class ClassificationTask:
    """Image classification: the run's loss (cross-entropy by default) on ``BatchStream``
    minibatches, test accuracy (the argmax of the logits, whatever the loss)."""

    has_accuracy = True

    def __init__(self, data: ImageData, loss: str = "cross_entropy", label_smoothing: float = 0.0):
        self.data = data
        self.loss_fn = classification_loss(loss, label_smoothing)

    def stream(self, batch_size: int, seed: int, augment: bool) -> BatchStream:
        return BatchStream(self.data, batch_size, seed, augment)

    def correct(self, outputs, targets):
        return (outputs.argmax(1) == targets).sum()

    def evaluate(self, model):
        return evaluate(model, self.data, self.loss_fn)

    def mode_subset(self, batch_size: int):
        return mode_subset(self.data, batch_size)


def dln_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """||outputs - targets||_F^2: summed over output dimensions and samples.

    The paper's DLN loss. With this sum, its learning rate 1e-6 trains the network in 10,000
    steps; a mean over samples would need a 1,000x larger rate.
    """
    return (outputs - targets).pow(2).sum()


class RegressionTask:
    """Full-batch gradient descent on ``dln_loss``; no accuracy (train_acc, test_acc are NaN)."""

    has_accuracy = False
    loss_fn = staticmethod(dln_loss)

    def __init__(self, data: GaussianLinearData):
        self.data = data

    def stream(self, batch_size: int, seed: int, augment: bool) -> FullBatchStream:
        n = len(self.data.y_train)
        if batch_size < n:
            raise LandscapeError(f"{GAUSSIAN_LINEAR} trains by full-batch gradient descent on {n} "
                                 f"samples: pass --batch-size {n} (got {batch_size})")
        if augment:
            raise LandscapeError(f"--augment does not apply to {GAUSSIAN_LINEAR}")
        return FullBatchStream(self.data.x_train, self.data.y_train, STEPS_PER_EPOCH)

    def correct(self, outputs, targets):
        return torch.zeros((), dtype=torch.int64, device=outputs.device)

    def mode_subset(self, batch_size: int) -> list:
        """No train/eval-mode comparison for the DLN (its epochs store NaN there)."""
        return []

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        loss = float(dln_loss(model(self.data.x_test), self.data.y_test))
        model.train(was_training)
        return loss, math.nan


def task_for(data: ImageData | GaussianLinearData, loss: str = "cross_entropy",
             label_smoothing: float = 0.0) -> Task:
    """The task of ``data``; ``loss`` and ``label_smoothing`` (the run's ``--loss``,
    ``--label-smoothing``) name an image classification's loss (the DLN's is its own:
    ``config.validate`` refuses others)."""
    if isinstance(data, GaussianLinearData):
        return RegressionTask(data)
    return ClassificationTask(data, loss, label_smoothing)
