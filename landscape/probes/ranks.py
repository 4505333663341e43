"""Per-layer gradient norms and the rank of the hidden representations (Yang et al. 2019,
Daneshmand et al. 2020).

At a point, on one batch of n samples: for each weight layer l, ||grad_{W_l} L|| (the weight
only), and the rank of layer l's *output representation*, the n x d matrix of what layer l's
block hands on (after its normalization, nonlinearity and pooling: the input of weight layer
l + 1; the model's output for the last layer), each sample a row:

    rank            numerical rank: singular values above sigma_max x max(n, d) x eps of the
                    representation's dtype (``torch.linalg.matrix_rank``'s default tolerance)
    effective_rank  exp(H(p)), p_i = sigma_i / sum_j sigma_j, H the entropy in nats (Roy &
                    Vetterli 2007): between 1 and min(n, d), smooth where the rank jumps

The representation is not centred (Daneshmand et al.'s rank is of the matrix itself).
Leaves no trace (``context.no_trace``): BN in train mode on the batch's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models import weight_layers
from .context import (LossFn, batch_loss, buffer_clones, no_trace, trainable_parameters)


@dataclass
class RankRecord:
    """Gradient norms and representation ranks per weight layer, at one point on one batch."""

    layer: tuple[str, ...]  # (L,)
    grad_norm: np.ndarray  # (L,) ||grad_W L|| of each layer's weight
    rank: np.ndarray  # (L,) numerical rank of its output representation
    effective_rank: np.ndarray  # (L,) exp(entropy of the normalized singular values)
    size: np.ndarray  # (L,) min(n, d): the largest rank possible
    step: int | None = None


def representation_ranks(matrix: torch.Tensor) -> tuple[int, float]:
    """(numerical rank, effective rank) of an (n, d) matrix, as the module defines them."""
    sigma = torch.linalg.svdvals(matrix)
    if sigma.numel() == 0 or float(sigma[0]) == 0:
        return 0, 0.0
    tol = float(sigma[0]) * max(matrix.shape) * torch.finfo(matrix.dtype).eps
    p = (sigma / sigma.sum()).double()
    p = p[p > 0]
    return int((sigma > tol).sum()), float(torch.exp(-(p * p.log()).sum()))


def layer_ranks(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                layers: Sequence[str] | None = None) -> RankRecord:
    """Gradient norm of each weight layer's weight and the ranks of its output representation
    on one batch (``inputs`` a tensor: the samples are its rows)."""
    names = list(layers) if layers is not None else weight_layers(model)
    modules = dict(model.named_modules())
    order = weight_layers(model)
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:  # the input of the next weight layer, or the last layer's output
        following = order.index(name) + 1
        if following < len(order):
            handles.append(modules[order[following]].register_forward_pre_hook(
                lambda m, args, name=name: outputs.__setitem__(name, args[0].detach())))
        else:
            handles.append(modules[name].register_forward_hook(
                lambda m, args, out, name=name: outputs.__setitem__(name, out.detach())))
    params = trainable_parameters(model)
    try:
        with no_trace(model, next(iter(params.values())).device):
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            loss = batch_loss(model, loss_fn, inputs, targets, leaves, buffer_clones(model))
            weights = [leaves[f"{name}.weight"] for name in names]
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    ranks = [representation_ranks(outputs[name].reshape(len(outputs[name]), -1))
             for name in names]
    return RankRecord(
        layer=tuple(names),
        grad_norm=np.asarray([0.0 if g is None else float(torch.linalg.vector_norm(g))
                              for g in grads]),
        rank=np.asarray([r for r, _ in ranks], np.int64),
        effective_rank=np.asarray([e for _, e in ranks]),
        size=np.asarray([min(outputs[n].shape[0], outputs[n][0].numel()) for n in names],
                        np.int64))
