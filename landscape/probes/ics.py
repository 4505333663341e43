"""Internal covariate shift (Santurkar et al., Definition 2.1, Fig. 3).

For weight layer i at training step t, on the step's batch B:

    G  = grad_{W_i} L(W_1, ..., W_k; B)
    G' = grad_{W_i} L(W_1', ..., W_{i-1}', W_i, ..., W_k; B)

where W_j' are the values after this step's update. ICS = ||G - G'||_2, plotted with
cos(G, G'); ideal values 0 and 1.

"Layers 1 ... i-1" are all trainable parameters registered before W_i (earlier weights and
biases and the normalization parameters between them; the model's registration order must be
its forward order, as in every ``nn.Sequential`` model here). The update is the one the real
optimizer would apply now: ``optimizer_update`` runs a dry ``step()`` of a fresh optimizer of
the same class on copies of the parameters, of their ``.grad`` and of a deep copy of the
optimizer state. So it works with any ``torch.optim`` optimizer (SGD with momentum, Adam, ...)
and must be called after ``backward()`` and before ``optimizer.step()`` -- in an optimizer
step pre-hook, as ``ICSProbe`` does. Like every probe it leaves no trace: parameters, ``.grad``,
buffers (BN running statistics, noise keys), optimizer state and the RNG are unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .context import LossFn, loss_and_grad, no_trace, trainable_parameters


@dataclass
class ICSRecord:
    """ICS of ``layers`` at one step: arrays (L,) in the order of ``layers``."""

    layers: list[str]  # weight-layer module names
    l2: np.ndarray  # ||G - G'||_2
    cosine: np.ndarray  # cos(G, G')
    grad_norm: np.ndarray  # ||G||_2
    step: int | None = None


def optimizer_update(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """theta_{t+1} - theta_t that ``optimizer.step()`` would apply now, by parameter name.

    A dry run on copies: the real parameters, gradients and optimizer state are not touched.
    Parameters the optimizer does not hold get a zero update.
    """
    real = [p for group in optimizer.param_groups for p in group["params"]]
    copies = []
    for p in real:
        c = p.detach().clone().requires_grad_(p.requires_grad)
        c.grad = None if p.grad is None else p.grad.detach().clone()
        copies.append(c)
    groups, it = [], iter(copies)
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [next(it) for _ in group["params"]]})
    dry = type(optimizer)(groups, **optimizer.defaults)
    dry.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    dry.step()
    delta_by_id = {id(p): (c.detach() - p.detach()) for p, c in zip(real, copies)}
    return {n: delta_by_id[id(p)] if id(p) in delta_by_id else torch.zeros_like(p)
            for n, p in model.named_parameters() if p.requires_grad}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if float(na) == 0.0 or float(nb) == 0.0:
        return float("nan")
    return float((a.reshape(-1) @ b.reshape(-1)) / (na * nb))


def internal_covariate_shift(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                             targets: torch.Tensor, optimizer: torch.optim.Optimizer,
                             layers: Sequence[str]) -> ICSRecord:
    """||G - G'|| and cos(G, G') for each weight layer in ``layers`` (module names).

    Call after ``backward()`` (the optimizer's update is computed from the current ``.grad``)
    and before ``optimizer.step()``. BN uses the batch's statistics (train mode) for G and G'.
    """
    params = trainable_parameters(model)
    names = list(params)
    device = next(iter(params.values())).device
    with no_trace(model, device):
        with torch.no_grad():
            delta = optimizer_update(model, optimizer)
        _, grads = loss_and_grad(model, loss_fn, inputs, targets, params)
        l2, cosine, grad_norm = [], [], []
        for layer in layers:
            k = names.index(f"{layer}.weight")
            shifted = {n: p + delta[n] if j < k else p for j, (n, p) in enumerate(params.items())}
            _, grads_shifted = loss_and_grad(model, loss_fn, inputs, targets, shifted)
            g, g2 = grads[k], grads_shifted[k]
            l2.append(float(torch.linalg.vector_norm(g - g2)))
            cosine.append(_cosine(g, g2))
            grad_norm.append(float(torch.linalg.vector_norm(g)))
    as_array = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    return ICSRecord(list(layers), as_array(l2), as_array(cosine), as_array(grad_norm))
