"""The deep linear network (DLN) of Santurkar et al. (Appendix A.1) and its Gaussian data.

Model ``dln``: 25 square linear layers without bias, x -> W_25 ... W_1 x, Glorot init.
Model ``dln_bn``: the same with ``BatchNorm1d`` (affine) after each of the first 24 layers.
Dataset ``gaussian-linear``: x ~ N(0, I_10), targets y = A x with A a fixed 10 x 10 matrix of
N(0, 1) entries; 1,000 training and 1,000 test samples, all drawn from a generator seeded
with ``DATA_SEED`` (the same data for every run, whatever ``--seed``).

Loss (the paper's ||W_25 ... W_1 X - A X||^2 over the full batch X): the squared error
**summed over output dimensions and over samples** (the Frobenius norm squared). With this
sum, the paper's learning rate 1e-6 trains the network in 10,000 steps; a mean over samples
would need a 1,000x larger rate. Training is full-batch gradient descent: every step sees
all 1,000 samples, so ``--batch-size`` must be at least 1,000 (the whole set is used); an
"epoch" is a logging unit of ``STEPS_PER_EPOCH`` steps, after which the test loss (same sum,
on the test samples) is recorded. Accuracy is meaningless here: train_acc and test_acc are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LandscapeError
from .models import MODELS, ModelSpec, glorot_init_
from .tasks import FullBatchStream

DATASET = "gaussian-linear"
DIM, DEPTH, N_TRAIN, N_TEST = 10, 25, 1000, 1000
DATA_SEED = 0
STEPS_PER_EPOCH = 100


class DeepLinear(nn.Module):
    """``depth`` square ``dim`` x ``dim`` linear layers, optionally BN after all but the last."""

    def __init__(self, dim: int = DIM, depth: int = DEPTH, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dim, dim, bias=False))
            if batch_norm and i < depth - 1:
                layers.append(nn.BatchNorm1d(dim))
        self.layers = nn.Sequential(*layers)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def dln_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """||outputs - targets||_F^2: summed over output dimensions and samples."""
    return (outputs - targets).pow(2).sum()


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

    def to(self, device) -> "GaussianLinearData":
        move = lambda t: t.to(device)  # noqa: E731
        return GaussianLinearData(self.name, move(self.x_train), move(self.y_train),
                                  move(self.x_test), move(self.y_test), move(self.a))

    def task(self) -> "RegressionTask":
        return RegressionTask(self)


def load_gaussian_linear(dim: int = DIM, n_train: int = N_TRAIN, n_test: int = N_TEST,
                         seed: int = DATA_SEED) -> GaussianLinearData:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g)
    x_train = torch.randn(n_train, dim, generator=g)
    x_test = torch.randn(n_test, dim, generator=g)
    return GaussianLinearData(DATASET, x_train, x_train @ a.T, x_test, x_test @ a.T, a)


class RegressionTask:
    """Full-batch gradient descent on ``dln_loss``; no accuracy."""

    has_accuracy = False
    loss_fn = staticmethod(dln_loss)

    def __init__(self, data: GaussianLinearData):
        self.data = data

    def stream(self, batch_size: int, seed: int, augment: bool) -> FullBatchStream:
        n = len(self.data.y_train)
        if batch_size < n:
            raise LandscapeError(f"{DATASET} trains by full-batch gradient descent on {n} samples: "
                                 f"pass --batch-size {n} (got {batch_size})")
        if augment:
            raise LandscapeError(f"--augment does not apply to {DATASET}")
        return FullBatchStream(self.data.x_train, self.data.y_train, STEPS_PER_EPOCH)

    def correct(self, outputs, targets):
        return torch.zeros((), dtype=torch.int64, device=outputs.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        loss = float(dln_loss(model(self.data.x_test), self.data.y_test))
        model.train(was_training)
        return loss, math.nan


DLN_MODELS = {"dln": False, "dln_bn": True}


def _builder(batch_norm: bool):
    def build(width: float = 1.0, num_classes: int = DIM) -> nn.Module:
        return DeepLinear(dim=num_classes, depth=DEPTH, batch_norm=batch_norm)  # width: unused
    return build


for _name, _bn in DLN_MODELS.items():
    MODELS[_name] = ModelSpec(_builder(_bn), "batch" if _bn else "none")
