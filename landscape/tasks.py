"""What ``train_run`` needs to know about a dataset: its stream, loss, accuracy and evaluation.

``task_for(data)`` returns a ``ClassificationTask`` for an ``ImageData`` (cross-entropy,
minibatches from ``BatchStream``, accuracy) -- exactly what training did before -- and the
dataset's own task for anything else that has a ``task()`` method (the deep linear network's
``GaussianLinearData`` gives a regression task with full-batch gradient descent).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F

from . import data as data_mod


class Task(Protocol):
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    has_accuracy: bool

    def stream(self, batch_size: int, seed: int, augment: bool): ...

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]: ...


class ClassificationTask:
    """Image classification: cross-entropy on ``BatchStream`` minibatches, test accuracy."""

    has_accuracy = True
    loss_fn = staticmethod(F.cross_entropy)

    def __init__(self, data: data_mod.ImageData):
        self.data = data

    def stream(self, batch_size: int, seed: int, augment: bool) -> data_mod.BatchStream:
        return data_mod.BatchStream(self.data, batch_size, seed, augment)

    def correct(self, outputs, targets):
        return (outputs.argmax(1) == targets).sum()

    def evaluate(self, model):
        from .train import evaluate  # train imports this module
        return evaluate(model, self.data)


def task_for(data) -> Task:
    return data.task() if hasattr(data, "task") else ClassificationTask(data)


def accuracy(task: Task, correct: torch.Tensor, seen: int) -> float:
    """Training accuracy of an epoch, NaN for tasks without one (regression)."""
    return float(correct) / max(seen, 1) if task.has_accuracy else math.nan


class FullBatchStream:
    """Gradient descent: every step is the whole training set; an epoch is ``steps_per_epoch``."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, steps_per_epoch: int):
        self.inputs, self.targets, self.steps_per_epoch = inputs, targets, steps_per_epoch

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps_per_epoch):
            yield self.inputs, self.targets
