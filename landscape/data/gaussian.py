"""The deep linear network's data (Santurkar et al., Appendix A.1): x ~ N(0, I), y = A x.

Dataset ``gaussian-linear``: A a fixed 10 x 10 matrix of N(0, 1) entries; 1,000 training and
1,000 test samples, all drawn from a generator seeded with ``DATA_SEED`` (the same data for
every run, whatever ``--seed``). Training on it is full-batch gradient descent: every step
sees all 1,000 samples (``FullBatchStream``), so ``--batch-size`` must be at least 1,000; an
"epoch" is a logging unit of ``STEPS_PER_EPOCH`` steps, after which the test loss is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

DATASET = "gaussian-linear"
DIM, N_TRAIN, N_TEST = 10, 1000, 1000
DATA_SEED = 0
STEPS_PER_EPOCH = 100


@dataclass
class GaussianLinearData:
    """x ~ N(0, I), y = A x; (N, dim) float32 tensors on one device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    a: torch.Tensor  # (dim, dim)

    @property
    def num_classes(self) -> int:  # the output dimension; models are built with it
        return self.a.shape[0]

    @property
    def image_shape(self) -> None:  # not images: models take their own input size
        return None

    def to(self, device) -> "GaussianLinearData":
        move = lambda t: t.to(device)  # noqa: E731
        return GaussianLinearData(self.name, move(self.x_train), move(self.y_train),
                                  move(self.x_test), move(self.y_test), move(self.a))


def load_gaussian_linear(dim: int = DIM, n_train: int = N_TRAIN, n_test: int = N_TEST,
                         seed: int = DATA_SEED) -> GaussianLinearData:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g)
    x_train = torch.randn(n_train, dim, generator=g)
    x_test = torch.randn(n_test, dim, generator=g)
    return GaussianLinearData(DATASET, x_train, x_train @ a.T, x_test, x_test @ a.T, a)


class FullBatchStream:
    """Gradient descent: every step is the whole training set; an epoch is ``steps_per_epoch``."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, steps_per_epoch: int):
        self.inputs, self.targets, self.steps_per_epoch = inputs, targets, steps_per_epoch
        self.position = 0  # steps of the epoch under way given so far
        self._resume_at = 0

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self._resume_at = self._resume_at, 0
        for k in range(start, self.steps_per_epoch):
            self.position = k + 1
            yield self.inputs, self.targets
        self.position = 0

    def state_dict(self) -> dict:
        """Where the stream stands (as ``BatchStream.state_dict``): no randomness, a position."""
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position, self._resume_at = 0, int(state["position"])
