"""What a trainer is: the ``Trainer`` protocol the training loop calls, and the
``TrainerContext`` every trainer is built with (besides its ``plan.Group`` and the data).

Three trainers implement it: ``SequentialRun`` (one eager run, probes as hooks), ``GridRuns``
(a learning-rate grid as one vmapped model) and ``StreamRuns`` (CUDA-graph steps on
concurrent streams); ``trainers.TRAINERS`` maps a group's mode to one. A fourth is a class
with these methods and the constructor ``(group, data, context)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..store import RunLog
from .tasks import Task


def _ignore(k: int, record) -> None:
    """A probe record nobody asked for (a memory trial's trainer)."""


@dataclass
class TrainerContext:
    """Where and how a trainer trains, and where its measurements go."""

    device: torch.device
    # The training step's arithmetic (``device.training_precision``): a context manager factory.
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    on_probe: Callable[[int, object], None] = _ignore  # (run k, LandscapeRecord)
    # The runs' logs, for instruments that write rows of their own (a sequential run's ICS,
    # activations, curvature, weights); empty for a trial trainer.
    logs: Sequence[RunLog] = field(default_factory=tuple)


class Trainer(Protocol):
    """K runs of one model advanced in lockstep, one step at a time, on a shared minibatch."""

    task: Task  # the dataset's loss, stream, accuracy and evaluation
    k: int  # how many runs

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every live run on (x, y): the losses (K,) and correct counts (K,)."""

    def learning_rates(self) -> np.ndarray:
        """(K,) float64: the learning rate each run's next step takes, LR(t) (the loop
        records it with the step)."""

    def end_epoch(self, train_loss: np.ndarray) -> None:
        """An epoch ended with these mean training losses (K,): a per-epoch learning-rate
        schedule (``plateau``) steps here."""

    def pop_grad_rows(self) -> np.ndarray:
        """(n, K, 3) per-step ||g||, ||g - g_prev||, their ratio to ||theta - theta_prev||,
        for the n steps since the last call (the loop's host sync)."""

    def evaluate(self, data) -> tuple[np.ndarray, np.ndarray]:
        """Each run's test loss and accuracy (K,), in eval mode."""

    def module(self, k: int) -> nn.Module:
        """Run k's model as it is now (for measurements that leave no trace)."""

    def freeze(self, k: int) -> None:
        """Run k diverged: it takes no more steps."""

    def state_dict(self) -> dict:
        """Everything the next step depends on (a checkpoint's trainer state)."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s value (a trainer built as the saved one was)."""

    def close(self) -> None:
        """Training ended: detach hooks, hand over pending records."""
