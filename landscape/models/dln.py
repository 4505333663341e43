"""The deep linear network (DLN) of Santurkar et al. (Appendix A.1).

Model ``dln``: 25 square linear layers without bias, x -> W_25 ... W_1 x, Glorot init.
Model ``dln_bn``: the same with ``BatchNorm1d`` (affine) after each of the first 24 layers.
It trains on ``landscape.data.gaussian`` (x ~ N(0, I_10), y = A x) with the summed squared
error of ``landscape.train.tasks.dln_loss``, by full-batch gradient descent.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import ModelSpec, glorot_init_, register_model

DIM, DEPTH = 10, 25


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


DLN_MODELS = {"dln": False, "dln_bn": True}  # name -> BatchNorm after the hidden layers


def _builder(batch_norm: bool):
    def build(width: float = 1.0, num_classes: int = DIM) -> nn.Module:
        return DeepLinear(dim=num_classes, depth=DEPTH, batch_norm=batch_norm)  # width: unused
    return build


for _name, _bn in DLN_MODELS.items():
    register_model(_name, ModelSpec(_builder(_bn), "batch" if _bn else "none", random=False))
